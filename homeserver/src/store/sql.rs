// The SQL implementation of every store trait, shared by both backends: `sqlite.rs` and
// `postgres.rs` each `include!` this file after defining `Db` (the sqlx database), `DbPool`
// and `is_unique_violation`. SQL here must be valid in both dialects (`$n` placeholders work in
// both). Writes go through `write` — for SQLite a pool of exactly one connection — reads through
// `read`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use sqlx::Row;

use super::*;

#[derive(Clone)]
pub struct SqlStore {
    write: DbPool,
    read: DbPool,
    growth: Arc<Growth>,
}

/// Events written since the store was opened, and the count at which the event tables'
/// statistics are refreshed next. PostgreSQL keeps a plan it chose for a prepared statement
/// while a table was small (a sequential scan is cheapest then) until the table is analysed;
/// a young tenant's tables can grow a thousandfold before autovacuum's next round, and every
/// look-up by event id would scan them. So the store analyses them itself, at 1,000 events
/// and each doubling after, up to a million (autovacuum keeps up from there).
struct Growth {
    written: std::sync::atomic::AtomicU64,
    next: std::sync::atomic::AtomicU64,
}

const FIRST_ANALYZE: u64 = 1_000;
const LAST_ANALYZE: u64 = 1_000_000;

impl Growth {
    fn new() -> Self {
        Self { written: 0.into(), next: FIRST_ANALYZE.into() }
    }

    /// Counts `n` written events; true when the statistics are due (once per threshold).
    fn grew(&self, n: u64) -> bool {
        use std::sync::atomic::Ordering;
        let written = self.written.fetch_add(n, Ordering::Relaxed) + n;
        let next = self.next.load(Ordering::Relaxed);
        written >= next
            && next <= LAST_ANALYZE
            && self.next.compare_exchange(next, next * 2, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }
}

#[cfg(test)]
mod growth_tests {
    use super::{FIRST_ANALYZE, Growth, LAST_ANALYZE};

