-- weft PostgreSQL schema, version 10 (as SQLite's schema v27, for the
-- notifications): a user's notifications keyed by position, not by
-- event. An event ID is a hash: the index took each new notification at a
-- random place. Still one per user and event: an outlier notified (an
-- invite) that takes its place in the timeline takes its notifications to
-- its new position (`events.rs`, `live.rs`). `notifications_at` finds an
-- event's (rejected late, `partial_state.rs`). Every process must run
-- this version: an older one's upsert names the old key.
ALTER TABLE notifications DROP CONSTRAINT notifications_pkey;
ALTER TABLE notifications ADD PRIMARY KEY (user_id, stream_ordering);
DROP INDEX notifications_stream;
CREATE INDEX notifications_at ON notifications (stream_ordering);
