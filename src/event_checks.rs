//! The checks on a PDU received from another server, in the spec's order
//! ("Checks performed on receipt of a PDU"):
//!
//! 1. valid format for the room version (canonical JSON, sizes) — else drop;
//! 2. signatures of the servers that must sign it — else drop;
//! 3. content hash — else keep it, redacted;
//! 4. auth against its own `auth_events` — else reject;
//! 5. auth against the state before it — else reject;
//! 6. auth against the current state — else soft-fail.
//!
//! [`check_signed`] does 1–3 and gives the PDU as this server will hold
//! it; [`check_auth`] does 4–6 given the states.

use std::collections::{HashMap, HashSet};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, RoomId,
    RoomVersionId,
    events::StateEventType,
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
};
use serde_json::value::RawValue;

use crate::{
    events::{Pdu, auth::AuthContext},
    services::Services,
    state::StateMap,
    storage::{EventKey, StateKey, StorageError, StoredEvent},
};

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Step 1: the PDU is dropped.
    #[error("invalid event: {0}")]
    Invalid(String),
    /// Step 1, the PDU not being canonical JSON (floats, integers out of
    /// range): it is dropped.
    #[error("invalid event: not canonical JSON for the room version: {0}")]
    NotCanonical(String),
    /// Step 2, a signature missing or not verifying: the PDU is dropped.
    #[error("bad signature: {0}")]
    BadSignature(String),
    /// Steps 4–5: the PDU is rejected.
    #[error("event not allowed: {0}")]
    Rejected(String),
    #[error(transparent)]
    Storage(#[from] StorageError),
}

/// Steps 1–3. The result is redacted if its content hash did not match.
pub async fn check_signed(svc: &Services, version: &RoomVersionId, raw: &RawValue) -> Result<Pdu, CheckError> {
    let rules = version
        .rules()
        .ok_or_else(|| CheckError::Invalid(format!("unsupported room version {version}")))?;
    let (object, event_id, room_id) = check_format(&rules, raw)?;
    let keys = signing_keys(svc, &object, &rules).await?;
    check_signatures(&rules, object, event_id, &room_id, &keys)
}

/// Steps 1–3 for many PDUs at once (the state and auth chain of an
/// answer): the formats, then the signatures and hashes, are checked on
/// every core, the signing keys looked up in between. One result per PDU,
/// in order.
pub async fn check_signed_all(
    svc: &Services,
    version: &RoomVersionId,
    raws: Vec<Box<RawValue>>,
) -> Vec<Result<Pdu, CheckError>> {
    let Some(rules) = version.rules() else {
        return unsupported(version, raws.len());
    };
    let formats = formats(&rules, raws).await;
    check_formatted(svc, rules, formats, &HashMap::new())
        .await
        .into_iter()
        .map(|checked| match checked? {
            Signed::New(pdu) => Ok(pdu),
            // (Nothing is held in an empty map.)
            Signed::Held(event) => Err(CheckError::Invalid(format!("{} held", event.event_id))),
        })
        .collect()
}

/// A PDU of [`check_unheld_all`].
pub enum Signed {
    /// Not held here: checked (steps 1–3), as this server will hold it.
    New(Pdu),
    /// Held here already, under the event ID its format gives: what is
    /// known of the held copy, checked when it came, which stands for it.
    /// (From room version 3 the event ID covers the redacted event with its
    /// content hash, so another copy differs at most in its signatures; in
    /// versions 1 and 2 the sender picks it, so the held event may even be
    /// of another room: the caller checks.)
    Held(EventKey),
}

/// [`check_signed_all`] for PDUs that may be held already (a `/state`
/// answer after a partial join, an auth chain): their formats, which give
/// their event IDs, on every core; one storage read of those held; the
/// signatures and hashes of the others only. One result per PDU, in order.
pub async fn check_unheld_all(
    svc: &Services,
    version: &RoomVersionId,
    raws: Vec<Box<RawValue>>,
) -> Result<Vec<Result<Signed, CheckError>>, StorageError> {
    let Some(rules) = version.rules() else {
        return Ok(unsupported(version, raws.len()));
    };
    let formats = formats(&rules, raws).await;
    let ids: Vec<OwnedEventId> = formats.iter().flatten().map(|(_, id, _)| id.clone()).collect();
    let held: HashMap<OwnedEventId, EventKey> = svc
        .storage
        .event_keys(&ids)
        .await?
        .into_iter()
        .map(|e| (e.event_id.clone(), e))
        .collect();
    Ok(check_formatted(svc, rules, formats, &held).await)
}

