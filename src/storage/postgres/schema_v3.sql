-- weft PostgreSQL schema, version 3: presence takes its positions from the
-- database, and other servers' users' presence is stored too.
--
-- Presence lived in each process's memory (only local users' last status
-- was stored, for restarts), with positions from a millisecond clock: with
-- several processes a /sync saw only the changes made through its own.
-- The counter starts above every position handed out so far (the stored
-- ones, and the clock the others followed).
INSERT INTO stream_positions (stream, position)
    SELECT 'presence', GREATEST(
        (SELECT COALESCE(MAX(position), 0) FROM presence),
        (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT);

-- An incremental /sync reads the changes after its position.
CREATE INDEX presence_position ON presence (position);
-- The timeouts look at those not offline.
CREATE INDEX presence_awake ON presence (updated_ts) WHERE state <> 'offline';
