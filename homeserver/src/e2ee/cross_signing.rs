//! Cross-signing: a user's master key signs their self-signing key (which signs their devices)
//! and their user-signing key (which signs other users' master keys). The server checks every
//! signature it is given and hands the keys out with `/keys/query`.

use std::collections::BTreeMap;

use ruma::{
    CanonicalJsonObject, OwnedUserId, UserId,
    api::client::keys::{upload_signatures, upload_signing_keys},
    encryption::{CrossSigningKey, KeyUsage},
    serde::Raw,
};
use serde_json::Value;

use super::{canonical, verify_signature};
use crate::{
    accounts::Session,
    error::{Error, Result},
    homeserver::Homeserver,
    store::SignatureRow,
};

pub const MASTER: &str = "master";
pub const SELF_SIGNING: &str = "self_signing";
pub const USER_SIGNING: &str = "user_signing";

/// A checked cross-signing key: its JSON and its one ed25519 public key.
struct Checked {
    json: String,
    public: String,
}

fn check_key(raw: &Raw<CrossSigningKey>, user: &UserId, usage: KeyUsage) -> Result<Checked> {
    let key: CrossSigningKey = raw
        .deserialize()
        .map_err(|e| Error::bad_json(format!("{usage:?} key: {e}")))?;
    if key.user_id != user {
        return Err(Error::invalid_param(
            "cross-signing keys must be the uploader's",
        ));
    }
    if !key.usage.contains(&usage) {
        return Err(Error::invalid_param(format!(
            "the key lacks usage {usage:?}"
        )));
    }
    let mut keys = key.keys.iter();
    let (Some((id, public)), None) = (keys.next(), keys.next()) else {
        return Err(Error::invalid_param(
            "a cross-signing key holds exactly one key",
        ));
    };
    if id.key_name().as_str() != public.as_str() {
        return Err(Error::invalid_param(
            "a cross-signing key's id is its public key",
        ));
    }
    Ok(Checked {
        json: raw.json().get().to_owned(),
        public: public.clone(),
    })
}

/// The public key of a stored cross-signing key.
pub fn public_key(json: &str) -> Option<String> {
    let v: Value = serde_json::from_str(json).ok()?;
    v.get("keys")?
        .as_object()?
        .values()
        .next()?
        .as_str()
        .map(str::to_owned)
}

impl Homeserver {
    /// The user's stored cross-signing keys by usage.
    async fn own_cross_signing_keys(&self, user: &UserId) -> Result<BTreeMap<String, String>> {
        Ok(self
            .stores
            .keys
            .cross_signing_keys(&[user.to_string()])
            .await?
            .into_iter()
            .map(|(_, usage, json)| (usage, json))
            .collect())
    }

