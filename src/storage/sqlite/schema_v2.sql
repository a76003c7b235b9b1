-- weft schema, version 2: other servers' signing keys.

-- Every verify key (and old verify key) seen for a server, from key
-- documents whose signatures checked out. A key's validity only grows:
-- a later document cannot shorten it (so a spurious response from the
-- origin does not overwrite a valid key).
CREATE TABLE server_keys (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    public_key     TEXT NOT NULL,
    -- Until when the key may be used (the document's valid_until_ts).
    valid_until_ts INTEGER NOT NULL,
    -- For an old verify key: when it expired.
    expired_ts     INTEGER,
    fetched_ts     INTEGER NOT NULL,
    PRIMARY KEY (server_name, key_id)
) WITHOUT ROWID;

-- Self-signed key documents as received, so that this server can act as
-- a notary and re-serve them: for each verify key, the newest document
-- that listed it (so a later document without the key does not make a
-- notary forget it).
CREATE TABLE server_key_documents (
    server_name    TEXT NOT NULL,
    key_id         TEXT NOT NULL,
    valid_until_ts INTEGER NOT NULL,
    fetched_ts     INTEGER NOT NULL,
    json           TEXT NOT NULL,
    PRIMARY KEY (server_name, key_id)
) WITHOUT ROWID;
