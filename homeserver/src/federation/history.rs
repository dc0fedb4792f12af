//! What other servers may read of a room's graph: single events, the state and auth chain at
//! an event, history before given events (`/backfill`) and the events between their tips and
//! ours (`/get_missing_events`). Only servers with members in the room are answered, and an
//! event the room's history visibility hid from all of a server's users goes to it redacted
//! (the graph stays walkable, the content stays here).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ruma::{CanonicalJsonObject, EventId, RoomId, RoomVersionId, ServerName};

use crate::{
    error::{Error, Result},
    rooms::{Rooms, pdu::Pdu},
    store::{EventStatus, EventStore, GraphStore, StateIds, StoredPdu},
};

const HISTORY_VISIBILITY: &str = "m.room.history_visibility";

/// Most events one `/backfill` or `/get_missing_events` answer carries.
const MAX_EVENTS: u64 = 100;

pub struct History {
    rooms: Arc<Rooms>,
    graph: Arc<dyn GraphStore>,
    events: Arc<dyn EventStore>,
}

/// The state before an event and the auth chain of it and that state (PDUs or event ids).
pub struct StateAt {
    pub state: Vec<String>,
    pub auth_chain: Vec<String>,
}

impl History {
    pub fn new(
        rooms: Arc<Rooms>,
        (graph, events): (Arc<dyn GraphStore>, Arc<dyn EventStore>),
    ) -> Self {
        Self {
            rooms,
            graph,
            events,
        }
    }

