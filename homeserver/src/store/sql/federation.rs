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

    async fn save_remote_keys(&self, server_name: &str, keys: &[RemoteKeyRow], now: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
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
        sqlx::query("INSERT INTO federation_inbound_txns (origin, txn_id, response, received_ts) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            .bind(origin)
            .bind(txn_id)
            .bind(response)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
