-- weft schema, version 19: the ephemeral stream (read receipts and typing)
-- takes its positions from a counter row, and typing is stored.
--
-- Positions came from a millisecond clock kept in memory, and typing was
-- kept in memory only; PostgreSQL keeps both in the database so that
-- several processes agree, and the two backends behave alike. The counter
-- starts above every position handed out so far (stored receipts, and the
-- clock, which typing positions followed).
INSERT INTO stream_positions (stream, position)
    SELECT 'ephemeral', MAX(
        (SELECT COALESCE(MAX(position), 0) FROM receipts),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

-- Who types where, until when (ms since the epoch).
CREATE TABLE typing (
    room_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;

-- The position of each room's last typing change.
CREATE TABLE typing_rooms (
    room_id  TEXT PRIMARY KEY NOT NULL,
    position INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX typing_rooms_position ON typing_rooms (position);