fn unsupported<T>(version: &RoomVersionId, n: usize) -> Vec<Result<T, CheckError>> {
    (0..n)
        .map(|_| Err(CheckError::Invalid(format!("unsupported room version {version}"))))
        .collect()
}

/// A PDU in a valid format: as canonical JSON, with its event ID and room.
type Formatted = (CanonicalJsonObject, OwnedEventId, OwnedRoomId);

/// Step 1 of each PDU, on every core.
async fn formats(rules: &RoomVersionRules, raws: Vec<Box<RawValue>>) -> Vec<Result<Formatted, CheckError>> {
    let rules = rules.clone();
    on_every_core(raws, move |raw| check_format(&rules, &raw)).await
}

/// Steps 2–3 of each PDU in a valid format but those `held` (by event
/// ID): the signing keys looked up, then the signatures and hashes checked
/// on every core. One result per PDU, in order.
async fn check_formatted(
    svc: &Services,
    rules: RoomVersionRules,
    formats: Vec<Result<Formatted, CheckError>>,
    held: &HashMap<OwnedEventId, EventKey>,
) -> Vec<Result<Signed, CheckError>> {
    let mut results: Vec<Option<Result<Signed, CheckError>>> = Vec::with_capacity(formats.len());
    let mut unheld = Vec::new();
    for (i, format) in formats.into_iter().enumerate() {
        match format {
            Ok((_, event_id, _)) if held.contains_key(&event_id) => {
                results.push(held.get(&event_id).map(|event| Ok(Signed::Held(event.clone()))));
            }
            Ok((object, event_id, room_id)) => match signing_keys(svc, &object, &rules).await {
                Ok(keys) => {
                    results.push(None);
                    unheld.push((i, (object, event_id, room_id, keys)));
                }
                Err(e) => results.push(Some(Err(e))),
            },
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let (places, unheld): (Vec<usize>, Vec<_>) = unheld.into_iter().unzip();
    let checked = on_every_core(unheld, move |(object, event_id, room_id, keys)| {
        check_signatures(&rules, object, event_id, &room_id, &keys)
    })
    .await;
    for (i, checked) in places.into_iter().zip(checked) {
        results[i] = Some(checked.map(Signed::New));
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(CheckError::Invalid("not checked".to_owned()))))
        .collect()
}

/// `f` of each item, in order, the items shared out between blocking
/// threads, a few per core (checking signatures is CPU work that would
/// otherwise hold up the async workers). A handful is done in place.
async fn on_every_core<T, R>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R, CheckError> + Send + Sync + 'static,
) -> Vec<Result<R, CheckError>>
where
    T: Send + 'static,
    R: Send + 'static,
{
    const IN_PLACE: usize = 8;
    if items.len() <= IN_PLACE {
        return items.into_iter().map(f).collect();
    }
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let size = items.len().div_ceil(cores * 2).max(IN_PLACE);
    let f = std::sync::Arc::new(f);
    let mut items = items.into_iter();
    let mut parts = Vec::new();
    loop {
        let part: Vec<T> = items.by_ref().take(size).collect();
        if part.is_empty() {
            break;
        }
        let f = f.clone();
        let len = part.len();
        let task = tokio::task::spawn_blocking(move || part.into_iter().map(|item| f(item)).collect::<Vec<_>>());
        parts.push((len, task));
    }
    let mut results = Vec::new();
    for (len, part) in parts {
        match part.await {
            Ok(done) => results.extend(done),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // Only at the runtime's shutdown.
            Err(e) => results.extend((0..len).map(|_| Err(CheckError::Invalid(format!("check cancelled: {e}"))))),
        }
    }
    results
}

