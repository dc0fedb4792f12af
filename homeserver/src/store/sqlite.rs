//! SQLite backend: one database file per tenant, WAL, exactly one writer connection.

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::*;

type Db = sqlx::Sqlite;
type DbPool = sqlx::SqlitePool;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

mod imp {
    use super::{Db, DbPool, is_unique_violation};

    /// SQLite plans each statement from its indexes alone (without `ANALYZE` statistics it
    /// prefers them); nothing to refresh as tables grow.
    const ANALYZE_EVENT_TABLES: Option<&str> = None;
    include!("sql.rs");
    include!("sql/profiles.rs");
    include!("sql/receipts.rs");
    include!("sql/media.rs");
    include!("sql/push.rs");
    include!("sql/admin.rs");
    include!("sql/keys.rs");
    include!("sql/graph.rs");
    include!("sql/federation.rs");

    /// Multi-row inserts (SQLite has no arrays; statements are cheap in-process).
    async fn insert_push_queue(
        tx: &mut sqlx::Transaction<'_, Db>,
        r: &PushRows,
    ) -> StoreResult<()> {
        for start in (0..r.user_ids.len()).step_by(100) {
            let end = (start + 100).min(r.user_ids.len());
            let values: Vec<String> = (0..end - start)
                .map(|i| {
                    let b = i * 7;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${}, 0)",
                        b + 1,
                        b + 2,
                        b + 3,
                        b + 4,
                        b + 5,
                        b + 6,
                        b + 7
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO push_queue ({QUEUE_COLUMNS}) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for i in start..end {
                q = q
                    .bind(&r.user_ids[i])
                    .bind(&r.room_ids[i])
                    .bind(r.positions[i])
                    .bind(&r.event_ids[i])
                    .bind(&r.actions[i])
                    .bind(r.highlights[i])
                    .bind(r.ts[i]);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Claims run on the single write connection, one after the other, so a key deleted here
    /// cannot be handed out again.
    async fn claim_one_time_keys(
        tx: &mut sqlx::Transaction<'_, Db>,
        wanted: &[(String, String, String)],
    ) -> StoreResult<Vec<ClaimedKey>> {
        let mut out = Vec::new();
        for (user_id, device_id, algorithm) in wanted {
            let row = sqlx::query(
                "DELETE FROM one_time_keys WHERE rowid = (SELECT rowid FROM one_time_keys WHERE user_id = $1 AND device_id = $2 \
                 AND algorithm = $3 ORDER BY key_id LIMIT 1) RETURNING key_id, json",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(r) = row {
                out.push(ClaimedKey {
                    user_id: user_id.clone(),
                    device_id: device_id.clone(),
                    algorithm: algorithm.clone(),
                    key_id: r.try_get(0)?,
                    json: r.try_get(1)?,
                });
            }
        }
        Ok(out)
    }

    impl SqlStore {
        /// A UNION ALL of per-room "newest N" reads: each uses the (room_id, stream_pos) index
        /// and stops after N rows, where a window function would read every room's history.
        async fn newest_per_room(
            &self,
            room_ids: &[String],
            upto: i64,
            limit: i64,
            filter: &EventFilter,
        ) -> StoreResult<Vec<EventRow>> {
            let mut out = Vec::new();
            for chunk in room_ids.chunks(100) {
                let mut binds: Vec<String> = Vec::new();
                let mut next = 3;
                let mut parts = Vec::with_capacity(chunk.len());
                for room in chunk {
                    let mut part = format!(
                        "SELECT * FROM (SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = ${next} AND e.stream_pos <= $1"
                    );
                    next += 1;
                    binds.push(room.clone());
                    filter_sql(filter, &mut next, &mut part, &mut binds);
                    part.push_str(" ORDER BY e.stream_pos DESC LIMIT $2) t");
                    parts.push(part);
                }
                let mut q = sqlx::query(sqlx::AssertSqlSafe(parts.join(" UNION ALL ")))
                    .bind(upto)
                    .bind(limit);
                for b in &binds {
                    q = q.bind(b);
                }
                out.extend(event_rows(q.fetch_all(&self.read).await?)?);
            }
            Ok(out)
        }
    }
}

/// Opens (creating if needed) the tenant database at `path` and migrates it.
pub async fn open_sqlite(path: &Path, readers: u32) -> StoreResult<Stores> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Corrupt(format!("cannot create {}: {e}", dir.display())))?;
    }
    let options = SqliteConnectOptions::from_str("sqlite://")?
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: a commit is on disk before we acknowledge it, also across power loss.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
        .pragma("cache_size", "-2000");
    let write = SqlitePoolOptions::new()
        .max_connections(1)
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .connect_with(options.clone())
        .await?;
    sqlx::migrate!("src/store/migrations/sqlite")
        .run(&write)
        .await?;
    let read = SqlitePoolOptions::new()
        .max_connections(readers.max(1))
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .connect_with(options.read_only(true))
        .await?;
    Ok(imp::SqlStore::stores(write, read))
}
