//! Several weft processes over one database: what each process must hear
//! of the others (the design is `docs/cluster.md`).
//!
//! Cluster state lives in the database; what a process keeps for itself
//! (its wake-up hub, its caches, its room locks) must follow what the
//! others write. Today that is the events stream: each event another
//! process commits moves this process's events head and wakes the requests
//! it concerns, as an event written here does (`crate::rooms::persist`).
//! Still process-local, and so not yet right with several processes: the
//! other streams (receipts, typing, account data, device lists, presence),
//! room locks, background duties and the event cache (issue "Several weft
//! processes").

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{services::Services, storage::OtherWrite, wakeups::Topic};

/// Follows the events other processes write (nothing to follow on SQLite),
/// until `cancel`.
pub async fn follow_other_processes(svc: Arc<Services>, cancel: CancellationToken) {
    let Some(mut writes) = svc.storage.other_writers() else {
        return;
    };
    loop {
        let write = tokio::select! {
            _ = cancel.cancelled() => return,
            write = writes.recv() => write,
        };
        let Some(write) = write else { return };
        followed(&svc, write).await;
    }
}

async fn followed(svc: &Services, write: OtherWrite) {
    match write {
        OtherWrite::Event {
            position,
            room_id,
            member,
        } => {
            let mut topics = vec![Topic::Room(room_id)];
            if let Some(user) = member.and_then(|m| m.try_into().ok()) {
                topics.push(Topic::User(user));
            }
            svc.notifier.notify(position, &topics);
        }
        OtherWrite::Resync => match svc.storage.max_stream_ordering().await {
            Ok(head) => {
                if head > svc.notifier.head() {
                    svc.notifier.notify(head, &[]);
                    svc.notifier.wakeups.wake_all();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading the events head after losing other processes' notifications");
                svc.notifier.wakeups.wake_all();
            }
        },
    }
}
