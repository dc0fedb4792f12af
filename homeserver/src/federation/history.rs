//! What other servers may read of a room's graph: single events, the state and auth chain at
//! an event, history before given events (`/backfill`) and the events between their tips and
//! ours (`/get_missing_events`). Only servers with members in the room are answered.

use std::sync::Arc;

use ruma::{EventId, RoomId, ServerName};

use crate::{
    error::{Error, Result},
    rooms::Rooms,
    store::{EventStatus, GraphStore, StoredPdu},
};

/// Most events one `/backfill` or `/get_missing_events` answer carries.
const MAX_EVENTS: u64 = 100;

pub struct History {
    rooms: Arc<Rooms>,
    graph: Arc<dyn GraphStore>,
}

/// The state before an event and the auth chain of it and that state (PDUs or event ids).
pub struct StateAt {
    pub state: Vec<String>,
    pub auth_chain: Vec<String>,
}

impl History {
    pub fn new(rooms: Arc<Rooms>, graph: Arc<dyn GraphStore>) -> Self {
        Self { rooms, graph }
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
        Ok(pdu.json)
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
        Ok(usable(events.into_iter().take(limit as usize).collect()))
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
        Ok(usable(events))
    }
}

/// PDUs other servers may be given: not rejected ones.
fn usable(pdus: Vec<StoredPdu>) -> Vec<String> {
    pdus.into_iter()
        .filter(|p| p.status != Some(EventStatus::Rejected))
        .map(|p| p.json)
        .collect()
}
