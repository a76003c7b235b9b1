//! A user's push rules: ruma's [`Ruleset`], kept as the user's
//! `m.push_rules` account data (`{"global": ruleset}`, as `/sync` shows
//! it). A user who never changed a rule has the server defaults; stored
//! rules are brought up to the current defaults when read (keeping the
//! user's `enabled` and `actions` of default rules).
//!
//! The defaults are the spec's, plus the legacy mention rules that the
//! spec dropped in v1.17 but clients that do not send `m.mentions` still
//! rely on (`.m.rule.contains_display_name`, `.m.rule.roomnotif`,
//! `.m.rule.contains_user_name`). As the spec had it since v1.7 (and as
//! Synapse does), they do not apply to events with `m.mentions`.

use std::{num::NonZeroUsize, sync::Arc, sync::Mutex};

use lru::LruCache;
use ruma::{
    OwnedUserId, UserId,
    power_levels::NotificationPowerLevelsKey,
    push::{
        Action, ConditionalPushRule, ConditionalPushRuleInit, EventMatchConditionData, HighlightTweakValue,
        PatternedPushRule, PatternedPushRuleInit, PredefinedOverrideRuleId, PushCondition, Ruleset,
        SenderNotificationPermissionConditionData, SoundTweakValue, Tweak,
    },
};
use serde_json::{Value, json};

use crate::{account_data, error::MatrixError, services::Services};

/// The account data type push rules live under.
pub const PUSH_RULES: &str = "m.push_rules";

/// Rulesets recently evaluated, so that an event does not parse the
/// rules of every member again.
const CACHE_SIZE: usize = 1024;

/// The legacy mention rules (see the module's documentation).
pub const LEGACY_RULES: [&str; 3] = [
    ".m.rule.contains_display_name",
    ".m.rule.roomnotif",
    ".m.rule.contains_user_name",
];

/// A user's rules, and the same without the legacy mention rules (for
/// events with `m.mentions`).
pub struct UserRules {
    pub all: Ruleset,
    pub without_legacy: Ruleset,
}

impl UserRules {
    fn new(all: Ruleset) -> UserRules {
        let mut without_legacy = all.clone();
        for id in LEGACY_RULES {
            without_legacy.override_.shift_remove(id);
            without_legacy.content.shift_remove(id);
        }
        UserRules { all, without_legacy }
    }
}

/// The server's default rules for `user`.
pub fn server_default(user: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user);
    let highlight = Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes));
    let sound = Action::SetTweak(Tweak::Sound(SoundTweakValue::Default));
    let display_name = ConditionalPushRule::from(ConditionalPushRuleInit {
        actions: vec![Action::Notify, sound.clone(), highlight.clone()],
        default: true,
        enabled: true,
        rule_id: LEGACY_RULES[0].to_owned(),
        // Deprecated with the rule, which is here for older clients.
        #[allow(deprecated)]
        conditions: vec![PushCondition::ContainsDisplayName],
    });
    let room_notif = ConditionalPushRule::from(ConditionalPushRuleInit {
        actions: vec![Action::Notify, highlight.clone()],
        default: true,
        enabled: true,
        rule_id: LEGACY_RULES[1].to_owned(),
        conditions: vec![
            PushCondition::EventMatch(EventMatchConditionData::new(
                "content.body".to_owned(),
                "@room".to_owned(),
            )),
            PushCondition::SenderNotificationPermission(SenderNotificationPermissionConditionData::new(
                NotificationPowerLevelsKey::Room,
            )),
        ],
    });
    let mut overrides: Vec<ConditionalPushRule> = rules.override_.iter().cloned().collect();
    for (after, rule) in [
        (PredefinedOverrideRuleId::IsUserMention, display_name),
        (PredefinedOverrideRuleId::IsRoomMention, room_notif),
    ] {
        let at = overrides
            .iter()
            .position(|r| r.rule_id == after.as_str())
            .map_or(overrides.len(), |i| i + 1);
        overrides.insert(at, rule);
    }
    rules.override_ = overrides.into_iter().collect();
    rules.content.insert(PatternedPushRule::from(PatternedPushRuleInit {
        actions: vec![Action::Notify, sound, highlight],
        default: true,
        enabled: true,
        rule_id: LEGACY_RULES[2].to_owned(),
        pattern: user.localpart().to_owned(),
    }));
    rules
}

/// Parsed push rules of recently seen users. Only this module writes
/// `m.push_rules` (clients cannot set it as account data), so it drops a
/// user's entry whenever it writes; other processes' account data
/// notifications drop it too (`crate::cluster`).
pub struct RulesCache {
    rules: Mutex<LruCache<OwnedUserId, Arc<UserRules>>>,
}

impl Default for RulesCache {
    fn default() -> Self {
        RulesCache {
            rules: Mutex::new(LruCache::new(NonZeroUsize::new(CACHE_SIZE).expect("non-zero"))),
        }
    }
}

impl RulesCache {
    fn get(&self, user: &UserId) -> Option<Arc<UserRules>> {
        self.rules.lock().expect("push rules cache").get(user).cloned()
    }

    fn put(&self, user: &UserId, rules: Arc<UserRules>) {
        self.rules.lock().expect("push rules cache").put(user.to_owned(), rules);
    }

    /// Drops every user's rules (other processes' changes may have been
    /// missed).
    pub(crate) fn clear(&self) {
        self.rules.lock().expect("push rules cache").clear();
    }

    /// Drops the user's rules (changed here or by another process).
    pub(crate) fn forget(&self, user: &UserId) {
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
            rules.update_with_server_default(server_default(user));
            rules
        }
        None => server_default(user),
    }
}

/// The user's push rules.
pub async fn get(svc: &Services, user: &UserId) -> Result<Arc<UserRules>, MatrixError> {
    if let Some(rules) = svc.push.rules.get(user) {
        return Ok(rules);
    }
    let stored = account_data::get(svc, user, None, PUSH_RULES).await?;
    let rules = Arc::new(UserRules::new(from_content(user, stored)));
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
