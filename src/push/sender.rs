//! Sending the queued pushes (`storage::push`: a row per pusher of each
//! notification, written with the notification) to push gateways.
//!
//! One process of the cluster sends them, the one holding the duty
//! [`PUSH_DUTY`] (`crate::duty`): each pusher's pushes go one at a time, in
//! the order they were queued, and each pusher on its own task, so that a
//! slow or failing gateway delays no other. A push leaves the queue when
//! the gateway accepted it; a failing pusher is tried again with back-off
//! (its pushes wait, in order); a pusher whose pushkey the gateway rejects
//! is removed. What a process queues wakes its own sender, and the holder
//! if another (`OtherWrite::Queued`); every process looks every
//! [`LOOK_EVERY`], so a holder's death costs at most the duty's TTL and
//! that. A push sent by a holder that died before it took it out of the
//! queue is sent again by the next: at least once, never lost.
//!
//! What the holder keeps in memory (the back-off of failing pushers) is
//! only a pace: another holder starts afresh.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tokio_util::sync::CancellationToken;

use super::gateway::{Delivery, EventPush, Gateway, HttpPusher, http_pushers, remove_rejected};
use crate::{
    cluster::{Cluster, PUSH_DUTY},
    duty::Duty,
    storage::{
        Storage,
        push::{PusherKey, QueuedPush},
    },
};

/// How often every process looks for pushes nobody sends (their holder
/// died), and the holder renews its duty while it sends.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// Pushers served per look; pushes read per pusher at a time.
const PUSHERS_PER_LOOK: usize = 1000;
const PUSHES_PER_READ: usize = 20;
/// First and longest waits before a failing pusher is tried again.
const FIRST_RETRY_WAIT: Duration = Duration::from_secs(1);
const MAX_RETRY_WAIT: Duration = Duration::from_secs(600);
/// A push not sent this long after it was queued is dropped (its gateway
/// has been failing for that long): news a day old is no news.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How often the holder drops such pushes (and those of removed pushers).
const DROP_OLD_EVERY: Duration = Duration::from_secs(600);

/// The sender of queued pushes of this process.
pub struct PushSender {
    storage: Arc<dyn Storage>,
    cluster: Arc<dyn Cluster>,
    gateway: Arc<Gateway>,
    wake: Notify,
}

/// A pusher that failed: when it may be tried again, and the wait after
/// its next failure.
struct Backoff {
    until: Instant,
    next_wait: Duration,
}

impl PushSender {
    pub fn new(storage: Arc<dyn Storage>, cluster: Arc<dyn Cluster>, gateway: Arc<Gateway>) -> Arc<PushSender> {
        Arc::new(PushSender {
            storage,
            cluster,
            gateway,
            wake: Notify::new(),
        })
    }

