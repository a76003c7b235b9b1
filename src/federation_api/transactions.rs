//! `PUT /_matrix/federation/v1/send/{txnId}`: events and ephemeral data
//! pushed by another server. Each PDU is handled on its own (one that
//! cannot be verified never blocks the others) and gets its own result:
//! an error for one dropped or not processed, none for one accepted,
//! soft-failed or rejected by the auth rules (all three handled); a
//! retried transaction gets the answer it got the first time.

use std::{collections::BTreeMap, sync::Arc};

use futures_util::StreamExt;
use ruma::{OwnedEventId, RoomVersionId, api::federation::transactions::send_transaction_message};
use serde_json::value::RawValue;

use super::extract::Fed;
use crate::{acl, error::MatrixError, events::loose_json, rooms::inbound, services::Services};

const MAX_PDUS: usize = 50;
/// How many rooms of one transaction are taken at once.
const ROOMS_AT_ONCE: usize = 4;
const MAX_EDUS: usize = 100;
/// The error of a PDU with numbers canonical JSON has not.
const NOT_CANONICAL: &str =
    "the event is not canonical JSON (a float, or an integer beyond ±2^53): this server does not take it";

/// The event ID a PDU will have, if it can be computed: as
/// `event_checks::check_format` computes it, without `unsigned` and, in
/// rooms v3 on, without an `event_id` the sender put in.
pub(crate) fn event_id_of(version: &RoomVersionId, raw: &RawValue) -> Option<OwnedEventId> {
    let rules = version.rules()?;
    let mut object: ruma::CanonicalJsonObject = serde_json::from_str(raw.get()).ok()?;
    object.remove("unsigned");
    if !rules.event_format.require_event_id {
        object.remove("event_id");
    }
    crate::events::event_id_of(&object, &rules).ok()
}

/// Who a PDU that failed its checks on receipt is answered for.
enum Identified {
    Id(OwnedEventId),
    /// Numbers canonical JSON has not (floats, integers beyond ±2^53):
    /// room versions 1–5 allow them and Synapse takes such events; weft,
    /// which keeps events as canonical JSON, does not. The sender is told
    /// which, by the ID it computed.
    NotCanonical(OwnedEventId),
    /// No ID can be computed: the PDU is left out of the answer.
    Unknown,
}

fn identify(version: &RoomVersionId, raw: &RawValue) -> Identified {
    if let Some(event_id) = event_id_of(version, raw) {
        return Identified::Id(event_id);
    }
    serde_json::from_str(raw.get())
        .ok()
        .and_then(|pdu| loose_json::event_id(pdu, &version.rules()?))
        .map_or(Identified::Unknown, Identified::NotCanonical)
}

