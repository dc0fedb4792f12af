//! Signing keys: our own key document (`/_matrix/key/v2/server`) and other servers' keys —
//! fetched from the server itself, accepted only when the document is signed by the keys it
//! lists, cached in memory and in the store, kept after they expire or are rotated out so
//! that what they signed stays verifiable.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use ruma::{
    CanonicalJsonObject, MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedServerSigningKeyId,
    ServerName,
    api::federation::discovery::{ServerSigningKeys, VerifyKey, get_server_keys},
    serde::{Base64, Raw},
    signatures::{Ed25519KeyPair, PublicKeySet},
};

use super::client::FederationClient;
use crate::{
    clock::Clock,
    error::{Error, Result},
    store::{RemoteKeyRow, RemoteKeyStore},
};

/// A server's key is fetched again at most this often when it lacks a key it is asked for
/// (so a peer sending bad key ids cannot make us fetch on every request).
const MIN_REFETCH_MS: i64 = 30_000;
/// Longest validity we accept from a key document (spec: room versions 5+).
const MAX_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

pub struct ServerKeys {
    server_name: OwnedServerName,
    key: Arc<Ed25519KeyPair>,
    validity_ms: i64,
    store: Arc<dyn RemoteKeyStore>,
    client: Arc<FederationClient>,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<OwnedServerName, Vec<RemoteKeyRow>>>,
    /// One fetch per server at a time, and when it last happened.
    fetches: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<i64>>>>,
}

