-- weft schema, version 7: account data (the spec's "Client Config"), global
-- and per room, of local users. `m.tag` (room tags), `m.fully_read` (read
-- markers) and `m.ignored_user_list` live here too.

-- The latest content of each type. `room_id` is '' for global account
-- data. `position` is the account data stream position of the last change
-- (/sync's third token part): unique, increasing with every change, so an
-- incremental /sync reads only the rows changed after its token.
CREATE TABLE account_data (
    user_id   TEXT NOT NULL,
    room_id   TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content   TEXT NOT NULL,
    position  INTEGER NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
) WITHOUT ROWID;
CREATE UNIQUE INDEX account_data_position ON account_data (position);
CREATE INDEX account_data_user_position ON account_data (user_id, position);
