// Profiles and explicitly set presence (included by `sqlite.rs` and `postgres.rs` after `sql.rs`).

#[async_trait]
impl ProfileStore for SqlStore {
    async fn profile(&self, user_id: &str) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT field, value FROM profile_fields WHERE user_id = $1 ORDER BY field")
            .bind(user_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn set_profile_field(&self, user_id: &str, field: &str, value: Option<&str>) -> StoreResult<()> {
        match value {
            Some(v) => sqlx::query("INSERT INTO profile_fields (user_id, field, value) VALUES ($1, $2, $3) ON CONFLICT (user_id, field) DO UPDATE SET value = excluded.value")
                .bind(user_id)
                .bind(field)
                .bind(v)
                .execute(&self.write)
                .await?,
            None => sqlx::query("DELETE FROM profile_fields WHERE user_id = $1 AND field = $2")
                .bind(user_id)
                .bind(field)
                .execute(&self.write)
                .await?,
        };
        Ok(())
    }

    async fn presence(&self, user_id: &str) -> StoreResult<Option<(String, Option<String>)>> {
        let row = sqlx::query("SELECT state, status_msg FROM presence WHERE user_id = $1")
            .bind(user_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).transpose()
    }

    async fn set_presence(&self, user_id: &str, state: &str, status_msg: Option<&str>, now: i64) -> StoreResult<()> {
        sqlx::query("INSERT INTO presence (user_id, state, status_msg, updated_ts) VALUES ($1, $2, $3, $4) ON CONFLICT (user_id) DO UPDATE SET state = excluded.state, status_msg = excluded.status_msg, updated_ts = excluded.updated_ts")
            .bind(user_id)
            .bind(state)
            .bind(status_msg)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
