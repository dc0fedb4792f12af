// The room's event graph (included by `sqlite.rs` and `postgres.rs` after `sql.rs`): edges,
// events outside the timeline, and the walks federation needs, each one SQL statement.

/// One event's edges, as written with it.
struct GraphEdges<'a> {
    event_id: &'a str,
    room_id: &'a str,
    prev: &'a [String],
    auth: &'a [String],
}

/// Writes the `prev_events` and `auth_events` edges of events (multi-row; repeats ignored).
async fn insert_edges(tx: &mut sqlx::Transaction<'_, Db>, events: &[GraphEdges<'_>]) -> StoreResult<()> {
    let prev: Vec<(&str, &str, &str)> = events.iter().flat_map(|e| e.prev.iter().map(move |p| (e.event_id, p.as_str(), e.room_id))).collect();
    for chunk in prev.chunks(300) {
        let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${}, ${})", i * 3 + 1, i * 3 + 2, i * 3 + 3)).collect();
        let sql = format!("INSERT INTO event_edges (event_id, prev_event_id, room_id) VALUES {} ON CONFLICT DO NOTHING", values.join(", "));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (event, prev, room) in chunk {
            q = q.bind(*event).bind(*prev).bind(*room);
        }
        q.execute(&mut **tx).await?;
    }
    let auth: Vec<(&str, &str)> = events.iter().flat_map(|e| e.auth.iter().map(move |a| (e.event_id, a.as_str()))).collect();
    for chunk in auth.chunks(400) {
        let values: Vec<String> = (0..chunk.len()).map(|i| format!("(${}, ${})", i * 2 + 1, i * 2 + 2)).collect();
        let sql = format!("INSERT INTO event_auth_edges (event_id, auth_event_id) VALUES {} ON CONFLICT DO NOTHING", values.join(", "));
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (event, auth) in chunk {
            q = q.bind(*event).bind(*auth);
        }
        q.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Stores an event outside the timeline unless it is known (there or in the timeline);
/// whether it was stored now.
async fn insert_outside(tx: &mut sqlx::Transaction<'_, Db>, ev: &OutsideEvent<'_>) -> StoreResult<bool> {
    let done = sqlx::query(
        "INSERT INTO events_outside_timeline (event_id, room_id, depth, json, status, reason, received_ts) \
         SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM events WHERE event_id = $1) \
         ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(ev.event_id)
    .bind(ev.room_id)
    .bind(ev.depth)
    .bind(ev.json)
    .bind(ev.status.as_str())
    .bind(ev.reason)
    .bind(ev.received_ts)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

fn stored_pdu(r: &DbRow) -> StoreResult<StoredPdu> {
    let status: Option<String> = r.try_get(4)?;
    Ok(StoredPdu {
        event_id: r.try_get(0)?,
        room_id: r.try_get(1)?,
        depth: r.try_get(2)?,
        json: r.try_get(3)?,
        status: status.as_deref().map(EventStatus::parse).transpose()?,
        reason: r.try_get(5)?,
    })
}

#[async_trait]
impl GraphStore for SqlStore {
    async fn store_outside_timeline(&self, events: &[OutsideEvent<'_>]) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        let mut inserted = Vec::with_capacity(events.len());
        for ev in events {
            if insert_outside(&mut tx, ev).await? {
                inserted.push(ev);
            }
        }
        // Edges only for events stored now: a known event keeps the edges it came with.
        let edges: Vec<GraphEdges<'_>> = inserted.iter().map(|e| GraphEdges { event_id: e.event_id, room_id: e.room_id, prev: e.prev_events, auth: e.auth_events }).collect();
        insert_edges(&mut tx, &edges).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn pdus(&self, event_ids: &[String]) -> StoreResult<Vec<StoredPdu>> {
        let mut out = Vec::with_capacity(event_ids.len());
        for chunk in event_ids.chunks(400) {
            let list = in_list(1, chunk.len());
            let sql = format!(
                "SELECT event_id, room_id, depth, json, NULL, NULL FROM events WHERE event_id IN ({list}) \
                 UNION ALL SELECT event_id, room_id, depth, json, status, reason FROM events_outside_timeline WHERE event_id IN ({list})"
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for id in chunk {
                q = q.bind(id);
            }
            for r in q.fetch_all(&self.read).await? {
                out.push(stored_pdu(&r)?);
            }
        }
        Ok(out)
    }

    async fn auth_chain(&self, event_ids: &[String]) -> StoreResult<Vec<String>> {
        if event_ids.is_empty() {
            return Ok(vec![]);
        }
        let sql = format!(
            "WITH RECURSIVE chain(event_id) AS ( \
                 SELECT auth_event_id FROM event_auth_edges WHERE event_id IN ({}) \
                 UNION SELECT a.auth_event_id FROM event_auth_edges a JOIN chain c ON a.event_id = c.event_id \
             ) SELECT event_id FROM chain ORDER BY event_id",
            in_list(1, event_ids.len())
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in event_ids {
            q = q.bind(id);
        }
        hashes(q.fetch_all(&self.read).await?)
    }

    async fn walk_back(&self, room_id: &str, from: &[String], stop: &[String], min_depth: i64, limit: i64, include_from: bool) -> StoreResult<Vec<StoredPdu>> {
        if from.is_empty() || limit <= 0 {
            return Ok(vec![]);
        }
        // The walk stays within `limit` levels of depth below the newest starting point, so a
        // page costs what it returns, not the size of the room.
        let top_list = in_list(1, from.len());
        let top_sql = format!(
            "SELECT MAX(depth) FROM (SELECT depth FROM events WHERE event_id IN ({top_list}) \
             UNION ALL SELECT depth FROM events_outside_timeline WHERE event_id IN ({top_list})) d"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(top_sql));
        for id in from {
            q = q.bind(id);
        }
        let top: Option<i64> = q.fetch_one(&self.read).await?.try_get(0)?;
        let Some(top) = top else { return Ok(vec![]) };
        let floor = min_depth.max(top.saturating_sub(limit));
        let from_list = in_list(3, from.len());
        let stop_list = in_list(3 + from.len(), stop.len());
        let not_stop = |col: &str| if stop.is_empty() { String::new() } else { format!(" AND {col} NOT IN ({stop_list})") };
        let seed = if include_from { format!(" UNION SELECT event_id FROM events WHERE event_id IN ({from_list})") } else { String::new() };
        let sql = format!(
            "WITH RECURSIVE walk(event_id) AS ( \
                 SELECT prev_event_id FROM event_edges WHERE event_id IN ({from_list}){seed} \
                 UNION SELECT ed.prev_event_id FROM walk w JOIN events e ON e.event_id = w.event_id AND e.depth >= $1 \
                 JOIN event_edges ed ON ed.event_id = w.event_id WHERE TRUE{} \
             ) SELECT e.event_id, e.room_id, e.depth, e.json, NULL, NULL FROM walk w JOIN events e ON e.event_id = w.event_id \
             WHERE e.room_id = $2 AND e.depth >= $1{} ORDER BY e.depth DESC, e.stream_pos DESC LIMIT {}",
            not_stop("w.event_id"),
            not_stop("e.event_id"),
            limit
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(floor).bind(room_id);
        for id in from.iter().chain(stop) {
            q = q.bind(id);
        }
        q.fetch_all(&self.read).await?.iter().map(stored_pdu).collect()
    }

    async fn backward_extremities(&self, room_id: &str) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT ed.prev_event_id, MAX(e.depth) AS d FROM event_edges ed JOIN events e ON e.event_id = ed.event_id \
             WHERE ed.room_id = $1 AND NOT EXISTS (SELECT 1 FROM events p WHERE p.event_id = ed.prev_event_id) \
             AND NOT EXISTS (SELECT 1 FROM events_outside_timeline o WHERE o.event_id = ed.prev_event_id AND o.status = 'rejected') \
             GROUP BY ed.prev_event_id ORDER BY d DESC, ed.prev_event_id",
        )
        .bind(room_id)
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    async fn edges(&self, event_id: &str) -> StoreResult<(Vec<String>, Vec<String>)> {
        let prev = sqlx::query("SELECT prev_event_id FROM event_edges WHERE event_id = $1 ORDER BY prev_event_id").bind(event_id).fetch_all(&self.read).await?;
        let auth = sqlx::query("SELECT auth_event_id FROM event_auth_edges WHERE event_id = $1 ORDER BY auth_event_id").bind(event_id).fetch_all(&self.read).await?;
        Ok((hashes(prev)?, hashes(auth)?))
    }

    async fn import_room(&self, room: &ImportedRoom<'_>) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        // A room this server knew but had left is joined again: its state is replaced by the
        // one the resident server gave, its old tips are no tips any more.
        sqlx::query(
            "INSERT INTO rooms (room_id, room_version, creator, created_ts, current_state_group) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (room_id) DO UPDATE SET current_state_group = EXCLUDED.current_state_group",
        )
        .bind(room.room_id)
        .bind(room.version)
        .bind(room.creator)
        .bind(room.now)
        .bind(room.group.id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM current_state WHERE room_id = $1").bind(room.room_id).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM forward_extremities WHERE room_id = $1").bind(room.room_id).execute(&mut *tx).await?;
        for ev in room.state {
            sqlx::query(
                "INSERT INTO events (stream_pos, event_id, room_id, sender, type, state_key, depth, origin_server_ts, json, state_group, membership) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
            )
            .bind(ev.stream_pos)
            .bind(ev.event_id)
            .bind(room.room_id)
            .bind(ev.sender)
            .bind(ev.event_type)
            .bind(ev.state_key.unwrap_or_default())
            .bind(ev.depth)
            .bind(ev.origin_server_ts)
            .bind(ev.json)
            .bind(room.group.id)
            .bind(ev.membership)
            .execute(&mut *tx)
            .await?;
            // The event's own position: one this server had keeps the one it had.
            sqlx::query(
                "INSERT INTO current_state (room_id, type, state_key, event_id, membership, stream_pos) \
                 SELECT $1, $2, $3, event_id, membership, stream_pos FROM events WHERE event_id = $4",
            )
            .bind(room.room_id)
            .bind(ev.event_type)
            .bind(ev.state_key.unwrap_or_default())
            .bind(ev.event_id)
            .execute(&mut *tx)
            .await?;
        }
        insert_state_group(&mut tx, room.room_id, room.group).await?;
        let mut edges: Vec<GraphEdges<'_>> = room.state.iter().map(|e| GraphEdges { event_id: e.event_id, room_id: room.room_id, prev: e.prev_events, auth: e.auth_events }).collect();
        for ev in room.outliers {
            insert_outside(&mut tx, ev).await?;
            edges.push(GraphEdges { event_id: ev.event_id, room_id: ev.room_id, prev: ev.prev_events, auth: ev.auth_events });
        }
        insert_edges(&mut tx, &edges).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn insert_history(&self, room_id: &str, events: &[ImportedEvent<'_>], state_group: i64) -> StoreResult<()> {
        let mut tx = self.write.begin().await?;
        for ev in events {
            sqlx::query("DELETE FROM events_outside_timeline WHERE event_id = $1").bind(ev.event_id).execute(&mut *tx).await?;
            sqlx::query(
                "INSERT INTO events (stream_pos, event_id, room_id, sender, type, state_key, depth, origin_server_ts, json, state_group, membership, relates_to, rel_type, rel_key) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) ON CONFLICT DO NOTHING",
            )
            .bind(ev.stream_pos)
            .bind(ev.event_id)
            .bind(room_id)
            .bind(ev.sender)
            .bind(ev.event_type)
            .bind(ev.state_key)
            .bind(ev.depth)
            .bind(ev.origin_server_ts)
            .bind(ev.json)
            .bind(state_group)
            .bind(ev.membership)
            .bind(ev.relates_to.map(|r| r.0))
            .bind(ev.relates_to.map(|r| r.1))
            .bind(ev.relates_to.and_then(|r| r.2))
            .execute(&mut *tx)
            .await?;
        }
        let edges: Vec<GraphEdges<'_>> = events.iter().map(|e| GraphEdges { event_id: e.event_id, room_id, prev: e.prev_events, auth: e.auth_events }).collect();
        insert_edges(&mut tx, &edges).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn earliest_state_group(&self, room_id: &str) -> StoreResult<Option<i64>> {
        let row = sqlx::query("SELECT state_group FROM events WHERE room_id = $1 ORDER BY depth ASC, stream_pos ASC LIMIT 1")
            .bind(room_id)
            .fetch_optional(&self.read)
            .await?;
        row.map(|r| Ok(r.try_get(0)?)).transpose()
    }

    async fn min_stream_pos(&self) -> StoreResult<i64> {
        let min: i64 = sqlx::query("SELECT COALESCE(MIN(stream_pos), 0) FROM events").fetch_one(&self.read).await?.try_get(0)?;
        Ok(min.min(0))
    }

    async fn insert_remote_membership(&self, m: &RemoteMembership) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO remote_memberships (stream_pos, user_id, room_id, membership, event_id, sender, room_version, json, invite_state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(m.stream_pos)
        .bind(&m.user_id)
        .bind(&m.room_id)
        .bind(&m.membership)
        .bind(&m.event_id)
        .bind(&m.sender)
        .bind(&m.room_version)
        .bind(&m.json)
        .bind(&m.invite_state)
        .execute(&self.write)
        .await?;
        Ok(())
    }

    async fn remote_membership(&self, user_id: &str, room_id: &str) -> StoreResult<Option<RemoteMembership>> {
        let row = sqlx::query(
            "SELECT stream_pos, user_id, room_id, membership, event_id, sender, room_version, json, invite_state FROM remote_memberships \
             WHERE user_id = $1 AND room_id = $2 ORDER BY stream_pos DESC LIMIT 1",
        )
        .bind(user_id)
        .bind(room_id)
        .fetch_optional(&self.read)
        .await?;
        row.map(|r| {
            Ok(RemoteMembership {
                stream_pos: r.try_get(0)?,
                user_id: r.try_get(1)?,
                room_id: r.try_get(2)?,
                membership: r.try_get(3)?,
                event_id: r.try_get(4)?,
                sender: r.try_get(5)?,
                room_version: r.try_get(6)?,
                json: r.try_get(7)?,
                invite_state: r.try_get(8)?,
            })
        })
        .transpose()
    }
}
