-- weft SQLite schema, version 24: events by room and timestamp, for jump
-- to date (`timestamp_to_event`, client and federation): the closest
-- event to a time is one index step (as PostgreSQL's schema v7).
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts, depth);
