//! A user's push rules: ruma's [`Ruleset`], kept as the user's
//! `m.push_rules` account data (`{"global": ruleset}`, as `/sync` shows
//! it). A user who never changed a rule has the server defaults; stored
//! rules are brought up to the current defaults when read (keeping the
//! user's `enabled` and `actions` of default rules).

use std::{num::NonZeroUsize, sync::Arc, sync::Mutex};

use lru::LruCache;
use ruma::{OwnedUserId, UserId, push::Ruleset};
use serde_json::{Value, json};

use crate::{account_data, error::MatrixError, services::Services};

/// The account data type push rules live under.
pub const PUSH_RULES: &str = "m.push_rules";

/// Rulesets recently evaluated, so that an event does not parse the
/// rules of every member again.
const CACHE_SIZE: usize = 1024;

/// Parsed push rules of recently seen users. Only this module writes
/// `m.push_rules` (clients cannot set it as account data), so it drops a
/// user's entry whenever it writes.
pub struct RulesCache {
    rules: Mutex<LruCache<OwnedUserId, Arc<Ruleset>>>,
}

impl Default for RulesCache {
    fn default() -> Self {
        RulesCache {
            rules: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_SIZE).expect("non-zero"))),
        }
    }
}

impl RulesCache {
    fn get(&self, user: &UserId) -> Option<Arc<Ruleset>> {
        self.rules.lock().expect("push rules cache").get(user).cloned()
    }

    fn put(&self, user: &UserId, rules: Arc<Ruleset>) {
        self.rules.lock().expect("push rules cache").put(user.to_owned(), rules);
    }

    fn forget(&self, user: &UserId) {
        self.rules.lock().expect("push rules cache").pop(user);
    }
}

/// The account data content for a ruleset.
pub fn content(rules: &Ruleset) -> Result<Value, MatrixError> {
    Ok(json!({ "global": serde_json::to_value(rules).map_err(|e| MatrixError::internal("push rules", e))? }))
}

fn from_content(user: &UserId, content: Option<Value>) -> Ruleset {
    let stored = content
        .and_then(|mut c| c.get_mut("global").map(Value::take))
        .and_then(|global| match serde_json::from_value::<Ruleset>(global) {
            Ok(rules) => Some(rules),
            Err(e) => {
                tracing::warn!(%user, error = %e, "stored push rules unreadable; using the defaults");
                None
            }
        });
    match stored {
        Some(mut rules) => {
            rules.update_with_server_default(Ruleset::server_default(user));
            rules
        }
        None => Ruleset::server_default(user),
    }
}

/// The user's push rules.
pub async fn get(svc: &Services, user: &UserId) -> Result<Arc<Ruleset>, MatrixError> {
    if let Some(rules) = svc.push.rules.get(user) {
        return Ok(rules);
    }
    let stored = account_data::get(svc, user, None, PUSH_RULES).await?;
    let rules = Arc::new(from_content(user, stored));
    svc.push.rules.put(user, rules.clone());
    Ok(rules)
}

/// Changes the user's push rules atomically: `change` gets the current
/// rules and edits them, or fails (nothing is written then).
pub async fn update(
    svc: &Services,
    user: &UserId,
    change: impl FnOnce(&mut Ruleset) -> Result<(), MatrixError>,
) -> Result<(), MatrixError> {
    let mut outcome = Ok(());
    let mut change = Some(change);
    let result = account_data::try_update(svc, user, None, PUSH_RULES, |current| {
        let mut rules = from_content(user, current);
        if let Some(change) = change.take() {
            outcome = change(&mut rules);
        }
        match &outcome {
            Ok(()) => content(&rules).map(Some),
            Err(_) => Ok(None),
        }
    })
    .await;
    svc.push.rules.forget(user);
    result?;
    outcome
}
