-- weft SQLite schema, version 25: rooms joined with partial state (as
-- PostgreSQL's schema v8), until their full state is fetched.
CREATE TABLE partial_state_rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    join_event_id TEXT NOT NULL,
    -- The servers in the room at the join, in order, one per line.
    servers TEXT NOT NULL
);
