//! State resolution v1, the algorithm of room version 1 (ruma's
//! `state_res` implements only v2 and v2.1). Spec: rooms/v1, "State
//! resolution".
//!
//! The resolved state *R* starts as the union of the states without the
//! conflicting entries (those where the states name different events for
//! the same type and state key). Then, in this order:
//!
//! 1. `m.room.power_levels`, 2. `m.room.join_rules`, 3. each
//!    `m.room.member`: the conflicting events sorted by ascending depth,
//!    then descending `sha1(event_id)`; the first goes into *R*; each next
//!    one replaces it while the auth rules allow it in *R*; the first one
//!    refused ends the walk.
//! 4. Every other conflict: the event of highest depth, then lowest
//!    `sha1(event_id)`, that the auth rules allow in *R*. (When none is
//!    allowed, the spec says nothing; like Synapse, the last one tried —
//!    the lowest — is taken.)
//!
//! Like Synapse, each `m.room.member` conflict is resolved against *R* as
//! it stands after the join rules (not against the other members' results),
//! so the result does not depend on the order of the keys. "Allowed" means
//! the state-dependent auth rules (the signatures and the event's own auth
//! events were checked on receipt).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, HashMap},
};

use ruma::{EventId, OwnedEventId, events::StateEventType, room_version_rules::AuthorizationRules};
use sha1::{Digest, Sha1};

use super::StateMap;
use crate::{events::Pdu, storage::StateKey};

/// Resolves `states` into one. Events `fetch` does not know cannot take
/// part in a conflict (a conflict left with one known event is none).
pub fn resolve<'a>(
    rules: &AuthorizationRules,
    states: &[&StateMap],
    fetch: impl Fn(&EventId) -> Option<&'a Pdu>,
) -> StateMap {
    let mut resolved = StateMap::new();
    let mut conflicted: BTreeMap<StateKey, Vec<&'a Pdu>> = BTreeMap::new();
    let mut candidates: HashMap<&StateKey, Vec<&OwnedEventId>> = HashMap::new();
    for state in states {
        for (key, id) in state.iter() {
            let ids = candidates.entry(key).or_default();
            if !ids.contains(&id) {
                ids.push(id);
            }
        }
    }
    for (key, ids) in candidates {
        if let [only] = ids.as_slice() {
            resolved.insert(key.clone(), (*only).clone());
            continue;
        }
        let events: Vec<&Pdu> = ids.iter().filter_map(|id| fetch(id)).collect();
        match events.as_slice() {
            [] => {}
            [only] => {
                resolved.insert(key.clone(), only.event_id.clone());
            }
            _ => {
                conflicted.insert(key.clone(), events);
            }
        }
    }

    let mut state = Resolving { resolved, fetch };
    let power = (StateEventType::RoomPowerLevels, String::new());
    if let Some(events) = conflicted.remove(&power) {
        let winner = state.auth_walk(rules, &power, events);
        state.resolved.insert(power, winner);
    }
    let join_rules = (StateEventType::RoomJoinRules, String::new());
    if let Some(events) = conflicted.remove(&join_rules) {
        let winner = state.auth_walk(rules, &join_rules, events);
        state.resolved.insert(join_rules, winner);
    }
    let members: Vec<StateKey> = conflicted
        .keys()
        .filter(|(kind, _)| *kind == StateEventType::RoomMember)
        .cloned()
        .collect();
    let mut member_winners = Vec::new();
    for key in members {
        let events = conflicted.remove(&key).expect("listed just above");
        member_winners.push((key.clone(), state.auth_walk(rules, &key, events)));
    }
    state.resolved.extend(member_winners);
    let mut others = Vec::new();
    for (key, events) in conflicted {
        others.push((key, state.first_allowed(rules, events)));
    }
    state.resolved.extend(others);
    state.resolved
}

struct Resolving<F> {
    resolved: StateMap,
    fetch: F,
}

impl<'a, F: Fn(&EventId) -> Option<&'a Pdu>> Resolving<F> {
    /// Steps 1–3 for one key: ascending order, each next event replacing
    /// the last while it is allowed.
    fn auth_walk(&self, rules: &AuthorizationRules, key: &StateKey, mut events: Vec<&'a Pdu>) -> OwnedEventId {
        events.sort_by_cached_key(|e| (e.depth, Reverse(sha1_hex(&e.event_id))));
        let mut winner = events[0];
        for event in &events[1..] {
            if !self.allowed(rules, event, Some((key, winner))) {
                break;
            }
            winner = event;
        }
        winner.event_id.clone()
    }

