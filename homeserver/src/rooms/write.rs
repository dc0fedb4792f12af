//! The write path: prepare an event (build, sign, authorise), then commit one or more prepared
//! events of a room in one store transaction, update the in-memory room and wake syncs.
//!
//! Messages are group-committed: each request queues itself on its room and takes the room
//! lock; whoever holds the lock writes everything queued so far in one transaction (the
//! others find their result waiting). State events and redactions are written one at a time.
//! All of it runs detached from the HTTP request, so a client that goes away mid-write cannot
//! leave the room's memory and the database apart.

use std::sync::{Arc, atomic::Ordering};

use ruma::{
    CanonicalJsonObject, DeviceId, OwnedDeviceId, OwnedEventId, OwnedTransactionId, OwnedUserId,
    RoomId, TransactionId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{MAX_STATE_CHAIN, NewContent, RoomState, Rooms, StateKey, pdu::Pdu};
use crate::{
    error::{Error, Result},
    homeserver::detached,
    store::{NewEvent, NewPushAction, NewStateGroup, StoreError},
};

/// A message waiting in its room's queue.
pub(super) struct Pending {
    sender: OwnedUserId,
    new: NewContent,
    txn: Option<(OwnedDeviceId, OwnedTransactionId)>,
    reply: oneshot::Sender<Result<OwnedEventId>>,
}

/// An event ready for the store.
pub(super) struct Prepared {
    pub(super) pdu: Pdu,
    json: String,
    kind: String,
    state_key: Option<StateKey>,
    replaces_state: Option<String>,
    new_group: Option<NewStateGroup>,
    membership: Option<String>,
    rel: Option<(String, String, Option<String>)>,
    pruned: Option<(String, String)>,
    prev: Vec<String>,
    auth: Vec<String>,
    txn: Option<(String, String)>,
    /// The sender has read up to here (not for a display name or avatar change, which the
    /// server writes for them).
    marks_read: bool,
    /// A remote event on a fork: the room's state after it, resolved.
    resolution: Option<Resolution>,
    /// A remote event this server passes on to the room's other servers (a join or leave
    /// made through us).
    relay: bool,
    /// A remote event this server kept as an outlier until now.
    was_outlier: bool,
}

/// How a remote event on a fork changes the room's state.
pub(super) struct Resolution {
    /// The group of the state before the event: an existing one (its prev event's), or
    /// `before`, written with the event.
    pub before_group: i64,
    pub before: Option<NewStateGroup>,
    /// The room's resolved state after the event, as a full group and as events; `None` when
    /// it is the current state (the event changed nothing, as a message on a lagging branch).
    pub after: Option<(NewStateGroup, std::collections::HashMap<StateKey, Arc<Pdu>>)>,
}

impl Prepared {
    /// A remote event the room's other servers get from us (`relay`).
    pub(super) fn relayed(mut self, relay: bool) -> Self {
        self.relay = relay;
        self
    }

    /// A remote event known as an outlier until now (it leaves the outliers as it is stored).
    pub(super) fn was_outlier(mut self, was_outlier: bool) -> Self {
        self.was_outlier = was_outlier;
        self
    }

    /// Whether the room's other servers get this event from us.
    fn sent_on(&self, ours: &ruma::ServerName) -> bool {
        self.relay || self.pdu.sender.server_name() == ours
    }

    /// A remote event on a fork: the resolved state replaces the delta group.
    pub(super) fn resolved(mut self, resolution: Option<Resolution>) -> Self {
        if resolution.is_some() {
            self.new_group = None;
        }
        self.resolution = resolution;
        self
    }

    fn new_event<'a>(&'a self, stream_pos: i64, push: &'a [NewPushAction]) -> NewEvent<'a> {
        NewEvent {
            stream_pos,
            event_id: self.pdu.event_id.as_str(),
            room_id: self.pdu.room_id.as_str(),
            sender: self.pdu.sender.as_str(),
            event_type: &self.kind,
            state_key: self.pdu.state_key.as_deref(),
            membership: self.membership.as_deref(),
            depth: i64::try_from(u64::from(self.pdu.depth)).unwrap_or(i64::MAX),
            origin_server_ts: u64::from(self.pdu.origin_server_ts.0) as i64,
            json: &self.json,
            state_group: 0,
            new_state_group: self.new_group.clone(),
            replaces_state: self.replaces_state.as_deref(),
            relates_to: self
                .rel
                .as_ref()
                .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_deref())),
            txn: self.txn.as_ref().map(|(d, t)| (d.as_str(), t.as_str())),
            prev_events: &self.prev,
            auth_events: &self.auth,
            redacts: self.pruned.as_ref().map(|(a, b)| (a.as_str(), b.as_str())),
            push,
            marks_read: self.marks_read,
            was_outlier: self.was_outlier,
            destinations: &[],
            resolution: self
                .resolution
                .as_ref()
                .map(|r| (r.before.as_ref(), r.after.as_ref().map(|(g, _)| g))),
        }
    }
}

