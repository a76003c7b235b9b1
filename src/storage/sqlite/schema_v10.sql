-- weft schema, version 10: presence.
--
-- The last presence of each local user, written when it changes in a way
-- clients see (state, status message, currently_active), so that it
-- outlives a restart. Presence is served from memory; this table is read
-- once, at start. Other servers' users are not kept: their servers send
-- their presence again as it changes.
--
-- position is the presence stream position of the change (a millisecond
-- clock kept increasing, see src/presence.rs): a write carrying an older
-- position than the row's is ignored, so racing writes keep the newest.
CREATE TABLE presence (
    user_id          TEXT PRIMARY KEY NOT NULL,
    -- online, unavailable or offline.
    state            TEXT NOT NULL,
    status_msg       TEXT,
    -- When the user was last active (ms since the epoch; 0: never).
    last_active_ts   INTEGER NOT NULL,
    currently_active INTEGER NOT NULL,
    -- The last activity or explicit change (ms): the idle and offline
    -- timeouts count from here.
    updated_ts       INTEGER NOT NULL,
    position         INTEGER NOT NULL
) WITHOUT ROWID;