    /// `/keys/device_signing/upload`. Replacing an existing master key takes user-interactive
    /// authentication; the first upload does not (as clients bootstrap without a password).
    pub async fn upload_signing_keys(
        &self,
        session: &Session,
        req: upload_signing_keys::v3::Request,
    ) -> Result<()> {
        let user = &session.user_id;
        let stored = self.own_cross_signing_keys(user).await?;
        let master = req
            .master_key
            .as_ref()
            .map(|k| check_key(k, user, KeyUsage::Master))
            .transpose()?;
        let replaces_master = match (&master, stored.get(MASTER)) {
            (Some(new), Some(old)) => public_key(old).as_deref() != Some(new.public.as_str()),
            _ => false,
        };
        let replaces_other = [
            (SELF_SIGNING, &req.self_signing_key),
            (USER_SIGNING, &req.user_signing_key),
        ]
        .iter()
        .any(|(usage, new)| new.is_some() && stored.contains_key(*usage) && master.is_none());
        if replaces_master || replaces_other {
            self.accounts.uia_password(user, req.auth.as_ref()).await?;
        }
        let master_public = match (&master, stored.get(MASTER)) {
            (Some(m), _) => m.public.clone(),
            (None, Some(old)) => {
                public_key(old).ok_or_else(|| Error::internal("stored master key without key"))?
            }
            (None, None) => return Err(Error::invalid_param("upload a master key first")),
        };
        let mut rows = Vec::new();
        if let Some(m) = master {
            rows.push((MASTER.to_owned(), m.json));
        }
        for (usage, kind, raw) in [
            (SELF_SIGNING, KeyUsage::SelfSigning, &req.self_signing_key),
            (USER_SIGNING, KeyUsage::UserSigning, &req.user_signing_key),
        ] {
            let Some(raw) = raw else { continue };
            let key = check_key(raw, user, kind)?;
            // Signed by the master key.
            let object = canonical(raw.json(), "a cross-signing key")?;
            verify_signature(
                &object,
                user.as_str(),
                &format!("ed25519:{master_public}"),
                &master_public,
            )?;
            rows.push((usage.to_owned(), key.json));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let keys = self.stores.keys.clone();
        self.device_lists
            .change(user, |pos| async move {
                keys.set_cross_signing_keys(user.as_str(), &rows, pos).await
            })
            .await
    }

    /// `/keys/signatures/upload`: signatures of the user's own devices (by their self-signing
    /// key), of their own master key (by a device) and of other users' master keys (by their
    /// user-signing key). Each that does not verify is a failure; the rest are stored.
    pub async fn upload_signatures(
        &self,
        session: &Session,
        req: upload_signatures::v3::Request,
    ) -> Result<upload_signatures::v3::Response> {
        let me = &session.user_id;
        let own = self.own_cross_signing_keys(me).await?;
        let mut rows = Vec::new();
        let mut resp = upload_signatures::v3::Response::new();
        for (target, keys) in &req.signed_keys {
            for (key_id, object) in keys.iter() {
                let outcome = self
                    .check_signed_key(me, target, key_id, object.get(), &own)
                    .await;
                match outcome {
                    Ok(row) => rows.push(row),
                    Err(e) => {
                        let failure = serde_json::json!({"errcode": "M_INVALID_SIGNATURE", "error": e.to_string()});
                        if let Ok(f) = serde_json::from_value(failure) {
                            resp.failures
                                .entry(target.clone())
                                .or_default()
                                .insert(key_id.to_owned(), f);
                        }
                    }
                }
            }
        }
        if !rows.is_empty() {
            let keys = self.stores.keys.clone();
            self.device_lists
                .change(me, |pos| async move {
                    keys.add_signatures(&rows, me.as_str(), pos).await
                })
                .await?;
        }
        Ok(resp)
    }

    /// The new signature `me` put on `target`'s key `key_id`, verified.
    async fn check_signed_key(
        &self,
        me: &UserId,
        target: &OwnedUserId,
        key_id: &str,
        json: &str,
        own: &BTreeMap<String, String>,
    ) -> Result<SignatureRow> {
        let own_public = |usage: &str| own.get(usage).and_then(|j| public_key(j));
        let object: CanonicalJsonObject =
            serde_json::from_str(json).map_err(|e| Error::bad_json(format!("signed key: {e}")))?;
        // The key as stored: the signed object must be that key (plus signatures).
        let (stored, signer_public) = if target == me {
            let device = self.stores.keys.device_keys_of(me.as_str(), key_id).await?;
            match device {
                // One of my devices, signed by my self-signing key.
                Some(device) => (
                    device,
                    own_public(SELF_SIGNING)
                        .ok_or_else(|| Error::invalid_param("no self-signing key"))?,
                ),
                // My master key, signed by one of my devices.
                None => {
                    let master = own
                        .get(MASTER)
                        .cloned()
                        .filter(|m| public_key(m).as_deref() == Some(key_id))
                        .ok_or_else(|| Error::not_found("no such device or key"))?;
                    let (signer, public) = self.signing_device(me, &object).await?;
                    return self
                        .verified_row(me, target, key_id, &master, &object, &signer, &public);
                }
            }
        } else {
            // Another user's master key, signed by my user-signing key.
            let master = self
                .stores
                .keys
                .cross_signing_keys(&[target.to_string()])
                .await?
                .into_iter()
                .find(|(_, usage, json)| {
                    usage == MASTER && public_key(json).as_deref() == Some(key_id)
                })
                .map(|(_, _, json)| json)
                .ok_or_else(|| Error::not_found("no such master key"))?;
            (
                master,
                own_public(USER_SIGNING)
                    .ok_or_else(|| Error::invalid_param("no user-signing key"))?,
            )
        };
        let signer_key_id = format!("ed25519:{signer_public}");
        self.verified_row(
            me,
            target,
            key_id,
            &stored,
            &object,
            &signer_key_id,
            &signer_public,
        )
    }

    /// The device of `me` whose signature is on `object`: `(ed25519:DEVICE, public key)`.
    async fn signing_device(
        &self,
        me: &UserId,
        object: &CanonicalJsonObject,
    ) -> Result<(String, String)> {
        let ids: Vec<String> = object
            .get("signatures")
            .and_then(|s| s.as_object())
            .and_then(|s| s.get(me.as_str()))
            .and_then(|s| s.as_object())
            .map(|s| s.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            let Some(device) = id.strip_prefix("ed25519:") else {
                continue;
            };
            if let Some(keys) = self.stores.keys.device_keys_of(me.as_str(), device).await?
                && let Some(public) = super::device_ed25519_key(device, &keys)
            {
                return Ok((id.clone(), public));
            }
        }
        Err(Error::invalid_signature(
            "not signed by any of the user's devices",
        ))
    }

    /// Checks that `object` is `stored` and carries a valid signature by `signer`, and returns
    /// that signature as a row.
    #[allow(clippy::too_many_arguments)]
    fn verified_row(
        &self,
        me: &UserId,
        target: &UserId,
        key_id: &str,
        stored: &str,
        object: &CanonicalJsonObject,
        signer_key_id: &str,
        signer_public: &str,
    ) -> Result<SignatureRow> {
        let unsigned = |v: &mut Value| {
            if let Some(o) = v.as_object_mut() {
                o.remove("signatures");
                o.remove("unsigned");
            }
        };
        let mut stored: Value = serde_json::from_str(stored).map_err(Error::internal)?;
        let mut given = serde_json::to_value(object).map_err(Error::internal)?;
        unsigned(&mut stored);
        unsigned(&mut given);
        if stored != given {
            return Err(Error::invalid_param("the signed key is not the stored key"));
        }
        verify_signature(object, me.as_str(), signer_key_id, signer_public)?;
        let signature = object
            .get("signatures")
            .and_then(|s| s.as_object())
            .and_then(|s| s.get(me.as_str()))
            .and_then(|s| s.as_object())
            .and_then(|s| s.get(signer_key_id))
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_owned();
        Ok(SignatureRow {
            target_user: target.to_string(),
            target_key: key_id.to_owned(),
            signer: me.to_string(),
            signer_key_id: signer_key_id.to_owned(),
            signature,
        })
    }
}

/// Adds stored signatures to a key object (`signatures.{signer}.{key id}`).
pub fn merge_signatures<'a>(
    key: &mut serde_json::Map<String, Value>,
    rows: impl Iterator<Item = &'a SignatureRow>,
) {
    for r in rows {
        let signatures = key
            .entry("signatures")
            .or_insert_with(|| serde_json::json!({}));
        if let Some(s) = signatures.as_object_mut() {
            let by = s
                .entry(r.signer.clone())
                .or_insert_with(|| serde_json::json!({}));
            if let Some(by) = by.as_object_mut() {
                by.insert(r.signer_key_id.clone(), Value::String(r.signature.clone()));
            }
        }
    }
}
