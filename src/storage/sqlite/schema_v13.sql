-- weft schema, version 13: the user directory and OpenID tokens.
--
-- The user directory (see src/user_directory.rs) answers "which users
-- matching these words may this user find": those sharing a joined room
-- with the searcher, and those joined to a room that is public for the
-- directory (join rule `public` or history visibility `world_readable`)
-- while this server is in it. Who is joined where is already indexed in
-- current_state; what this adds is kept up to date in the transaction
-- that moves a room's current state (sqlite/user_directory.rs):
--
-- user_directory: the name each user is found by — a local user's
-- profile, another server's user's display name from their newest join
-- event here (their row goes when they are joined to no room here).
-- Rowid table: user_directory_search indexes it by rowid.
CREATE TABLE user_directory (
    user_id      TEXT PRIMARY KEY NOT NULL,
    display_name TEXT,
    avatar_url   TEXT
);

-- Full-text index of user IDs and display names (FTS5's unicode61
-- tokenizer: case-folded words split at punctuation, so "@alice:hs"
-- is "alice" and "hs"), searched by word prefix. It mirrors
-- user_directory through the triggers below.
CREATE VIRTUAL TABLE user_directory_search USING fts5(
    user_id, display_name, content = 'user_directory', content_rowid = 'rowid'
);
CREATE TRIGGER user_directory_insert AFTER INSERT ON user_directory BEGIN
    INSERT INTO user_directory_search (rowid, user_id, display_name)
        VALUES (new.rowid, new.user_id, new.display_name);
END;
CREATE TRIGGER user_directory_delete AFTER DELETE ON user_directory BEGIN
    INSERT INTO user_directory_search (user_directory_search, rowid, user_id, display_name)
        VALUES ('delete', old.rowid, old.user_id, old.display_name);
END;
CREATE TRIGGER user_directory_update AFTER UPDATE ON user_directory BEGIN
    INSERT INTO user_directory_search (user_directory_search, rowid, user_id, display_name)
        VALUES ('delete', old.rowid, old.user_id, old.display_name);
    INSERT INTO user_directory_search (rowid, user_id, display_name)
        VALUES (new.rowid, new.user_id, new.display_name);
END;

-- Per room: whether its current state makes it public for the directory,
-- and how many local users are joined (none: this server has left, and
-- what it last saw of the room's members no longer counts).
CREATE TABLE user_directory_rooms (
    room_id      TEXT PRIMARY KEY NOT NULL,
    public       INTEGER NOT NULL DEFAULT 0,
    local_joined INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- What an existing database already holds. Local users are those with an
-- account here.
INSERT INTO user_directory (user_id, display_name, avatar_url)
    SELECT user_id, displayname, avatar_url FROM users;
INSERT INTO user_directory (user_id, display_name, avatar_url)
    SELECT c.state_key,
           CASE json_type(e.json, '$.content.displayname')
               WHEN 'text' THEN json_extract(e.json, '$.content.displayname') END,
           CASE json_type(e.json, '$.content.avatar_url')
               WHEN 'text' THEN json_extract(e.json, '$.content.avatar_url') END
    FROM current_state c JOIN events e ON e.event_id = c.event_id
    WHERE c.type = 'm.room.member' AND c.membership = 'join'
        AND c.state_key NOT IN (SELECT user_id FROM users)
    ON CONFLICT (user_id) DO NOTHING;
INSERT INTO user_directory_rooms (room_id, public, local_joined)
    SELECT r.room_id,
        EXISTS (
            SELECT 1 FROM current_state c JOIN events e ON e.event_id = c.event_id
            WHERE c.room_id = r.room_id AND c.state_key = ''
                AND ((c.type = 'm.room.join_rules'
                      AND json_extract(e.json, '$.content.join_rule') = 'public')
                  OR (c.type = 'm.room.history_visibility'
                      AND json_extract(e.json, '$.content.history_visibility') = 'world_readable'))),
        (SELECT count(*) FROM current_state c JOIN users u ON u.user_id = c.state_key
         WHERE c.room_id = r.room_id AND c.type = 'm.room.member' AND c.membership = 'join')
    FROM rooms r;

-- OpenID tokens (`/user/{userId}/openid/request_token`): a token another
-- service exchanges, through the federation API, for the user ID it
-- stands for, until expires_ts (ms).
CREATE TABLE openid_tokens (
    token      TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL,
    expires_ts INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
