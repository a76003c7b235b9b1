//! Storing a checked event in a room's timeline — local or from another
//! server — with its state, and keeping the caches and `/sync` in step.

use std::sync::Arc;

use ruma::{events::StateEventType, room_version_rules::RoomVersionRules};

use super::{RoomError, send::Sent};
use crate::{
    events::Pdu,
    services::Services,
    state::{StateMap, key},
    storage::{
        CurrentStateChange, CurrentStateUpdate, NewCurrentState, NewTimelineEvent, StateGroupId, StateWrite,
        TimelineStatus, TxnKey,
    },
};

/// What the room's current state becomes.
pub enum NewCurrent {
    /// The state after the event: it extends the room's only forward
    /// extremity.
    AfterEvent,
    /// The state after the event, for a room that had no current state
    /// here yet (the join of a room held elsewhere).
    AfterEventFirst,
    /// `base` (the current state) with the event applied: the event
    /// joined the DAG on a fork, and passed the auth rules against the
    /// current state too.
    Apply { base: (StateGroupId, Arc<StateMap>) },
    /// A state computed by the caller (resolved over the room's forward
    /// extremities), replacing `previous`.
    Resolved {
        previous: (StateGroupId, Arc<StateMap>),
        resolved: Arc<StateMap>,
    },
    /// Unchanged (the event was soft-failed or rejected).
    Unchanged,
}

/// An event to store, and what it does to the room.
pub struct ToPersist {
    pub pdu: Pdu,
    /// The state before the event (`None` for a room's create event).
    pub before: Option<(StateGroupId, Arc<StateMap>)>,
    pub current: NewCurrent,
    pub status: TimelineStatus,
    pub txn: Option<TxnKey>,
    /// History fetched from another server (see `NewTimelineEvent`).
    pub backfilled: bool,
}

/// Stores an event that went through its checks.
pub async fn persist_pdu(svc: &Services, event: ToPersist, rules: &RoomVersionRules) -> Result<Sent, RoomError> {
    let Prepared { write, after } = prepare(svc, event, rules).await;
    let members = MembersGuard::arm(svc, [&after]);
    let persisted = svc.storage.persist_timeline_event(write).await?;
    let sent = Sent::of(&after.pdu, &persisted);
    let result = after_write(svc, after, persisted, rules).await;
    members.disarm();
    result?;
    Ok(sent)
}

/// Drops the room's cached members ([`crate::state::joined`]) if it is
/// dropped armed: the future writing events that change them was dropped
/// (a cancelled request) between the write and [`after_write`], which
/// applies their change to the cache.
struct MembersGuard<'a> {
    svc: &'a Services,
    room_id: Option<ruma::OwnedRoomId>,
}

impl<'a> MembersGuard<'a> {
    fn arm<'b>(svc: &'a Services, afters: impl IntoIterator<Item = &'b AfterWrite>) -> MembersGuard<'a> {
        let room_id = afters
            .into_iter()
            .find(|a| !matches!(a.members, MembersChange::None))
            .map(|a| a.pdu.room_id.clone());
        MembersGuard { svc, room_id }
    }

    fn disarm(mut self) {
        self.room_id = None;
    }
}

impl Drop for MembersGuard<'_> {
    fn drop(&mut self) {
        if let Some(room_id) = &self.room_id {
            self.svc.joined.changed(room_id);
        }
    }
}

/// Stores events that went through their checks, in order, in one write
/// (a transaction's run of messages): all or none. What follows each
/// event's write is then done for each, in order; an error there does not
/// stop the others' (they are stored): the first storage error is
/// returned once all are done, any other is logged.
pub async fn persist_run(
    svc: &Services,
    events: Vec<ToPersist>,
    rules: &RoomVersionRules,
) -> Result<Vec<Sent>, crate::storage::StorageError> {
    let mut writes = Vec::with_capacity(events.len());
    let mut afters = Vec::with_capacity(events.len());
    for event in events {
        let Prepared { write, after } = prepare(svc, event, rules).await;
        writes.push(write);
        afters.push(after);
    }
    let members = MembersGuard::arm(svc, &afters);
    let persisted = svc.storage.persist_timeline_events(writes).await?;
    let mut sent = Vec::with_capacity(afters.len());
    let mut failed = None;
    for (after, persisted) in afters.into_iter().zip(persisted) {
        let stored = Sent::of(&after.pdu, &persisted);
        let event_id = &stored.pdu.event_id;
        match after_write(svc, after, persisted, rules).await {
            Ok(()) => {}
            Err(RoomError::Storage(e)) => {
                tracing::warn!(%event_id, error = %e, "after storing an event");
                failed.get_or_insert(e);
            }
            Err(e) => tracing::warn!(%event_id, error = %e, "after storing an event"),
        }
        sent.push(stored);
    }
    members.disarm();
    match failed {
        Some(e) => Err(e),
        None => Ok(sent),
    }
}

