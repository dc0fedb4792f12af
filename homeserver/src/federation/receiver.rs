//! What other servers send us: transactions of PDUs (`/send`), remote users joining and
//! leaving our rooms (`make_join`, `send_join`, `make_leave`, `send_leave`), invites of our
//! users. Every PDU goes through `pdu::check` and then the room's
//! own path (`Rooms::receive`); every server name met is checked against the federation scope.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    EventId, OwnedEventId, OwnedServerName, RoomId, RoomVersionId, ServerName, UserId,
    api::federation::membership::RawStrippedState, api::federation::transactions::edu::Edu,
    room_version_rules::RoomVersionRules, serde::Raw, signatures::Ed25519KeyPair,
};
use serde_json::value::RawValue;

use super::{
    gap::Gaps,
    keys::ServerKeys,
    pdu::{self, CheckedPdu, PduError},
};
use crate::{
    clock::Clock,
    e2ee::{device_lists::DeviceLists, to_device::ToDeviceInbox},
    ephemeral::typing::Typing,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    receipts::Receipts,
    rooms::{
        Rooms,
        receive::{Incoming, Received, is_member_event_of},
    },
    store::{AccountStore, EventStore, FederationStore, RemoteMembership},
};

/// The services what other servers send is handed to.
pub struct Inbound {
    pub rooms: Arc<Rooms>,
    pub to_device: Arc<ToDeviceInbox>,
    pub device_lists: Arc<DeviceLists>,
    pub receipts: Arc<Receipts>,
    pub typing: Arc<Typing>,
    pub presence: Arc<crate::ephemeral::presence::Presence>,
}

/// What became of one PDU of a transaction: its id and whether it was taken, or why it has
/// no id to answer under.
type PduOutcome = std::result::Result<(OwnedEventId, Result<(), String>), String>;

/// The event id of a PDU that did not pass the checks, to answer it under.
pub(super) fn computed_id(
    raw: &RawValue,
    rules: &RoomVersionRules,
) -> std::result::Result<OwnedEventId, String> {
    let object: ruma::CanonicalJsonObject =
        serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
    pdu::event_id(&object, rules).map_err(|e| e.to_string())
}

/// Most PDUs and EDUs a transaction may carry (spec).
pub const MAX_TXN_PDUS: usize = 50;
pub const MAX_TXN_EDUS: usize = 100;

pub struct Receiver {
    server_name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    rooms: Arc<Rooms>,
    to_device: Arc<ToDeviceInbox>,
    device_lists: Arc<DeviceLists>,
    receipts: Arc<Receipts>,
    typing: Arc<Typing>,
    presence: Arc<crate::ephemeral::presence::Presence>,
    accounts: Arc<dyn AccountStore>,
    keys: Arc<ServerKeys>,
    events: Arc<dyn EventStore>,
    store: Arc<dyn FederationStore>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
    gaps: Gaps,
}

/// The state a joining server gets back: the join as accepted, the state before it and the
/// auth chain of both, as PDUs.
pub struct JoinedState {
    pub state: Vec<String>,
    pub auth_chain: Vec<String>,
}

impl Receiver {
    pub fn new(
        (server_name, key): (OwnedServerName, Arc<Ed25519KeyPair>),
        inbound: Inbound,
        keys: Arc<ServerKeys>,
        (events, store, accounts): (
            Arc<dyn EventStore>,
            Arc<dyn FederationStore>,
            Arc<dyn AccountStore>,
        ),
        scope: FederationScope,
        clock: Arc<dyn Clock>,
        gaps: Gaps,
    ) -> Self {
        let Inbound {
            rooms,
            to_device,
            device_lists,
            receipts,
            typing,
            presence,
        } = inbound;
        Self {
            server_name,
            key,
            accounts,
            rooms,
            to_device,
            device_lists,
            receipts,
            typing,
            presence,
            keys,
            events,
            store,
            scope,
            clock,
            gaps,
        }
    }

