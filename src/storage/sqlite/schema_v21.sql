-- weft SQLite schema, version 21: pushes to push gateways are queued in
-- the database (as PostgreSQL's schema v4).
--
-- They were queued in the memory of the process that stored the event: a
-- push whose gateway was down, or whose process stopped, was lost. A row
-- per pusher of each notification, taken when the notification is stored
-- for a user with an HTTP pusher; it goes when the gateway accepted it,
-- when the pusher goes, or a day after it was queued. The process holding
-- the duty `push` sends them (`src/push/sender.rs`).
CREATE TABLE push_queue (
    position  INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id   TEXT NOT NULL,
    app_id    TEXT NOT NULL,
    pushkey   TEXT NOT NULL,
    event_id  TEXT NOT NULL,
    actions   TEXT NOT NULL,
    -- The room's name when its state is not held here (an invite).
    room_name TEXT,
    queued_ts INTEGER NOT NULL
);
CREATE INDEX push_queue_pusher ON push_queue (user_id, app_id, pushkey, position);
CREATE INDEX push_queue_age ON push_queue (queued_ts);
