// End-to-end encryption material (included by `sqlite.rs` and `postgres.rs` after `sql.rs`).
// The dialect's `claim_one_time_keys` hands out one-time keys.

/// Removes everything end-to-end encryption kept for devices that are deleted, and records the
/// device-list change at `change_pos`. `devices` None: all of the user's devices except `keep`.
async fn delete_device_keys(
    tx: &mut sqlx::Transaction<'_, Db>,
    user_id: &str,
    devices: Option<&[String]>,
    keep: &str,
    change_pos: i64,
) -> StoreResult<()> {
    for table in ["device_keys", "one_time_keys", "fallback_keys", "to_device"] {
        match devices {
            Some(devices) => {
                for device_id in devices {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2")))
                        .bind(user_id)
                        .bind(device_id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1 AND device_id <> $2")))
                    .bind(user_id)
                    .bind(keep)
                    .execute(&mut **tx)
                    .await?;
            }
        }
    }
    insert_device_list_change(tx, user_id, change_pos).await
}

async fn insert_device_list_change(tx: &mut sqlx::Transaction<'_, Db>, user_id: &str, pos: i64) -> StoreResult<()> {
    sqlx::query("INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(pos)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time: &[OneTimeKeyRow],
        fallback: &[OneTimeKeyRow],
        change_pos: Option<i64>,
    ) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        if let Some(json) = device_keys {
            sqlx::query(
                "INSERT INTO device_keys (user_id, device_id, json) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, device_id) DO UPDATE SET json = excluded.json",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        for chunk in one_time.chunks(100) {
            let values: Vec<String> = (0..chunk.len()).map(|i| format!("($1, $2, ${}, ${}, ${})", 3 + i * 3, 4 + i * 3, 5 + i * 3)).collect();
            let sql = format!(
                "INSERT INTO one_time_keys (user_id, device_id, algorithm, key_id, json) VALUES {} ON CONFLICT DO NOTHING",
                values.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(device_id);
            for k in chunk {
                q = q.bind(&k.algorithm).bind(&k.key_id).bind(&k.json);
            }
            q.execute(&mut *tx).await?;
        }
        for k in fallback {
            sqlx::query(
                "INSERT INTO fallback_keys (user_id, device_id, algorithm, key_id, json, used) VALUES ($1, $2, $3, $4, $5, FALSE) \
                 ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET key_id = excluded.key_id, json = excluded.json, used = FALSE",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(&k.algorithm)
            .bind(&k.key_id)
            .bind(&k.json)
            .execute(&mut *tx)
            .await?;
        }
        if let Some(pos) = change_pos {
            insert_device_list_change(&mut tx, user_id, pos).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn device_keys_of(&self, user_id: &str, device_id: &str) -> StoreResult<Option<String>> {
        let row = sqlx::query("SELECT json FROM device_keys WHERE user_id = $1 AND device_id = $2")
            .bind(user_id)
            .bind(device_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn key_counts(&self, user_id: &str, device_id: &str) -> StoreResult<(Vec<(String, i64)>, Vec<String>)> {
        let rows = sqlx::query(
            "SELECT algorithm, COUNT(*), 0 FROM one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm \
             UNION ALL SELECT algorithm, 0, 1 FROM fallback_keys WHERE user_id = $1 AND device_id = $2 AND NOT used",
        )
        .bind(user_id)
        .bind(device_id)
        .fetch_all(&self.read)
        .await?;
        let (mut counts, mut fallback) = (Vec::new(), Vec::new());
        for r in rows {
            let algorithm: String = r.try_get(0)?;
            if r.try_get::<i32, _>(2)? == 1 {
                fallback.push(algorithm);
            } else {
                counts.push((algorithm, r.try_get(1)?));
            }
        }
        Ok((counts, fallback))
    }

    async fn device_keys(&self, user_ids: &[String]) -> StoreResult<Vec<DeviceKeysRow>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(100) {
            let sql = format!(
                "SELECT k.user_id, k.device_id, k.json, d.display_name FROM device_keys k \
                 LEFT JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id WHERE k.user_id IN ({})",
                in_list(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push(DeviceKeysRow { user_id: r.try_get(0)?, device_id: r.try_get(1)?, json: r.try_get(2)?, display_name: r.try_get(3)? });
            }
        }
        Ok(out)
    }

    async fn claim_keys(&self, wanted: &[(String, String, String)]) -> StoreResult<Vec<ClaimedKey>> {
        let mut tx = self.write.begin().await?;
        let mut claimed = claim_one_time_keys(&mut tx, wanted).await?;
        let served: std::collections::HashSet<(String, String, String)> =
            claimed.iter().map(|c| (c.user_id.clone(), c.device_id.clone(), c.algorithm.clone())).collect();
        // Devices without a one-time key get their fallback key (it stays, marked used).
        for w in wanted {
            if served.contains(w) {
                continue;
            }
            let (user_id, device_id, algorithm) = w;
            let row = sqlx::query(
                "UPDATE fallback_keys SET used = TRUE WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 RETURNING key_id, json",
            )
            .bind(user_id)
            .bind(device_id)
            .bind(algorithm)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(r) = row {
                claimed.push(ClaimedKey {
                    user_id: user_id.clone(),
                    device_id: device_id.clone(),
                    algorithm: algorithm.clone(),
                    key_id: r.try_get(0)?,
                    json: r.try_get(1)?,
                });
            }
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn device_list_changes(&self, from: i64, to: i64) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT DISTINCT user_id FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2")
            .bind(from)
            .bind(to)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn record_device_list_change(&self, user_id: &str, pos: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        insert_device_list_change(&mut tx, user_id, pos).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn device_list_position(&self, user_id: &str) -> StoreResult<i64> {
        Ok(sqlx::query("SELECT COALESCE(MAX(stream_pos), 0) FROM device_list_changes WHERE user_id = $1").bind(user_id).fetch_one(&self.read).await?.try_get(0)?)
    }

    async fn users_sharing_encrypted_rooms(&self, user_id: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT b.state_key FROM current_state a \
             JOIN current_state e ON e.room_id = a.room_id AND e.type = 'm.room.encryption' AND e.state_key = '' \
             JOIN current_state b ON b.room_id = a.room_id AND b.type = 'm.room.member' AND b.membership IN ('join', 'invite') \
             WHERE a.type = 'm.room.member' AND a.state_key = $1 AND a.membership = 'join'",
        )
        .bind(user_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn room_members(&self, room_id: &str) -> StoreResult<Vec<String>> {
        let rows = sqlx::query("SELECT state_key FROM current_state WHERE room_id = $1 AND type = 'm.room.member' AND membership IN ('join', 'invite')")
            .bind(room_id)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    async fn encrypted_rooms(&self, room_ids: &[String]) -> StoreResult<Vec<String>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(100) {
            let sql = format!(
                "SELECT room_id FROM current_state WHERE type = 'm.room.encryption' AND state_key = '' AND room_id IN ({})",
                in_list(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q.bind(r);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push(r.try_get(0)?);
            }
        }
        Ok(out)
    }

    async fn sharing_changes(&self, room_ids: &[String], from: i64, to: i64) -> StoreResult<Vec<SharingChange>> {
        let mut out = Vec::new();
        for chunk in room_ids.chunks(100) {
            let sql = format!(
                "SELECT room_id, type, state_key, membership, stream_pos FROM events WHERE room_id IN ({}) AND stream_pos > $1 AND stream_pos <= $2 \
                 AND type IN ('m.room.member', 'm.room.encryption') AND state_key IS NOT NULL ORDER BY stream_pos",
                in_list(3, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(from).bind(to);
            for r in chunk {
                q = q.bind(r);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push((
                    r.try_get::<i64, _>(4)?,
                    SharingChange { room_id: r.try_get(0)?, event_type: r.try_get(1)?, state_key: r.try_get(2)?, membership: r.try_get(3)? },
                ));
            }
        }
        out.sort_by_key(|(pos, _)| *pos);
        Ok(out.into_iter().map(|(_, c)| c).collect())
    }

    async fn send_to_device(&self, sender: &str, sender_device: &str, txn_id: &str, messages: &[ToDeviceTarget], pos: i64, now: i64) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let fresh = sqlx::query("INSERT INTO to_device_txns (user_id, device_id, txn_id, stream_pos, created_ts) VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING")
            .bind(sender)
            .bind(sender_device)
            .bind(txn_id)
            .bind(pos)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        if !fresh {
            return Ok(false);
        }
        for m in messages {
            // Only devices that exist: a message for a deleted device has nobody to read it.
            sqlx::query(
                "INSERT INTO to_device (user_id, device_id, stream_pos, json) SELECT user_id, device_id, $3, $4 FROM devices \
                 WHERE user_id = $1 AND ($2 IS NULL OR device_id = $2) ON CONFLICT DO NOTHING",
            )
            .bind(&m.user_id)
            .bind(m.device_id.as_deref())
            .bind(pos)
            .bind(&m.json)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn to_device_messages(&self, user_id: &str, device_id: &str, after: i64, upto: i64, limit: i64) -> StoreResult<Vec<(i64, String)>> {
        let rows = sqlx::query(
            "SELECT stream_pos, json FROM to_device WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 AND stream_pos <= $4 ORDER BY stream_pos LIMIT $5",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(after)
        .bind(upto)
        .bind(limit)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> StoreResult<()> {
        // A read first: most syncs acknowledge nothing, and a write would queue behind sends.
        let pending = sqlx::query("SELECT 1 FROM to_device WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3 LIMIT 1")
            .bind(user_id)
            .bind(device_id)
            .bind(upto)
            .fetch_optional(&self.read)
            .await?;
        if pending.is_none() {
            return Ok(());
        }
        sqlx::query("DELETE FROM to_device WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3")
            .bind(user_id)
            .bind(device_id)
            .bind(upto)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn cross_signing_keys(&self, user_ids: &[String]) -> StoreResult<Vec<(String, String, String)>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(100) {
            let sql = format!("SELECT user_id, usage, json FROM cross_signing_keys WHERE user_id IN ({})", in_list(1, chunk.len()));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?));
            }
        }
        Ok(out)
    }

    async fn set_cross_signing_keys(&self, user_id: &str, keys: &[(String, String)], change_pos: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        for (usage, json) in keys {
            sqlx::query(
                "INSERT INTO cross_signing_keys (user_id, usage, json) VALUES ($1, $2, $3) \
                 ON CONFLICT (user_id, usage) DO UPDATE SET json = excluded.json",
            )
            .bind(user_id)
            .bind(usage)
            .bind(json)
            .execute(&mut *tx)
            .await?;
        }
        insert_device_list_change(&mut tx, user_id, change_pos).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn signatures(&self, user_ids: &[String]) -> StoreResult<Vec<SignatureRow>> {
        let mut out = Vec::new();
        for chunk in user_ids.chunks(100) {
            let sql = format!(
                "SELECT target_user, target_key, signer, signer_key_id, signature FROM key_signatures WHERE target_user IN ({})",
                in_list(1, chunk.len())
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for u in chunk {
                q = q.bind(u);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push(SignatureRow {
                    target_user: r.try_get(0)?,
                    target_key: r.try_get(1)?,
                    signer: r.try_get(2)?,
                    signer_key_id: r.try_get(3)?,
                    signature: r.try_get(4)?,
                });
            }
        }
        Ok(out)
    }

    async fn add_signatures(&self, rows: &[SignatureRow], changed: &str, change_pos: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        for r in rows {
            sqlx::query(
                "INSERT INTO key_signatures (target_user, target_key, signer, signer_key_id, signature) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (target_user, target_key, signer, signer_key_id) DO UPDATE SET signature = excluded.signature",
            )
            .bind(&r.target_user)
            .bind(&r.target_key)
            .bind(&r.signer)
            .bind(&r.signer_key_id)
            .bind(&r.signature)
            .execute(&mut *tx)
            .await?;
        }
        insert_device_list_change(&mut tx, changed, change_pos).await?;
        tx.commit().await?;
        Ok(())
    }
}

/// The version's etag and key count.
async fn backup_state(tx: &mut sqlx::Transaction<'_, Db>, user_id: &str, version: i64) -> StoreResult<(i64, i64)> {
    let r = sqlx::query(
        "SELECT v.etag, (SELECT COUNT(*) FROM backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
         FROM backup_versions v WHERE v.user_id = $1 AND v.version = $2",
    )
    .bind(user_id)
    .bind(version)
    .fetch_one(&mut **tx)
    .await?;
    Ok((r.try_get(0)?, r.try_get(1)?))
}

/// The user's current backup version, read inside the writing transaction.
async fn current_backup_version(tx: &mut sqlx::Transaction<'_, Db>, user_id: &str) -> StoreResult<Option<i64>> {
    let r = sqlx::query("SELECT MAX(version) FROM backup_versions WHERE user_id = $1 AND NOT deleted")
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await?;
    Ok(r.try_get(0)?)
}

/// `AND room_id = $n AND session_id = $n+1` for the given scope, placeholders from `next`.
fn backup_scope(room_id: Option<&str>, session_id: Option<&str>, next: usize) -> String {
    let mut sql = String::new();
    if room_id.is_some() {
        sql.push_str(&format!(" AND room_id = ${next}"));
    }
    if session_id.is_some() {
        sql.push_str(&format!(" AND session_id = ${}", next + 1));
    }
    sql
}

#[async_trait]
impl BackupStore for SqlStore {
    async fn create_backup_version(&self, user_id: &str, algorithm: &str, auth_data: &str) -> StoreResult<i64> {
        let mut tx = self.write.begin().await?;
        // Version numbers are never reused, deleted ones included.
        let r = sqlx::query(
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data, etag, deleted) \
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3, 0, FALSE FROM backup_versions WHERE user_id = $1 RETURNING version",
        )
        .bind(user_id)
        .bind(algorithm)
        .bind(auth_data)
        .fetch_one(&mut *tx)
        .await
        .map_err(unique)?;
        tx.commit().await?;
        Ok(r.try_get(0)?)
    }

    async fn backup_version(&self, user_id: &str, version: Option<i64>) -> StoreResult<Option<BackupVersionRow>> {
        let row = sqlx::query(
            "SELECT v.version, v.algorithm, v.auth_data, v.etag, (SELECT COUNT(*) FROM backup_keys k WHERE k.user_id = v.user_id AND k.version = v.version) \
             FROM backup_versions v WHERE v.user_id = $1 AND NOT v.deleted AND ($2 IS NULL OR v.version = $2) ORDER BY v.version DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(version)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(BackupVersionRow { version: r.try_get(0)?, algorithm: r.try_get(1)?, auth_data: r.try_get(2)?, etag: r.try_get(3)?, count: r.try_get(4)? })
        })
        .transpose()
    }

    async fn update_backup_version(&self, user_id: &str, version: i64, auth_data: &str) -> StoreResult<bool> {
        Ok(sqlx::query("UPDATE backup_versions SET auth_data = $3 WHERE user_id = $1 AND version = $2 AND NOT deleted")
            .bind(user_id)
            .bind(version)
            .bind(auth_data)
            .execute(&self.write)
            .await?
            .rows_affected()
            == 1)
    }

    async fn delete_backup_version(&self, user_id: &str, version: i64) -> StoreResult<bool> {
        let mut tx = self.write.begin().await?;
        let found = sqlx::query("UPDATE backup_versions SET deleted = TRUE WHERE user_id = $1 AND version = $2 AND NOT deleted")
            .bind(user_id)
            .bind(version)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
        sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2").bind(user_id).bind(version).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(found)
    }

    async fn put_backup_keys(&self, user_id: &str, version: i64, keys: &[BackupKeyRow]) -> StoreResult<BackupWrite> {
        let mut tx = self.write.begin().await?;
        // Lock the version row: writes to one backup go one at a time.
        sqlx::query("UPDATE backup_versions SET etag = etag WHERE user_id = $1 AND version = $2").bind(user_id).bind(version).execute(&mut *tx).await?;
        let current = current_backup_version(&mut tx, user_id).await?;
        if current != Some(version) {
            return Ok(BackupWrite::WrongVersion { current });
        }
        let mut changed = 0;
        for k in keys {
            changed += sqlx::query(
                "INSERT INTO backup_keys (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET \
                 first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count, \
                 is_verified = excluded.is_verified, session_data = excluded.session_data \
                 WHERE (excluded.is_verified AND NOT backup_keys.is_verified) \
                 OR (excluded.is_verified = backup_keys.is_verified AND (excluded.first_message_index < backup_keys.first_message_index \
                 OR (excluded.first_message_index = backup_keys.first_message_index AND excluded.forwarded_count < backup_keys.forwarded_count)))",
            )
            .bind(user_id)
            .bind(version)
            .bind(&k.room_id)
            .bind(&k.session_id)
            .bind(k.first_message_index)
            .bind(k.forwarded_count)
            .bind(k.is_verified)
            .bind(&k.session_data)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        if changed > 0 {
            sqlx::query("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2").bind(user_id).bind(version).execute(&mut *tx).await?;
        }
        let (etag, count) = backup_state(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(BackupWrite::Done { etag, count })
    }

    async fn backup_keys(&self, user_id: &str, version: i64, room_id: Option<&str>, session_id: Option<&str>) -> StoreResult<Vec<BackupKeyRow>> {
        let sql = format!(
            "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data FROM backup_keys \
             WHERE user_id = $1 AND version = $2{} ORDER BY room_id, session_id",
            backup_scope(room_id, session_id, 3)
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(version);
        if let Some(r) = room_id {
            q = q.bind(r);
        }
        if let Some(s) = session_id {
            q = q.bind(s);
        }
        q.fetch_all(&self.read)
            .await?
            .iter()
            .map(|r| {
                Ok(BackupKeyRow {
                    room_id: r.try_get(0)?,
                    session_id: r.try_get(1)?,
                    first_message_index: r.try_get(2)?,
                    forwarded_count: r.try_get(3)?,
                    is_verified: r.try_get(4)?,
                    session_data: r.try_get(5)?,
                })
            })
            .collect()
    }

    async fn delete_backup_keys(&self, user_id: &str, version: i64, room_id: Option<&str>, session_id: Option<&str>) -> StoreResult<BackupWrite> {
        let mut tx = self.write.begin().await?;
        sqlx::query("UPDATE backup_versions SET etag = etag WHERE user_id = $1 AND version = $2").bind(user_id).bind(version).execute(&mut *tx).await?;
        let current = current_backup_version(&mut tx, user_id).await?;
        if current != Some(version) {
            return Ok(BackupWrite::WrongVersion { current });
        }
        let sql = format!("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2{}", backup_scope(room_id, session_id, 3));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(version);
        if let Some(r) = room_id {
            q = q.bind(r);
        }
        if let Some(s) = session_id {
            q = q.bind(s);
        }
        if q.execute(&mut *tx).await?.rows_affected() > 0 {
            sqlx::query("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2").bind(user_id).bind(version).execute(&mut *tx).await?;
        }
        let (etag, count) = backup_state(&mut tx, user_id, version).await?;
        tx.commit().await?;
        Ok(BackupWrite::Done { etag, count })
    }
}
