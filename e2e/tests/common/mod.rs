//! Helpers shared by the `matrix-sdk` end-to-end tests (`mod common;` in each).
#![allow(dead_code)] // each test uses a part

use std::time::Duration;

use matrix_sdk::{
    Client,
    config::SyncSettings,
    ruma::{
        OwnedEventId, OwnedRoomId,
        api::client::room::create_room,
        events::{
            InitialStateEvent,
            room::{encryption::RoomEncryptionEventContent, message::RoomMessageEventContent},
        },
    },
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

/// An encrypted room `inviter` creates with `invitee` invited; the invitee syncs until the
/// invite is there (it may come from another server) and joins.
pub async fn encrypted_room(inviter: &Client, invitee: &Client) -> OwnedRoomId {
    let mut req = create_room::v3::Request::new();
    req.invite = vec![invitee.user_id().unwrap().to_owned()];
    req.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = inviter.create_room(req).await.unwrap().room_id().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while invitee.get_room(&room).is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the invite did not arrive"
        );
        sync_once(invitee).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    invitee.join_room_by_id(&room).await.unwrap();
    sync_all(&[inviter, invitee]).await;
    room
}

/// The text of the i-th message.
type Text = fn(usize) -> String;

/// `a` and `b` take turns sending `turns` messages each (`a_text(i)`, `b_text(i)`); every one
/// decrypts on the other side. The messages, oldest first.
pub async fn chat_both_ways(
    (a, b): (&Client, &Client),
    room: &OwnedRoomId,
    turns: usize,
    (a_text, b_text): (Text, Text),
) -> Vec<OwnedEventId> {
    let everyone = [a, b];
    let mut sent = Vec::new();
    for i in 0..turns {
        for (sender, reader, text) in [(a, b, a_text(i)), (b, a, b_text(i))] {
            sync_all(&everyone).await;
            let event = send(sender, room, &text).await;
            sent.push((event, text, reader));
        }
    }
    for (event, text, reader) in &sent {
        assert_eq!(&wait_decrypted(&everyone, reader, room, event).await, text);
    }
    sent.into_iter().map(|(e, ..)| e).collect()
}

/// A client of the server at `url` (`http://host:port`; a tenant's name as host reaches
/// 127.0.0.1), signed in as `name` (registered before).
pub async fn login_url(url: &str, name: &str) -> Client {
    let parsed = reqwest::Url::parse(url).unwrap();
    let mut http = reqwest::Client::builder();
    if let (Some(host), Some(port)) = (parsed.host_str(), parsed.port()) {
        http = http.resolve(host, ([127, 0, 0, 1], port).into());
    }
    let c = Client::builder()
        .homeserver_url(url)
        .http_client(http.build().unwrap())
        .build()
        .await
        .unwrap();
    c.matrix_auth()
        .login_username(name, PASSWORD)
        .send()
        .await
        .unwrap();
    c
}

/// The event as the server stores it (raw JSON), read with `c`'s token.
pub async fn stored_event(c: &Client, room: &OwnedRoomId, event: &OwnedEventId) -> String {
    reqwest::Client::new()
        .get(format!(
            "{}_matrix/client/v3/rooms/{room}/event/{event}",
            c.homeserver()
        ))
        .bearer_auth(c.access_token().unwrap())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
