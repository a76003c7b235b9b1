-- weft schema, version 18: the events stream's head, kept apart from the
-- events.
--
-- A live event's position was MAX(stream_ordering) + 1. That maximum can
-- go back: an outlier (backfill keeps the parent of a page's oldest event
-- as one, at a high position) that later takes its place in the timeline
-- as backfilled history leaves its position for a negative one. The next
-- live events then took positions that /sync had already handed out, and
-- clients holding a later token never saw them. The head now only moves
-- forward. (PostgreSQL keeps its heads in a table of this name too.)
CREATE TABLE stream_positions (
    stream   TEXT PRIMARY KEY NOT NULL,
    position INTEGER NOT NULL
) WITHOUT ROWID;
-- The highest position handed out that is still to be seen.
INSERT INTO stream_positions (stream, position)
    SELECT 'events', MAX(p) FROM (
        SELECT COALESCE(MAX(stream_ordering), 0) AS p FROM events
        UNION ALL SELECT COALESCE(MAX(stream_ordering), 0) FROM remote_invites
        UNION ALL SELECT COALESCE(MAX(stream_ordering), 0) FROM notifications
    );
