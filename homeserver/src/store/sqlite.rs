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
    include!("sql.rs");
    include!("sql/profiles.rs");
    include!("sql/receipts.rs");
    include!("sql/media.rs");
    include!("sql/push.rs");
    include!("sql/admin.rs");

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

    async fn write_push_events_and_reads(
        tx: &mut sqlx::Transaction<'_, Db>,
        rows: &PushEventRows,
        own: &OwnReads,
    ) -> StoreResult<()> {
        if !own.rooms.is_empty() {
            upsert_own_reads(tx, &own.rooms, &own.users, &own.positions).await?;
        }
        if !rows.room_ids.is_empty() {
            insert_push_events(tx, rows).await?;
        }
        Ok(())
    }

    async fn insert_push_events(
        tx: &mut sqlx::Transaction<'_, Db>,
        r: &PushEventRows,
    ) -> StoreResult<()> {
        for start in (0..r.room_ids.len()).step_by(100) {
            let end = (start + 100).min(r.room_ids.len());
            let values: Vec<String> = (0..end - start)
                .map(|i| {
                    let b = i * 7;
                    format!(
                        "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
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
                "INSERT INTO push_events (room_id, stream_pos, event_id, ts, notify, highlight, actions) VALUES {}",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for i in start..end {
                q = q
                    .bind(&r.room_ids[i])
                    .bind(r.positions[i])
                    .bind(&r.event_ids[i])
                    .bind(r.ts[i])
                    .bind(&r.notify[i])
                    .bind(&r.highlight[i])
                    .bind(&r.actions[i]);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    async fn upsert_own_reads(
        tx: &mut sqlx::Transaction<'_, Db>,
        rooms: &[String],
        users: &[String],
        positions: &[i64],
    ) -> StoreResult<()> {
        let values: Vec<String> = (0..rooms.len())
            .map(|i| format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3))
            .collect();
        let sql = format!(
            "INSERT INTO own_reads (room_id, user_id, event_pos) VALUES {} \
             ON CONFLICT (room_id, user_id) DO UPDATE SET event_pos = excluded.event_pos WHERE own_reads.event_pos < excluded.event_pos",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for i in 0..rooms.len() {
            q = q.bind(&rooms[i]).bind(&users[i]).bind(positions[i]);
        }
        q.execute(&mut **tx).await?;
        Ok(())
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
