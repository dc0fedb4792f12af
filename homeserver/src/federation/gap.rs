//! Closing the gap before a received PDU whose prev events this server lacks (after an
//! outage, or when the sending server only passes on a room's latest event): first the events
//! in between, from the origin (`get_missing_events`, at most `MISSING_EVENTS`); where that
//! does not reach our history, the state after each still-missing prev event, as the origin
//! reports it (`/state_ids`, and `/state` and `/event` for what we lack), so the PDU can join
//! the timeline authorised against that state; the events in between stay missing (spec:
//! "Retrieving events" — the approach Synapse takes).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    OwnedEventId, RoomId, ServerName,
    api::federation::event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use super::{
    client::FederationClient,
    keys::ServerKeys,
    pdu::{self, CheckedPdu},
};
use crate::{
    clock::Clock,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    rooms::{
        Rooms,
        pdu::Pdu,
        receive::{Incoming, Received},
    },
    store::{GraphStore, StateIds},
};

/// Events fetched at most to fill a gap before a received PDU (as Synapse asks for).
const MISSING_EVENTS: u32 = 10;
/// What closing gaps may cost for one room's PDUs of one transaction, so that a sending server
/// cannot make us fetch without end: `get_missing_events` requests, and states fetched after
/// missing prev events (a PDU needing more stays outside the timeline).
pub struct Budget {
    missing_fetches: u8,
    state_fetches: usize,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            missing_fetches: 2,
            state_fetches: 4,
        }
    }
}

pub struct Gaps {
    rooms: Arc<Rooms>,
    graph: Arc<dyn GraphStore>,
    client: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
}

