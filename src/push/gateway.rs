//! Requests to push gateways (the push gateway API's
//! `POST /_matrix/push/v1/notify`): what a push says, to one pusher.
//! Pushes of events come from the queue in storage (`super::sender`);
//! badge updates (a read receipt moved the unread count) are sent at once,
//! best effort: a badge lost is put right by the user's next push.

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedUserId, UserId,
    api::client::push::{Pusher, PusherKind},
    events::{StateEventType, TimelineEventType},
    push::{Action, PushFormat},
};
use serde_json::{Map, Value, json};

use crate::{events::Pdu, storage::Storage};

/// How long a gateway has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An event to push, with the actions the user's rules gave it.
pub struct EventPush {
    pub pdu: Arc<Pdu>,
    pub actions: Vec<Action>,
    /// The room's name when the room's state is not held here (an invite
    /// from another server).
    pub room_name: Option<String>,
}

/// What a gateway said of a push.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    Accepted,
    /// The gateway rejected the pushkey: the pusher is to go.
    Rejected,
}

/// A pusher of a user as stored, parsed, with its `pushkey_ts` (ms).
pub type HttpPusher = (Pusher, u64);

/// The HTTP client of pushes.
pub struct Gateway {
    http: reqwest::Client,
}

impl Gateway {
    /// `verify_tls`: check push gateways' certificates (only test rigs
    /// turn it off, as for federation).
    pub fn new(verify_tls: bool) -> Gateway {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(!verify_tls)
            // A connection per push: gateways see one request per
            // connection (SyTest's fake gateway cannot take a second one
            // on a kept-alive connection).
            .pool_max_idle_per_host(0)
            .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        Gateway { http }
    }

    /// Pushes `event` (`None`: a badge update) to `pusher` of `user`, with
    /// their unread count as it is now.
    pub async fn push(
        &self,
        storage: &dyn Storage,
        user: &UserId,
        (pusher, ts): &HttpPusher,
        event: Option<&EventPush>,
    ) -> Result<Delivery, String> {
        let PusherKind::Http(data) = &pusher.kind else {
            return Ok(Delivery::Accepted);
        };
        let unread = storage.unread_total(user).await.map_err(|e| e.to_string())?;
        let mut device_data = data.data.clone();
        if let Some(format) = &data.format {
            device_data.insert("format".to_owned(), json!(format.as_str()));
        }
        let mut device = json!({
            "app_id": pusher.ids.app_id,
            "pushkey": pusher.ids.pushkey,
            "pushkey_ts": ts / 1000,
            "data": device_data,
        });
        let mut notification = match event {
            Some(event) => {
                device["tweaks"] = Value::Object(tweaks(&event.actions));
                let (name, alias) = room_names(storage, &event.pdu).await;
                let full = data.format != Some(PushFormat::EventIdOnly);
                let name = name.or(event.room_name.clone());
                event_notification(user, &event.pdu, name.as_deref(), alias.as_deref(), full)
            }
            None => json!({ "id": "", "type": null, "sender": "" }),
        };
        notification["counts"] = json!({ "unread": unread });
        notification["devices"] = json!([device]);
        let rejected = send(&self.http, &data.url, &json!({ "notification": notification })).await?;
        Ok(if rejected.contains(&pusher.ids.pushkey) {
            Delivery::Rejected
        } else {
            Delivery::Accepted
        })
    }

    /// Sends `user`'s badge to each of their pushers, in the background.
    pub fn badge(self: &Arc<Self>, storage: Arc<dyn Storage>, user: OwnedUserId) {
        let gateway = self.clone();
        tokio::spawn(async move {
            let pushers = match http_pushers(&*storage, &user).await {
                Ok(pushers) => pushers,
                Err(e) => return tracing::warn!(%user, error = %e, "reading pushers for a badge"),
            };
            for pusher in pushers {
                let (gateway, storage, user) = (gateway.clone(), storage.clone(), user.clone());
                tokio::spawn(async move {
                    match gateway.push(&*storage, &user, &pusher, None).await {
                        Ok(Delivery::Accepted) => {}
                        Ok(Delivery::Rejected) => remove_rejected(&*storage, &user, &pusher.0).await,
                        Err(e) => tracing::info!(%user, error = %e, "badge push failed"),
                    }
                });
            }
        });
    }
}