    #[test]
    fn statistics_are_refreshed_once_per_doubling_up_to_the_last_threshold() {
        let growth = Growth::new();
        assert!(!growth.grew(FIRST_ANALYZE - 1));
        assert!(growth.grew(1), "at 1,000 events");
        assert!(!growth.grew(1), "once per threshold");
        assert!(growth.grew(FIRST_ANALYZE), "at 2,000");
        // A big batch crossing several thresholds refreshes once, then waits for the next.
        assert!(growth.grew(10 * FIRST_ANALYZE));
        let mut refreshes = 0;
        for _ in 0..(4 * LAST_ANALYZE / FIRST_ANALYZE) {
            refreshes += usize::from(growth.grew(FIRST_ANALYZE));
        }
        assert!(refreshes <= 10, "{refreshes} refreshes");
        assert!(!growth.grew(LAST_ANALYZE), "autovacuum keeps up from a million on");
    }
}

type DbRow = <Db as sqlx::Database>::Row;

fn unique(e: sqlx::Error) -> StoreError {
    if is_unique_violation(&e) { StoreError::Conflict } else { StoreError::Db(e) }
}

impl SqlStore {
    pub fn stores(write: DbPool, read: DbPool) -> Stores {
        let store = Arc::new(SqlStore { write, read, growth: Arc::new(Growth::new()) });
        Stores {
            server_keys: store.clone(),
            accounts: store.clone(),
            sessions: store.clone(),
            filters: store.clone(),
            account_data: store.clone(),
            events: store.clone(),
            profiles: store.clone(),
            receipts: store.clone(),
            media: store.clone(),
            push: store.clone(),
            reports: store.clone(),
            notices: store.clone(),
            admin: store.clone(),
            keys: store.clone(),
            backup: store.clone(),
            graph: store.clone(),
            remote_keys: store.clone(),
            federation: store.clone(),
            closer: store,
        }
    }
}

#[async_trait]
impl Closer for SqlStore {
    async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    async fn release_idle(&self) {
        for pool in [&self.write, &self.read] {
            // Connections go back to the pool in the background; give the last ones a moment.
            for _ in 0..50 {
                if pool.num_idle() as u32 >= pool.size() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            while let Some(mut conn) = pool.try_acquire() {
                conn.close_on_drop();
            }
        }
    }
}

#[async_trait]
impl ServerKeyStore for SqlStore {
    async fn signing_key(&self, generate: &(dyn Fn() -> (String, Vec<u8>) + Sync)) -> StoreResult<(String, Vec<u8>)> {
        let row = sqlx::query("SELECT key_id, pkcs8 FROM server_keys ORDER BY created_ts LIMIT 1").fetch_optional(&self.write).await?;
        if let Some(row) = row {
            return Ok((row.try_get(0)?, row.try_get(1)?));
        }
        let (key_id, doc) = generate();
        sqlx::query("INSERT INTO server_keys (key_id, pkcs8, created_ts) VALUES ($1, $2, $3)")
            .bind(&key_id)
            .bind(&doc)
            .bind(0i64)
            .execute(&self.write)
            .await?;
        Ok((key_id, doc))
    }
}

fn user_row(row: &DbRow) -> StoreResult<UserRow> {
    Ok(UserRow {
        user_id: row.try_get(0)?,
        password_hash: row.try_get(1)?,
        is_admin: row.try_get(2)?,
        deactivated: row.try_get(3)?,
        created_ts: row.try_get(4)?,
    })
}

#[async_trait]
impl AccountStore for SqlStore {
    async fn create_user(&self, user_id: &str, password_hash: Option<&str>, is_admin: bool, now: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO users (user_id, password_hash, is_admin, deactivated, created_ts) VALUES ($1, $2, $3, FALSE, $4)")
            .bind(user_id)
            .bind(password_hash)
            .bind(is_admin)
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(unique)?;
        Ok(())
    }

    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRow>> {
        let row = sqlx::query("SELECT user_id, password_hash, is_admin, deactivated, created_ts FROM users WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(user_row).transpose()
    }

    async fn count_users(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COUNT(*) FROM users").fetch_one(&self.read).await?.try_get(0)?)
    }

    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()> {
        sqlx::query("UPDATE users SET password_hash = $2 WHERE user_id = $1").bind(user_id).bind(hash).execute(&self.write).await?;
        Ok(())
    }

    async fn deactivate(&self, user_id: &str, change_pos: i64) -> StoreResult<Vec<String>> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE users SET deactivated = TRUE, password_hash = NULL WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        let rows = sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 RETURNING token_hash").bind(user_id).fetch_all(&mut *tx).await?;
        sqlx::query("DELETE FROM devices WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM pushers WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM openid_tokens WHERE user_id = $1").bind(user_id).execute(&mut *tx).await?;
        delete_device_keys(&mut tx, user_id, None, "", change_pos).await?;
        tx.commit().await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn create_registration_token(&self, id: &str, hint: &str, uses_allowed: Option<i64>, expiry_ts: Option<i64>, now: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO registration_tokens (token, hint, hashed, uses_allowed, completed, expiry_ts, created_ts) VALUES ($1, $2, TRUE, $3, 0, $4, $5)")
            .bind(id)
            .bind(hint)
            .bind(uses_allowed)
            .bind(expiry_ts)
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(unique)?;
        Ok(())
    }

    async fn get_registration_token(&self, token: &str) -> StoreResult<Option<RegistrationTokenRow>> {
        let row = sqlx::query("SELECT token, hint, uses_allowed, completed, expiry_ts FROM registration_tokens WHERE token = $1 AND hashed")
            .bind(token)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(registration_token_row).transpose()
    }

    async fn consume_registration_token(&self, token: &str, now: i64) -> StoreResult<bool> {
        // One statement: the row lock (PostgreSQL) or the single writer (SQLite) makes two
        // concurrent registrations unable to both take the last use.
        let done = sqlx::query(
            "UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1 AND hashed \
             AND (uses_allowed IS NULL OR completed < uses_allowed) AND (expiry_ts IS NULL OR expiry_ts > $2)",
        )
        .bind(token)
        .bind(now)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn list_registration_tokens(&self) -> StoreResult<Vec<RegistrationTokenRow>> {
        let rows = sqlx::query("SELECT token, hint, uses_allowed, completed, expiry_ts FROM registration_tokens WHERE hashed ORDER BY created_ts")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(registration_token_row).collect()
    }

    async fn delete_registration_token(&self, token: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM registration_tokens WHERE token = $1 AND hashed").bind(token).execute(&self.write).await?;
        Ok(done.rows_affected() == 1)
    }

    async fn hash_plain_registration_tokens(&self, id_and_hint: for<'a> fn(&'a str) -> (String, String)) -> StoreResult<u64> {
        let mut tx = self.write.begin().await?;
        let plain: Vec<String> = sqlx::query_scalar("SELECT token FROM registration_tokens WHERE NOT hashed")
            .fetch_all(&mut *tx)
            .await?;
        for token in &plain {
            let (id, hint) = id_and_hint(token);
            sqlx::query("UPDATE registration_tokens SET token = $1, hint = $2, hashed = TRUE WHERE token = $3 AND NOT hashed")
                .bind(id)
                .bind(hint)
                .bind(token.clone())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(plain.len() as u64)
    }

    async fn user_summary(&self, user_id: &str) -> StoreResult<Option<UserSummary>> {
        let sql = format!("{USER_SUMMARY} WHERE u.user_id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).fetch_optional(&self.read).await?;
        row.as_ref().map(user_summary).transpose()
    }

    async fn search_users(&self, term: &str, limit: i64) -> StoreResult<Vec<UserSummary>> {
        let sql = format!("{USER_SUMMARY} WHERE NOT u.deactivated AND (LOWER(u.user_id) LIKE $1 ESCAPE '\\' OR LOWER(d.value) LIKE $1 ESCAPE '\\') ORDER BY u.user_id LIMIT $2");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(like_pattern(term)).bind(limit).fetch_all(&self.read).await?;
        rows.iter().map(user_summary).collect()
    }

    async fn list_users(&self, search: Option<&str>, after: Option<&str>, limit: i64) -> StoreResult<Vec<UserSummary>> {
        let sql = format!(
            "{USER_SUMMARY} WHERE u.user_id > $1 AND ($2 = '' OR LOWER(u.user_id) LIKE $3 ESCAPE '\\' OR LOWER(d.value) LIKE $3 ESCAPE '\\') ORDER BY u.user_id LIMIT $4"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(after.unwrap_or(""))
            .bind(search.unwrap_or(""))
            .bind(like_pattern(search.unwrap_or("")))
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(user_summary).collect()
    }
}

const USER_SUMMARY: &str = "SELECT u.user_id, d.value, a.value, u.is_admin, u.deactivated, u.created_ts FROM users u \
    LEFT JOIN profile_fields d ON d.user_id = u.user_id AND d.field = 'displayname' \
    LEFT JOIN profile_fields a ON a.user_id = u.user_id AND a.field = 'avatar_url'";

/// `%term%` with LIKE's wildcards in `term` escaped.
fn like_pattern(term: &str) -> String {
    let escaped = term.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%{escaped}%")
}

fn user_summary(r: &DbRow) -> StoreResult<UserSummary> {
    // Profile values are JSON strings.
    let text = |v: Option<String>| v.and_then(|v| serde_json::from_str::<String>(&v).ok());
    Ok(UserSummary {
        user_id: r.try_get(0)?,
        displayname: text(r.try_get(1)?),
        avatar_url: text(r.try_get(2)?),
        is_admin: r.try_get(3)?,
        deactivated: r.try_get(4)?,
        created_ts: r.try_get(5)?,
    })
}

fn device_row(r: &DbRow) -> StoreResult<DeviceRow> {
    Ok(DeviceRow { device_id: r.try_get(0)?, display_name: r.try_get(1)?, last_seen_ts: r.try_get(2)?, last_seen_ip: r.try_get(3)?, last_seen_user_agent: r.try_get(4)? })
}

fn hashes(rows: Vec<DbRow>) -> StoreResult<Vec<String>> {
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

#[async_trait]
impl SessionStore for SqlStore {
    async fn create_session(&self, s: NewSession<'_>) -> StoreResult<Vec<String>> {
        let mut tx = self.write.begin().await?;
        let old = sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2 RETURNING token_hash")
            .bind(s.user_id)
            .bind(s.device_id)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO devices (user_id, device_id, display_name, created_ts, last_seen_ts, last_seen_ip) VALUES ($1, $2, $3, $4, $4, $5) \
             ON CONFLICT (user_id, device_id) DO UPDATE SET last_seen_ts = $4, last_seen_ip = $5, \
             display_name = COALESCE(EXCLUDED.display_name, devices.display_name)",
        )
        .bind(s.user_id)
        .bind(s.device_id)
        .bind(s.display_name)
        .bind(s.now)
        .bind(s.ip)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, expires_ts, refresh_token_hash, created_ts) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(s.token_hash)
        .bind(s.user_id)
        .bind(s.device_id)
        .bind(s.expires_ts)
        .bind(s.refresh_hash)
        .bind(s.now)
        .execute(&mut *tx)
        .await
        .map_err(unique)?;
        tx.commit().await?;
        hashes(old)
    }

    async fn lookup_token(&self, token_hash: &str) -> StoreResult<Option<TokenRow>> {
        let row = sqlx::query(
            "SELECT user_id, device_id, expires_ts, prev_refresh_hash FROM access_tokens WHERE token_hash = $1 AND access_revoked = FALSE",
        )
        .bind(token_hash)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            let prev: Option<String> = r.try_get(3)?;
            Ok(TokenRow { user_id: r.try_get(0)?, device_id: r.try_get(1)?, expires_ts: r.try_get(2)?, unconfirmed: prev.is_some() })
        })
        .transpose()
    }

    async fn refresh(&self, refresh_hash: &str, new_token_hash: &str, new_refresh_hash: &str, expires_ts: Option<i64>, now: i64) -> StoreResult<Option<(Vec<String>, TokenRow)>> {
        let mut tx = self.write.begin().await?;
        // The UPDATE comes first: it locks the row, so concurrent refreshes with one token run
        // one after the other (the later one replaces the earlier one's unused result).
        let row = sqlx::query(
            "UPDATE access_tokens SET access_revoked = TRUE WHERE refresh_token_hash = $1 RETURNING token_hash, user_id, device_id, prev_refresh_hash",
        )
        .bind(refresh_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (old, user_id, device_id, prev): (String, String, String, Option<String>) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
        let mut revoked = vec![old];
        // Using this refresh token confirms its session: the one it came from goes.
        if let Some(prev) = prev {
            revoked.extend(hashes(sqlx::query("DELETE FROM access_tokens WHERE refresh_token_hash = $1 RETURNING token_hash").bind(prev).fetch_all(&mut *tx).await?)?);
            sqlx::query("UPDATE access_tokens SET prev_refresh_hash = NULL WHERE refresh_token_hash = $1").bind(refresh_hash).execute(&mut *tx).await?;
        }
        // A retried refresh replaces the unused result of the previous one.
        revoked.extend(hashes(sqlx::query("DELETE FROM access_tokens WHERE prev_refresh_hash = $1 RETURNING token_hash").bind(refresh_hash).fetch_all(&mut *tx).await?)?);
        sqlx::query(
            "INSERT INTO access_tokens (token_hash, user_id, device_id, expires_ts, refresh_token_hash, created_ts, prev_refresh_hash) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(new_token_hash)
        .bind(&user_id)
        .bind(&device_id)
        .bind(expires_ts)
        .bind(new_refresh_hash)
        .bind(now)
        .bind(refresh_hash)
        .execute(&mut *tx)
        .await
        .map_err(unique)?;
        tx.commit().await?;
        Ok(Some((revoked, TokenRow { user_id, device_id, expires_ts, unconfirmed: true })))
    }

    async fn create_openid_token(&self, token_hash: &str, user_id: &str, expires_ts: i64, now: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM openid_tokens WHERE expires_ts <= $1").bind(now).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
            .bind(token_hash)
            .bind(user_id)
            .bind(expires_ts)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn openid_token_user(&self, token_hash: &str, now: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.read)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    async fn confirm_refresh(&self, token_hash: &str) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let prev = sqlx::query("SELECT prev_refresh_hash FROM access_tokens WHERE token_hash = $1").bind(token_hash).fetch_optional(&mut *tx).await?;
        if let Some(prev) = prev.map(|r| r.try_get::<Option<String>, _>(0)).transpose()?.flatten() {
            sqlx::query("DELETE FROM access_tokens WHERE refresh_token_hash = $1").bind(prev).execute(&mut *tx).await?;
            sqlx::query("UPDATE access_tokens SET prev_refresh_hash = NULL WHERE token_hash = $1").bind(token_hash).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn delete_devices(&self, user_id: &str, device_ids: &[String], change_pos: i64) -> StoreResult<Vec<String>> {
        let mut tx = self.write.begin().await?;
        let mut removed = Vec::new();
        for device_id in device_ids {
            let rows = sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id = $2 RETURNING token_hash")
                .bind(user_id)
                .bind(device_id)
                .fetch_all(&mut *tx)
                .await?;
            removed.extend(hashes(rows)?);
            sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2").bind(user_id).bind(device_id).execute(&mut *tx).await?;
            // A device's pushers go with it: a signed-out phone gets no more pushes.
            sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id = $2").bind(user_id).bind(device_id).execute(&mut *tx).await?;
        }
        delete_device_keys(&mut tx, user_id, Some(device_ids), "", change_pos).await?;
        tx.commit().await?;
        Ok(removed)
    }

    async fn delete_all_devices(&self, user_id: &str, keep: Option<&str>, change_pos: i64) -> StoreResult<Vec<String>> {
        let keep = keep.unwrap_or("");
        let mut tx = self.write.begin().await?;
        let rows = sqlx::query("DELETE FROM access_tokens WHERE user_id = $1 AND device_id <> $2 RETURNING token_hash")
            .bind(user_id)
            .bind(keep)
            .fetch_all(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id <> $2").bind(user_id).bind(keep).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND device_id <> $2").bind(user_id).bind(keep).execute(&mut *tx).await?;
        delete_device_keys(&mut tx, user_id, None, keep, change_pos).await?;
        tx.commit().await?;
        hashes(rows)
    }

    async fn list_devices(&self, user_id: &str) -> StoreResult<Vec<DeviceRow>> {
        let rows = sqlx::query("SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices WHERE user_id = $1 ORDER BY device_id")
            .bind(user_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(device_row).collect()
    }

    async fn get_device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<DeviceRow>> {
        let row = sqlx::query("SELECT device_id, display_name, last_seen_ts, last_seen_ip, last_seen_user_agent FROM devices WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(device_row).transpose()
    }

    async fn rename_device(&self, user_id: &str, device_id: &str, name: Option<&str>) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE devices SET display_name = $3 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .bind(name)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn touch_device(&self, user_id: &str, device_id: &str, ip: Option<&str>, user_agent: Option<&str>, now: i64) -> StoreResult<()> {
        sqlx::query("UPDATE devices SET last_seen_ts = $3, last_seen_ip = $4, last_seen_user_agent = $5 WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .bind(now)
            .bind(ip)
            .bind(user_agent)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl FilterStore for SqlStore {
    async fn create_filter(&self, user_id: &str, json: &str) -> StoreResult<i64> {
        let mut tx = self.write.begin().await?;
        let next: i64 = sqlx::query("SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        sqlx::query("INSERT INTO filters (user_id, filter_id, json) VALUES ($1, $2, $3)")
            .bind(user_id)
            .bind(next)
            .bind(json)
            .execute(&mut *tx)
            .await
            .map_err(unique)?;
        tx.commit().await?;
        Ok(next)
    }

    async fn get_filter(&self, user_id: &str, filter_id: i64) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT json FROM filters WHERE user_id = $1 AND filter_id = $2")
            .bind(user_id)
            .bind(filter_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }
}

#[async_trait]
impl AccountDataStore for SqlStore {
    async fn set(&self, user_id: &str, room_id: &str, data_type: &str, content: &str, stream_pos: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO account_data (user_id, room_id, data_type, content, stream_pos) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (user_id, room_id, data_type) DO UPDATE SET content = EXCLUDED.content, stream_pos = EXCLUDED.stream_pos",
        )
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .bind(content)
        .bind(stream_pos)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn get(&self, user_id: &str, room_id: &str, data_type: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
            .bind(user_id)
            .bind(room_id)
            .bind(data_type)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn changed(&self, user_id: &str, since: i64, upto: i64) -> StoreResult<Vec<AccountDataRow>> {
        let rows = sqlx::query(
            "SELECT room_id, data_type, content, stream_pos FROM account_data WHERE user_id = $1 AND stream_pos > $2 AND stream_pos <= $3 ORDER BY stream_pos",
        )
        .bind(user_id)
        .bind(since)
        .bind(upto)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| Ok(AccountDataRow { room_id: r.try_get(0)?, data_type: r.try_get(1)?, content: r.try_get(2)?, stream_pos: r.try_get(3)? }))
            .collect()
    }
}

/// The columns `event_row` reads; queries that select more put them after these.
const EVENT_COLUMNS: &str = "e.stream_pos, e.event_id, e.room_id, e.json, e.state_group, e.replaces_state, e.redacted_by, e.txn_device, e.txn_id, e.depth";
const EVENT_COLUMN_COUNT: usize = 10;

fn event_row(r: &DbRow) -> StoreResult<EventRow> {
    let txn_device: Option<String> = r.try_get(7)?;
    let txn_id: Option<String> = r.try_get(8)?;
    Ok(EventRow {
        stream_pos: r.try_get(0)?,
        event_id: r.try_get(1)?,
        room_id: r.try_get(2)?,
        json: r.try_get(3)?,
        state_group: r.try_get(4)?,
        replaces_state: r.try_get(5)?,
        redacted_by: r.try_get(6)?,
        txn: txn_device.zip(txn_id),
        depth: r.try_get(9)?,
    })
}

fn event_rows(rows: Vec<DbRow>) -> StoreResult<Vec<EventRow>> {
    rows.iter().map(event_row).collect()
}

fn membership_row(r: &DbRow) -> StoreResult<MembershipRow> {
    Ok(MembershipRow { room_id: r.try_get(0)?, membership: r.try_get(1)?, stream_pos: r.try_get(2)?, event_id: r.try_get(3)? })
}

/// Appends `AND col IN (...)`/`NOT IN` clauses for an event filter, numbering binds from `next`.
/// Appends the SQL of an event filter (`AND ...`), numbering binds from `next`. Event types may
/// use `*` as a wildcard (spec: filters), matched with LIKE.
fn filter_sql(filter: &EventFilter, next: &mut usize, sql: &mut String, binds: &mut Vec<String>) {
    let mut list = |col: &str, values: &[String], negate: bool, sql: &mut String, binds: &mut Vec<String>| {
        if values.is_empty() {
            if !negate {
                sql.push_str(" AND FALSE");
            }
            return;
        }
        let mut terms = Vec::new();
        let mut exact = Vec::new();
        for v in values {
            let p = format!("${next}");
            *next += 1;
            if v.contains('*') {
                let pattern = v.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_").replace('*', "%");
                binds.push(pattern);
                terms.push(format!("{col} {}LIKE {p} ESCAPE '\\'", if negate { "NOT " } else { "" }));
            } else {
                binds.push(v.clone());
                exact.push(p);
            }
        }
        if !exact.is_empty() {
            terms.push(format!("{col} {}IN ({})", if negate { "NOT " } else { "" }, exact.join(", ")));
        }
        let joiner = if negate { " AND " } else { " OR " };
        sql.push_str(&format!(" AND ({})", terms.join(joiner)));
    };
    if let Some(types) = &filter.types {
        list("e.type", types, false, sql, binds);
    }
    list("e.type", &filter.not_types, true, sql, binds);
    if let Some(senders) = &filter.senders {
        list("e.sender", senders, false, sql, binds);
    }
    list("e.sender", &filter.not_senders, true, sql, binds);
}

/// Writes a state group and its entries.
async fn insert_state_group(tx: &mut sqlx::Transaction<'_, Db>, room_id: &str, group: &NewStateGroup) -> StoreResult<()> {
    sqlx::query("INSERT INTO state_groups (id, room_id, prev_group, chain_len) VALUES ($1, $2, $3, $4)")
        .bind(group.id)
        .bind(room_id)
        .bind(group.prev_group)
        .bind(group.chain_len)
        .execute(&mut **tx)
        .await?;
    for chunk in group.entries.chunks(200) {
        let values: Vec<String> = (0..chunk.len()).map(|i| format!("($1, ${}, ${}, ${})", 2 + i * 3, 3 + i * 3, 4 + i * 3)).collect();
        let sql = format!("INSERT INTO state_group_entries (group_id, type, state_key, event_id) VALUES {}", values.join(", "));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(group.id);
        for (ty, key, id) in chunk {
            q = q.bind(ty).bind(key).bind(id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn in_list(start: usize, n: usize) -> String {
    (start..start + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

#[async_trait]
impl EventStore for SqlStore {
    async fn max_stream_pos(&self) -> StoreResult<i64> {
        let tables = ["events", "account_data", "receipts", "device_list_changes", "to_device_txns", "remote_memberships"];
        let columns: Vec<String> = tables.iter().map(|t| format!("COALESCE((SELECT MAX(stream_pos) FROM {t}), 0)")).collect();
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {}", columns.join(", ")))).fetch_one(&self.read).await?;
        let mut max = 0;
        for i in 0..tables.len() {
            max = max.max(row.try_get::<i64, _>(i)?);
        }
        Ok(max)
    }

    async fn max_state_group(&self) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COALESCE(MAX(id), 0) FROM state_groups").fetch_one(&self.read).await?.try_get(0)?)
    }

    async fn create_room(&self, room_id: &str, version: &str, creator: &str, now: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO rooms (room_id, room_version, creator, created_ts, current_state_group) VALUES ($1, $2, $3, $4, 0)")
            .bind(room_id)
            .bind(version)
            .bind(creator)
            .bind(now)
            .execute(&self.write)
            .await
            .map_err(unique)?;
        Ok(())
    }

    async fn room_version(&self, room_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT room_version FROM rooms WHERE room_id = $1").bind(room_id).fetch_optional(&self.read).await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn persist_events(&self, events: &[NewEvent<'_>]) -> StoreResult<()> {
        let Some(last) = events.last() else { return Ok(()) };
        let mut tx = self.write.begin().await?;
        // One multi-row INSERT per chunk of the batch (21 binds per row).
        for chunk in events.chunks(32) {
            let mut sql = String::from(
                "INSERT INTO events (stream_pos, event_id, room_id, sender, type, state_key, depth, origin_server_ts, json, state_group, \
                 replaces_state, relates_to, rel_type, rel_key, txn_device, txn_id, membership, push_notify, push_highlight, push_actions, \
                 read_by_sender) VALUES ",
            );
            for i in 0..chunk.len() {
                let b = i * 21;
                sql.push_str(if i == 0 { "(" } else { ", (" });
                sql.push_str(&(1..=21).map(|n| format!("${}", b + n)).collect::<Vec<_>>().join(", "));
                sql.push(')');
            }
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for ev in chunk {
                let (notify, highlight, actions) = push_columns(ev.push);
                q = q
                    .bind(ev.stream_pos)
                    .bind(ev.event_id)
                    .bind(ev.room_id)
                    .bind(ev.sender)
                    .bind(ev.event_type)
                    .bind(ev.state_key)
                    .bind(ev.depth)
                    .bind(ev.origin_server_ts)
                    .bind(ev.json)
                    .bind(ev.state_group)
                    .bind(ev.replaces_state)
                    .bind(ev.relates_to.map(|r| r.0))
                    .bind(ev.relates_to.map(|r| r.1))
                    .bind(ev.relates_to.and_then(|r| r.2))
                    .bind(ev.txn.map(|t| t.0))
                    .bind(ev.txn.map(|t| t.1))
                    .bind(ev.membership)
                    .bind(notify)
                    .bind(highlight)
                    .bind(actions)
                    .bind(ev.marks_read);
            }
            q.execute(&mut *tx).await.map_err(unique)?;
        }
        insert_push_queue_rows(&mut tx, events).await?;
        for ev in events.iter().filter(|e| e.was_outlier) {
            sqlx::query("DELETE FROM events_outside_timeline WHERE event_id = $1").bind(ev.event_id).execute(&mut *tx).await?;
        }
        let edges: Vec<GraphEdges<'_>> = events.iter().map(|e| GraphEdges { event_id: e.event_id, room_id: e.room_id, prev: e.prev_events, auth: e.auth_events }).collect();
        insert_edges(&mut tx, &edges).await?;
        insert_outbox(&mut tx, events).await?;
        for ev in events {
            if let Some((Some(before), _)) = ev.resolution {
                insert_state_group(&mut tx, ev.room_id, before).await?;
            }
            if let Some((_, Some(after))) = ev.resolution {
                insert_state_group(&mut tx, ev.room_id, after).await?;
                sqlx::query("UPDATE rooms SET current_state_group = $2 WHERE room_id = $1").bind(ev.room_id).bind(after.id).execute(&mut *tx).await?;
                // The current state becomes the resolved state, each entry with its event's
                // membership and position.
                sqlx::query("DELETE FROM current_state WHERE room_id = $1").bind(ev.room_id).execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_pos) \
                     SELECT $1, g.type, g.state_key, g.event_id, e.membership, e.stream_pos FROM state_group_entries g \
                     JOIN events e ON e.event_id = g.event_id WHERE g.group_id = $2",
                )
                .bind(ev.room_id)
                .bind(after.id)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(group) = &ev.new_state_group {
                insert_state_group(&mut tx, ev.room_id, group).await?;
                sqlx::query("UPDATE rooms SET current_state_group = $2 WHERE room_id = $1").bind(ev.room_id).bind(group.id).execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_pos) VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = EXCLUDED.event_id, membership = EXCLUDED.membership, \
                     stream_pos = EXCLUDED.stream_pos",
                )
                .bind(ev.room_id)
                .bind(ev.event_type)
                .bind(ev.state_key.unwrap_or_default())
                .bind(ev.event_id)
                .bind(ev.membership)
                .bind(ev.stream_pos)
                .execute(&mut *tx)
                .await?;
            }
            if let Some((redacted, pruned)) = ev.redacts {
                sqlx::query("UPDATE events SET json = $2, redacted_by = $3 WHERE event_id = $1 AND room_id = $4")
                    .bind(redacted)
                    .bind(pruned)
                    .bind(ev.event_id)
                    .bind(ev.room_id)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // Forward extremities: the batch's tips replace the earlier events it points to.
        let in_batch: std::collections::HashSet<&str> = events.iter().map(|e| e.event_id).collect();
        let referenced: std::collections::HashSet<&str> = events.iter().flat_map(|e| e.prev_events.iter().map(String::as_str)).collect();
        let outside: Vec<&str> = referenced.iter().copied().filter(|p| !in_batch.contains(p)).collect();
        let tips: Vec<&str> = events.iter().map(|e| e.event_id).filter(|id| !referenced.contains(id)).collect();
        let room_id = last.room_id;
        let replaced_in_place = if let ([prev], [tip]) = (outside.as_slice(), tips.as_slice()) {
            // The common case, one statement: a linear chain on top of the single extremity.
            sqlx::query("UPDATE forward_extremities SET event_id = $3 WHERE room_id = $1 AND event_id = $2")
                .bind(room_id)
                .bind(*prev)
                .bind(*tip)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1
        } else {
            false
        };
        if !replaced_in_place {
            for prev in &outside {
                sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1 AND event_id = $2").bind(room_id).bind(*prev).execute(&mut *tx).await?;
            }
            for tip in &tips {
                sqlx::query("INSERT INTO forward_extremities (room_id, event_id) VALUES ($1, $2)").bind(room_id).bind(*tip).execute(&mut *tx).await?;
            }
        }
        tx.commit().await?;
        if self.growth.grew(events.len() as u64)
            && let Some(sql) = ANALYZE_EVENT_TABLES
        {
            let pool = self.write.clone();
            tokio::spawn(async move {
                if let Err(e) = sqlx::raw_sql(sqlx::AssertSqlSafe(sql)).execute(&pool).await {
                    tracing::warn!(error = %e, "event tables not analysed");
                }
            });
        }
        Ok(())
    }

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id = $1")))
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(event_row).transpose()
    }

    async fn get_events(&self, event_ids: &[String]) -> StoreResult<Vec<EventRow>> {
        let mut out = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(500) {
            let sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.event_id IN ({})", in_list(1, chunk.len()));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(event_rows(q.fetch_all(&self.read).await?)?);
        }
        Ok(out)
    }

    async fn txn_event(&self, user_id: &str, device_id: &str, txn_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT event_id FROM events WHERE sender = $1 AND txn_device = $2 AND txn_id = $3")
            .bind(user_id)
            .bind(device_id)
            .bind(txn_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn load_room(&self, room_id: &str) -> StoreResult<Option<LoadedRoom>> {
        let Some(room) = sqlx::query("SELECT room_version, current_state_group FROM rooms WHERE room_id = $1")
            .bind(room_id)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let state_rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS}, c.type, c.state_key FROM current_state c JOIN events e ON e.event_id = c.event_id WHERE c.room_id = $1"
        )))
        .bind(room_id)
        .fetch_all(&self.read)
        .await?;
        let mut state = Vec::with_capacity(state_rows.len());
        let mut state_types = Vec::with_capacity(state_rows.len());
        for r in &state_rows {
            state.push(event_row(r)?);
            state_types.push((r.try_get(EVENT_COLUMN_COUNT)?, r.try_get(EVENT_COLUMN_COUNT + 1)?));
        }
        let extremities = sqlx::query("SELECT event_id FROM forward_extremities WHERE room_id = $1 ORDER BY event_id")
            .bind(room_id)
            .fetch_all(&self.read)
            .await?;
        let max_depth: i64 = sqlx::query("SELECT COALESCE(MAX(depth), 0) FROM events WHERE room_id = $1").bind(room_id).fetch_one(&self.read).await?.try_get(0)?;
        let state_group: i64 = room.try_get(1)?;
        let chain_len: i64 = sqlx::query("SELECT COALESCE(MAX(chain_len), 0) FROM state_groups WHERE id = $1")
            .bind(state_group)
            .fetch_one(&self.read)
            .await?
            .try_get(0)?;
        Ok(Some(LoadedRoom {
            version: room.try_get(0)?,
            state_group,
            chain_len,
            state,
            state_types,
            extremities: hashes(extremities)?,
            max_depth,
        }))
    }

    async fn state_at_group(&self, group: i64) -> StoreResult<StateIds> {
        // The delta chain, newest first, then all its entries in one query.
        let chain = sqlx::query(
            "WITH RECURSIVE chain(id, prev_group, n) AS ( \
               SELECT id, prev_group, 0 FROM state_groups WHERE id = $1 \
               UNION ALL SELECT g.id, g.prev_group, chain.n + 1 FROM state_groups g JOIN chain ON g.id = chain.prev_group) \
             SELECT id FROM chain ORDER BY n",
        )
        .bind(group)
        .fetch_all(&self.read)
        .await?;
        let ids: Vec<i64> = chain.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Ok(StateIds::new());
        }
        let sql = format!("SELECT group_id, type, state_key, event_id FROM state_group_entries WHERE group_id IN ({})", in_list(1, ids.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in &ids {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.read).await?;
        let rank: BTreeMap<i64, usize> = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        // Newer groups (lower rank) win.
        let mut best: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
        for r in &rows {
            let g: i64 = r.try_get(0)?;
            let key = (r.try_get(1)?, r.try_get(2)?);
            let event_id: String = r.try_get(3)?;
            let rank = rank[&g];
            match best.get(&key) {
                Some((existing, _)) if *existing <= rank => {}
                _ => {
                    best.insert(key, (rank, event_id));
                }
            }
        }
        Ok(best.into_iter().map(|(k, (_, v))| (k, v)).collect())
    }

    async fn current_state_ids(&self, room_id: &str) -> StoreResult<StateIds> {
        let rows = sqlx::query("SELECT type, state_key, event_id FROM current_state WHERE room_id = $1").bind(room_id).fetch_all(&self.read).await?;
        rows.iter().map(|r| Ok(((r.try_get(0)?, r.try_get(1)?), r.try_get(2)?))).collect()
    }

    async fn current_state_events(&self, room_ids: &[String]) -> StoreResult<Vec<(String, String, String, EventRow)>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, c.type, c.state_key FROM current_state c JOIN events e ON e.event_id = c.event_id WHERE c.room_id IN ({})",
                in_list(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                let row = event_row(&r)?;
                out.push((row.room_id.clone(), r.try_get(EVENT_COLUMN_COUNT)?, r.try_get(EVENT_COLUMN_COUNT + 1)?, row));
            }
        }
        Ok(out)
    }

    async fn rooms_for_user(&self, user_id: &str) -> StoreResult<Vec<MembershipRow>> {
        let rows = sqlx::query(
            "SELECT c.room_id, c.membership, c.stream_pos, c.event_id FROM current_state c \
             WHERE c.type = 'm.room.member' AND c.state_key = $1 \
             AND NOT (c.membership IN ('leave', 'ban') AND EXISTS (SELECT 1 FROM forgotten_rooms f WHERE f.user_id = $1 AND f.room_id = c.room_id)) \
             AND NOT EXISTS (SELECT 1 FROM remote_memberships r3 WHERE r3.user_id = $1 AND r3.room_id = c.room_id AND r3.stream_pos > c.stream_pos) \
             UNION ALL SELECT r.room_id, r.membership, r.stream_pos, r.event_id FROM remote_memberships r \
             WHERE r.user_id = $1 AND r.stream_pos = (SELECT MAX(r2.stream_pos) FROM remote_memberships r2 WHERE r2.user_id = $1 AND r2.room_id = r.room_id) \
             AND NOT EXISTS (SELECT 1 FROM current_state c2 WHERE c2.room_id = r.room_id AND c2.type = 'm.room.member' AND c2.state_key = $1 AND c2.stream_pos > r.stream_pos) \
             AND NOT (r.membership = 'leave' AND EXISTS (SELECT 1 FROM forgotten_rooms f WHERE f.user_id = $1 AND f.room_id = r.room_id)) \
             ORDER BY 1",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(membership_row).collect()
    }

    async fn membership_changes(&self, user_id: &str, since: i64, upto: i64) -> StoreResult<Vec<MembershipRow>> {
        let rows = sqlx::query(
            "SELECT e.room_id, e.membership, e.stream_pos, e.event_id FROM events e \
             WHERE e.type = 'm.room.member' AND e.state_key = $1 AND e.stream_pos > $2 AND e.stream_pos <= $3 \
             UNION ALL SELECT r.room_id, r.membership, r.stream_pos, r.event_id FROM remote_memberships r \
             WHERE r.user_id = $1 AND r.stream_pos > $2 AND r.stream_pos <= $3 ORDER BY 3",
        )
        .bind(user_id)
        .bind(since)
        .bind(upto)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(membership_row).collect()
    }

    async fn membership_history(&self, user_id: &str, room_id: &str) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT stream_pos, membership FROM events WHERE type = 'm.room.member' AND state_key = $1 AND room_id = $2 \
             UNION ALL SELECT stream_pos, membership FROM remote_memberships WHERE user_id = $1 AND room_id = $2 ORDER BY 1",
        )
        .bind(user_id)
        .bind(room_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn users_sharing_rooms(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT b.state_key FROM current_state a JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership = 'join' \
             WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn members(&self, room_id: &str, membership: Option<&str>) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT state_key, event_id FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND ($2 IS NULL OR membership = $2) ORDER BY state_key",
        )
        .bind(room_id)
        .bind(membership)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn room_events(&self, room_id: &str, from: i64, to: i64, dir: Direction, limit: i64, filter: &EventFilter) -> StoreResult<Vec<EventRow>> {
        let (range, order) = match dir {
            Direction::Forward => ("e.stream_pos > $2 AND e.stream_pos <= $3", "ASC"),
            Direction::Backward => ("e.stream_pos <= $2 AND e.stream_pos > $3", "DESC"),
        };
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND {range}");
        let mut binds = Vec::new();
        let mut next = 5;
        filter_sql(filter, &mut next, &mut sql, &mut binds);
        sql.push_str(&format!(" ORDER BY e.stream_pos {order} LIMIT $4"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_id).bind(from).bind(to).bind(limit);
        for b in &binds {
            q = q.bind(b);
        }
        event_rows(q.fetch_all(&self.read).await?)
    }

    async fn room_events_topological(&self, room_id: &str, from: (i64, i64), to: (i64, i64), dir: Direction, limit: i64, filter: &EventFilter) -> StoreResult<Vec<EventRow>> {
        let (range, order) = match dir {
            Direction::Forward => ("(e.depth, e.stream_pos) > ($2, $3) AND (e.depth, e.stream_pos) <= ($4, $5)", "ASC"),
            Direction::Backward => ("(e.depth, e.stream_pos) <= ($2, $3) AND (e.depth, e.stream_pos) > ($4, $5)", "DESC"),
        };
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND {range}");
        let mut binds = Vec::new();
        let mut next = 7;
        filter_sql(filter, &mut next, &mut sql, &mut binds);
        sql.push_str(&format!(" ORDER BY e.depth {order}, e.stream_pos {order} LIMIT $6"));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_id).bind(from.0).bind(from.1).bind(to.0).bind(to.1).bind(limit);
        for b in &binds {
            q = q.bind(b);
        }
        event_rows(q.fetch_all(&self.read).await?)
    }

    async fn depth_at(&self, room_id: &str, stream_pos: i64) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT depth FROM events WHERE room_id = $1 AND stream_pos <= $2 ORDER BY stream_pos DESC LIMIT 1")
            .bind(room_id)
            .bind(stream_pos)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn latest_events(&self, room_ids: &[String], upto: i64, limit: i64, filter: &EventFilter) -> StoreResult<Vec<EventRow>> {
        // Per backend (sqlite.rs, postgres.rs): each room read through its index, N rows each.
        let mut out = self.newest_per_room(room_ids, upto, limit, filter).await?;
        out.sort_by_key(|r| std::cmp::Reverse(r.stream_pos));
        Ok(out)
    }

    async fn history_visibility_changes(&self, room_ids: &[String]) -> StoreResult<Vec<(String, i64, String)>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT room_id, stream_pos, json FROM events WHERE type = 'm.room.history_visibility' AND room_id IN ({}) ORDER BY stream_pos",
                in_list(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                let json: String = r.try_get(2)?;
                let setting = serde_json::from_str::<serde_json::Value>(&json)
                    .ok()
                    .and_then(|v| v.pointer("/content/history_visibility").and_then(|s| s.as_str()).map(str::to_owned))
                    .unwrap_or_else(|| "shared".into());
                out.push((r.try_get(0)?, r.try_get(1)?, setting));
            }
        }
        Ok(out)
    }

    async fn rooms_with_events(&self, room_ids: &[String], since: i64, upto: i64) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT DISTINCT room_id FROM events WHERE stream_pos > $1 AND stream_pos <= $2 AND room_id IN ({})",
                in_list(3, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since).bind(upto);
            for id in chunk {
                q = q.bind(id);
            }
            out.extend(hashes(q.fetch_all(&self.read).await?)?);
        }
        Ok(out)
    }

    async fn state_events_between(&self, room_id: &str, since: i64, upto: i64) -> StoreResult<Vec<EventRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.state_key IS NOT NULL AND e.stream_pos > $2 AND e.stream_pos <= $3 ORDER BY e.stream_pos"
        )))
        .bind(room_id)
        .bind(since)
        .bind(upto)
        .fetch_all(&self.read)
        .await?;
        event_rows(rows)
    }

    async fn relations(&self, room_id: &str, event_id: &str, rel_type: Option<&str>, event_type: Option<&str>, from: i64, to: i64, dir: Direction, limit: i64) -> StoreResult<Vec<EventRow>> {
        let (range, order) = match dir {
            Direction::Forward => ("e.stream_pos > $5 AND e.stream_pos <= $6", "ASC"),
            Direction::Backward => ("e.stream_pos <= $5 AND e.stream_pos > $6", "DESC"),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events e WHERE e.room_id = $1 AND e.relates_to = $2 AND ($3 IS NULL OR e.rel_type = $3) \
             AND ($4 IS NULL OR e.type = $4) AND {range} ORDER BY e.stream_pos {order} LIMIT $7"
        )))
        .bind(room_id)
        .bind(event_id)
        .bind(rel_type)
        .bind(event_type)
        .bind(from)
        .bind(to)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        event_rows(rows)
    }

    async fn set_alias(&self, alias: &str, room_id: &str, creator: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO room_aliases (alias, room_id, creator) VALUES ($1, $2, $3)")
            .bind(alias)
            .bind(room_id)
            .bind(creator)
            .execute(&self.write)
            .await
            .map_err(unique)?;
        Ok(())
    }

    async fn get_alias(&self, alias: &str) -> StoreResult<Option<(String, String)>> {
        let row = sqlx::query("SELECT room_id, creator FROM room_aliases WHERE alias = $1").bind(alias).fetch_optional(&self.read).await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    async fn delete_alias(&self, alias: &str) -> StoreResult<bool> {
        Ok(sqlx::query("DELETE FROM room_aliases WHERE alias = $1").bind(alias).execute(&self.write).await?.rows_affected() == 1)
    }

    async fn room_aliases(&self, room_id: &str) -> StoreResult<Vec<String>> {
        hashes(sqlx::query("SELECT alias FROM room_aliases WHERE room_id = $1 ORDER BY alias").bind(room_id).fetch_all(&self.read).await?)
    }

    async fn forget_room(&self, user_id: &str, room_id: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO forgotten_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
            .bind(user_id)
            .bind(room_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn unforget_room(&self, user_id: &str, room_id: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM forgotten_rooms WHERE user_id = $1 AND room_id = $2").bind(user_id).bind(room_id).execute(&self.write).await?;
        Ok(())
    }
}

fn registration_token_row(r: &<Db as sqlx::Database>::Row) -> StoreResult<RegistrationTokenRow> {
    Ok(RegistrationTokenRow {
        token: r.try_get(0)?,
        hint: r.try_get(1)?,
        uses_allowed: r.try_get(2)?,
        completed: r.try_get(3)?,
        expiry_ts: r.try_get(4)?,
    })
}
