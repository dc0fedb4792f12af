//! Invites across servers (`PUT /_matrix/federation/v2/invite`). Ours: the invitee's server
//! countersigns the invite before we store it, and may refuse. Theirs: an invite for one of
//! our users is checked, signed by us, and — when the room is not on this server — recorded
//! with the room's identity so the user's sync shows it.

use std::sync::Arc;

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, RoomVersionId,
    api::federation::membership::{RawStrippedState, create_invite},
};
use serde_json::{Value, value::RawValue};

use super::{client::FederationClient, keys::ServerKeys, pdu};
use crate::{
    clock::Clock,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    rooms::{RemoteInvites, pdu::Pdu},
};

/// Asks invitees' servers to countersign our invites.
pub struct Inviter {
    client: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
}

impl Inviter {
    pub fn new(
        client: Arc<FederationClient>,
        keys: Arc<ServerKeys>,
        scope: FederationScope,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            client,
            keys,
            scope,
            clock,
        }
    }
}

#[async_trait::async_trait]
impl RemoteInvites for Inviter {
    async fn countersign(
        &self,
        version: &RoomVersionId,
        invite: &Pdu,
        event: CanonicalJsonObject,
        invite_state: Vec<String>,
    ) -> Result<CanonicalJsonObject> {
        let Some(target) = invite
            .state_key
            .as_deref()
            .and_then(|k| ruma::UserId::parse(k).ok())
        else {
            return Err(Error::internal("an invite without a user as state key"));
        };
        let server = target.server_name();
        if !may_federate_with(&self.scope, server) {
            return Err(Error::forbidden(format!(
                "{server} is not a server this one federates with"
            )));
        }
        let rules = version
            .rules()
            .ok_or_else(|| Error::IncompatibleRoomVersion(version.clone()))?;
        let state = invite_state
            .into_iter()
            .map(|json| RawValue::from_string(json).map(RawStrippedState::Pdu))
            .collect::<std::result::Result<_, _>>()
            .map_err(Error::internal)?;
        let request = create_invite::v2::Request::new(
            invite.room_id.clone(),
            invite.event_id.clone(),
            version.clone(),
            raw(&event)?,
            state,
        );
        let answer = self.client.request(server, request).await?;
        let answered: CanonicalJsonObject = serde_json::from_str(answer.event.get())
            .map_err(|e| Error::Remote(format!("{server} sent back an unreadable invite: {e}")))?;
        // Only the invitee's server's signature is taken from the answer: the event stays ours,
        // whatever else came back.
        let theirs = match answered.get("signatures") {
            Some(CanonicalJsonValue::Object(all)) => all.get(server.as_str()).cloned(),
            _ => None,
        }
        .ok_or_else(|| Error::Remote(format!("{server} did not sign the invite")))?;
        let mut signed = event;
        if let Some(CanonicalJsonValue::Object(all)) = signed.get_mut("signatures") {
            all.insert(server.to_string(), theirs);
        }
        pdu::check_signed_by(&self.keys, &rules, &signed, server, self.clock.now_ms())
            .await
            .map_err(|e| Error::Remote(format!("{server}'s signature on the invite: {e}")))?;
        Ok(signed)
    }
}

/// The stripped form (`type`, `state_key`, `sender`, `content`) of invite state an inviting
/// server sent, stripped events or full PDUs alike; `None` for what is neither.
pub fn stripped(state: &RawStrippedState) -> Option<Value> {
    #[allow(deprecated)]
    let json = match state {
        RawStrippedState::Stripped(raw) => raw.json().get(),
        RawStrippedState::Pdu(raw) => raw.get(),
        _ => return None,
    };
    let value: Value = serde_json::from_str(json).ok()?;
    let mut out = serde_json::Map::new();
    for key in ["type", "state_key", "sender", "content"] {
        out.insert(key.to_owned(), value.get(key)?.clone());
    }
    (out["type"].is_string() && out["state_key"].is_string() && out["content"].is_object())
        .then_some(Value::Object(out))
}

pub fn raw(object: &CanonicalJsonObject) -> Result<Box<RawValue>> {
    serde_json::value::to_raw_value(object).map_err(Error::internal)
}
