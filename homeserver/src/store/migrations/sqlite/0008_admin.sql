-- Reported events and rooms, for the organisation's admin (no event content is copied).
CREATE TABLE reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    event_id TEXT,
    event_sender TEXT,
    reporter TEXT NOT NULL,
    reason TEXT,
    score BIGINT,
    created_ts BIGINT NOT NULL,
    handled_ts BIGINT,
    handled_by TEXT
);
CREATE INDEX reports_open ON reports (handled_ts, id);

-- Each user's server-notices room, and notices to all users being sent (resumable).
CREATE TABLE server_notice_rooms (user_id TEXT PRIMARY KEY, room_id TEXT NOT NULL);
CREATE TABLE notice_jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    content TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    cursor TEXT NOT NULL,
    sent BIGINT NOT NULL,
    done_ts BIGINT
);

-- Admin API: the tenant's API tokens (hashed), the audit log, tenant settings.
CREATE TABLE admin_tokens (token_hash TEXT PRIMARY KEY, created_ts BIGINT NOT NULL);
CREATE TABLE admin_audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    details TEXT,
    ts BIGINT NOT NULL
);
CREATE TABLE tenant_settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);

-- The user agent a device was last seen with (session management).
ALTER TABLE devices ADD COLUMN last_seen_user_agent TEXT;
