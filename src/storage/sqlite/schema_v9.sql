-- weft schema, version 9: push notifications (pushers, and the
-- notifications events gave local users). Push rules are account data
-- (`m.push_rules`, schema_v7.sql).

-- A user's pushers, one per (app_id, pushkey). `json` is the pusher as the
-- client API shows it; `ts` when it was set (ms); `device_id` the device
-- that set it (the pusher goes with the device).
CREATE TABLE pushers (
    user_id   TEXT NOT NULL,
    app_id    TEXT NOT NULL,
    pushkey   TEXT NOT NULL,
    json      TEXT NOT NULL,
    ts        INTEGER NOT NULL,
    device_id TEXT,
    PRIMARY KEY (user_id, app_id, pushkey)
) WITHOUT ROWID;
CREATE INDEX pushers_key ON pushers (app_id, pushkey);

-- The events whose push rules said "notify" to a local user: the
-- notification counts of /sync (those after the user's read receipt in
-- the room) and GET /notifications. `actions` is JSON.
CREATE TABLE notifications (
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    highlight       INTEGER NOT NULL,
    actions         TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    PRIMARY KEY (user_id, event_id)
) WITHOUT ROWID;
CREATE INDEX notifications_room ON notifications (user_id, room_id, stream_ordering);
CREATE INDEX notifications_stream ON notifications (user_id, stream_ordering);
