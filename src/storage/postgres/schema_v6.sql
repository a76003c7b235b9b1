-- weft PostgreSQL schema, version 6: each room's newest live event and
-- newest bump event, kept as events take their stream positions (as
-- SQLite's schema v23, which says what they are for).
ALTER TABLE rooms ADD COLUMN latest_stream BIGINT;
ALTER TABLE rooms ADD COLUMN bump_stream BIGINT;

UPDATE rooms SET
    latest_stream = (SELECT max(e.stream_ordering) FROM events e
        WHERE e.room_id = rooms.room_id AND e.stream_ordering > 0
          AND NOT e.outlier AND e.rejected IS NULL AND NOT e.soft_failed),
    bump_stream = (SELECT max(e.stream_ordering) FROM events e
        WHERE e.room_id = rooms.room_id AND e.stream_ordering > 0
          AND NOT e.outlier AND e.rejected IS NULL AND NOT e.soft_failed
          AND e.type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                         'm.call.invite', 'm.poll.start', 'm.beacon_info'));
