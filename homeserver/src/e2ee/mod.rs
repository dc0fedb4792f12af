//! End-to-end encryption support: the server carries keys and to-device messages between a
//! user's devices and those they talk to, and never reads them. Device keys are checked
//! against their own signature; one-time keys are handed out once; every change of a user's
//! devices is a position in the device-list stream (`device_lists`).
//!
//! Keys of users on other servers are asked of their servers (`/user/keys/query`,
//! `/user/keys/claim`), all servers at once; a server that does not answer in time is listed
//! in `failures`.

pub mod backup;
pub mod cross_signing;
pub mod device_lists;
pub mod to_device;

use std::collections::BTreeMap;

use base64::Engine;
use futures::StreamExt;
use ruma::{
    CanonicalJsonObject, OneTimeKeyAlgorithm, OwnedDeviceId, OwnedOneTimeKeyId, OwnedUserId, UInt,
    UserId,
    api::client::keys::{claim_keys, get_keys, upload_keys},
    encryption::{DeviceKeys, OneTimeKey},
    serde::Raw,
};
use serde_json::Value;

use crate::{
    accounts::Session,
    error::{Error, Result},
    homeserver::Homeserver,
    store::OneTimeKeyRow,
};

/// Most keys one upload may carry (a client uploads some 50 at a time).
const MAX_KEYS_PER_UPLOAD: usize = 1_000;
/// Keys claimed per request at most (devices × algorithms).
const MAX_CLAIMS: usize = 10_000;

/// Base64 as Matrix writes it (unpadded), tolerating padding.
const BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// Checks the ed25519 signature of `signer`'s key `key_id` (e.g. `ed25519:DEVICE`) on `object`.
pub fn verify_signature(
    object: &CanonicalJsonObject,
    signer: &str,
    key_id: &str,
    public_key: &str,
) -> Result<()> {
    let bad = |why: &str| Error::invalid_signature(format!("{why} ({signer} {key_id})"));
    let signature = object
        .get("signatures")
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(signer))
        .and_then(|s| s.as_object())
        .and_then(|s| s.get(key_id))
        .and_then(|s| s.as_str())
        .ok_or_else(|| bad("signature missing"))?;
    let signature = BASE64
        .decode(signature)
        .map_err(|_| bad("signature is not base64"))?;
    let public_key = BASE64
        .decode(public_key)
        .map_err(|_| bad("key is not base64"))?;
    let canonical = ruma::signatures::to_canonical_json_string_for_signing(object)
        .map_err(|_| bad("object cannot be signed"))?;
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        &public_key,
        &signature,
        canonical.as_bytes(),
    )
    .map_err(|_| bad("signature does not verify"))
}

fn canonical(raw: &serde_json::value::RawValue, what: &str) -> Result<CanonicalJsonObject> {
    serde_json::from_str(raw.get())
        .map_err(|e| Error::bad_json(format!("{what} is not a canonical JSON object: {e}")))
}

/// Splits `algorithm:key_id` and checks the key object.
fn one_time_key_row(
    id: &OwnedOneTimeKeyId,
    key: &Raw<OneTimeKey>,
    device_key: Option<(&UserId, &str, &str)>,
) -> Result<OneTimeKeyRow> {
    let algorithm = id.algorithm();
    key.deserialize()
        .map_err(|e| Error::bad_json(format!("one-time key {id}: {e}")))?;
    // Signed keys must carry the device's signature when the device key is known.
    if algorithm == OneTimeKeyAlgorithm::SignedCurve25519
        && let Some((user, device, ed25519)) = device_key
    {
        let object = canonical(key.json(), "a one-time key")?;
        verify_signature(
            &object,
            user.as_str(),
            &format!("ed25519:{device}"),
            ed25519,
        )?;
    }
    Ok(OneTimeKeyRow {
        algorithm: algorithm.to_string(),
        key_id: id.key_name().to_string(),
        json: key.json().get().to_owned(),
    })
}

