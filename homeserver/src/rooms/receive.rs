//! Events from other servers, after `federation::pdu::check`: authorised against their auth
//! events, the state before them and the room's current state (spec: "Checks performed on
//! receipt of a PDU", steps 4–6), then persisted through the same per-room path and
//! transaction local events take — or recorded as rejected, soft-failed or outlier with why.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, RoomId,
    UserId, events::TimelineEventType,
};

use std::{collections::HashMap, sync::atomic::Ordering};

use ruma::events::StateEventType;

use super::{
    MAX_PREV_EVENTS, RoomState, Rooms, StateKey,
    pdu::Pdu,
    write::{Prepared, Resolution},
};
use crate::{
    error::{Error, Result},
    homeserver::detached,
    store::{EventStatus, NewStateGroup, OutsideEvent, StateIds},
};

/// Events outside the timeline followed in a row to find the state before an event.
const OUTSIDE_DEPTH: u8 = 3;

/// Most auth events a PDU may name (as the spec suggests).
const MAX_AUTH_EVENTS: usize = 10;

/// What became of a remote event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Received {
    /// Added to the timeline.
    Accepted,
    /// Already known (in the timeline or outside it).
    Known,
    /// Failed the authorization rules; kept as rejected.
    Rejected(String),
    /// Passed the rules against its own history but not against the room's current state:
    /// kept, never shown (spec: soft failure).
    SoftFailed(String),
    /// Kept outside the timeline for now: what it builds on is not known here yet.
    Outlier(String),
}

/// What the checks under the room's lock make of a remote event.
enum Checked {
    /// Nothing (more) to write: it was known, or is kept outside the timeline.
    Done(Received),
    /// To be committed to the timeline.
    Ready(Box<Prepared>),
}

/// A checked remote event with its canonical JSON.
pub struct Incoming {
    pub pdu: Pdu,
    pub object: CanonicalJsonObject,
    pub json: String,
    /// The states after prev events this server lacks, as another server reported them (a
    /// gap it could not close): the event joins the timeline on those.
    pub prev_states: HashMap<OwnedEventId, StateIds>,
}

impl Incoming {
    pub fn new(pdu: Pdu, object: CanonicalJsonObject, json: String) -> Self {
        Self {
            pdu,
            object,
            json,
            prev_states: HashMap::new(),
        }
    }

    pub fn with_prev_states(self, prev_states: HashMap<OwnedEventId, StateIds>) -> Self {
        Self {
            prev_states,
            ..self
        }
    }
}

impl Rooms {
    /// Adds a remote event to its room: under the room's lock, like local events.
    /// `relay`: the room's other servers get the event from us (a join or leave made
    /// through this server).
    pub async fn receive(self: &Arc<Self>, incoming: Incoming, relay: bool) -> Result<Received> {
        let this = self.clone();
        detached(async move {
            let room_id = incoming.pdu.room_id.clone();
            let mut guard = this
                .lock(&room_id)
                .await?
                .ok_or_else(|| Error::not_found("the room is not known here"))?;
            let room = guard.as_mut().expect("locked room is loaded");
            this.receive_locked(room, incoming, relay).await
        })
        .await
    }

    /// Remote events of one room (`room_id`), in the order given, under one hold of its lock;
    /// one answer each, in the same order. Messages that extend the room's tips one after
    /// another (the usual transaction) are committed together in one store transaction, as
    /// local messages are; anything else goes alone, after what came before it is committed.
    pub async fn receive_all(
        self: &Arc<Self>,
        room_id: &RoomId,
        incoming: Vec<Incoming>,
    ) -> Vec<Result<Received>> {
        let (this, room_id, count) = (self.clone(), room_id.to_owned(), incoming.len());
        let outcome = detached(async move {
            let mut guard = this
                .lock(&room_id)
                .await?
                .ok_or_else(|| Error::not_found("the room is not known here"))?;
            let room = guard.as_mut().expect("locked room is loaded");
            Ok(this.receive_run(room, incoming).await)
        })
        .await;
        outcome.unwrap_or_else(|e| each_failed(e, count))
    }

