// Media metadata (included by `sqlite.rs` and `postgres.rs` after `sql.rs`).

const MEDIA_COLUMNS: &str = "media_id, uploader, content_type, filename, size, created_ts, uploaded_ts";

fn media_row(r: &DbRow) -> StoreResult<MediaRow> {
    Ok(MediaRow {
        media_id: r.try_get(0)?,
        uploader: r.try_get(1)?,
        content_type: r.try_get(2)?,
        filename: r.try_get(3)?,
        size: r.try_get(4)?,
        created_ts: r.try_get(5)?,
        uploaded_ts: r.try_get(6)?,
    })
}

#[async_trait]
impl MediaStore for SqlStore {
    async fn insert_media(&self, m: &MediaRow) -> StoreResult<()> {
        sqlx::query(sqlx::AssertSqlSafe(format!("INSERT INTO media ({MEDIA_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7)")))
            .bind(&m.media_id)
            .bind(&m.uploader)
            .bind(&m.content_type)
            .bind(&m.filename)
            .bind(m.size)
            .bind(m.created_ts)
            .bind(m.uploaded_ts)
            .execute(&self.write)
            .await
            .map_err(unique)?;
        Ok(())
    }

    async fn count_pending_media(&self, uploader: &str, since_ts: i64) -> StoreResult<i64> {
        let row = sqlx::query("SELECT COUNT(*) FROM media WHERE uploader = $1 AND uploaded_ts IS NULL AND created_ts > $2")
            .bind(uploader)
            .bind(since_ts)
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn complete_media(&self, media_id: &str, content_type: Option<&str>, filename: Option<&str>, size: i64, now: i64) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE media SET content_type = $2, filename = $3, size = $4, uploaded_ts = $5 WHERE media_id = $1 AND uploaded_ts IS NULL")
            .bind(media_id)
            .bind(content_type)
            .bind(filename)
            .bind(size)
            .bind(now)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn get_media(&self, media_id: &str) -> StoreResult<Option<MediaRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {MEDIA_COLUMNS} FROM media WHERE media_id = $1")))
            .bind(media_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(media_row).transpose()
    }

    async fn add_thumbnail(&self, media_id: &str, t: &ThumbnailRow) -> StoreResult<()> {
        sqlx::query("INSERT INTO media_thumbnails (media_id, width, height, method, content_type, size) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING")
            .bind(media_id)
            .bind(t.width)
            .bind(t.height)
            .bind(&t.method)
            .bind(&t.content_type)
            .bind(t.size)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn thumbnails(&self, media_id: &str) -> StoreResult<Vec<ThumbnailRow>> {
        let rows = sqlx::query("SELECT width, height, method, content_type, size FROM media_thumbnails WHERE media_id = $1")
            .bind(media_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(ThumbnailRow { width: r.try_get(0)?, height: r.try_get(1)?, method: r.try_get(2)?, content_type: r.try_get(3)?, size: r.try_get(4)? })
            })
            .collect()
    }

    async fn delete_media(&self, media_id: &str) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM media_thumbnails WHERE media_id = $1").bind(media_id).execute(&mut *tx).await?;
        let done = sqlx::query("DELETE FROM media WHERE media_id = $1").bind(media_id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    async fn remote_media(&self, cache_id: &str) -> StoreResult<Option<RemoteMediaRow>> {
        let row = sqlx::query(
            "SELECT cache_id, server_name, media_id, variant, content_type, filename, size, fetched_ts FROM remote_media_cache WHERE cache_id = $1",
        )
        .bind(cache_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(RemoteMediaRow {
                cache_id: r.try_get(0)?,
                server_name: r.try_get(1)?,
                media_id: r.try_get(2)?,
                variant: r.try_get(3)?,
                content_type: r.try_get(4)?,
                filename: r.try_get(5)?,
                size: r.try_get(6)?,
                fetched_ts: r.try_get(7)?,
            })
        })
        .transpose()
    }

    async fn add_remote_media(&self, m: &RemoteMediaRow) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO remote_media_cache (cache_id, server_name, media_id, variant, content_type, filename, size, fetched_ts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (cache_id) DO UPDATE SET content_type = EXCLUDED.content_type, \
             filename = EXCLUDED.filename, size = EXCLUDED.size, fetched_ts = EXCLUDED.fetched_ts",
        )
        .bind(&m.cache_id)
        .bind(&m.server_name)
        .bind(&m.media_id)
        .bind(&m.variant)
        .bind(&m.content_type)
        .bind(&m.filename)
        .bind(m.size)
        .bind(m.fetched_ts)
        .execute(&self.write)
        .await?;
        Ok(())
    }
}
