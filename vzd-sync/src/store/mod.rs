//! Persistence of what the directory should hold — our federation-list domains and the
//! organisations' directory entries — and how far the directory has taken it, so that no
//! acknowledged change is lost when the directory or this process is down. SQLite (embedded
//! default, one writer connection) or PostgreSQL (a schema of its own); the SQL in `sql.rs`
//! is shared by both.

mod postgres;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("stored data unreadable: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A domain of ours in the federation list.
    Domain,
    /// An organisation's `HealthcareService` with its TI-M endpoints.
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Domain => "domain",
            Kind::Service => "service",
        }
    }

    fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "domain" => Ok(Kind::Domain),
            "service" => Ok(Kind::Service),
            _ => Err(StoreError::Corrupt(format!("entry kind {s:?}"))),
        }
    }
}

/// An entry as configured and how far the directory has taken it.
#[derive(Clone, Debug, PartialEq)]
pub struct EntryRow {
    pub kind: Kind,
    pub key: String,
    /// The organisation (TelematikID) the entry belongs to; empty for domains.
    pub owner: String,
    pub body: Value,
    /// In the directory (true) or to be removed from it (false).
    pub wanted: bool,
    pub revision: i64,
    pub applied_revision: i64,
    pub attempts: i64,
    pub next_attempt_ts: i64,
    pub last_error: Option<String>,
    pub updated_ts: i64,
    /// What the directory made for the entry (resource ids).
    pub remote: Value,
}

impl EntryRow {
    pub fn pending(&self) -> bool {
        self.revision != self.applied_revision
    }
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Records the wanted state of an entry (a new revision, due now); returns the revision,
    /// or None when the key belongs to another owner.
    async fn put_entry(
        &self,
        kind: Kind,
        key: &str,
        owner: &str,
        body: &Value,
        now: i64,
    ) -> StoreResult<Option<i64>>;
    /// Marks a known entry for removal; false when it is not known (or already going).
    async fn remove_entry(&self, kind: Kind, key: &str, now: i64) -> StoreResult<bool>;
    async fn entry(&self, kind: Kind, key: &str) -> StoreResult<Option<EntryRow>>;
    /// The entries of a kind, of one owner or all.
    async fn entries(&self, kind: Kind, owner: Option<&str>) -> StoreResult<Vec<EntryRow>>;
    /// Pending entries whose next attempt is due at `now`, oldest first.
    async fn due_entries(&self, now: i64, limit: i64) -> StoreResult<Vec<EntryRow>>;
    /// When the next pending entry is due (None: nothing pending).
    async fn next_due(&self) -> StoreResult<Option<i64>>;
    /// Records what the directory made for the entry so far.
    async fn set_remote(&self, kind: Kind, key: &str, remote: &Value) -> StoreResult<()>;
    /// The directory holds `revision`; a removed entry's row goes. No effect when the entry
    /// changed meanwhile (its newer revision stays pending).
    async fn entry_applied(
        &self,
        kind: Kind,
        key: &str,
        revision: i64,
        now: i64,
    ) -> StoreResult<()>;
    /// An attempt at `revision` failed; try again at `next_attempt_ts`.
    async fn entry_failed(
        &self,
        kind: Kind,
        key: &str,
        revision: i64,
        error: &str,
        next_attempt_ts: i64,
    ) -> StoreResult<()>;
    async fn put_organization(
        &self,
        telematik_id: &str,
        profession_oid: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// The organisation's professionOID, if it is known.
    async fn organization(&self, telematik_id: &str) -> StoreResult<Option<String>>;
    /// Binds a Matrix user to the TelematikID of their eHBA (None: unbinds); false when there
    /// was nothing to unbind.
    async fn bind_practitioner(
        &self,
        mxid: &str,
        telematik_id: Option<&str>,
        now: i64,
    ) -> StoreResult<bool>;
    /// The TelematikID of the eHBA bound to a Matrix user.
    async fn practitioner(&self, mxid: &str) -> StoreResult<Option<String>>;
    async fn close(&self);
}

/// Opens (and migrates) the store named by `url`.
pub async fn open(url: &str, pg_schema: &str) -> Result<Arc<dyn Store>, String> {
    if url.starts_with("sqlite:") {
        sqlite::open(url).await
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        postgres::open(url, pg_schema).await
    } else {
        Err(format!(
            "database_url {url:?}: expected sqlite://FILE or postgres://…"
        ))
    }
}

/// Drops a PostgreSQL schema (tests).
pub async fn drop_pg_schema(url: &str, schema: &str) -> Result<(), String> {
    postgres::drop_schema(url, schema).await
}

#[cfg(test)]
mod tests;
