//! The room model: building, signing and authorising PDUs against the room state, and
//! persisting each event with its state change in one transaction. Events of one room are
//! serialised by that room's lock (a per-room queue); rooms proceed in parallel.

pub mod create;
pub mod history;
pub mod membership;
pub mod pdu;
mod read;
pub mod receive;
mod resolve;
mod write;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicI64},
};

pub use create::CreateRoom;
pub use read::{Context, Page, PagePoint, TopoPoint, Visibility};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId,
    OwnedServerName, OwnedUserId, RoomId, RoomVersionId, UserId,
    events::{
        StateEventType, TimelineEventType,
        room::power_levels::{RoomPowerLevels, RoomPowerLevelsEventContent, RoomPowerLevelsSource},
    },
    room_version_rules::RoomVersionRules,
    signatures::Ed25519KeyPair,
};
use serde_json::Value;

use self::pdu::Pdu;
use crate::{
    error::{Error, Result},
    store::{EventStore, GraphStore},
    sync::{notifier::Notifier, stream::StreamIds},
};

/// Longest chain of delta state groups before a full snapshot is written.
pub(crate) const MAX_STATE_CHAIN: i64 = 32;

/// Most prev events a new event names (the spec's limit for a PDU's `prev_events`).
pub(crate) const MAX_PREV_EVENTS: usize = 20;

/// Rooms whose state a tenant keeps in memory before idle ones are dropped.
const MAX_LOADED_ROOMS: usize = 2_000;

pub type StateKey = (StateEventType, String);

/// What is needed to authorise and build the next event of a room; lives under the room lock.
pub struct RoomState {
    pub room_id: OwnedRoomId,
    pub version: RoomVersionId,
    pub rules: RoomVersionRules,
    pub state: HashMap<StateKey, Arc<Pdu>>,
    pub extremities: Vec<OwnedEventId>,
    pub max_depth: u64,
    pub state_group: i64,
    chain_len: i64,
    /// Membership of every user with a member event, kept in step with `state`.
    members: HashMap<OwnedUserId, String>,
    /// Joined members per server, kept in step with `members` (where events go).
    servers: HashMap<OwnedServerName, usize>,
}

impl RoomState {
    pub fn get(&self, kind: StateEventType, key: &str) -> Option<&Arc<Pdu>> {
        self.state.get(&(kind, key.to_owned()))
    }

    fn new(room_id: OwnedRoomId, version: RoomVersionId, rules: RoomVersionRules) -> Self {
        Self {
            room_id,
            version,
            rules,
            state: HashMap::new(),
            extremities: vec![],
            max_depth: 0,
            state_group: 0,
            chain_len: 0,
            members: HashMap::new(),
            servers: HashMap::new(),
        }
    }

    /// Adds a state event to the current state.
    fn set_state(&mut self, key: StateKey, pdu: Arc<Pdu>) {
        if key.0 == StateEventType::RoomMember
            && let (Ok(user), Some(m)) = (UserId::parse(key.1.as_str()), pdu.membership())
        {
            let joins = m == "join";
            let server = user.server_name().to_owned();
            let was_joined = self.members.insert(user, m).as_deref() == Some("join");
            if joins && !was_joined {
                *self.servers.entry(server).or_default() += 1;
            } else if was_joined
                && !joins
                && let Some(n) = self.servers.get_mut(&server)
            {
                *n -= 1;
                if *n == 0 {
                    self.servers.remove(&server);
                }
            }
        }
        self.state.insert(key, pdu);
    }

    /// Replaces the whole state (after state resolution), members and servers with it.
    fn replace_state(&mut self, state: HashMap<StateKey, Arc<Pdu>>) {
        self.state.clear();
        self.members.clear();
        self.servers.clear();
        for (key, pdu) in state {
            self.set_state(key, pdu);
        }
    }

    /// Servers with joined members.
    pub fn servers(&self) -> impl Iterator<Item = &ruma::ServerName> {
        self.servers.keys().map(|s| s.as_ref())
    }

