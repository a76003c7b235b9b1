//! The room version's authorisation rules, applied with ruma's state_res.

use std::collections::HashMap;

use ruma::{EventId, OwnedEventId, events::StateEventType, room_version_rules::AuthorizationRules};

use super::Pdu;
use crate::storage::StateKey;

/// The events a check may consult: the state it is checked against,
/// loaded, keyed by state key, plus anything else fetched by ID.
#[derive(Default)]
pub struct AuthContext<'a> {
    pub by_key: HashMap<StateKey, &'a Pdu>,
    pub by_id: HashMap<OwnedEventId, &'a Pdu>,
}

impl<'a> AuthContext<'a> {
    pub fn from_state(events: impl IntoIterator<Item = &'a Pdu>) -> Self {
        let mut ctx = AuthContext::default();
        for pdu in events {
            ctx.by_id.insert(pdu.event_id.clone(), pdu);
            if let Some(key) = &pdu.state_key {
                ctx.by_key
                    .insert((StateEventType::from(pdu.kind.to_string()), key.clone()), pdu);
            }
        }
        ctx
    }

    fn fetch_event(&self, id: &EventId) -> Option<&'a Pdu> {
        self.by_id.get(id).copied()
    }

    fn fetch_state(&self, kind: &StateEventType, key: &str) -> Option<&'a Pdu> {
        self.by_key.get(&(kind.clone(), key.to_owned())).copied()
    }
}

/// Checks `pdu` against its own `auth_events` (state-independent rules)
/// and against `state` (state-dependent rules). Err: the rule that failed.
pub fn check(rules: &AuthorizationRules, pdu: &Pdu, state: &AuthContext<'_>) -> Result<(), String> {
    ruma::state_res::check_state_independent_auth_rules(rules, pdu, |id| state.fetch_event(id))?;
    ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |kind, key| state.fetch_state(kind, key))
}
