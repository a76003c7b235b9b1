-- weft PostgreSQL schema, version 2: the ephemeral stream (read receipts
-- and typing) takes its positions from the database.
--
-- They came from each process's millisecond clock, and typing was kept in
-- the memory of the process that heard of it: with several processes the
-- positions were not one order, and a /sync on another process never saw
-- who was typing. The counter starts above every position handed out so
-- far (stored receipts, and the clock, which typing positions followed).
INSERT INTO stream_positions (stream, position)
    SELECT 'ephemeral', GREATEST(
        (SELECT COALESCE(MAX(position), 0) FROM receipts),
        (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);

-- Who types where, until when (ms since the epoch). A row whose time ran
-- out without being removed (its process died) does not count.
CREATE TABLE typing (
    room_id  TEXT NOT NULL,
    user_id  TEXT NOT NULL,
    until_ms BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id)
);

-- The position of each room's last typing change.
CREATE TABLE typing_rooms (
    room_id  TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);
CREATE INDEX typing_rooms_position ON typing_rooms (position);

-- Background duties (sending to one destination, …), each done by one
-- process at a time: the holder renews its row; another process takes the
-- duty once the row has expired (its holder died). Times are the
-- database's clock (ms), so processes on several machines agree.
CREATE TABLE duties (
    duty       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_ms BIGINT NOT NULL
);
