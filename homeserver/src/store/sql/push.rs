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

/// Queues the pushes of a batch of events (members with pushers), inside its transaction. The
/// push actions themselves are columns of the event rows (`push_columns`).
async fn insert_push_queue_rows(tx: &mut sqlx::Transaction<'_, Db>, events: &[NewEvent<'_>]) -> StoreResult<()> {
    let mut queue = PushRows::default();
    for ev in events {
        for a in ev.push.iter().filter(|a| a.send) {
            queue.push(ev, a);
        }
    }
    if !queue.is_empty() {
        insert_push_queue(tx, &queue).await?;
    }
    Ok(())
}

/// An event's `push_notify`, `push_highlight` and `push_actions` columns: the members it notifies
/// and highlights as `,@a:x,@b:x,` lists and the actions as a map of user id → actions; NULL
/// when there are none.
fn push_columns(push: &[NewPushAction]) -> (Option<String>, Option<String>, Option<String>) {
    if push.is_empty() {
        return (None, None, None);
    }
    let list = |users: &mut dyn Iterator<Item = &String>| {
        let mut out = String::from(",");
        for u in users {
            out.push_str(u);
            out.push(',');
        }
        (out.len() > 1).then_some(out)
    };
    let notify = list(&mut push.iter().map(|a| &a.user_id));
    let highlight = list(&mut push.iter().filter(|a| a.highlight).map(|a| &a.user_id));
    let mut actions = String::from("{");
    for (i, a) in push.iter().enumerate() {
        if i > 0 {
            actions.push(',');
        }
        actions.push_str(&serde_json::to_string(&a.user_id).unwrap_or_default());
        actions.push(':');
        actions.push_str(&a.actions);
    }
    actions.push('}');
    (notify, highlight, Some(actions))
}

/// `LIKE` pattern matching a user id in a `,@a:x,@b:x,` list.
fn member_pattern(user_id: &str) -> String {
    let escaped = user_id.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
    format!("%,{escaped},%")
}

/// The columns `insert_push_queue` fills (attempts = 0, the first attempt at the event's time).
const QUEUE_COLUMNS: &str = "user_id, room_id, stream_pos, event_id, actions, highlight, next_attempt_ts, attempts";

