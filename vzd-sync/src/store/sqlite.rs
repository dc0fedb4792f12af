//! SQLite: one file, WAL, fully synchronous commits, exactly one (writer) connection.

use std::{str::FromStr, sync::Arc};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::*;

type Db = sqlx::Sqlite;
type DbPool = sqlx::SqlitePool;

mod imp {
    use super::{Db, DbPool};
    include!("sql.rs");
}

pub async fn open(url: &str) -> Result<Arc<dyn Store>, String> {
    let options = SqliteConnectOptions::from_str(url)
        .map_err(|e| format!("database_url: {e}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full);
    if let Some(dir) = options.get_filename().parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    }
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| format!("cannot open {url}: {e}"))?;
    imp::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| format!("migrating {url}: {e}"))?;
    Ok(Arc::new(imp::SqlStore {
        pool,
        lock: Default::default(),
    }))
}
