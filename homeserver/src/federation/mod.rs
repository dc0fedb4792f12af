//! Federation: this homeserver among others (Server-Server API). Each part is a value built
//! with what it needs — the transport (`transport`, `resolver`), the signed client
//! (`client`), the key store (`keys`) — and `Federation` bundles them for one tenant.
//! Tenants of one process reach each other through the same signed, verified path.

pub mod backfill;
pub mod client;
pub mod gap;
pub mod history;
pub mod invites;
pub mod joiner;
pub mod keys;
pub mod media;
pub mod pdu;
pub mod receiver;
pub mod resolver;
pub mod sender;
pub mod transport;

use std::{collections::BTreeMap, sync::Arc};

use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    api::federation::{
        authentication::XMatrix,
        discovery::ServerSigningKeys,
        keys::{claim_keys, get_keys},
        query::{get_profile_information, get_room_information},
    },
    serde::Raw,
    signatures::{Ed25519KeyPair, PublicKeyMap},
};

use serde_json::Value;

use self::{
    client::{FederationClient, FederationError},
    history::History,
    invites::Inviter,
    joiner::Joiner,
    keys::ServerKeys,
    receiver::{Inbound, Receiver},
    sender::Sender,
    transport::Transport,
};
use crate::{
    clock::Clock,
    config::FederationConfig,
    error::{Error, Result},
    policy::federation::{FederationScope, may_federate_with},
    store::Stores,
};

/// Most servers one notary key query may name (each may cost a fetch).
pub const MAX_NOTARY_SERVERS: usize = 20;

/// Largest answer to a key query or claim from one server (a client may ask many at once).
const MAX_KEYS_ANSWER_BYTES: usize = 4 * 1024 * 1024;

pub struct Federation {
    server_name: OwnedServerName,
    /// Requests per origin server.
    rate_limiter: crate::ratelimit::RateLimiter,
    enabled: bool,
    scope: FederationScope,
    clock: Arc<dyn Clock>,
    pub client: Arc<FederationClient>,
    pub sender: Arc<Sender>,
    pub keys: Arc<ServerKeys>,
    pub receiver: Receiver,
    pub history: History,
    pub joiner: Joiner,
    pub backfiller: backfill::Backfiller,
}

/// The outbound half, built before the room service (which fills the outbox and wakes the
/// sender when it commits an event).
pub struct Outgoing {
    pub client: Arc<FederationClient>,
    pub sender: Arc<Sender>,
    pub keys: Arc<ServerKeys>,
    pub inviter: Arc<Inviter>,
    pub media: Arc<media::MediaFetcher>,
}

impl Outgoing {
    pub fn new(
        server_name: &OwnedServerName,
        key: Arc<Ed25519KeyPair>,
        config: &FederationConfig,
        transport: Arc<dyn Transport>,
        stores: &Stores,
        clock: Arc<dyn Clock>,
    ) -> Self {
        // Switched off: no destination is allowed, so no request leaves and nothing is queued.
        let outbound_scope = if config.enabled {
            scope(config)
        } else {
            FederationScope::Only(Default::default())
        };
        let client = Arc::new(FederationClient::new(
            server_name.clone(),
            key.clone(),
            transport,
            outbound_scope.clone(),
        ));
        let keys = Arc::new(ServerKeys::new(
            server_name.clone(),
            key,
            config.key_validity_secs as i64 * 1000,
            stores.remote_keys.clone(),
            client.clone(),
            clock.clone(),
        ));
        let inviter = Arc::new(Inviter::new(
            client.clone(),
            keys.clone(),
            scope(config),
            clock.clone(),
        ));
        let sender = Arc::new(Sender::new(
            server_name.clone(),
            client.clone(),
            (stores.federation.clone(), stores.graph.clone()),
            outbound_scope,
            clock,
        ));
        Self {
            media: Arc::new(media::MediaFetcher::new(client.clone(), config.enabled)),
            client,
            sender,
            keys,
            inviter,
        }
    }
}