    /// A transaction from `origin`: each PDU checked and added on its own (one failing does
    /// not fail the others); the same transaction again gets the same answer.
    pub async fn transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawValue>],
        edus: &[Raw<Edu>],
    ) -> Result<BTreeMap<OwnedEventId, Result<(), String>>> {
        if pdus.len() > MAX_TXN_PDUS || edus.len() > MAX_TXN_EDUS {
            return Err(Error::bad_json(format!(
                "a transaction carries at most {MAX_TXN_PDUS} PDUs and {MAX_TXN_EDUS} EDUs"
            )));
        }
        if let Some(earlier) = self.store.inbound_txn(origin.as_str(), txn_id).await? {
            return serde_json::from_str::<BTreeMap<OwnedEventId, TxnResult>>(&earlier)
                .map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect())
                .map_err(Error::internal);
        }
        // Rooms side by side, each room's PDUs in the order sent (one room's wait for the
        // store does not hold up the others).
        let mut by_room: Vec<(Option<String>, Vec<&RawValue>)> = Vec::new();
        for raw in pdus {
            let room = room_id_of(raw);
            match by_room.iter_mut().find(|(r, _)| *r == room) {
                Some((_, list)) => list.push(raw),
                None => by_room.push((room, vec![raw])),
            }
        }
        let outcomes = futures::future::join_all(
            by_room
                .iter()
                .map(|(room, raws)| self.room_pdus(origin, room.as_deref(), raws)),
        )
        .await;
        let mut results = BTreeMap::new();
        for outcome in outcomes.into_iter().flatten() {
            match outcome {
                Ok((id, outcome)) => {
                    results.insert(id, outcome);
                }
                // A PDU without a computable id has no entry to answer under.
                Err(reason) => tracing::info!(%origin, %reason, "unusable PDU in a transaction"),
            }
        }
        for raw in edus {
            if let Err(reason) = self.one_edu(origin, raw).await {
                tracing::info!(%origin, %reason, "EDU not taken");
            }
        }
        let stored: BTreeMap<&OwnedEventId, TxnResult> =
            results.iter().map(|(k, v)| (k, v.into())).collect();
        self.store
            .save_inbound_txn(
                origin.as_str(),
                txn_id,
                &serde_json::to_string(&stored).map_err(Error::internal)?,
                self.clock.now_ms(),
            )
            .await?;
        Ok(results)
    }

    /// One EDU: to-device messages for our users' devices, device-list and signing-key
    /// updates, read receipts, typing; presence is not taken (yet) and skipped.
    async fn one_edu(&self, origin: &ServerName, raw: &Raw<Edu>) -> Result<()> {
        match raw.deserialize() {
            Ok(Edu::DirectToDevice(content)) => {
                self.to_device
                    .receive(origin, &self.server_name, content)
                    .await
            }
            // We keep no copy of other servers' keys (queries go to them), so an update only
            // tells our users' clients to query again.
            Ok(Edu::DeviceListUpdate(update)) => {
                self.device_list_changed(origin, &update.user_id).await
            }
            Ok(Edu::SigningKeyUpdate(update)) => {
                self.device_list_changed(origin, &update.user_id).await
            }
            Ok(Edu::Typing(typing)) => self.typing.receive(origin, typing).await,
            Ok(Edu::Presence(presence)) => self.presence.receive(origin, presence),
            Ok(Edu::Receipt(receipts)) => {
                self.receipts.receive(origin, receipts).await;
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) => Err(Error::bad_json(format!("unreadable EDU: {e}"))),
        }
    }

    async fn device_list_changed(&self, origin: &ServerName, user: &UserId) -> Result<()> {
        if user.server_name() != origin {
            return Err(Error::forbidden("the user is not a user of the origin"));
        }
        self.device_lists.record(user).await
    }

    /// One room's PDUs of a transaction, in the order sent, each checked; those building on
    /// each other are added to the room together, and a gap before any other is filled
    /// first. One outcome per PDU (an error for one without a computable id).
    async fn room_pdus(
        &self,
        origin: &ServerName,
        room: Option<&str>,
        raws: &[&RawValue],
    ) -> Vec<PduOutcome> {
        // The room's version is looked up once for all its PDUs.
        let room = self.room_of(room).await;
        let mut out: Vec<Option<PduOutcome>> = Vec::with_capacity(raws.len());
        let mut budget = super::gap::Budget::default();
        // Checked PDUs not added yet, with their place in `out`.
        let mut run: Vec<(usize, OwnedEventId, Incoming)> = Vec::new();
        for raw in raws {
            let (room_id, rules) = match &room {
                Ok((room_id, Some(rules))) => (room_id, rules),
                Ok((room_id, None)) => {
                    out.push(Some(Err(format!("room {room_id} is not known here"))));
                    continue;
                }
                Err(e) => {
                    out.push(Some(Err(e.clone())));
                    continue;
                }
            };
            let checked = match pdu::check(&self.keys, rules, raw, None, self.clock.now_ms()).await
            {
                Ok(c) => c,
                // Answered under its id, where one can be computed.
                Err(e) => {
                    out.push(Some(
                        computed_id(raw, rules).map(|id| (id, Err(e.to_string()))),
                    ));
                    continue;
                }
            };
            let id = checked.pdu.event_id.clone();
            if checked.pdu.room_id.as_str() != room_id {
                out.push(Some(Ok((id, Err("the PDU names another room".into())))));
                continue;
            }
            let sender_server = checked.pdu.sender.server_name();
            if !may_federate_with(&self.scope, sender_server) {
                let refusal = format!("{sender_server} is not a server this one federates with");
                out.push(Some(Ok((id, Err(refusal)))));
                continue;
            }
            let on_run = !run.is_empty()
                && checked
                    .pdu
                    .prev_events
                    .iter()
                    .all(|p| run.iter().any(|(_, id, _)| id == p));
            let mut prev_states = Default::default();
            if !on_run {
                // What came before is added first: the gap check looks at the room as stored.
                self.admit_run(&mut run, &mut out).await;
                prev_states = self.gaps.close(origin, &checked, rules, &mut budget).await;
            }
            run.push((
                out.len(),
                id,
                Incoming::from(checked).with_prev_states(prev_states),
            ));
            out.push(None);
        }
        self.admit_run(&mut run, &mut out).await;
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err("a PDU got no answer".into())))
            .collect()
    }

    /// Adds checked PDUs of one room together and records each one's outcome.
    async fn admit_run(
        &self,
        run: &mut Vec<(usize, OwnedEventId, Incoming)>,
        out: &mut [Option<PduOutcome>],
    ) {
        let Some((_, _, first)) = run.first() else {
            return;
        };
        let room_id = first.pdu.room_id.clone();
        let (places, incoming): (Vec<(usize, OwnedEventId)>, Vec<Incoming>) = std::mem::take(run)
            .into_iter()
            .map(|(i, id, incoming)| ((i, id), incoming))
            .unzip();
        let received = self.rooms.receive_all(&room_id, incoming).await;
        for ((i, id), outcome) in places.into_iter().zip(received) {
            let answer = outcome.map_err(|e| e.to_string()).and_then(|r| match r {
                Received::Accepted | Received::Known | Received::SoftFailed(_) => Ok(()),
                Received::Rejected(reason) => Err(format!("rejected: {reason}")),
                Received::Outlier(reason) => Err(format!("not added to the timeline: {reason}")),
            });
            out[i] = Some(Ok((id, answer)));
        }
    }

    /// The room a PDU names and its version's rules (`None`: a room not known here).
    async fn room_of(
        &self,
        room: Option<&str>,
    ) -> std::result::Result<(String, Option<RoomVersionRules>), String> {
        let room = room.ok_or("the PDU names no room")?;
        let room = ruma::RoomId::parse(room).map_err(|e| e.to_string())?;
        let version = self
            .events
            .room_version(room.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let rules = version
            .and_then(|v| RoomVersionId::try_from(v.as_str()).ok())
            .and_then(|v| v.rules());
        Ok((room.to_string(), rules))
    }

    /// `relay`: we pass the event on to the room's other servers.
    async fn admit_as(&self, checked: CheckedPdu, relay: bool) -> Result<Received> {
        let sender_server = checked.pdu.sender.server_name();
        if !may_federate_with(&self.scope, sender_server) {
            return Err(Error::forbidden(format!(
                "{sender_server} is not a server this one federates with"
            )));
        }
        self.rooms.receive(Incoming::from(checked), relay).await
    }

    /// `make_leave`: the leave event template for `user` of `origin` (rejecting an invite,
    /// leaving from a server that lost the room).
    pub async fn make_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<(RoomVersionId, String)> {
        if user.server_name() != origin {
            return Err(Error::forbidden(
                "you may only make leaves for your own users",
            ));
        }
        let (version, template) = self
            .rooms
            .member_template(room_id, user, "leave", None)
            .await?;
        Ok((
            version,
            serde_json::to_string(&template).map_err(Error::internal)?,
        ))
    }

    /// `send_leave`: the signed leave of a user of `origin`, added to the room.
    pub async fn send_leave(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawValue,
    ) -> Result<()> {
        self.send_membership(origin, room_id, event_id, raw, "leave")
            .await
    }

    /// An invite of one of our users by a user of `origin` (`PUT /v2/invite`): checked,
    /// signed by us and, when the room is not on this server, recorded for the user's sync.
    /// Answers the invite with our signature.
    pub async fn invite(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        version: &RoomVersionId,
        raw: &RawValue,
        invite_state: &[RawStrippedState],
    ) -> Result<String> {
        if !self.rooms.supported_versions.contains(version) {
            return Err(Error::IncompatibleRoomVersion(version.clone()));
        }
        let rules = version
            .rules()
            .ok_or_else(|| Error::IncompatibleRoomVersion(version.clone()))?;
        let checked = pdu::check(&self.keys, &rules, raw, Some(event_id), self.clock.now_ms())
            .await
            .map_err(pdu_error)?;
        let pdu = &checked.pdu;
        let target = pdu
            .state_key
            .as_deref()
            .and_then(|k| UserId::parse(k).ok())
            .filter(|_| {
                pdu.kind == ruma::events::TimelineEventType::RoomMember
                    && pdu.membership().as_deref() == Some("invite")
            });
        let Some(target) = target else {
            return Err(Error::bad_json("the event is not an invite"));
        };
        if checked.redacted || pdu.room_id != room_id || pdu.sender.server_name() != origin {
            return Err(Error::bad_json(
                "the invite is not from one of your users to this room",
            ));
        }
        if target.server_name() != self.server_name {
            return Err(Error::bad_json("the invitee is not a user of this server"));
        }
        let exists = self
            .accounts
            .get_user(target.as_str())
            .await?
            .is_some_and(|u| !u.deactivated);
        if !exists {
            return Err(Error::not_found(format!("user {target} does not exist")));
        }
        let mut object = checked.object.clone();
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            self.key.as_ref(),
            &mut object,
            &rules.redaction,
        )
        .map_err(Error::internal)?;
        let json = serde_json::to_string(&object).map_err(Error::internal)?;
        // A room our users are in: the invite arrives with the room's other events.
        if !self.rooms.is_resident(room_id).await? {
            let state: Vec<serde_json::Value> = invite_state
                .iter()
                .filter_map(super::invites::stripped)
                .collect();
            self.rooms
                .record_remote_membership(RemoteMembership {
                    stream_pos: 0,
                    user_id: target.to_string(),
                    room_id: room_id.to_string(),
                    membership: "invite".into(),
                    event_id: event_id.to_string(),
                    sender: pdu.sender.to_string(),
                    room_version: version.to_string(),
                    json: json.clone(),
                    invite_state: serde_json::to_string(&state).map_err(Error::internal)?,
                })
                .await?;
        }
        Ok(json)
    }

    /// `make_join`: the join event template for `user` of `origin`.
    pub async fn make_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        versions: &[RoomVersionId],
    ) -> Result<(RoomVersionId, String)> {
        if user.server_name() != origin {
            return Err(Error::forbidden(
                "you may only make joins for your own users",
            ));
        }
        // A server that names no version supports version 1 only (spec).
        let versions = if versions.is_empty() {
            vec![RoomVersionId::V1]
        } else {
            versions.to_vec()
        };
        let (version, template) = self
            .rooms
            .member_template(room_id, user, "join", Some(&versions))
            .await?;
        Ok((
            version,
            serde_json::to_string(&template).map_err(Error::internal)?,
        ))
    }

    /// `send_join`: the signed join of a user of `origin`, added to the room; the state before
    /// it and the auth chain.
    pub async fn send_join(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawValue,
    ) -> Result<JoinedState> {
        self.send_membership(origin, room_id, event_id, raw, "join")
            .await?;
        let (state, auth_chain) = self.rooms.state_and_auth_chain_before(event_id).await?;
        Ok(JoinedState { state, auth_chain })
    }

    /// A signed membership event (`join`, `leave`) of a user of `origin`, added to the room.
    async fn send_membership(
        &self,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &EventId,
        raw: &RawValue,
        membership: &str,
    ) -> Result<()> {
        let version = self
            .events
            .room_version(room_id.as_str())
            .await?
            .ok_or_else(|| Error::not_found("the room is not known here"))?;
        let rules = RoomVersionId::try_from(version.as_str())
            .ok()
            .and_then(|v| v.rules())
            .ok_or_else(|| Error::internal("stored room has an unknown room version"))?;
        let checked = pdu::check(&self.keys, &rules, raw, Some(event_id), self.clock.now_ms())
            .await
            .map_err(pdu_error)?;
        let pdu = &checked.pdu;
        if pdu.room_id != room_id
            || pdu.sender.server_name() != origin
            || !is_member_event_of(pdu, &pdu.sender, membership)
        {
            return Err(Error::bad_json(format!(
                "the event is not a {membership} of one of your users in this room"
            )));
        }
        match self.admit_as(checked, true).await? {
            Received::Accepted | Received::Known => {}
            Received::Rejected(reason) | Received::SoftFailed(reason) => {
                return Err(Error::forbidden(format!(
                    "the {membership} was refused: {reason}"
                )));
            }
            Received::Outlier(reason) => {
                return Err(Error::forbidden(format!(
                    "the {membership} could not be added: {reason}"
                )));
            }
        }
        Ok(())
    }
}

/// The `room_id` a raw PDU names, if it names one.
fn room_id_of(raw: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct RoomOnly {
        room_id: String,
    }
    serde_json::from_str::<RoomOnly>(raw.get())
        .ok()
        .map(|r| r.room_id)
}

fn pdu_error(e: PduError) -> Error {
    match e {
        PduError::TooLarge => Error::TooLarge,
        PduError::BadSignature(_) | PduError::Keys(_) => Error::forbidden(e.to_string()),
        PduError::Malformed(_) | PduError::WrongEventId => Error::bad_json(e.to_string()),
    }
}

/// A per-PDU result as stored for repeated transactions.
#[derive(serde::Serialize, serde::Deserialize)]
struct TxnResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl From<&Result<(), String>> for TxnResult {
    fn from(r: &Result<(), String>) -> Self {
        Self {
            error: r.as_ref().err().cloned(),
        }
    }
}

impl From<TxnResult> for Result<(), String> {
    fn from(r: TxnResult) -> Self {
        match r.error {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
