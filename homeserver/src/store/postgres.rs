//! PostgreSQL backend: one schema per tenant in a shared database, selected with `search_path`
//! on every connection of the tenant's pool.

use std::{str::FromStr, time::Duration};

use sqlx::{
    Executor,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use super::*;

type Db = sqlx::Postgres;
type DbPool = sqlx::PgPool;

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

mod imp {
    use super::{Db, DbPool, is_unique_violation};

    /// The tables that grow with every event, analysed as a young tenant's grow (see `Growth`).
    const ANALYZE_EVENT_TABLES: Option<&str> = Some(
        "ANALYZE events, event_edges, event_auth_edges, events_outside_timeline, federation_outbox, \
         state_groups, state_group_entries, push_queue",
    );
    include!("sql.rs");
    include!("sql/profiles.rs");
    include!("sql/receipts.rs");
    include!("sql/media.rs");
    include!("sql/push.rs");
    include!("sql/admin.rs");
    include!("sql/keys.rs");
    include!("sql/graph.rs");
    include!("sql/federation.rs");

    /// One statement text for any number of rows (arrays through UNNEST), so PostgreSQL plans
    /// it once per connection instead of once per batch size.
    async fn insert_push_queue(
        tx: &mut sqlx::Transaction<'_, Db>,
        r: &PushRows,
    ) -> StoreResult<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO push_queue ({QUEUE_COLUMNS}) SELECT *, 0 FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::bool[], $7::bigint[])"
        )))
        .bind(&r.user_ids)
        .bind(&r.room_ids)
        .bind(&r.positions)
        .bind(&r.event_ids)
        .bind(&r.actions)
        .bind(&r.highlights)
        .bind(&r.ts)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// One statement for all wanted devices: each takes its lowest one-time key, skipping keys
    /// a concurrent claim has locked, so no key is handed out twice.
    async fn claim_one_time_keys(
        tx: &mut sqlx::Transaction<'_, Db>,
        wanted: &[(String, String, String)],
    ) -> StoreResult<Vec<ClaimedKey>> {
        if wanted.is_empty() {
            return Ok(vec![]);
        }
        let rows = sqlx::query(
            "DELETE FROM one_time_keys WHERE ctid = ANY(ARRAY(SELECT k.ctid FROM UNNEST($1::text[], $2::text[], $3::text[]) AS w(u, d, a) \
             CROSS JOIN LATERAL (SELECT ctid FROM one_time_keys WHERE user_id = w.u AND device_id = w.d AND algorithm = w.a \
             ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) k)) RETURNING user_id, device_id, algorithm, key_id, json",
        )
        .bind(wanted.iter().map(|w| w.0.clone()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|w| w.1.clone()).collect::<Vec<_>>())
        .bind(wanted.iter().map(|w| w.2.clone()).collect::<Vec<_>>())
        .fetch_all(&mut **tx)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedKey {
                    user_id: r.try_get(0)?,
                    device_id: r.try_get(1)?,
                    algorithm: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    json: r.try_get(4)?,
                })
            })
            .collect()
    }

    impl SqlStore {
        /// One statement for all rooms: a LATERAL "newest N" read per room through the
        /// (room_id, stream_pos) index, with the room ids bound as one array.
        async fn newest_per_room(
            &self,
            room_ids: &[String],
            upto: i64,
            limit: i64,
            filter: &EventFilter,
        ) -> StoreResult<Vec<EventRow>> {
            let mut sql = format!(
                "SELECT {EVENT_COLUMNS} FROM unnest($1::text[]) AS r(room_id) \
                 CROSS JOIN LATERAL (SELECT e.* FROM events e WHERE e.room_id = r.room_id AND e.stream_pos <= $2",
            );
            let mut binds: Vec<String> = Vec::new();
            let mut next = 4;
            filter_sql(filter, &mut next, &mut sql, &mut binds);
            sql.push_str(" ORDER BY e.stream_pos DESC LIMIT $3) e");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(room_ids.to_vec())
                .bind(upto)
                .bind(limit);
            for b in &binds {
                q = q.bind(b);
            }
            event_rows(q.fetch_all(&self.read).await?)
        }
    }
}