/// Step 1: the PDU as this server will hold it (`unsigned` and, but in
/// rooms v1 and v2, `event_id` removed), if its format is the room
/// version's; its event ID and room.
pub fn check_format(
    rules: &RoomVersionRules,
    raw: &RawValue,
) -> Result<(CanonicalJsonObject, OwnedEventId, OwnedRoomId), CheckError> {
    let mut object: CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|e| CheckError::NotCanonical(e.to_string()))?;
    // What the sender says outside the signed part is not kept.
    object.remove("unsigned");
    if !rules.event_format.require_event_id {
        object.remove("event_id");
    }
    ruma::state_res::check_pdu_format(&object, &rules.event_format).map_err(CheckError::Invalid)?;
    crate::events::ids::check_reference_format(&object, rules).map_err(CheckError::Invalid)?;
    // The reference hash, or (rooms v1, v2) the `event_id` the sender chose,
    // whose server must then sign too (ruma's signature rules require it).
    let event_id = crate::events::event_id_of(&object, rules).map_err(CheckError::Invalid)?;
    let room_id = match object.get("room_id") {
        Some(CanonicalJsonValue::String(id)) => {
            OwnedRoomId::try_from(id.as_str()).map_err(|e| CheckError::Invalid(format!("room_id: {e}")))?
        }
        // A v12 create event: the room ID is its reference hash.
        _ => OwnedRoomId::try_from(format!("!{}", &event_id.as_str()[1..]))
            .map_err(|e| CheckError::Invalid(e.to_string()))?,
    };
    Ok((object, event_id, room_id))
}

/// Steps 2 and 3 given the signing keys of the servers that must sign:
/// the PDU of [`check_format`], redacted if its content hash did not match.
pub fn check_signatures(
    rules: &RoomVersionRules,
    mut object: CanonicalJsonObject,
    event_id: OwnedEventId,
    room_id: &RoomId,
    keys: &PublicKeyMap,
) -> Result<Pdu, CheckError> {
    let verified = ruma::signatures::verify_event(keys, &object, rules)
        .map_err(|e| CheckError::BadSignature(format!("signature check of {event_id} failed: {e}")))?;
    if verified == Verified::Signatures {
        tracing::info!(%event_id, "content hash mismatch: keeping the event redacted");
        object = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| CheckError::Invalid(format!("cannot redact {event_id}: {e}")))?;
    }
    Pdu::from_canonical(event_id, Some(room_id), &object).map_err(|e| CheckError::Invalid(e.to_string()))
}

/// The keys of every server whose signature the event needs, valid when
/// the event was made (for room versions that enforce key validity).
async fn signing_keys(
    svc: &Services,
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<PublicKeyMap, CheckError> {
    let servers = ruma::signatures::required_server_signatures_to_verify_event(object, &rules.signatures)
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    let at: u64 = if rules.enforce_key_validity {
        match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => u64::try_from(i64::from(*ts)).unwrap_or_default(),
            _ => return Err(CheckError::Invalid("missing origin_server_ts".to_owned())),
        }
    } else {
        MilliSecondsSinceUnixEpoch::now().get().into()
    };
    let signatures = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(s)) => s,
        _ => return Err(CheckError::BadSignature("missing signatures".to_owned())),
    };
    let mut map = PublicKeyMap::new();
    for server in servers {
        let key_ids: Vec<&str> = match signatures.get(server.as_str()) {
            Some(CanonicalJsonValue::Object(by_server)) => by_server.keys().map(String::as_str).collect(),
            _ => return Err(CheckError::BadSignature(format!("not signed by {server}"))),
        };
        let keys = svc
            .keyring
            .key_map(&server, &key_ids, at)
            .await
            .map_err(|e| CheckError::Invalid(e.to_string()))?;
        map.extend(keys);
    }
    Ok(map)
}

/// Steps 4 and 5: `pdu` against its own auth events (which must be held
/// and not rejected) and against `state_before`.
pub async fn check_auth(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state_before: &StateMap,
) -> Result<(), CheckError> {
    check_auth_events(svc, rules, pdu).await?;
    let events = auth_state(svc, rules, pdu, state_before).await?;
    // The state's events for the keys the rules look at are the event's
    // own auth events (a message in a room that did not change under it):
    // the rules just ran against them.
    let implied = implied_create(rules, pdu);
    let own: HashSet<&OwnedEventId> = pdu.auth_events.iter().chain(&implied).collect();
    if events.len() == own.len() && events.iter().all(|e| own.contains(&e.pdu.event_id)) {
        return Ok(());
    }
    state_allows(rules, pdu, events.iter().map(|e| &*e.pdu))
}

