//! Hearing what other weft processes over the same database write: a
//! transaction that takes a stream position notifies `weft` with it (in
//! the same statement: `events.rs` and `live.rs` for live events,
//! `<process> events <position> <room> <event> [<member>]`, and a
//! partial state completed, `<process> events <position> <room>`;
//! `next_position_of` for account data, the e2e, ephemeral and presence
//! streams, `<process> <stream> <position> [<whom it concerns>]`), which
//! PostgreSQL delivers at the commit, in commit order, to every connection
//! listening. A statement that rewrites
//! a stored event (a redaction, an expiry) notifies `<process> event
//! <event>`, and an event written elsewhere may have replaced an outlier:
//! this process's event cache drops them. `<process> want <room>` is a
//! process waiting for a room's lock (`locks.rs`); `<process> queued
//! <holder> <duty>`, work queued for a duty another process holds
//! (`duties.rs`). One connection per process listens, outside
//! the pool; when it drops it is opened again, and the follower is told to
//! read the head again ([`OtherWrite::Resync`]): a lost notification only
//! delays a wake-up.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::AsyncMessage;

use ruma::EventId;

use super::{PgStorage, locks::HeldLocks};
use crate::cluster::{OtherStream, OtherWrite};
use crate::storage::event_cache::EventCache;

/// The channel the notifications go to.
const CHANNEL: &str = "weft";
/// Wait before opening a lost listening connection again.
const RECONNECT: Duration = Duration::from_secs(1);

impl PgStorage {
    /// Starts listening (see [`crate::cluster::Cluster::other_writers`]);
    /// ends when the receiver is dropped.
    pub(super) fn listen(&self) -> mpsc::Receiver<OtherWrite> {
        let (tx, rx) = mpsc::channel(1024);
        let config = self.config.clone();
        let process = self.process.clone();
        let locks = self.locks.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = listen_once(&config, &process, &locks, &events, &tx).await {
                    tracing::warn!(error = %e, "listening to other processes: connection lost, opening it again");
                }
                tokio::time::sleep(RECONNECT).await;
            }
        });
        rx
    }
}

/// One listening connection, until it drops (or nobody follows).
async fn listen_once(
    config: &tokio_postgres::Config,
    process: &str,
    locks: &HeldLocks,
    events: &EventCache,
    tx: &mpsc::Sender<OtherWrite>,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tokio_postgres::NoTls).await?;
    let (heard, mut notifications) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if heard.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Whatever committed before the LISTEN took effect was not heard: the
    // events others rewrote meanwhile (redacted, expired, outliers taken
    // into the timeline) may be cached here as they were.
    events.forget_all();
    if tx.send(OtherWrite::Resync).await.is_err() {
        return Ok(());
    }
    while let Some(payload) = notifications.recv().await {
        if let Some(room_id) = wanted_room(&payload, process) {
            locks.wanted(room_id);
            continue;
        }
        if let Some(duty) = queued_for(&payload, process) {
            if tx.send(OtherWrite::Queued { duty: duty.to_owned() }).await.is_err() {
                return Ok(());
            }
            continue;
        }
        if let Some(event_id) = changed_event(&payload, process).and_then(|id| <&EventId>::try_from(id).ok()) {
            events.forget(event_id);
        }
        let Some(write) = parse(&payload, process) else {
            continue;
        };
        if tx.send(write).await.is_err() {
            return Ok(());
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// The event another process wrote or rewrote (`<process> events
/// <position> <room> <event> [<member>]`; `<process> event <event>` from
/// a redaction, an expiry or a rejection at a partial room's resync): this
/// process's cached copy is stale.
fn changed_event<'a>(payload: &'a str, process: &str) -> Option<&'a str> {
    let parts: Vec<&str> = payload.splitn(6, ' ').collect();
    match parts.as_slice() {
        [from, ..] if *from == process => None,
        [_, "event", event_id] => Some(event_id),
        [_, "events", _, _, event_id, ..] => Some(event_id),
        _ => None,
    }
}

/// The room another process waits to lock (`<process> want <room>`, from
/// `locks.rs`).
fn wanted_room<'a>(payload: &'a str, process: &str) -> Option<&'a str> {
    let mut parts = payload.splitn(3, ' ');
    let (from, what, room) = (parts.next()?, parts.next()?, parts.next()?);
    (from != process && what == "want").then_some(room)
}

/// A duty this process holds, for which another queued work (`<process>
/// queued <holder> <duty>`, from `duties.rs`).
fn queued_for<'a>(payload: &'a str, process: &str) -> Option<&'a str> {
    let mut parts = payload.splitn(4, ' ');
    let (from, what, holder, duty) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (from != process && what == "queued" && holder == process).then_some(duty)
}

/// A notification of another process (`None`: this process's own, or not
/// one weft sends).
fn parse(payload: &str, process: &str) -> Option<OtherWrite> {
    let mut parts = payload.splitn(6, ' ');
    if parts.next()? == process {
        return None;
    }
    let stream = parts.next()?;
    let position = parts.next()?.parse().ok()?;
    let stream = match stream {
        "events" => {
            // (No event: a partial state completed, `partial_state.rs`.)
            let room_id = parts.next()?.try_into().ok()?;
            let _event_id = parts.next();
            let member = parts.next().map(str::to_owned);
            return Some(OtherWrite::Event {
                position,
                room_id,
                member,
            });
        }
        "account_data" => match parts.next().map(ruma::UserId::parse) {
            Some(Ok(user_id)) => return Some(OtherWrite::AccountData { position, user_id }),
            _ => OtherStream::AccountData,
        },
        "e2e" => match e2e_change(payload) {
            Some(change) => return Some(OtherWrite::E2e { position, change }),
            None => OtherStream::E2e,
        },
        "presence" => {
            let user_id = parts.next()?.try_into().ok()?;
            return Some(OtherWrite::Presence { position, user_id });
        }
        "members" => {
            let room_id = parts.next()?.try_into().ok()?;
            return Some(OtherWrite::Members { room_id });
        }
        "ephemeral" => match parts.next().map(ruma::RoomId::parse) {
            Some(Ok(room_id)) => return Some(OtherWrite::Ephemeral { position, room_id }),
            _ => OtherStream::Ephemeral,
        },
        _ => return None,
    };
    Some(OtherWrite::Stream { stream, position })
}