pub async fn send(
    svc: Arc<Services>,
    req: Fed<send_transaction_message::v1::Request>,
) -> Result<send_transaction_message::v1::Response, MatrixError> {
    let body = &req.body;
    if body.origin != req.origin {
        return Err(MatrixError::forbidden(
            "The transaction's origin is not the server that signed the request",
        ));
    }
    if body.pdus.len() > MAX_PDUS || body.edus.len() > MAX_EDUS {
        return Err(MatrixError::bad_json(format!(
            "A transaction carries at most {MAX_PDUS} PDUs and {MAX_EDUS} EDUs"
        )));
    }
    let txn_id = body.transaction_id.as_str();
    if let Some(answer) = svc.storage.received_transaction(&req.origin, txn_id).await? {
        let pdus = serde_json::from_str::<BTreeMap<OwnedEventId, Option<String>>>(&answer)
            .map_err(|e| MatrixError::internal("stored transaction answer", e))?;
        return Ok(send_transaction_message::v1::Response::new(
            pdus.into_iter()
                .map(|(id, error)| (id, error.map_or(Ok(()), Err)))
                .collect(),
        ));
    }

    // The PDUs of each room, in the order given (rooms in the order they
    // first appear): a room's are taken under one hold of its lock, after
    // one reading of its ACL (as Synapse does), not once each. Their IDs
    // come from the checks on receipt (computed once), or, for a PDU that
    // fails them, from [`identify`].
    let mut rooms: Vec<(ruma::OwnedRoomId, RoomVersionId, Vec<&RawValue>)> = Vec::new();
    let mut results: BTreeMap<OwnedEventId, Result<(), String>> = BTreeMap::new();
    for raw in &body.pdus {
        let Some(room_id) = inbound::room_of(raw) else {
            tracing::info!(origin = %req.origin, "dropping a PDU without a room");
            continue;
        };
        if let Some((_, _, pdus)) = rooms.iter_mut().find(|(r, _, _)| *r == room_id) {
            pdus.push(raw);
            continue;
        }
        let Some(version) = svc.storage.room_version(&room_id).await? else {
            tracing::info!(origin = %req.origin, %room_id, "dropping a PDU for a room this server is not in");
            continue;
        };
        rooms.push((room_id, version, vec![raw]));
    }
    // The rooms' PDUs concurrently: each room holds its own lock, and one
    // slow room (a missing parent to fetch) does not hold up the others.
    let per_room: Vec<_> = rooms
        .into_iter()
        .map(|(room_id, version, raws)| {
            let (svc, origin) = (&svc, &req.origin);
            async move {
                let outcomes: Vec<(Option<OwnedEventId>, Result<(), String>)> =
                    if !acl::allows(svc, &room_id, origin).await? {
                        let denied = "the room's server ACL denies the sending server";
                        raws.iter().map(|_| (None, Err(denied.to_owned()))).collect()
                    } else {
                        inbound::receive_pdus(svc, origin, &room_id, &version, &raws)
                            .await?
                            .into_iter()
                            .map(|(event_id, outcome)| {
                                let result = match outcome {
                                    // Rejected by the auth rules is handled (held as
                                    // rejected), not an error of processing: no error
                                    // for it, as Synapse answers, so that senders do
                                    // not take it for a failure to retry or report.
                                    Ok(inbound::Outcome::Rejected(reason)) => {
                                        tracing::info!(%origin, ?event_id, %reason, "PDU rejected by the auth rules");
                                        Ok(())
                                    }
                                    Ok(_) => Ok(()),
                                    Err(e) => Err(e.to_string()),
                                };
                                (event_id, result)
                            })
                            .collect()
                    };
                Ok::<_, MatrixError>((room_id, version, raws, outcomes))
            }
        })
        .collect();
    // A few at once: each holds a room's lock (on PostgreSQL, a connection
    // of a small pool) while it may ask other servers for what it lacks.
    let mut per_room = futures_util::stream::iter(per_room).buffered(ROOMS_AT_ONCE);
    while let Some(done) = per_room.next().await {
        let (room_id, version, raws, outcomes) = done?;
        for (raw, (event_id, result)) in raws.into_iter().zip(outcomes) {
            let (event_id, result) = match event_id {
                Some(event_id) => (event_id, result),
                None => match identify(&version, raw) {
                    Identified::Id(event_id) => (event_id, result),
                    Identified::NotCanonical(event_id) => {
                        tracing::info!(origin = %req.origin, %room_id, %event_id, "refusing a PDU that is not canonical JSON");
                        (event_id, Err(NOT_CANONICAL.to_owned()))
                    }
                    Identified::Unknown => {
                        tracing::info!(origin = %req.origin, %room_id, "dropping a PDU whose event ID cannot be computed");
                        continue;
                    }
                },
            };
            if let Err(error) = &result {
                tracing::info!(origin = %req.origin, %event_id, %error, "PDU not accepted");
            }
            results.insert(event_id, result);
        }
    }
    for edu in &body.edus {
        let value: serde_json::Value = serde_json::from_str(edu.json().get()).unwrap_or_default();
        match super::devices::receive_edu(&svc, &req.origin, &value).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => {
                tracing::info!(origin = %req.origin, error = %e, "EDU not taken");
                continue;
            }
        }
        if let Err(e) = receive_edu(&svc, &req.origin, &value).await {
            tracing::info!(origin = %req.origin, error = %e, "EDU not taken");
        }
    }

    let answer: BTreeMap<&OwnedEventId, Option<&String>> =
        results.iter().map(|(id, result)| (id, result.as_ref().err())).collect();
    let answer = serde_json::to_string(&answer).map_err(|e| MatrixError::internal("transaction answer", e))?;
    svc.storage
        .store_received_transaction(&req.origin, txn_id, &answer)
        .await?;
    Ok(send_transaction_message::v1::Response::new(results))
}

