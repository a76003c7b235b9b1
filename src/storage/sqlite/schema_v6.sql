-- weft schema, version 6: read receipts.

-- The latest receipt of each user of each type in each room. `position`
-- is the ephemeral stream position of the change (/sync's second token
-- part): milliseconds, kept increasing.
CREATE TABLE receipts (
    room_id      TEXT NOT NULL,
    user_id      TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    event_id     TEXT NOT NULL,
    ts           INTEGER NOT NULL,
    position     INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type)
) WITHOUT ROWID;
CREATE INDEX receipts_position ON receipts (room_id, position);
