//! State resolution v2 (`ruma::state_res`) for a room whose history forked: the states to
//! merge and the events they and their auth chains name are loaded from the store, then
//! resolved in memory.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::{RoomVersionRules, StateResolutionVersion},
    state_res::{StateMap, utils::event_id_set::EventIdSet},
};

use super::{Rooms, pdu::Pdu};
use crate::{
    error::{Error, Result},
    store::{EventStatus, StateIds},
};

impl Rooms {
    /// One state out of several (state resolution v2 of the room's version).
    /// `pending`: an event not stored yet that a state may name (its auth events are used
    /// for the auth chain).
    pub(super) async fn resolve_states(
        &self,
        rules: &RoomVersionRules,
        states: &[StateIds],
        pending: Option<&Arc<Pdu>>,
    ) -> Result<StateIds> {
        let StateResolutionVersion::V2(v2) = &rules.state_res else {
            return Err(Error::internal("room version without state resolution v2"));
        };
        let maps: Vec<StateMap<OwnedEventId>> = states.iter().map(state_map).collect();
        let mut wanted: HashSet<String> = HashSet::new();
        let mut chains = Vec::with_capacity(states.len());
        let pending_id = pending.map(|p| p.event_id.to_string());
        for state in states {
            let mut ids: Vec<String> = state.values().cloned().collect();
            // The pending event's place in the auth graph: its auth events and their chains.
            if let Some(p) = pending
                && let Some(at) = ids.iter().position(|id| Some(id) == pending_id.as_ref())
            {
                ids.remove(at);
                ids.extend(p.auth_events.iter().map(|a| a.to_string()));
            }
            let mut chain = self.graph.auth_chain(&ids).await?;
            if let Some(p) = pending
                && state.values().any(|id| Some(id) == pending_id.as_ref())
            {
                chain.extend(p.auth_events.iter().map(|a| a.to_string()));
            }
            chains.push(
                chain
                    .iter()
                    .filter_map(|id| OwnedEventId::try_from(id.as_str()).ok())
                    .collect::<EventIdSet<OwnedEventId>>(),
            );
            wanted.extend(ids);
            wanted.extend(chain);
        }
        let wanted: Vec<String> = wanted.into_iter().collect();
        // Rejected events take no part (the resolution cannot "verify" them).
        let mut events: HashMap<OwnedEventId, Arc<Pdu>> = self
            .graph
            .pdus(&wanted)
            .await?
            .into_iter()
            .filter(|p| p.status != Some(EventStatus::Rejected))
            .filter_map(|p| Pdu::from_json(&p.event_id, &p.json).ok())
            .map(|p| (p.event_id.clone(), Arc::new(p)))
            .collect();
        if let Some(p) = pending {
            events.insert(p.event_id.clone(), p.clone());
        }
        let resolved = ruma::state_res::resolve(
            &rules.authorization,
            v2,
            &maps,
            chains,
            |id: &EventId| events.get(id).cloned(),
            |conflicted: &StateMap<Vec<OwnedEventId>>| {
                Some(conflicted_subgraph(conflicted, &events))
            },
        )
        .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
        Ok(resolved
            .into_iter()
            .map(|((kind, key), id)| ((kind.to_string(), key), id.to_string()))
            .collect())
    }
}

fn state_map(state: &StateIds) -> StateMap<OwnedEventId> {
    state
        .iter()
        .filter_map(|((kind, key), id)| {
            Some((
                (StateEventType::from(kind.as_str()), key.clone()),
                OwnedEventId::try_from(id.as_str()).ok()?,
            ))
        })
        .collect()
}

/// The conflicted state subgraph (room versions with state resolution v2.1): the events on an
/// auth-event path from one conflicted event to another, those included.
fn conflicted_subgraph(
    conflicted: &StateMap<Vec<OwnedEventId>>,
    events: &HashMap<OwnedEventId, Arc<Pdu>>,
) -> EventIdSet<OwnedEventId> {
    let targets: HashSet<&EventId> = conflicted.values().flatten().map(|e| e.as_ref()).collect();
    // Whether an event reaches a conflicted event through auth events (itself counts),
    // computed depth-first without recursion.
    let mut reaches: HashMap<&EventId, bool> = HashMap::new();
    for start in &targets {
        let mut stack: Vec<(&EventId, bool)> = vec![(start, false)];
        while let Some((id, expanded)) = stack.pop() {
            if reaches.contains_key(id) {
                continue;
            }
            let auth = events
                .get(id)
                .map(|p| p.auth_events.as_slice())
                .unwrap_or(&[]);
            if expanded {
                let found = targets.contains(id)
                    || auth
                        .iter()
                        .any(|a| reaches.get(&**a).copied().unwrap_or(false));
                reaches.insert(id, found);
            } else {
                stack.push((id, true));
                for a in auth {
                    if !reaches.contains_key(&**a) {
                        stack.push((a, false));
                    }
                }
            }
        }
    }
    // Visited from a conflicted event = its ancestor; reaching one = a descendant of one.
    reaches
        .into_iter()
        .filter(|(_, found)| *found)
        .map(|(id, _)| id.to_owned())
        .collect()
}
