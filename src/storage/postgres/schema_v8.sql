-- weft PostgreSQL schema, version 8: rooms joined with partial state (as
-- SQLite's schema v25), until their full state is fetched.
CREATE TABLE partial_state_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    join_event_id TEXT NOT NULL,
    -- The servers in the room at the join, in order, one per line.
    servers TEXT NOT NULL
);
