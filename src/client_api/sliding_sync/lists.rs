//! The room lists: which of the user's rooms a list holds (its filters),
//! in which order (newest activity first), how many (`count`), and which
//! of them its `ranges` ask to see.
//!
//! A list holds the rooms the user is joined to, invited to (here or
//! through another server), has knocked on or is banned from; a room the
//! user left themselves only in the answer that follows the leaving (so
//! that the client learns of it), as Synapse does.

use std::collections::{HashMap, HashSet};

use ruma::{
    OwnedEventId, OwnedRoomId, UserId, api::client::sync::sync_events::v5::request::ListFilters,
    directory::RoomTypeFilter, events::StateEventType,
};

use crate::{
    error::MatrixError,
    services::Services,
    storage::{StreamOrdering, sliding_sync::RoomActivity},
};

/// One of the user's rooms, as the lists see it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub room_id: OwnedRoomId,
    /// `join`, `invite`, `knock`, `ban` or `leave`.
    pub membership: String,
    /// The user's membership event, and its place in the stream.
    pub event_id: OwnedEventId,
    pub membership_stream: StreamOrdering,
    /// An invite through another server, whose room is not held here: its
    /// stripped state (JSON).
    pub remote_invite_state: Option<String>,
    /// The room's newest activity the user sees (the list's order).
    pub order: StreamOrdering,
    /// `bump_stamp`: the newest event of a
    /// [`crate::storage::sliding_sync::BUMP_TYPES`] type, or else the
    /// user's membership.
    pub bump_stamp: StreamOrdering,
    /// The room's newest live event (any type): whether it changed.
    pub latest: StreamOrdering,
}

