-- weft schema, version 20: presence takes its positions from a counter
-- row, and other servers' users' presence is stored too.
--
-- Presence was kept in memory (only local users' last status was stored,
-- for restarts), with positions from a millisecond clock; PostgreSQL keeps
-- it in the database so that several processes agree, and the two backends
-- behave alike. The counter starts above every position handed out so far
-- (the stored ones, and the clock the others followed).
INSERT INTO stream_positions (stream, position)
    SELECT 'presence', MAX(
        (SELECT COALESCE(MAX(position), 0) FROM presence),
        CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER));

-- An incremental /sync reads the changes after its position.
CREATE INDEX presence_position ON presence (position);
-- The timeouts look at those not offline.
CREATE INDEX presence_awake ON presence (updated_ts) WHERE state <> 'offline';
