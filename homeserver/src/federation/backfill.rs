//! History this server does not have yet: when a client pages `/messages` back past the
//! start of what is stored of a room other servers share (a room joined over federation), the
//! events before it are fetched from those servers (`/backfill`), checked and placed behind the
//! known history, and the page is read again.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use ruma::{
    OwnedEventId, OwnedRoomId, RoomId, RoomVersionId, UserId,
    api::federation::backfill::get_backfill,
};

use super::{client::FederationClient, keys::ServerKeys, pdu};
use crate::{
    clock::Clock,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    rooms::{Page, PagePoint, Rooms, history::Backfilled, receive::Incoming},
    store::{Direction, EventFilter, EventStore, GraphStore},
};

/// Events asked for per `/backfill` request: at least, and at most.
const MIN_BATCH: i64 = 20;
const MAX_BATCH: i64 = 100;
/// Backward extremities named in one request (the spec sets no limit; servers cap what they
/// walk).
const MAX_EXTREMITIES: usize = 20;
/// Gaps no server filled are not asked about again for this long.
const RETRY_AFTER_MS: i64 = 60_000;

pub struct Backfiller {
    rooms: Arc<Rooms>,
    client: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    events: Arc<dyn EventStore>,
    graph: Arc<dyn GraphStore>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
    enabled: bool,
    /// Per room, the gaps last asked about in vain and when (bounded: one entry per room,
    /// dropped after `RETRY_AFTER_MS`).
    fruitless: Mutex<HashMap<OwnedRoomId, (Vec<String>, i64)>>,
}

impl Backfiller {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rooms: Arc<Rooms>,
        (client, keys): (Arc<FederationClient>, Arc<ServerKeys>),
        (events, graph): (Arc<dyn EventStore>, Arc<dyn GraphStore>),
        scope: FederationScope,
        clock: Arc<dyn Clock>,
        enabled: bool,
    ) -> Self {
        Self {
            rooms,
            client,
            keys,
            events,
            graph,
            scope,
            clock,
            enabled,
            fruitless: Mutex::default(),
        }
    }

    /// `/messages`: a page of the room as the user may see it. Paging backwards past the
    /// start of the stored history of a room shared with other servers fetches the history
    /// before it from them first; when they cannot be reached, the page shows what is here.
    #[allow(clippy::too_many_arguments)]
    pub async fn messages(
        &self,
        room_id: &RoomId,
        user: &UserId,
        device: &str,
        from: PagePoint,
        to: Option<PagePoint>,
        dir: Direction,
        limit: i64,
        filter: &EventFilter,
        lazy_members: bool,
    ) -> Result<Page> {
        let read = || {
            self.rooms.messages(
                room_id,
                user,
                device,
                from,
                to,
                dir,
                limit,
                filter,
                lazy_members,
            )
        };
        let page = read().await?;
        // Only rooms shared with other servers can have history elsewhere (an in-memory look,
        // so local rooms' paging costs no graph query).
        if dir != Direction::Backward
            || !self.enabled
            || self.rooms.other_servers(room_id).await?.is_empty()
        {
            return Ok(page);
        }
        // A gap lies in this page when one of its events (or one above it) names prev events
        // not here: the page reaches down to `bottom`, so gaps at or above it count.
        let bottom = page.end.map_or(i64::MIN, |e| e.depth);
        let gaps: Vec<String> = self
            .graph
            .backward_extremities(room_id.as_str())
            .await?
            .into_iter()
            .filter(|(_, depth)| *depth >= bottom && *depth <= page.start.depth)
            .map(|(id, _)| id)
            .take(MAX_EXTREMITIES)
            .collect();
        if gaps.is_empty() || self.tried_recently(room_id, &gaps) {
            return Ok(page);
        }
        match self
            .fill(room_id, &gaps, limit.clamp(MIN_BATCH, MAX_BATCH))
            .await
        {
            Ok(b) if b.added > 0 => read().await,
            Ok(_) => {
                self.remember_fruitless(room_id, gaps);
                Ok(page)
            }
            Err(e) => {
                tracing::info!(%room_id, error = %e, "history not fetched from other servers");
                self.remember_fruitless(room_id, gaps);
                Ok(page)
            }
        }
    }

    /// Whether these gaps were asked about within `RETRY_AFTER_MS` and nothing came.
    fn tried_recently(&self, room_id: &RoomId, gaps: &[String]) -> bool {
        let now = self.clock.now_ms();
        let mut tried = self.fruitless.lock().expect("backfill lock");
        tried.retain(|_, (_, at)| now - *at < RETRY_AFTER_MS);
        tried.get(room_id).is_some_and(|(g, _)| g == gaps)
    }

    fn remember_fruitless(&self, room_id: &RoomId, gaps: Vec<String>) {
        let now = self.clock.now_ms();
        self.fruitless
            .lock()
            .expect("backfill lock")
            .insert(room_id.to_owned(), (gaps, now));
    }

    /// Fetches up to `limit` events before `gaps` (backward extremities) from a server in the
    /// room (the first one that answers) and adds them; what was added.
    pub async fn fill(&self, room_id: &RoomId, gaps: &[String], limit: i64) -> Result<Backfilled> {
        let v: Vec<OwnedEventId> = gaps
            .iter()
            .filter_map(|e| OwnedEventId::try_from(e.as_str()).ok())
            .collect();
        let version = self
            .events
            .room_version(room_id.as_str())
            .await?
            .and_then(|v| RoomVersionId::try_from(v.as_str()).ok())
            .ok_or_else(|| Error::not_found("the room is not known here"))?;
        let rules = version
            .rules()
            .ok_or_else(|| Error::IncompatibleRoomVersion(version.clone()))?;
        let servers = self.rooms.other_servers(room_id).await?;
        let mut last_error = None;
        for server in servers.iter().filter(|s| may_federate_with(&self.scope, s)) {
            let request = get_backfill::v1::Request::new(
                room_id.to_owned(),
                v.clone(),
                ruma::UInt::try_from(limit as u64).unwrap_or(ruma::UInt::MAX),
            );
            let answer = match self.client.request(server, request).await {
                Ok(a) => a,
                Err(e) => {
                    last_error = Some(Error::from(e));
                    continue;
                }
            };
            let mut checked = Vec::new();
            for raw in answer.pdus.iter().take(limit as usize) {
                match pdu::check(&self.keys, &rules, raw, None, self.clock.now_ms()).await {
                    Ok(c) if c.pdu.room_id == room_id => {
                        let sender = c.pdu.sender.server_name();
                        if may_federate_with(&self.scope, sender) {
                            checked.push(Incoming::from(c));
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::info!(%server, error = %e, "a backfilled event does not check out")
                    }
                }
            }
            let added = self.rooms.import_history(room_id, checked).await?;
            tracing::info!(%room_id, %server, added = added.added, rejected = added.rejected, "backfilled");
            return Ok(added);
        }
        match last_error {
            Some(e) => Err(e),
            None => Ok(Backfilled::default()),
        }
    }
}
