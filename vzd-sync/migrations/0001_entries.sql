-- Portable SQL (SQLite and PostgreSQL).
--
-- What the directory should hold, one row per entry we manage: a federation-list domain
-- (kind 'domain', key = the domain) or an organisation's directory entry (kind 'service', key =
-- our id of it, owner = the organisation's TelematikID). A change raises `revision`; the
-- reconcile job brings the directory to it and records `applied_revision`. `remote` keeps what
-- the directory made for the entry (resource ids), so a retry continues instead of repeating.
-- Rows of removed entries go once the directory has dropped them.
CREATE TABLE entries (
    kind TEXT NOT NULL,
    entry_key TEXT NOT NULL,
    owner TEXT NOT NULL,
    body TEXT NOT NULL,
    wanted BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    applied_revision BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    next_attempt_ts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    updated_ts BIGINT NOT NULL,
    remote TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (kind, entry_key)
);
CREATE INDEX entries_due ON entries (next_attempt_ts) WHERE revision <> applied_revision;
CREATE INDEX entries_owner ON entries (owner, kind);

-- Organisations whose directory entries we manage: what their RegService-OpenID-Token says.
CREATE TABLE organizations (
    telematik_id TEXT PRIMARY KEY,
    profession_oid TEXT NOT NULL,
    updated_ts BIGINT NOT NULL
);

-- Which eHBA (its holder's TelematikID) belongs to which of our Matrix users, as the org admin
-- says: a doctor's sign-in with an eHBA may only publish the Matrix ID bound to that card.
CREATE TABLE practitioners (
    mxid TEXT PRIMARY KEY,
    telematik_id TEXT NOT NULL,
    updated_ts BIGINT NOT NULL
);
