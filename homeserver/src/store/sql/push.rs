// Push actions, pushers and the push outbox (included by `sqlite.rs` and `postgres.rs` after
// `sql.rs`).

/// The position the user has read up to in the room `p.room_id` (bound as `$1` = user).
const READ_UP_TO: &str = "COALESCE((SELECT MAX(r.event_pos) FROM (SELECT event_pos FROM receipts WHERE room_id = p.room_id AND user_id = $1 \
     AND receipt_type IN ('m.read', 'm.read.private') AND thread_id IN ('', 'main') \
     UNION ALL SELECT event_pos FROM own_reads WHERE room_id = p.room_id AND user_id = $1) r), 0)";

/// Rows a batch of events adds to `push_actions` (and `push_queue`, where `send`), as columns.
#[derive(Default)]
struct PushRows {
    user_ids: Vec<String>,
    room_ids: Vec<String>,
    positions: Vec<i64>,
    event_ids: Vec<String>,
    actions: Vec<String>,
    highlights: Vec<bool>,
    ts: Vec<i64>,
}

impl PushRows {
    fn push(&mut self, ev: &NewEvent<'_>, a: &NewPushAction) {
        self.user_ids.push(a.user_id.clone());
        self.room_ids.push(ev.room_id.to_owned());
        self.positions.push(ev.stream_pos);
        self.event_ids.push(ev.event_id.to_owned());
        self.actions.push(a.actions.clone());
        self.highlights.push(a.highlight);
        self.ts.push(ev.origin_server_ts);
    }

    fn is_empty(&self) -> bool {
        self.user_ids.is_empty()
    }
}

/// Writes the push actions (and queued pushes) of a batch of events, inside its transaction,
/// and where each sender last wrote (`own_reads`): whoever writes in a room has seen what came
/// before. The dialect's `insert_push_rows`/`upsert_own_reads` do the writing.
async fn insert_push_actions(tx: &mut sqlx::Transaction<'_, Db>, events: &[NewEvent<'_>]) -> StoreResult<()> {
    let mut own: Vec<&NewEvent<'_>> = Vec::new();
    for ev in events.iter().rev().filter(|e| e.marks_read) {
        if !own.iter().any(|o| o.sender == ev.sender) {
            own.push(ev);
        }
    }
    if !own.is_empty() {
        let rooms: Vec<String> = own.iter().map(|e| e.room_id.to_owned()).collect();
        let users: Vec<String> = own.iter().map(|e| e.sender.to_owned()).collect();
        let positions: Vec<i64> = own.iter().map(|e| e.stream_pos).collect();
        upsert_own_reads(tx, &rooms, &users, &positions).await?;
    }
    let mut actions = PushRows::default();
    let mut queue = PushRows::default();
    for ev in events {
        for a in ev.push {
            actions.push(ev, a);
            if a.send {
                queue.push(ev, a);
            }
        }
    }
    if !actions.is_empty() {
        insert_push_rows(tx, "push_actions", &actions).await?;
    }
    if !queue.is_empty() {
        insert_push_rows(tx, "push_queue", &queue).await?;
    }
    Ok(())
}

/// The columns `insert_push_rows` fills, per table (the queue also gets attempts = 0 and its
/// first attempt at the event's time).
fn push_columns(table: &str) -> &'static str {
    if table == "push_queue" {
        "user_id, room_id, stream_pos, event_id, actions, highlight, next_attempt_ts, attempts"
    } else {
        "user_id, room_id, stream_pos, event_id, actions, highlight, ts"
    }
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
        device_id: r.try_get(9)?,
    })
}

#[async_trait]
impl PushStore for SqlStore {
    async fn unread_counts(&self, user_id: &str, room_ids: &[String]) -> StoreResult<Vec<(String, i64, i64)>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(100) {
            // Where the user has read up to in each room, then only the actions after it: the
            // count reads the unread rows through the (user, room, position) key, nothing else.
            let rooms = in_list(2, chunk.len());
            let sql = format!(
                "SELECT room_id, MAX(event_pos) FROM (SELECT room_id, event_pos FROM receipts WHERE user_id = $1 AND room_id IN ({rooms}) \
                 AND receipt_type IN ('m.read', 'm.read.private') AND thread_id IN ('', 'main') \
                 UNION ALL SELECT room_id, event_pos FROM own_reads WHERE user_id = $1 AND room_id IN ({rooms})) r GROUP BY room_id"
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
            "SELECT user_id, app_id, pushkey, app_display_name, device_display_name, profile_tag, lang, data, created_ts, device_id FROM pushers WHERE user_id = $1 ORDER BY created_ts",
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
            "INSERT INTO pushers (user_id, app_id, pushkey, app_display_name, device_display_name, profile_tag, lang, data, created_ts, device_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (app_id, pushkey, user_id) DO UPDATE SET app_display_name = excluded.app_display_name, device_display_name = excluded.device_display_name, \
             profile_tag = excluded.profile_tag, lang = excluded.lang, data = excluded.data, device_id = excluded.device_id",
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
        .bind(&p.device_id)
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
