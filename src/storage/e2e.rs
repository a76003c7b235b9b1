//! What storage keeps for end-to-end encryption: devices' keys, device
//! lists (local, and other servers' users' as cached here), to-device
//! messages. A supertrait of [`super::Storage`], so that every storage
//! implements it and `dyn Storage` callers reach it (with this trait in
//! scope).
//!
//! Device list changes and to-device messages share one position sequence,
//! the e2e stream (`/sync`'s third token part).

use async_trait::async_trait;
use ruma::{DeviceId, OwnedDeviceId, OwnedRoomId, OwnedUserId, UserId};

use super::{Device, Result, StreamOrdering};

/// A device and its identity keys (DeviceKeys JSON), if it uploaded any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceKeysRecord {
    pub device_id: OwnedDeviceId,
    pub display_name: Option<String>,
    pub keys: Option<String>,
}

/// A one-time or fallback key: `algorithm:key_id` → JSON.
#[derive(Debug, Clone)]
pub struct OneTimeKeyRecord {
    pub algorithm: String,
    pub key_id: String,
    pub json: String,
}

/// Another server's user's device list, as cached here.
#[derive(Debug, Clone)]
pub struct RemoteDeviceList {
    /// The remote server's stream ID this cache is at.
    pub stream_id: i64,
    /// To be fetched again before use.
    pub stale: bool,
    pub devices: Vec<DeviceKeysRecord>,
}

/// A to-device message waiting for a device.
#[derive(Debug, Clone)]
pub struct ToDeviceMessage {
    pub position: i64,
    pub sender: OwnedUserId,
    pub event_type: String,
    /// The content, as JSON.
    pub content: String,
}

/// One delivery of a to-device message.
#[derive(Debug, Clone)]
pub struct ToDeviceDelivery {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub content: String,
}

/// A room key backup version.
#[derive(Debug, Clone)]
pub struct BackupVersion {
    pub version: String,
    /// `{"algorithm": …, "auth_data": …}`.
    pub algorithm: String,
    pub count: u64,
    pub etag: String,
}

/// A backed-up room key: `(room ID, session ID, KeyBackupData JSON)`.
pub type BackupKey = (String, String, String);

/// Cross-signing key kinds, as stored.
pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