/// Step 4: `pdu` against its own auth events, which must be held and not
/// rejected, with all the auth rules (state-independent and
/// state-dependent, the auth events standing in for the state). This is
/// all that can be checked of an outlier.
pub async fn check_auth_events(svc: &Services, rules: &RoomVersionRules, pdu: &Pdu) -> Result<(), CheckError> {
    let mut held: Vec<StoredEvent> = svc.storage.events(&pdu.auth_events).await?;
    if let Some(create) = implied_create(rules, pdu)
        && !held.iter().any(|e| e.pdu.event_id == create)
        && let Some(event) = svc.storage.event(&create).await?
    {
        held.push(event);
    }
    auth_events_allow(rules, pdu, held.iter().map(|e| (&*e.pdu, e.meta.rejected.is_some())))
}

/// The room's create event when the room version names it by the room ID
/// (v12) rather than in `auth_events`.
pub fn implied_create(rules: &RoomVersionRules, pdu: &Pdu) -> Option<OwnedEventId> {
    if !rules.authorization.room_create_event_id_as_room_id {
        return None;
    }
    OwnedEventId::try_from(format!("${}", pdu.room_id.strip_sigil())).ok()
}

/// Step 4 given the auth events as held, each with whether it was
/// rejected (and the [`implied_create`] event, if any): all must be held,
/// of the room, and not rejected.
pub fn auth_events_allow<'a>(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    held: impl IntoIterator<Item = (&'a Pdu, bool)>,
) -> Result<(), CheckError> {
    let mut by_id: HashMap<&OwnedEventId, &Pdu> = HashMap::new();
    for (event, rejected) in held {
        if event.room_id != pdu.room_id {
            return Err(CheckError::Rejected(format!(
                "auth event {} is of another room",
                event.event_id
            )));
        }
        if rejected {
            return Err(CheckError::Rejected(format!(
                "auth event {} was rejected",
                event.event_id
            )));
        }
        by_id.insert(&event.event_id, event);
    }
    if let Some(missing) = pdu.auth_events.iter().find(|id| !by_id.contains_key(*id)) {
        return Err(CheckError::Rejected(format!("auth event {missing} is not known here")));
    }
    // The auth events are the state the event claims to be allowed by:
    // both halves of the rules run against them (the state-dependent half
    // is what makes a forged power or membership claim fail here).
    let own = AuthContext::from_state(by_id.values().copied());
    crate::events::auth::check(&rules.authorization, pdu, &own).map_err(CheckError::Rejected)
}

/// Step 5 (or 6, with the current state): `pdu` against a state.
pub async fn check_against(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
) -> Result<(), CheckError> {
    let events = auth_state(svc, rules, pdu, state).await?;
    state_allows(rules, pdu, events.iter().map(|e| &*e.pdu))
}

/// The events of `state` for the keys the auth rules look at for `pdu`
/// ([`auth_keys`]).
async fn auth_state(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
) -> Result<Vec<StoredEvent>, CheckError> {
    let keys = auth_keys(rules, pdu)?;
    Ok(svc.state.events_for(state, &keys).await?)
}

/// The state keys the auth rules look at for `pdu` (the create event's
/// among them).
pub fn auth_keys(rules: &RoomVersionRules, pdu: &Pdu) -> Result<Vec<StateKey>, CheckError> {
    let mut keys = ruma::state_res::auth_types_for_event(
        &pdu.kind,
        &pdu.sender,
        pdu.state_key.as_deref(),
        &pdu.content,
        &rules.authorization,
    )
    .map_err(CheckError::Rejected)?;
    keys.push((StateEventType::RoomCreate, String::new()));
    Ok(keys)
}

/// Step 5 given the events of the state for [`auth_keys`].
pub fn state_allows<'a>(
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state_events: impl Iterator<Item = &'a Pdu>,
) -> Result<(), CheckError> {
    let ctx = AuthContext::from_state(state_events);
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind, key| {
        ctx.by_key.get(&(kind.clone(), key.to_owned())).copied()
    })
    .map_err(CheckError::Rejected)
}