    async fn receive_run(
        &self,
        room: &mut RoomState,
        incoming: Vec<Incoming>,
    ) -> Vec<Result<Received>> {
        let mut results: Vec<Option<Result<Received>>> = incoming.iter().map(|_| None).collect();
        // Checked messages waiting to be committed together, and the room's tips before them
        // (the room in memory moves on as each is checked, so the next builds on it).
        let mut run: Vec<(usize, Prepared)> = Vec::new();
        let mut tips_before = None;
        for (i, event) in incoming.into_iter().enumerate() {
            if event.pdu.room_id != room.room_id {
                results[i] = Some(Err(Error::bad_json("the event is of another room")));
                continue;
            }
            let joins_run = event.pdu.state_key.is_none()
                && event.pdu.redacts.is_none()
                && event.pdu.prev_events.len() == room.extremities.len()
                && event
                    .pdu
                    .prev_events
                    .iter()
                    .all(|p| room.extremities.contains(p));
            if !joins_run {
                self.commit_run(room, &mut run, &mut tips_before, &mut results)
                    .await;
                results[i] = Some(self.receive_locked(room, event, false).await);
                continue;
            }
            match self.check_received(room, event, false).await {
                Ok(Checked::Ready(prepared)) => {
                    let before = (room.extremities.clone(), room.max_depth);
                    tips_before.get_or_insert(before);
                    room.advance(&prepared.pdu);
                    run.push((i, *prepared));
                }
                Ok(Checked::Done(received)) => results[i] = Some(Ok(received)),
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        self.commit_run(room, &mut run, &mut tips_before, &mut results)
            .await;
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::internal("a received event got no answer"))))
            .collect()
    }

    /// Commits the checked messages of a run in one transaction.
    async fn commit_run(
        &self,
        room: &mut RoomState,
        run: &mut Vec<(usize, Prepared)>,
        tips_before: &mut Option<(Vec<OwnedEventId>, u64)>,
        results: &mut [Option<Result<Received>>],
    ) {
        if let Some(before) = tips_before.take() {
            (room.extremities, room.max_depth) = before;
        }
        if run.is_empty() {
            return;
        }
        let (indices, prepared): (Vec<usize>, Vec<Prepared>) =
            std::mem::take(run).into_iter().unzip();
        match self.commit(room, prepared).await {
            Ok(_) => indices
                .into_iter()
                .for_each(|i| results[i] = Some(Ok(Received::Accepted))),
            Err(e) => {
                let failed = each_failed(e, indices.len());
                for (i, outcome) in indices.into_iter().zip(failed) {
                    results[i] = Some(outcome);
                }
            }
        }
    }

    async fn receive_locked(
        &self,
        room: &mut RoomState,
        incoming: Incoming,
        relay: bool,
    ) -> Result<Received> {
        match self.check_received(room, incoming, relay).await? {
            Checked::Done(received) => Ok(received),
            Checked::Ready(prepared) => {
                self.commit(room, vec![*prepared]).await?;
                Ok(Received::Accepted)
            }
        }
    }

    /// The checks on a remote event under its room's lock: either what became of it (known,
    /// or kept outside the timeline with why), or the event ready to be committed.
    async fn check_received(
        &self,
        room: &RoomState,
        incoming: Incoming,
        relay: bool,
    ) -> Result<Checked> {
        let Incoming {
            pdu,
            object,
            json,
            prev_states,
        } = incoming;
        let id = pdu.event_id.to_string();
        if pdu.prev_events.len() > MAX_PREV_EVENTS || pdu.auth_events.len() > MAX_AUTH_EVENTS {
            return self
                .keep_outside(
                    &pdu,
                    &json,
                    EventStatus::Rejected,
                    "too many prev or auth events",
                )
                .await
                .map(Checked::Done);
        }
        // Whether the event is known, and its auth events, in one look-up.
        let auth_ids: Vec<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
        let mut wanted = auth_ids.clone();
        wanted.push(id.clone());
        let mut auth_rows = self.graph.pdus(&wanted).await?;
        // An outlier (known without its state) joins the timeline once it can; known in the
        // timeline or otherwise outside it, it is done with.
        let stored: Vec<Option<EventStatus>> = auth_rows
            .iter()
            .filter(|r| r.event_id == id)
            .map(|r| r.status)
            .collect();
        if stored.iter().any(|s| *s != Some(EventStatus::Outlier)) {
            return Ok(Checked::Done(Received::Known));
        }
        let outlier = !stored.is_empty();
        auth_rows.retain(|r| auth_ids.contains(&r.event_id));
        // The auth events must be known; their own checks happened when they arrived.
        if auth_rows.len() < auth_ids.len() {
            return self
                .keep_outside(
                    &pdu,
                    &json,
                    EventStatus::Outlier,
                    "auth events not known here",
                )
                .await
                .map(Checked::Done);
        }
        if auth_rows
            .iter()
            .any(|a| a.status == Some(EventStatus::Rejected))
        {
            return self
                .keep_outside(
                    &pdu,
                    &json,
                    EventStatus::Rejected,
                    "an auth event was rejected",
                )
                .await
                .map(Checked::Done);
        }
        let auth: Vec<Arc<Pdu>> = auth_rows
            .iter()
            .map(|r| Pdu::from_json(&r.event_id, &r.json).map(Arc::new))
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::internal)?;
        if let Err(reason) = ruma::state_res::check_state_independent_auth_rules(
            &room.rules.authorization,
            &pdu,
            |id| auth.iter().find(|p| p.event_id == id).cloned(),
        ) {
            return self
                .keep_outside(&pdu, &json, EventStatus::Rejected, &reason)
                .await
                .map(Checked::Done);
        }
        // The state before the event: the room's current state when the event builds on it,
        // else the states after its prev events, resolved.
        let before = match self.state_before(room, &pdu, &prev_states).await? {
            Some(before) => before,
            None => {
                return self
                    .keep_outside(
                        &pdu,
                        &json,
                        EventStatus::Outlier,
                        "prev events not known here",
                    )
                    .await
                    .map(Checked::Done);
            }
        };
        let current = |kind: &StateEventType, key: &str| {
            room.state.get(&(kind.clone(), key.to_owned())).cloned()
        };
        let resolution = match before {
            None => {
                if let Err(reason) = ruma::state_res::check_state_dependent_auth_rules(
                    &room.rules.authorization,
                    &pdu,
                    current,
                ) {
                    return self
                        .keep_outside(&pdu, &json, EventStatus::Rejected, &reason)
                        .await
                        .map(Checked::Done);
                }
                None
            }
            Some(Before {
                ids: before_ids,
                group: before_group,
            }) => {
                let pdu_arc = Arc::new(pdu.clone());
                let before_state = self.state_pdus(room, &before_ids, &pdu_arc).await?;
                if let Err(reason) = ruma::state_res::check_state_dependent_auth_rules(
                    &room.rules.authorization,
                    &pdu,
                    |kind, key| before_state.get(&(kind.clone(), key.to_owned())).cloned(),
                ) {
                    return self
                        .keep_outside(&pdu, &json, EventStatus::Rejected, &reason)
                        .await
                        .map(Checked::Done);
                }
                // Allowed by its own history, but not by the room as it is now: soft failure.
                if let Err(reason) = ruma::state_res::check_state_dependent_auth_rules(
                    &room.rules.authorization,
                    &pdu,
                    current,
                ) {
                    return self
                        .keep_outside(&pdu, &json, EventStatus::SoftFailed, &reason)
                        .await
                        .map(Checked::Done);
                }
                Some(
                    self.resolution(room, (before_ids, before_group), &pdu_arc)
                        .await?,
                )
            }
        };
        if let Some(target) = &pdu.redacts
            && self.check_redaction(room, &pdu, target).await.is_err()
            && self.store.get_event(target.as_str()).await?.is_some()
        {
            return self
                .keep_outside(
                    &pdu,
                    &json,
                    EventStatus::SoftFailed,
                    "may not redact that event",
                )
                .await
                .map(Checked::Done);
        }
        let prepared = self
            .prepared(room, pdu, &object, None)
            .await?
            .resolved(resolution)
            .relayed(relay)
            .was_outlier(outlier);
        Ok(Checked::Ready(Box::new(prepared)))
    }

    /// The room's state after a remote event on a fork: the current state and the state after
    /// the event (the state before it, and the event if it is a state event), resolved.
    async fn resolution(
        &self,
        room: &RoomState,
        (before_ids, before_group): (StateIds, Option<i64>),
        pdu: &Arc<Pdu>,
    ) -> Result<Resolution> {
        let mut after_ids = before_ids.clone();
        if let Some(key) = &pdu.state_key {
            after_ids.insert(
                (pdu.kind.to_string(), key.clone()),
                pdu.event_id.to_string(),
            );
        }
        let current_ids: StateIds = room
            .state
            .iter()
            .map(|((kind, key), p)| ((kind.to_string(), key.clone()), p.event_id.to_string()))
            .collect();
        let resolved_ids = self
            .resolve_states(&room.rules, &[current_ids.clone(), after_ids], Some(pdu))
            .await?;
        let full = |ids: &StateIds| NewStateGroup {
            id: self.state_groups.fetch_add(1, Ordering::SeqCst) + 1,
            prev_group: None,
            chain_len: 0,
            entries: ids
                .iter()
                .map(|((kind, key), id)| (kind.clone(), key.clone(), id.clone()))
                .collect(),
        };
        let (before_group, before) = match before_group {
            Some(g) => (g, None),
            None => {
                let g = full(&before_ids);
                (g.id, Some(g))
            }
        };
        let after = if resolved_ids == current_ids {
            None
        } else {
            let state = self.state_pdus(room, &resolved_ids, pdu).await?;
            Some((full(&resolved_ids), state))
        };
        Ok(Resolution {
            before_group,
            before,
            after,
        })
    }

    /// The events of a state, from the room in memory where it has them, else from the store;
    /// `pending` is the event being added (not stored yet).
    async fn state_pdus(
        &self,
        room: &RoomState,
        ids: &StateIds,
        pending: &Arc<Pdu>,
    ) -> Result<HashMap<StateKey, Arc<Pdu>>> {
        let known: HashMap<&str, &Arc<Pdu>> = room
            .state
            .values()
            .map(|p| (p.event_id.as_str(), p))
            .chain(std::iter::once((pending.event_id.as_str(), pending)))
            .collect();
        let missing: Vec<String> = ids
            .values()
            .filter(|id| !known.contains_key(id.as_str()))
            .cloned()
            .collect();
        let loaded: HashMap<String, Arc<Pdu>> = self
            .graph
            .pdus(&missing)
            .await?
            .into_iter()
            .filter_map(|p| {
                Some((
                    p.event_id.clone(),
                    Arc::new(Pdu::from_json(&p.event_id, &p.json).ok()?),
                ))
            })
            .collect();
        let mut out = HashMap::with_capacity(ids.len());
        for ((kind, key), id) in ids {
            let pdu = known
                .get(id.as_str())
                .map(|p| (*p).clone())
                .or_else(|| loaded.get(id).cloned())
                .ok_or_else(|| Error::internal(format!("state event {id} is not stored")))?;
            out.insert((StateEventType::from(kind.as_str()), key.clone()), pdu);
        }
        Ok(out)
    }

    /// The state before `pdu`: `Some(None)` when it is the room's current state (each prev
    /// event is a forward extremity whose state is the current state), `Some(Some(state))`
    /// otherwise (the states after its prev events, resolved when they differ); `None` when a
    /// prev event is not in this server's timeline and `fetched` has no state after it.
    async fn state_before(
        &self,
        room: &RoomState,
        pdu: &Pdu,
        fetched: &HashMap<OwnedEventId, StateIds>,
    ) -> Result<Option<Option<Before>>> {
        if pdu.prev_events.is_empty() {
            return Ok(None);
        }
        if pdu.prev_events.iter().all(|p| room.extremities.contains(p))
            && pdu.prev_events.len() == room.extremities.len()
        {
            return Ok(Some(None));
        }
        let ids: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        let rows = self.store.get_events(&ids).await?;
        if rows.len() < ids.len() {
            // Prev events kept outside the timeline (soft-failed, rejected) still have a state
            // after them; only events this server never got leave the event without one.
            return self
                .state_before_outside(room, pdu, OUTSIDE_DEPTH, fetched)
                .await;
        }
        let current: StateIds = room
            .state
            .iter()
            .map(|((kind, key), p)| ((kind.to_string(), key.clone()), p.event_id.to_string()))
            .collect();
        let mut states: Vec<StateIds> = Vec::with_capacity(rows.len());
        for row in &rows {
            let state = self.state_after_row(row).await?;
            if !states.contains(&state) {
                states.push(state);
            }
        }
        if states.iter().all(|s| *s == current) {
            return Ok(Some(None));
        }
        if states.len() == 1 {
            // After a single message the state is that message's group: no new group needed.
            let group = match rows.as_slice() {
                [row] if Pdu::from_row(row).is_ok_and(|p| p.state_key.is_none()) => {
                    Some(row.state_group)
                }
                _ => None,
            };
            return Ok(Some(states.pop().map(|ids| Before { ids, group })));
        }
        let ids = self.resolve_states(&room.rules, &states, None).await?;
        Ok(Some(Some(Before { ids, group: None })))
    }

    /// The state before an event some of whose prev events are outside the timeline: the
    /// states after each prev event, resolved. After a soft-failed event: the state before it
    /// and the event; after a rejected one: the state before it; after one this server
    /// lacks (or has without its state), the state in `fetched`. `depth` bounds how many
    /// such events in a row are followed.
    fn state_before_outside<'a>(
        &'a self,
        room: &'a RoomState,
        pdu: &'a Pdu,
        depth: u8,
        fetched: &'a HashMap<OwnedEventId, StateIds>,
    ) -> futures::future::BoxFuture<'a, Result<Option<Option<Before>>>> {
        Box::pin(async move {
            let mut states: Vec<StateIds> = Vec::new();
            for prev in &pdu.prev_events {
                let id = prev.to_string();
                let state = if let Some(row) = self.store.get_event(&id).await? {
                    self.state_after_row(&row).await?
                } else if let Some(state) = fetched.get(prev) {
                    state.clone()
                } else {
                    let stored = self.graph.pdus(std::slice::from_ref(&id)).await?;
                    let Some(outside) = stored.into_iter().next() else {
                        return Ok(None);
                    };
                    let (Some(status), true) = (outside.status, depth > 0) else {
                        return Ok(None);
                    };
                    if status == EventStatus::Outlier {
                        return Ok(None);
                    }
                    let event = Pdu::from_json(&outside.event_id, &outside.json)
                        .map_err(Error::internal)?;
                    let Some(before) = self
                        .state_before_outside(room, &event, depth - 1, fetched)
                        .await?
                    else {
                        return Ok(None);
                    };
                    let mut state = match before {
                        Some(b) => b.ids,
                        None => room
                            .state
                            .iter()
                            .map(|((k, s), p)| ((k.to_string(), s.clone()), p.event_id.to_string()))
                            .collect(),
                    };
                    if status == EventStatus::SoftFailed
                        && let Some(key) = &event.state_key
                    {
                        state.insert(
                            (event.kind.to_string(), key.clone()),
                            event.event_id.to_string(),
                        );
                    }
                    state
                };
                if !states.contains(&state) {
                    states.push(state);
                }
            }
            let ids = match states.len() {
                0 => return Ok(None),
                1 => states.pop().expect("one state"),
                _ => self.resolve_states(&room.rules, &states, None).await?,
            };
            Ok(Some(Some(Before { ids, group: None })))
        })
    }

    async fn state_after_row(&self, row: &crate::store::EventRow) -> Result<StateIds> {
        let mut state = self.store.state_at_group(row.state_group).await?;
        let pdu = Pdu::from_row(row).map_err(Error::internal)?;
        if let Some(key) = &pdu.state_key {
            state.insert(
                (pdu.kind.to_string(), key.clone()),
                pdu.event_id.to_string(),
            );
        }
        Ok(state)
    }

    /// Events fetched from another server without their own state (the state and auth
    /// chain at a gap), kept as outliers; those already known stay as they are.
    pub async fn keep_fetched(&self, events: Vec<Incoming>, reason: &str) -> Result<()> {
        let edges: Vec<Edges> = events.iter().map(|e| Edges::of(&e.pdu)).collect();
        let outside = as_outliers(&events, &edges, reason);
        self.graph.store_outside_timeline(&outside).await?;
        Ok(())
    }

    async fn keep_outside(
        &self,
        pdu: &Pdu,
        json: &str,
        status: EventStatus,
        reason: &str,
    ) -> Result<Received> {
        let edges = Edges::of(pdu);
        self.graph
            .store_outside_timeline(&[OutsideEvent {
                event_id: pdu.event_id.as_str(),
                room_id: pdu.room_id.as_str(),
                depth: i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX),
                json,
                prev_events: &edges.prev,
                auth_events: &edges.auth,
                status,
                reason: Some(reason),
                received_ts: super::create::now_ms(),
            }])
            .await?;
        tracing::info!(event_id = %pdu.event_id, room_id = %pdu.room_id, status = status.as_str(), %reason, "remote event kept outside the timeline");
        Ok(match status {
            EventStatus::Rejected => Received::Rejected(reason.to_owned()),
            EventStatus::SoftFailed => Received::SoftFailed(reason.to_owned()),
            EventStatus::Outlier => Received::Outlier(reason.to_owned()),
        })
    }

    /// A room joined through another server: its state (checked PDUs) stored behind all
    /// known history, the auth chain's other events as outliers, then our join added on top,
    /// authorised against that state like any event.
    pub async fn import_joined(
        self: &Arc<Self>,
        version: &ruma::RoomVersionId,
        state: Vec<Incoming>,
        outliers: Vec<Incoming>,
        join: Incoming,
    ) -> Result<OwnedEventId> {
        let this = self.clone();
        let version = version.clone();
        detached(async move {
            let room_id = join.pdu.room_id.clone();
            let creator = state
                .iter()
                .find(|e| {
                    e.pdu.kind == TimelineEventType::RoomCreate
                        && e.pdu.state_key.as_deref() == Some("")
                })
                .map(|e| e.pdu.sender.to_string())
                .ok_or_else(|| Error::Remote("the room's state has no create event".into()))?;
            let mut state = state;
            state.sort_by_key(|e| std::cmp::Reverse(e.pdu.depth));
            let first = this
                .lowest_pos
                .fetch_sub(state.len() as i64, std::sync::atomic::Ordering::SeqCst);
            let placed: Vec<Placed> = state
                .iter()
                .enumerate()
                .map(|(i, e)| Placed {
                    pos: first - 1 - i as i64,
                    edges: Edges::of(&e.pdu),
                    kind: e.pdu.kind.to_string(),
                    membership: (e.pdu.kind == TimelineEventType::RoomMember)
                        .then(|| e.pdu.membership())
                        .flatten(),
                })
                .collect();
            let imported: Vec<crate::store::ImportedEvent<'_>> = state
                .iter()
                .zip(&placed)
                .map(|(e, p)| crate::store::ImportedEvent {
                    stream_pos: p.pos,
                    event_id: e.pdu.event_id.as_str(),
                    sender: e.pdu.sender.as_str(),
                    event_type: &p.kind,
                    state_key: Some(e.pdu.state_key.as_deref().unwrap_or_default()),
                    membership: p.membership.as_deref(),
                    depth: i64::try_from(u64::from(e.pdu.depth)).unwrap_or(i64::MAX),
                    origin_server_ts: i64::from(e.pdu.origin_server_ts.0),
                    json: &e.json,
                    prev_events: &p.edges.prev,
                    auth_events: &p.edges.auth,
                    relates_to: None,
                })
                .collect();
            let group = crate::store::NewStateGroup {
                id: this
                    .state_groups
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                    + 1,
                prev_group: None,
                chain_len: 0,
                entries: imported
                    .iter()
                    .map(|e| {
                        (
                            e.event_type.to_owned(),
                            e.state_key.unwrap_or_default().to_owned(),
                            e.event_id.to_owned(),
                        )
                    })
                    .collect(),
            };
            let outlier_edges: Vec<Edges> = outliers.iter().map(|e| Edges::of(&e.pdu)).collect();
            let now = super::create::now_ms();
            let outside = as_outliers(&outliers, &outlier_edges, "auth chain of a joined room");
            this.graph
                .import_room(&crate::store::ImportedRoom {
                    room_id: room_id.as_str(),
                    version: version.as_str(),
                    creator: &creator,
                    now,
                    state: &imported,
                    group: &group,
                    outliers: &outside,
                })
                .await?;
            // A room held in memory from before (we had left it) loads again from the store.
            this.unload(&room_id).await;
            let mut guard = this
                .lock(&room_id)
                .await?
                .ok_or_else(|| Error::internal("the joined room did not load"))?;
            let room = guard.as_mut().expect("locked room is loaded");
            let auth: Vec<Arc<Pdu>> = join
                .pdu
                .auth_events
                .iter()
                .filter_map(|id| room.state.values().find(|p| p.event_id == *id).cloned())
                .collect();
            this.authorize(room, &join.pdu, &auth)?;
            let event_id = join.pdu.event_id.clone();
            let prepared = this.prepared(room, join.pdu, &join.object, None).await?;
            this.commit(room, vec![prepared]).await?;
            Ok(event_id)
        })
        .await
    }

    /// The template of a membership event (`join` or `leave`) for a remote user
    /// (`make_join`, `make_leave`): built on the room's forward extremities; 403 when the
    /// room's rules would not allow it. `supported`: the versions the user's server knows.
    pub async fn member_template(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: &str,
        supported: Option<&[ruma::RoomVersionId]>,
    ) -> Result<(ruma::RoomVersionId, CanonicalJsonObject)> {
        self.with_state(room_id, |room| {
            if supported.is_some_and(|s| !s.contains(&room.version)) {
                return Err(Error::IncompatibleRoomVersion(room.version.clone()));
            }
            let content = serde_json::json!({ "membership": membership });
            let content_raw = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
            let auth_types = ruma::state_res::auth_types_for_event(
                &TimelineEventType::RoomMember,
                user,
                Some(user.as_str()),
                &content_raw,
                &room.rules.authorization,
            )
            .map_err(Error::bad_json)?;
            let mut auth: Vec<OwnedEventId> = auth_types
                .iter()
                .filter_map(|(k, s)| room.state.get(&(k.clone(), s.clone())))
                .map(|p| p.event_id.clone())
                .collect();
            auth.sort();
            auth.dedup();
            let prev: Vec<OwnedEventId> = room
                .extremities
                .iter()
                .take(MAX_PREV_EVENTS)
                .cloned()
                .collect();
            let template = Pdu {
                event_id: ruma::owned_event_id!("$template"),
                room_id: room.room_id.clone(),
                sender: user.to_owned(),
                origin_server_ts: MilliSecondsSinceUnixEpoch::now(),
                kind: TimelineEventType::RoomMember,
                content: content_raw,
                state_key: Some(user.to_string()),
                prev_events: prev.clone(),
                auth_events: auth.clone(),
                depth: ruma::UInt::try_from(room.max_depth + 1).map_err(Error::internal)?,
                redacts: None,
            };
            ruma::state_res::check_state_dependent_auth_rules(
                &room.rules.authorization,
                &template,
                |kind, key| room.state.get(&(kind.clone(), key.to_owned())).cloned(),
            )
            .map_err(|e| Error::forbidden(format!("the room's rules do not allow this: {e}")))?;
            let mut object = CanonicalJsonObject::new();
            let ids = |v: &[OwnedEventId]| {
                CanonicalJsonValue::Array(
                    v.iter()
                        .map(|e| CanonicalJsonValue::String(e.to_string()))
                        .collect(),
                )
            };
            object.insert("auth_events".into(), ids(&auth));
            object.insert("prev_events".into(), ids(&prev));
            object.insert(
                "content".into(),
                ruma::canonical_json::to_canonical_value(&content).map_err(Error::internal)?,
            );
            object.insert("depth".into(), super::canon(&template.depth)?);
            object.insert(
                "origin_server_ts".into(),
                super::canon(&template.origin_server_ts)?,
            );
            object.insert("room_id".into(), room.room_id.as_str().into());
            object.insert("sender".into(), user.as_str().into());
            object.insert("state_key".into(), user.as_str().into());
            object.insert("type".into(), "m.room.member".into());
            Ok((room.version.clone(), object))
        })
        .await?
        .ok_or_else(|| Error::not_found("the room is not known here"))?
    }

    /// The state before an event in the timeline and its auth chain, as PDUs (`send_join`,
    /// `/state`): `(state, auth chain)`.
    pub async fn state_and_auth_chain_before(
        &self,
        event_id: &ruma::EventId,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let (state, chain) = self.state_and_auth_chain_ids_before(event_id).await?;
        let state_pdus = self.graph.pdus(&state).await?;
        let chain_pdus = self.graph.pdus(&chain).await?;
        Ok((
            state_pdus.into_iter().map(|p| p.json).collect(),
            chain_pdus.into_iter().map(|p| p.json).collect(),
        ))
    }

    /// The same as event ids (`/state_ids`).
    pub async fn state_and_auth_chain_ids_before(
        &self,
        event_id: &ruma::EventId,
    ) -> Result<(Vec<String>, Vec<String>)> {
        let row = self
            .store
            .get_event(event_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("event not found"))?;
        let state: Vec<String> = self
            .store
            .state_at_group(row.state_group)
            .await?
            .into_values()
            .collect();
        let mut roots = state.clone();
        roots.push(event_id.to_string());
        let chain = self.graph.auth_chain(&roots).await?;
        Ok((state, chain))
    }

    /// Where a remote event's history meets ours: the room's forward extremities and the
    /// event's prev events this server does not have; `None` for a room not known here.
    pub async fn gap_before(
        &self,
        pdu: &Pdu,
    ) -> Result<Option<(Vec<OwnedEventId>, Vec<OwnedEventId>)>> {
        let Some((tips, on_tips)) = self
            .with_state(&pdu.room_id, |room| {
                let on_tips = pdu.prev_events.iter().all(|p| room.extremities.contains(p));
                (room.extremities.clone(), on_tips)
            })
            .await?
        else {
            return Ok(None);
        };
        // The usual case, an event on our tips: no gap, nothing to look up.
        if on_tips {
            return Ok(Some((tips, vec![])));
        }
        let ids: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        // Events kept outside the timeline count as known, outliers (no state) do not.
        let known: std::collections::HashSet<String> = self
            .graph
            .pdus(&ids)
            .await?
            .into_iter()
            .filter(|p| p.status != Some(EventStatus::Outlier))
            .map(|p| p.event_id)
            .collect();
        let unknown = pdu
            .prev_events
            .iter()
            .filter(|e| !known.contains(e.as_str()))
            .cloned()
            .collect();
        Ok(Some((tips, unknown)))
    }

    /// The pending invite of a local user to a room only another server has.
    pub async fn remote_invite(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Option<crate::store::RemoteMembership>> {
        Ok(self
            .graph
            .remote_membership(user.as_str(), room_id.as_str())
            .await?
            .filter(|m| m.membership == "invite"))
    }

    /// A local user's membership in a room this server does not have (an invite from
    /// another server, its rejection), recorded at the next stream position so the user's
    /// sync shows it.
    pub async fn record_remote_membership(
        self: &Arc<Self>,
        membership: crate::store::RemoteMembership,
    ) -> Result<()> {
        let this = self.clone();
        detached(async move {
            let user = UserId::parse(&membership.user_id).map_err(Error::internal)?;
            let pos = this.stream.next();
            let membership = crate::store::RemoteMembership {
                stream_pos: pos.pos(),
                ..membership
            };
            this.graph.insert_remote_membership(&membership).await?;
            let (woken, _) = pos.finish(vec![user]);
            this.notifier.wake(woken.iter().map(|u| u.as_ref()));
            Ok(())
        })
        .await
    }
}

