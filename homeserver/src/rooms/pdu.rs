//! The persistent data unit: a signed, hashed room event as federation sees it, and its
//! client-facing form.

use std::sync::Arc;

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    UserId, events::TimelineEventType,
};
use serde::Deserialize;
use serde_json::{Map, Value, value::RawValue};

use crate::store::EventRow;

#[derive(Clone, Debug, Deserialize)]
pub struct Pdu {
    #[serde(skip_deserializing, default = "placeholder_id")]
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    #[serde(default)]
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: UInt,
    #[serde(default)]
    pub redacts: Option<OwnedEventId>,
}

fn placeholder_id() -> OwnedEventId {
    ruma::owned_event_id!("$placeholder")
}

impl Pdu {
    pub fn from_json(event_id: &str, json: &str) -> Result<Self, String> {
        let mut pdu: Pdu = serde_json::from_str(json)
            .map_err(|e| format!("stored PDU {event_id} unreadable: {e}"))?;
        pdu.event_id = EventId::parse(event_id).map_err(|e| e.to_string())?;
        Ok(pdu)
    }

    pub fn from_row(row: &EventRow) -> Result<Arc<Self>, String> {
        Self::from_json(&row.event_id, &row.json).map(Arc::new)
    }

    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or(Value::Object(Map::new()))
    }

    /// `content.membership` of a member event.
    pub fn membership(&self) -> Option<String> {
        #[derive(Deserialize)]
        struct M {
            membership: String,
        }
        serde_json::from_str::<M>(self.content.get())
            .ok()
            .map(|m| m.membership)
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        Some(&self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        false
    }
}

/// Extra `unsigned` data for the client form of an event.
#[derive(Default)]
pub struct Unsigned<'a> {
    pub now_ms: u64,
    /// Set when the requesting device sent the event.
    pub transaction_id: Option<&'a str>,
    pub redacted_because: Option<Value>,
    pub prev_content: Option<Value>,
    pub replaces_state: Option<&'a str>,
}

/// The client-server form of a stored PDU (federation fields removed, `unsigned` added).
pub fn client_event(row: &EventRow, unsigned: Unsigned<'_>) -> Value {
    let mut pdu: Map<String, Value> = match serde_json::from_str(&row.json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut out = Map::with_capacity(10);
    for key in [
        "content",
        "origin_server_ts",
        "room_id",
        "sender",
        "state_key",
        "type",
        "redacts",
    ] {
        if let Some(v) = pdu.remove(key) {
            out.insert(key.to_owned(), v);
        }
    }
    out.entry("content")
        .or_insert_with(|| Value::Object(Map::new()));
    out.insert("event_id".into(), Value::String(row.event_id.clone()));
    let mut u = Map::new();
    if let Some(ts) = out.get("origin_server_ts").and_then(Value::as_u64) {
        u.insert(
            "age".into(),
            Value::from(unsigned.now_ms.saturating_sub(ts)),
        );
    }
    if let Some(t) = unsigned.transaction_id {
        u.insert("transaction_id".into(), Value::String(t.into()));
    }
    if let Some(r) = unsigned.redacted_because {
        u.insert("redacted_because".into(), r);
    }
    if let Some(p) = unsigned.prev_content {
        u.insert("prev_content".into(), p);
    }
    if let Some(r) = unsigned.replaces_state {
        u.insert("replaces_state".into(), Value::String(r.into()));
    }
    out.insert("unsigned".into(), Value::Object(u));
    Value::Object(out)
}

/// The stripped form (`type`, `state_key`, `sender`, `content`) used for invite state.
pub fn stripped_event(row: &EventRow) -> Value {
    let mut pdu: Map<String, Value> = match serde_json::from_str(&row.json) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    };
    let mut out = Map::new();
    for key in ["content", "sender", "state_key", "type"] {
        if let Some(v) = pdu.remove(key) {
            out.insert(key.to_owned(), v);
        }
    }
    Value::Object(out)
}

/// The `content` of a stored event.
pub fn content_of(row: &EventRow) -> Option<Value> {
    let mut v: Value = serde_json::from_str(&row.json).ok()?;
    v.get_mut("content").map(Value::take)
}

#[cfg(test)]
mod tests {
    /// Fuzz target: canonical JSON and event parsing on arbitrary bytes (what federation will
    /// feed us). Canonical JSON must round-trip, hashing and redaction must not panic, and
    /// our PDU parser must answer or refuse. Runs on random inputs under `cargo test`;
    /// `cargo bolero test rooms::pdu::tests::fuzz_canonical_json_and_events` fuzzes it.
    #[test]
    fn fuzz_canonical_json_and_events() {
        use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId};
        let rules = RoomVersionId::V10
            .rules()
            .expect("room version 10 is known");
        bolero::check!().for_each(|input: &[u8]| {
            // Random bytes, and the same bytes as the content of an event-shaped object.
            let wrapped = serde_json::to_vec(&serde_json::json!({
                "type": "m.room.member", "state_key": "@a:x", "sender": "@a:x",
                "room_id": "!r:x", "origin_server_ts": 1, "depth": 1,
                "prev_events": [], "auth_events": [],
                "content": String::from_utf8_lossy(input),
                "hashes": {"sha256": String::from_utf8_lossy(input)},
            }))
            .unwrap();
            for bytes in [input, wrapped.as_slice()] {
                if let Ok(object) = serde_json::from_slice::<CanonicalJsonObject>(bytes) {
                    let text = CanonicalJsonValue::Object(object.clone()).to_string();
                    let again: CanonicalJsonObject =
                        serde_json::from_str(&text).expect("canonical JSON parses again");
                    assert_eq!(again, object);
                    let _ = ruma::signatures::reference_hash(&object, &rules);
                    let _ = ruma::signatures::content_hash(&object);
                    let _ = ruma::canonical_json::redact(object, &rules.redaction, None);
                }
                if let Ok(text) = std::str::from_utf8(bytes) {
                    let _ = super::Pdu::from_json("$event:x", text);
                }
            }
        });
    }
}