fn owned_txn(
    txn: Option<(&DeviceId, &TransactionId)>,
) -> Option<(OwnedDeviceId, OwnedTransactionId)> {
    txn.map(|(d, t)| (d.to_owned(), t.to_owned()))
}

impl Rooms {
    /// Appends a local user's event to a room: idempotent per transaction id, built on the
    /// forward extremities, hashed, signed, authorised against the current state, persisted
    /// with its state change in one transaction, then announced to waiting syncs.
    pub async fn append(
        self: &Arc<Self>,
        room_id: &RoomId,
        sender: &UserId,
        new: NewContent,
        txn: Option<(&DeviceId, &TransactionId)>,
    ) -> Result<OwnedEventId> {
        let (this, room_id, sender, txn) = (
            self.clone(),
            room_id.to_owned(),
            sender.to_owned(),
            owned_txn(txn),
        );
        if new.state_key.is_some() || new.redacts.is_some() {
            return detached(async move {
                let mut guard = this
                    .lock(&room_id)
                    .await?
                    .ok_or_else(|| Error::not_found("room not found"))?;
                let room = guard.as_mut().expect("locked room is loaded");
                this.append_locked(
                    room,
                    &sender,
                    new,
                    txn.as_ref().map(|(d, t)| (d.as_ref(), t.as_ref())),
                )
                .await
            })
            .await;
        }
        let (reply, result) = oneshot::channel();
        let slot = self.slot(&room_id);
        slot.queue.lock().expect("room queue").push(Pending {
            sender,
            new,
            txn,
            reply,
        });
        detached(async move {
            let loaded = this.lock(&room_id).await;
            let batch = std::mem::take(&mut *slot.queue.lock().expect("room queue"));
            match loaded {
                Ok(Some(mut guard)) => {
                    if !batch.is_empty() {
                        this.write_batch(guard.as_mut().expect("locked room is loaded"), batch)
                            .await;
                    }
                }
                Ok(None) => batch
                    .into_iter()
                    .for_each(|p| drop(p.reply.send(Err(Error::not_found("room not found"))))),
                Err(e) => batch
                    .into_iter()
                    .for_each(|p| drop(p.reply.send(Err(Error::internal(&e))))),
            }
            Ok(())
        })
        .await?;
        result
            .await
            .map_err(|_| Error::internal("the room writer went away"))?
    }

    /// Writes queued messages: prepared one after another (each on top of the previous),
    /// committed together.
    async fn write_batch(&self, room: &mut RoomState, batch: Vec<Pending>) {
        let saved = (room.extremities.clone(), room.max_depth);
        let mut prepared = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for p in batch {
            let txn = p.txn.as_ref().map(|(d, t)| (d.as_ref(), t.as_ref()));
            match self.prepare(room, &p.sender, &p.new, txn).await {
                Ok(event) => {
                    room.advance(&event.pdu);
                    prepared.push(event);
                    waiting.push(p);
                }
                Err(e) => drop(p.reply.send(self.earlier_send(&p.sender, txn, e).await)),
            }
        }
        (room.extremities, room.max_depth) = saved;
        match self.commit(room, prepared).await {
            Ok(ids) => {
                for (p, id) in waiting.into_iter().zip(ids) {
                    let _ = p.reply.send(Ok(id));
                }
            }
            // A repeated transaction id refused the batch: write one by one, answering repeats
            // with the event they created before.
            Err(Error::Store(StoreError::Conflict)) => {
                for p in waiting {
                    let txn = p.txn.as_ref().map(|(d, t)| (d.as_ref(), t.as_ref()));
                    let result = self.append_locked(room, &p.sender, p.new, txn).await;
                    let _ = p.reply.send(result);
                }
            }
            Err(e) => {
                let message = e.to_string();
                let mut first = Some(e);
                for p in waiting {
                    let _ = p.reply.send(Err(first
                        .take()
                        .unwrap_or_else(|| Error::internal(&message))));
                }
            }
        }
    }

