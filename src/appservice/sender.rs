//! Sending events to application services: a queue per application
//! service kept in storage (it outlives restarts and a service that is
//! down; an event leaves it when the service acknowledged the transaction
//! that carried it), and a worker per service that sends transactions
//! (`PUT /_matrix/app/v1/transactions/{txnId}`, with the `hs_token`) of up
//! to 100 events in the client format, retrying with back-off.
//!
//! A transaction's ID is the queue position of its last event: positions
//! are never reused, so a retry of the same events has the same ID (the
//! service can tell it has seen it), and a later transaction a new one.
//!
//! With several processes, the one holding the service's duty
//! (`cluster::appservice_duty`, `crate::duty`) sends its transactions:
//! two senders would each send a batch of their own, and the service
//! would get some events twice under two transaction IDs.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Registration, endpoint};
use crate::{
    cluster::{Cluster, appservice_duty},
    duty::Duty,
    storage::Storage,
};

/// How long an application service has to acknowledge a transaction.
pub const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// Most events one transaction carries.
const MAX_EVENTS_PER_TRANSACTION: usize = 100;
/// First and longest waits between two tries of a failing service.
const FIRST_RETRY_WAIT: Duration = Duration::from_millis(500);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(60);

pub struct TransactionSender {
    registrations: Vec<Arc<Registration>>,
    storage: Arc<dyn Storage>,
    cluster: Arc<dyn Cluster>,
    http: reqwest::Client,
    cancel: CancellationToken,
    workers: Mutex<HashMap<String, Arc<Notify>>>,
}

impl TransactionSender {
    pub fn new(
        registrations: Vec<Arc<Registration>>,
        (storage, cluster): (Arc<dyn Storage>, Arc<dyn Cluster>),
        http: reqwest::Client,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(TransactionSender {
            registrations,
            storage,
            cluster,
            http,
            cancel,
            workers: Mutex::default(),
        })
    }

    /// Wakes every worker (each sends what is queued for it).
    pub fn wake_all(self: &Arc<Self>) {
        for registration in &self.registrations {
            if registration.url.is_some() {
                self.wake(&registration.id);
            }
        }
    }

    /// Wakes the worker of an application service, starting it if needed.
    pub fn wake(self: &Arc<Self>, id: &str) {
        let Some(registration) = self.registrations.iter().find(|r| r.id == id).cloned() else {
            return;
        };
        let mut workers = self.workers.lock().expect("appservice workers");
        if let Some(notify) = workers.get(id) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        notify.notify_one();
        workers.insert(id.to_owned(), notify.clone());
        let sender = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = sender.cancel.cancelled() => {}
                _ = sender.run(&registration, &notify) => {}
            }
        });
    }

    async fn run(&self, registration: &Registration, notify: &Notify) {
        let mut wait = FIRST_RETRY_WAIT;
        let mut duty = Duty::new(appservice_duty(&registration.id), self.cluster.clone());
        loop {
            notify.notified().await;
            loop {
                match self.send_next(registration, &mut duty).await {
                    Ok(true) => wait = FIRST_RETRY_WAIT,
                    Ok(false) => break,
                    Err(e) => {
                        tracing::info!(appservice = %registration.id, error = %e, retry_in = ?wait, "transaction to application service failed");
                        duty.back_off(wait).await;
                        wait = (wait * 2).min(MAX_RETRY_WAIT);
                    }
                }
            }
        }
    }

    /// Sends the oldest queued events in one transaction: `Ok(false)` when
    /// nothing was queued, or another process holds the duty.
    async fn send_next(&self, registration: &Registration, duty: &mut Duty) -> Result<bool, String> {
        let queued = self
            .storage
            .queued_appservice_events(&registration.id, MAX_EVENTS_PER_TRANSACTION)
            .await
            .map_err(|e| e.to_string())?;
        let Some(&(last, _)) = queued.last() else {
            return Ok(false);
        };
        if !duty.hold().await {
            return Ok(false);
        }
        let ids: Vec<_> = queued.into_iter().map(|(_, id)| id).collect();
        let events = self.storage.events(&ids).await.map_err(|e| e.to_string())?;
        let events = crate::client_api::format::client_events_from(&*self.storage, &events, None)
            .await
            .map_err(|e| e.to_string())?;
        let txn_id = last.to_string();
        let url = endpoint(registration, &["transactions", &txn_id]).ok_or("the registration's url is not a URL")?;
        let response = self
            .http
            .put(url)
            .bearer_auth(&registration.hs_token)
            .json(&json!({ "events": events }))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        self.storage
            .dequeue_appservice_events(&registration.id, last)
            .await
            .map_err(|e| e.to_string())?;
        Ok(true)
    }
}
