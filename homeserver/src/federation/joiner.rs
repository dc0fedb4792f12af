//! Our users joining rooms that live on other servers (and rejecting invites to them): `make_join` at a resident server, our
//! signature on the join, `send_join`, and the room's state and auth chain checked (ids,
//! signatures, hashes, auth rules) before anything is stored.

use std::{collections::HashMap, sync::Arc};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName, RoomId, RoomVersionId,
    ServerName, UserId,
    api::federation::membership::{
        create_join_event, create_leave_event, prepare_join_event, prepare_leave_event,
    },
    room_version_rules::RoomVersionRules,
    signatures::Ed25519KeyPair,
};
use serde_json::{Map, Value, value::RawValue};

use super::{
    client::FederationClient,
    keys::ServerKeys,
    pdu::{self, CheckedPdu},
};
use crate::{
    clock::Clock,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    rooms::{Rooms, pdu::Pdu, receive::Incoming},
    store::RemoteMembership,
};

pub struct Joiner {
    server_name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    client: Arc<FederationClient>,
    keys: Arc<ServerKeys>,
    rooms: Arc<Rooms>,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
}

impl Joiner {
    pub fn new(
        (server_name, key): (OwnedServerName, Arc<Ed25519KeyPair>),
        client: Arc<FederationClient>,
        keys: Arc<ServerKeys>,
        rooms: Arc<Rooms>,
        scope: FederationScope,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            server_name,
            key,
            client,
            keys,
            rooms,
            scope,
            clock,
        }
    }

    pub fn rooms(&self) -> &Arc<Rooms> {
        &self.rooms
    }

    /// Joins `user` to a room this server is not in, through `via` (and the server in the
    /// room id); the join's event id. The first server that lets the user join is used.
    pub async fn join(
        &self,
        room_id: &RoomId,
        user: &UserId,
        via: &[OwnedServerName],
        profile: Map<String, Value>,
    ) -> Result<OwnedEventId> {
        let mut servers: Vec<OwnedServerName> = via.to_vec();
        if let Some(server) = room_id.server_name() {
            servers.push(server.to_owned());
        }
        let mut seen = std::collections::HashSet::new();
        servers.retain(|s| *s != self.server_name && seen.insert(s.clone()));
        servers.retain(|s| may_federate_with(&self.scope, s));
        if servers.is_empty() {
            return Err(Error::not_found(
                "the room is not known here and no server to join it through was named",
            ));
        }
        let mut last = Error::not_found("no server let you join the room");
        for server in &servers {
            match self.join_via(server, room_id, user, &profile).await {
                Ok(id) => return Ok(id),
                Err(e) => {
                    tracing::info!(%server, room_id = %room_id, error = %e, "remote join failed");
                    last = e;
                }
            }
        }
        Err(last)
    }

    async fn join_via(
        &self,
        server: &OwnedServerName,
        room_id: &RoomId,
        user: &UserId,
        profile: &Map<String, Value>,
    ) -> Result<OwnedEventId> {
        let mut request = prepare_join_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        request.ver = self.rooms.supported_versions.clone();
        let made = self.client.request(server, request).await?;
        let version = made.room_version.unwrap_or(RoomVersionId::V1);
        if !self.rooms.supported_versions.contains(&version) {
            return Err(Error::IncompatibleRoomVersion(version));
        }
        let rules = version
            .rules()
            .ok_or_else(|| Error::IncompatibleRoomVersion(version.clone()))?;
        let mut content = profile.clone();
        content.insert("membership".into(), Value::String("join".into()));
        let (event_id, join) = self.sign_membership(&made.event, room_id, user, content, &rules)?;
        let request = create_join_event::v2::Request::new(
            room_id.to_owned(),
            event_id.clone(),
            RawValue::from_string(serde_json::to_string(&join).map_err(Error::internal)?)
                .map_err(Error::internal)?,
        );
        let answer = self.client.request(server, request).await?.room_state;
        let state = self.checked_all(&answer.state, &rules).await?;
        let chain = self.checked_all(&answer.auth_chain, &rules).await?;
        if state.iter().chain(&chain).any(|p| p.pdu.room_id != room_id) {
            return Err(Error::Remote(format!(
                "{server} sent events of another room with the room's state"
            )));
        }
        check_auth(&state, &chain, &rules)?;
        if !state
            .iter()
            .any(|p| p.pdu.kind.to_string() == "m.room.create" && p.pdu.room_id == room_id)
        {
            return Err(Error::Remote(format!(
                "{server} sent the state of another room"
            )));
        }
        let state_ids: std::collections::HashSet<OwnedEventId> =
            state.iter().map(|p| p.pdu.event_id.clone()).collect();
        let outliers: Vec<Incoming> = chain
            .into_iter()
            .filter(|p| !state_ids.contains(&p.pdu.event_id))
            .map(Incoming::from)
            .collect();
        let join_pdu = Pdu::from_json(
            event_id.as_str(),
            &serde_json::to_string(&join).map_err(Error::internal)?,
        )
        .map_err(Error::internal)?;
        let json = serde_json::to_string(&join).map_err(Error::internal)?;
        let join = Incoming::new(join_pdu, join, json);
        self.rooms
            .import_joined(
                &version,
                state.into_iter().map(Incoming::from).collect(),
                outliers,
                join,
            )
            .await
    }

    /// Rejects an invite to a room this server does not have: `make_leave` and `send_leave`
    /// at the inviting server, then the rejection is recorded. When that server cannot be
    /// reached or refuses, the invite is still dropped here (the user asked for it gone) and
    /// the error is logged.
    pub async fn reject_invite(
        &self,
        invite: &RemoteMembership,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<()> {
        let room_id = RoomId::parse(&invite.room_id).map_err(Error::internal)?;
        let inviter = UserId::parse(&invite.sender).map_err(Error::internal)?;
        let server = inviter.server_name().to_owned();
        let (event_id, json) = match self.leave_via(&server, &room_id, user, reason).await {
            Ok(left) => left,
            Err(e) => {
                tracing::info!(%server, room_id = %room_id, error = %e, "remote invite rejected here only");
                (String::new(), String::new())
            }
        };
        self.rooms
            .record_remote_membership(RemoteMembership {
                stream_pos: 0,
                user_id: user.to_string(),
                room_id: room_id.to_string(),
                membership: "leave".into(),
                event_id,
                sender: user.to_string(),
                room_version: invite.room_version.clone(),
                json,
                invite_state: "[]".into(),
            })
            .await
    }

    /// `make_leave` and `send_leave` at `server`: the leave's event id and JSON.
    async fn leave_via(
        &self,
        server: &ServerName,
        room_id: &RoomId,
        user: &UserId,
        reason: Option<&str>,
    ) -> Result<(String, String)> {
        if !may_federate_with(&self.scope, server) {
            return Err(Error::forbidden(format!(
                "{server} is not a server this one federates with"
            )));
        }
        let request = prepare_leave_event::v1::Request::new(room_id.to_owned(), user.to_owned());
        let made = self.client.request(server, request).await?;
        let version = made.room_version.unwrap_or(RoomVersionId::V1);
        let rules = version
            .rules()
            .ok_or_else(|| Error::IncompatibleRoomVersion(version.clone()))?;
        let mut content = Map::new();
        content.insert("membership".into(), Value::String("leave".into()));
        if let Some(reason) = reason {
            content.insert("reason".into(), Value::String(reason.into()));
        }
        let (event_id, leave) =
            self.sign_membership(&made.event, room_id, user, content, &rules)?;
        let json = serde_json::to_string(&leave).map_err(Error::internal)?;
        let request = create_leave_event::v2::Request::new(
            room_id.to_owned(),
            event_id.clone(),
            RawValue::from_string(json.clone()).map_err(Error::internal)?,
        );
        self.client.request(server, request).await?;
        Ok((event_id.to_string(), json))
    }

    /// Our membership event on a resident server's template: our user, `content`, signed by
    /// us.
    fn sign_membership(
        &self,
        template: &RawValue,
        room_id: &RoomId,
        user: &UserId,
        content: Map<String, Value>,
        rules: &RoomVersionRules,
    ) -> Result<(OwnedEventId, CanonicalJsonObject)> {
        let mut object: CanonicalJsonObject =
            serde_json::from_str(template.get()).map_err(|e| {
                Error::Remote(format!(
                    "the membership template is not canonical JSON: {e}"
                ))
            })?;
        let names = |key: &str| match object.get(key) {
            Some(CanonicalJsonValue::String(s)) => Some(s.clone()),
            _ => None,
        };
        if names("room_id").as_deref() != Some(room_id.as_str())
            || names("sender").as_deref() != Some(user.as_str())
            || names("state_key").as_deref() != Some(user.as_str())
            || names("type").as_deref() != Some("m.room.member")
        {
            return Err(Error::Remote(
                "the membership template is not for this user and room".into(),
            ));
        }
        object.insert(
            "content".into(),
            ruma::canonical_json::to_canonical_value(&content).map_err(Error::internal)?,
        );
        object.insert(
            "origin_server_ts".into(),
            CanonicalJsonValue::Integer(ruma::Int::new_saturating(self.clock.now_ms())),
        );
        for stale in ["event_id", "hashes", "signatures", "unsigned", "origin"] {
            object.remove(stale);
        }
        ruma::signatures::hash_and_sign_event(
            self.server_name.as_str(),
            self.key.as_ref(),
            &mut object,
            &rules.redaction,
        )
        .map_err(Error::internal)?;
        let event_id = pdu::event_id(&object, rules).map_err(|e| Error::internal(e.to_string()))?;
        Ok((event_id, object))
    }

    /// Every PDU checked; one that fails fails the join (a resident server that sends forged
    /// state cannot be trusted with it).
    async fn checked_all(
        &self,
        raws: &[Box<RawValue>],
        rules: &RoomVersionRules,
    ) -> Result<Vec<CheckedPdu>> {
        let mut out = Vec::with_capacity(raws.len());
        for raw in raws {
            let checked = pdu::check(&self.keys, rules, raw, None, self.clock.now_ms())
                .await
                .map_err(|e| Error::Remote(format!("the room's state does not check out: {e}")))?;
            out.push(checked);
        }
        Ok(out)
    }
}

/// Each event of the state and auth chain passes the auth rules against its own auth events.
fn check_auth(state: &[CheckedPdu], chain: &[CheckedPdu], rules: &RoomVersionRules) -> Result<()> {
    let by_id: HashMap<OwnedEventId, Arc<Pdu>> = state
        .iter()
        .chain(chain)
        .map(|p| (p.pdu.event_id.clone(), Arc::new(p.pdu.clone())))
        .collect();
    for event in by_id.values() {
        ruma::state_res::check_state_independent_auth_rules(
            &rules.authorization,
            event.as_ref(),
            |id| by_id.get(id).cloned(),
        )
        .map_err(|e| {
            Error::Remote(format!(
                "the room's state fails the auth rules at {}: {e}",
                event.event_id
            ))
        })?;
    }
    Ok(())
}
