//! PostgreSQL: our tables in a schema of their own.

use std::{str::FromStr, sync::Arc};

use sqlx::{
    Connection,
    postgres::{PgConnectOptions, PgConnection, PgPoolOptions},
};

use super::*;

type Db = sqlx::Postgres;
type DbPool = sqlx::PgPool;

mod imp {
    use super::{Db, DbPool};
    include!("sql.rs");
}

fn valid_schema(schema: &str) -> Result<(), String> {
    match !schema.is_empty()
        && schema.len() <= 63
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        true => Ok(()),
        false => Err(format!(
            "database_schema {schema:?}: lower-case letters, digits and _ only"
        )),
    }
}

pub async fn open(url: &str, schema: &str) -> Result<Arc<dyn Store>, String> {
    valid_schema(schema)?;
    let base = PgConnectOptions::from_str(url).map_err(|e| format!("database_url: {e}"))?;
    let mut conn = PgConnection::connect_with(&base)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE SCHEMA IF NOT EXISTS {schema}"
    )))
    .execute(&mut conn)
    .await
    .map_err(|e| format!("cannot make schema {schema}: {e}"))?;
    conn.close().await.ok();
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect_with(base.options([("search_path", schema)]))
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    imp::MIGRATOR
        .run(&pool)
        .await
        .map_err(|e| format!("migrating {url} ({schema}): {e}"))?;
    let mut lock = pool
        .acquire()
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    // A predecessor killed a moment ago may still hold it until PostgreSQL notices: a few tries.
    let mut locked = false;
    for _ in 0..50 {
        locked = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('tim-vzd-sync:' || $1))")
            .bind(schema)
            .fetch_one(&mut *lock)
            .await
            .map_err(|e| format!("cannot lock schema {schema}: {e}"))?;
        if locked {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    if !locked {
        return Err(format!(
            "another tim-vzd-sync uses schema {schema}: run one per schema"
        ));
    }
    Ok(Arc::new(imp::SqlStore {
        pool,
        lock: std::sync::Mutex::new(Some(lock)),
    }))
}

pub async fn drop_schema(url: &str, schema: &str) -> Result<(), String> {
    valid_schema(schema)?;
    let mut conn = PgConnection::connect(url)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE"
    )))
    .execute(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}
