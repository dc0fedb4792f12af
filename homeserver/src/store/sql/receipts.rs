// Read receipts (included by `sqlite.rs` and `postgres.rs` after `sql.rs`).

fn receipt_row(r: &DbRow) -> StoreResult<ReceiptRow> {
    Ok(ReceiptRow {
        room_id: r.try_get(0)?,
        user_id: r.try_get(1)?,
        receipt_type: r.try_get(2)?,
        thread_id: r.try_get(3)?,
        event_id: r.try_get(4)?,
        ts: r.try_get(5)?,
        stream_pos: r.try_get(6)?,
    })
}

#[async_trait]
impl ReceiptStore for SqlStore {
    async fn set_receipt(&self, r: &ReceiptRow, event_pos: i64) -> StoreResult<bool> {
        // Receipts only move forward: the upsert's WHERE keeps a later one.
        let done = sqlx::query(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, event_pos, ts, stream_pos) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, event_pos = excluded.event_pos, ts = excluded.ts, stream_pos = excluded.stream_pos \
             WHERE receipts.event_pos < excluded.event_pos",
        )
        .bind(&r.room_id)
        .bind(&r.user_id)
        .bind(&r.receipt_type)
        .bind(&r.thread_id)
        .bind(&r.event_id)
        .bind(event_pos)
        .bind(r.ts)
        .bind(r.stream_pos)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn receipts_changed(&self, room_ids: &[String], since: i64, upto: i64) -> StoreResult<Vec<ReceiptRow>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(500) {
            let sql = format!(
                "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2 AND room_id IN ({}) ORDER BY stream_pos",
                in_list(3, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(since).bind(upto);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.read).await? {
                out.push(receipt_row(&row)?);
            }
        }
        Ok(out)
    }
}
