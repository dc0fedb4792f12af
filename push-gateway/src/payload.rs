//! What a push says. TI-M (C-03): a push carries no message content — the device fetches the
//! event by its id and decrypts it itself. So by default the payload is the room id, event id,
//! event type and unread counts, in the key layout of Sygnal's webpush pushkind
//! (`room_id`, `event_id`, `type`, `unread`, `missed_calls`, merged over the pusher's
//! `default_payload`), so existing web clients read it. Sender, room name and content only go
//! out when the app's configuration allows it, and never whatever the homeserver adds beyond.

use ruma::api::push_gateway::send_event_notification::v1::Notification;
use serde_json::{Map, Value, json};

use crate::webpush::MAX_PAYLOAD;

/// A message body longer than this is cut (when content is allowed at all).
const MAX_BODY_CHARS: usize = 1000;

/// The payload does not fit into one push, even without content.
#[derive(Debug, PartialEq, Eq)]
pub struct TooLarge;

/// The JSON payload of one push for one device.
pub fn build(
    n: &Notification,
    device_data: &Map<String, Value>,
    include_content: bool,
) -> Result<Vec<u8>, TooLarge> {
    let mut payload = device_data
        .get("default_payload")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut put = |key: &str, value: Value| {
        payload.insert(key.to_owned(), value);
    };
    if let Some(room) = &n.room_id {
        put("room_id", json!(room));
    }
    if let Some(event) = &n.event_id {
        put("event_id", json!(event));
    }
    if let Some(kind) = &n.event_type {
        put("type", json!(kind.to_string()));
    }
    // Always, also 0: a push after everything was read clears the app badge.
    put("unread", json!(n.counts.unread));
    if n.counts.missed_calls > 0u32.into() {
        put("missed_calls", json!(n.counts.missed_calls));
    }
    if include_content {
        if let Some(sender) = &n.sender {
            put("sender", json!(sender));
        }
        if let Some(name) = &n.sender_display_name {
            put("sender_display_name", json!(name));
        }
        if let Some(name) = &n.room_name {
            put("room_name", json!(name));
        }
        if let Some(alias) = &n.room_alias {
            put("room_alias", json!(alias));
        }
        if n.user_is_target {
            put("user_is_target", json!(true));
        }
        let without_content = serde_json::to_vec(&payload).expect("JSON object");
        if let Some(content) = n
            .content
            .as_ref()
            .and_then(|c| serde_json::from_str::<Map<String, Value>>(c.get()).ok())
        {
            payload.insert("content".into(), Value::Object(shorten(content)));
            let with_content = serde_json::to_vec(&payload).expect("JSON object");
            // Content that does not fit is left out rather than the push.
            return fits(if with_content.len() <= MAX_PAYLOAD {
                with_content
            } else {
                without_content
            });
        }
        return fits(without_content);
    }
    fits(serde_json::to_vec(&payload).expect("JSON object"))
}

fn fits(bytes: Vec<u8>) -> Result<Vec<u8>, TooLarge> {
    if bytes.len() <= MAX_PAYLOAD {
        Ok(bytes)
    } else {
        Err(TooLarge)
    }
}

/// Content as a notification can show it: no HTML body, the body cut.
fn shorten(mut content: Map<String, Value>) -> Map<String, Value> {
    content.remove("formatted_body");
    if let Some(Value::String(body)) = content.get_mut("body")
        && body.chars().count() > MAX_BODY_CHARS
    {
        *body = body.chars().take(MAX_BODY_CHARS - 1).collect::<String>() + "…";
    }
    content
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification() -> Notification {
        serde_json::from_value(json!({
            "event_id": "$ev:example.org",
            "room_id": "!room:example.org",
            "type": "m.room.encrypted",
            "sender": "@dr.mueller:example.org",
            "sender_display_name": "Müller, Anna",
            "room_name": "Station 3",
            "prio": "high",
            "content": {"body": "Befund von Herrn X", "formatted_body": "<b>Befund</b>", "msgtype": "m.text"},
            "counts": {"unread": 3},
            "devices": []
        }))
        .unwrap()
    }

    #[test]
    fn by_default_nothing_of_the_message_leaves() {
        let data = json!({"default_payload": {"v": 1, "room_id": "forged"}});
        let bytes = build(&notification(), data.as_object().unwrap(), false).unwrap();
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(
            v,
            json!({
                "v": 1,
                "room_id": "!room:example.org",
                "event_id": "$ev:example.org",
                "type": "m.room.encrypted",
                "unread": 3
            })
        );
        let text = String::from_utf8(bytes).unwrap();
        for secret in ["Befund", "Müller", "Station", "dr.mueller"] {
            assert!(!text.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn content_only_when_allowed_shortened_and_dropped_when_too_big() {
        let v: Value =
            serde_json::from_slice(&build(&notification(), &Map::new(), true).unwrap()).unwrap();
        assert_eq!(v["sender_display_name"], "Müller, Anna");
        assert_eq!(v["content"]["body"], "Befund von Herrn X");
        assert!(v["content"].get("formatted_body").is_none());

        let mut n = notification();
        let long = "x".repeat(5000);
        n.content = Some(
            serde_json::value::to_raw_value(&json!({"body": long, "extra": "y".repeat(3900)}))
                .unwrap(),
        );
        let v: Value = serde_json::from_slice(&build(&n, &Map::new(), true).unwrap()).unwrap();
        assert!(v.get("content").is_none(), "too big content is left out");
        assert_eq!(v["event_id"], "$ev:example.org");

        let mut n = notification();
        n.content = Some(serde_json::value::to_raw_value(&json!({"body": long})).unwrap());
        let v: Value = serde_json::from_slice(&build(&n, &Map::new(), true).unwrap()).unwrap();
        assert_eq!(v["content"]["body"].as_str().unwrap().chars().count(), 1000);
    }

    #[test]
    fn an_oversized_default_payload_cannot_be_pushed() {
        let data = json!({"default_payload": {"pad": "z".repeat(5000)}});
        assert_eq!(
            build(&notification(), data.as_object().unwrap(), false),
            Err(TooLarge)
        );
    }
}