impl Homeserver {
    /// `/keys/upload`: the device's identity keys (checked against their own signature), new
    /// one-time and fallback keys; answers the device's one-time key counts.
    pub async fn upload_keys(
        &self,
        session: &Session,
        req: upload_keys::v3::Request,
    ) -> Result<BTreeMap<OneTimeKeyAlgorithm, UInt>> {
        let (user, device) = (&session.user_id, session.device_id.as_str());
        if req.one_time_keys.len() + req.fallback_keys.len() > MAX_KEYS_PER_UPLOAD {
            return Err(Error::invalid_param(format!(
                "at most {MAX_KEYS_PER_UPLOAD} keys per upload"
            )));
        }
        let stored = self
            .stores
            .keys
            .device_keys_of(user.as_str(), device)
            .await?;
        let mut new_device_keys = None;
        if let Some(raw) = &req.device_keys {
            let keys: DeviceKeys = raw
                .deserialize()
                .map_err(|e| Error::bad_json(format!("device_keys: {e}")))?;
            if keys.user_id != *user || keys.device_id != device {
                return Err(Error::invalid_param(
                    "device_keys must be those of the uploading device",
                ));
            }
            let ed25519 = keys
                .keys
                .iter()
                .find(|(id, _)| {
                    id.algorithm() == ruma::DeviceKeyAlgorithm::Ed25519 && id.key_name() == device
                })
                .map(|(_, k)| k.clone())
                .ok_or_else(|| Error::invalid_param("device_keys lack the device's ed25519 key"))?;
            let object = canonical(raw.json(), "device_keys")?;
            verify_signature(
                &object,
                user.as_str(),
                &format!("ed25519:{device}"),
                &ed25519,
            )?;
            // Re-uploading the same keys is no change; anything else is one.
            let json = raw.json().get().to_owned();
            let same = stored.as_deref().is_some_and(|s| {
                serde_json::from_str::<Value>(s).ok() == serde_json::from_str::<Value>(&json).ok()
            });
            if !same {
                new_device_keys = Some((json, ed25519));
            }
        }
        // The signing key to check signed one-time keys with: the new one, else the stored one.
        let ed25519 = match &new_device_keys {
            Some((_, k)) => Some(k.clone()),
            None => stored
                .as_deref()
                .and_then(|k| device_ed25519_key(device, k)),
        };
        let signer = ed25519.as_deref().map(|k| (user.as_ref(), device, k));
        let one_time = req
            .one_time_keys
            .iter()
            .map(|(id, k)| one_time_key_row(id, k, signer))
            .collect::<Result<Vec<_>>>()?;
        let fallback = req
            .fallback_keys
            .iter()
            .map(|(id, k)| one_time_key_row(id, k, signer))
            .collect::<Result<Vec<_>>>()?;
        let keys = self.stores.keys.clone();
        match new_device_keys {
            Some((json, _)) => {
                self.device_lists
                    .change(user, |pos| async move {
                        keys.upload_keys(
                            user.as_str(),
                            device,
                            Some(&json),
                            &one_time,
                            &fallback,
                            Some(pos),
                        )
                        .await
                    })
                    .await?
            }
            None if one_time.is_empty() && fallback.is_empty() => {}
            None => {
                keys.upload_keys(user.as_str(), device, None, &one_time, &fallback, None)
                    .await?
            }
        }
        Ok(self.key_counts(user, device).await?.0)
    }

    /// The device's unclaimed one-time keys per algorithm (signed_curve25519 always listed)
    /// and the algorithms with an unused fallback key.
    pub async fn key_counts(
        &self,
        user: &UserId,
        device: &str,
    ) -> Result<(
        BTreeMap<OneTimeKeyAlgorithm, UInt>,
        Vec<OneTimeKeyAlgorithm>,
    )> {
        let (counts, fallback) = self.stores.keys.key_counts(user.as_str(), device).await?;
        let mut out = BTreeMap::from([(OneTimeKeyAlgorithm::SignedCurve25519, UInt::MIN)]);
        for (algorithm, n) in counts {
            out.insert(
                OneTimeKeyAlgorithm::from(algorithm.as_str()),
                UInt::new_saturating(n as u64),
            );
        }
        let fallback = fallback
            .iter()
            .map(|a| OneTimeKeyAlgorithm::from(a.as_str()))
            .collect();
        Ok((out, fallback))
    }

