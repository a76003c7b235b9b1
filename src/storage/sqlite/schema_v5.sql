-- weft schema, version 5: a rejected remote invite stays (as "leave") so
-- that /sync can tell clients it is gone.
ALTER TABLE remote_invites ADD COLUMN membership TEXT NOT NULL DEFAULT 'invite';