    /// Writes one event under the room lock (state events, redactions, room creation).
    pub async fn append_locked(
        &self,
        room: &mut RoomState,
        sender: &UserId,
        new: NewContent,
        txn: Option<(&DeviceId, &TransactionId)>,
    ) -> Result<OwnedEventId> {
        let prepared = match self.prepare(room, sender, &new, txn).await {
            Ok(p) => p,
            Err(e) => return self.earlier_send(sender, txn, e).await,
        };
        match self.commit(room, vec![prepared]).await {
            Ok(mut ids) => Ok(ids.remove(0)),
            // A repeated transaction id: the store's unique key refused it; answer as before.
            Err(Error::Store(StoreError::Conflict)) if txn.is_some() => {
                let (device, txn_id) = txn.expect("checked");
                let existing = self
                    .store
                    .txn_event(sender.as_str(), device.as_str(), txn_id.as_str())
                    .await?;
                existing
                    .ok_or_else(|| Error::internal("event id conflict"))?
                    .try_into()
                    .map_err(Error::internal)
            }
            Err(e) => Err(e),
        }
    }

    /// A request that fails may be the retry of one that succeeded (the client lost the
    /// answer, and since then lost the right to send): the earlier event id is the answer.
    async fn earlier_send(
        &self,
        sender: &UserId,
        txn: Option<(&DeviceId, &TransactionId)>,
        error: Error,
    ) -> Result<OwnedEventId> {
        if let Some((device, txn_id)) = txn
            && let Some(existing) = self
                .store
                .txn_event(sender.as_str(), device.as_str(), txn_id.as_str())
                .await?
        {
            return existing.try_into().map_err(Error::internal);
        }
        Err(error)
    }

    /// Builds, signs and authorises an event on top of the room as it is in memory.
    async fn prepare(
        &self,
        room: &RoomState,
        sender: &UserId,
        new: &NewContent,
        txn: Option<(&DeviceId, &TransactionId)>,
    ) -> Result<Prepared> {
        let (pdu, object, auth) = self.build(room, sender, new)?;
        self.authorize(room, &pdu, &auth)?;
        if let Some(redacts) = &pdu.redacts {
            self.check_redaction(room, &pdu, redacts).await?;
        }
        self.prepared(room, pdu, &object, txn).await
    }