/// Schema names are derived from the server name: lower-case ASCII letters, digits and `_`.
pub(crate) fn schema_name(server_name: &str) -> String {
    let mut s = String::from("tim_");
    for c in server_name.chars().take(46) {
        s.push(if c.is_ascii_alphanumeric() {
            c.to_ascii_lowercase()
        } else {
            '_'
        });
    }
    // Different server names may map to the same text (or be cut short); the hash of the full
    // name keeps them apart. 4 + 46 + 1 + 12 = 63 characters at most, PostgreSQL's limit.
    let hash = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(
        server_name.as_bytes(),
    ));
    s.push('_');
    for b in &hash[..6] {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Connection options from the URL. Without an explicit `sslmode`, a database on the loopback
/// interface is reached without TLS: encryption there protects nothing and costs CPU on both
/// ends (measured: 2,600–2,850 → 3,300–3,500 messages/s in tim-bench). Any other database
/// requires TLS (`require`: `prefer` would fall back to plain text when an attacker on the path
/// says TLS is off); set `sslmode=verify-full` in the URL to verify the server's certificate.
pub(crate) fn connect_options(url: &str) -> StoreResult<PgConnectOptions> {
    let options = PgConnectOptions::from_str(url)?;
    let host = options.get_host();
    let loopback = host == "localhost"
        || host.starts_with('/')
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if has_ssl_mode(url) {
        return Ok(options);
    }
    Ok(options.ssl_mode(if loopback {
        sqlx::postgres::PgSslMode::Disable
    } else {
        sqlx::postgres::PgSslMode::Require
    }))
}

/// Whether the URL's query sets `sslmode` (or its alias `ssl-mode`).
fn has_ssl_mode(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, q)| {
        q.split('&')
            .any(|kv| kv.starts_with("sslmode=") || kv.starts_with("ssl-mode="))
    })
}

/// Opens the tenant's schema in the database at `url`, creating and migrating it if needed.
pub async fn open_postgres(
    url: &str,
    server_name: &str,
    max_connections: u32,
) -> StoreResult<Stores> {
    let schema = schema_name(server_name);
    let options = connect_options(url)?;
    {
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await?;
        let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
        admin.execute(sqlx::AssertSqlSafe(sql)).await?;
        sqlx::Connection::close(admin).await?;
    }
    let set_path = format!("SET search_path TO \"{schema}\"");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections.max(2))
        .min_connections(0)
        .idle_timeout(Duration::from_secs(60))
        .after_connect(move |conn, _| {
            let set_path = set_path.clone();
            Box::pin(async move {
                conn.execute(sqlx::AssertSqlSafe(set_path)).await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await?;
    sqlx::migrate!("src/store/migrations/postgres")
        .run(&pool)
        .await?;
    Ok(imp::SqlStore::stores(pool.clone(), pool))
}

/// Drops a tenant's schema and everything in it (tenant removal with data deletion, tests).
pub async fn drop_tenant_schema(url: &str, server_name: &str) -> StoreResult<()> {
    let options = connect_options(url)?;
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect_with(&options).await?;
    let sql = format!(
        "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
        schema_name(server_name)
    );
    admin.execute(sqlx::AssertSqlSafe(sql)).await?;
    sqlx::Connection::close(admin).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::postgres::PgSslMode;

    #[test]
    fn remote_databases_require_tls() {
        let mode = |url: &str| format!("{:?}", super::connect_options(url).unwrap().get_ssl_mode());
        assert_eq!(
            mode("postgres://u@127.0.0.1/db"),
            format!("{:?}", PgSslMode::Disable)
        );
        assert_eq!(
            mode("postgres://u@localhost/db"),
            format!("{:?}", PgSslMode::Disable)
        );
        assert_eq!(
            mode("postgres://u@db.internal/db"),
            format!("{:?}", PgSslMode::Require)
        );
        assert_eq!(
            mode("postgres://u@10.1.2.3:5432/db"),
            format!("{:?}", PgSslMode::Require)
        );
        assert_eq!(
            mode("postgres://u@db.internal/db?sslmode=verify-full"),
            format!("{:?}", PgSslMode::VerifyFull)
        );
    }

    #[test]
    fn long_names_keep_distinct_schemas() {
        let a = super::schema_name(&format!("{}.example.com", "x".repeat(60)));
        let b = super::schema_name(&format!("{}.example.net", "x".repeat(60)));
        assert_ne!(a, b);
        assert!(a.len() <= 63 && b.len() <= 63);
    }
}
