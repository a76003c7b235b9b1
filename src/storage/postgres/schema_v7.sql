-- weft PostgreSQL schema, version 7: events by room and timestamp, for
-- jump to date (as SQLite's schema v24).
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts, depth, stream_ordering);