    /// The events as `origin` may have them: whole where the history visibility after the
    /// event let one of its users see it (as a member before or after it) (spec: "Server behaviour" of history visibility,
    /// as Synapse applies it), else redacted. Events outside the timeline are judged by the
    /// room's current state.
    async fn as_seen_by(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        pdus: Vec<StoredPdu>,
    ) -> Result<Vec<String>> {
        let pdus: Vec<StoredPdu> = pdus
            .into_iter()
            .filter(|p| p.status != Some(EventStatus::Rejected))
            .collect();
        if pdus.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<String> = pdus.iter().map(|p| p.event_id.clone()).collect();
        let groups: HashMap<String, i64> = self
            .events
            .get_events(&ids)
            .await?
            .into_iter()
            .map(|r| (r.event_id, r.state_group))
            .collect();
        // The states the events follow: one look-up per state group, and the current state.
        let mut states: HashMap<Option<i64>, StateIds> = HashMap::new();
        for group in pdus.iter().map(|p| groups.get(&p.event_id).copied()) {
            if let std::collections::hash_map::Entry::Vacant(slot) = states.entry(group) {
                slot.insert(match group {
                    Some(g) => self.events.state_at_group(g).await?,
                    None => self.events.current_state_ids(room_id.as_str()).await?,
                });
            }
        }
        // The settings and the memberships of `origin`'s users those states name.
        let suffix = format!(":{origin}");
        let mut needed: HashSet<String> = HashSet::new();
        for state in states.values() {
            for ((kind, key), id) in state {
                if kind == HISTORY_VISIBILITY || (kind == "m.room.member" && key.ends_with(&suffix))
                {
                    needed.insert(id.clone());
                }
            }
        }
        let needed: Vec<String> = needed.into_iter().collect();
        let contents: HashMap<String, Pdu> = self
            .graph
            .pdus(&needed)
            .await?
            .into_iter()
            .filter_map(|p| {
                Some((
                    p.event_id.clone(),
                    Pdu::from_json(&p.event_id, &p.json).ok()?,
                ))
            })
            .collect();
        let mut rules = None;
        let mut out = Vec::with_capacity(pdus.len());
        for p in pdus {
            let event = Pdu::from_json(&p.event_id, &p.json).map_err(Error::internal)?;
            let state = &states[&groups.get(&p.event_id).copied()];
            // The state after the event: a state event counts itself.
            let setting = |key: (&str, &str)| -> Option<&Pdu> {
                if event.kind.to_string() == key.0 && event.state_key.as_deref() == Some(key.1) {
                    return Some(&event);
                }
                contents.get(state.get(&(key.0.to_owned(), key.1.to_owned()))?)
            };
            let visibility = setting((HISTORY_VISIBILITY, ""))
                .and_then(|e| {
                    let content: serde_json::Value = serde_json::from_str(e.content.get()).ok()?;
                    content
                        .get("history_visibility")?
                        .as_str()
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "shared".into());
            // The memberships before the event and, for one of the server's own members, after
            // it too (the more permissive: a user's leave goes out whole, as Synapse does).
            let mut memberships: Vec<String> = state
                .iter()
                .filter(|((kind, key), _)| kind == "m.room.member" && key.ends_with(&suffix))
                .filter_map(|(_, id)| contents.get(id))
                .filter_map(|e| e.membership())
                .collect();
            if event.kind.to_string() == "m.room.member"
                && event
                    .state_key
                    .as_deref()
                    .is_some_and(|k| k.ends_with(&suffix))
                && let Some(m) = event.membership()
            {
                memberships.push(m);
            }
            if server_may_see(&visibility, &memberships) {
                out.push(p.json);
                continue;
            }
            if rules.is_none() {
                let version = self
                    .events
                    .room_version(room_id.as_str())
                    .await?
                    .and_then(|v| RoomVersionId::try_from(v.as_str()).ok())
                    .and_then(|v| v.rules())
                    .ok_or_else(|| Error::internal("the room's version is not known"))?;
                rules = Some(version);
            }
            let rules = rules.as_ref().expect("set above");
            let object: CanonicalJsonObject =
                serde_json::from_str(&p.json).map_err(Error::internal)?;
            let pruned = ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(Error::internal)?;
            out.push(serde_json::to_string(&pruned).map_err(Error::internal)?);
        }
        Ok(out)
    }

    /// 403 unless `origin` has members in the room (404 for a room not known here).
    async fn check_access(&self, origin: &ServerName, room_id: &RoomId) -> Result<()> {
        match self.rooms.server_in_room(room_id, origin).await? {
            Some(true) => Ok(()),
            Some(false) => Err(Error::forbidden(format!(
                "{origin} has no members in this room"
            ))),
            None => Err(Error::not_found("the room is not known here")),
        }
    }

    /// 404 unless the event is one of the room's (access to one room reads no other).
    async fn check_in_room(&self, room_id: &RoomId, event_id: &EventId) -> Result<()> {
        let found = self.graph.pdus(&[event_id.to_string()]).await?;
        if found.iter().any(|p| p.room_id == room_id.as_str()) {
            Ok(())
        } else {
            Err(Error::not_found("the event is not in this room"))
        }
    }

    /// One event (not a rejected one) as its PDU.
    pub async fn event(&self, origin: &ServerName, event_id: &EventId) -> Result<String> {
        let pdu = self
            .graph
            .pdus(&[event_id.to_string()])
            .await?
            .into_iter()
            .find(|p| p.status != Some(EventStatus::Rejected))
            .ok_or_else(|| Error::not_found("event not found"))?;
        let room_id = RoomId::parse(&pdu.room_id).map_err(Error::internal)?;
        self.check_access(origin, &room_id).await?;
        self.as_seen_by(origin, &room_id, vec![pdu])
            .await?
            .pop()
            .ok_or_else(|| Error::not_found("event not found"))
    }

    /// The state before `event_id` and the auth chain, as PDUs (`/state`) or as event ids
    /// (`ids`: `/state_ids`).
    pub async fn state_at(
        &self,
        origin: &ServerName,
        (room_id, event_id): (&RoomId, &EventId),
        ids: bool,
    ) -> Result<StateAt> {
        self.check_access(origin, room_id).await?;
        self.check_in_room(room_id, event_id).await?;
        let (state, auth_chain) = if ids {
            self.rooms.state_and_auth_chain_ids_before(event_id).await?
        } else {
            self.rooms.state_and_auth_chain_before(event_id).await?
        };
        Ok(StateAt { state, auth_chain })
    }

    /// The auth chain of an event (`/event_auth`).
    pub async fn auth_chain(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
    ) -> Result<Vec<String>> {
        self.check_access(origin, room_id).await?;
        self.check_in_room(room_id, event_id).await?;
        let chain = self.graph.auth_chain(&[event_id.to_string()]).await?;
        Ok(usable(self.graph.pdus(&chain).await?))
    }

    /// Up to `limit` events before and including `from`, newest first (`/backfill`).
    pub async fn backfill(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        from: &[ruma::OwnedEventId],
        limit: u64,
    ) -> Result<Vec<String>> {
        self.check_access(origin, room_id).await?;
        let limit = limit.clamp(1, MAX_EVENTS) as i64;
        let from: Vec<String> = from.iter().map(|e| e.to_string()).collect();
        let events = self
            .graph
            .walk_back(room_id.as_str(), &from, &[], 0, limit, true)
            .await?;
        let events = events.into_iter().take(limit as usize).collect();
        self.as_seen_by(origin, room_id, events).await
    }

    /// The events before `latest` and after `earliest` (not those themselves), at most
    /// `limit`, oldest first (`/get_missing_events`).
    pub async fn missing(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        (earliest, latest): (&[ruma::OwnedEventId], &[ruma::OwnedEventId]),
        (limit, min_depth): (u64, u64),
    ) -> Result<Vec<String>> {
        self.check_access(origin, room_id).await?;
        let limit = limit.clamp(1, MAX_EVENTS) as i64;
        let ids = |v: &[ruma::OwnedEventId]| v.iter().map(|e| e.to_string()).collect::<Vec<_>>();
        let mut events = self
            .graph
            .walk_back(
                room_id.as_str(),
                &ids(latest),
                &ids(earliest),
                i64::try_from(min_depth).unwrap_or(i64::MAX),
                limit,
                false,
            )
            .await?;
        events.truncate(limit as usize);
        events.reverse();
        self.as_seen_by(origin, room_id, events).await
    }
}

/// Whether a server whose users had `memberships` in the state after an event may see it
/// under `visibility` (`shared` and `world_readable`: any server in the room).
fn server_may_see(visibility: &str, memberships: &[String]) -> bool {
    match visibility {
        "joined" => memberships.iter().any(|m| m == "join"),
        "invited" => memberships.iter().any(|m| m == "join" || m == "invite"),
        _ => true,
    }
}

/// PDUs other servers may be given: not rejected ones.
fn usable(pdus: Vec<StoredPdu>) -> Vec<String> {
    pdus.into_iter()
        .filter(|p| p.status != Some(EventStatus::Rejected))
        .map(|p| p.json)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_see_what_their_users_could() {
        let of = |m: &[&str]| m.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        for open in ["shared", "world_readable", "something_new"] {
            assert!(server_may_see(open, &of(&[])));
        }
        assert!(server_may_see("joined", &of(&["leave", "join"])));
        assert!(!server_may_see("joined", &of(&["invite", "leave"])));
        assert!(server_may_see("invited", &of(&["invite"])));
        assert!(!server_may_see("invited", &of(&["leave", "ban"])));
        assert!(!server_may_see("joined", &of(&[])));
    }
}
