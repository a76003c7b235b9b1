-- weft schema, version 16: redactions by the event they redact.
--
-- redactions: each accepted redaction held, by target. An event that
-- arrives after its redaction (history comes newest first) is redacted
-- when it is stored. Filled from the redactions held already (the target
-- is the top-level `redacts` up to room version 10, `content.redacts`
-- from 11 on).
CREATE TABLE redactions (
    redacts  TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (redacts, event_id)
);
INSERT OR IGNORE INTO redactions (redacts, event_id)
    SELECT target, event_id FROM (
        SELECT e.event_id,
               CASE WHEN r.room_version IN ('1', '2', '3', '4', '5', '6', '7', '8', '9', '10')
                    THEN json_extract(e.json, '$.redacts')
                    ELSE json_extract(e.json, '$.content.redacts') END AS target
        FROM events e JOIN rooms r ON r.room_id = e.room_id
        WHERE e.type = 'm.room.redaction' AND e.outlier = 0 AND e.rejected IS NULL
          AND e.soft_failed = 0
    )
    WHERE target IS NOT NULL;
