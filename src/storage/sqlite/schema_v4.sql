-- weft schema, version 4: invites from other servers.

-- Invites of local users to rooms this server is not in: shown in /sync
-- (with the stripped state the inviting server sent) until the user joins
-- or rejects them. The invite event itself is kept as an outlier.
CREATE TABLE remote_invites (
    user_id         TEXT NOT NULL,
    room_id         TEXT NOT NULL,
    event_id        TEXT NOT NULL,
    stream_ordering INTEGER NOT NULL,
    room_version    TEXT NOT NULL,
    invite_state    TEXT NOT NULL,
    via             TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
) WITHOUT ROWID;
