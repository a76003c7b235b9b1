//! Push rules (`/pushrules/…`), pushers (`/pushers`, `/pushers/set`) and
//! notifications (`/notifications`): the spec's "Push Notifications"
//! module. Rules are kept and evaluated by [`crate::push`].

use std::sync::Arc;

use axum::{
    extract::{Path, Request, State},
    response::{IntoResponse, Response},
};
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::push::{
        Pusher, PusherKind, delete_pushrule, get_notifications, get_pushers, get_pushrule, get_pushrule_actions,
        get_pushrule_enabled, get_pushrules_all, get_pushrules_global_scope, set_pusher, set_pushrule,
        set_pushrule_actions, set_pushrule_enabled,
    },
    push::{Action, InsertPushRuleError, RemovePushRuleError, RuleKind},
};
use serde_json::Value;

use super::{extract::Ruma, format};
use crate::{error::MatrixError, push::rules, services::Services, storage::push::PusherRecord};

/// Notifications per page of `GET /notifications` unless asked otherwise.
const DEFAULT_NOTIFICATIONS: usize = 50;
const MAX_NOTIFICATIONS: usize = 1000;

/// The rule kinds the spec has (ruma also parses unknown ones).
fn known_kind(kind: &RuleKind) -> Result<(), MatrixError> {
    match kind {
        RuleKind::Override | RuleKind::Underride | RuleKind::Sender | RuleKind::Room | RuleKind::Content => Ok(()),
        other => Err(MatrixError::invalid_param(format!("Unknown push rule kind {other}"))),
    }
}

/// Actions the spec defines (ruma keeps unknown ones as custom actions),
/// and the legacy `dont_notify` and `coalesce`, which the spec still lets
/// clients send (they do nothing).
fn known_actions(actions: &[Action]) -> Result<(), MatrixError> {
    for action in actions {
        let legacy = matches!(
            serde_json::to_value(action).ok().as_ref().and_then(Value::as_str),
            Some("dont_notify" | "coalesce")
        );
        if !legacy && !matches!(action, Action::Notify | Action::SetTweak(_)) {
            return Err(MatrixError::invalid_param(format!(
                "Unknown push rule action {}",
                serde_json::to_string(action).unwrap_or_default()
            )));
        }
    }
    Ok(())
}

/// The user's rule `rule_id` of `kind` (404 if there is none).
async fn held_rule(
    svc: &Services,
    user: &ruma::UserId,
    kind: &RuleKind,
    rule_id: &str,
) -> Result<ruma::push::AnyPushRule, MatrixError> {
    known_kind(kind)?;
    let rules = rules::get(svc, user).await?;
    rules
        .all
        .get(kind.clone(), rule_id)
        .map(|rule| rule.to_owned())
        .ok_or_else(|| rule_not_found(kind, rule_id))
}

fn rule_not_found(kind: &RuleKind, rule_id: &str) -> MatrixError {
    MatrixError::not_found(format!("Unknown push rule {kind}/{rule_id}"))
}

pub async fn get_all(
    svc: Arc<Services>,
    req: Ruma<get_pushrules_all::v3::Request>,
) -> Result<get_pushrules_all::v3::Response, MatrixError> {
    let rules = rules::get(&svc, &req.user().user_id).await?;
    Ok(get_pushrules_all::v3::Response::new(rules.all.clone()))
}

pub async fn get_global(
    svc: Arc<Services>,
    req: Ruma<get_pushrules_global_scope::v3::Request>,
) -> Result<get_pushrules_global_scope::v3::Response, MatrixError> {
    let rules = rules::get(&svc, &req.user().user_id).await?;
    Ok(get_pushrules_global_scope::v3::Response::new(rules.all.clone()))
}

pub async fn get_rule(
    svc: Arc<Services>,
    req: Ruma<get_pushrule::v3::Request>,
) -> Result<get_pushrule::v3::Response, MatrixError> {
    let b = &req.body;
    let rule = held_rule(&svc, &req.user().user_id, &b.kind, &b.rule_id).await?;
    Ok(get_pushrule::v3::Response::new(rule.into()))
}

