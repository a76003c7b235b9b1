-- weft schema, version 1.
--
-- A room is a DAG of events. This server holds a piece of it: events in
-- its timeline (with the state before each), outliers (held without that
-- state), and rejected events (kept so they are not fetched again, never
-- state, never shown). Two orders exist: arrival (stream_ordering, what
-- /sync follows; backfilled history gets negative values) and topological
-- (depth, then stream_ordering; what /messages follows).

CREATE TABLE rooms (
    room_id             TEXT PRIMARY KEY NOT NULL,
    room_version        TEXT NOT NULL,
    -- The state after the forward extremities, resolved.
    current_state_group INTEGER,
    -- Listed in the public room directory.
    published           INTEGER NOT NULL DEFAULT 0,
    created_ts          INTEGER NOT NULL
);

CREATE TABLE events (
    stream_ordering     INTEGER PRIMARY KEY NOT NULL,
    event_id            TEXT NOT NULL UNIQUE,
    room_id             TEXT NOT NULL,
    type                TEXT NOT NULL,
    state_key           TEXT,
    sender              TEXT NOT NULL,
    depth               INTEGER NOT NULL,
    origin_server_ts    INTEGER NOT NULL,
    received_ts         INTEGER NOT NULL,
    -- The PDU's canonical JSON as signed (redacted in place once a
    -- redaction is applied; event_id is not part of it).
    json                TEXT NOT NULL,
    outlier             INTEGER NOT NULL DEFAULT 0,
    rejected            TEXT,
    soft_failed         INTEGER NOT NULL DEFAULT 0,
    redacted_by         TEXT,
    -- State groups before and after the event (NULL for outliers).
    state_group_before  INTEGER,
    state_group_after   INTEGER,
    -- For state events: the event this one replaced in the room state.
    replaces_state      TEXT
);
-- /messages: topological order within a room.
CREATE INDEX events_topological ON events (room_id, depth, stream_ordering);
-- /sync: arrival order within a room.
CREATE INDEX events_stream ON events (room_id, stream_ordering);
-- Membership changes of a user.
CREATE INDEX events_state_key ON events (state_key, type, stream_ordering)
    WHERE state_key IS NOT NULL;

-- prev_events edges: the DAG.
CREATE TABLE event_edges (
    event_id      TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    room_id       TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
) WITHOUT ROWID;
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

-- auth_events edges: the auth DAG.
CREATE TABLE event_auth (
    event_id      TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
) WITHOUT ROWID;

-- Held events with no held children: the next local event's prev_events.
CREATE TABLE forward_extremities (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
) WITHOUT ROWID;

-- Events referenced as prev_events but not held: where history continues
-- on other servers. depth is approximate (the held child's depth - 1).
CREATE TABLE backward_extremities (
    room_id  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    depth    INTEGER NOT NULL,
    PRIMARY KEY (room_id, event_id)
) WITHOUT ROWID;
CREATE INDEX backward_extremities_depth ON backward_extremities (room_id, depth);

-- Room state, stored once per change: a group is a snapshot (prev_group
-- NULL) or a delta on prev_group; chain_len bounds how many groups a
-- lookup reads before a new snapshot is taken.
CREATE TABLE state_groups (
    id         INTEGER PRIMARY KEY NOT NULL,
    room_id    TEXT NOT NULL,
    prev_group INTEGER,
    chain_len  INTEGER NOT NULL
);
CREATE TABLE state_group_entries (
    group_id  INTEGER NOT NULL,
    type      TEXT NOT NULL,
    state_key TEXT NOT NULL,
    -- NULL in a delta: the key left the state.
    event_id  TEXT,
    PRIMARY KEY (group_id, type, state_key)
) WITHOUT ROWID;

-- The current state of each room, for indexed questions (members of a
-- room, rooms of a user). Always equal to rooms.current_state_group.
CREATE TABLE current_state (
    room_id    TEXT NOT NULL,
    type       TEXT NOT NULL,
    state_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    membership TEXT,
    PRIMARY KEY (room_id, type, state_key)
) WITHOUT ROWID;
CREATE INDEX current_state_members ON current_state (state_key, type)
    WHERE type = 'm.room.member';

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT,
    admin         INTEGER NOT NULL DEFAULT 0,
    deactivated   INTEGER NOT NULL DEFAULT 0,
    displayname   TEXT,
    avatar_url    TEXT,
    created_ts    INTEGER NOT NULL
);

CREATE TABLE devices (
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    display_name TEXT,
    last_seen_ts INTEGER,
    PRIMARY KEY (user_id, device_id)
) WITHOUT ROWID;

CREATE TABLE access_tokens (
    token      TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    device_id  TEXT NOT NULL,
    created_ts INTEGER NOT NULL
);
CREATE INDEX access_tokens_user ON access_tokens (user_id, device_id);

-- Client transaction IDs: a retried request returns the same event. A
-- transaction ID is scoped to a device and an endpoint path (scope).
CREATE TABLE txn_ids (
    user_id   TEXT NOT NULL,
    device_id TEXT NOT NULL,
    scope     TEXT NOT NULL,
    txn_id    TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, scope, txn_id)
) WITHOUT ROWID;
CREATE INDEX txn_ids_event ON txn_ids (event_id);

CREATE TABLE filters (
    user_id   TEXT NOT NULL,
    filter_id INTEGER NOT NULL,
    json      TEXT NOT NULL,
    PRIMARY KEY (user_id, filter_id)
) WITHOUT ROWID;

CREATE TABLE room_aliases (
    alias   TEXT PRIMARY KEY NOT NULL,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