#[async_trait]
pub trait E2eStorage: Send + Sync + 'static {
    // ----- devices -----
    async fn device(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Option<Device>>;
    /// Renames a device and records a device list change: its position, or
    /// `None` if there is no such device.
    async fn rename_device(&self, user_id: &UserId, device_id: &DeviceId, name: Option<&str>) -> Result<Option<i64>>;
    /// Deletes devices with their access tokens, keys and waiting
    /// messages, recording a device list change for each that existed:
    /// those, with the change's position.
    async fn delete_devices(&self, user_id: &UserId, device_ids: &[OwnedDeviceId])
    -> Result<Vec<(OwnedDeviceId, i64)>>;
    /// Marks the user deactivated and deletes all their devices (as
    /// [`Self::delete_devices`]) and cross-signing keys.
    async fn deactivate_user(&self, user_id: &UserId) -> Result<Vec<(OwnedDeviceId, i64)>>;

    // ----- keys of local devices -----
    /// Records a change of a device (or, with `None`, of the user's
    /// cross-signing keys) on the e2e stream; its position.
    async fn record_device_list_change(&self, user_id: &UserId, device_id: Option<&DeviceId>) -> Result<i64>;
    /// Stores a device's identity keys; a device list change (its
    /// position) when they differ from those held.
    async fn set_device_keys(&self, user_id: &UserId, device_id: &DeviceId, json: &str) -> Result<Option<i64>>;
    /// Adds one-time keys. A key ID already held with other content is
    /// refused (`AlreadyExists`), and nothing is added.
    async fn add_one_time_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: Vec<OneTimeKeyRecord>,
    ) -> Result<()>;
    /// Replaces the fallback key of each algorithm given.
    async fn set_fallback_keys(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        keys: Vec<OneTimeKeyRecord>,
    ) -> Result<()>;
    /// Unclaimed one-time keys per algorithm.
    async fn one_time_key_counts(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<(String, u64)>>;
    /// Algorithms whose fallback key has not been handed out.
    async fn unused_fallback_key_types(&self, user_id: &UserId, device_id: &DeviceId) -> Result<Vec<String>>;
    /// Takes one one-time key of `algorithm` (deleted), or else the
    /// fallback key (kept, marked used): `(key ID, JSON)`.
    async fn claim_key(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        algorithm: &str,
    ) -> Result<Option<(String, String)>>;
    /// A local user's devices, with their identity keys.
    async fn local_device_keys(&self, user_id: &UserId) -> Result<Vec<DeviceKeysRecord>>;
    /// Replaces a device's stored identity keys JSON (signatures added).
    async fn replace_device_keys_json(&self, user_id: &UserId, device_id: &DeviceId, json: &str) -> Result<i64>;

    // ----- cross-signing -----
    /// `(kind, JSON)` of the user's cross-signing keys (local or cached).
    async fn cross_signing_keys(&self, user_id: &UserId) -> Result<Vec<(String, String)>>;
    /// Stores cross-signing keys by kind and records a change (its
    /// position; told to the user only when only their user-signing key
    /// changed).
    async fn set_cross_signing_keys(&self, user_id: &UserId, keys: Vec<(String, String)>) -> Result<i64>;
    /// Records `signer`'s signature on `target`'s key `target_key` and a
    /// change of `target`'s keys told to `signer` (its position).
    async fn add_cross_user_signature(
        &self,
        signer: &UserId,
        target: &UserId,
        target_key: &str,
        key_id: &str,
        signature: &str,
    ) -> Result<i64>;
    /// `(target key, key ID, signature)` that `signer` made on `target`'s keys.
    async fn cross_user_signatures(&self, signer: &UserId, target: &UserId) -> Result<Vec<(String, String, String)>>;

    // ----- the device list stream -----
    /// Users whose device lists changed in `(after, upto]`, as `viewer`
    /// may be told: with `true` for changes told to `viewer` only (which
    /// hold whether or not they share a room).
    async fn device_list_changes(&self, viewer: &UserId, after: i64, upto: i64) -> Result<Vec<(OwnedUserId, bool)>>;
    /// The position of the user's newest device change before `before`
    /// (cross-signing changes not counted): the `stream_id` other servers
    /// know.
    async fn last_device_change(&self, user_id: &UserId, before: i64) -> Result<Option<i64>>;
    /// The newest e2e stream position.
    async fn max_e2e_position(&self) -> Result<i64>;

    // ----- other servers' users -----
    async fn remote_device_list(&self, user_id: &UserId) -> Result<Option<RemoteDeviceList>>;
    /// Replaces the cached device list (and cross-signing keys, when
    /// given) of a remote user; records a change (its position).
    async fn replace_remote_device_list(
        &self,
        user_id: &UserId,
        stream_id: i64,
        devices: Vec<DeviceKeysRecord>,
        cross_signing: Vec<(String, String)>,
    ) -> Result<i64>;
    /// Applies one m.device_list_update (`None`: the device was deleted);
    /// records a change (its position).
    async fn update_remote_device(
        &self,
        user_id: &UserId,
        stream_id: i64,
        device: Result<DeviceKeysRecord, OwnedDeviceId>,
    ) -> Result<i64>;
    /// Marks cached device lists to be fetched again.
    async fn mark_remote_device_lists_stale(&self, user_ids: &[OwnedUserId]) -> Result<()>;
    /// Local users came to share a room with `user_ids` without a member
    /// event saying so (the members learned at a partial room's resync):
    /// their cached device lists are marked stale and a change of each is
    /// recorded (for `/sync`'s `device_lists.changed`), in one
    /// transaction; the changes' positions, in order.
    async fn remote_users_met(&self, user_ids: &[OwnedUserId]) -> Result<Vec<i64>>;

    // ----- to-device messages -----
    /// Queues messages for local devices, all at one new position (which
    /// is returned). With a transaction (`(scope, txn ID)` of `sender`)
    /// seen before, nothing is queued and `None` is returned.
    async fn queue_to_device(
        &self,
        sender: &UserId,
        event_type: &str,
        txn: Option<(String, String)>,
        messages: Vec<ToDeviceDelivery>,
    ) -> Result<Option<i64>>;
    /// Records a transaction of `sender`; false if it was seen before.
    async fn record_to_device_txn(&self, sender: &UserId, scope: &str, txn_id: &str) -> Result<bool>;
    /// Messages for a device at positions up to `upto`, oldest first.
    async fn to_device_messages(
        &self,
        user_id: &UserId,
        device_id: &DeviceId,
        upto: i64,
        limit: usize,
    ) -> Result<Vec<ToDeviceMessage>>;
    /// Drops the messages a device has received: positions up to `upto`.
    async fn delete_to_device_messages(&self, user_id: &UserId, device_id: &DeviceId, upto: i64) -> Result<()>;

    // ----- room key backups -----
    /// A new backup version (the user's current one from now on).
    async fn create_backup_version(&self, user_id: &UserId, algorithm: &str) -> Result<String>;
    /// A backup version (`None`: the current one), unless deleted.
    async fn backup_version(&self, user_id: &UserId, version: Option<&str>) -> Result<Option<BackupVersion>>;
    /// Replaces a version's algorithm data; false if there is no such version.
    async fn update_backup_version(&self, user_id: &UserId, version: &str, algorithm: &str) -> Result<bool>;
    /// Deletes a version and its keys; false if there is no such version.
    async fn delete_backup_version(&self, user_id: &UserId, version: &str) -> Result<bool>;
    /// Keys of a version, all or of a room or of one session.
    async fn backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<Vec<BackupKey>>;
    /// Stores keys in a version, each unless the one held is better (as
    /// `better` decides: `better(new, held)`); the version's new state.
    async fn put_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        keys: Vec<BackupKey>,
        better: for<'n, 'o> fn(&'n str, &'o str) -> bool,
    ) -> Result<BackupVersion>;
    /// Deletes keys of a version (all, a room's, one session's).
    async fn delete_backup_keys(
        &self,
        user_id: &UserId,
        version: &str,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> Result<BackupVersion>;

    // ----- membership, for device list changes -----
    /// `(room, user, membership)` of the member events in `rooms` that
    /// arrived in `(after, upto]`, in arrival order.
    async fn member_events_between(
        &self,
        rooms: &[OwnedRoomId],
        after: StreamOrdering,
        upto: StreamOrdering,
    ) -> Result<Vec<(OwnedRoomId, OwnedUserId, String)>>;
}