pub async fn set_rule(
    svc: Arc<Services>,
    req: Ruma<set_pushrule::v3::Request>,
) -> Result<set_pushrule::v3::Response, MatrixError> {
    let b = req.body;
    let actions = match &b.rule {
        ruma::push::NewPushRule::Override(r) | ruma::push::NewPushRule::Underride(r) => &r.actions,
        ruma::push::NewPushRule::Content(r) => &r.actions,
        ruma::push::NewPushRule::Room(r) => &r.actions,
        ruma::push::NewPushRule::Sender(r) => &r.actions,
        _ => return Err(MatrixError::invalid_param("Unknown push rule kind")),
    };
    known_actions(actions)?;
    let user = &req.owner.as_ref().expect("endpoint requires authentication").user_id;
    rules::update(&svc, user, |rules| {
        rules
            .insert(b.rule, b.after.as_deref(), b.before.as_deref())
            .map_err(|e| match e {
                InsertPushRuleError::UnknownRuleId => MatrixError::not_found(e.to_string()),
                e => MatrixError::invalid_param(e.to_string()),
            })
    })
    .await?;
    Ok(set_pushrule::v3::Response::new())
}

pub async fn delete_rule(
    svc: Arc<Services>,
    req: Ruma<delete_pushrule::v3::Request>,
) -> Result<delete_pushrule::v3::Response, MatrixError> {
    let b = &req.body;
    known_kind(&b.kind)?;
    rules::update(&svc, &req.user().user_id, |rules| {
        rules.remove(b.kind.clone(), &b.rule_id).map_err(|e| match e {
            RemovePushRuleError::NotFound => rule_not_found(&b.kind, &b.rule_id),
            e => MatrixError::invalid_param(e.to_string()),
        })
    })
    .await?;
    Ok(delete_pushrule::v3::Response::new())
}

pub async fn get_actions(
    svc: Arc<Services>,
    req: Ruma<get_pushrule_actions::v3::Request>,
) -> Result<get_pushrule_actions::v3::Response, MatrixError> {
    let b = &req.body;
    let rule = held_rule(&svc, &req.user().user_id, &b.kind, &b.rule_id).await?;
    Ok(get_pushrule_actions::v3::Response::new(rule.actions().to_vec()))
}

