// The SQL of the store, shared by both backends: `sqlite.rs` and `postgres.rs` each
// `include!` this file after naming `Db` and `DbPool`. `$n` placeholders work in both.

use async_trait::async_trait;
use serde_json::Value;
use sqlx::Row;

use crate::store::{EntryRow, Kind, Store, StoreError, StoreResult};

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub struct SqlStore {
    pub pool: DbPool,
    /// PostgreSQL: the connection holding this schema's advisory lock (one sync per schema,
    /// else two reconcile jobs could make the same entry twice).
    pub lock: std::sync::Mutex<Option<sqlx::pool::PoolConnection<Db>>>,
}

const COLUMNS: &str = "kind, entry_key, owner, body, wanted, revision, applied_revision, \
    attempts, next_attempt_ts, last_error, updated_ts, remote";

fn json(text: &str) -> StoreResult<Value> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn entry_row(r: &<Db as sqlx::Database>::Row) -> StoreResult<EntryRow> {
    Ok(EntryRow {
        kind: Kind::parse(r.try_get::<&str, _>(0)?)?,
        key: r.try_get(1)?,
        owner: r.try_get(2)?,
        body: json(r.try_get::<&str, _>(3)?)?,
        wanted: r.try_get::<i64, _>(4)? != 0,
        revision: r.try_get(5)?,
        applied_revision: r.try_get(6)?,
        attempts: r.try_get(7)?,
        next_attempt_ts: r.try_get(8)?,
        last_error: r.try_get(9)?,
        updated_ts: r.try_get(10)?,
        remote: json(r.try_get::<&str, _>(11)?)?,
    })
}

#[async_trait]
impl Store for SqlStore {
    async fn put_entry(&self, kind: Kind, key: &str, owner: &str, body: &Value, now: i64) -> StoreResult<Option<i64>> {
        let row = sqlx::query(
            "INSERT INTO entries (kind, entry_key, owner, body, wanted, revision, updated_ts, next_attempt_ts)
             VALUES ($1, $2, $3, $4, 1, 1, $5, $5)
             ON CONFLICT (kind, entry_key) DO UPDATE SET body = excluded.body, wanted = 1,
               revision = entries.revision + 1, attempts = 0, last_error = NULL,
               next_attempt_ts = excluded.next_attempt_ts, updated_ts = excluded.updated_ts
             WHERE entries.owner = excluded.owner
             RETURNING revision",
        )
        .bind(kind.as_str())
        .bind(key)
        .bind(owner)
        .bind(body.to_string())
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn remove_entry(&self, kind: Kind, key: &str, now: i64) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE entries SET wanted = 0, revision = revision + 1, attempts = 0,
               last_error = NULL, next_attempt_ts = $3, updated_ts = $3
             WHERE kind = $1 AND entry_key = $2 AND wanted = 1",
        )
        .bind(kind.as_str())
        .bind(key)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn entry(&self, kind: Kind, key: &str) -> StoreResult<Option<EntryRow>> {
        let sql = format!("SELECT {COLUMNS} FROM entries WHERE kind = $1 AND entry_key = $2");
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.as_str())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(entry_row)
            .transpose()
    }

    async fn entries(&self, kind: Kind, owner: Option<&str>) -> StoreResult<Vec<EntryRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM entries WHERE kind = $1 AND ($2 IS NULL OR owner = $2) ORDER BY entry_key"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(kind.as_str())
            .bind(owner)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(entry_row)
            .collect()
    }

    async fn due_entries(&self, now: i64, limit: i64) -> StoreResult<Vec<EntryRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM entries
             WHERE revision <> applied_revision AND next_attempt_ts <= $1
             ORDER BY next_attempt_ts LIMIT $2"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(entry_row)
            .collect()
    }

    async fn next_due(&self) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT MIN(next_attempt_ts) FROM entries WHERE revision <> applied_revision")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn set_remote(&self, kind: Kind, key: &str, remote: &Value) -> StoreResult<()> {
        sqlx::query("UPDATE entries SET remote = $3 WHERE kind = $1 AND entry_key = $2")
            .bind(kind.as_str())
            .bind(key)
            .bind(remote.to_string())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn entry_applied(&self, kind: Kind, key: &str, revision: i64, now: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM entries WHERE kind = $1 AND entry_key = $2 AND revision = $3 AND wanted = 0")
            .bind(kind.as_str())
            .bind(key)
            .bind(revision)
            .execute(&self.pool)
            .await?;
        sqlx::query(
            "UPDATE entries SET applied_revision = $3, attempts = 0, last_error = NULL, updated_ts = $4
             WHERE kind = $1 AND entry_key = $2 AND revision = $3",
        )
        .bind(kind.as_str())
        .bind(key)
        .bind(revision)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn entry_failed(&self, kind: Kind, key: &str, revision: i64, error: &str, next_attempt_ts: i64) -> StoreResult<()> {
        sqlx::query(
            "UPDATE entries SET attempts = attempts + 1, last_error = $4, next_attempt_ts = $5
             WHERE kind = $1 AND entry_key = $2 AND revision = $3",
        )
        .bind(kind.as_str())
        .bind(key)
        .bind(revision)
        .bind(error)
        .bind(next_attempt_ts)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn put_organization(&self, telematik_id: &str, profession_oid: &str, now: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO organizations (telematik_id, profession_oid, updated_ts) VALUES ($1, $2, $3)
             ON CONFLICT (telematik_id) DO UPDATE SET profession_oid = excluded.profession_oid,
               updated_ts = excluded.updated_ts",
        )
        .bind(telematik_id)
        .bind(profession_oid)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn organization(&self, telematik_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT profession_oid FROM organizations WHERE telematik_id = $1")
            .bind(telematik_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn bind_practitioner(&self, mxid: &str, telematik_id: Option<&str>, now: i64) -> StoreResult<bool> {
        let done = match telematik_id {
            Some(t) => sqlx::query(
                "INSERT INTO practitioners (mxid, telematik_id, updated_ts) VALUES ($1, $2, $3)
                 ON CONFLICT (mxid) DO UPDATE SET telematik_id = excluded.telematik_id, updated_ts = excluded.updated_ts",
            )
            .bind(mxid)
            .bind(t)
            .bind(now)
            .execute(&self.pool)
            .await?,
            None => sqlx::query("DELETE FROM practitioners WHERE mxid = $1").bind(mxid).execute(&self.pool).await?,
        };
        Ok(done.rows_affected() > 0)
    }

    async fn practitioner(&self, mxid: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT telematik_id FROM practitioners WHERE mxid = $1")
            .bind(mxid)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn close(&self) {
        // The lock's connection goes back first (closing waits for every connection).
        drop(self.lock.lock().unwrap().take());
        self.pool.close().await;
    }
}