    /// `/keys/query`: the device and cross-signing keys of local users (all devices, or those
    /// named), with the signatures uploaded for them; a user-signing key and the signatures it
    /// made are shown only to its owner.
    pub async fn query_keys(
        &self,
        requester: &UserId,
        req: get_keys::v3::Request,
    ) -> Result<get_keys::v3::Response> {
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) = req
            .device_keys
            .into_iter()
            .partition(|(u, _)| u.server_name() == self.server_name);
        let mut resp = self.local_keys(Some(requester), &local).await?;
        let timeout = remote_timeout(req.timeout);
        let answers = ask_servers(remote, timeout, |server, users| async move {
            self.federation.query_keys(&server, users).await
        })
        .await;
        for (server, users, answer) in answers {
            match answer {
                Ok(keys) => {
                    // Only what the server may speak for: its own users, as asked.
                    let asked = |u: &OwnedUserId| users.contains_key(u);
                    resp.device_keys
                        .extend(keys.device_keys.into_iter().filter(|(u, _)| asked(u)));
                    resp.master_keys
                        .extend(keys.master_keys.into_iter().filter(|(u, _)| asked(u)));
                    resp.self_signing_keys
                        .extend(keys.self_signing_keys.into_iter().filter(|(u, _)| asked(u)));
                }
                Err(failure) => {
                    resp.failures.insert(server.to_string(), failure);
                }
            }
        }
        Ok(resp)
    }

    /// Device and cross-signing keys of local users, for a local `requester` (who alone sees
    /// their user-signing key and the signatures they made) or another server (`None`).
    pub async fn local_keys(
        &self,
        requester: Option<&UserId>,
        wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
    ) -> Result<get_keys::v3::Response> {
        published_keys(
            self.stores.keys.as_ref(),
            &self.server_name,
            requester,
            wanted,
        )
        .await
    }

    /// `/keys/claim`: one key per wanted device — a one-time key, handed out exactly once, else
    /// the device's fallback key.
    pub async fn claim_keys(
        &self,
        req: claim_keys::v3::Request,
    ) -> Result<claim_keys::v3::Response> {
        let claims: usize = req.one_time_keys.values().map(|d| d.len()).sum();
        if claims > MAX_CLAIMS {
            return Err(Error::invalid_param(format!(
                "at most {MAX_CLAIMS} keys per claim"
            )));
        }
        let (local, remote): (BTreeMap<_, _>, BTreeMap<_, _>) = req
            .one_time_keys
            .into_iter()
            .partition(|(u, _)| u.server_name() == self.server_name);
        let mut resp = claim_keys::v3::Response::new(self.claim_local_keys(&local).await?);
        let timeout = remote_timeout(req.timeout);
        let answers = ask_servers(remote, timeout, |server, users| async move {
            self.federation.claim_keys(&server, users).await
        })
        .await;
        for (server, users, answer) in answers {
            match answer {
                Ok(keys) => resp
                    .one_time_keys
                    .extend(keys.into_iter().filter(|(u, _)| users.contains_key(u))),
                Err(failure) => {
                    resp.failures.insert(server.to_string(), failure);
                }
            }
        }
        Ok(resp)
    }

    /// One key per wanted device of local users (for local clients and other servers).
    pub async fn claim_local_keys(
        &self,
        claims: &BTreeMap<OwnedUserId, BTreeMap<OwnedDeviceId, OneTimeKeyAlgorithm>>,
    ) -> Result<ruma::api::federation::keys::claim_keys::v1::OneTimeKeys> {
        let mut wanted = Vec::new();
        for (user, devices) in claims {
            if user.server_name() != self.server_name {
                continue;
            }
            for (device, algorithm) in devices {
                wanted.push((user.to_string(), device.to_string(), algorithm.to_string()));
            }
        }
        if wanted.len() > MAX_CLAIMS {
            return Err(Error::invalid_param(format!(
                "at most {MAX_CLAIMS} keys per claim"
            )));
        }
        let mut out = ruma::api::federation::keys::claim_keys::v1::OneTimeKeys::new();
        for key in self.stores.keys.claim_keys(&wanted).await? {
            let id = format!("{}:{}", key.algorithm, key.key_id);
            let (Ok(user), Ok(id), Ok(raw)) = (
                OwnedUserId::try_from(key.user_id.as_str()),
                OwnedOneTimeKeyId::try_from(id.as_str()),
                serde_json::value::RawValue::from_string(key.json),
            ) else {
                continue;
            };
            out.entry(user)
                .or_default()
                .entry(OwnedDeviceId::from(key.device_id.as_str()))
                .or_default()
                .insert(id, Raw::from_json(raw));
        }
        Ok(out)
    }
}