impl Federation {
    pub fn new(
        server_name: OwnedServerName,
        key: Arc<Ed25519KeyPair>,
        config: &FederationConfig,
        outgoing: Outgoing,
        inbound: Inbound,
        stores: &Stores,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let rooms = inbound.rooms.clone();
        let scope = scope(config);
        let Outgoing {
            client,
            sender,
            keys,
            ..
        } = outgoing;
        let joiner = Joiner::new(
            (server_name.clone(), key.clone()),
            client.clone(),
            keys.clone(),
            rooms.clone(),
            scope.clone(),
            clock.clone(),
        );
        let gaps = gap::Gaps::new(
            rooms.clone(),
            stores.graph.clone(),
            (client.clone(), keys.clone()),
            scope.clone(),
            clock.clone(),
        );
        let receiver = Receiver::new(
            (server_name.clone(), key),
            inbound,
            keys.clone(),
            (
                stores.events.clone(),
                stores.federation.clone(),
                stores.accounts.clone(),
            ),
            scope.clone(),
            clock.clone(),
            gaps,
        );
        let backfiller = backfill::Backfiller::new(
            rooms.clone(),
            (client.clone(), keys.clone()),
            (stores.events.clone(), stores.graph.clone()),
            scope.clone(),
            clock.clone(),
            config.enabled,
        );
        let history = History::new(rooms, (stores.graph.clone(), stores.events.clone()));
        Self {
            rate_limiter: crate::ratelimit::RateLimiter::new(crate::config::RateLimitConfig {
                per_second: config.requests_per_second_per_server,
                burst: config.request_burst_per_server,
                ..Default::default()
            }),
            receiver,
            history,
            joiner,
            backfiller,
            server_name,
            enabled: config.enabled,
            scope,
            clock,
            client,
            sender,
            keys,
        }
    }

    /// A local user joins a room this server does not have — through `via`, the room's
    /// server and the server that invited them — or (`join` false) rejects an invite to one.
    pub async fn join_or_reject(
        &self,
        room_id: &RoomId,
        user: &UserId,
        join: bool,
        via: &[OwnedServerName],
        (profile, reason): (serde_json::Map<String, Value>, Option<&str>),
    ) -> Result<()> {
        let invite = self.joiner.rooms().remote_invite(user, room_id).await?;
        if !join {
            let invite = invite.ok_or_else(|| Error::not_found("room not found"))?;
            return self.joiner.reject_invite(&invite, user, reason).await;
        }
        self.check_enabled()?;
        let mut via = via.to_vec();
        if let Some(inviter) = invite.and_then(|i| UserId::parse(&i.sender).ok()) {
            via.push(inviter.server_name().to_owned());
        }
        // A room we had left: the servers still in it as we last knew it.
        via.extend(self.joiner.rooms().other_servers(room_id).await?);
        self.joiner.join(room_id, user, &via, profile).await?;
        Ok(())
    }

    /// A notary query (`/_matrix/key/v2/query`): the key documents of the servers asked
    /// about, as each signed it and signed by us too, for those we federate with and hold or
    /// can fetch keys of (others are left out, as the spec allows). Each server comes with the
    /// key ids wanted (none: all) and how long the keys must stay valid (default: now).
    pub async fn notary(
        &self,
        servers: &[(OwnedServerName, Vec<String>, Option<i64>)],
    ) -> Result<Vec<Raw<ServerSigningKeys>>> {
        self.check_enabled()?;
        if servers.len() > MAX_NOTARY_SERVERS {
            return Err(Error::invalid_param(format!(
                "a key query names at most {MAX_NOTARY_SERVERS} servers"
            )));
        }
        let now = self.clock.now_ms();
        let asked: Vec<_> = servers
            .iter()
            .filter(|(server, _, _)| may_federate_with(&self.scope, server))
            .collect();
        let answers = futures::future::join_all(asked.iter().map(|(server, wanted, until)| {
            self.keys.notarised(server, wanted, until.unwrap_or(now))
        }))
        .await;
        let mut documents = Vec::with_capacity(answers.len());
        for (answer, (server, _, _)) in answers.into_iter().zip(asked) {
            match answer {
                Ok(document) => documents.extend(document),
                // One server's trouble leaves it out, not the others.
                Err(e) => tracing::warn!(%server, error = %e, "keys not notarised"),
            }
        }
        Ok(documents)
    }

    /// Refuses everything federation when it is switched off.
    pub fn check_enabled(&self) -> Result<()> {
        if self.enabled {
            Ok(())
        } else {
            Err(Error::forbidden("federation is disabled on this server"))
        }
    }