    /// A new event on top of the room: the extremities it references are replaced by it.
    fn advance(&mut self, pdu: &Pdu) {
        self.extremities.retain(|e| !pdu.prev_events.contains(e));
        self.extremities.push(pdu.event_id.clone());
        self.max_depth = self.max_depth.max(u64::from(pdu.depth));
    }

    pub fn membership(&self, user: &UserId) -> Option<String> {
        self.members.get(user).cloned()
    }

    /// Joined members.
    pub fn joined_members(&self) -> Vec<OwnedUserId> {
        self.members
            .iter()
            .filter(|(_, m)| m.as_str() == "join")
            .map(|(u, _)| u.clone())
            .collect()
    }

    /// Users whose sync must learn about a new event: joined and invited members.
    pub fn interested_users(&self) -> Vec<OwnedUserId> {
        self.members
            .iter()
            .filter(|(_, m)| matches!(m.as_str(), "join" | "invite"))
            .map(|(u, _)| u.clone())
            .collect()
    }

    pub fn power_levels(&self) -> RoomPowerLevels {
        let source = self
            .get(StateEventType::RoomPowerLevels, "")
            .and_then(|p| serde_json::from_str::<RoomPowerLevelsEventContent>(p.content.get()).ok())
            .map(RoomPowerLevelsSource::Original)
            .unwrap_or_default();
        let creators: Vec<OwnedUserId> = self
            .get(StateEventType::RoomCreate, "")
            .map(|p| p.sender.clone())
            .into_iter()
            .collect();
        RoomPowerLevels::new(source, &self.rules.authorization, creators)
    }
}

/// Decides which members an event notifies (push rules); its answer is written with the event.
#[async_trait::async_trait]
pub trait Notifications: Send + Sync {
    /// Push actions for an event about to be written on top of `room` (its JSON: `json`).
    async fn evaluate(
        &self,
        room: &RoomState,
        pdu: &Pdu,
        json: &str,
    ) -> Vec<crate::store::NewPushAction>;
    /// Pushes were queued by a committed write.
    fn queued(&self);
}

/// Where this server's events go beyond it: the other servers in the room (federation).
pub trait Outbound: Send + Sync {
    /// Of the servers in a room, those an event of ours is sent to.
    fn destinations(&self, servers: &mut dyn Iterator<Item = &ruma::ServerName>) -> Vec<String>;
    /// Events were written to the outbox for these destinations.
    fn queued(&self, destinations: &[String]);
}

/// Invites of users on other servers: their server countersigns the invite before it is
/// stored (federation, `PUT /_matrix/federation/v2/invite`).
#[async_trait::async_trait]
pub trait RemoteInvites: Send + Sync {
    /// The invite signed by the invitee's server as well; an error when that server refuses.
    /// `invite_state`: the room's identity as PDUs, shown to the invitee with the invite.
    async fn countersign(
        &self,
        version: &ruma::RoomVersionId,
        invite: &Pdu,
        event: CanonicalJsonObject,
        invite_state: Vec<String>,
    ) -> Result<CanonicalJsonObject>;
}

/// An event a local user wants to add to a room.
pub struct NewContent {
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Value,
    pub redacts: Option<OwnedEventId>,
}

impl NewContent {
    pub fn state(
        kind: impl Into<TimelineEventType>,
        state_key: impl Into<String>,
        content: Value,
    ) -> Self {
        Self {
            kind: kind.into(),
            state_key: Some(state_key.into()),
            content,
            redacts: None,
        }
    }
    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        Self {
            kind: kind.into(),
            state_key: None,
            content,
            redacts: None,
        }
    }
}

/// A room's lock (its state under it) and its queue of messages waiting to be written.
#[derive(Default)]
struct RoomSlot {
    state: Arc<tokio::sync::Mutex<Option<RoomState>>>,
    queue: Mutex<Vec<write::Pending>>,
}