/// Device and cross-signing keys of local users, for a local `requester` (who alone sees
/// their user-signing key and the signatures they made) or another server (`None`).
pub async fn published_keys(
    store: &dyn crate::store::KeyStore,
    server_name: &ruma::ServerName,
    requester: Option<&UserId>,
    wanted: &BTreeMap<OwnedUserId, Vec<OwnedDeviceId>>,
) -> Result<get_keys::v3::Response> {
    let mut resp = get_keys::v3::Response::new();
    let local: Vec<&OwnedUserId> = wanted
        .keys()
        .filter(|u| u.server_name() == server_name)
        .collect();
    let users: Vec<String> = local.iter().map(|u| u.to_string()).collect();
    for user in &local {
        resp.device_keys.entry((*user).clone()).or_default();
    }
    let signatures = store.signatures(&users).await?;
    let signatures_on = |user: &str, key: &str| {
        let (user, key) = (user.to_owned(), key.to_owned());
        signatures.iter().filter(move |s| {
            s.target_user == user
                && s.target_key == key
                && (s.signer == user || requester.is_some_and(|r| s.signer == r.as_str()))
        })
    };
    for (user, usage, json) in store.cross_signing_keys(&users).await? {
        let Ok(user) = OwnedUserId::try_from(user.as_str()) else {
            continue;
        };
        let Ok(mut key) = serde_json::from_str::<serde_json::Map<String, Value>>(&json) else {
            continue;
        };
        if let Some(public) = cross_signing::public_key(&json) {
            cross_signing::merge_signatures(&mut key, signatures_on(user.as_str(), &public));
        }
        let raw: Raw<ruma::encryption::CrossSigningKey> =
            Raw::from_json(serde_json::value::to_raw_value(&key).map_err(Error::internal)?);
        match usage.as_str() {
            cross_signing::MASTER => {
                resp.master_keys.insert(user, raw);
            }
            cross_signing::SELF_SIGNING => {
                resp.self_signing_keys.insert(user, raw);
            }
            cross_signing::USER_SIGNING if requester == Some(user.as_ref()) => {
                resp.user_signing_keys.insert(user, raw);
            }
            _ => {}
        }
    }
    for row in store.device_keys(&users).await? {
        let (Ok(user), device) = (
            OwnedUserId::try_from(row.user_id.as_str()),
            OwnedDeviceId::from(row.device_id.as_str()),
        ) else {
            continue;
        };
        let wanted = wanted
            .get(&user)
            .is_some_and(|d| d.is_empty() || d.contains(&device));
        if !wanted {
            continue;
        }
        let Ok(mut keys) = serde_json::from_str::<serde_json::Map<String, Value>>(&row.json) else {
            continue;
        };
        cross_signing::merge_signatures(&mut keys, signatures_on(&row.user_id, &row.device_id));
        if let Some(name) = row.display_name {
            let unsigned = keys
                .entry("unsigned")
                .or_insert_with(|| serde_json::json!({}));
            if let Some(u) = unsigned.as_object_mut() {
                u.insert("device_display_name".into(), Value::String(name));
            }
        }
        let raw = serde_json::value::to_raw_value(&keys).map_err(Error::internal)?;
        resp.device_keys
            .entry(user)
            .or_default()
            .insert(device, Raw::from_json(raw));
    }
    Ok(resp)
}

/// Other servers asked at the same time by one key query or claim.
const SERVERS_AT_ONCE: usize = 16;

/// How long a query waits for other servers: the client's `timeout`, 10 s by default, at
/// most 30 s.
fn remote_timeout(asked: Option<std::time::Duration>) -> std::time::Duration {
    asked
        .unwrap_or(std::time::Duration::from_secs(10))
        .min(std::time::Duration::from_secs(30))
}

/// What each other server answered about its users (a bounded number asked at a time, all
/// within one deadline): the users asked, and the answer or the `failures` entry.
async fn ask_servers<T, A, Fut>(
    remote: BTreeMap<OwnedUserId, T>,
    timeout: std::time::Duration,
    ask: impl Fn(ruma::OwnedServerName, BTreeMap<OwnedUserId, T>) -> Fut,
) -> Vec<(
    ruma::OwnedServerName,
    BTreeMap<OwnedUserId, T>,
    std::result::Result<A, Value>,
)>
where
    T: Clone,
    Fut: std::future::Future<Output = Result<A>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    futures::stream::iter(by_server(remote).into_iter().map(|(server, users)| {
        let asked = ask(server.clone(), users.clone());
        async move {
            let answer = match tokio::time::timeout_at(deadline, asked).await {
                Ok(Ok(a)) => Ok(a),
                Ok(Err(e)) => Err(failure(&e)),
                Err(_) => Err(timed_out(timeout)),
            };
            (server, users, answer)
        }
    }))
    .buffer_unordered(SERVERS_AT_ONCE)
    .collect()
    .await
}

/// Users of other servers, grouped by server.
fn by_server<T>(
    users: BTreeMap<OwnedUserId, T>,
) -> BTreeMap<ruma::OwnedServerName, BTreeMap<OwnedUserId, T>> {
    let mut out: BTreeMap<ruma::OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
    for (user, wanted) in users {
        out.entry(user.server_name().to_owned())
            .or_default()
            .insert(user, wanted);
    }
    out
}

/// A `failures` entry for a server that answered with an error or could not be reached.
fn failure(e: &Error) -> Value {
    serde_json::json!({ "status": 503, "message": e.to_string() })
}

fn timed_out(after: std::time::Duration) -> Value {
    serde_json::json!({
        "status": 504,
        "message": format!("no answer within {} ms", after.as_millis()),
    })
}

/// The device's own ed25519 key in its stored device keys.
fn device_ed25519_key(device: &str, keys: &str) -> Option<String> {
    let v: Value = serde_json::from_str(keys).ok()?;
    v.get("keys")?
        .get(format!("ed25519:{device}"))?
        .as_str()
        .map(str::to_owned)
}
