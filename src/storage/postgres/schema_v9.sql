-- weft PostgreSQL schema, version 9 (as SQLite's schema v26): a room's
-- partial state, once completed, keeps its row with the events stream
-- position of the completion, so that a `/sync` that left the room out
-- while it was partial sends it in full once (`client_api/sync.rs`).
-- NULL: the room is partial.
ALTER TABLE partial_state_rooms ADD COLUMN completed_at BIGINT;
-- `/sync` reads the rooms partial or completed after a position.
CREATE INDEX partial_state_rooms_completed ON partial_state_rooms (completed_at);