/// An event ready for storage ([`prepare`]): its write, and what is done
/// once it is written ([`after_write`]).
struct Prepared {
    write: NewTimelineEvent,
    after: AfterWrite,
}

/// What [`after_write`] needs of an event once stored.
struct AfterWrite {
    pdu: Arc<Pdu>,
    before_map: Arc<StateMap>,
    state_key: Option<crate::storage::StateKey>,
    current: NewCurrent,
    accepted: bool,
    backfilled: bool,
    members: MembersChange,
    expires: bool,
}

/// What an event's write does to the room's joined members.
enum MembersChange {
    None,
    /// Only the event's own member key changed: the user is now joined or
    /// not.
    One(ruma::OwnedUserId, bool),
    /// Others changed too (a state resolution).
    Many,
}

/// The write of an event, with its notifications: the local members'
/// push rules are applied before it is stored, so they are written with
/// it. A member event changes whom they apply to and the member count: it
/// is evaluated once stored ([`after_write`]).
async fn prepare(svc: &Services, event: ToPersist, rules: &RoomVersionRules) -> Prepared {
    let ToPersist {
        pdu,
        before,
        current,
        status,
        txn,
        backfilled,
    } = event;
    let mut pdu = pdu;
    // Storage reads the flag: a rejected state event is never part of the
    // state after it (the state after it is the state before it).
    pdu.rejected = matches!(status, TimelineStatus::Rejected(_));
    let pdu = Arc::new(pdu);
    let accepted = status == TimelineStatus::Accepted;
    let state_key = changed_key(&pdu, accepted);
    let replaces_state = state_key
        .as_ref()
        .and_then(|k| before.as_ref().and_then(|(_, map)| map.get(k).cloned()));
    let state_before = match &before {
        Some((group, _)) => StateWrite::Existing(*group),
        None => StateWrite::Delta {
            base: None,
            changes: Vec::new(),
        },
    };
    let own_change: Vec<_> = state_key
        .iter()
        .map(|k| CurrentStateChange {
            key: k.clone(),
            event_id: Some(pdu.event_id.clone()),
        })
        .collect();
    let current_state = match &current {
        NewCurrent::AfterEvent => Some(CurrentStateUpdate {
            state: NewCurrentState::AfterEvent,
            changes: own_change,
        }),
        NewCurrent::AfterEventFirst => {
            let mut changes: Vec<CurrentStateChange> = before
                .iter()
                .flat_map(|(_, map)| map.iter())
                .filter(|(k, _)| state_key.as_ref() != Some(*k))
                .map(|(k, id)| CurrentStateChange {
                    key: k.clone(),
                    event_id: Some(id.clone()),
                })
                .collect();
            changes.extend(own_change);
            Some(CurrentStateUpdate {
                state: NewCurrentState::AfterEvent,
                changes,
            })
        }
        NewCurrent::Apply { base } => Some(CurrentStateUpdate {
            state: NewCurrentState::Write(StateWrite::Delta {
                base: Some(base.0),
                changes: own_change
                    .iter()
                    .filter_map(|c| Some((c.key.clone(), c.event_id.clone()?)))
                    .collect(),
            }),
            changes: own_change,
        }),
        NewCurrent::Resolved { previous, resolved } => Some(resolved_update(previous, resolved)),
        NewCurrent::Unchanged => None,
    };
    let expires_at = expiry(svc, &pdu, accepted);
    let members = members_change(&pdu, current_state.as_ref());
    let member_event = pdu.kind == ruma::events::TimelineEventType::RoomMember;
    let before_map = before.as_ref().map(|(_, map)| map.clone()).unwrap_or_default();
    let notifications = if accepted && !backfilled && !member_event {
        // Notifications are a side effect: a failure is logged, the event
        // is stored.
        crate::push::evaluate::notifications(svc, &pdu, &before_map, rules)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(event_id = %pdu.event_id, error = %e, "push rules not applied");
                Vec::new()
            })
    } else {
        Vec::new()
    };
    Prepared {
        write: NewTimelineEvent {
            pdu: pdu.clone(),
            backfilled,
            status,
            state_before,
            replaces_state,
            current_state,
            txn,
            expires_at,
            notifications,
        },
        after: AfterWrite {
            pdu,
            before_map,
            state_key,
            current,
            accepted,
            backfilled,
            members,
            expires: expires_at.is_some(),
        },
    }
}

