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
//!
//! An event is evaluated for every local member of its room, so the rules
//! are cached ([`RulesCache`]). Most users never change a rule: they share
//! one ruleset, the defaults written for a placeholder user
//! ([`Defaults`]), of which the few rules that name their user (an invite
//! for them, a mention of them, their user name) are made for the user as
//! the event is evaluated ([`Rules::personal`]). Such a user costs the
//! cache a user ID, not a ruleset of their own.

use std::{collections::HashSet, num::NonZeroUsize, sync::Arc, sync::Mutex};

use lru::LruCache;
use ruma::{
    OwnedUserId, UserId,
    power_levels::NotificationPowerLevelsKey,
    push::{
        Action, AnyPushRule, AnyPushRuleRef, ConditionalPushRule, ConditionalPushRuleInit, EventMatchConditionData,
        HighlightTweakValue, PatternedPushRule, PatternedPushRuleInit, PredefinedOverrideRuleId, PushCondition,
        Ruleset, ScalarJsonValue, SenderNotificationPermissionConditionData, SoundTweakValue, Tweak,
    },
    user_id,
};
use serde_json::{Value, json};

use crate::{account_data, error::MatrixError, services::Services};

/// The account data type push rules live under.
pub const PUSH_RULES: &str = "m.push_rules";

/// Users with rules of their own whose rules are cached, so that an event
/// does not parse the rules of every member again.
const STORED_CACHE_SIZE: usize = 1024;

/// Users known to have the default rules (a user ID each).
const DEFAULTS_CACHE_SIZE: usize = 100_000;

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

/// The user the shared default rules are written for.
fn placeholder() -> &'static UserId {
    user_id!("@weft-push-rules-placeholder:weft.invalid")
}

/// The server's default rules, written once for [`placeholder`] and shared
/// by every user who has not changed them.
pub struct Defaults {
    rules: UserRules,
    /// The rules that name their user (the placeholder), by ID.
    personal: HashSet<String>,
}

impl Defaults {
    fn new() -> Defaults {
        let rules = UserRules::new(server_default(placeholder()));
        let personal = rules
            .all
            .iter()
            .filter(|rule| for_user(*rule, placeholder(), user_id!("@other:weft.invalid")).is_some())
            .map(|rule| rule.rule_id().to_owned())
            .collect();
        Defaults { rules, personal }
    }
}

/// `rule` (written for `from`) as it is for `to`; `None` when it does not
/// name `from`: its user ID, in a condition's pattern or value, or its
/// localpart as a content rule's pattern.
fn for_user(rule: AnyPushRuleRef<'_>, from: &UserId, to: &UserId) -> Option<AnyPushRule> {
    let swap = |s: &mut String| {
        let to = match s.as_str() {
            id if id == from.as_str() => to.as_str(),
            localpart if localpart == from.localpart() => to.localpart(),
            _ => return false,
        };
        *s = to.to_owned();
        true
    };
    let mut rule = rule.to_owned();
    let changed = match &mut rule {
        AnyPushRule::Override(r) | AnyPushRule::Underride(r) => {
            let mut changed = false;
            for condition in &mut r.conditions {
                changed |= match condition {
                    PushCondition::EventMatch(c) => swap(&mut c.pattern),
                    PushCondition::EventPropertyIs(c) => match &mut c.value {
                        ScalarJsonValue::String(s) => swap(s),
                        _ => false,
                    },
                    PushCondition::EventPropertyContains(c) => match &mut c.value {
                        ScalarJsonValue::String(s) => swap(s),
                        _ => false,
                    },
                    _ => false,
                };
            }
            changed
        }
        AnyPushRule::Content(r) => swap(&mut r.pattern),
        _ => false,
    };
    changed.then_some(rule)
}

/// A user's rules, as an event is evaluated with them.
#[derive(Clone)]
pub enum Rules {
    /// The shared defaults: the user never changed a rule.
    Defaults(Arc<Defaults>),
    /// The user's own rules (stored, brought up to the defaults).
    Stored(Arc<UserRules>),
}

/// A rule of a user's [`Rules`]: shared, or made for the user.
pub enum Rule<'a> {
    Shared(AnyPushRuleRef<'a>),
    Personal(AnyPushRule),
}

impl Rule<'_> {
    pub fn as_ref(&self) -> AnyPushRuleRef<'_> {
        match self {
            Rule::Shared(rule) => *rule,
            Rule::Personal(rule) => rule.as_ref(),
        }
    }
}

impl Rules {
    /// The ruleset to iterate: all of it, or without the legacy mention
    /// rules. Each rule is then given to [`Rules::personal`].
    pub fn ruleset(&self, legacy: bool) -> &Ruleset {
        let rules = match self {
            Rules::Defaults(defaults) => &defaults.rules,
            Rules::Stored(rules) => rules,
        };
        match legacy {
            true => &rules.all,
            false => &rules.without_legacy,
        }
    }

    /// `rule`, of [`Rules::ruleset`], as it is for `user`.
    pub fn personal<'a>(&self, rule: AnyPushRuleRef<'a>, user: &UserId) -> Rule<'a> {
        match self {
            Rules::Defaults(defaults) if defaults.personal.contains(rule.rule_id()) => {
                match for_user(rule, placeholder(), user) {
                    Some(rule) => Rule::Personal(rule),
                    None => Rule::Shared(rule),
                }
            }
            _ => Rule::Shared(rule),
        }
    }
}

