//! Sending this server's events to the other servers of a room: a queue
//! per destination kept in storage (it survives kill -9 and restarts; an
//! event leaves it only when the destination acknowledged the transaction
//! that carried it), and a worker per destination that sends transactions
//! of up to 50 events, backing off while the destination is down, and
//! catching up when it is back.
//!
//! With several processes, one at a time sends a destination its queued
//! events: the one holding the destination's duty
//! (`cluster::federation_duty`, renewed while it sends or backs off, left
//! to run out when idle). Another process that queues events for it
//! notifies the holder (`OtherWrite::Queued`); a destination whose holder
//! died is found by [`Sender::take_over`] once the duty has run out. EDUs
//! stay with the process that made them, which sends them itself (without
//! the queued events when another process holds the duty).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedTransactionId, RoomId, ServerName,
    api::federation::transactions::send_transaction_message,
};
use serde_json::value::RawValue;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{FederationClient, FederationError};
use crate::duty::Duty;
use crate::{
    cluster::{Cluster, federation_duty},
    storage::{Storage, StorageError},
};

/// Most PDUs one transaction carries (the spec's limit).
const MAX_PDUS_PER_TRANSACTION: usize = 50;
/// Most EDUs one transaction carries (the spec's limit).
const MAX_EDUS_PER_TRANSACTION: usize = 100;
/// Most EDUs kept for a destination that is down; later ones are dropped.
const MAX_QUEUED_EDUS: usize = 1000;
/// Longest wait between two tries of a failing destination.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(10 * 60);
pub struct Sender {
    storage: Arc<dyn Storage>,
    cluster: Arc<dyn Cluster>,
    joined: Arc<crate::state::joined::JoinedCache>,
    federation: Arc<FederationClient>,
    own_name: OwnedServerName,
    cancel: CancellationToken,
    workers: Mutex<HashMap<OwnedServerName, Arc<Notify>>>,
    edus: Mutex<HashMap<OwnedServerName, Vec<serde_json::Value>>>,
    /// Tells this process's transaction IDs from the others'.
    process: u32,
}