/// What the current state's `update` does to the joined members, `pdu`
/// making it.
fn members_change(pdu: &Pdu, update: Option<&CurrentStateUpdate>) -> MembersChange {
    let mut changed = update
        .into_iter()
        .flat_map(|u| &u.changes)
        .filter(|c| c.key.0 == StateEventType::RoomMember);
    let Some(first) = changed.next() else {
        return MembersChange::None;
    };
    // (A change to this event is a change of its own key.)
    let own = first.event_id.as_ref() == Some(&pdu.event_id);
    match (own, changed.next(), ruma::UserId::parse(first.key.1.as_str())) {
        (true, None, Ok(user)) => MembersChange::One(user, pdu.membership().as_deref() == Some("join")),
        _ => MembersChange::Many,
    }
}

/// What follows an event's write: the caches, the redactions it makes or
/// undergoes, the effects of its kind, and word to whoever waits on the
/// room.
async fn after_write(
    svc: &Services,
    after: AfterWrite,
    persisted: crate::storage::Persisted,
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    let AfterWrite {
        pdu,
        before_map,
        state_key,
        current,
        accepted,
        backfilled,
        members,
        expires,
    } = after;
    let member_event = pdu.kind == ruma::events::TimelineEventType::RoomMember;
    if expires {
        svc.expiries.scheduled();
    }
    if persisted.pushes_queued {
        svc.push.sender.wake();
    }
    match members {
        MembersChange::None => {}
        MembersChange::One(user, joined) => svc.joined.member_changed(&pdu.room_id, &user, joined),
        MembersChange::Many => svc.joined.changed(&pdu.room_id),
    }

    svc.state.remember(persisted.state_group_before, before_map.clone());
    let with_event = |base: &StateMap| {
        let mut map = base.clone();
        if let Some(k) = &state_key {
            map.insert(k.clone(), pdu.event_id.clone());
        }
        Arc::new(map)
    };
    if state_key.is_some() {
        svc.state.remember(persisted.state_group_after, with_event(&before_map));
    }
    match (persisted.current_state_group, &current) {
        (Some(group), NewCurrent::Apply { base }) => svc.state.remember(group, with_event(&base.1)),
        (Some(group), NewCurrent::Resolved { resolved, .. }) => svc.state.remember(group, resolved.clone()),
        _ => {}
    }
    apply_redactions(svc, &pdu, accepted, &before_map, &persisted.earlier_redactions, rules).await?;
    if accepted && !backfilled {
        if member_event
            && let Err(e) =
                crate::push::evaluate::event_stored(svc, &pdu, persisted.stream_ordering, &before_map, rules).await
        {
            tracing::warn!(event_id = %pdu.event_id, error = %e, "push rules not applied");
        }
        // Another server's tombstone may confirm an upgrade to a room local
        // users joined before it arrived.
        if pdu.kind == ruma::events::TimelineEventType::RoomTombstone
            && pdu.sender.server_name() != svc.server_name()
            && let Err(e) = super::upgrade::received_tombstone(svc, &pdu).await
        {
            tracing::warn!(event_id = %pdu.event_id, error = %e, "the upgrade's transfer failed");
        }
        if let Err(e) = crate::appservice::event_stored(svc, &pdu).await {
            tracing::warn!(event_id = %pdu.event_id, error = %e, "event not queued for application services");
        }
    }
    if accepted
        && !backfilled
        && !matches!(current, NewCurrent::Unchanged)
        && pdu.state_key.as_deref() == Some("")
        && pdu.kind == ruma::events::TimelineEventType::RoomGuestAccess
        && !serde_json::from_str(pdu.content.get()).is_ok_and(|c| super::guests::content_allows_guests(&c))
    {
        svc.guest_revocations.closed(&pdu.room_id);
    }
    if !backfilled {
        svc.notifier
            .notify(persisted.stream_ordering, &crate::wakeups::Topic::of_event(&pdu));
        if accepted && is_new_join(svc, &pdu, &before_map).await? {
            // Presence is a courtesy: failing to share it fails nothing.
            if let Err(e) = crate::presence::member_joined(svc, &pdu).await {
                tracing::info!(event_id = %pdu.event_id, error = %e, "presence not shared on join");
            }
        }
    }
    Ok(())
}

