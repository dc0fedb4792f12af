//! One process per tenant database: two processes serving the same tenant would hand out the
//! same stream positions and event ids and diverge. SQLite tenants are locked with `flock` on
//! `{name}.db.lock` beside the database; PostgreSQL tenants with a session-level advisory lock,
//! all held on one connection per process (one per tenant would exhaust the server's
//! connections with many idle tenants).

use std::{path::PathBuf, str::FromStr};

use sqlx::{Connection, postgres::PgConnection};

use super::{StoreError, StoreResult, postgres};
use crate::config::DatabaseLocation;

pub enum TenantLocks {
    Sqlite(PathBuf),
    Postgres {
        url: String,
        conn: tokio::sync::Mutex<Option<PgConnection>>,
    },
}

/// Held while a tenant is served.
pub struct TenantLock {
    name: String,
    _file: Option<std::fs::File>,
}

impl TenantLocks {
    pub fn new(location: &DatabaseLocation) -> StoreResult<Self> {
        Ok(match location {
            DatabaseLocation::SqliteDir(dir) => Self::Sqlite(dir.clone()),
            DatabaseLocation::Postgres(url) => {
                // Refuse a bad URL now rather than at the first tenant.
                sqlx::postgres::PgConnectOptions::from_str(url)?;
                Self::Postgres {
                    url: url.clone(),
                    conn: Default::default(),
                }
            }
        })
    }

    /// Locks tenant `name` (a validated tenant name) to this process, or says which process
    /// may hold it.
    pub async fn acquire(&self, name: &str) -> StoreResult<TenantLock> {
        match self {
            Self::Sqlite(dir) => {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
                let path = dir.join(format!("{name}.db.lock"));
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                flock_exclusive(&file).map_err(|_| held_elsewhere(name))?;
                Ok(TenantLock {
                    name: name.to_owned(),
                    _file: Some(file),
                })
            }
            Self::Postgres { url, conn } => {
                let mut guard = conn.lock().await;
                let c = match guard.as_mut() {
                    Some(c) => c,
                    None => {
                        let options = postgres::connect_options(url)?;
                        guard.insert(PgConnection::connect_with(&options).await?)
                    }
                };
                let locked: bool = match sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(lock_key(name))
                    .fetch_one(&mut *c)
                    .await
                {
                    Ok(locked) => locked,
                    Err(e) => {
                        // A broken connection is made anew next time (its locks are gone).
                        *guard = None;
                        return Err(e.into());
                    }
                };
                if !locked {
                    return Err(held_elsewhere(name));
                }
                Ok(TenantLock {
                    name: name.to_owned(),
                    _file: None,
                })
            }
        }
    }

    /// Gives the tenant up (removed, or the process stops).
    pub async fn release(&self, lock: TenantLock) {
        if let Self::Postgres { conn, .. } = self
            && let Some(c) = conn.lock().await.as_mut()
        {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(lock_key(&lock.name))
                .execute(&mut *c)
                .await;
            if let Err(e) = unlocked {
                tracing::warn!(tenant = %lock.name, error = %e, "tenant lock not released");
            }
        }
        // SQLite: closing the file releases the flock.
    }
}

fn held_elsewhere(name: &str) -> StoreError {
    StoreError::Unavailable(format!(
        "tenant {name} is served by another process (its database is locked); refusing to serve it twice"
    ))
}

/// The advisory lock key of a tenant: 64 bits of a hash of its schema name, in a namespace of
/// our own so other users of advisory locks in the database are not disturbed.
fn lock_key(name: &str) -> i64 {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!(
        "tim-homeserver tenant {}",
        postgres::schema_name(name)
    ));
    i64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

#[cfg(unix)]
fn flock_exclusive(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(not(unix))]
fn flock_exclusive(_: &std::fs::File) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sqlite_tenant_is_locked_once() {
        let dir = tempfile::tempdir().unwrap();
        let locks = TenantLocks::new(&DatabaseLocation::SqliteDir(dir.path().into())).unwrap();
        let first = locks.acquire("a.example").await.unwrap();
        let err = locks.acquire("a.example").await.err().unwrap();
        assert!(err.to_string().contains("another process"), "{err}");
        locks.acquire("b.example").await.unwrap();
        locks.release(first).await;
        locks.acquire("a.example").await.unwrap();
    }
}
