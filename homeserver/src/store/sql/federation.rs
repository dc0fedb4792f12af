// Other servers' signing keys and transactions (included by `sqlite.rs` and `postgres.rs`
// after `sql.rs`).
#[async_trait]
impl RemoteKeyStore for SqlStore {
    async fn remote_keys(&self, server_name: &str) -> StoreResult<Vec<RemoteKeyRow>> {
        let rows = sqlx::query("SELECT key_id, public_key, valid_until_ts, expired_ts FROM remote_server_keys WHERE server_name = $1 ORDER BY key_id")
            .bind(server_name)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(RemoteKeyRow { key_id: r.try_get(0)?, public_key: r.try_get(1)?, valid_until_ts: r.try_get(2)?, expired_ts: r.try_get(3)? }))
            .collect()
    }

    async fn save_remote_keys(&self, server_name: &str, keys: &[RemoteKeyRow], document: &str, now: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO remote_key_documents (server_name, document, fetched_ts) VALUES ($1, $2, $3) \
             ON CONFLICT (server_name) DO UPDATE SET document = EXCLUDED.document, fetched_ts = EXCLUDED.fetched_ts",
        )
        .bind(server_name)
        .bind(document)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for k in keys {
            sqlx::query(
                "INSERT INTO remote_server_keys (server_name, key_id, public_key, valid_until_ts, expired_ts, fetched_ts) VALUES ($1, $2, $3, $4, $5, $6) \
                 ON CONFLICT (server_name, key_id) DO UPDATE SET valid_until_ts = CASE WHEN EXCLUDED.valid_until_ts > remote_server_keys.valid_until_ts \
                 THEN EXCLUDED.valid_until_ts ELSE remote_server_keys.valid_until_ts END, \
                 expired_ts = COALESCE(remote_server_keys.expired_ts, EXCLUDED.expired_ts), fetched_ts = EXCLUDED.fetched_ts \
                 WHERE remote_server_keys.public_key = EXCLUDED.public_key",
            )
            .bind(server_name)
            .bind(&k.key_id)
            .bind(&k.public_key)
            .bind(k.valid_until_ts)
            .bind(k.expired_ts)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn key_document(&self, server_name: &str) -> StoreResult<Option<String>> {
        Ok(sqlx::query_scalar("SELECT document FROM remote_key_documents WHERE server_name = $1").bind(server_name).fetch_optional(&self.read).await?)
    }
}

/// Outbox rows of new events, in the events' transaction: a crash loses none.
/// How long our answers to other servers' transactions are kept (a repeat gets the same).
const INBOUND_TXN_KEPT_MS: i64 = 24 * 60 * 60 * 1000;

/// Deletes the outbox rows of `destination` with these keys (`delete` ends in `IN`).
async fn delete_sent(pool: &DbPool, delete: &'static str, destination: &str, keys: &[i64]) -> StoreResult<()> {
    for chunk in keys.chunks(500) {
        let sql = format!("{delete} ({})", in_list(2, chunk.len()));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(destination);
        for k in chunk {
            q = q.bind(*k);
        }
        q.execute(pool).await?;
    }
    Ok(())
}

async fn insert_outbox(tx: &mut sqlx::Transaction<'_, Db>, events: &[NewEvent<'_>]) -> StoreResult<()> {
    let rows: Vec<(&str, i64, &str)> = events.iter().flat_map(|e| e.destinations.iter().map(move |d| (d.as_str(), e.stream_pos, e.event_id))).collect();
    for chunk in rows.chunks(300) {
        let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3)).collect();
        let sql = format!("INSERT INTO federation_outbox (destination, stream_pos, event_id) VALUES {}", values.join(", "));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (destination, pos, event_id) in chunk {
            q = q.bind(*destination).bind(*pos).bind(*event_id);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

#[async_trait]
impl FederationStore for SqlStore {
    async fn inbound_txn(&self, origin: &str, txn_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT response FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2")
            .bind(origin)
            .bind(txn_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn save_inbound_txn(&self, origin: &str, txn_id: &str, response: &str, now: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(origin)
            .bind(txn_id)
            .bind(response)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // A sender retries for hours at most: older answers of the same origin are not needed.
        sqlx::query("DELETE FROM federation_inbound_txns WHERE origin = $1 AND received_ts < $2")
            .bind(origin)
            .bind(now - INBOUND_TXN_KEPT_MS)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn outbox(&self, destination: &str, limit: i64) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query("SELECT stream_pos, event_id FROM federation_outbox WHERE destination = $1 ORDER BY stream_pos LIMIT $2")
            .bind(destination)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn outbox_sent(&self, destination: &str, positions: &[i64]) -> StoreResult<()> {
        // Exactly what was sent: positions commit out of order, so a lower one may have
        // arrived in the outbox after the batch was read.
        delete_sent(&self.write, "DELETE FROM federation_outbox WHERE destination = $1 AND stream_pos IN", destination, positions).await
    }

    async fn outbox_destinations(&self) -> StoreResult<Vec<String>> {
        hashes(
            sqlx::query("SELECT destination FROM federation_outbox UNION SELECT destination FROM federation_edu_outbox ORDER BY 1")
                .fetch_all(&self.read)
                .await?,
        )
    }

    async fn queue_edus(&self, edus: &[(String, String, String)], now_ms: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        for chunk in edus.chunks(300) {
            let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${}, ${}, ${})", i * 4 + 1, i * 4 + 2, i * 4 + 3, i * 4 + 4)).collect();
            let sql = format!("INSERT INTO federation_edu_outbox (destination, edu_type, content, queued_ts) VALUES {}", values.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (destination, kind, content) in chunk {
                q = q.bind(destination).bind(kind).bind(content).bind(now_ms);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn edu_outbox(&self, destination: &str, limit: i64) -> StoreResult<Vec<QueuedEdu>> {
        let rows = sqlx::query("SELECT id, edu_type, content, queued_ts FROM federation_edu_outbox WHERE destination = $1 ORDER BY id LIMIT $2")
            .bind(destination)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(QueuedEdu { id: r.try_get(0)?, kind: r.try_get(1)?, content: r.try_get(2)?, queued_ts: r.try_get(3)? }))
            .collect()
    }

    async fn edu_outbox_sent(&self, destination: &str, ids: &[i64]) -> StoreResult<()> {
        delete_sent(&self.write, "DELETE FROM federation_edu_outbox WHERE destination = $1 AND id IN", destination, ids).await
    }
}