impl Sender {
    pub fn new(
        (storage, cluster): (Arc<dyn Storage>, Arc<dyn Cluster>),
        joined: Arc<crate::state::joined::JoinedCache>,
        federation: Arc<FederationClient>,
        own_name: OwnedServerName,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Sender {
            storage,
            cluster,
            joined,
            federation,
            own_name,
            cancel,
            workers: Mutex::default(),
            edus: Mutex::default(),
            process: rand::random(),
        })
    }

    /// Starts workers for destinations with events still queued that no
    /// process sends to (after a restart).
    pub async fn resume(self: &Arc<Self>) -> Result<(), StorageError> {
        for destination in self.storage.queued_destinations().await? {
            self.wake(&destination);
        }
        Ok(())
    }

    /// Until `cancel`: takes over the destinations whose sender died (its
    /// duty ran out with events still queued), looking every half
    /// [`crate::duty::TTL`].
    pub async fn take_over(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(crate::duty::TTL / 2) => {}
            }
            if let Err(e) = self.resume().await {
                tracing::warn!(error = %e, "looking for destinations nobody sends to");
            }
        }
    }

    /// Wakes every worker (notifications of other processes may have been
    /// missed).
    pub fn wake_all(&self) {
        for notify in self.workers.lock().expect("sender workers").values() {
            notify.notify_one();
        }
    }

    /// Queues `event` for every server with a user joined to the room now,
    /// and, for a membership event other than an invite, for the server of
    /// the user whose membership it changes (a kicked or banned user's
    /// server was in the room when the event was made); but not for this
    /// server nor those in `except`.
    pub async fn send_pdu(
        self: &Arc<Self>,
        room_id: &RoomId,
        event: &crate::events::Pdu,
        except: &[&ServerName],
    ) -> Result<(), StorageError> {
        let mut destinations: Vec<OwnedServerName> = self.joined.get(room_id).await?.servers().cloned().collect();
        // The target of a membership change hears of it even when none of
        // its server's users is joined (a kick, a ban); an invite, though,
        // has reached the invitee's server already, through `/invite`.
        if event.kind == ruma::events::TimelineEventType::RoomMember
            && event.membership().as_deref() != Some("invite")
            && let Some(target) = event.state_key.as_deref().and_then(|k| ruma::UserId::parse(k).ok())
        {
            destinations.push(target.server_name().to_owned());
        }
        destinations.retain(|s| *s != self.own_name && !except.contains(&s.as_ref()));
        destinations.sort();
        destinations.dedup();
        if destinations.is_empty() {
            return Ok(());
        }
        self.storage.queue_pdu(&destinations, &event.event_id).await?;
        for destination in &destinations {
            self.wake(destination);
        }
        Ok(())
    }

    /// Wakes the worker of `destination` (started if there is none).
    pub fn wake(self: &Arc<Self>, destination: &ServerName) {
        let mut workers = self.workers.lock().expect("sender workers");
        if let Some(notify) = workers.get(destination) {
            notify.notify_one();
            return;
        }
        let notify = Arc::new(Notify::new());
        workers.insert(destination.to_owned(), notify.clone());
        let sender = self.clone();
        let destination = destination.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = sender.cancel.cancelled() => {}
                _ = sender.run(&destination, &notify) => {}
            }
        });
    }

    /// Queues an ephemeral message (typing, receipts) for the servers with
    /// users joined to the room, but this one. EDUs are kept in memory
    /// only: they are worth nothing later.
    pub async fn send_edu(self: &Arc<Self>, room_id: &RoomId, edu: serde_json::Value) -> Result<(), StorageError> {
        let destinations: Vec<OwnedServerName> = (self.joined.get(room_id).await?.servers())
            .filter(|s| **s != self.own_name)
            .cloned()
            .collect();
        self.send_edu_to(&destinations, edu);
        Ok(())
    }

    /// Queues an EDU for the given servers (device list updates, to-device
    /// messages), kept in memory like [`Self::send_edu`]'s.
    pub fn send_edu_to(self: &Arc<Self>, destinations: &[OwnedServerName], edu: serde_json::Value) {
        let destinations: Vec<&OwnedServerName> = destinations.iter().filter(|s| **s != self.own_name).collect();
        {
            let mut edus = self.edus.lock().expect("outbound EDUs");
            for destination in &destinations {
                let queue = edus.entry((*destination).clone()).or_default();
                if queue.len() < MAX_QUEUED_EDUS {
                    queue.push(edu.clone());
                }
            }
        }
        for destination in destinations {
            self.wake(destination);
        }
    }

    /// The worker of one destination: forever, send what is queued.
    async fn run(&self, destination: &ServerName, notify: &Notify) {
        let mut duty = Duty::new(federation_duty(destination), self.cluster.clone());
        let mut failures: u32 = 0;
        // The transaction being retried: its ID, last PDU position, EDUs.
        let mut pending: Option<(OwnedTransactionId, Option<i64>, Vec<serde_json::Value>)> = None;
        loop {
            let mut batch = match self.storage.queued_pdus(destination, MAX_PDUS_PER_TRANSACTION).await {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::error!(%destination, error = %e, "cannot read the outbound queue");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    continue;
                }
            };
            // Queued events are sent by the process that holds the duty.
            if !batch.is_empty() && !duty.hold().await {
                batch.clear();
            }
            let last = batch.last().map(|(position, _)| *position);
            let (txn_id, edus) = match pending.take() {
                // A retry carries the same transaction (so the receiver
                // can tell it is one), unless more PDUs have arrived.
                Some((id, pending_last, edus)) if pending_last == last => (id, edus),
                previous => {
                    let mut edus = previous.map(|(_, _, edus)| edus).unwrap_or_default();
                    {
                        let mut queued = self.edus.lock().expect("outbound EDUs");
                        if let Some(queue) = queued.get_mut(destination) {
                            let room = MAX_EDUS_PER_TRANSACTION.saturating_sub(edus.len()).min(queue.len());
                            edus.extend(queue.drain(..room));
                        }
                    }
                    if last.is_none() && edus.is_empty() {
                        // Idle, the duty is left unrenewed: it runs out
                        // unless events queued here or elsewhere (which
                        // notifies this process) wake the worker first.
                        notify.notified().await;
                        continue;
                    }
                    let first = batch.first().map_or(0, |(position, _)| *position);
                    let id = OwnedTransactionId::from(format!(
                        "{}-{first}-{:08x}",
                        u64::from(MilliSecondsSinceUnixEpoch::now().get()),
                        self.process
                    ));
                    (id, edus)
                }
            };
            match self.send_batch(destination, txn_id.clone(), &batch, &edus).await {
                Ok(()) => {
                    failures = 0;
                    if let Some(last) = last
                        && let Err(e) = self.storage.dequeue_pdus(destination, last).await
                    {
                        tracing::error!(%destination, error = %e, "cannot update the outbound queue");
                    }
                }
                Err(e) => {
                    failures += 1;
                    pending = Some((txn_id, last, edus));
                    let wait = Duration::from_secs(1 << failures.min(10)).min(MAX_RETRY_WAIT);
                    tracing::info!(%destination, error = %e, retry_in = ?wait, "transaction not delivered");
                    // New events wake the worker, but it still waits out
                    // the back-off before trying again, keeping the duty
                    // (another process would not know of the back-off).
                    duty.back_off(wait).await;
                }
            }
        }
    }

    async fn send_batch(
        &self,
        destination: &ServerName,
        txn_id: OwnedTransactionId,
        batch: &[(i64, ruma::OwnedEventId)],
        edus: &[serde_json::Value],
    ) -> Result<(), FederationError> {
        let ids: Vec<_> = batch.iter().map(|(_, id)| id.clone()).collect();
        let events = self
            .storage
            .events(&ids)
            .await
            .map_err(|e| FederationError::Request(e.to_string()))?;
        let pdus: Vec<Box<RawValue>> = events
            .iter()
            .filter_map(|e| RawValue::from_string(e.pdu.json.to_string()).ok())
            .collect();
        let count = pdus.len();
        let mut request = send_transaction_message::v1::Request::new(
            txn_id.clone(),
            self.own_name.clone(),
            MilliSecondsSinceUnixEpoch::now(),
        );
        request.pdus = pdus;
        request.edus = edus
            .iter()
            .filter_map(|edu| serde_json::value::to_raw_value(edu).ok())
            .map(ruma::serde::Raw::from_json)
            .collect();
        let response = match self.federation.send(destination, request).await {
            Ok(response) => response,
            // A success status with an answer that is not the spec's (e.g.
            // `{}`, without `pdus`): the transaction was taken; sending it
            // again would not change the answer.
            Err(FederationError::InvalidResponse { reason, .. }) => {
                tracing::info!(%destination, %txn_id, %reason, "transaction delivered; its answer is unreadable");
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for (event_id, result) in &response.pdus {
            if let Err(error) = result {
                tracing::info!(%destination, %event_id, %error, "the destination refused an event");
            }
        }
        tracing::debug!(%destination, %txn_id, count, edus = edus.len(), "transaction delivered");
        Ok(())
    }
}