/// Whom an e2e notification names (`<process> e2e <position> keys <user>
/// [<visible to>]` or `… to <user>…`).
fn e2e_change(payload: &str) -> Option<crate::devices::E2eChange> {
    use crate::devices::E2eChange;
    let mut words = payload.split(' ').skip(3);
    match words.next()? {
        "keys" => {
            let user_id = words.next()?.try_into().ok()?;
            let visible_to = match words.next() {
                Some(user) => Some(user.try_into().ok()?),
                None => None,
            };
            Some(E2eChange::Keys { user_id, visible_to })
        }
        "to" => Some(E2eChange::ToDevice(
            words.map(|u| u.try_into().ok()).collect::<Option<Vec<_>>>()?,
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_of_others_are_read_and_own_ones_skipped() {
        assert_eq!(
            parse("b events 12 !r:x $e:x @u:x", "a"),
            Some(OtherWrite::Event {
                position: 12,
                room_id: "!r:x".try_into().unwrap(),
                member: Some("@u:x".to_owned()),
            })
        );
        assert_eq!(
            parse("b events 13 !r:x $e:x", "a"),
            Some(OtherWrite::Event {
                position: 13,
                room_id: "!r:x".try_into().unwrap(),
                member: None,
            })
        );
        assert_eq!(
            parse("b events 14 !r:x", "a"),
            Some(OtherWrite::Event {
                position: 14,
                room_id: "!r:x".try_into().unwrap(),
                member: None,
            }),
            "a partial state completed"
        );
        assert_eq!(changed_event("b events 14 !r:x", "a"), None);
        assert_eq!(
            parse("b e2e 7", "a"),
            Some(OtherWrite::Stream {
                stream: OtherStream::E2e,
                position: 7
            })
        );
        assert_eq!(
            parse("b account_data 8", "a"),
            Some(OtherWrite::Stream {
                stream: OtherStream::AccountData,
                position: 8
            })
        );
        assert_eq!(
            parse("b account_data 8 @u:x", "a"),
            Some(OtherWrite::AccountData {
                position: 8,
                user_id: "@u:x".try_into().unwrap()
            })
        );
        assert_eq!(
            parse("b ephemeral 9", "a"),
            Some(OtherWrite::Stream {
                stream: OtherStream::Ephemeral,
                position: 9
            })
        );
        assert_eq!(
            parse("b ephemeral 10 !r:x", "a"),
            Some(OtherWrite::Ephemeral {
                position: 10,
                room_id: "!r:x".try_into().unwrap()
            })
        );
        assert_eq!(parse("a events 12 !r:x", "a"), None);
        assert_eq!(parse("b events twelve !r:x", "a"), None);
        assert_eq!(parse("b presence 3", "a"), None, "a presence change names its user");
        use crate::devices::E2eChange;
        let user = |u: &str| ruma::OwnedUserId::try_from(u).unwrap();
        assert_eq!(
            parse("b e2e 5 keys @u:x", "a"),
            Some(OtherWrite::E2e {
                position: 5,
                change: E2eChange::Keys {
                    user_id: user("@u:x"),
                    visible_to: None
                }
            })
        );
        assert_eq!(
            parse("b e2e 6 keys @u:x @v:x", "a"),
            Some(OtherWrite::E2e {
                position: 6,
                change: E2eChange::Keys {
                    user_id: user("@u:x"),
                    visible_to: Some(user("@v:x"))
                }
            })
        );
        assert_eq!(
            parse("b e2e 7 to @u:x @v:x @w:x", "a"),
            Some(OtherWrite::E2e {
                position: 7,
                change: E2eChange::ToDevice(vec![user("@u:x"), user("@v:x"), user("@w:x")])
            })
        );
        assert_eq!(
            parse("b e2e 8 to", "a"),
            Some(OtherWrite::E2e {
                position: 8,
                change: E2eChange::ToDevice(Vec::new())
            }),
            "to nobody here"
        );
        assert_eq!(
            parse("b presence 4 @u:x", "a"),
            Some(OtherWrite::Presence {
                position: 4,
                user_id: "@u:x".try_into().unwrap()
            })
        );
        assert_eq!(parse("", "a"), None);
        assert_eq!(wanted_room("b want !r:x", "a"), Some("!r:x"));
        assert_eq!(changed_event("b events 13 !r:x $e:x @u:x", "a"), Some("$e:x"));
        assert_eq!(changed_event("b events 13 !r:x $e:x", "a"), Some("$e:x"));
        assert_eq!(changed_event("b event $e:x", "a"), Some("$e:x"));
        assert_eq!(changed_event("a event $e:x", "a"), None);
        assert_eq!(parse("b event $e:x", "a"), None);
        assert_eq!(wanted_room("a want !r:x", "a"), None);
        assert_eq!(queued_for("b queued a federation x.org", "a"), Some("federation x.org"));
        assert_eq!(queued_for("b queued c federation x.org", "a"), None, "another holder's");
        assert_eq!(parse("b queued a federation x.org", "a"), None);
        assert_eq!(parse("b want !r:x", "a"), None);
    }
}
