-- Homeserver core schema (SQLite; one file per tenant).
CREATE TABLE server_keys (key_id TEXT PRIMARY KEY, pkcs8 BLOB NOT NULL, created_ts BIGINT NOT NULL);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT,
    is_admin BOOLEAN NOT NULL,
    deactivated BOOLEAN NOT NULL,
    created_ts BIGINT NOT NULL
);

CREATE TABLE devices (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    display_name TEXT,
    created_ts BIGINT NOT NULL,
    last_seen_ts BIGINT,
    last_seen_ip TEXT,
    PRIMARY KEY (user_id, device_id)
);

CREATE TABLE access_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    expires_ts BIGINT,
    refresh_token_hash TEXT UNIQUE,
    created_ts BIGINT NOT NULL
);
CREATE INDEX access_tokens_device ON access_tokens (user_id, device_id);

CREATE TABLE registration_tokens (
    token TEXT PRIMARY KEY,
    uses_allowed BIGINT,
    completed BIGINT NOT NULL,
    expiry_ts BIGINT,
    created_ts BIGINT NOT NULL
);

CREATE TABLE filters (user_id TEXT NOT NULL, filter_id BIGINT NOT NULL, json TEXT NOT NULL, PRIMARY KEY (user_id, filter_id));

CREATE TABLE account_data (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    data_type TEXT NOT NULL,
    content TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id, data_type)
);
CREATE INDEX account_data_stream ON account_data (user_id, stream_pos);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    current_state_group BIGINT NOT NULL
);

CREATE TABLE events (
    stream_pos BIGINT PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    room_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT,
    membership TEXT,
    depth BIGINT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,
    state_group BIGINT NOT NULL,
    replaces_state TEXT,
    redacted_by TEXT,
    relates_to TEXT,
    rel_type TEXT,
    rel_key TEXT,
    txn_device TEXT,
    txn_id TEXT
);
CREATE INDEX events_room ON events (room_id, stream_pos);
CREATE INDEX events_relations ON events (relates_to, stream_pos) WHERE relates_to IS NOT NULL;
CREATE INDEX events_membership ON events (state_key, stream_pos) WHERE type = 'm.room.member';

CREATE TABLE event_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, txn_id)
);

CREATE TABLE state_groups (id BIGINT PRIMARY KEY, room_id TEXT NOT NULL, prev_group BIGINT, chain_len BIGINT NOT NULL);
CREATE TABLE state_group_entries (
    group_id BIGINT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (group_id, type, state_key)
);

CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    membership TEXT,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, type, state_key)
);
CREATE INDEX current_state_user ON current_state (state_key, type);

CREATE TABLE forward_extremities (room_id TEXT NOT NULL, event_id TEXT NOT NULL, PRIMARY KEY (room_id, event_id));
CREATE TABLE room_aliases (alias TEXT PRIMARY KEY, room_id TEXT NOT NULL, creator TEXT NOT NULL);
CREATE INDEX room_aliases_room ON room_aliases (room_id);
CREATE TABLE forgotten_rooms (user_id TEXT NOT NULL, room_id TEXT NOT NULL, PRIMARY KEY (user_id, room_id));