impl Gaps {
    pub fn new(
        rooms: Arc<Rooms>,
        graph: Arc<dyn GraphStore>,
        (client, keys): (Arc<FederationClient>, Arc<ServerKeys>),
        scope: FederationScope,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            rooms,
            graph,
            client,
            keys,
            scope,
            clock,
        }
    }

    /// Closes the gap before `checked` as far as `origin` can: the missing events in between
    /// added oldest first, then the states after the prev events still missing — to be
    /// handed to the room with the PDU. Empty when nothing is missing (or nothing could be
    /// learnt; the PDU then stays outside the timeline).
    pub async fn close(
        &self,
        origin: &ServerName,
        checked: &CheckedPdu,
        rules: &RoomVersionRules,
        budget: &mut Budget,
    ) -> HashMap<OwnedEventId, StateIds> {
        let pdu = &checked.pdu;
        let tips = match self.rooms.gap_before(pdu).await {
            Ok(Some((_, unknown))) if unknown.is_empty() => return HashMap::new(),
            Ok(Some((tips, _))) => tips,
            Ok(None) => return HashMap::new(),
            Err(e) => {
                tracing::info!(%origin, error = %e, "gap not looked at");
                return HashMap::new();
            }
        };
        if budget.missing_fetches > 0 {
            budget.missing_fetches -= 1;
            if let Err(e) = self.fetch_missing(origin, pdu, tips, rules, budget).await {
                tracing::info!(%origin, error = %e, "missing events not fetched");
            }
        }
        self.states_after_missing(origin, pdu, rules, budget).await
    }

    /// The events between our tips and `pdu` (`get_missing_events` at the origin), each
    /// checked and added oldest first, each with the state after its own missing prev events.
    async fn fetch_missing(
        &self,
        origin: &ServerName,
        pdu: &Pdu,
        tips: Vec<OwnedEventId>,
        rules: &RoomVersionRules,
        budget: &mut Budget,
    ) -> Result<()> {
        let mut request = get_missing_events::v1::Request::new(
            pdu.room_id.clone(),
            tips,
            vec![pdu.event_id.clone()],
        );
        request.limit = MISSING_EVENTS.into();
        let answer = self.client.request(origin, request).await?;
        let mut found = Vec::new();
        for raw in answer.events.iter().take(MISSING_EVENTS as usize) {
            match pdu::check(&self.keys, rules, raw, None, self.clock.now_ms()).await {
                Ok(c)
                    if c.pdu.room_id == pdu.room_id
                        && may_federate_with(&self.scope, c.pdu.sender.server_name()) =>
                {
                    found.push(c)
                }
                Ok(_) => {}
                Err(e) => tracing::info!(%origin, error = %e, "a missing event does not check out"),
            }
        }
        found.sort_by_key(|c| c.pdu.depth);
        for c in found {
            let id = c.pdu.event_id.clone();
            let prev_states = self
                .states_after_missing(origin, &c.pdu, rules, budget)
                .await;
            let incoming = Incoming::from(c).with_prev_states(prev_states);
            match self.rooms.receive(incoming, false).await {
                Ok(Received::Accepted | Received::Known) => {}
                Ok(other) => {
                    tracing::info!(%origin, event_id = %id, outcome = ?other, "a missing event was not added")
                }
                Err(e) => {
                    tracing::info!(%origin, event_id = %id, error = %e, "a missing event was not added")
                }
            }
        }
        Ok(())
    }

    /// The states after the prev events of `pdu` that are not in our timeline, from `origin`.
    async fn states_after_missing(
        &self,
        origin: &ServerName,
        pdu: &Pdu,
        rules: &RoomVersionRules,
        budget: &mut Budget,
    ) -> HashMap<OwnedEventId, StateIds> {
        let unknown = match self.rooms.gap_before(pdu).await {
            Ok(Some((_, unknown))) => unknown,
            Ok(None) => return HashMap::new(),
            Err(e) => {
                tracing::info!(%origin, error = %e, "gap not looked at");
                return HashMap::new();
            }
        };
        if unknown.is_empty() {
            return HashMap::new();
        }
        if unknown.len() > budget.state_fetches {
            tracing::info!(%origin, event_id = %pdu.event_id, missing = unknown.len(), "too many missing prev events to fetch the state of");
            return HashMap::new();
        }
        budget.state_fetches -= unknown.len();
        let mut states = HashMap::with_capacity(unknown.len());
        for prev in unknown {
            match self.state_after(origin, &pdu.room_id, &prev, rules).await {
                Ok(state) => {
                    states.insert(prev, state);
                }
                Err(e) => {
                    tracing::info!(%origin, event_id = %prev, error = %e, "the state after a missing event was not fetched");
                    return HashMap::new();
                }
            }
        }
        states
    }

    /// The state after `prev` as `origin` reports it: the state before it (`/state_ids`),
    /// with `prev` itself if it is a state event. The events of that state and their auth
    /// chain that we lack are fetched, checked and kept as outliers.
    async fn state_after(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        prev: &OwnedEventId,
        rules: &RoomVersionRules,
    ) -> Result<StateIds> {
        let ids = self
            .client
            .request(
                origin,
                get_room_state_ids::v1::Request::new(prev.clone(), room_id.to_owned()),
            )
            .await?;
        let mut wanted: Vec<String> = ids
            .pdu_ids
            .iter()
            .chain(&ids.auth_chain_ids)
            .map(|e| e.to_string())
            .collect();
        wanted.push(prev.to_string());
        // What we hold must be of this room and not rejected: another server's list names
        // only ids, and may name anything.
        let mut known = HashSet::new();
        for p in self.graph.pdus(&wanted).await? {
            usable_in(&p, room_id)?;
            known.insert(p.event_id);
        }
        let mut lacking: HashSet<&str> = wanted
            .iter()
            .map(String::as_str)
            .filter(|id| !known.contains(*id))
            .collect();
        let mut fetched: Vec<CheckedPdu> = Vec::new();
        if lacking.iter().any(|id| *id != prev.as_str()) {
            let state = self
                .client
                .request(
                    origin,
                    get_room_state::v1::Request::new(prev.clone(), room_id.to_owned()),
                )
                .await?;
            for raw in state.pdus.iter().chain(&state.auth_chain) {
                self.take_if_lacking(raw, room_id, rules, &mut lacking, &mut fetched)
                    .await?;
            }
        }
        if lacking.contains(prev.as_str()) {
            let event = self
                .client
                .request(origin, get_event::v1::Request::new(prev.clone()))
                .await?;
            self.take_if_lacking(&event.pdu, room_id, rules, &mut lacking, &mut fetched)
                .await?;
        }
        if let Some(id) = lacking.iter().next() {
            return Err(Error::Remote(format!("{origin} did not send {id}")));
        }
        self.check_auth(&fetched, rules).await?;
        self.rooms
            .keep_fetched(
                fetched.into_iter().map(Incoming::from).collect(),
                "state at a gap",
            )
            .await?;
        // The state's (type, state key) pairs, from the events now all stored.
        let mut ids_of_state: Vec<String> = ids.pdu_ids.iter().map(|e| e.to_string()).collect();
        ids_of_state.push(prev.to_string());
        let mut state = StateIds::new();
        let mut prev_entry = None;
        for row in self.graph.pdus(&ids_of_state).await? {
            usable_in(&row, room_id)?;
            let event = Pdu::from_json(&row.event_id, &row.json).map_err(Error::internal)?;
            let Some(key) = event.state_key.clone() else {
                continue;
            };
            let entry = ((event.kind.to_string(), key), row.event_id.clone());
            if row.event_id == prev.as_str() {
                prev_entry = Some(entry);
            } else {
                state.insert(entry.0, entry.1);
            }
        }
        if let Some((key, id)) = prev_entry {
            state.insert(key, id);
        }
        Ok(state)
    }

    /// Checks `raw` and keeps it when it is one of the `lacking` events of the room.
    async fn take_if_lacking(
        &self,
        raw: &RawValue,
        room_id: &RoomId,
        rules: &RoomVersionRules,
        lacking: &mut HashSet<&str>,
        fetched: &mut Vec<CheckedPdu>,
    ) -> Result<()> {
        // The id is a hash: cheap to compute before the signatures are checked.
        let Ok(id) = super::receiver::computed_id(raw, rules) else {
            return Ok(());
        };
        if !lacking.contains(id.as_str()) {
            return Ok(());
        }
        let checked = pdu::check(&self.keys, rules, raw, None, self.clock.now_ms())
            .await
            .map_err(|e| Error::Remote(format!("an event of the state does not check out: {e}")))?;
        if checked.pdu.room_id != room_id {
            return Err(Error::Remote(
                "an event of the state is of another room".into(),
            ));
        }
        lacking.remove(id.as_str());
        fetched.push(checked);
        Ok(())
    }

    /// Each fetched event passes the auth rules against its own auth events (fetched with it
    /// or stored before).
    async fn check_auth(&self, fetched: &[CheckedPdu], rules: &RoomVersionRules) -> Result<()> {
        let mut by_id: HashMap<OwnedEventId, Arc<Pdu>> = fetched
            .iter()
            .map(|c| (c.pdu.event_id.clone(), Arc::new(c.pdu.clone())))
            .collect();
        let stored: Vec<String> = fetched
            .iter()
            .flat_map(|c| &c.pdu.auth_events)
            .filter(|id| !by_id.contains_key(*id))
            .map(|id| id.to_string())
            .collect();
        for row in self.graph.pdus(&stored).await? {
            let event = Pdu::from_json(&row.event_id, &row.json).map_err(Error::internal)?;
            by_id.insert(event.event_id.clone(), Arc::new(event));
        }
        for c in fetched {
            crate::rooms::history::auth_against_auth_events(&rules.authorization, &c.pdu, |id| {
                by_id.get(id).cloned()
            })
            .map_err(|e| {
                Error::Remote(format!(
                    "an event of the state fails the auth rules ({}): {e}",
                    c.pdu.event_id
                ))
            })?;
        }
        Ok(())
    }
}