impl Sent {
    /// `pdu` as storage wrote it.
    fn of(pdu: &Arc<Pdu>, persisted: &crate::storage::Persisted) -> Sent {
        Sent {
            pdu: pdu.clone(),
            stream_ordering: persisted.stream_ordering,
            forward_extremity: persisted.forward_extremity,
        }
    }
}

/// The state key an accepted state event sets (none for a rejected,
/// soft-failed or non-state event).
fn changed_key(pdu: &Pdu, accepted: bool) -> Option<crate::storage::StateKey> {
    pdu.state_key
        .as_ref()
        .filter(|_| accepted)
        .map(|k| key(StateEventType::from(pdu.kind.to_string()), k))
}

/// When an accepted message self-destructs, with `ephemeral_messages` on.
fn expiry(svc: &Services, pdu: &Pdu, accepted: bool) -> Option<u64> {
    (accepted && svc.config.ephemeral_messages)
        .then(|| super::expiry::expiry_of(pdu))
        .flatten()
}

/// After `pdu` is stored: the redaction it is (if accepted and allowed by
/// the state before it), and the redactions of it held already.
async fn apply_redactions(
    svc: &Services,
    pdu: &Pdu,
    accepted: bool,
    before: &StateMap,
    earlier: &[ruma::OwnedEventId],
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    if accepted
        && let Some(target) = &pdu.redacts
        && redaction_allowed(svc, pdu, target, before, rules).await?
    {
        super::send::apply_redaction(svc, pdu, target, rules).await?;
    }
    apply_earlier_redactions(svc, pdu, earlier, rules).await
}

/// Redactions held before the event they redact (history comes newest
/// first): the first that may redact it (by the same rule as when a
/// redaction arrives after its target) takes effect now.
async fn apply_earlier_redactions(
    svc: &Services,
    target: &Pdu,
    redactions: &[ruma::OwnedEventId],
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    for id in redactions {
        let Some(redaction) = svc.storage.event(id).await?.filter(|r| r.meta.rejected.is_none()) else {
            continue;
        };
        let Some(group) = redaction.meta.state_group_before else {
            continue;
        };
        let state = svc.state.group(group).await?;
        if redaction_allowed(svc, &redaction.pdu, &target.event_id, &state, rules).await? {
            super::send::apply_redaction(svc, &redaction.pdu, &target.event_id, rules).await?;
            break;
        }
    }
    Ok(())
}

/// Whether `pdu` is a join of a user who was not joined before it.
async fn is_new_join(svc: &Services, pdu: &Pdu, before: &StateMap) -> Result<bool, RoomError> {
    let Some(user) = pdu
        .state_key
        .as_deref()
        .filter(|_| pdu.kind == ruma::events::TimelineEventType::RoomMember)
        .and_then(|k| ruma::UserId::parse(k).ok())
    else {
        return Ok(false);
    };
    if pdu.membership().as_deref() != Some("join") {
        return Ok(false);
    }
    Ok(svc.state.membership(before, &user).await?.as_deref() != Some("join"))
}

