-- weft schema, version 15: self-destructing messages (MSC2228).
--
-- event_expiry: the events whose content carries
-- `org.matrix.self_destruct_after` (a time in milliseconds), kept while
-- the server has them to expire; the row goes when the event is pruned.
CREATE TABLE event_expiry (
    event_id  TEXT PRIMARY KEY,
    expiry_ts INTEGER NOT NULL
);
CREATE INDEX event_expiry_by_ts ON event_expiry (expiry_ts);
