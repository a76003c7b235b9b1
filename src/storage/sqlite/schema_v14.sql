-- weft schema, version 14: the media repository.
--
-- media: one row per file this server holds, its own uploads (origin is
-- this server, uploader the local user) and other servers' media fetched
-- for local users (uploader NULL). The bytes are in <data_dir>/media/,
-- named by file_id (random, URL-safe; for local media the media ID).
CREATE TABLE media (
    origin       TEXT NOT NULL,
    media_id     TEXT NOT NULL,
    content_type TEXT,
    file_name    TEXT,
    size         INTEGER NOT NULL,
    uploader     TEXT,
    created_ts   INTEGER NOT NULL,
    file_id      TEXT NOT NULL UNIQUE,
    PRIMARY KEY (origin, media_id)
);
