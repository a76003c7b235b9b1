//! Self-destructing messages (MSC2228, behind the `ephemeral_messages`
//! setting): an event whose content has `org.matrix.self_destruct_after`
//! (a time, in milliseconds since the epoch) is pruned at that time, as a
//! redaction would prune it, wherever it came from. No redaction event is
//! sent: each server that holds the event prunes its own copy.
//!
//! Storage keeps the times (`event_expiry`), so a restart loses none; one
//! task sleeps until the earliest and is woken when an event that expires
//! sooner is stored here. With several processes each looks at least
//! every [`LOOK_EVERY`] (another process may have stored an earlier one,
//! or died before its time came); storage expires each event once.

use std::{sync::Arc, time::Duration};

use ruma::{EventId, MilliSecondsSinceUnixEpoch};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::RoomError;
use crate::{events::Pdu, services::Services};

/// The longest a process sleeps before looking at the earliest expiry.
pub const LOOK_EVERY: Duration = Duration::from_secs(5);

/// The content key naming when an event self-destructs.
pub const SELF_DESTRUCT_AFTER: &str = "org.matrix.self_destruct_after";

/// Wakes [`run`] when an expiry was stored.
#[derive(Default)]
pub struct Expiries {
    stored: Notify,
}

impl Expiries {
    /// An event with an expiry was stored.
    pub fn scheduled(&self) {
        self.stored.notify_one();
    }
}

/// When `pdu` self-destructs, if it does: a message event (never a state
/// event, whose pruning would change the room's state) whose content
/// names an integer time.
pub fn expiry_of(pdu: &Pdu) -> Option<u64> {
    if pdu.state_key.is_some() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct Content {
        #[serde(rename = "org.matrix.self_destruct_after")]
        after: Option<serde_json::Value>,
    }
    let content: Content = serde_json::from_str(pdu.content.get()).ok()?;
    content.after?.as_u64()
}

/// Prunes each event when its time comes, until `cancel`.
pub async fn run(svc: Arc<Services>, cancel: CancellationToken) {
    loop {
        let wait = match next(&svc).await {
            Ok(wait) => wait,
            Err(error) => {
                tracing::warn!(%error, "self-destructing messages: cannot read the next expiry");
                Some(Duration::from_secs(60))
            }
        };
        let sleep = tokio::time::sleep(wait.unwrap_or(LOOK_EVERY).min(LOOK_EVERY));
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = svc.expiries.stored.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Expires every event whose time has come; returns how long until the
/// next one (`None`: none is scheduled).
async fn next(svc: &Services) -> Result<Option<Duration>, RoomError> {
    while let Some((event_id, at)) = svc.storage.next_expiry().await? {
        let now = u64::from(MilliSecondsSinceUnixEpoch::now().get());
        if at > now {
            return Ok(Some(Duration::from_millis(at - now)));
        }
        expire(svc, &event_id).await?;
    }
    Ok(None)
}

/// Prunes one event (if it is still held and not already redacted) and
/// forgets its expiry.
async fn expire(svc: &Services, event_id: &EventId) -> Result<(), RoomError> {
    let Some(event) = svc.storage.event(event_id).await? else {
        svc.storage.expire_event(event_id, None).await?;
        return Ok(());
    };
    let room = svc.storage.room(&event.pdu.room_id).await?;
    let rules = room.and_then(|r| r.version.rules());
    let pruned = match rules {
        Some(rules) if event.meta.redacted_by.is_none() => {
            let redacted = ruma::canonical_json::redact(event.pdu.canonical_object(), &rules.redaction, None)
                .map_err(|e| RoomError::Invalid(format!("cannot prune {event_id}: {e}")))?;
            Some(serde_json::to_string(&redacted).map_err(|e| RoomError::Invalid(e.to_string()))?)
        }
        _ => None,
    };
    if svc.storage.expire_event(event_id, pruned.as_deref()).await? {
        tracing::info!(%event_id, "self-destructing message pruned");
    }
    Ok(())
}
