// Push actions, pushers and the push outbox (included by `sqlite.rs` and `postgres.rs` after
// `sql.rs`).

/// The position the user has read up to in the room `p.room_id` (bound as `$1` = user).
const READ_UP_TO: &str = "COALESCE((SELECT MAX(r.event_pos) FROM receipts r WHERE r.room_id = p.room_id AND r.user_id = $1 \
     AND r.receipt_type IN ('m.read', 'm.read.private', 'tim.own') AND r.thread_id IN ('', 'main')), 0)";

/// Writes the push actions (and queued pushes) of a batch of events, inside its transaction,
/// and marks each sender as having read up to their own newest event (`tim.own`, an internal
/// receipt that sync never shows): whoever writes in a room has seen what came before.
async fn insert_push_actions(tx: &mut sqlx::Transaction<'_, Db>, events: &[NewEvent<'_>]) -> StoreResult<()> {
    let mut own: Vec<&NewEvent<'_>> = Vec::new();
    for ev in events.iter().rev().filter(|e| e.marks_read) {
        if !own.iter().any(|o| o.sender == ev.sender) {
            own.push(ev);
        }
    }
    let values: Vec<String> = (0..own.len())
        .map(|i| format!("(${}, ${}, 'tim.own', '', ${}, ${}, ${}, ${})", i * 6 + 1, i * 6 + 2, i * 6 + 3, i * 6 + 4, i * 6 + 5, i * 6 + 6))
        .collect();
    if !values.is_empty() {
        let sql = format!(
            "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, event_pos, ts, stream_pos) VALUES {} \
             ON CONFLICT (room_id, user_id, receipt_type, thread_id) DO UPDATE SET event_id = excluded.event_id, event_pos = excluded.event_pos, \
             ts = excluded.ts, stream_pos = excluded.stream_pos WHERE receipts.event_pos < excluded.event_pos",
            values.join(", ")
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for ev in &own {
            q = q.bind(ev.room_id).bind(ev.sender).bind(ev.event_id).bind(ev.stream_pos).bind(ev.origin_server_ts).bind(ev.stream_pos);
        }
        q.execute(&mut **tx).await?;
    }
    let rows: Vec<(&NewEvent<'_>, &NewPushAction)> = events.iter().flat_map(|e| e.push.iter().map(move |a| (e, a))).collect();
    for chunk in rows.chunks(100) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", i * 7 + 1, i * 7 + 2, i * 7 + 3, i * 7 + 4, i * 7 + 5, i * 7 + 6, i * 7 + 7))
            .collect();
        let sql = format!("INSERT INTO push_actions (user_id, room_id, stream_pos, event_id, actions, highlight, ts) VALUES {}", values.join(", "));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (ev, a) in chunk {
            q = q.bind(&a.user_id).bind(ev.room_id).bind(ev.stream_pos).bind(ev.event_id).bind(&a.actions).bind(a.highlight).bind(ev.origin_server_ts);
        }
        q.execute(&mut **tx).await?;
        let queued: Vec<&(&NewEvent<'_>, &NewPushAction)> = chunk.iter().filter(|(_, a)| a.send).collect();
        if queued.is_empty() {
            continue;
        }
        let values: Vec<String> = (0..queued.len())
            .map(|i| format!("(${}, ${}, ${}, ${}, ${}, ${}, 0, ${})", i * 7 + 1, i * 7 + 2, i * 7 + 3, i * 7 + 4, i * 7 + 5, i * 7 + 6, i * 7 + 7))
            .collect();
        let sql = format!("INSERT INTO push_queue (user_id, stream_pos, room_id, event_id, highlight, actions, attempts, next_attempt_ts) VALUES {}", values.join(", "));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (ev, a) in queued {
            q = q.bind(&a.user_id).bind(ev.stream_pos).bind(ev.room_id).bind(ev.event_id).bind(a.highlight).bind(&a.actions).bind(ev.origin_server_ts);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

fn pusher_row(r: &DbRow) -> StoreResult<PusherRow> {
    Ok(PusherRow {
        user_id: r.try_get(0)?,
        app_id: r.try_get(1)?,
        pushkey: r.try_get(2)?,
        app_display_name: r.try_get(3)?,
        device_display_name: r.try_get(4)?,
        profile_tag: r.try_get(5)?,
        lang: r.try_get(6)?,
        data: r.try_get(7)?,
        created_ts: r.try_get(8)?,
    })
}

#[async_trait]
impl PushStore for SqlStore {
    async fn unread_counts(&self, user_id: &str, room_ids: &[String]) -> StoreResult<Vec<(String, i64, i64)>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(100) {
            // Where the user has read up to in each room, then only the actions after it: the
            // count reads the unread rows through the (user, room, position) key, nothing else.
            let sql = format!(
                "SELECT room_id, MAX(event_pos) FROM receipts WHERE user_id = $1 AND room_id IN ({}) \
                 AND receipt_type IN ('m.read', 'm.read.private', 'tim.own') AND thread_id IN ('', 'main') GROUP BY room_id",
                in_list(2, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
            for id in chunk {
                q = q.bind(id);
            }
            let mut read: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
            for r in q.fetch_all(&self.read).await? {
                read.insert(r.try_get(0)?, r.try_get(1)?);
            }
            let terms: Vec<String> = (0..chunk.len()).map(|i| format!("(p.room_id = ${} AND p.stream_pos > ${})", i * 2 + 2, i * 2 + 3)).collect();
            let sql = format!(
                "SELECT p.room_id, COUNT(*), COALESCE(SUM(CASE WHEN p.highlight THEN 1 ELSE 0 END), 0) FROM push_actions p \
                 WHERE p.user_id = $1 AND ({}) GROUP BY p.room_id",
                terms.join(" OR ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
            for id in chunk {
                q = q.bind(id).bind(read.get(id).copied().unwrap_or(0));
            }
            for r in q.fetch_all(&self.read).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(out)
    }

    async fn notifications(&self, user_id: &str, before: Option<i64>, limit: i64, only_highlight: bool) -> StoreResult<Vec<NotificationRow>> {
        let sql = format!(
            "SELECT {EVENT_COLUMNS}, p.actions, p.ts, p.stream_pos <= {READ_UP_TO} FROM push_actions p JOIN events e ON e.stream_pos = p.stream_pos \
             WHERE p.user_id = $1 AND p.stream_pos < $2 {} ORDER BY p.stream_pos DESC LIMIT $3",
            if only_highlight { "AND p.highlight" } else { "" }
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(NotificationRow { event: event_row(r)?, actions: r.try_get(9)?, ts: r.try_get(10)?, read: r.try_get(11)? }))
            .collect()
    }

    async fn pushers(&self, user_id: &str) -> StoreResult<Vec<PusherRow>> {
        let rows = sqlx::query(
            "SELECT user_id, app_id, pushkey, app_display_name, device_display_name, profile_tag, lang, data, created_ts FROM pushers WHERE user_id = $1 ORDER BY created_ts",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(pusher_row).collect()
    }

    async fn has_pushers(&self, user_id: &str) -> StoreResult<bool> {
        Ok(sqlx::query("SELECT 1 FROM pushers WHERE user_id = $1 LIMIT 1").bind(user_id).fetch_optional(&self.read).await?.is_some())
    }

    async fn set_pusher(&self, p: &PusherRow, append: bool) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        if !append {
            sqlx::query("DELETE FROM pushers WHERE app_id = $1 AND pushkey = $2 AND user_id <> $3")
                .bind(&p.app_id)
                .bind(&p.pushkey)
                .bind(&p.user_id)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "INSERT INTO pushers (user_id, app_id, pushkey, app_display_name, device_display_name, profile_tag, lang, data, created_ts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, \
             profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data",
        )
        .bind(&p.user_id)
        .bind(&p.app_id)
        .bind(&p.pushkey)
        .bind(&p.app_display_name)
        .bind(&p.device_display_name)
        .bind(&p.profile_tag)
        .bind(&p.lang)
        .bind(&p.data)
        .bind(p.created_ts)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM pushers WHERE user_id = $1 AND app_id = $2 AND pushkey = $3")
            .bind(user_id)
            .bind(app_id)
            .bind(pushkey)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn due_pushes(&self, now: i64, limit: i64) -> StoreResult<Vec<QueuedPush>> {
        let rows = sqlx::query(
            "SELECT user_id, stream_pos, room_id, event_id, highlight, attempts, actions FROM push_queue WHERE next_attempt_ts <= $1 ORDER BY next_attempt_ts, stream_pos LIMIT $2",
        )
        .bind(now)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QueuedPush {
                    user_id: r.try_get(0)?,
                    stream_pos: r.try_get(1)?,
                    room_id: r.try_get(2)?,
                    event_id: r.try_get(3)?,
                    highlight: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                    actions: r.try_get(6)?,
                })
            })
            .collect()
    }

    async fn next_push_due(&self) -> StoreResult<Option<i64>> {
        Ok(sqlx::query("SELECT MIN(next_attempt_ts) FROM push_queue").fetch_one(&self.read).await?.try_get(0)?)
    }

    async fn push_done(&self, user_id: &str, stream_pos: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM push_queue WHERE user_id = $1 AND stream_pos = $2").bind(user_id).bind(stream_pos).execute(&self.write).await?;
        Ok(())
    }

    async fn push_retry(&self, user_id: &str, stream_pos: i64, attempts: i64, next_attempt_ts: i64) -> StoreResult<()> {
        sqlx::query("UPDATE push_queue SET attempts = $3, next_attempt_ts = $4 WHERE user_id = $1 AND stream_pos = $2")
            .bind(user_id)
            .bind(stream_pos)
            .bind(attempts)
            .bind(next_attempt_ts)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