/// The state before a remote event that does not build on the current state, and its group
/// when one exists already.
struct Before {
    ids: StateIds,
    group: Option<i64>,
}

/// An event's edges as the store takes them.
struct Edges {
    prev: Vec<String>,
    auth: Vec<String>,
}

impl Edges {
    fn of(pdu: &Pdu) -> Self {
        Self {
            prev: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
            auth: pdu.auth_events.iter().map(|e| e.to_string()).collect(),
        }
    }
}

/// Where an imported state event goes.
struct Placed {
    pos: i64,
    edges: Edges,
    kind: String,
    membership: Option<String>,
}

/// The same failure for each of `count` events: the first gets the error itself, the others
/// its message.
/// Events known without their state, as rows outside the timeline (`edges`: theirs, in order).
fn as_outliers<'a>(
    events: &'a [Incoming],
    edges: &'a [Edges],
    reason: &'a str,
) -> Vec<OutsideEvent<'a>> {
    let now = super::create::now_ms();
    events
        .iter()
        .zip(edges)
        .map(|(e, edges)| OutsideEvent {
            event_id: e.pdu.event_id.as_str(),
            room_id: e.pdu.room_id.as_str(),
            depth: i64::try_from(u64::from(e.pdu.depth)).unwrap_or(i64::MAX),
            json: &e.json,
            prev_events: &edges.prev,
            auth_events: &edges.auth,
            status: EventStatus::Outlier,
            reason: Some(reason),
            received_ts: now,
        })
        .collect()
}

fn each_failed(error: Error, count: usize) -> Vec<Result<Received>> {
    let message = error.to_string();
    let mut first = Some(error);
    std::iter::repeat_with(|| Err(first.take().unwrap_or_else(|| Error::internal(&message))))
        .take(count)
        .collect()
}

/// Whether a remote event's state key and type make it a membership event of `user`.
pub fn is_member_event_of(pdu: &Pdu, user: &UserId, membership: &str) -> bool {
    pdu.kind == TimelineEventType::RoomMember
        && pdu.state_key.as_deref() == Some(user.as_str())
        && pdu.sender == user
        && pdu.membership().as_deref() == Some(membership)
}