/// Removes a pusher whose gateway rejected its pushkey.
pub async fn remove_rejected(storage: &dyn Storage, user: &UserId, pusher: &Pusher) {
    let (app_id, pushkey) = (&pusher.ids.app_id, &pusher.ids.pushkey);
    tracing::info!(%user, %pushkey, "push gateway rejected the pushkey; pusher removed");
    if let Err(e) = storage.delete_pusher(user, app_id, pushkey).await {
        tracing::warn!(error = %e, "removing a rejected pusher");
    }
}

/// The user's HTTP pushers, parsed.
pub async fn http_pushers(storage: &dyn Storage, user: &UserId) -> Result<Vec<HttpPusher>, String> {
    let records = storage.pushers(user).await.map_err(|e| e.to_string())?;
    Ok(records
        .into_iter()
        .filter_map(|r| match serde_json::from_str::<Pusher>(&r.json) {
            Ok(p) if matches!(p.kind, PusherKind::Http(_)) => Some((p, r.ts)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(user = %r.user_id, error = %e, "stored pusher unreadable");
                None
            }
        })
        .collect())
}

/// POSTs a notification; the pushkeys the gateway rejected.
async fn send(http: &reqwest::Client, url: &str, body: &Value) -> Result<Vec<String>, String> {
    let response = http.post(url).json(body).send().await.map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("gateway answered {}", response.status()));
    }
    let answer: Value = response.json().await.unwrap_or_default();
    Ok(answer["rejected"]
        .as_array()
        .map(|keys| keys.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default())
}

/// The `tweaks` of a device: the actions' `set_tweak`s.
fn tweaks(actions: &[Action]) -> Map<String, Value> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTweak(tweak) => {
                let value = tweak
                    .value()
                    .and_then(|v| serde_json::from_str(v.get()).ok())
                    .unwrap_or(Value::Bool(true));
                Some((tweak.set_tweak().to_owned(), value))
            }
            _ => None,
        })
        .collect()
}

/// The notification of an event (`full`: with its content and sender,
/// else the `event_id_only` format's fields).
fn event_notification(
    user: &UserId,
    pdu: &Pdu,
    room_name: Option<&str>,
    room_alias: Option<&str>,
    full: bool,
) -> Value {
    let mut n = json!({
        "event_id": pdu.event_id,
        // The field's name before the push gateway API's r0.1.
        "id": pdu.event_id,
        "room_id": pdu.room_id,
        "prio": "high",
    });
    if !full {
        return n;
    }
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
    n["type"] = json!(pdu.kind.to_string());
    n["sender"] = json!(pdu.sender);
    if pdu.kind == TimelineEventType::RoomMember {
        n["membership"] = content["membership"].clone();
        n["user_is_target"] = json!(pdu.state_key.as_deref() == Some(user.as_str()));
    }
    n["content"] = content;
    if let Some(name) = room_name {
        n["room_name"] = json!(name);
    }
    if let Some(alias) = room_alias {
        n["room_alias"] = json!(alias);
    }
    n
}

/// The room's name as a push shows it (`m.room.name`, else the canonical
/// alias), and its canonical alias, from the current state if held.
async fn room_names(storage: &dyn Storage, pdu: &Pdu) -> (Option<String>, Option<String>) {
    let field = |kind: StateEventType, field: &'static str| {
        let room_id = pdu.room_id.clone();
        async move {
            let state = storage.current_state(&room_id, Some(&kind)).await.ok()?;
            let (_, event_id) = state.into_iter().find(|((_, k), _)| k.is_empty())?;
            let event = storage.event(&event_id).await.ok()??;
            let content: Value = serde_json::from_str(event.pdu.content.get()).ok()?;
            content[field].as_str().filter(|s| !s.is_empty()).map(str::to_owned)
        }
    };
    let name = field(StateEventType::RoomName, "name").await;
    let alias = field(StateEventType::RoomCanonicalAlias, "alias").await;
    (name.or(alias.clone()), alias)
}