    /// Step 4: the first allowed in descending order, else the last.
    fn first_allowed(&self, rules: &AuthorizationRules, mut events: Vec<&'a Pdu>) -> OwnedEventId {
        events.sort_by_cached_key(|e| (Reverse(e.depth), sha1_hex(&e.event_id)));
        events
            .iter()
            .find(|e| self.allowed(rules, e, None))
            .or(events.last())
            .map(|e| e.event_id.clone())
            .expect("a conflict has events")
    }

    /// Whether the auth rules allow `event` in the state resolved so far,
    /// with `key` standing for `with` when given.
    fn allowed(&self, rules: &AuthorizationRules, event: &Pdu, with: Option<(&StateKey, &'a Pdu)>) -> bool {
        ruma::state_res::check_state_dependent_auth_rules(rules, event, |kind, state_key| {
            if let Some(((k, s), pdu)) = with
                && k == kind
                && s == state_key
            {
                return Some(pdu);
            }
            let id = self.resolved.get(&(kind.clone(), state_key.to_owned()))?;
            (self.fetch)(id)
        })
        .is_ok()
    }
}

fn sha1_hex(id: &EventId) -> String {
    Sha1::digest(id.as_str().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::*;

    const ROOM: &str = "!room:a.org";
    const ALICE: &str = "@alice:a.org";
    const BOB: &str = "@bob:b.org";
    const CAROL: &str = "@carol:c.org";

    /// A tiny v1 room: alice created it (depth 1), joined (2), set power
    /// levels giving herself 100 (3) and a public join rule (4); bob
    /// joined (5). `base` is the state after that.
    struct Room {
        events: HashMap<OwnedEventId, Pdu>,
        base: StateMap,
    }

    impl Room {
        fn new() -> Room {
            let mut room = Room {
                events: HashMap::new(),
                base: StateMap::new(),
            };
            for (name, sender, kind, state_key, content, depth) in [
                ("create", ALICE, "m.room.create", "", json!({ "creator": ALICE }), 1),
                (
                    "alice",
                    ALICE,
                    "m.room.member",
                    ALICE,
                    json!({ "membership": "join" }),
                    2,
                ),
                ("pl", ALICE, "m.room.power_levels", "", power(&[(ALICE, 100)]), 3),
                (
                    "jr",
                    ALICE,
                    "m.room.join_rules",
                    "",
                    json!({ "join_rule": "public" }),
                    4,
                ),
                ("bob", BOB, "m.room.member", BOB, json!({ "membership": "join" }), 5),
            ] {
                let id = room.add(name, sender, kind, state_key, content, depth);
                room.base.insert(room.key(&id), id);
            }
            room
        }

        fn add(
            &mut self,
            name: &str,
            sender: &str,
            kind: &str,
            state_key: &str,
            content: serde_json::Value,
            depth: u64,
        ) -> OwnedEventId {
            let id = OwnedEventId::try_from(format!("${name}:a.org")).unwrap();
            let json = json!({
                "event_id": id, "room_id": ROOM, "sender": sender, "type": kind,
                "state_key": state_key, "content": content, "depth": depth,
                "origin_server_ts": 0, "prev_events": [], "auth_events": [],
            });
            let pdu = Pdu::from_json(id.clone(), None, Arc::from(json.to_string())).unwrap();
            self.events.insert(id.clone(), pdu);
            id
        }

        fn key(&self, id: &OwnedEventId) -> StateKey {
            let pdu = &self.events[id];
            (
                StateEventType::from(pdu.kind.to_string()),
                pdu.state_key.clone().unwrap(),
            )
        }

        /// The base state with `ids` set on top.
        fn state(&self, ids: &[&OwnedEventId]) -> StateMap {
            let mut state = self.base.clone();
            for id in ids {
                state.insert(self.key(id), (*id).clone());
            }
            state
        }

        /// Resolves the base state with each list of events on top.
        fn resolve(&self, states: &[&[&OwnedEventId]]) -> StateMap {
            let states: Vec<StateMap> = states.iter().map(|ids| self.state(ids)).collect();
            let refs: Vec<&StateMap> = states.iter().collect();
            resolve(&AuthorizationRules::V1, &refs, |id| self.events.get(id))
        }

        fn winner(&self, resolved: &StateMap, kind: &str, state_key: &str) -> OwnedEventId {
            resolved[&(StateEventType::from(kind), state_key.to_owned())].clone()
        }
    }

    fn power(users: &[(&str, i64)]) -> serde_json::Value {
        let users: serde_json::Map<String, serde_json::Value> =
            users.iter().map(|(u, p)| (u.to_string(), json!(p))).collect();
        json!({ "users": users, "users_default": 0, "state_default": 50, "events_default": 0, "ban": 50 })
    }

    #[test]
    fn unconflicted_entries_are_the_union() {
        let mut room = Room::new();
        let topic = room.add("topic", ALICE, "m.room.topic", "", json!({ "topic": "t" }), 6);
        let resolved = room.resolve(&[&[&topic], &[]]);
        assert_eq!(room.winner(&resolved, "m.room.topic", ""), topic);
        assert_eq!(resolved.len(), room.base.len() + 1);
        for (key, id) in &room.base {
            assert_eq!(&resolved[key], id);
        }
    }

    #[test]
    fn power_levels_walk_up_in_depth_while_allowed() {
        let mut room = Room::new();
        // alice makes bob an admin; bob, now allowed, gives carol 50.
        let pl_bob = room.add(
            "pl_bob",
            ALICE,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 100)]),
            6,
        );
        let pl_carol = room.add(
            "pl_carol",
            BOB,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 100), (CAROL, 50)]),
            7,
        );
        let resolved = room.resolve(&[&[&pl_bob], &[&pl_carol]]);
        assert_eq!(room.winner(&resolved, "m.room.power_levels", ""), pl_carol);
    }

    #[test]
    fn power_levels_walk_stops_at_the_first_refused() {
        let mut room = Room::new();
        // alice gives bob 50 (6); bob then gives himself 100 (7: refused,
        // above his own level); alice's later change (8) is not reached.
        let pl_bob = room.add(
            "pl_bob",
            ALICE,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 50)]),
            6,
        );
        let bob_grab = room.add(
            "grab",
            BOB,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 100)]),
            7,
        );
        let alice_late = room.add(
            "late",
            ALICE,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 50), (CAROL, 50)]),
            8,
        );
        let resolved = room.resolve(&[&[&pl_bob], &[&bob_grab], &[&alice_late]]);
        assert_eq!(room.winner(&resolved, "m.room.power_levels", ""), pl_bob);
        // Without the refused one in between, the walk reaches alice's.
        let resolved = room.resolve(&[&[&pl_bob], &[&alice_late]]);
        assert_eq!(room.winner(&resolved, "m.room.power_levels", ""), alice_late);
    }

    #[test]
    fn the_lowest_power_levels_go_in_unchecked() {
        // The flaw the spec warns of: the first of the list is not checked.
        let mut room = Room::new();
        let bob_grab = room.add(
            "grab",
            BOB,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 100)]),
            6,
        );
        let alice_late = room.add("late", ALICE, "m.room.power_levels", "", power(&[(ALICE, 100)]), 7);
        let resolved = room.resolve(&[&[&bob_grab], &[&alice_late]]);
        assert_eq!(room.winner(&resolved, "m.room.power_levels", ""), bob_grab);
    }

    #[test]
    fn join_rules_are_checked_against_the_resolved_power_levels() {
        let mut room = Room::new();
        let pl_bob = room.add(
            "pl_bob",
            ALICE,
            "m.room.power_levels",
            "",
            power(&[(ALICE, 100), (BOB, 100)]),
            6,
        );
        let jr_bob = room.add(
            "jr_bob",
            BOB,
            "m.room.join_rules",
            "",
            json!({ "join_rule": "invite" }),
            7,
        );
        let resolved = room.resolve(&[&[&pl_bob], &[&jr_bob]]);
        assert_eq!(room.winner(&resolved, "m.room.power_levels", ""), pl_bob);
        assert_eq!(room.winner(&resolved, "m.room.join_rules", ""), jr_bob);

        // Without the power: bob's join rule is refused.
        let resolved = room.resolve(&[&[], &[&jr_bob]]);
        assert_eq!(
            room.winner(&resolved, "m.room.join_rules", ""),
            room.base[&(StateEventType::RoomJoinRules, String::new())]
        );
    }

    #[test]
    fn members_walk_up_while_allowed() {
        let mut room = Room::new();
        let bob_join = room.base[&(StateEventType::RoomMember, BOB.to_owned())].clone();
        // Banned (6), bob's own leave after it (7) is refused: a banned
        // user cannot leave.
        let ban = room.add("ban", ALICE, "m.room.member", BOB, json!({ "membership": "ban" }), 6);
        let leave = room.add("leave", BOB, "m.room.member", BOB, json!({ "membership": "leave" }), 7);
        let resolved = room.resolve(&[&[&ban], &[&leave]]);
        assert_eq!(room.winner(&resolved, "m.room.member", BOB), ban);
        // Joined (5), then left (7): the leave is allowed.
        let resolved = room.resolve(&[&[], &[&leave]]);
        assert_eq!(room.winner(&resolved, "m.room.member", BOB), leave);
        // carol joins in one state, is banned before (lower depth) in the
        // other: the ban goes first, the join after it is refused.
        let carol_ban = room.add(
            "carol_ban",
            ALICE,
            "m.room.member",
            CAROL,
            json!({ "membership": "ban" }),
            6,
        );
        let carol_join = room.add(
            "carol_join",
            CAROL,
            "m.room.member",
            CAROL,
            json!({ "membership": "join" }),
            7,
        );
        let resolved = room.resolve(&[&[&carol_join], &[&carol_ban]]);
        assert_eq!(room.winner(&resolved, "m.room.member", CAROL), carol_ban);
        assert_ne!(room.winner(&resolved, "m.room.member", BOB), ban);
        assert_eq!(room.winner(&resolved, "m.room.member", BOB), bob_join);
    }

    #[test]
    fn other_conflicts_take_the_deepest_allowed() {
        let mut room = Room::new();
        let by_alice = room.add("t_alice", ALICE, "m.room.topic", "", json!({ "topic": "a" }), 6);
        // Deeper, but bob (power 0) may not set state (50 needed).
        let by_bob = room.add("t_bob", BOB, "m.room.topic", "", json!({ "topic": "b" }), 7);
        let resolved = room.resolve(&[&[&by_alice], &[&by_bob]]);
        assert_eq!(room.winner(&resolved, "m.room.topic", ""), by_alice);

        let deeper = room.add("t_deeper", ALICE, "m.room.topic", "", json!({ "topic": "c" }), 8);
        let resolved = room.resolve(&[&[&by_alice], &[&deeper]]);
        assert_eq!(room.winner(&resolved, "m.room.topic", ""), deeper);
    }

    #[test]
    fn equal_depths_go_by_the_lowest_sha1_of_the_id() {
        let mut room = Room::new();
        let one = room.add("one", ALICE, "m.room.name", "", json!({ "name": "1" }), 6);
        let two = room.add("two", ALICE, "m.room.name", "", json!({ "name": "2" }), 6);
        let lowest = if sha1_hex(&one) < sha1_hex(&two) { &one } else { &two };
        let resolved = room.resolve(&[&[&one], &[&two]]);
        assert_eq!(&room.winner(&resolved, "m.room.name", ""), lowest);
        let resolved = room.resolve(&[&[&two], &[&one]]);
        assert_eq!(&room.winner(&resolved, "m.room.name", ""), lowest);
    }

    #[test]
    fn when_none_is_allowed_the_lowest_is_taken() {
        let mut room = Room::new();
        let low = room.add("low", CAROL, "m.room.topic", "", json!({ "topic": "x" }), 6);
        let high = room.add("high", CAROL, "m.room.topic", "", json!({ "topic": "y" }), 7);
        let resolved = room.resolve(&[&[&low], &[&high]]);
        assert_eq!(room.winner(&resolved, "m.room.topic", ""), low);
    }

    #[test]
    fn unknown_events_take_no_part() {
        let mut room = Room::new();
        let known = room.add("known", ALICE, "m.room.topic", "", json!({ "topic": "k" }), 6);
        let unknown = OwnedEventId::try_from("$unknown:a.org").unwrap();
        let mut other = room.base.clone();
        other.insert((StateEventType::RoomTopic, String::new()), unknown);
        let mine = room.state(&[&known]);
        let resolved = resolve(&AuthorizationRules::V1, &[&mine, &other], |id| room.events.get(id));
        assert_eq!(room.winner(&resolved, "m.room.topic", ""), known);
    }
}
