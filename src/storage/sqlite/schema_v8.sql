-- weft schema, version 8: devices' end-to-end keys, device lists, to-device
-- messages.
--
-- One position sequence, the "e2e stream", orders both device list changes
-- and to-device messages: it is /sync's third token part. A new position is
-- MAX(position) + 1 over both tables, taken inside the (serialised) write
-- transaction that adds the row; e2e_stream keeps the highest one given, so
-- positions never go back when rows are deleted.

CREATE TABLE e2e_stream (
    id       INTEGER PRIMARY KEY NOT NULL CHECK (id = 0),
    position INTEGER NOT NULL
);
INSERT INTO e2e_stream (id, position) VALUES (0, 0);

-- Identity keys of local devices, as uploaded (DeviceKeys JSON), with the
-- signatures their owner added later (/keys/signatures/upload) merged in.
CREATE TABLE device_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    json      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

-- One-time keys of local devices, claimed (and deleted) one at a time.
CREATE TABLE one_time_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    json      TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, algorithm, key_id)
) WITHOUT ROWID;

-- The fallback key of each algorithm of a local device: handed out when
-- the one-time keys run out, kept (marked used) until replaced.
CREATE TABLE fallback_keys (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    algorithm TEXT NOT NULL,
    key_id    TEXT NOT NULL,
    json      TEXT NOT NULL,
    used      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id, algorithm)
) WITHOUT ROWID;

-- Cross-signing keys (kind: master, self_signing, user_signing) of local
-- users, and of remote users as their server sent them. Signatures by the
-- owner are merged into the JSON.
CREATE TABLE cross_signing_keys (
    user_id TEXT NOT NULL,
    kind    TEXT NOT NULL,
    json    TEXT NOT NULL,
    PRIMARY KEY (user_id, kind)
) WITHOUT ROWID;

-- Signatures a user made on another user's master key with their
-- user-signing key: shown to the signer only.
CREATE TABLE cross_user_signatures (
    signer_id   TEXT NOT NULL,
    target_id   TEXT NOT NULL,
    target_key  TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    signature   TEXT NOT NULL,
    PRIMARY KEY (signer_id, target_id, target_key, key_id)
) WITHOUT ROWID;

-- Changes of users' device lists (a device added, removed, renamed, its
-- keys changed; device_id NULL: their cross-signing keys), local and remote,
-- on the e2e stream. For a local user, the position of a device change is
-- the stream_id of the m.device_list_update EDU that tells other servers.
-- visible_to: a change only one user is told of (their own user-signing
-- key, their signature on another user's key); NULL: everyone sharing a
-- room with user_id.
CREATE TABLE device_list_changes (
    position   INTEGER PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    device_id  TEXT,
    visible_to TEXT
);
CREATE INDEX device_list_changes_user ON device_list_changes (user_id, position);

-- Other servers' users' device lists, cached while they share a room with
-- a local user and kept up to date by m.device_list_update EDUs.
-- stream_id is the remote server's; stale: resync before use.
CREATE TABLE remote_device_lists (
    user_id   TEXT PRIMARY KEY NOT NULL,
    stream_id INTEGER NOT NULL,
    stale     INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE remote_devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    -- DeviceKeys JSON, as the remote server sent it.
    keys         TEXT,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

-- To-device messages waiting for a local device; a message goes when the
-- device syncs with a token past its position (it was received).
CREATE TABLE to_device_messages (
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    position   INTEGER NOT NULL,
    sender     TEXT NOT NULL,
    event_type TEXT NOT NULL,
    content    TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, position)
) WITHOUT ROWID;

-- /sendToDevice transaction IDs (per sending device) and message IDs of
-- m.direct_to_device EDUs (per origin): a retry is not delivered twice.
CREATE TABLE to_device_txns (
    sender  TEXT NOT NULL,
    scope   TEXT NOT NULL,
    txn_id  TEXT NOT NULL,
    seen_ts INTEGER NOT NULL,
    PRIMARY KEY (sender, scope, txn_id)
) WITHOUT ROWID;

-- Server-side backups of room keys (encrypted by the client). Versions
-- count up per user and are never reused; a deleted version keeps its row
-- (deleted = 1) so that its number is not given again.
CREATE TABLE backup_versions (
    user_id   TEXT NOT NULL,
    version   INTEGER NOT NULL,
    -- {"algorithm": …, "auth_data": …} as the client sent it.
    algorithm TEXT NOT NULL,
    etag      INTEGER NOT NULL DEFAULT 0,
    deleted   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, version)
) WITHOUT ROWID;
CREATE TABLE backup_keys (
    user_id    TEXT NOT NULL,
    version    INTEGER NOT NULL,
    room_id    TEXT NOT NULL,
    session_id TEXT NOT NULL,
    -- KeyBackupData JSON.
    json       TEXT NOT NULL,
    PRIMARY KEY (user_id, version, room_id, session_id)
) WITHOUT ROWID;
