//! Device lists: the e2e stream (device list changes and to-device
//! messages, `/sync`'s third token part), telling other servers about
//! local users' device changes (`m.device_list_update`,
//! `m.signing_key_update` EDUs), and other servers' users' device lists,
//! cached here while they share a room with a local user and kept up to
//! date by those EDUs (fetched again with `/user/devices` when an update
//! was missed).

use std::{
    collections::{BTreeSet, HashSet},
    sync::{Arc, Mutex},
};

use ruma::{
    DeviceId, OwnedDeviceId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    api::federation::device::get_devices,
};
use serde_json::{Value, json};

use crate::{
    services::Services,
    storage::{
        Storage, StorageError,
        e2e::{DeviceKeysRecord, MASTER, RemoteDeviceList, SELF_SIGNING},
    },
    wakeups::{StreamHead, Topic, Wakeups},
};

/// The head of the e2e stream, and whom a change of it wakes: a
/// to-device message its recipients' parked requests, a change of a
/// user's keys (device list, cross-signing) the user's and those of the
/// rooms they are joined to (whoever may see it), or the one user it is
/// visible to. (The deprecated `/events` does not show the stream.)
pub struct E2eStream {
    head: StreamHead,
    storage: Arc<dyn Storage>,
    wakeups: Arc<Wakeups>,
    /// Remote users whose device list is being fetched in the background.
    resyncing: Mutex<HashSet<OwnedUserId>>,
}

/// Whom a change of the e2e stream concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum E2eChange {
    /// To-device messages for these users.
    ToDevice(Vec<OwnedUserId>),
    /// A user's keys, seen by everyone sharing a room with them, or (with
    /// `visible_to`) by that one user.
    Keys {
        user_id: OwnedUserId,
        visible_to: Option<OwnedUserId>,
    },
}

impl E2eStream {
    pub fn new(head: i64, storage: Arc<dyn Storage>, wakeups: Arc<Wakeups>) -> Self {
        E2eStream {
            head: StreamHead::new(head),
            storage,
            wakeups,
            resyncing: Mutex::default(),
        }
    }

    /// A change committed at `position` (here or by another process): the
    /// head moves, then the requests it concerns wake.
    pub async fn changed(&self, position: i64, change: &E2eChange) -> Result<(), StorageError> {
        self.advance(position);
        let topics: Vec<Topic> = match change {
            E2eChange::ToDevice(users) => users.iter().cloned().map(Topic::User).collect(),
            E2eChange::Keys {
                visible_to: Some(user), ..
            } => vec![Topic::User(user.clone())],
            E2eChange::Keys { user_id, .. } => Topic::user_and_rooms(&*self.storage, user_id).await?,
        };
        self.wakeups.wake(&topics);
        Ok(())
    }

    /// [`Self::changed`] for a change of `user_id`'s keys that everyone
    /// sharing a room with them sees.
    pub async fn keys_changed(&self, position: i64, user_id: &UserId) -> Result<(), StorageError> {
        let change = E2eChange::Keys {
            user_id: user_id.to_owned(),
            visible_to: None,
        };
        self.changed(position, &change).await
    }

    /// A position committed whose change is unknown (another process's
    /// missed notifications): the head moves and every parked request
    /// looks.
    pub fn advance_and_wake_all(&self, position: i64) {
        self.advance(position);
        self.wakeups.wake_all();
    }

    /// A position was written (and committed): `/sync` may show it. Wakes
    /// nobody: see [`Self::changed`].
    fn advance(&self, position: i64) {
        self.head.advance(position);
    }

    pub fn head(&self) -> i64 {
        self.head.get()
    }
}

/// The servers (but this one) with a user joined to a room `user_id` is
/// joined to.
pub async fn servers_sharing_rooms(svc: &Services, user_id: &UserId) -> Result<Vec<OwnedServerName>, StorageError> {
    let mut servers = BTreeSet::new();
    for m in svc.storage.user_memberships(user_id).await? {
        if m.membership != "join" {
            continue;
        }
        for member in svc.storage.room_members(&m.room_id, Some("join")).await? {
            servers.insert(member.user_id.server_name().to_owned());
        }
    }
    servers.remove(svc.server_name());
    Ok(servers.into_iter().collect())
}

