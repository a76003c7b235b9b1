-- weft SQLite schema, version 23: each room's newest live event and newest
-- bump event (as PostgreSQL's schema v6), kept as events are written, so
-- that a room list is ordered with one lookup per room rather than a walk
-- of each room's recent events. Live: in the timeline (not an outlier,
-- rejected or soft-failed) at a positive stream position. Bump types: the
-- list in src/storage/sliding_sync.rs.
ALTER TABLE rooms ADD COLUMN latest_stream INTEGER;
ALTER TABLE rooms ADD COLUMN bump_stream INTEGER;

UPDATE rooms SET
    latest_stream = (SELECT max(e.stream_ordering) FROM events e
        WHERE e.room_id = rooms.room_id AND e.stream_ordering > 0
          AND e.outlier = 0 AND e.rejected IS NULL AND e.soft_failed = 0),
    bump_stream = (SELECT max(e.stream_ordering) FROM events e
        WHERE e.room_id = rooms.room_id AND e.stream_ordering > 0
          AND e.outlier = 0 AND e.rejected IS NULL AND e.soft_failed = 0
          AND e.type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                         'm.call.invite', 'm.poll.start', 'm.beacon_info'));