    /// The server that sent an incoming federation request, from its `X-Matrix` signature:
    /// 401 when it is missing, names another destination or does not verify; 403 when the
    /// origin is not a server we federate with.
    pub async fn authenticate(
        &self,
        parts: &http::request::Parts,
        body: &[u8],
    ) -> Result<OwnedServerName> {
        self.check_enabled()?;
        let xmatrix = XMatrix::extract_from_http_headers(&parts.headers)
            .map_err(|e| Error::Unauthorized(format!("no valid X-Matrix authorization: {e}")))?;
        if xmatrix
            .destination
            .as_ref()
            .is_some_and(|d| *d != self.server_name)
        {
            return Err(Error::Unauthorized(
                "the request is signed for another destination".into(),
            ));
        }
        if !may_federate_with(&self.scope, &xmatrix.origin) {
            return Err(Error::forbidden(format!(
                "{} is not a server this one federates with",
                xmatrix.origin
            )));
        }
        let keys = self
            .keys
            .keys_for(
                &xmatrix.origin,
                &[xmatrix.key.to_string()],
                self.clock.now_ms(),
            )
            .await?;
        if keys.is_empty() {
            return Err(Error::Unauthorized(format!(
                "the key {} of {} is not known",
                xmatrix.key, xmatrix.origin
            )));
        }
        let map: PublicKeyMap = BTreeMap::from([(xmatrix.origin.to_string(), keys)]);
        let mut request = http::Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = parts.uri.clone();
        xmatrix
            .verify_http_request(&request, &self.server_name, &map)
            .map_err(|e| {
                Error::Unauthorized(format!("the request signature does not verify: {e}"))
            })?;
        // Counted once the signature proves who sent it (nobody spends another's budget).
        self.rate_limiter
            .check(xmatrix.origin.as_str())
            .map_err(|retry_after_ms| Error::LimitExceeded { retry_after_ms })?;
        // It is reachable again, likely: what waits for it goes now.
        self.sender.contacted(&xmatrix.origin);
        Ok(xmatrix.origin)
    }

    /// Device and cross-signing keys of users of `server` (`/user/keys/query`).
    pub async fn query_keys(
        &self,
        server: &ServerName,
        users: BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v1::Response> {
        self.check_enabled()?;
        let request = get_keys::v1::Request::new(users);
        Ok(self
            .client
            .request_at_most(server, request, MAX_KEYS_ANSWER_BYTES)
            .await?)
    }

    /// One key per device of users of `server` (`/user/keys/claim`).
    pub async fn claim_keys(
        &self,
        server: &ServerName,
        claims: claim_keys::v1::OneTimeKeyClaims,
    ) -> Result<claim_keys::v1::OneTimeKeys> {
        self.check_enabled()?;
        let request = claim_keys::v1::Request::new(claims);
        Ok(self
            .client
            .request_at_most(server, request, MAX_KEYS_ANSWER_BYTES)
            .await?
            .one_time_keys)
    }

    /// The room another server's alias names, and servers to join it through.
    pub async fn room_alias(
        &self,
        alias: &ruma::RoomAliasId,
    ) -> Result<(ruma::OwnedRoomId, Vec<OwnedServerName>)> {
        self.check_enabled()?;
        let request = get_room_information::v1::Request::new(alias.to_owned());
        let answer = self.client.request(alias.server_name(), request).await?;
        Ok((answer.room_id, answer.servers))
    }

    /// A remote user's profile from their server; `None` when it has no such user.
    pub async fn profile(&self, user: &UserId) -> Result<Option<BTreeMap<String, Value>>> {
        self.check_enabled()?;
        let request = get_profile_information::v1::Request::new(user.to_owned());
        match self.client.request(user.server_name(), request).await {
            Ok(response) => Ok(Some(
                response
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            )),
            Err(FederationError::Remote { status: 404, .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn scope(config: &FederationConfig) -> FederationScope {
    if config.allowed_servers.is_empty() {
        return FederationScope::Open;
    }
    FederationScope::Only(
        config
            .allowed_servers
            .iter()
            .filter_map(|s| OwnedServerName::try_from(s.as_str()).ok())
            .collect(),
    )
}
