-- Other servers' signing keys, as fetched and verified (issue 15): kept after they expire or
-- are rotated out, so events signed with them stay verifiable.
CREATE TABLE remote_server_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    -- Until when the server vouches for the key (`valid_until_ts`).
    valid_until_ts BIGINT NOT NULL,
    -- When the key was retired (`old_verify_keys`), NULL while current.
    expired_ts BIGINT,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);
