//! A PDU from another server, checked before anything else looks at it (spec: "Checks
//! performed on receipt of a PDU", steps 1–3): within the size limit, well-formed for its room
//! version, its event id computed from the reference hash (never taken from the sender),
//! signed by every server that must sign it, its content hash checked — an event whose hash
//! does not match is kept, but redacted.

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedServerName,
    room_version_rules::RoomVersionRules,
    signatures::{PublicKeyMap, Verified},
};
use serde_json::value::RawValue;

use super::keys::ServerKeys;
use crate::rooms::{pdu::Pdu, receive::Incoming};

/// The largest PDU the spec allows, in bytes of canonical JSON.
pub const MAX_PDU_BYTES: usize = 65_536;

/// A PDU whose id, signatures and hash have been checked.
#[derive(Clone, Debug)]
pub struct CheckedPdu {
    pub pdu: Pdu,
    /// Canonical JSON as stored (redacted when the content hash did not match).
    pub json: String,
    pub object: CanonicalJsonObject,
    /// The content hash did not match: the event is kept redacted.
    pub redacted: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("the PDU is larger than {MAX_PDU_BYTES} bytes")]
    TooLarge,
    #[error("the PDU is malformed: {0}")]
    Malformed(String),
    #[error("the PDU's signatures do not verify: {0}")]
    BadSignature(String),
    #[error("the PDU's event id is not its reference hash")]
    WrongEventId,
    #[error("the signing keys could not be fetched: {0}")]
    Keys(String),
}

/// Checks a PDU for a room of version `rules`. `expected_id`: the event id the request named
/// (`send_join`, `invite`), which must be the computed one. `now` is the time request-level
/// keys must be valid at (room versions with key validity use `origin_server_ts`).
pub async fn check(
    keys: &ServerKeys,
    rules: &RoomVersionRules,
    raw: &RawValue,
    expected_id: Option<&ruma::EventId>,
    now: i64,
) -> Result<CheckedPdu, PduError> {
    if raw.get().len() > MAX_PDU_BYTES {
        return Err(PduError::TooLarge);
    }
    let mut object: CanonicalJsonObject = serde_json::from_str(raw.get())
        .map_err(|e| PduError::Malformed(format!("not canonical JSON: {e}")))?;
    // The id is computed, so a sender's `event_id` field (room versions 1–2 only) is ignored.
    object.remove("event_id");
    let event_id = event_id(&object, rules)?;
    if expected_id.is_some_and(|e| *e != event_id) {
        return Err(PduError::WrongEventId);
    }
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| PduError::Malformed(e.to_string()))?;
    let at = if rules.enforce_key_validity {
        match object.get("origin_server_ts") {
            Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
            _ => return Err(PduError::Malformed("origin_server_ts is missing".into())),
        }
    } else {
        now
    };
    let mut map = PublicKeyMap::new();
    for server in servers {
        let wanted = key_ids(&object, &server);
        let found = keys
            .keys_for(&server, &wanted, at)
            .await
            .map_err(|e| PduError::Keys(e.to_string()))?;
        map.insert(server.to_string(), found);
    }
    let verified = ruma::signatures::verify_event(&map, &object, rules)
        .map_err(|e| PduError::BadSignature(e.to_string()))?;
    let redacted = verified == Verified::Signatures;
    if redacted {
        object = ruma::canonical_json::redact(object, &rules.redaction, None)
            .map_err(|e| PduError::Malformed(e.to_string()))?;
    }
    let json = serde_json::to_string(&object).map_err(|e| PduError::Malformed(e.to_string()))?;
    let pdu = Pdu::from_json(event_id.as_str(), &json).map_err(PduError::Malformed)?;
    Ok(CheckedPdu {
        pdu,
        json,
        object,
        redacted,
    })
}

/// Checks that `server` signed a PDU too (the invitee's server on an invite it countersigned).
pub async fn check_signed_by(
    keys: &ServerKeys,
    rules: &RoomVersionRules,
    object: &CanonicalJsonObject,
    server: &ruma::ServerName,
    now: i64,
) -> Result<(), PduError> {
    if key_ids(object, &server.to_owned()).is_empty() {
        return Err(PduError::BadSignature(format!("{server} did not sign it")));
    }
    // Every signature present is verified (the inviter's as well).
    let Some(CanonicalJsonValue::Object(signers)) = object.get("signatures") else {
        return Err(PduError::Malformed("no signatures".into()));
    };
    let mut map = PublicKeyMap::new();
    for signer in signers.keys() {
        let signer = OwnedServerName::try_from(signer.as_str())
            .map_err(|e| PduError::Malformed(e.to_string()))?;
        let found = keys
            .keys_for(&signer, &key_ids(object, &signer), now)
            .await
            .map_err(|e| PduError::Keys(e.to_string()))?;
        map.insert(signer.to_string(), found);
    }
    let redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|e| PduError::Malformed(e.to_string()))?;
    ruma::signatures::verify_json(&map, &redacted)
        .map_err(|e| PduError::BadSignature(e.to_string()))
}

/// The event id of a PDU: `$` and its reference hash.
pub fn event_id(
    object: &CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<OwnedEventId, PduError> {
    let hash = ruma::signatures::reference_hash(object, rules).map_err(|e| match e {
        ruma::signatures::JsonError::PduTooLarge => PduError::TooLarge,
        other => PduError::Malformed(other.to_string()),
    })?;
    OwnedEventId::try_from(format!("${hash}")).map_err(|e| PduError::Malformed(e.to_string()))
}

/// The ed25519 key ids `server` signed the object with.
fn key_ids(object: &CanonicalJsonObject, server: &OwnedServerName) -> Vec<String> {
    let Some(CanonicalJsonValue::Object(signatures)) = object.get("signatures") else {
        return vec![];
    };
    let Some(CanonicalJsonValue::Object(by_server)) = signatures.get(server.as_str()) else {
        return vec![];
    };
    by_server
        .keys()
        .filter(|k| k.starts_with("ed25519:"))
        .cloned()
        .collect()
}

impl From<CheckedPdu> for Incoming {
    fn from(c: CheckedPdu) -> Self {
        Incoming::new(c.pdu, c.object, c.json)
    }
}