impl ServerKeys {
    pub fn new(
        server_name: OwnedServerName,
        key: Arc<Ed25519KeyPair>,
        validity_ms: i64,
        store: Arc<dyn RemoteKeyStore>,
        client: Arc<FederationClient>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            server_name,
            key,
            validity_ms,
            store,
            client,
            clock,
            cache: Mutex::new(HashMap::new()),
            fetches: Mutex::new(HashMap::new()),
        }
    }

    pub fn key_id(&self) -> String {
        format!("ed25519:{}", self.key.version())
    }

    /// Our key document, signed with the key it lists.
    pub fn own_document(&self) -> Result<Raw<ServerSigningKeys>> {
        let key_id = OwnedServerSigningKeyId::try_from(self.key_id()).map_err(Error::internal)?;
        let valid_until = self.clock.now_ms() + self.validity_ms;
        let mut object = CanonicalJsonObject::new();
        object.insert(
            "server_name".into(),
            self.server_name.as_str().to_owned().into(),
        );
        let mut verify_keys = CanonicalJsonObject::new();
        let mut key = CanonicalJsonObject::new();
        key.insert(
            "key".into(),
            Base64::<ruma::serde::base64::Standard>::new(self.key.public_key().to_vec())
                .encode()
                .into(),
        );
        verify_keys.insert(key_id.to_string(), key.into());
        object.insert("verify_keys".into(), verify_keys.into());
        object.insert("old_verify_keys".into(), CanonicalJsonObject::new().into());
        object.insert(
            "valid_until_ts".into(),
            ruma::CanonicalJsonValue::Integer(ruma::Int::new_saturating(valid_until)),
        );
        ruma::signatures::sign_json(self.server_name.as_str(), self.key.as_ref(), &mut object)
            .map_err(Error::internal)?;
        let json = serde_json::value::to_raw_value(&object).map_err(Error::internal)?;
        Ok(Raw::from_json(json))
    }

    /// The keys of `server` that can verify a signature made at `at_ms`, by key id; fetches
    /// the server's key document when a wanted key is unknown or no longer valid.
    pub async fn keys_for(
        &self,
        server: &ServerName,
        wanted: &[String],
        at_ms: i64,
    ) -> Result<PublicKeySet> {
        if *server == self.server_name {
            let mut own = PublicKeySet::new();
            own.insert(self.key_id(), Base64::new(self.key.public_key().to_vec()));
            return Ok(own);
        }
        let mut known = self.known(server).await?;
        if !covers(&known, wanted, at_ms) {
            known = self
                .refresh(server, &|known| covers(known, wanted, at_ms))
                .await?;
        }
        Ok(known
            .iter()
            .filter(|k| wanted.contains(&k.key_id) && usable_at(k, at_ms))
            .filter_map(|k| Some((k.key_id.clone(), Base64::parse(&k.public_key).ok()?)))
            .collect())
    }

    async fn known(&self, server: &ServerName) -> Result<Vec<RemoteKeyRow>> {
        if let Some(keys) = self.cache.lock().expect("key cache").get(server) {
            return Ok(keys.clone());
        }
        let keys = self.store.remote_keys(server.as_str()).await?;
        self.cache
            .lock()
            .expect("key cache")
            .insert(server.to_owned(), keys.clone());
        Ok(keys)
    }

    /// `server`'s key document for a notary query (`/_matrix/key/v2/query`): as the server
    /// signed it, with our signature added; fetched again when the one we hold lacks a key
    /// in `wanted` or expires before `minimum_valid_until`. `None` when we have none.
    pub async fn notarised(
        &self,
        server: &ServerName,
        wanted: &[String],
        minimum_valid_until: i64,
    ) -> Result<Option<Raw<ServerSigningKeys>>> {
        if *server == self.server_name {
            return self.own_document().map(Some);
        }
        let good_enough = |known: &[RemoteKeyRow]| {
            let current = known.iter().filter(|k| k.expired_ts.is_none());
            current.map(|k| k.valid_until_ts).max() >= Some(minimum_valid_until)
                && wanted
                    .iter()
                    .all(|id| known.iter().any(|k| &k.key_id == id))
        };
        let known = self.known(server).await?;
        let mut document = self.store.key_document(server.as_str()).await?;
        if document.is_none() || !good_enough(&known) {
            self.refresh(server, &good_enough).await?;
            document = self.store.key_document(server.as_str()).await?;
        }
        let Some(document) = document else {
            return Ok(None);
        };
        let mut object: CanonicalJsonObject =
            serde_json::from_str(&document).map_err(Error::internal)?;
        ruma::signatures::sign_json(self.server_name.as_str(), self.key.as_ref(), &mut object)
            .map_err(Error::internal)?;
        let json = serde_json::value::to_raw_value(&object).map_err(Error::internal)?;
        Ok(Some(Raw::from_json(json)))
    }

    /// Fetches `server`'s key document unless what we know `suffices` (one fetch per server
    /// at a time, at most every `MIN_REFETCH_MS`), stores what verifies, and answers what is
    /// known afterwards.
    async fn refresh(
        &self,
        server: &ServerName,
        suffices: &(dyn Fn(&[RemoteKeyRow]) -> bool + Sync),
    ) -> Result<Vec<RemoteKeyRow>> {
        let slot = self
            .fetches
            .lock()
            .expect("key fetches")
            .entry(server.to_owned())
            .or_default()
            .clone();
        let mut last = slot.lock().await;
        let known = self.known(server).await?;
        let now = self.clock.now_ms();
        if suffices(&known) || (*last != 0 && now - *last < MIN_REFETCH_MS) {
            return Ok(known);
        }
        *last = now;
        match self.fetch(server, now).await {
            Ok((fetched, document)) => {
                self.store
                    .save_remote_keys(server.as_str(), &fetched, &document, now)
                    .await?;
                let keys = self.store.remote_keys(server.as_str()).await?;
                self.cache
                    .lock()
                    .expect("key cache")
                    .insert(server.to_owned(), keys.clone());
                Ok(keys)
            }
            Err(reason) => {
                tracing::info!(server = %server, %reason, "server keys could not be fetched");
                Ok(known)
            }
        }
    }

    /// The server's keys, verified, and the document that lists them.
    async fn fetch(
        &self,
        server: &ServerName,
        now: i64,
    ) -> Result<(Vec<RemoteKeyRow>, String), String> {
        let response = self
            .client
            .request_unsigned(server, get_server_keys::v2::Request::new())
            .await
            .map_err(|e| e.to_string())?;
        let keys = verified_keys(server, &response.server_key, now)?;
        Ok((keys, response.server_key.json().get().to_owned()))
    }
}

