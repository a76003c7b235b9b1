-- weft SQLite schema, version 22: simplified sliding sync (MSC4186)
-- connections (as PostgreSQL's schema v5).
--
-- A connection is one device's series of answers, named by the client's
-- conn_id. Each answer is a position: the stream heads it was computed up
-- to (opaque here) and the position it followed. What an answer sent of a
-- room is a record at that answer's position; the record in force at a
-- position is the room's newest at or before it. When the client asks from
-- a position, the others are forgotten, and the records of answers it did
-- not take (see src/storage/sliding_sync.rs): a connection keeps one
-- position and the answers made from it, a room a few records.
CREATE TABLE sliding_connections (
    connection   INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id      TEXT NOT NULL,
    device_id    TEXT NOT NULL,
    conn_id      TEXT NOT NULL,
    -- When a request last used it (ms): unused ones are forgotten.
    last_used_ts INTEGER NOT NULL,
    UNIQUE (user_id, device_id, conn_id)
);
CREATE INDEX sliding_connections_unused ON sliding_connections (last_used_ts);

-- Numbers are never reused: a client's old position never names another
-- connection's, or a later one of its own.
CREATE TABLE sliding_positions (
    position   INTEGER PRIMARY KEY AUTOINCREMENT,
    connection INTEGER NOT NULL,
    -- The position it followed (NULL: the connection started afresh).
    previous   INTEGER,
    heads      TEXT NOT NULL
);
CREATE INDEX sliding_positions_connection ON sliding_positions (connection, position);

CREATE TABLE sliding_rooms (
    connection INTEGER NOT NULL,
    room_id    TEXT NOT NULL,
    -- The position whose answer sent it.
    position   INTEGER NOT NULL,
    -- The events stream position its timeline and state were sent up to.
    upto       INTEGER NOT NULL,
    config     TEXT NOT NULL,
    PRIMARY KEY (connection, room_id, position)
) WITHOUT ROWID;