    /// Something was queued (here, or by another process for this one).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Sends what is queued, while this process holds the duty, until
    /// `cancel`.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let mut duty = Duty::new(PUSH_DUTY.to_owned(), self.cluster.clone());
        // Each pusher's turn: `Ok` once its queue is empty (or it is gone),
        // the error of its gateway else.
        let mut turns: JoinSet<(PusherKey, Result<(), String>)> = JoinSet::new();
        let mut running: HashSet<PusherKey> = HashSet::new();
        let mut backoff: HashMap<PusherKey, Backoff> = HashMap::new();
        let mut dropped_old: Option<Instant> = None;
        loop {
            match self
                .look(&mut duty, &mut turns, &mut running, &backoff, &mut dropped_old)
                .await
            {
                // The back-off of pushers with nothing queued any more
                // (removed, or their pushes dropped) is forgotten.
                Ok(Some(queued)) if queued.len() < PUSHERS_PER_LOOK => backoff.retain(|k, _| queued.contains(k)),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "looking for pushes to send"),
            }
            let next_retry = backoff.values().map(|b| b.until).min();
            let wait = next_retry.map_or(LOOK_EVERY, |at| {
                at.saturating_duration_since(Instant::now()).min(LOOK_EVERY)
            });
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(done) = turns.join_next(), if !turns.is_empty() => match done {
                    Ok((pusher, Ok(()))) => {
                        running.remove(&pusher);
                        backoff.remove(&pusher);
                    }
                    Ok((pusher, Err(e))) => {
                        running.remove(&pusher);
                        let wait = backoff.get(&pusher).map_or(FIRST_RETRY_WAIT, |b| b.next_wait);
                        tracing::info!(user = %pusher.user_id, pushkey = %pusher.pushkey, error = %e, retry_in = ?wait, "push failed");
                        backoff.insert(pusher, Backoff {
                            until: Instant::now() + wait,
                            next_wait: (wait * 2).min(MAX_RETRY_WAIT),
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "a push task failed"),
                },
            }
        }
    }

    /// Gives each pusher with queued pushes, neither sending already nor
    /// waiting out a failure, its turn, if this process holds the duty;
    /// the pushers with queued pushes, when it looked.
    async fn look(
        self: &Arc<Self>,
        duty: &mut Duty,
        turns: &mut JoinSet<(PusherKey, Result<(), String>)>,
        running: &mut HashSet<PusherKey>,
        backoff: &HashMap<PusherKey, Backoff>,
        dropped_old: &mut Option<Instant>,
    ) -> Result<Option<HashSet<PusherKey>>, crate::storage::StorageError> {
        // The turns in flight need the duty renewed even if the queue
        // looks empty now.
        if running.is_empty() && !self.storage.any_queued_push().await? {
            return Ok(Some(HashSet::new()));
        }
        if !duty.hold().await {
            return Ok(None);
        }
        if dropped_old.is_none_or(|at| at.elapsed() >= DROP_OLD_EVERY) {
            *dropped_old = Some(Instant::now());
            let before = (crate::storage::now_ms() - GIVE_UP_AFTER.as_millis() as i64).max(0) as u64;
            let dropped = self.storage.drop_old_pushes(before).await?;
            if dropped > 0 {
                tracing::info!(dropped, "dropped pushes queued a day ago or for pushers gone");
            }
        }
        let now = Instant::now();
        let queued: HashSet<PusherKey> = self
            .storage
            .pushers_with_pushes(PUSHERS_PER_LOOK)
            .await?
            .into_iter()
            .collect();
        for pusher in &queued {
            if running.contains(pusher) || backoff.get(pusher).is_some_and(|b| b.until > now) {
                continue;
            }
            let pusher = pusher.clone();
            running.insert(pusher.clone());
            let sender = self.clone();
            turns.spawn(async move {
                let turn = sender.turn(&pusher).await;
                (pusher, turn)
            });
        }
        Ok(Some(queued))
    }

    /// Sends the pusher's queued pushes in order, until its queue is empty
    /// (or the pusher is gone) or its gateway fails.
    async fn turn(&self, key: &PusherKey) -> Result<(), String> {
        let storage = &*self.storage;
        let pushers = http_pushers(storage, &key.user_id).await?;
        let Some(pusher) = pushers
            .into_iter()
            .find(|(p, _)| p.ids.app_id == key.app_id && p.ids.pushkey == key.pushkey)
        else {
            // Gone since: its pushes are dropped with the old ones.
            return Ok(());
        };
        loop {
            let queued = storage
                .queued_pushes(key, PUSHES_PER_READ)
                .await
                .map_err(|e| e.to_string())?;
            if queued.is_empty() {
                return Ok(());
            }
            for push in queued {
                if self.send(key, &pusher, &push).await? == Delivery::Rejected {
                    remove_rejected(storage, &key.user_id, &pusher.0).await;
                    return Ok(());
                }
                storage.push_done(push.position).await.map_err(|e| e.to_string())?;
            }
        }
    }

    /// One push; a push of an event no longer held, or unreadable, is
    /// dropped.
    async fn send(&self, key: &PusherKey, pusher: &HttpPusher, push: &QueuedPush) -> Result<Delivery, String> {
        let event = self.storage.event(&push.event_id).await.map_err(|e| e.to_string())?;
        let actions = serde_json::from_str(&push.actions);
        let (Some(event), Ok(actions)) = (event, actions) else {
            tracing::warn!(event_id = %push.event_id, "a queued push's event is not held or its actions unreadable: dropped");
            return Ok(Delivery::Accepted);
        };
        let event = EventPush {
            pdu: event.pdu,
            actions,
            room_name: push.room_name.clone(),
        };
        self.gateway
            .push(&*self.storage, &key.user_id, pusher, Some(&event))
            .await
    }
}
