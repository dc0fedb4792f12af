//! Helpers shared by the `matrix-sdk` end-to-end tests (`mod common;` in each).
#![allow(dead_code)] // each test uses a part

use std::time::Duration;

use matrix_sdk::{
    Client,
    config::SyncSettings,
    ruma::{OwnedEventId, OwnedRoomId, events::room::message::RoomMessageEventContent},
};
use tim_e2e::Server;

/// The password every test user gets.
pub const PASSWORD: &str = "secret-pw";

/// A client for the server, not logged in.
pub async fn new_client(server: &Server) -> Client {
    Client::builder()
        .homeserver_url(server.base_url())
        .build()
        .await
        .unwrap()
}

/// A new user registered (open registration, `m.login.dummy`) and logged in.
pub async fn register(server: &Server, name: &str) -> Client {
    let c = new_client(server).await;
    c.matrix_auth()
        .register({
            let mut r = matrix_sdk::ruma::api::client::account::register::v3::Request::new();
            r.username = Some(name.into());
            r.password = Some(PASSWORD.into());
            r.auth = Some(matrix_sdk::ruma::api::client::uiaa::AuthData::Dummy(
                matrix_sdk::ruma::api::client::uiaa::Dummy::new(),
            ));
            r
        })
        .await
        .unwrap();
    c
}

/// One sync without waiting.
pub async fn sync_once(c: &Client) {
    c.sync_once(SyncSettings::default().timeout(Duration::from_millis(0)))
        .await
        .unwrap();
}

/// One sync of each client.
pub async fn sync_all(clients: &[&Client]) {
    for c in clients {
        sync_once(c).await;
    }
}

/// The event's text as the client decrypts it, or None when it cannot.
pub async fn text_of(c: &Client, room: &OwnedRoomId, event: &OwnedEventId) -> Option<String> {
    let ev = c.get_room(room)?.event(event, None).await.ok()?;
    let raw = ev.raw();
    if raw.get_field::<String>("type").ok()?.as_deref() != Some("m.room.message") {
        return None;
    }
    let content: serde_json::Value = raw.get_field("content").ok()??;
    content["body"].as_str().map(str::to_owned)
}

/// Syncs everyone until `reader` can decrypt the event (keys travel as to-device messages).
pub async fn wait_decrypted(
    everyone: &[&Client],
    reader: &Client,
    room: &OwnedRoomId,
    event: &OwnedEventId,
) -> String {
    for _ in 0..40 {
        sync_all(everyone).await;
        if let Some(text) = text_of(reader, room, event).await {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} could not decrypt {event}",
        reader
            .device_id()
            .map(|d| d.to_string())
            .unwrap_or_default()
    );
}

/// Sends a text message; its event id.
pub async fn send(c: &Client, room: &OwnedRoomId, text: &str) -> OwnedEventId {
    c.get_room(room)
        .unwrap()
        .send(RoomMessageEventContent::text_plain(text))
        .await
        .unwrap()
        .response
        .event_id
}
