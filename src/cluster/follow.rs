//! The follower: what a process keeps for itself (its wake-up hub, its
//! stream heads, its caches) follows what the other processes commit, as
//! it follows its own writes. Each event another process commits moves
//! this process's events head and wakes the requests it concerns, as an
//! event written here does (`crate::rooms::persist`); a receipt or typing
//! change wakes its room's requests, account data its user's (and drops
//! their cached push rules), a presence change its user's and their
//! rooms', a to-device message its recipients', a change of keys its
//! user's and their rooms' (or the one user who sees it); membership
//! events drop the room from the joined-members cache; work queued for a
//! duty this process holds wakes its worker. The event cache follows the
//! others' rewrites inside storage.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{
    cluster::{APPSERVICE_DUTY, FEDERATION_DUTY, OtherStream, OtherWrite, PUSH_DUTY},
    services::Services,
    wakeups::Topic,
};

/// Follows the events other processes write (nothing to follow on SQLite),
/// until `cancel`.
pub async fn follow_other_processes(svc: Arc<Services>, cancel: CancellationToken) {
    let Some(mut writes) = svc.cluster.other_writers() else {
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
            if member.is_some() {
                svc.joined.changed(&room_id);
            }
            let mut topics = vec![Topic::Room(room_id)];
            if let Some(user) = member.and_then(|m| m.try_into().ok()) {
                topics.push(Topic::User(user));
            }
            svc.notifier.notify(position, &topics);
        }
        OtherWrite::Stream { stream, position } => match stream {
            // (Writers name the user or room; without one, everyone.)
            OtherStream::AccountData => {
                svc.account_data.advanced(position);
                svc.notifier.wakeups.wake_all();
            }
            OtherStream::E2e => svc.e2e.advance_and_wake_all(position),
            OtherStream::Ephemeral => {
                svc.ephemeral.advanced(position);
                svc.notifier.wakeups.wake_all();
            }
        },
        OtherWrite::AccountData { position, user_id } => {
            svc.push.rules.forget(&user_id);
            svc.account_data.advanced(position);
            svc.notifier.wakeups.wake(&[Topic::User(user_id)]);
        }
        OtherWrite::Ephemeral { position, room_id } => svc.ephemeral.changed_in(position, &room_id),
        OtherWrite::E2e { position, change } => {
            if let Err(e) = svc.e2e.changed(position, &change).await {
                tracing::warn!(error = %e, "reading whom another process's e2e change concerns");
                svc.notifier.wakeups.wake_all();
            }
        }
        OtherWrite::Presence { position, user_id } => {
            if let Err(e) = svc.presence.changed(position, &user_id, true).await {
                // The head moved; those concerned are woken by the next change.
                tracing::warn!(user = %user_id, error = %e, "reading who another process's presence change concerns");
                svc.notifier.wakeups.wake_all();
            }
        }
        OtherWrite::Members { room_id } => {
            svc.state.clear();
            svc.joined.changed(&room_id);
            svc.notifier.wakeups.wake(&[Topic::Room(room_id)]);
        }
        OtherWrite::Queued { duty } => {
            if let Some(destination) = duty
                .strip_prefix(FEDERATION_DUTY)
                .and_then(|d| ruma::ServerName::parse(d).ok())
            {
                svc.sender.wake(&destination);
            } else if let Some(id) = duty.strip_prefix(APPSERVICE_DUTY) {
                svc.appservices.wake(id);
            } else if duty == PUSH_DUTY {
                svc.push.sender.wake();
            }
        }
        OtherWrite::Resync => {
            svc.joined.clear();
            svc.push.rules.clear();
            svc.presence.forget_all();
            svc.sender.wake_all();
            svc.appservices.resume();
            svc.push.sender.wake();
            let heads = async {
                Ok::<_, crate::storage::StorageError>((
                    svc.storage.max_stream_ordering().await?,
                    svc.storage.max_account_data_position().await?,
                    svc.storage.max_e2e_position().await?,
                    svc.storage.max_ephemeral_position().await?,
                    svc.storage.max_presence_position().await?,
                ))
            };
            match heads.await {
                Ok((events, account_data, e2e, ephemeral, presence)) => {
                    svc.account_data.advanced(account_data);
                    svc.presence.advanced(presence);
                    svc.ephemeral.advanced(ephemeral);
                    svc.e2e.advance_and_wake_all(e2e);
                    // Whatever moved, whoever it concerned: everyone looks.
                    svc.notifier.notify(events, &[]);
                    svc.notifier.wakeups.wake_all();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream heads after losing other processes' notifications");
                    svc.notifier.wakeups.wake_all();
                }
            }
        }
    }
}
