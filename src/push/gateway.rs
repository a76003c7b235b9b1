//! Pushes to push gateways (the push gateway API's
//! `POST /_matrix/push/v1/notify`), off the write path: events and badge
//! updates are queued on a channel that one background task drains, each
//! request on its own task so that a slow gateway delays no other.
//! Failures are logged; a gateway that rejects a pushkey loses that pusher.

use std::{sync::Arc, time::Duration};

use ruma::{
    OwnedUserId,
    api::client::push::{Pusher, PusherKind},
    events::{StateEventType, TimelineEventType},
    push::{Action, PushFormat},
};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::{events::Pdu, storage::Storage};

/// How long a gateway has to answer.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Something to tell a user's pushers.
#[derive(Debug)]
pub enum Job {
    /// An event that notifies `user`, with the actions their rules gave.
    Event {
        user: OwnedUserId,
        pdu: Arc<Pdu>,
        actions: Vec<Action>,
        /// The room's name when the room's state is not held here (an
        /// invite from another server).
        room_name: Option<String>,
    },
    /// The user's unread count changed (a read receipt): a badge update.
    Badge { user: OwnedUserId },
}

/// The queue of pushes.
pub struct Gateway {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Gateway {
    /// Starts the background task; it ends with `cancel`.
    pub fn start(storage: Arc<dyn Storage>, verify_tls: bool, cancel: tokio_util::sync::CancellationToken) -> Gateway {
        crate::tls::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(!verify_tls)
            // A connection per push: gateways see one request per
            // connection (SyTest's fake gateway cannot take a second one
            // on a kept-alive connection), and pushes are few.
            .pool_max_idle_per_host(0)
            .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default();
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            loop {
                let job = tokio::select! {
                    _ = cancel.cancelled() => break,
                    job = rx.recv() => match job {
                        Some(job) => job,
                        None => break,
                    },
                };
                if let Err(e) = run(&storage, &http, job).await {
                    tracing::warn!(error = %e, "push failed");
                }
            }
        });
        Gateway { jobs }
    }

    pub fn queue(&self, job: Job) {
        // The task ends only at shutdown; later jobs are dropped then.
        let _ = self.jobs.send(job);
    }
}

/// A stored pusher, parsed: `(pusher, its url, pushkey_ts)`.
fn http_pushers(records: Vec<crate::storage::push::PusherRecord>) -> Vec<(Pusher, u64)> {
    records
        .into_iter()
        .filter_map(|r| match serde_json::from_str::<Pusher>(&r.json) {
            Ok(p) if matches!(p.kind, PusherKind::Http(_)) => Some((p, r.ts)),
            Ok(_) => None,
            Err(e) => {
                tracing::warn!(user = %r.user_id, error = %e, "stored pusher unreadable");
                None
            }
        })
        .collect()
}

async fn run(storage: &Arc<dyn Storage>, http: &reqwest::Client, job: Job) -> Result<(), String> {
    let user = match &job {
        Job::Event { user, .. } | Job::Badge { user } => user.clone(),
    };
    let pushers = http_pushers(storage.pushers(&user).await.map_err(|e| e.to_string())?);
    if pushers.is_empty() {
        return Ok(());
    }
    let unread = storage.unread_total(&user).await.map_err(|e| e.to_string())?;
    let event = match &job {
        Job::Event {
            pdu,
            actions,
            room_name,
            ..
        } => {
            let names = room_names(storage, pdu).await;
            Some((pdu.clone(), tweaks(actions), names.0.or(room_name.clone()), names.1))
        }
        Job::Badge { .. } => None,
    };
    for (pusher, ts) in pushers {
        let PusherKind::Http(data) = &pusher.kind else { continue };
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
        let notification = match &event {
            Some((pdu, tweaks, room_name, room_alias)) => {
                device["tweaks"] = Value::Object(tweaks.clone());
                let full = data.format != Some(PushFormat::EventIdOnly);
                event_notification(&user, pdu, room_name.as_deref(), room_alias.as_deref(), full)
            }
            None => json!({ "id": "", "type": null, "sender": "" }),
        };
        let mut notification = notification;
        notification["counts"] = json!({ "unread": unread });
        notification["devices"] = json!([device]);
        let body = json!({ "notification": notification });
        let (storage, http, url, user) = (storage.clone(), http.clone(), data.url.clone(), user.clone());
        tokio::spawn(async move {
            match send(&http, &url, &body).await {
                Ok(rejected) => {
                    for pushkey in rejected.into_iter().filter(|k| *k == pusher.ids.pushkey) {
                        tracing::info!(%user, %pushkey, "push gateway rejected the pushkey; pusher removed");
                        if let Err(e) = storage.delete_pusher(&user, &pusher.ids.app_id, &pushkey).await {
                            tracing::warn!(error = %e, "removing a rejected pusher");
                        }
                    }
                }
                Err(e) => tracing::warn!(%user, %url, error = %e, "push to gateway failed"),
            }
        });
    }
    Ok(())
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
    user: &ruma::UserId,
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
async fn room_names(storage: &Arc<dyn Storage>, pdu: &Pdu) -> (Option<String>, Option<String>) {
    let field = |kind: StateEventType, field: &'static str| {
        let storage = storage.clone();
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