/// Typing notifications and read receipts from `origin`, for its own
/// users in rooms they are joined to (and the ACL lets `origin` into);
/// presence of its own users (`presence::receive_edu`). Other EDUs
/// (device lists, ...) are read and dropped.
async fn receive_edu(svc: &Services, origin: &ruma::ServerName, edu: &serde_json::Value) -> Result<(), MatrixError> {
    let content = &edu["content"];
    let in_room = |room_id: &ruma::RoomId, user: &ruma::UserId| {
        let (room_id, user) = (room_id.to_owned(), user.to_owned());
        async move {
            if user.server_name() != origin || !acl::allows(svc, &room_id, origin).await? {
                return Ok::<_, MatrixError>(false);
            }
            Ok(
                match crate::visibility::current_membership(svc, &room_id, &user).await? {
                    Some(membership) => membership == "join",
                    // A room joined with partial state: its members are not
                    // all known yet; a server in it speaks for its users.
                    None => svc
                        .storage
                        .partial_state(&room_id)
                        .await?
                        .is_some_and(|p| p.servers.iter().any(|s| s == origin)),
                },
            )
        }
    };
    match edu["edu_type"].as_str().unwrap_or_default() {
        "m.typing" => {
            let (Some(room_id), Some(user)) = (
                content["room_id"].as_str().and_then(|r| ruma::RoomId::parse(r).ok()),
                content["user_id"].as_str().and_then(|u| ruma::UserId::parse(u).ok()),
            ) else {
                return Ok(());
            };
            if in_room(&room_id, &user).await? {
                let typing = content["typing"].as_bool().unwrap_or(false);
                svc.ephemeral
                    .set_typing(&room_id, &user, typing.then_some(std::time::Duration::from_secs(30)))
                    .await?;
            }
        }
        "m.receipt" => {
            let Some(rooms) = content.as_object() else {
                return Ok(());
            };
            for (room_id, types) in rooms {
                let Ok(room_id) = ruma::RoomId::parse(room_id) else {
                    continue;
                };
                let Some(users) = types["m.read"].as_object() else {
                    continue;
                };
                for (user, receipt) in users {
                    let Ok(user) = ruma::UserId::parse(user) else { continue };
                    if !in_room(&room_id, &user).await? {
                        continue;
                    }
                    let Some(event_id) = receipt["event_ids"]
                        .as_array()
                        .and_then(|ids| ids.last())
                        .and_then(|id| id.as_str())
                        .and_then(|id| OwnedEventId::try_from(id).ok())
                    else {
                        continue;
                    };
                    let ts = receipt["data"]["ts"].as_u64().unwrap_or_default();
                    let receipt = crate::storage::Receipt {
                        room_id: room_id.clone(),
                        user_id: user,
                        receipt_type: "m.read".to_owned(),
                        event_id,
                        ts,
                        position: 0,
                    };
                    svc.ephemeral.put_receipt(&receipt).await?;
                }
            }
        }
        "m.presence" => crate::presence::receive_edu(svc, origin, content).await?,
        other => tracing::debug!(%origin, edu_type = %other, "EDU ignored"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `pdu` fuzz target: a v3+ PDU carrying an `event_id` of
    /// its own got its transaction result under an ID hashed with that
    /// field, not the ID the event is held under (which is hashed without).
    #[test]
    fn result_id_is_the_held_id() {
        let raw = serde_json::value::to_raw_value(&serde_json::json!({
            "type": "m.room.message",
            "sender": "@alice:origin.test",
            "room_id": "!room:origin.test",
            "event_id": "$chosen_by_the_sender",
            "unsigned": {"age": 5},
            "content": {"body": "x"},
            "depth": 3,
            "origin_server_ts": 1,
            "prev_events": [],
            "auth_events": [],
        }))
        .unwrap();
        let rules = RoomVersionId::V6.rules().unwrap();
        let (_, held_id, _) = crate::event_checks::check_format(&rules, &raw).unwrap();
        assert_eq!(event_id_of(&RoomVersionId::V6, &raw), Some(held_id));
    }
}
