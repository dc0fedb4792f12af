//! History from other servers (backfill), after `federation::pdu::check`: each event
//! authorised against its auth events, then placed in the timeline *behind* all known history
//! — below every stream position in use, so sync never shows it as new — where `/messages`
//! finds it by its depth.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::Ordering},
};

use ruma::{OwnedEventId, RoomId, events::TimelineEventType};

use super::{Rooms, pdu::Pdu, receive::Incoming, write::relation_of};
use crate::{
    error::{Error, Result},
    homeserver::detached,
    store::{EventStatus, ImportedEvent, OutsideEvent},
};

/// What became of a batch of history.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// Added to the timeline.
    pub added: usize,
    /// Failed the auth rules against their auth events (kept as rejected).
    pub rejected: usize,
}

impl Rooms {
    /// Adds fetched history of `room_id` to its timeline. Each event must pass the auth rules
    /// against its auth events (spec: checks on receipt, step 4: from the batch, the timeline
    /// or outside it); one that fails is kept as rejected, one whose auth events are unknown
    /// stays an outlier. Events already in the timeline are skipped.
    pub async fn import_history(
        self: &Arc<Self>,
        room_id: &RoomId,
        events: Vec<Incoming>,
    ) -> Result<Backfilled> {
        let this = self.clone();
        let room_id = room_id.to_owned();
        detached(async move {
            let rules = {
                let guard = this
                    .lock(&room_id)
                    .await?
                    .ok_or_else(|| Error::not_found("the room is not known here"))?;
                guard.as_ref().expect("locked room is loaded").rules.clone()
            };
            let ids: Vec<String> = events.iter().map(|e| e.pdu.event_id.to_string()).collect();
            let known: HashMap<String, Option<EventStatus>> = this
                .graph
                .pdus(&ids)
                .await?
                .into_iter()
                .map(|p| (p.event_id, p.status))
                .collect();
            let mut events: Vec<Incoming> = events
                .into_iter()
                .filter(|e| e.pdu.room_id == room_id)
                .filter(|e| match known.get(e.pdu.event_id.as_str()) {
                    None | Some(Some(EventStatus::Outlier)) => true,
                    Some(_) => false,
                })
                .collect();
            // Oldest first, so an auth event in the batch is judged before what it authorises.
            events.sort_by_key(|e| e.pdu.depth);
            events.dedup_by(|a, b| a.pdu.event_id == b.pdu.event_id);
            let batch: HashMap<OwnedEventId, Arc<Pdu>> = events
                .iter()
                .map(|e| (e.pdu.event_id.clone(), Arc::new(e.pdu.clone())))
                .collect();
            let wanted: Vec<String> = events
                .iter()
                .flat_map(|e| e.pdu.auth_events.iter().map(|a| a.to_string()))
                .filter(|a| !batch.contains_key(a.as_str()))
                .collect();
            let mut stored: HashMap<OwnedEventId, (Arc<Pdu>, Option<EventStatus>)> =
                HashMap::new();
            for p in this.graph.pdus(&wanted).await? {
                let pdu = Pdu::from_json(&p.event_id, &p.json).map_err(Error::internal)?;
                stored.insert(pdu.event_id.clone(), (Arc::new(pdu), p.status));
            }
            let mut accepted = Vec::new();
            let mut rejected: Vec<(&Incoming, String)> = Vec::new();
            let mut rejected_ids = std::collections::HashSet::new();
            for e in &events {
                let auth_rejected = e.pdu.auth_events.iter().any(|a| {
                    rejected_ids.contains(a)
                        || stored
                            .get(a)
                            .is_some_and(|(_, s)| *s == Some(EventStatus::Rejected))
                });
                let lookup = |id: &ruma::EventId| {
                    batch
                        .get(id)
                        .cloned()
                        .or_else(|| stored.get(id).map(|(p, _)| p.clone()))
                };
                if e.pdu.auth_events.iter().any(|a| lookup(a).is_none()) {
                    // Left as it was (or an outlier): the caller fetches auth chains first.
                    continue;
                }
                let verdict = if auth_rejected {
                    Err("an auth event was rejected".to_owned())
                } else {
                    auth_against_auth_events(&rules.authorization, &e.pdu, lookup)
                };
                match verdict {
                    Ok(()) => accepted.push(e),
                    Err(reason) => {
                        rejected_ids.insert(e.pdu.event_id.clone());
                        rejected.push((e, reason));
                    }
                }
            }
            let now = super::create::now_ms();
            let rejected_parts: Vec<Parts> = rejected.iter().map(|(e, _)| Parts::of(&e.pdu)).collect();
            let outside: Vec<OutsideEvent<'_>> = rejected
                .iter()
                .zip(&rejected_parts)
                .map(|((e, reason), p)| OutsideEvent {
                    event_id: e.pdu.event_id.as_str(),
                    room_id: e.pdu.room_id.as_str(),
                    depth: depth_of(&e.pdu),
                    json: &e.json,
                    prev_events: &p.prev,
                    auth_events: &p.auth,
                    status: EventStatus::Rejected,
                    reason: Some(reason),
                    received_ts: now,
                })
                .collect();
            if !outside.is_empty() {
                this.graph.store_outside_timeline(&outside).await?;
                for (e, reason) in &rejected {
                    tracing::info!(event_id = %e.pdu.event_id, %room_id, %reason, "backfilled event rejected");
                }
            }
            if accepted.is_empty() {
                return Ok(Backfilled {
                    added: 0,
                    rejected: rejected.len(),
                });
            }
            // The newest gets the highest of the fresh positions below all known history.
            let first = this
                .lowest_pos
                .fetch_sub(accepted.len() as i64, Ordering::SeqCst);
            let parts: Vec<Parts> = accepted.iter().map(|e| Parts::of(&e.pdu)).collect();
            let rows: Vec<ImportedEvent<'_>> = accepted
                .iter()
                .zip(&parts)
                .enumerate()
                .map(|(i, (e, p))| ImportedEvent {
                    // `accepted` is oldest first: the last one sits just below `first`.
                    stream_pos: first - accepted.len() as i64 + i as i64,
                    event_id: e.pdu.event_id.as_str(),
                    sender: e.pdu.sender.as_str(),
                    event_type: &p.kind,
                    state_key: e.pdu.state_key.as_deref(),
                    membership: p.membership.as_deref(),
                    depth: depth_of(&e.pdu),
                    origin_server_ts: i64::from(e.pdu.origin_server_ts.0),
                    json: &e.json,
                    prev_events: &p.prev,
                    auth_events: &p.auth,
                    relates_to: p
                        .rel
                        .as_ref()
                        .map(|(a, b, c)| (a.as_str(), b.as_str(), c.as_deref())),
                })
                .collect();
            // History carries the earliest state this server knows of the room: it never
            // becomes current state nor the basis of an auth check (see `state_before`).
            let group = this
                .graph
                .earliest_state_group(room_id.as_str())
                .await?
                .ok_or_else(|| Error::not_found("the room has no timeline here"))?;
            this.graph
                .insert_history(room_id.as_str(), &rows, group)
                .await?;
            Ok(Backfilled {
                added: rows.len(),
                rejected: rejected.len(),
            })
        })
        .await
    }
}

