-- Guest accounts (POST /register?kind=guest): a guest reaches a small part
-- of the client API and joins only rooms open to guests, until it
-- upgrades to a full account (the flag is cleared).
ALTER TABLE users ADD COLUMN is_guest INTEGER NOT NULL DEFAULT 0;

-- Where each device was last seen from (GET /devices, /admin/whois).
ALTER TABLE devices ADD COLUMN last_seen_ip TEXT;
ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;

-- Users who asked for erasure when deactivating (POST /account/deactivate
-- with erase): their events are served redacted to those who could not
-- see them when they were sent.
ALTER TABLE users ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;