/// The users joined to a room `user_id` is joined to (and the user).
pub async fn users_sharing_rooms(svc: &Services, user_id: &UserId) -> Result<HashSet<OwnedUserId>, StorageError> {
    let mut users = HashSet::from([user_id.to_owned()]);
    for m in svc.storage.user_memberships(user_id).await? {
        if m.membership != "join" {
            continue;
        }
        for member in svc.storage.room_members(&m.room_id, Some("join")).await? {
            users.insert(member.user_id);
        }
    }
    Ok(users)
}

/// Whether a local user is joined to a room that `user_id` is joined to.
pub async fn shares_room_with_local(svc: &Services, user_id: &UserId) -> Result<bool, StorageError> {
    for m in svc.storage.user_memberships(user_id).await? {
        if m.membership != "join" {
            continue;
        }
        let members = svc.storage.room_members(&m.room_id, Some("join")).await?;
        if members
            .iter()
            .any(|member| member.user_id.server_name() == svc.server_name())
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A local device was added, changed or deleted (the change is recorded at
/// `position`): `/sync` is woken and the servers sharing a room with the
/// user are sent an `m.device_list_update`.
pub async fn device_changed(
    svc: &Services,
    user_id: &UserId,
    device_id: &DeviceId,
    position: i64,
    deleted: bool,
) -> Result<(), StorageError> {
    svc.e2e.keys_changed(position, user_id).await?;
    let servers = servers_sharing_rooms(svc, user_id).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let prev_id = svc.storage.last_device_change(user_id, position).await?;
    let mut content = json!({
        "user_id": user_id,
        "device_id": device_id,
        "stream_id": position,
        "prev_id": prev_id.into_iter().collect::<Vec<_>>(),
        "deleted": deleted,
    });
    if !deleted {
        let device = svc
            .storage
            .local_device_keys(user_id)
            .await?
            .into_iter()
            .find(|d| d.device_id == device_id);
        if let Some(device) = device {
            if let Some(name) = device.display_name {
                content["device_display_name"] = json!(name);
            }
            if let Some(keys) = device.keys.and_then(|k| serde_json::from_str::<Value>(&k).ok()) {
                content["keys"] = keys;
            }
        }
    }
    let edu = json!({ "edu_type": "m.device_list_update", "content": content });
    svc.sender.send_edu_to(&servers, edu);
    Ok(())
}

/// Records a device change and tells everyone (see [`device_changed`]).
pub async fn record_device_change(svc: &Services, user_id: &UserId, device_id: &DeviceId) -> Result<(), StorageError> {
    let position = svc.storage.record_device_list_change(user_id, Some(device_id)).await?;
    device_changed(svc, user_id, device_id, position, false).await
}

/// A local user's cross-signing keys changed (recorded at `position`):
/// `/sync` is woken and the servers sharing a room with the user are sent
/// an `m.signing_key_update` with the master and self-signing keys.
pub async fn signing_keys_changed(svc: &Services, user_id: &UserId, position: i64) -> Result<(), StorageError> {
    svc.e2e.keys_changed(position, user_id).await?;
    let servers = servers_sharing_rooms(svc, user_id).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let mut content = json!({ "user_id": user_id });
    for (kind, json) in svc.storage.cross_signing_keys(user_id).await? {
        let field = match kind.as_str() {
            MASTER => "master_key",
            SELF_SIGNING => "self_signing_key",
            _ => continue,
        };
        if let Ok(key) = serde_json::from_str::<Value>(&json) {
            content[field] = key;
        }
    }
    svc.sender.send_edu_to(
        &servers,
        json!({ "edu_type": "m.signing_key_update", "content": content }),
    );
    Ok(())
}

/// Deletes local devices and tells everyone.
pub async fn delete_devices(svc: &Services, user_id: &UserId, devices: &[OwnedDeviceId]) -> Result<(), StorageError> {
    for (device_id, position) in svc.storage.delete_devices(user_id, devices).await? {
        device_changed(svc, user_id, &device_id, position, true).await?;
    }
    Ok(())
}

fn record_from(device_id: OwnedDeviceId, display_name: Option<String>, keys: Option<&Value>) -> DeviceKeysRecord {
    DeviceKeysRecord {
        device_id,
        display_name,
        // `{}`: a device that has uploaded no keys.
        keys: keys
            .filter(|k| k.as_object().is_some_and(|o| !o.is_empty()))
            .map(Value::to_string),
    }
}

/// Fetches a remote user's device list (`/user/devices`) and caches it.
pub async fn resync(svc: &Services, user_id: &UserId) -> Result<RemoteDeviceList, String> {
    let response = svc
        .federation
        .send(user_id.server_name(), get_devices::v1::Request::new(user_id.to_owned()))
        .await
        .map_err(|e| e.to_string())?;
    if response.user_id != user_id {
        return Err(format!("{} answered for {}", user_id.server_name(), response.user_id));
    }
    let devices: Vec<DeviceKeysRecord> = response
        .devices
        .into_iter()
        .map(|d| {
            let keys = serde_json::from_str::<Value>(d.keys.json().get()).ok();
            record_from(d.device_id, d.device_display_name, keys.as_ref())
        })
        .collect();
    let mut cross_signing = Vec::new();
    for (kind, key) in [
        (MASTER, &response.master_key),
        (SELF_SIGNING, &response.self_signing_key),
    ] {
        if let Some(key) = key {
            cross_signing.push((kind.to_owned(), key.json().get().to_owned()));
        }
    }
    let stream_id = i64::try_from(u64::from(response.stream_id)).unwrap_or(i64::MAX);
    let position = svc
        .storage
        .replace_remote_device_list(user_id, stream_id, devices.clone(), cross_signing)
        .await
        .map_err(|e| e.to_string())?;
    svc.e2e
        .keys_changed(position, user_id)
        .await
        .map_err(|e| e.to_string())?;
    Ok(RemoteDeviceList {
        stream_id,
        stale: false,
        devices,
    })
}

/// How long a background fetch of a device list holds its duty unrenewed
/// (it is renewed while the fetch runs).
const RESYNC_TTL: std::time::Duration = crate::duty::TTL;

/// Fetches a remote user's device list in the background, once at a time
/// per user in the cluster (the duty [`crate::cluster::device_list_duty`]:
/// a fetch another process runs already is not run again).
fn resync_later(svc: &std::sync::Arc<Services>, user_id: &UserId) {
    if !svc.e2e.resyncing.lock().expect("resync set").insert(user_id.to_owned()) {
        return;
    }
    let (svc, user_id) = (svc.clone(), user_id.to_owned());
    tokio::spawn(async move {
        let duty = crate::cluster::device_list_duty(&user_id);
        let held = crate::cluster::hold_while(&svc.cluster, duty, RESYNC_TTL, std::time::Duration::ZERO).await;
        if held.is_some()
            && let Err(error) = resync(&svc, &user_id).await
        {
            tracing::info!(%user_id, %error, "cannot fetch a remote device list");
        }
        drop(held);
        svc.e2e.resyncing.lock().expect("resync set").remove(&user_id);
    });
}

/// The device list of a remote user, for a key query: from the cache while
/// the user shares a room with a local user (fetched first if missing or
/// stale; a cache that cannot be refreshed is used as it is); `None` when
/// not cached (the caller asks the user's server).
pub async fn remote_devices(svc: &Services, user_id: &UserId) -> Result<Option<Vec<DeviceKeysRecord>>, StorageError> {
    if !shares_room_with_local(svc, user_id).await? {
        return Ok(None);
    }
    let cached = svc.storage.remote_device_list(user_id).await?;
    if let Some(list) = &cached
        && !list.stale
    {
        return Ok(Some(list.devices.clone()));
    }
    match resync(svc, user_id).await {
        Ok(list) => Ok(Some(list.devices)),
        Err(error) => {
            tracing::info!(%user_id, %error, "cannot fetch a remote device list");
            Ok(cached.map(|list| list.devices))
        }
    }
}

/// Local users joined a room held with other servers: the device lists
/// of its remote members may have changed while no local user shared a
/// room with them (their servers sent no updates then).
pub async fn joined_remote_room(svc: &Services, room_id: &RoomId) -> Result<(), StorageError> {
    let remote: Vec<OwnedUserId> = svc
        .storage
        .room_members(room_id, Some("join"))
        .await?
        .into_iter()
        .map(|m| m.user_id)
        .filter(|u| u.server_name() != svc.server_name())
        .collect();
    svc.storage.mark_remote_device_lists_stale(&remote).await
}

/// The members of a partial room learned at its resync (`users`): local
/// members now share a room with those of other servers, with no member
/// event to say so. Their device lists are fetched afresh, and `/sync`
/// names them in `device_lists.changed`.
pub async fn members_learned(svc: &Services, users: &[OwnedUserId]) -> Result<(), StorageError> {
    let remote: Vec<OwnedUserId> = users
        .iter()
        .filter(|u| u.server_name() != svc.server_name())
        .cloned()
        .collect();
    if remote.is_empty() {
        return Ok(());
    }
    let positions = svc.storage.remote_users_met(&remote).await?;
    for (user_id, position) in remote.iter().zip(positions) {
        svc.e2e.keys_changed(position, user_id).await?;
    }
    Ok(())
}

/// An `m.device_list_update` EDU from `origin`.
pub async fn receive_device_list_update(
    svc: &std::sync::Arc<Services>,
    origin: &ServerName,
    content: &Value,
) -> Result<(), StorageError> {
    let Some(user_id) = content["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else {
        return Ok(());
    };
    let (Some(device_id), Some(stream_id)) = (content["device_id"].as_str(), content["stream_id"].as_i64()) else {
        return Ok(());
    };
    if user_id.server_name() != origin || !shares_room_with_local(svc, &user_id).await? {
        tracing::debug!(%origin, %user_id, "device list update ignored");
        return Ok(());
    }
    let cached = svc.storage.remote_device_list(&user_id).await?;
    let Some(cached) = cached.filter(|c| !c.stale) else {
        resync_later(svc, &user_id);
        return Ok(());
    };
    if stream_id <= cached.stream_id {
        return Ok(());
    }
    let prev_ids: Vec<i64> = content["prev_id"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    // An update on top of one this server does not have: fetch it all.
    if prev_ids.is_empty() || prev_ids.iter().any(|id| *id != cached.stream_id) {
        resync_later(svc, &user_id);
        return Ok(());
    }
    let device_id = OwnedDeviceId::from(device_id);
    let update = if content["deleted"].as_bool() == Some(true) {
        Err(device_id)
    } else {
        Ok(record_from(
            device_id,
            content["device_display_name"].as_str().map(str::to_owned),
            content.get("keys"),
        ))
    };
    let position = svc.storage.update_remote_device(&user_id, stream_id, update).await?;
    svc.e2e.keys_changed(position, &user_id).await?;
    Ok(())
}

/// An `m.signing_key_update` EDU from `origin`: a remote user's new
/// cross-signing keys.
pub async fn receive_signing_key_update(
    svc: &Services,
    origin: &ServerName,
    content: &Value,
) -> Result<(), StorageError> {
    let Some(user_id) = content["user_id"].as_str().and_then(|u| UserId::parse(u).ok()) else {
        return Ok(());
    };
    if user_id.server_name() != origin || !shares_room_with_local(svc, &user_id).await? {
        return Ok(());
    }
    let mut keys = Vec::new();
    for (field, kind) in [("master_key", MASTER), ("self_signing_key", SELF_SIGNING)] {
        if let Some(key) = content.get(field).filter(|k| k.is_object()) {
            keys.push((kind.to_owned(), key.to_string()));
        }
    }
    if keys.is_empty() {
        return Ok(());
    }
    let position = svc.storage.set_cross_signing_keys(&user_id, keys).await?;
    svc.e2e.keys_changed(position, &user_id).await?;
    Ok(())
}
