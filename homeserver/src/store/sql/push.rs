// Push actions, pushers and the push outbox (included by `sqlite.rs` and `postgres.rs` after
// `sql.rs`).

/// Rows a batch of events adds to `push_queue` (members with pushers), as columns.
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
/// before. The dialect's `insert_push_events`, `insert_push_queue` and `upsert_own_reads` write.
async fn insert_push_actions(tx: &mut sqlx::Transaction<'_, Db>, events: &[NewEvent<'_>]) -> StoreResult<()> {
    let mut own: Vec<&NewEvent<'_>> = Vec::new();
    for ev in events.iter().rev().filter(|e| e.marks_read) {
        if !own.iter().any(|o| o.sender == ev.sender) {
            own.push(ev);
        }
    }
    let own = OwnReads {
        rooms: own.iter().map(|e| e.room_id.to_owned()).collect(),
        users: own.iter().map(|e| e.sender.to_owned()).collect(),
        positions: own.iter().map(|e| e.stream_pos).collect(),
    };
    let mut rows = PushEventRows::default();
    let mut queue = PushRows::default();
    for ev in events.iter().filter(|e| !e.push.is_empty()) {
        rows.push(ev);
        for a in ev.push.iter().filter(|a| a.send) {
            queue.push(ev, a);
        }
    }
    write_push_events_and_reads(tx, &rows, &own).await?;
    if !queue.is_empty() {
        insert_push_queue(tx, &queue).await?;
    }
    Ok(())
}

/// Where senders last wrote, as columns (one entry per sender and room).
struct OwnReads {
    rooms: Vec<String>,
    users: Vec<String>,
    positions: Vec<i64>,
}

/// One `push_events` row per event that notifies anyone, as columns.
#[derive(Default)]
struct PushEventRows {
    room_ids: Vec<String>,
    positions: Vec<i64>,
    event_ids: Vec<String>,
    ts: Vec<i64>,
    notify: Vec<String>,
    highlight: Vec<String>,
    actions: Vec<String>,
}

impl PushEventRows {
    fn push(&mut self, ev: &NewEvent<'_>) {
        let list = |users: &mut dyn Iterator<Item = &String>| {
            let mut out = String::from(",");
            for u in users {
                out.push_str(u);
                out.push(',');
            }
            out
        };
        self.room_ids.push(ev.room_id.to_owned());
        self.positions.push(ev.stream_pos);
        self.event_ids.push(ev.event_id.to_owned());
        self.ts.push(ev.origin_server_ts);
        self.notify.push(list(&mut ev.push.iter().map(|a| &a.user_id)));
        self.highlight.push(list(&mut ev.push.iter().filter(|a| a.highlight).map(|a| &a.user_id)));
        let mut actions = String::from("{");
        for (i, a) in ev.push.iter().enumerate() {
            if i > 0 {
                actions.push(',');
            }
            actions.push_str(&serde_json::to_string(&a.user_id).unwrap_or_default());
            actions.push(':');
            actions.push_str(&a.actions);
        }
        actions.push('}');
        self.actions.push(actions);
    }
}

/// `LIKE` pattern matching a user id in a `,@a:x,@b:x,` list.
fn member_pattern(user_id: &str) -> String {
    let escaped = user_id.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%,{escaped},%")
}

/// The columns `insert_push_queue` fills (attempts = 0, the first attempt at the event's time).
const QUEUE_COLUMNS: &str = "user_id, room_id, stream_pos, event_id, actions, highlight, next_attempt_ts, attempts";

impl SqlStore {
    /// Where the user has read up to in each of the rooms (receipts and own writes).
    async fn read_positions(&self, user_id: &str, room_ids: &[String]) -> StoreResult<std::collections::HashMap<String, i64>> {
        let mut read = std::collections::HashMap::new();
        for chunk in room_ids.chunks(100) {
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
            for r in q.fetch_all(&self.read).await? {
                read.insert(r.try_get(0)?, r.try_get(1)?);
            }
        }
        Ok(read)
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
        let read = self.read_positions(user_id, room_ids).await?;
        let pattern = member_pattern(user_id);
        let mut out = Vec::new();
        for chunk in room_ids.chunks(100) {
            // Only the rows after each room's read position, through the (room, position) key.
            let terms: Vec<String> = (0..chunk.len()).map(|i| format!("(room_id = ${} AND stream_pos > ${})", i * 2 + 2, i * 2 + 3)).collect();
            let sql = format!(
                "SELECT room_id, COUNT(*), COALESCE(SUM(CASE WHEN highlight LIKE $1 ESCAPE '\\' THEN 1 ELSE 0 END), 0) FROM push_events \
                 WHERE ({}) AND notify LIKE $1 ESCAPE '\\' GROUP BY room_id",
                terms.join(" OR ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&pattern);
            for id in chunk {
                q = q.bind(id).bind(read.get(id).copied().unwrap_or(0));
            }
            for r in q.fetch_all(&self.read).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(out)
    }

    async fn notifications(&self, user_id: &str, room_ids: &[String], before: Option<i64>, limit: i64, only_highlight: bool) -> StoreResult<Vec<NotificationRow>> {
        if room_ids.is_empty() {
            return Ok(vec![]);
        }
        let read = self.read_positions(user_id, room_ids).await?;
        let mut out: Vec<NotificationRow> = Vec::new();
        for chunk in room_ids.chunks(100) {
            let column = if only_highlight { "p.highlight" } else { "p.notify" };
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, p.actions, p.ts FROM push_events p JOIN events e ON e.stream_pos = p.stream_pos \
                 WHERE p.room_id IN ({}) AND p.stream_pos < $2 AND {column} LIKE $1 ESCAPE '\\' ORDER BY p.stream_pos DESC LIMIT $3",
                in_list(4, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(member_pattern(user_id)).bind(before.unwrap_or(i64::MAX)).bind(limit);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                let event = event_row(&r)?;
                let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&r.try_get::<String, _>(9)?).unwrap_or_default();
                let actions = all.get(user_id).map(|a| a.to_string()).unwrap_or_else(|| "[]".into());
                let read_pos = read.get(&event.room_id).copied().unwrap_or(0);
                out.push(NotificationRow { read: event.stream_pos <= read_pos, actions, ts: r.try_get(10)?, event });
            }
        }
        out.sort_by_key(|n| std::cmp::Reverse(n.event.stream_pos));
        out.truncate(limit as usize);
        Ok(out)
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