    /// An authorised event (local or remote) with everything the store writes with it.
    pub(super) async fn prepared(
        &self,
        room: &RoomState,
        pdu: Pdu,
        object: &CanonicalJsonObject,
        txn: Option<(&DeviceId, &TransactionId)>,
    ) -> Result<Prepared> {
        let sender: &UserId = &pdu.sender.clone();
        let pruned = match &pdu.redacts {
            Some(target) => match self.pruned_json(target, &room.rules).await {
                Ok(json) => Some((target.to_string(), json)),
                // A remote redaction of an event this server does not have.
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let json = serde_json::to_string(object).map_err(Error::internal)?;
        let state_key = pdu
            .state_key
            .clone()
            .map(|k| (StateEventType::from(pdu.kind.to_string()), k));
        let replaces_state = state_key
            .as_ref()
            .and_then(|k| room.state.get(k))
            .map(|p| p.event_id.to_string());
        let new_group = state_key
            .as_ref()
            .map(|(kind, key)| self.next_state_group(room, kind, key, &pdu));
        let content = pdu.content_value();
        let membership = (pdu.kind == TimelineEventType::RoomMember)
            .then(|| pdu.membership())
            .flatten();
        let rel = relation_of(&content);
        let profile_update = membership.as_deref() == Some("join")
            && pdu.state_key.as_deref() == Some(sender.as_str())
            && room.membership(sender).as_deref() == Some("join");
        Ok(Prepared {
            relay: false,
            was_outlier: false,
            resolution: None,
            marks_read: !profile_update,
            kind: pdu.kind.to_string(),
            prev: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
            auth: pdu.auth_events.iter().map(|e| e.to_string()).collect(),
            txn: txn.map(|(d, t)| (d.to_string(), t.to_string())),
            pdu,
            json,
            state_key,
            replaces_state,
            new_group,
            membership,
            rel,
            pruned,
        })
    }

    /// The state group after a state event: a delta on the current group, or a full snapshot
    /// when the delta chain got long.
    fn next_state_group(
        &self,
        room: &RoomState,
        kind: &StateEventType,
        key: &str,
        pdu: &Pdu,
    ) -> NewStateGroup {
        let id = self.state_groups.fetch_add(1, Ordering::SeqCst) + 1;
        let entry = (kind.to_string(), key.to_owned(), pdu.event_id.to_string());
        if room.chain_len >= MAX_STATE_CHAIN || room.state_group == 0 {
            let mut entries: Vec<(String, String, String)> = room
                .state
                .iter()
                .filter(|((k, s), _)| !(k == kind && s == key))
                .map(|((k, s), p)| (k.to_string(), s.clone(), p.event_id.to_string()))
                .collect();
            entries.push(entry);
            NewStateGroup {
                id,
                prev_group: None,
                chain_len: 0,
                entries,
            }
        } else {
            NewStateGroup {
                id,
                prev_group: Some(room.state_group),
                chain_len: room.chain_len + 1,
                entries: vec![entry],
            }
        }
    }

    /// Persists prepared events of one room in one transaction; on success the room in memory
    /// moves on and syncs wake. Batches hold at most one state event (it comes alone).
    pub(super) async fn commit(
        &self,
        room: &mut RoomState,
        events: Vec<Prepared>,
    ) -> Result<Vec<OwnedEventId>> {
        // Who each event notifies, as of the room before it (a batch holds messages only).
        let mut push = Vec::with_capacity(events.len());
        for e in &events {
            push.push(self.notifications.evaluate(room, &e.pdu, &e.json).await);
        }
        let queued = push.iter().flatten().any(|a| a.send);
        // Our own events go to every other server in the room (remote events came from theirs,
        // except joins and leaves made through us, which the sender's server has already).
        let destinations: Vec<String> = if events.iter().any(|e| e.sent_on(&self.server_name)) {
            let senders: Vec<&ruma::ServerName> =
                events.iter().map(|e| e.pdu.sender.server_name()).collect();
            self.outbound
                .destinations(&mut room.servers().filter(|s| !senders.contains(s)))
        } else {
            vec![]
        };
        let positions: Vec<_> = events.iter().map(|_| self.stream.next()).collect();
        let mut rows: Vec<NewEvent<'_>> = events
            .iter()
            .zip(&positions)
            .zip(&push)
            .map(|((e, p), push)| {
                let mut row = e.new_event(p.pos(), push);
                if e.sent_on(&self.server_name) {
                    row.destinations = &destinations;
                }
                row
            })
            .collect();
        let mut group = room.state_group;
        for (row, event) in rows.iter_mut().zip(&events) {
            row.state_group = group;
            if let Some(g) = &row.new_state_group {
                group = g.id;
            }
            if let Some(r) = &event.resolution {
                row.state_group = r.before_group;
                if let Some((after, _)) = &r.after {
                    group = after.id;
                }
            }
        }
        self.store.persist_events(&rows).await?;
        drop(rows);
        if queued {
            self.notifications.queued();
        }
        if !destinations.is_empty() {
            self.outbound.queued(&destinations);
        }
        // Committed: the room in memory follows, then waiting syncs wake.
        let mut ids = Vec::with_capacity(events.len());
        let mut wakes = Vec::with_capacity(events.len());
        for event in events {
            let event_id = event.pdu.event_id.clone();
            room.advance(&event.pdu);
            let mut wake = room.interested_users();
            if let Some(Resolution {
                after: Some((after, state)),
                ..
            }) = event.resolution
            {
                room.replace_state(state);
                room.state_group = after.id;
                room.chain_len = 0;
                // Whoever the resolved state names hears of it too.
                wake = room.interested_users();
                if let Some(key) = &event.state_key
                    && key.0 == StateEventType::RoomMember
                    && let Ok(user) = UserId::parse(key.1.as_str())
                {
                    wake.push(user);
                }
            } else if let (Some(key), Some(group), None) =
                (event.state_key, event.new_group, &event.resolution)
            {
                if key.0 == StateEventType::RoomMember
                    && let Ok(user) = UserId::parse(key.1.as_str())
                {
                    wake.push(user);
                }
                room.set_state(key, Arc::new(event.pdu));
                room.state_group = group.id;
                room.chain_len = group.chain_len;
            }
            ids.push(event_id);
            wakes.push(wake);
        }
        for (pos, wake) in positions.into_iter().zip(wakes) {
            let (woken, _) = pos.finish(wake);
            self.notifier.wake(woken.iter().map(|u| u.as_ref()));
        }
        metrics::counter!("tim_events_persisted_total", "server_name" => self.server_name.to_string()).increment(ids.len() as u64);
        Ok(ids)
    }
}

/// `(event id, rel_type, key)` of an event's `m.relates_to`; a reply (`m.in_reply_to`) is a
/// relation too, so `/relations` can list it.
pub(super) fn relation_of(content: &Value) -> Option<(String, String, Option<String>)> {
    let relates_to = content.get("m.relates_to")?;
    let rel = (|| {
        Some((
            relates_to.get("event_id")?.as_str()?.to_owned(),
            relates_to.get("rel_type")?.as_str()?.to_owned(),
            relates_to
                .get("key")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ))
    })();
    rel.or_else(|| {
        let reply = relates_to.get("m.in_reply_to")?.get("event_id")?.as_str()?;
        Some((reply.to_owned(), "m.in_reply_to".to_owned(), None))
    })
}
