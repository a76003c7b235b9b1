//! Application services (the application service API): bridges and bots
//! registered with this server by a registration file
//! ([`registration`]). They act on the client API with their `as_token`
//! (as their own user, or as a user of their namespaces through the
//! `user_id` query parameter, see `client_api::extract`), have their user
//! and alias namespaces (exclusive ones refused to everyone else), and are
//! told of the events that concern them ([`sender`]). This module also
//! holds what this server asks of them: whether a user or an alias of
//! their namespaces exists, and their third-party protocols.

pub mod registration;
pub mod sender;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ruma::{RoomAliasId, UserId};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub use registration::Registration;

use crate::{
    error::{ErrCode, MatrixError},
    events::Pdu,
    services::Services,
    storage::Storage,
};

/// How long an application service has to answer a query.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a protocol's metadata is kept (Synapse caches it too; SyTest
/// relies on it).
const PROTOCOL_CACHE: Duration = Duration::from_secs(5 * 60);

/// The registered application services.
pub struct AppServices {
    list: Vec<Arc<Registration>>,
    http: reqwest::Client,
    sender: Arc<sender::TransactionSender>,
    protocols: Mutex<HashMap<(String, String), (Instant, Value)>>,
}

/// A client for requests to application services: they are loopback or
/// in-cluster services, often with self-signed certificates when TLS is
/// not verified (test rigs).
fn http_client(verify_tls: bool, timeout: Duration) -> reqwest::Client {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .tls_danger_accept_invalid_certs(!verify_tls)
        // SyTest's fake application service takes one request per
        // connection.
        .pool_max_idle_per_host(0)
        .user_agent(concat!("weft/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// `{url}/_matrix/app/v1/{segments…}`, each segment percent-encoded.
pub(crate) fn endpoint(registration: &Registration, segments: &[&str]) -> Option<reqwest::Url> {
    let mut url = reqwest::Url::parse(registration.url.as_deref()?).ok()?;
    {
        let mut path = url.path_segments_mut().ok()?;
        path.pop_if_empty();
        path.extend(["_matrix", "app", "v1"]);
        path.extend(segments);
    }
    Some(url)
}

impl AppServices {
    /// Starts a transaction sender per application service with a URL.
    pub fn start(
        registrations: Vec<Registration>,
        storage: (Arc<dyn Storage>, Arc<dyn crate::cluster::Cluster>),
        verify_tls: bool,
        cancel: CancellationToken,
    ) -> AppServices {
        let list: Vec<Arc<Registration>> = registrations.into_iter().map(Arc::new).collect();
        let sender = sender::TransactionSender::new(
            list.clone(),
            storage,
            http_client(verify_tls, sender::TRANSACTION_TIMEOUT),
            cancel,
        );
        AppServices {
            list,
            http: http_client(verify_tls, QUERY_TIMEOUT),
            sender,
            protocols: Mutex::default(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn all(&self) -> &[Arc<Registration>] {
        &self.list
    }

    /// The application service whose `as_token` this is.
    pub fn by_token(&self, token: &str) -> Option<Arc<Registration>> {
        self.list.iter().find(|r| r.as_token == token).cloned()
    }

    pub fn by_id(&self, id: &str) -> Option<Arc<Registration>> {
        self.list.iter().find(|r| r.id == id).cloned()
    }

    /// The application service that has `user` in an exclusive namespace.
    pub fn exclusive_user_owner(&self, user: &UserId) -> Option<&Registration> {
        self.list.iter().map(AsRef::as_ref).find(|r| r.is_exclusive_user(user))
    }

    /// The application service that has `alias` in an exclusive namespace.
    pub fn exclusive_alias_owner(&self, alias: &RoomAliasId) -> Option<&Registration> {
        self.list
            .iter()
            .map(AsRef::as_ref)
            .find(|r| r.is_exclusive_alias(alias))
    }

    /// Starts sending the queued events of every application service
    /// (after a restart).
    pub fn resume(&self) {
        self.sender.wake_all();
    }

    /// Wakes the sender of application service `id` (another process
    /// queued events for it).
    pub fn wake(&self, id: &str) {
        self.sender.wake(id);
    }

    /// Until `cancel`: takes over the services whose sender died (its duty
    /// ran out with events still queued), looking every half
    /// [`crate::duty::TTL`] (a query per service with a URL).
    pub async fn take_over(&self, cancel: tokio_util::sync::CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(crate::duty::TTL / 2) => {}
            }
            self.sender.wake_all();
        }
    }

    /// Creates the application services' own users if they do not exist
    /// yet: they act without registering.
    pub async fn create_sender_users(&self, storage: &dyn Storage) -> Result<(), crate::accounts::AccountError> {
        for registration in &self.list {
            if storage.user(&registration.sender).await?.is_none() {
                match crate::accounts::create_user(storage, &registration.sender, None, false).await {
                    Ok(()) | Err(crate::accounts::AccountError::UserInUse) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }

    /// `GET {url}/_matrix/app/v1/{segments}` with the `hs_token`; the JSON
    /// answer of a 2xx, or `None` (failures are logged).
    async fn get(&self, registration: &Registration, segments: &[&str], query: &[(String, String)]) -> Option<Value> {
        let mut url = endpoint(registration, segments)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let answer = self
            .http
            .get(url.clone())
            .bearer_auth(&registration.hs_token)
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => match response.json::<Value>().await {
                Ok(value) => Some(value),
                Err(e) => {
                    tracing::info!(appservice = %registration.id, %url, error = %e, "application service answered no JSON");
                    None
                }
            },
            Ok(response) => {
                tracing::debug!(appservice = %registration.id, %url, status = %response.status(), "application service query refused");
                None
            }
            Err(e) => {
                tracing::info!(appservice = %registration.id, %url, error = %e, "application service query failed");
                None
            }
        }
    }

    /// Asks the application services that have `user` in a namespace
    /// whether it exists (`GET /users/{userId}`): true when one says so
    /// (it has registered the user by then).
    pub async fn query_user(&self, user: &UserId) -> bool {
        for registration in &self.list {
            if *user != registration.sender
                && registration.is_user_in_namespace(user)
                && self.get(registration, &["users", user.as_str()], &[]).await.is_some()
            {
                return true;
            }
        }
        false
    }

    /// Asks the application services that have `alias` in a namespace
    /// whether it exists (`GET /rooms/{alias}`): true when one says so (it
    /// has created the alias by then).
    pub async fn query_alias(&self, alias: &RoomAliasId) -> bool {
        for registration in &self.list {
            if registration.is_alias_in_namespace(alias)
                && self.get(registration, &["rooms", alias.as_str()], &[]).await.is_some()
            {
                return true;
            }
        }
        false
    }

    /// `POST {url}/_matrix/app/v1/ping` for the client API's
    /// `/appservice/{appserviceId}/ping`: how long the service took to
    /// answer, or the spec's error for why it did not.
    pub async fn ping(
        &self,
        registration: &Registration,
        transaction_id: Option<&str>,
    ) -> Result<Duration, MatrixError> {
        let Some(url) = endpoint(registration, &["ping"]) else {
            return Err(MatrixError::new(
                ErrCode::UrlNotSet,
                "Application service doesn't have a URL configured",
            ));
        };
        let mut body = Map::new();
        if let Some(id) = transaction_id {
            body.insert("transaction_id".to_owned(), Value::String(id.to_owned()));
        }
        let started = Instant::now();
        let answer = self
            .http
            .post(url)
            .bearer_auth(&registration.hs_token)
            .json(&body)
            .send()
            .await;
        let elapsed = started.elapsed();
        match answer {
            Ok(response) if response.status().is_success() => Ok(elapsed),
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                Err(
                    MatrixError::new(ErrCode::BadStatus, format!("Ping returned status {}", status.as_u16()))
                        .with_field("status", Value::from(status.as_u16()))
                        .with_field("body", Value::String(text)),
                )
            }
            Err(e) if e.is_timeout() => Err(MatrixError::new(
                ErrCode::ConnectionTimeout,
                "Connection to application service timed out",
            )),
            Err(e) => Err(MatrixError::new(
                ErrCode::ConnectionFailed,
                format!("Connection to application service failed: {e}"),
            )),
        }
    }

    /// One application service's metadata of a protocol, kept a while.
    async fn protocol_of(&self, registration: &Registration, protocol: &str) -> Option<Value> {
        let key = (registration.id.clone(), protocol.to_owned());
        if let Some((at, value)) = self.protocols.lock().expect("protocol cache").get(&key)
            && at.elapsed() < PROTOCOL_CACHE
        {
            return Some(value.clone());
        }
        let mut info = self
            .get(registration, &["thirdparty", "protocol", protocol], &[])
            .await?;
        // Valid metadata has a list of instances; an instance with a
        // network gets its instance ID, `{appservice}|{network}`, which
        // names its room directory list.
        let instances = info.get_mut("instances")?.as_array_mut()?;
        for instance in instances.iter_mut() {
            if let Some(fields) = instance.as_object_mut()
                && let Some(network) = fields.get("network_id").and_then(Value::as_str)
            {
                let instance_id = format!("{}|{network}", registration.id);
                fields.insert("instance_id".to_owned(), Value::String(instance_id));
            }
        }
        self.protocols
            .lock()
            .expect("protocol cache")
            .insert(key, (Instant::now(), info.clone()));
        Some(info)
    }

    /// The metadata of the third-party protocols the application services
    /// bridge (all, or only `only`): per protocol, the first answer's
    /// fields with every answer's instances.
    pub async fn protocols(&self, only: Option<&str>) -> Map<String, Value> {
        let mut merged = Map::new();
        for registration in &self.list {
            for protocol in &registration.protocols {
                if only.is_some_and(|p| p != protocol) {
                    continue;
                }
                let Some(info) = self.protocol_of(registration, protocol).await else {
                    continue;
                };
                match merged.get_mut(protocol) {
                    None => {
                        merged.insert(protocol.clone(), info);
                    }
                    Some(existing) => {
                        let more = info
                            .get("instances")
                            .and_then(Value::as_array)
                            .cloned()
                            .unwrap_or_default();
                        if let Some(instances) = existing.get_mut("instances").and_then(Value::as_array_mut) {
                            instances.extend(more);
                        }
                    }
                }
            }
        }
        merged
    }

    /// Third-party users or locations (`kind`: `user` or `location`) of a
    /// protocol matching the query's fields, from every application
    /// service bridging it; answers without the required fields are left
    /// out.
    pub async fn thirdparty_lookup(&self, kind: &str, protocol: &str, query: &[(String, String)]) -> Vec<Value> {
        let required = if kind == "user" { "userid" } else { "alias" };
        let mut results = Vec::new();
        for registration in &self.list {
            if !registration.protocols.iter().any(|p| p == protocol) {
                continue;
            }
            let Some(Value::Array(found)) = self.get(registration, &["thirdparty", kind, protocol], query).await else {
                continue;
            };
            results.extend(found.into_iter().filter(|r| {
                r.get(required).is_some_and(Value::is_string)
                    && r.get("protocol").is_some_and(Value::is_string)
                    && r.get("fields").is_some_and(Value::is_object)
            }));
        }
        results
    }
}

/// Whether a local user exists, asking the application services that
/// have it in a namespace when it does not (yet): one may create it then.
pub async fn local_user_exists(svc: &Services, user: &UserId) -> crate::storage::Result<bool> {
    if svc.storage.user(user).await?.is_some() {
        return Ok(true);
    }
    Ok(svc.appservices.query_user(user).await && svc.storage.user(user).await?.is_some())
}

/// The room a local alias names and who made it, asking the application
/// services that have the alias in a namespace when it is unknown: one may
/// create it then.
pub async fn resolve_local_alias(
    svc: &Services,
    alias: &RoomAliasId,
) -> crate::storage::Result<Option<(ruma::OwnedRoomId, ruma::OwnedUserId)>> {
    if let Some(found) = svc.storage.resolve_alias(alias).await? {
        return Ok(Some(found));
    }
    if !svc.appservices.query_alias(alias).await {
        return Ok(None);
    }
    svc.storage.resolve_alias(alias).await
}

/// Whether an application service is interested in an event: it is in a
/// room of its room namespaces, sent by or about (a membership's target)
/// a user of its namespaces, in a room with an alias of its alias
/// namespaces, or in a room where a user of its namespaces is joined.
async fn interested(svc: &Services, registration: &Registration, pdu: &Pdu) -> crate::storage::Result<bool> {
    if registration.is_room_in_namespace(&pdu.room_id) || registration.is_user_in_namespace(&pdu.sender) {
        return Ok(true);
    }
    if pdu.kind == ruma::events::TimelineEventType::RoomMember
        && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
        && registration.is_user_in_namespace(&target)
    {
        return Ok(true);
    }
    if !registration.aliases.is_empty()
        && svc
            .storage
            .room_aliases(&pdu.room_id)
            .await?
            .iter()
            .any(|a| registration.is_alias_in_namespace(a))
    {
        return Ok(true);
    }
    Ok(svc
        .joined
        .get(&pdu.room_id)
        .await?
        .local
        .iter()
        .any(|u| registration.is_user_in_namespace(u)))
}

/// A new live event was stored: queued for the application services
/// interested in it, and their senders woken.
pub async fn event_stored(svc: &Services, pdu: &Pdu) -> crate::storage::Result<()> {
    if svc.appservices.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::new();
    for registration in svc.appservices.all() {
        if registration.url.is_some() && interested(svc, registration, pdu).await? {
            ids.push(registration.id.clone());
        }
    }
    if ids.is_empty() {
        return Ok(());
    }
    svc.storage.queue_appservice_event(&ids, &pdu.event_id).await?;
    for id in &ids {
        svc.appservices.sender.wake(id);
    }
    Ok(())
}
