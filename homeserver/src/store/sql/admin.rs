// Reports, server notices and the admin API's own tables (included by `sqlite.rs` and
// `postgres.rs` after `sql.rs`).

const REPORT_COLUMNS: &str = "id, room_id, event_id, event_sender, reporter, reason, score, created_ts, handled_ts, handled_by";

fn report_row(r: &DbRow) -> StoreResult<ReportRow> {
    Ok(ReportRow {
        id: r.try_get(0)?,
        room_id: r.try_get(1)?,
        event_id: r.try_get(2)?,
        event_sender: r.try_get(3)?,
        reporter: r.try_get(4)?,
        reason: r.try_get(5)?,
        score: r.try_get(6)?,
        created_ts: r.try_get(7)?,
        handled_ts: r.try_get(8)?,
        handled_by: r.try_get(9)?,
    })
}

#[async_trait]
impl ReportStore for SqlStore {
    async fn add_report(&self, r: &ReportRow) -> StoreResult<i64> {
        let row = sqlx::query(
            "INSERT INTO reports (room_id, event_id, event_sender, reporter, reason, score, created_ts) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(&r.room_id)
        .bind(&r.event_id)
        .bind(&r.event_sender)
        .bind(&r.reporter)
        .bind(&r.reason)
        .bind(r.score)
        .bind(r.created_ts)
        .fetch_one(&self.write)
        .await?;
        Ok(row.try_get(0)?)
    }

    async fn reports(&self, handled: Option<bool>, room_id: Option<&str>, before: Option<i64>, limit: i64) -> StoreResult<Vec<ReportRow>> {
        let handled_sql = match handled {
            None => "",
            Some(true) => " AND handled_ts IS NOT NULL",
            Some(false) => " AND handled_ts IS NULL",
        };
        let sql = format!("SELECT {REPORT_COLUMNS} FROM reports WHERE id < $1 AND ($2 = '' OR room_id = $2){handled_sql} ORDER BY id DESC LIMIT $3");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(before.unwrap_or(i64::MAX))
            .bind(room_id.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(report_row).collect()
    }

    async fn mark_report_handled(&self, id: i64, by: &str, now: i64) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE reports SET handled_ts = $2, handled_by = $3 WHERE id = $1 AND handled_ts IS NULL")
            .bind(id)
            .bind(now)
            .bind(by)
            .execute(&self.write)
            .await?;
        Ok(done.rows_affected() == 1)
    }
}

fn notice_job(r: &DbRow) -> StoreResult<NoticeJob> {
    Ok(NoticeJob {
        id: r.try_get(0)?,
        content: r.try_get(1)?,
        created_by: r.try_get(2)?,
        created_ts: r.try_get(3)?,
        cursor: r.try_get(4)?,
        sent: r.try_get(5)?,
        done_ts: r.try_get(6)?,
    })
}

const NOTICE_JOB_COLUMNS: &str = "id, content, created_by, created_ts, cursor, sent, done_ts";

#[async_trait]
impl NoticeStore for SqlStore {
    async fn notice_room(&self, user_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT room_id FROM server_notice_rooms WHERE user_id = $1").bind(user_id).fetch_optional(&self.read).await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn set_notice_room(&self, user_id: &str, room_id: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO server_notice_rooms (user_id, room_id) VALUES ($1, $2) ON CONFLICT (user_id) DO UPDATE SET room_id = excluded.room_id")
            .bind(user_id)
            .bind(room_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn create_notice_job(&self, content: &str, by: &str, now: i64) -> StoreResult<i64> {
        let row = sqlx::query("INSERT INTO notice_jobs (content, created_by, created_ts, cursor, sent) VALUES ($1, $2, $3, '', 0) RETURNING id")
            .bind(content)
            .bind(by)
            .bind(now)
            .fetch_one(&self.write)
            .await?;
        Ok(row.try_get(0)?)
    }

    async fn notice_job(&self, id: i64) -> StoreResult<Option<NoticeJob>> {
        let sql = format!("SELECT {NOTICE_JOB_COLUMNS} FROM notice_jobs WHERE id = $1");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.read).await?;
        row.as_ref().map(notice_job).transpose()
    }