pub async fn set_actions(
    svc: Arc<Services>,
    req: Ruma<set_pushrule_actions::v3::Request>,
) -> Result<set_pushrule_actions::v3::Response, MatrixError> {
    let b = &req.body;
    known_kind(&b.kind)?;
    known_actions(&b.actions)?;
    rules::update(&svc, &req.user().user_id, |rules| {
        rules
            .set_actions(b.kind.clone(), &b.rule_id, b.actions.clone())
            .map_err(|_| rule_not_found(&b.kind, &b.rule_id))
    })
    .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

pub async fn get_enabled(
    svc: Arc<Services>,
    req: Ruma<get_pushrule_enabled::v3::Request>,
) -> Result<get_pushrule_enabled::v3::Response, MatrixError> {
    let b = &req.body;
    let rule = held_rule(&svc, &req.user().user_id, &b.kind, &b.rule_id).await?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

pub async fn set_enabled(
    svc: Arc<Services>,
    req: Ruma<set_pushrule_enabled::v3::Request>,
) -> Result<set_pushrule_enabled::v3::Response, MatrixError> {
    let b = &req.body;
    known_kind(&b.kind)?;
    rules::update(&svc, &req.user().user_id, |rules| {
        rules
            .set_enabled(b.kind.clone(), &b.rule_id, b.enabled)
            .map_err(|_| rule_not_found(&b.kind, &b.rule_id))
    })
    .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

/// `/pushrules/…` paths no endpoint above takes. `GET
/// /pushrules/global/{kind}/` lists the rules of a kind (as servers have
/// long answered); anything else (no scope, an unknown scope or kind, a
/// missing or empty rule ID, an unknown attribute) is a bad request.
pub async fn other_path(State(svc): State<Arc<Services>>, Path(rest): Path<String>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let _ = axum::body::to_bytes(body, 1 << 20).await;
    let owner = match super::extract::token_owner(&svc, &parts).await {
        Ok(owner) => owner,
        Err(e) => return e.into_response(),
    };
    let bad = || {
        MatrixError::unrecognized(format!("Unrecognised push rules path {rest:?}"))
            .with_status(http::StatusCode::BAD_REQUEST)
            .into_response()
    };
    let Some(kind) = rest.strip_prefix("global/").and_then(|r| r.strip_suffix('/')) else {
        return bad();
    };
    if parts.method != http::Method::GET || !["override", "underride", "sender", "room", "content"].contains(&kind) {
        return bad();
    }
    match rules::get(&svc, &owner.user_id).await {
        Ok(rules) => {
            let all = serde_json::to_value(&rules.all).unwrap_or_default();
            let list = all.get(kind).cloned().unwrap_or(Value::Array(Vec::new()));
            axum::Json(list).into_response()
        }
        Err(e) => e.into_response(),
    }
}

pub async fn get_pushers(
    svc: Arc<Services>,
    req: Ruma<get_pushers::v3::Request>,
) -> Result<get_pushers::v3::Response, MatrixError> {
    let records = svc.storage.pushers(&req.user().user_id).await?;
    let pushers = records
        .iter()
        .filter_map(|r| serde_json::from_str::<Pusher>(&r.json).ok())
        .collect();
    Ok(get_pushers::v3::Response::new(pushers))
}

pub async fn set_pusher(
    svc: Arc<Services>,
    req: Ruma<set_pusher::v3::Request>,
) -> Result<set_pusher::v3::Response, MatrixError> {
    let user = &req.user().user_id;
    match &req.body.action {
        set_pusher::v3::PusherAction::Post(data) => {
            let pusher = &data.pusher;
            if let PusherKind::Http(http) = &pusher.kind {
                let url = reqwest::Url::parse(&http.url)
                    .map_err(|e| MatrixError::invalid_param(format!("Bad pusher URL: {e}")))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return Err(MatrixError::invalid_param("Pusher URL must be http or https"));
                }
            }
            let json = serde_json::to_string(pusher).map_err(|e| MatrixError::internal("pusher", e))?;
            let record = PusherRecord {
                user_id: user.clone(),
                app_id: pusher.ids.app_id.clone(),
                pushkey: pusher.ids.pushkey.clone(),
                json,
                ts: MilliSecondsSinceUnixEpoch::now().get().into(),
                device_id: Some(req.user().device_id.clone()),
            };
            svc.storage.set_pusher(&record, data.append).await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            svc.storage.delete_pusher(user, &ids.app_id, &ids.pushkey).await?;
        }
        _ => return Err(MatrixError::invalid_param("Unknown pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}

pub async fn notifications(
    svc: Arc<Services>,
    req: Ruma<get_notifications::v3::Request>,
) -> Result<get_notifications::v3::Response, MatrixError> {
    let owner = req.user();
    let b = &req.body;
    let before = match b.from.as_deref() {
        Some(from) => Some(
            from.parse::<i64>()
                .map_err(|_| MatrixError::invalid_param(format!("Invalid from token {from:?}")))?,
        ),
        None => None,
    };
    let limit = b
        .limit
        .map_or(DEFAULT_NOTIFICATIONS, |l| u64::from(l) as usize)
        .clamp(1, MAX_NOTIFICATIONS);
    let highlights_only = b.only.as_deref() == Some("highlight");
    let records = svc
        .storage
        .notifications(&owner.user_id, before, limit, highlights_only)
        .await?;
    let ids: Vec<_> = records.iter().map(|r| r.event_id.clone()).collect();
    let events = svc.storage.events(&ids).await?;
    let formatted = format::client_events(&svc, &events, Some(owner)).await?;
    let mut notifications = Vec::new();
    for (event, json) in events.iter().zip(formatted) {
        let Some(record) = records.iter().find(|r| r.event_id == event.pdu.event_id) else {
            continue;
        };
        let actions: Vec<Action> = serde_json::from_str(&record.actions).unwrap_or_default();
        notifications.push(get_notifications::v3::Notification::new(
            actions,
            format::raw(&json),
            record.read,
            record.room_id.clone(),
            MilliSecondsSinceUnixEpoch(UInt::try_from(record.ts).unwrap_or_default()),
        ));
    }
    let mut response = get_notifications::v3::Response::new(notifications);
    if records.len() == limit {
        response.next_token = records.last().map(|r| r.stream_ordering.to_string());
    }
    Ok(response)
}

/// Response middleware for `GET /notifications`: each notification has a
/// `profile_tag`, `null` when there is none (ruma leaves it out).
pub async fn with_profile_tags(response: Response) -> Response {
    if response.status() != http::StatusCode::OK {
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, usize::MAX).await else {
        return MatrixError::unknown("response unreadable").into_response();
    };
    let bytes = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut value) => {
            if let Some(list) = value.get_mut("notifications").and_then(Value::as_array_mut) {
                for n in list.iter_mut().filter_map(Value::as_object_mut) {
                    n.entry("profile_tag").or_insert(Value::Null);
                }
            }
            serde_json::to_vec(&value).map_or(bytes, Into::into)
        }
        Err(_) => bytes,
    };
    Response::from_parts(parts, axum::body::Body::from(bytes))
}