impl SqlStore {
    /// Where the user's read receipts (unthreaded or main thread) are in each of the rooms.
    async fn receipt_positions(&self, user_id: &str, room_ids: &[String]) -> StoreResult<std::collections::HashMap<String, i64>> {
        let mut read = std::collections::HashMap::new();
        for chunk in room_ids.chunks(100) {
            let sql = format!(
                "SELECT room_id, MAX(event_pos) FROM receipts WHERE user_id = $1 AND room_id IN ({}) \
                 AND receipt_type IN ('m.read', 'm.read.private') AND thread_id IN ('', 'main') GROUP BY room_id",
                in_list(2, chunk.len())
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

    /// Where the user has read up to in each of the rooms: their receipts, or a later event of
    /// their own (whoever writes has read what came before).
    async fn read_positions(&self, user_id: &str, room_ids: &[String]) -> StoreResult<std::collections::HashMap<String, i64>> {
        let mut read = self.receipt_positions(user_id, room_ids).await?;
        for chunk in room_ids.chunks(100) {
            let sql = format!(
                "SELECT room_id, MAX(stream_pos) FROM events WHERE ({}) AND sender = $1 AND read_by_sender GROUP BY room_id",
                after_positions(2, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id);
            for id in chunk {
                q = q.bind(id).bind(read.get(id).copied().unwrap_or(0));
            }
            for r in q.fetch_all(&self.read).await? {
                read.insert(r.try_get(0)?, r.try_get(1)?);
            }
        }
        Ok(read)
    }
}

/// `(room_id = $n AND stream_pos > $n+1) OR …` for `count` rooms from placeholder `first` on:
/// each term is a range of the (room_id, stream_pos) index.
fn after_positions(first: usize, count: usize) -> String {
    let terms: Vec<String> = (0..count).map(|i| format!("(room_id = ${} AND stream_pos > ${})", first + i * 2, first + i * 2 + 1)).collect();
    terms.join(" OR ")
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
    async fn read_receipts(&self, user_id: &str, room_ids: &[String]) -> StoreResult<std::collections::HashMap<String, i64>> {
        self.receipt_positions(user_id, room_ids).await
    }

    async fn unread_between(&self, user_id: &str, ranges: &[(String, i64)], upto: i64) -> StoreResult<Vec<UnreadSpan>> {
        let pattern = member_pattern(user_id);
        let mut out = Vec::new();
        for chunk in ranges.chunks(100) {
            // One pass over each room's range (ranges of the (room, position) index): the
            // user's last own write in it, and what notifies the user after that write.
            let sql = format!(
                "SELECT room_id, MAX(own), COALESCE(SUM(CASE WHEN n AND stream_pos > own THEN 1 ELSE 0 END), 0), \
                 COALESCE(SUM(CASE WHEN h AND stream_pos > own THEN 1 ELSE 0 END), 0) FROM (\
                   SELECT room_id, stream_pos, push_notify LIKE $1 ESCAPE '\\' AS n, push_highlight LIKE $1 ESCAPE '\\' AS h, \
                   MAX(CASE WHEN sender = $2 AND read_by_sender THEN stream_pos ELSE 0 END) OVER (PARTITION BY room_id) AS own \
                   FROM events WHERE ({}) AND stream_pos <= $3 AND ((sender = $2 AND read_by_sender) OR push_notify LIKE $1 ESCAPE '\\')\
                 ) r GROUP BY room_id",
                after_positions(4, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&pattern).bind(user_id).bind(upto);
            for (room, after) in chunk {
                q = q.bind(room).bind(after);
            }
            for r in q.fetch_all(&self.read).await? {
                let own: i64 = r.try_get(1)?;
                out.push(UnreadSpan { room_id: r.try_get(0)?, own_write: own > 0, notifications: r.try_get(2)?, highlights: r.try_get(3)? });
            }
        }
        Ok(out)
    }

    async fn unread_badge(&self, user_id: &str, room_ids: &[String], per_room: i64) -> StoreResult<i64> {
        let read = self.receipt_positions(user_id, room_ids).await?;
        let pattern = member_pattern(user_id);
        let mut total = 0;
        for chunk in room_ids.chunks(50) {
            // Per room the newest events after the receipt, newest first: notifying ones count
            // until the user's own message (whoever writes has read what came before).
            let branches: Vec<String> = (0..chunk.len())
                .map(|i| {
                    format!(
                        "SELECT * FROM (SELECT room_id, stream_pos, CASE WHEN sender = $2 AND read_by_sender THEN 1 ELSE 0 END AS own, \
                         CASE WHEN push_notify LIKE $1 ESCAPE '\\' THEN 1 ELSE 0 END AS n FROM events \
                         WHERE room_id = ${} AND stream_pos > ${} AND (push_notify LIKE $1 ESCAPE '\\' OR (sender = $2 AND read_by_sender)) \
                         ORDER BY stream_pos DESC LIMIT $3) AS r{i}",
                        4 + i * 2,
                        5 + i * 2
                    )
                })
                .collect();
            let sql = branches.join(" UNION ALL ");
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(&pattern).bind(user_id).bind(per_room);
            for id in chunk {
                q = q.bind(id).bind(read.get(id).copied().unwrap_or(0));
            }
            let mut rows: Vec<(String, i64, i32, i32)> = Vec::new();
            for r in q.fetch_all(&self.read).await? {
                rows.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?));
            }
            rows.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            let mut room: Option<&str> = None;
            let mut stopped = false;
            for (room_id, _, own, n) in &rows {
                if room != Some(room_id.as_str()) {
                    room = Some(room_id);
                    stopped = false;
                }
                if stopped {
                    continue;
                }
                if *own == 1 {
                    stopped = true;
                } else if *n == 1 {
                    total += 1;
                }
            }
        }
        Ok(total)
    }

    async fn notifications(&self, user_id: &str, room_ids: &[String], before: Option<i64>, limit: i64, only_highlight: bool) -> StoreResult<Vec<NotificationRow>> {
        if room_ids.is_empty() {
            return Ok(vec![]);
        }
        let read = self.read_positions(user_id, room_ids).await?;
        let mut out: Vec<NotificationRow> = Vec::new();
        for chunk in room_ids.chunks(100) {
            let column = if only_highlight { "e.push_highlight" } else { "e.push_notify" };
            let sql = format!(
                "SELECT {EVENT_COLUMNS}, e.push_actions, e.origin_server_ts FROM events e \
                 WHERE e.room_id IN ({}) AND e.stream_pos < $2 AND {column} LIKE $1 ESCAPE '\\' ORDER BY e.stream_pos DESC LIMIT $3",
                in_list(4, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(member_pattern(user_id)).bind(before.unwrap_or(i64::MAX)).bind(limit);
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                let event = event_row(&r)?;
                let all: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&r.try_get::<String, _>(EVENT_COLUMN_COUNT)?).unwrap_or_default();
                let actions = all.get(user_id).map(|a| a.to_string()).unwrap_or_else(|| "[]".into());
                let read_pos = read.get(&event.room_id).copied().unwrap_or(0);
                out.push(NotificationRow { read: event.stream_pos <= read_pos, actions, ts: r.try_get(EVENT_COLUMN_COUNT + 1)?, event });
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

    async fn pushers_of(&self, user_ids: &[String]) -> StoreResult<Vec<PusherRow>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(500) {
            let sql = format!(
                "SELECT user_id, app_id, pushkey, app_display_name, device_display_name, profile_tag, lang, data, created_ts, device_id FROM pushers WHERE user_id IN ({}) ORDER BY created_ts",
                in_list(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push(pusher_row(&r)?);
            }
        }
        Ok(out)
    }

    async fn settle_pushes(&self, done: &[(String, i64)], retries: &[PushRetry]) -> StoreResult<()> {
        if done.is_empty() && retries.is_empty() {
            return Ok(());
        }
        let mut tx = self.write.begin().await?;
        for chunk in done.chunks(400) {
            let pairs: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2)).collect();
            let sql = format!("DELETE FROM push_queue WHERE (user_id, stream_pos) IN ({})", pairs.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (user, pos) in chunk {
                q = q.bind(user).bind(pos);
            }
            q.execute(&mut *tx).await?;
        }
        for r in retries {
            sqlx::query("UPDATE push_queue SET attempts = $3, next_attempt_ts = $4 WHERE user_id = $1 AND stream_pos = $2")
                .bind(&r.user_id)
                .bind(r.stream_pos)
                .bind(r.attempts)
                .bind(r.next_attempt_ts)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