    async fn unfinished_notice_jobs(&self) -> StoreResult<Vec<NoticeJob>> {
        let sql = format!("SELECT {NOTICE_JOB_COLUMNS} FROM notice_jobs WHERE done_ts IS NULL ORDER BY id");
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).fetch_all(&self.read).await?;
        rows.iter().map(notice_job).collect()
    }

    async fn advance_notice_job(&self, id: i64, cursor: &str, sent: i64, done_ts: Option<i64>) -> StoreResult<()> {
        sqlx::query("UPDATE notice_jobs SET cursor = $2, sent = $3, done_ts = $4 WHERE id = $1")
            .bind(id)
            .bind(cursor)
            .bind(sent)
            .bind(done_ts)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn active_users_after(&self, after: &str, limit: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT user_id FROM users WHERE user_id > $1 AND NOT deactivated ORDER BY user_id LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        hashes(rows)
    }
}

#[async_trait]
impl AdminStore for SqlStore {
    async fn replace_admin_token(&self, token_hash: &str, now: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query("DELETE FROM admin_tokens").execute(&mut *tx).await?;
        sqlx::query("INSERT INTO admin_tokens (token_hash, created_ts) VALUES ($1, $2)").bind(token_hash).bind(now).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn admin_token_exists(&self, token_hash: &str) -> StoreResult<bool> {
        Ok(sqlx::query("SELECT 1 FROM admin_tokens WHERE token_hash = $1").bind(token_hash).fetch_optional(&self.read).await?.is_some())
    }

    async fn audit(&self, actor: &str, action: &str, target: Option<&str>, details: Option<&str>, now: i64) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("INSERT INTO admin_audit (actor, action, target, details, ts) VALUES ($1, $2, $3, $4, $5) RETURNING id")
            .bind(actor)
            .bind(action)
            .bind(target)
            .bind(details)
            .bind(now)
            .fetch_one(&self.write)
            .await?)
    }

    async fn audit_outcome(&self, id: i64, outcome: &str) -> StoreResult<()> {
        sqlx::query("UPDATE admin_audit SET outcome = $1 WHERE id = $2").bind(outcome).bind(id).execute(&self.write).await?;
        Ok(())
    }

    async fn audit_log(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditRow>> {
        let rows = sqlx::query("SELECT id, actor, action, target, details, ts, outcome FROM admin_audit WHERE id < $1 ORDER BY id DESC LIMIT $2")
            .bind(before.unwrap_or(i64::MAX))
            .bind(limit)
            .fetch_all(&self.read)
            .await?;
        rows.iter()
            .map(|r| Ok(AuditRow { id: r.try_get(0)?, actor: r.try_get(1)?, action: r.try_get(2)?, target: r.try_get(3)?, details: r.try_get(4)?, ts: r.try_get(5)?, outcome: r.try_get(6)? }))
            .collect()
    }

    async fn setting(&self, key: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT value FROM tenant_settings WHERE key = $1").bind(key).fetch_optional(&self.read).await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO tenant_settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn rooms(&self, after: Option<&str>, limit: i64) -> StoreResult<Vec<RoomSummaryRow>> {
        let rows = sqlx::query(
            "SELECT r.room_id, r.creator, r.created_ts, \
             (SELECT COUNT(*) FROM current_state c WHERE c.room_id = r.room_id AND c.type = 'm.room.member' AND c.membership = 'join'), \
             (SELECT COUNT(*) FROM current_state c WHERE c.room_id = r.room_id AND c.type = 'm.room.member' AND c.membership = 'invite'), \
             EXISTS (SELECT 1 FROM current_state c WHERE c.room_id = r.room_id AND c.type = 'm.room.encryption') \
             FROM rooms r WHERE r.room_id > $1 ORDER BY r.room_id LIMIT $2",
        )
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RoomSummaryRow {
                    room_id: r.try_get(0)?,
                    creator: r.try_get(1)?,
                    created_ts: r.try_get(2)?,
                    joined: r.try_get(3)?,
                    invited: r.try_get(4)?,
                    encrypted: r.try_get(5)?,
                })
            })
            .collect()
    }
}