pub struct Rooms {
    server_name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    store: Arc<dyn EventStore>,
    graph: Arc<dyn GraphStore>,
    stream: Arc<StreamIds<OwnedUserId>>,
    notifier: Arc<Notifier>,
    notifications: Arc<dyn Notifications>,
    outbound: Arc<dyn Outbound>,
    invites: Arc<dyn RemoteInvites>,
    state_groups: AtomicI64,
    /// The lowest stream position in use: history from elsewhere goes below it.
    lowest_pos: AtomicI64,
    rooms: Mutex<HashMap<OwnedRoomId, Arc<RoomSlot>>>,
    pub default_version: RoomVersionId,
    pub supported_versions: Vec<RoomVersionId>,
}

impl Rooms {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        server_name: OwnedServerName,
        key: Arc<Ed25519KeyPair>,
        (store, graph): (Arc<dyn EventStore>, Arc<dyn GraphStore>),
        stream: Arc<StreamIds<OwnedUserId>>,
        notifier: Arc<Notifier>,
        (notifications, outbound, invites): (
            Arc<dyn Notifications>,
            Arc<dyn Outbound>,
            Arc<dyn RemoteInvites>,
        ),
        (max_state_group, lowest_pos): (i64, i64),
        default_version: RoomVersionId,
        supported_versions: Vec<RoomVersionId>,
    ) -> Self {
        Self {
            server_name,
            key,
            store,
            graph,
            stream,
            notifier,
            notifications,
            outbound,
            invites,
            state_groups: AtomicI64::new(max_state_group),
            lowest_pos: AtomicI64::new(lowest_pos),
            rooms: Mutex::new(HashMap::new()),
            default_version,
            supported_versions,
        }
    }

    pub fn server_name(&self) -> &ruma::ServerName {
        &self.server_name
    }

    /// Drops the room's state in memory; the next use loads it from the store.
    async fn unload(&self, room_id: &RoomId) {
        let slot = self.slot(room_id);
        *slot.state.clone().lock_owned().await = None;
    }

    fn slot(&self, room_id: &RoomId) -> Arc<RoomSlot> {
        let mut rooms = self.rooms.lock().expect("rooms lock");
        if let Some(slot) = rooms.get(room_id) {
            return slot.clone();
        }
        if rooms.len() >= MAX_LOADED_ROOMS {
            // Forget rooms nobody is using (they load again on next use), so memory stays
            // bounded however many rooms a tenant has.
            rooms.retain(|_, slot| Arc::strong_count(slot) > 1 || slot.state.try_lock().is_err());
        }
        rooms.entry(room_id.to_owned()).or_default().clone()
    }

    /// Locks the room, loading its state on first use. `None` if the room does not exist here.
    pub async fn lock(
        &self,
        room_id: &RoomId,
    ) -> Result<Option<tokio::sync::OwnedMutexGuard<Option<RoomState>>>> {
        let slot = self.slot(room_id);
        let mut guard = slot.state.clone().lock_owned().await;
        if guard.is_none() {
            let Some(loaded) = self.store.load_room(room_id.as_str()).await? else {
                // Unknown rooms leave nothing behind in memory.
                self.rooms.lock().expect("rooms lock").remove(room_id);
                return Ok(None);
            };
            let version =
                RoomVersionId::try_from(loaded.version.as_str()).map_err(Error::internal)?;
            let rules = version
                .rules()
                .ok_or_else(|| Error::internal("stored room has an unknown room version"))?;
            let mut room = RoomState::new(room_id.to_owned(), version, rules);
            for (row, (kind, key)) in loaded.state.iter().zip(loaded.state_types) {
                room.set_state(
                    (StateEventType::from(kind), key),
                    Pdu::from_row(row).map_err(Error::internal)?,
                );
            }
            room.extremities = loaded
                .extremities
                .into_iter()
                .filter_map(|e| e.try_into().ok())
                .collect();
            room.max_depth = loaded.max_depth as u64;
            room.state_group = loaded.state_group;
            room.chain_len = loaded.chain_len;
            *guard = Some(room);
        }
        Ok(Some(guard))
    }

    /// Whether this server has the room (it was created here or joined through another).
    pub async fn knows(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self.store.room_version(room_id.as_str()).await?.is_some())
    }

    /// Whether users of this server are joined to the room (it gets the room's events).
    pub async fn is_resident(&self, room_id: &RoomId) -> Result<bool> {
        Ok(self
            .server_in_room(room_id, &self.server_name)
            .await?
            .unwrap_or(false))
    }

    /// Servers other than ours with members joined to the room (none for an unknown room).
    pub async fn other_servers(&self, room_id: &RoomId) -> Result<Vec<OwnedServerName>> {
        Ok(self
            .with_state(room_id, |room| {
                room.servers()
                    .filter(|s| *s != self.server_name)
                    .map(ToOwned::to_owned)
                    .collect()
            })
            .await?
            .unwrap_or_default())
    }

    /// Whether users of `server` are joined to the room; `None` for a room not known here.
    pub async fn server_in_room(
        &self,
        room_id: &RoomId,
        server: &ruma::ServerName,
    ) -> Result<Option<bool>> {
        self.with_state(room_id, |room| room.servers().any(|s| s == server))
            .await
    }

    /// Runs `f` on the room's current state under the room lock.
    pub async fn with_state<T>(
        &self,
        room_id: &RoomId,
        f: impl FnOnce(&RoomState) -> T,
    ) -> Result<Option<T>> {
        let guard = self.lock(room_id).await?;
        Ok(guard.as_ref().and_then(|g| g.as_ref()).map(f))
    }

    /// The room's joined and invited members (whom an ephemeral change wakes), if `user` is
    /// joined; 404 for an unknown room, 403 for a non-member.
    pub async fn members_if_joined(
        &self,
        user: &UserId,
        room_id: &RoomId,
    ) -> Result<Vec<OwnedUserId>> {
        self.with_state(room_id, |room| {
            (room.membership(user).as_deref() == Some("join")).then(|| room.interested_users())
        })
        .await?
        .ok_or_else(|| Error::not_found("room not found"))?
        .ok_or_else(|| Error::forbidden("you are not a member of this room"))
    }

    fn build(
        &self,
        room: &RoomState,
        sender: &UserId,
        new: &NewContent,
    ) -> Result<(Pdu, CanonicalJsonObject, Vec<Arc<Pdu>>)> {
        let content_raw = serde_json::value::to_raw_value(&new.content)
            .map_err(|e| Error::bad_json(e.to_string()))?;
        let auth_types = ruma::state_res::auth_types_for_event(
            &new.kind,
            sender,
            new.state_key.as_deref(),
            &content_raw,
            &room.rules.authorization,
        )
        .map_err(Error::bad_json)?;
        let mut auth: Vec<Arc<Pdu>> = auth_types
            .iter()
            .filter_map(|(k, s)| room.state.get(&(k.clone(), s.clone())).cloned())
            .collect();
        auth.sort_by(|a, b| a.event_id.cmp(&b.event_id));
        auth.dedup_by(|a, b| a.event_id == b.event_id);
        let auth_events: Vec<OwnedEventId> = auth.iter().map(|p| p.event_id.clone()).collect();
        // All forward extremities, so branches meet again; at most as many as a PDU may name.
        let prev_events: Vec<OwnedEventId> = room
            .extremities
            .iter()
            .take(MAX_PREV_EVENTS)
            .cloned()
            .collect();
        let depth = room.max_depth + 1;
        let now = MilliSecondsSinceUnixEpoch::now();

        let mut object = CanonicalJsonObject::new();
        object.insert("auth_events".into(), canon(&auth_events)?);
        object.insert(
            "content".into(),
            CanonicalJsonValue::try_from(new.content.clone())
                .map_err(|e| Error::bad_json(e.to_string()))?,
        );
        object.insert(
            "depth".into(),
            CanonicalJsonValue::Integer(ruma::Int::try_from(depth).map_err(Error::internal)?),
        );
        object.insert("origin_server_ts".into(), canon(&now)?);
        object.insert("prev_events".into(), canon(&prev_events)?);
        object.insert(
            "room_id".into(),
            CanonicalJsonValue::String(room.room_id.to_string()),
        );
        object.insert(
            "sender".into(),
            CanonicalJsonValue::String(sender.to_string()),
        );
        object.insert(
            "type".into(),
            CanonicalJsonValue::String(new.kind.to_string()),
        );
        if let Some(key) = &new.state_key {
            object.insert("state_key".into(), CanonicalJsonValue::String(key.clone()));
        }
        if let Some(redacts) = &new.redacts {
            object.insert(
                "redacts".into(),
                CanonicalJsonValue::String(redacts.to_string()),
            );
        }
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            self.key.as_ref(),
            &mut object,
            &room.rules.redaction,
        )
        .map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::TooLarge,
            other => Error::bad_json(other.to_string()),
        })?;
        let hash = ruma::signatures::reference_hash(&object, &room.rules).map_err(|e| match e {
            ruma::signatures::JsonError::PduTooLarge => Error::TooLarge,
            other => Error::internal(other),
        })?;
        let event_id = OwnedEventId::try_from(format!("${hash}")).map_err(Error::internal)?;
        let json = serde_json::to_string(&object).map_err(Error::internal)?;
        let pdu = Pdu::from_json(event_id.as_str(), &json).map_err(Error::internal)?;
        Ok((pdu, object, auth))
    }

    fn authorize(&self, room: &RoomState, pdu: &Pdu, auth: &[Arc<Pdu>]) -> Result<()> {
        ruma::state_res::check_state_independent_auth_rules(&room.rules.authorization, pdu, |id| {
            auth.iter().find(|p| p.event_id == id).cloned()
        })
        .map_err(Error::Forbidden)?;
        ruma::state_res::check_state_dependent_auth_rules(
            &room.rules.authorization,
            pdu,
            |kind, key| room.state.get(&(kind.clone(), key.to_owned())).cloned(),
        )
        .map_err(Error::Forbidden)
    }

    /// Room versions 3+ leave the "is this the sender's own event" check to the server.
    async fn check_redaction(
        &self,
        room: &RoomState,
        pdu: &Pdu,
        redacts: &ruma::EventId,
    ) -> Result<()> {
        let target = self.store.get_event(redacts.as_str()).await?;
        let Some(target) = target.filter(|t| t.room_id == pdu.room_id.as_str()) else {
            return Err(Error::not_found("the event to redact is not in this room"));
        };
        let target = Pdu::from_row(&target).map_err(Error::internal)?;
        let power = room.power_levels();
        let allowed = if target.sender == pdu.sender {
            power.user_can_redact_own_event(&pdu.sender)
        } else {
            power.user_can_redact_event_of_other(&pdu.sender)
        };
        if !allowed {
            return Err(Error::forbidden("you may not redact this event"));
        }
        Ok(())
    }

    async fn pruned_json(
        &self,
        target: &ruma::EventId,
        rules: &RoomVersionRules,
    ) -> Result<String> {
        let row = self
            .store
            .get_event(target.as_str())
            .await?
            .ok_or_else(|| Error::not_found("event not found"))?;
        let object: CanonicalJsonObject =
            serde_json::from_str(&row.json).map_err(Error::internal)?;
        let redacted = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(Error::internal)?;
        serde_json::to_string(&redacted).map_err(Error::internal)
    }
}

fn canon<T: serde::Serialize>(value: &T) -> Result<CanonicalJsonValue> {
    ruma::canonical_json::to_canonical_value(value).map_err(Error::internal)
}
