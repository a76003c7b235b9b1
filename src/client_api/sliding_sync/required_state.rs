//! What a room's answer carries, as a list or subscription asks it: the
//! `timeline_limit` and the `required_state` entries — `[type, key]`,
//! either of which may be `*`; the key `$ME` (the user) and, for
//! `m.room.member`, `$LAZY` (the members whose events are in the timeline).
//! A room in several lists and subscriptions gets the union of their
//! configurations, the largest timeline.
//!
//! The configuration a room was last sent with is stored with the
//! connection (as JSON): a room whose configuration grew (a longer timeline,
//! more state) is sent again with what it now asks for.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ruma::{UserId, events::StateEventType};
use serde::{Deserialize, Serialize};

use crate::state::StateMap;

const ANY: &str = "*";
const ME: &str = "$ME";
const LAZY: &str = "$LAZY";

/// The largest timeline a room is sent with.
pub const MAX_TIMELINE_LIMIT: u64 = 1000;

/// A room's configuration on a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomConfig {
    pub timeline_limit: u64,
    /// Event type (`*`: any) → state keys (`*`: any, `$LAZY`); `$ME` is
    /// stored as the user's ID.
    pub required_state: BTreeMap<String, BTreeSet<String>>,
}

impl RoomConfig {
    pub fn new(required_state: &[(StateEventType, String)], timeline_limit: u64, me: &UserId) -> Self {
        let mut config = RoomConfig {
            timeline_limit: timeline_limit.min(MAX_TIMELINE_LIMIT),
            required_state: BTreeMap::new(),
        };
        for (kind, key) in required_state {
            let key = if key == ME { me.as_str() } else { key.as_str() };
            config
                .required_state
                .entry(kind.to_string())
                .or_default()
                .insert(key.to_owned());
        }
        config
    }

    /// Takes in what `other` asks too.
    pub fn merge(&mut self, other: &RoomConfig) {
        self.timeline_limit = self.timeline_limit.max(other.timeline_limit);
        for (kind, keys) in &other.required_state {
            self.required_state
                .entry(kind.clone())
                .or_default()
                .extend(keys.iter().cloned());
        }
    }

    /// Whether it asks for lazily loaded members.
    pub fn lazy_members(&self) -> bool {
        self.required_state
            .get(StateEventType::RoomMember.to_string().as_str())
            .is_some_and(|keys| keys.contains(LAZY))
    }

    /// Whether the state event `(kind, key)` is asked for; `lazy` are the
    /// members the timeline shows (for `$LAZY`).
    pub fn wants(&self, kind: &str, key: &str, lazy: &HashSet<&str>) -> bool {
        let matches = |keys: &BTreeSet<String>| keys.contains(ANY) || keys.contains(key);
        if self.required_state.get(ANY).is_some_and(matches) || self.required_state.get(kind).is_some_and(matches) {
            return true;
        }
        kind == StateEventType::RoomMember.to_string() && self.lazy_members() && lazy.contains(key)
    }

    /// The entries of `state` asked for.
    pub fn select<'a>(&self, state: &'a StateMap, lazy: &HashSet<&str>) -> Vec<&'a ruma::OwnedEventId> {
        if self.required_state.is_empty() {
            return Vec::new();
        }
        state
            .iter()
            .filter(|((kind, key), _)| self.wants(&kind.to_string(), key, lazy))
            .map(|(_, id)| id)
            .collect()
    }

    /// Whether it can only be answered with the full state of a room (one
    /// joined with partial state lacks the member events of other servers'
    /// users): it asks for every state event, for every member, or for the
    /// member event of a user of another server than `local` (also under
    /// any type). `$LAZY` needs no more: the timeline's senders' member
    /// events were checked with their events. As Synapse decides.
    pub fn needs_full_state(&self, local: &ruma::ServerName) -> bool {
        let remote_user = |key: &str| <&UserId>::try_from(key).is_ok_and(|u| u.server_name() != local);
        if let Some(keys) = self.required_state.get(ANY)
            && keys.iter().any(|k| k == ANY || remote_user(k))
        {
            return true;
        }
        self.required_state
            .get(StateEventType::RoomMember.to_string().as_str())
            .is_some_and(|keys| keys.iter().any(|k| k == ANY || remote_user(k)))
    }

    /// Whether it asks for more than `old`: a longer timeline; state
    /// entries `old` did not ask for.
    pub fn grew_from(&self, old: &RoomConfig) -> Growth {
        let state = self.required_state.iter().any(|(kind, keys)| {
            let old_keys = old.required_state.get(kind);
            let old_any = old.required_state.get(ANY);
            keys.iter().any(|key| {
                let had = |keys: Option<&BTreeSet<String>>| keys.is_some_and(|k| k.contains(key) || k.contains(ANY));
                !had(old_keys) && !had(old_any)
            })
        });
        Growth {
            timeline: self.timeline_limit > old.timeline_limit,
            state,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a room config serialises")
    }

    /// A stored configuration; one that cannot be read asks for nothing
    /// (the room is then sent with all it asks for now).
    pub fn from_json(json: &str) -> RoomConfig {
        serde_json::from_str(json).unwrap_or_default()
    }
}

