-- weft SQLite schema, version 27 (notifications as PostgreSQL's schema
-- v10): fewer indexes keyed by event ID.
--
-- An event ID is a hash: an index keyed by it takes each new event at a
-- random place, and every commit rewrote one of its pages per event
-- (splitting many). Receiving 50 messages wrote 420 pages: 107 of
-- `event_auth`, 138 of `event_edges` and its index, 94 of
-- `notifications` and its indexes, 51 of the events' own event ID index.
-- The events' index stays (every lookup by ID goes through it); the rest
-- now go through it too, or are keyed by a position.

-- An event's auth events are in its JSON (`auth_events`, which redaction
-- keeps): the auth chain walk reads them there (`history.rs`).
DROP TABLE event_auth;

-- The edges are only looked up by parent (an event's children): keyed by
-- the parent alone. An event's parents are in its JSON (`prev_events`).
CREATE TABLE event_children (
    prev_event_id TEXT NOT NULL,
    event_id      TEXT NOT NULL,
    PRIMARY KEY (prev_event_id, event_id)
) WITHOUT ROWID;
INSERT INTO event_children (prev_event_id, event_id)
    SELECT prev_event_id, event_id FROM event_edges;
DROP TABLE event_edges;
ALTER TABLE event_children RENAME TO event_edges;

-- A user's notifications by position, not by event: a user's new one
-- goes at the end of theirs. Still one per user and event: an outlier
-- notified (an invite) that takes its place in the timeline takes its
-- notifications to its new position (`events.rs`). `notifications_at`
-- finds an event's (rejected late, `partial_state.rs`); positions only
-- grow, so it grows at its end too.
CREATE TABLE notifications_by_position (
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    highlight       INTEGER NOT NULL,
    actions         TEXT NOT NULL,
    ts              INTEGER NOT NULL,
    PRIMARY KEY (user_id, stream_ordering)
) WITHOUT ROWID;
INSERT OR REPLACE INTO notifications_by_position
    SELECT user_id, room_id, event_id, stream_ordering, highlight, actions, ts FROM notifications;
DROP TABLE notifications;
ALTER TABLE notifications_by_position RENAME TO notifications;
CREATE INDEX notifications_room ON notifications (user_id, room_id, stream_ordering);
CREATE INDEX notifications_at ON notifications (stream_ordering);