/// A stored event another server named as part of a room's state: it must be of that room,
/// and neither rejected nor soft-failed.
fn usable_in(p: &crate::store::StoredPdu, room_id: &RoomId) -> Result<()> {
    use crate::store::EventStatus;
    if p.room_id != room_id.as_str() {
        return Err(Error::Remote(format!(
            "the state names {}, an event of another room",
            p.event_id
        )));
    }
    match p.status {
        None | Some(EventStatus::Outlier) => Ok(()),
        Some(_) => Err(Error::Remote(format!(
            "the state names {}, an event not accepted here",
            p.event_id
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{EventStatus, StoredPdu};

    fn stored(room: &str, status: Option<EventStatus>) -> StoredPdu {
        StoredPdu {
            event_id: "$e".into(),
            room_id: room.into(),
            depth: 1,
            json: "{}".into(),
            status,
            reason: None,
        }
    }

    #[test]
    fn a_reported_state_may_name_only_accepted_events_of_its_room() {
        let room = ruma::room_id!("!r:praxis.example");
        assert!(usable_in(&stored("!r:praxis.example", None), room).is_ok());
        assert!(
            usable_in(
                &stored("!r:praxis.example", Some(EventStatus::Outlier)),
                room
            )
            .is_ok()
        );
        assert!(usable_in(&stored("!other:praxis.example", None), room).is_err());
        for status in [EventStatus::Rejected, EventStatus::SoftFailed] {
            assert!(usable_in(&stored("!r:praxis.example", Some(status)), room).is_err());
        }
    }
}