/// How a room's configuration grew since it was last sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Growth {
    pub timeline: bool,
    pub state: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> &'static UserId {
        <&UserId>::try_from("@me:example.org").unwrap()
    }

    fn config(entries: &[(&str, &str)], limit: u64) -> RoomConfig {
        let entries: Vec<(StateEventType, String)> =
            entries.iter().map(|(t, k)| ((*t).into(), (*k).to_owned())).collect();
        RoomConfig::new(&entries, limit, user())
    }

    #[test]
    fn wildcards_me_and_lazy() {
        let none = HashSet::new();
        let c = config(
            &[("m.room.name", ""), ("m.room.member", "$ME"), ("m.space.child", "*")],
            1,
        );
        assert!(c.wants("m.room.name", "", &none));
        assert!(!c.wants("m.room.topic", "", &none));
        assert!(c.wants("m.room.member", "@me:example.org", &none));
        assert!(!c.wants("m.room.member", "@other:example.org", &none));
        assert!(c.wants("m.space.child", "!any:example.org", &none));
        let lazy = config(&[("m.room.member", "$LAZY")], 1);
        let senders: HashSet<&str> = ["@other:example.org"].into();
        assert!(lazy.wants("m.room.member", "@other:example.org", &senders));
        assert!(!lazy.wants("m.room.member", "@third:example.org", &senders));
        let all = config(&[("*", "*")], 1);
        assert!(all.wants("m.room.topic", "", &none));
        let any_type = config(&[("*", "")], 1);
        assert!(any_type.wants("m.room.topic", "", &none));
        assert!(!any_type.wants("m.room.member", "@me:example.org", &none));
    }

    #[test]
    fn what_needs_the_full_state() {
        let local = ruma::server_name!("example.org");
        for (entries, full) in [
            (&[("m.room.name", ""), ("m.room.member", "$ME")][..], false),
            (
                &[("m.room.member", "$LAZY"), ("m.room.member", "@other:example.org")],
                false,
            ),
            (&[("m.room.create", ""), ("*", "")], false),
            (&[("*", "*")], true),
            (&[("m.room.member", "*")], true),
            (&[("m.room.member", "@someone:elsewhere.org")], true),
            (&[("*", "@someone:elsewhere.org")], true),
            (&[("*", "@other:example.org")], false),
        ] {
            assert_eq!(config(entries, 1).needs_full_state(local), full, "{entries:?}");
        }
    }

    #[test]
    fn growth_and_merge() {
        let small = config(&[("m.room.name", "")], 1);
        let mut big = config(&[("m.room.name", ""), ("m.room.topic", "")], 20);
        assert_eq!(
            big.grew_from(&small),
            Growth {
                timeline: true,
                state: true
            }
        );
        assert_eq!(small.grew_from(&big), Growth::default());
        assert_eq!(small.grew_from(&config(&[("*", "*")], 1)), Growth::default());
        big.merge(&config(&[("m.room.avatar", "")], 5));
        assert_eq!(big.timeline_limit, 20);
        assert!(big.wants("m.room.avatar", "", &HashSet::new()));
        assert_eq!(RoomConfig::from_json(&big.to_json()), big);
        assert_eq!(RoomConfig::from_json("nonsense"), RoomConfig::default());
    }
}