/// The auth rules checked against the event's own auth events only (the state before a
/// backfilled or fetched event is not known here): the state-independent rules, then the
/// others with the auth events standing in for the state.
pub(crate) fn auth_against_auth_events(
    rules: &ruma::room_version_rules::AuthorizationRules,
    pdu: &Pdu,
    lookup: impl Fn(&ruma::EventId) -> Option<Arc<Pdu>>,
) -> std::result::Result<(), String> {
    ruma::state_res::check_state_independent_auth_rules(rules, pdu, &lookup)
        .map_err(|e| e.to_string())?;
    let auth: Vec<Arc<Pdu>> = pdu.auth_events.iter().filter_map(|a| lookup(a)).collect();
    ruma::state_res::check_state_dependent_auth_rules(rules, pdu, |kind, key| {
        auth.iter()
            .find(|a| a.kind.to_string() == kind.to_string() && a.state_key.as_deref() == Some(key))
            .cloned()
    })
    .map_err(|e| e.to_string())
}

fn depth_of(pdu: &Pdu) -> i64 {
    i64::try_from(u64::from(pdu.depth)).unwrap_or(i64::MAX)
}

/// The owned pieces of a row.
struct Parts {
    kind: String,
    membership: Option<String>,
    prev: Vec<String>,
    auth: Vec<String>,
    rel: Option<(String, String, Option<String>)>,
}

impl Parts {
    fn of(pdu: &Pdu) -> Self {
        Self {
            kind: pdu.kind.to_string(),
            membership: (pdu.kind == TimelineEventType::RoomMember)
                .then(|| pdu.membership())
                .flatten(),
            prev: pdu.prev_events.iter().map(|e| e.to_string()).collect(),
            auth: pdu.auth_events.iter().map(|e| e.to_string()).collect(),
            rel: relation_of(&pdu.content_value()),
        }
    }
}
