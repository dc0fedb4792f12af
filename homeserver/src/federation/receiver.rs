//! What other servers send us: transactions of PDUs (`/send`), and remote users joining our
//! rooms (`make_join`, `send_join`). Every PDU goes through `pdu::check` and then the room's
//! own path (`Rooms::receive`); every server name met is checked against the federation scope.

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    EventId, OwnedEventId, RoomId, RoomVersionId, ServerName, UserId,
    room_version_rules::RoomVersionRules,
};
use serde_json::value::RawValue;

use super::{
    keys::ServerKeys,
    pdu::{self, CheckedPdu, PduError},
};
use crate::{
    clock::Clock,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    rooms::{
        Rooms,
        receive::{Incoming, Received, is_member_event_of},
    },
    store::{EventStore, FederationStore},
};

/// Most PDUs and EDUs a transaction may carry (spec).
pub const MAX_TXN_PDUS: usize = 50;
pub const MAX_TXN_EDUS: usize = 100;

pub struct Receiver {
    rooms: Arc<Rooms>,
    keys: Arc<ServerKeys>,
    events: Arc<dyn EventStore>,
    store: Arc<dyn FederationStore>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
}

/// The state a joining server gets back: the join as accepted, the state before it and the
/// auth chain of both, as PDUs.
pub struct JoinedState {
    pub state: Vec<String>,
    pub auth_chain: Vec<String>,
}

impl Receiver {
    pub fn new(
        rooms: Arc<Rooms>,
        keys: Arc<ServerKeys>,
        (events, store): (Arc<dyn EventStore>, Arc<dyn FederationStore>),
        scope: FederationScope,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            rooms,
            keys,
            events,
            store,
            scope,
            clock,
        }
    }

    /// A transaction from `origin`: each PDU checked and added on its own (one failing does
    /// not fail the others); the same transaction again gets the same answer.
    pub async fn transaction(
        &self,
        origin: &ServerName,
        txn_id: &str,
        pdus: &[Box<RawValue>],
        edus: usize,
    ) -> Result<BTreeMap<OwnedEventId, Result<(), String>>> {
        if pdus.len() > MAX_TXN_PDUS || edus > MAX_TXN_EDUS {
            return Err(Error::bad_json(format!(
                "a transaction carries at most {MAX_TXN_PDUS} PDUs and {MAX_TXN_EDUS} EDUs"
            )));
        }
        if let Some(earlier) = self.store.inbound_txn(origin.as_str(), txn_id).await? {
            return serde_json::from_str::<BTreeMap<OwnedEventId, TxnResult>>(&earlier)
                .map(|m| m.into_iter().map(|(k, v)| (k, v.into())).collect())
                .map_err(Error::internal);
        }
        let mut results = BTreeMap::new();
        for raw in pdus {
            match self.one_pdu(raw).await {
                Ok((id, outcome)) => {
                    results.insert(id, outcome);
                }
                // A PDU without a computable id has no entry to answer under.
                Err(reason) => tracing::info!(%origin, %reason, "unusable PDU in a transaction"),
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

    async fn one_pdu(
        &self,
        raw: &RawValue,
    ) -> std::result::Result<(OwnedEventId, Result<(), String>), String> {
        let (room_id, rules) = self.room_of(raw).await?;
        let id = match rules.as_ref() {
            Some(rules) => {
                let object: ruma::CanonicalJsonObject =
                    serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
                pdu::event_id(&object, rules).map_err(|e| e.to_string())?
            }
            None => return Err(format!("room {room_id} is not known here")),
        };
        let rules = rules.expect("checked");
        let outcome = async {
            let checked = pdu::check(&self.keys, &rules, raw, None, self.clock.now_ms())
                .await
                .map_err(|e| e.to_string())?;
            self.admit(checked).await.map_err(|e| e.to_string())
        }
        .await;
        Ok((
            id,
            outcome.and_then(|r| match r {
                Received::Accepted | Received::Known | Received::SoftFailed(_) => Ok(()),
                Received::Rejected(reason) => Err(format!("rejected: {reason}")),
                Received::Outlier(reason) => Err(format!("not added to the timeline: {reason}")),
            }),
        ))
    }

    /// The room a raw PDU names and its version's rules (`None`: a room not known here).
    async fn room_of(
        &self,
        raw: &RawValue,
    ) -> std::result::Result<(String, Option<RoomVersionRules>), String> {
        #[derive(serde::Deserialize)]
        struct RoomOnly {
            room_id: ruma::OwnedRoomId,
        }
        let room: RoomOnly = serde_json::from_str(raw.get()).map_err(|e| e.to_string())?;
        let version = self
            .events
            .room_version(room.room_id.as_str())
            .await
            .map_err(|e| e.to_string())?;
        let rules = version
            .and_then(|v| RoomVersionId::try_from(v.as_str()).ok())
            .and_then(|v| v.rules());
        Ok((room.room_id.to_string(), rules))
    }

    /// A checked PDU from a server we federate with, into its room.
    async fn admit(&self, checked: CheckedPdu) -> Result<Received> {
        let sender_server = checked.pdu.sender.server_name();
        if !may_federate_with(&self.scope, sender_server) {
            return Err(Error::forbidden(format!(
                "{sender_server} is not a server this one federates with"
            )));
        }
        self.rooms
            .receive(Incoming {
                pdu: checked.pdu,
                object: checked.object,
                json: checked.json,
            })
            .await
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
        let (version, template) = self.rooms.join_template(room_id, user, &versions).await?;
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
            || !is_member_event_of(pdu, &pdu.sender, "join")
        {
            return Err(Error::bad_json(
                "the event is not a join of one of your users to this room",
            ));
        }
        match self.admit(checked).await? {
            Received::Accepted | Received::Known => {}
            Received::Rejected(reason) | Received::SoftFailed(reason) => {
                return Err(Error::forbidden(format!("the join was refused: {reason}")));
            }
            Received::Outlier(reason) => {
                return Err(Error::forbidden(format!(
                    "the join could not be added: {reason}"
                )));
            }
        }
        let (state, auth_chain) = self.rooms.state_and_auth_chain_before(event_id).await?;
        Ok(JoinedState { state, auth_chain })
    }
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
