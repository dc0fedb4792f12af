-- Refresh tokens per spec: the old refresh token stays valid until the new access or refresh
-- token is used. A refreshed session remembers the refresh token it came from until then, and
-- the old access token is revoked at once while its row keeps the old refresh token alive.
ALTER TABLE access_tokens ADD COLUMN prev_refresh_hash TEXT;
ALTER TABLE access_tokens ADD COLUMN access_revoked BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX access_tokens_prev_refresh ON access_tokens (prev_refresh_hash);
