-- OpenID tokens (Client-Server API "OpenID"): a user proves who they are to a third party (the
-- VZD-FHIR-Directory's /tim-authenticate), which checks the token at
-- /_matrix/federation/v1/openid/userinfo. Stored hashed; they expire after an hour.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
CREATE INDEX openid_tokens_user ON openid_tokens (user_id);