/// A resolved current state as a write: a delta on the previous current
/// state, or a snapshot when a key left the state.
fn resolved_update(previous: &(StateGroupId, Arc<StateMap>), resolved: &StateMap) -> CurrentStateUpdate {
    let mut changes: Vec<CurrentStateChange> = crate::state::changed(&previous.1, resolved)
        .into_iter()
        .map(|(k, id)| CurrentStateChange {
            key: k.clone(),
            event_id: Some(id.clone()),
        })
        .collect();
    let removed: Vec<CurrentStateChange> = previous
        .1
        .keys()
        .filter(|k| !previous.1.ptr_eq(resolved) && !resolved.contains_key(*k))
        .map(|k| CurrentStateChange {
            key: k.clone(),
            event_id: None,
        })
        .collect();
    let write = if removed.is_empty() {
        StateWrite::Delta {
            base: Some(previous.0),
            changes: changes
                .iter()
                .filter_map(|c| Some((c.key.clone(), c.event_id.clone()?)))
                .collect(),
        }
    } else {
        StateWrite::Delta {
            base: None,
            changes: resolved.iter().map(|(k, id)| (k.clone(), id.clone())).collect(),
        }
    };
    changes.extend(removed);
    CurrentStateUpdate {
        state: NewCurrentState::Write(write),
        changes,
    }
}

/// Whether a redaction is to be carried out ("Handling redactions" of the
/// room versions): the auth rules let anyone send one; it takes effect if
/// its sender's server is the redacted event's sender's server, or if its
/// sender has the redact power level in the state before it. (This
/// server's own users were checked before sending.)
async fn redaction_allowed(
    svc: &Services,
    redaction: &Pdu,
    target: &ruma::EventId,
    state: &StateMap,
    rules: &RoomVersionRules,
) -> Result<bool, RoomError> {
    if let Some(event) = svc.storage.event(target).await?
        && event.pdu.sender.server_name() == redaction.sender.server_name()
    {
        return Ok(true);
    }
    let power = super::power::power_levels(svc, state, &rules.authorization).await?;
    Ok(power.user_can_redact_event_of_other(&redaction.sender))
}

/// A checked event of a `/backfill` page, for [`persist_backfilled`].
pub struct Backfilled {
    /// With `rejected` set as `status` says.
    pub pdu: Arc<Pdu>,
    /// The state before it: an existing group, or the state after an event
    /// stored before it (in the same batch, perhaps).
    pub before: StateWrite,
    pub before_map: Arc<StateMap>,
    /// The state after it (`before_map` itself unless it is an accepted
    /// state event).
    pub after_map: Arc<StateMap>,
    /// Accepted or rejected (history is never soft-failed).
    pub status: TimelineStatus,
}

/// Stores events of the room's past (from `/backfill`), oldest first, in
/// one write: no current state, extremities or notifications move.
pub async fn persist_backfilled(
    svc: &Services,
    events: Vec<Backfilled>,
    rules: &RoomVersionRules,
) -> Result<(), RoomError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut after_write = Vec::with_capacity(events.len());
    let mut writes = Vec::with_capacity(events.len());
    for event in events {
        let Backfilled {
            pdu,
            before,
            before_map,
            after_map,
            status,
        } = event;
        let accepted = status == TimelineStatus::Accepted;
        let state_key = changed_key(&pdu, accepted);
        let replaces_state = state_key.as_ref().and_then(|k| before_map.get(k).cloned());
        let expires_at = expiry(svc, &pdu, accepted);
        writes.push(NewTimelineEvent {
            pdu: pdu.clone(),
            backfilled: true,
            status,
            state_before: before,
            replaces_state,
            current_state: None,
            txn: None,
            expires_at,
            notifications: Vec::new(),
        });
        after_write.push((
            pdu,
            before_map,
            after_map,
            state_key.is_some(),
            accepted,
            expires_at.is_some(),
        ));
    }
    let persisted = svc.storage.persist_timeline_events(writes).await?;
    for ((pdu, before_map, after_map, changes_state, accepted, expires), persisted) in
        after_write.into_iter().zip(persisted)
    {
        svc.state.remember(persisted.state_group_before, before_map.clone());
        if changes_state {
            svc.state.remember(persisted.state_group_after, after_map);
        }
        apply_redactions(svc, &pdu, accepted, &before_map, &persisted.earlier_redactions, rules).await?;
        if expires {
            svc.expiries.scheduled();
        }
    }
    Ok(())
}