/// The user's rooms as of `head`; `since`: the stream position of the
/// connection's last answer (rooms left since then are included).
pub async fn candidates(
    svc: &Services,
    user: &UserId,
    head: StreamOrdering,
    since: Option<StreamOrdering>,
) -> Result<Vec<Candidate>, MatrixError> {
    let mut rooms: Vec<Candidate> = Vec::new();
    let mut seen = HashSet::new();
    for m in svc.storage.user_memberships(user).await? {
        if m.stream_ordering > head {
            continue;
        }
        let keep = match m.membership.as_str() {
            "join" | "invite" | "knock" | "ban" => true,
            // Left (or kicked) since the last answer: shown once.
            "leave" => since.is_some_and(|since| m.stream_ordering > since),
            _ => false,
        };
        if !keep {
            continue;
        }
        seen.insert(m.room_id.clone());
        rooms.push(Candidate {
            room_id: m.room_id,
            membership: m.membership,
            event_id: m.event_id,
            membership_stream: m.stream_ordering,
            remote_invite_state: None,
            order: m.stream_ordering,
            bump_stamp: m.stream_ordering,
            latest: m.stream_ordering,
        });
    }
    for invite in svc.storage.remote_invites(user).await? {
        if invite.stream_ordering > head || invite.membership != "invite" || seen.contains(&invite.room_id) {
            continue;
        }
        rooms.push(Candidate {
            room_id: invite.room_id,
            membership: "invite".to_owned(),
            event_id: invite.event_id,
            membership_stream: invite.stream_ordering,
            remote_invite_state: Some(invite.invite_state),
            order: invite.stream_ordering,
            bump_stamp: invite.stream_ordering,
            latest: invite.stream_ordering,
        });
    }
    // A joined room's order is its newest event; the others', the user's
    // membership (what they see of the room).
    let joined: Vec<OwnedRoomId> = rooms
        .iter()
        .filter(|c| c.membership == "join")
        .map(|c| c.room_id.clone())
        .collect();
    let activity: HashMap<OwnedRoomId, RoomActivity> = if joined.is_empty() {
        HashMap::new()
    } else {
        svc.storage.room_activity(&joined, head).await?
    };
    for room in &mut rooms {
        if let Some(activity) = activity.get(&room.room_id) {
            room.order = activity.latest;
            room.latest = activity.latest;
            room.bump_stamp = activity.bump.unwrap_or(room.membership_stream);
        }
    }
    rooms.sort_by(|a, b| b.order.cmp(&a.order).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(rooms)
}

/// What the filters need to know of the user: their direct rooms.
pub struct FilterContext {
    pub direct: HashSet<OwnedRoomId>,
}

impl FilterContext {
    pub async fn load(svc: &Services, user: &UserId) -> Result<Self, MatrixError> {
        let direct = svc
            .storage
            .account_data(user, None, "m.direct")
            .await?
            .and_then(|json| serde_json::from_str::<serde_json::Value>(&json).ok())
            .map(|content| direct_rooms(&content))
            .unwrap_or_default();
        Ok(FilterContext { direct })
    }
}

/// The rooms `m.direct` names.
fn direct_rooms(content: &serde_json::Value) -> HashSet<OwnedRoomId> {
    content
        .as_object()
        .into_iter()
        .flat_map(|by_user| by_user.values())
        .filter_map(serde_json::Value::as_array)
        .flatten()
        .filter_map(|room| room.as_str().and_then(|r| OwnedRoomId::try_from(r).ok()))
        .collect()
}

/// Whether `room` passes a list's filters.
pub async fn passes(
    svc: &Services,
    filters: &ListFilters,
    context: &FilterContext,
    room: &Candidate,
) -> Result<bool, MatrixError> {
    if let Some(is_invite) = filters.is_invite
        && is_invite != (room.membership == "invite")
    {
        return Ok(false);
    }
    if let Some(is_dm) = filters.is_dm
        && is_dm != context.direct.contains(&room.room_id)
    {
        return Ok(false);
    }
    if filters.is_encrypted.is_none() && filters.room_types.is_empty() && filters.not_room_types.is_empty() {
        return Ok(true);
    }
    let facts = RoomFacts::of(svc, room).await?;
    if let Some(is_encrypted) = filters.is_encrypted
        && is_encrypted != facts.encrypted
    {
        return Ok(false);
    }
    let kind = |filter: &RoomTypeFilter| match filter {
        RoomTypeFilter::Default => facts.room_type.is_none(),
        other => other.as_str() == facts.room_type.as_deref(),
    };
    if !filters.room_types.is_empty() && !filters.room_types.iter().any(kind) {
        return Ok(false);
    }
    Ok(!filters.not_room_types.iter().any(kind))
}

/// What the filters ask of a room's state.
struct RoomFacts {
    encrypted: bool,
    room_type: Option<String>,
}

impl RoomFacts {
    async fn of(svc: &Services, room: &Candidate) -> Result<RoomFacts, MatrixError> {
        if let Some(stripped) = &room.remote_invite_state {
            // An invite from elsewhere: what its stripped state says.
            let events: Vec<serde_json::Value> = serde_json::from_str(stripped).unwrap_or_default();
            let of_type = |kind: &str| events.iter().find(|e| e["type"] == kind);
            return Ok(RoomFacts {
                encrypted: of_type("m.room.encryption").is_some(),
                room_type: of_type("m.room.create")
                    .and_then(|e| e["content"]["type"].as_str())
                    .map(str::to_owned),
            });
        }
        let Some((_, state)) = svc.state.current(&room.room_id).await? else {
            return Ok(RoomFacts {
                encrypted: false,
                room_type: None,
            });
        };
        let encrypted = state.contains_key(&(StateEventType::RoomEncryption, String::new()));
        let room_type = svc
            .state
            .event_for(&state, StateEventType::RoomCreate, "")
            .await?
            .and_then(|create| create.pdu.content_value()["type"].as_str().map(str::to_owned));
        Ok(RoomFacts { encrypted, room_type })
    }
}

/// The positions `ranges` ask for (inclusive pairs), in a list of `count`.
pub fn in_ranges(ranges: &[(ruma::UInt, ruma::UInt)], count: usize) -> Vec<usize> {
    let mut wanted: Vec<usize> = Vec::new();
    for (start, end) in ranges {
        let start = u64::from(*start) as usize;
        let end = (u64::from(*end) as usize).min(count.saturating_sub(1));
        if count == 0 || start > end {
            continue;
        }
        wanted.extend(start..=end);
    }
    wanted.sort_unstable();
    wanted.dedup();
    wanted
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::uint;

    #[test]
    fn ranges_are_inclusive_clamped_and_merged() {
        assert_eq!(in_ranges(&[(uint!(0), uint!(2))], 10), vec![0, 1, 2]);
        assert_eq!(in_ranges(&[(uint!(0), uint!(99))], 3), vec![0, 1, 2]);
        assert_eq!(
            in_ranges(&[(uint!(0), uint!(1)), (uint!(1), uint!(3))], 10),
            vec![0, 1, 2, 3]
        );
        assert!(in_ranges(&[(uint!(5), uint!(9))], 3).is_empty());
        assert!(in_ranges(&[(uint!(0), uint!(0))], 0).is_empty());
        assert!(in_ranges(&[(uint!(3), uint!(1))], 10).is_empty());
    }

    #[test]
    fn direct_rooms_of_m_direct() {
        let content = serde_json::json!({
            "@a:x": ["!one:x", "!two:x"],
            "@b:x": ["!three:x", 4, "not a room"],
        });
        let rooms = direct_rooms(&content);
        assert_eq!(rooms.len(), 3);
        assert!(rooms.contains(&OwnedRoomId::try_from("!three:x").unwrap()));
    }
}