/// Push rules of recently seen users. Only this module writes
/// `m.push_rules` (clients cannot set it as account data), so it drops a
/// user's entry whenever it writes; other processes' account data
/// notifications drop it too (`crate::cluster`).
pub struct RulesCache {
    defaults: Arc<Defaults>,
    inner: Mutex<CacheInner>,
}

struct CacheInner {
    /// Users with the default rules.
    defaults: LruCache<OwnedUserId, ()>,
    /// Users with rules of their own, parsed.
    stored: LruCache<OwnedUserId, Arc<UserRules>>,
    /// Moves at every change: a read that saw it move caches nothing (it
    /// may have read the rules before a change dropped them).
    changes: u64,
}

impl Default for RulesCache {
    fn default() -> Self {
        let size = |n| NonZeroUsize::new(n).expect("non-zero");
        RulesCache {
            defaults: Arc::new(Defaults::new()),
            inner: Mutex::new(CacheInner {
                defaults: LruCache::new(size(DEFAULTS_CACHE_SIZE)),
                stored: LruCache::new(size(STORED_CACHE_SIZE)),
                changes: 0,
            }),
        }
    }
}

impl RulesCache {
    /// The user's cached rules, or the count of changes to give
    /// [`RulesCache::put`] with the rules read.
    fn get(&self, user: &UserId) -> Result<Rules, u64> {
        let mut inner = self.inner.lock().expect("push rules cache");
        if inner.defaults.get(user).is_some() {
            return Ok(Rules::Defaults(self.defaults.clone()));
        }
        match inner.stored.get(user).cloned() {
            Some(rules) => Ok(Rules::Stored(rules)),
            None => Err(inner.changes),
        }
    }

    /// Caches rules read when the count of changes was `changes`, unless
    /// a change came since.
    fn put(&self, user: &UserId, rules: &Rules, changes: u64) {
        let mut inner = self.inner.lock().expect("push rules cache");
        if inner.changes != changes {
            return;
        }
        // (An evicted ruleset is dropped after the lock is released.)
        let _evicted = match rules {
            Rules::Defaults(_) => {
                inner.defaults.put(user.to_owned(), ());
                None
            }
            Rules::Stored(rules) => inner.stored.push(user.to_owned(), rules.clone()),
        };
    }

    /// Drops every user's rules (other processes' changes may have been
    /// missed).
    pub(crate) fn clear(&self) {
        let mut inner = self.inner.lock().expect("push rules cache");
        inner.changes += 1;
        inner.defaults.clear();
        inner.stored.clear();
    }

    /// Drops the user's rules (changed here or by another process).
    pub(crate) fn forget(&self, user: &UserId) {
        let mut inner = self.inner.lock().expect("push rules cache");
        inner.changes += 1;
        inner.defaults.pop(user);
        inner.stored.pop(user);
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

/// The user's push rules, as their events are evaluated with them.
pub async fn for_evaluation(svc: &Services, user: &UserId) -> Result<Rules, MatrixError> {
    let cache = &svc.push.rules;
    let changes = match cache.get(user) {
        Ok(rules) => return Ok(rules),
        Err(changes) => changes,
    };
    let rules = match account_data::get(svc, user, None, PUSH_RULES).await? {
        None => Rules::Defaults(cache.defaults.clone()),
        stored => Rules::Stored(Arc::new(UserRules::new(from_content(user, stored)))),
    };
    cache.put(user, &rules, changes);
    Ok(rules)
}

/// The user's push rules, whole (as clients see them).
pub async fn get(svc: &Services, user: &UserId) -> Result<Arc<UserRules>, MatrixError> {
    Ok(match for_evaluation(svc, user).await? {
        Rules::Defaults(_) => Arc::new(UserRules::new(server_default(user))),
        Rules::Stored(rules) => rules,
    })
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

#[cfg(test)]
mod tests {
    use ruma::push::AnyPushRuleRef;
    use serde_json::Value;

    use super::*;

    fn json(rule: AnyPushRuleRef<'_>) -> Value {
        match rule {
            AnyPushRuleRef::Override(r) => serde_json::json!({ "override": r }),
            AnyPushRuleRef::Underride(r) => serde_json::json!({ "underride": r }),
            AnyPushRuleRef::Content(r) => serde_json::json!({ "content": r }),
            AnyPushRuleRef::Room(r) => serde_json::json!({ "room": r }),
            AnyPushRuleRef::Sender(r) => serde_json::json!({ "sender": r }),
            _ => panic!("a kind of rule the defaults do not have"),
        }
    }

    /// The shared defaults, made personal, are each user's own defaults,
    /// rule by rule and in order, with and without the legacy rules.
    #[test]
    fn shared_defaults_are_each_users_defaults() {
        let defaults = Arc::new(Defaults::new());
        assert!(defaults.personal.len() >= 3, "{:?}", defaults.personal);
        for user in [
            user_id!("@alice:example.org"),
            user_id!("@bob.smith-jones_=/:weft.test:8448"),
            user_id!("@m1999:127.0.0.1:30000"),
        ] {
            let own = UserRules::new(server_default(user));
            let shared = Rules::Defaults(defaults.clone());
            for legacy in [true, false] {
                let want: Vec<Value> = match legacy {
                    true => own.all.iter().map(json).collect(),
                    false => own.without_legacy.iter().map(json).collect(),
                };
                let got: Vec<Value> = shared
                    .ruleset(legacy)
                    .iter()
                    .map(|rule| json(shared.personal(rule, user).as_ref()))
                    .collect();
                assert_eq!(got, want, "{user}, legacy rules {legacy}");
                assert!(got.iter().any(|r| r.to_string().contains(user.as_str())));
            }
        }
    }
}