/// The keys a server's own key document lists, if it is the document of `server` and signed
/// by every key it lists as current.
fn verified_keys(
    server: &ServerName,
    document: &Raw<ServerSigningKeys>,
    now: i64,
) -> Result<Vec<RemoteKeyRow>, String> {
    let keys: ServerSigningKeys = document.deserialize().map_err(|e| e.to_string())?;
    if keys.server_name != server {
        return Err(format!("the key document names {}", keys.server_name));
    }
    if keys.verify_keys.is_empty() {
        return Err("the key document lists no key".into());
    }
    let object: CanonicalJsonObject =
        serde_json::from_str(document.json().get()).map_err(|e| e.to_string())?;
    let own: PublicKeySet = keys
        .verify_keys
        .iter()
        .map(|(id, VerifyKey { key, .. })| (id.to_string(), key.clone()))
        .collect();
    for id in own.keys() {
        let only: PublicKeySet = own
            .iter()
            .filter(|(k, _)| *k == id)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let map = BTreeMap::from([(server.to_string(), only)]);
        ruma::signatures::verify_json(&map, &object)
            .map_err(|e| format!("the key document's signature by {id} does not verify: {e}"))?;
    }
    let valid_until = u64::from(keys.valid_until_ts.get()) as i64;
    let valid_until = valid_until.min(now + MAX_VALIDITY_MS);
    let mut rows: Vec<RemoteKeyRow> = keys
        .verify_keys
        .iter()
        .map(|(id, k)| RemoteKeyRow {
            key_id: id.to_string(),
            public_key: k.key.encode(),
            valid_until_ts: valid_until,
            expired_ts: None,
        })
        .collect();
    rows.extend(keys.old_verify_keys.iter().map(|(id, k)| RemoteKeyRow {
        key_id: id.to_string(),
        public_key: k.key.encode(),
        valid_until_ts: ms(k.expired_ts),
        expired_ts: Some(ms(k.expired_ts)),
    }));
    Ok(rows)
}

fn ms(ts: MilliSecondsSinceUnixEpoch) -> i64 {
    u64::from(ts.get()) as i64
}

/// A key verifies signatures made before it was retired, or, while current, before the end
/// of its validity.
fn usable_at(key: &RemoteKeyRow, at_ms: i64) -> bool {
    match key.expired_ts {
        Some(expired) => at_ms < expired,
        None => at_ms <= key.valid_until_ts,
    }
}

fn covers(known: &[RemoteKeyRow], wanted: &[String], at_ms: i64) -> bool {
    wanted
        .iter()
        .all(|id| known.iter().any(|k| &k.key_id == id && usable_at(k, at_ms)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, valid_until: i64, expired: Option<i64>) -> RemoteKeyRow {
        RemoteKeyRow {
            key_id: id.into(),
            public_key: "AAAA".into(),
            valid_until_ts: valid_until,
            expired_ts: expired,
        }
    }

    #[test]
    fn keys_verify_within_their_validity() {
        let current = row("ed25519:a", 1_000, None);
        assert!(usable_at(&current, 1_000));
        assert!(!usable_at(&current, 1_001));
        let old = row("ed25519:b", 500, Some(500));
        assert!(usable_at(&old, 499));
        assert!(!usable_at(&old, 500));
        let known = [current, old];
        assert!(covers(&known, &["ed25519:a".into()], 900));
        assert!(!covers(
            &known,
            &["ed25519:a".into(), "ed25519:b".into()],
            900
        ));
        assert!(!covers(&known, &["ed25519:c".into()], 0));
    }

    #[test]
    fn a_key_document_must_be_the_servers_own_and_signed() {
        let server = ruma::server_name!("keys.example");
        let key = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "v1".into()).unwrap();
        let sign = |name: &str, signer: &Ed25519KeyPair, tamper: bool| {
            let mut object: CanonicalJsonObject = serde_json::from_value(serde_json::json!({
                "server_name": name,
                "verify_keys": {"ed25519:v1": {"key": Base64::<ruma::serde::base64::Standard>::new(key.public_key().to_vec()).encode()}},
                "old_verify_keys": {"ed25519:v0": {"key": "AAAA", "expired_ts": 10}},
                "valid_until_ts": 99_999_999_999_999i64,
            }))
            .unwrap();
            ruma::signatures::sign_json(name, signer, &mut object).unwrap();
            if tamper {
                object.insert(
                    "valid_until_ts".into(),
                    ruma::CanonicalJsonValue::Integer(5u32.into()),
                );
            }
            Raw::from_json(serde_json::value::to_raw_value(&object).unwrap())
        };
        let rows = verified_keys(server, &sign("keys.example", &key, false), 1_000).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0].valid_until_ts,
            1_000 + MAX_VALIDITY_MS,
            "validity capped"
        );
        assert_eq!(rows[1].expired_ts, Some(10));
        assert!(verified_keys(server, &sign("other.example", &key, false), 0).is_err());
        assert!(verified_keys(server, &sign("keys.example", &key, true), 0).is_err());
        let stranger = Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "v1".into()).unwrap();
        assert!(verified_keys(server, &sign("keys.example", &stranger, false), 0).is_err());
    }
}
