//! A doctor's day with a stock Matrix client library (`matrix-sdk`) against the real binary:
//! onboarding with a registration token, login, a room with a colleague, messages, long-poll
//! sync, replies, reactions, redaction, pagination, devices, and a second tenant that sees
//! nothing of the first. On SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use matrix_sdk::{
    Client,
    config::SyncSettings,
    room::{MessagesOptions, RelationsOptions},
    ruma::{
        OwnedDeviceId, UInt,
        api::client::{
            account::register,
            room::create_room,
            uiaa::{self, AuthData},
        },
        events::{
            AnySyncMessageLikeEvent, AnySyncTimelineEvent, SyncMessageLikeEvent,
            reaction::ReactionEventContent,
            relation::{Annotation, InReplyTo, Reply},
            room::message::{Relation, RoomMessageEventContent},
        },
    },
};
use serde_json::json;
use tim_e2e::{STORES, Server};

async fn client(server: &Server, host: Option<&str>) -> Client {
    let (http, url) = match host {
        Some(h) => (
            reqwest::Client::builder()
                .resolve(h, format!("127.0.0.1:{}", server.port).parse().unwrap())
                .build()
                .unwrap(),
            format!("http://{h}:{}", server.port),
        ),
        None => (reqwest::Client::new(), server.base_url()),
    };
    Client::builder()
        .homeserver_url(url)
        .http_client(http)
        .build()
        .await
        .unwrap()
}

async fn operator(
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let resp = reqwest::Client::new()
        .request(
            method,
            format!("{}/_tim/operator/v1/{path}", server.internal_url()),
        )
        .bearer_auth(server.operator_token())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        resp.status().is_success(),
        "operator {path}: {}",
        resp.status()
    );
    resp.json().await.unwrap()
}

/// Registers through the registration-token flow (UIA: first ask, then answer).
async fn register_with_token(c: &Client, name: &str, token: &str) {
    let mut req = register::v3::Request::new();
    req.username = Some(name.to_owned());
    req.password = Some("secret-pw".to_owned());
    let err = c.matrix_auth().register(req.clone()).await.unwrap_err();
    let info = err
        .as_uiaa_response()
        .expect("registration asks for user-interactive auth");
    assert_eq!(
        info.flows[0].stages,
        vec![uiaa::AuthType::RegistrationToken]
    );
    let mut auth = uiaa::RegistrationToken::new(token.to_owned());
    auth.session = info.session.clone();
    req.auth = Some(AuthData::RegistrationToken(auth));
    c.matrix_auth().register(req).await.unwrap();
}

fn text_bodies(events: &[matrix_sdk::deserialized_responses::TimelineEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e.raw().deserialize().ok()? {
            AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(
                SyncMessageLikeEvent::Original(m),
            )) => Some(m.content.body().to_owned()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctors_chat_with_matrix_sdk_on_both_stores() {
    for store in STORES {
        let server = Server::start_with(store, &[("TIM_OPEN_REGISTRATION", "false")]);
        doctors_chat(&server).await;
        server.cleanup().await;
    }
}

async fn doctors_chat(server: &Server) {
    // The operator creates Dr. Alice; Dr. Bob onboards with a single-use registration token.
    operator(
        server,
        reqwest::Method::POST,
        &format!("tenants/{}/users", server.server_name),
        json!({"localpart": "alice", "password": "secret-pw"}),
    )
    .await;
    let token = server.registration_token().await;
    let bob = client(server, None).await;
    register_with_token(&bob, "bob", &token).await;
    let second = client(server, None).await;
    let mut req = register::v3::Request::new();
    req.username = Some("mallory".into());
    req.password = Some("pw".into());
    req.auth = Some(AuthData::RegistrationToken(uiaa::RegistrationToken::new(
        token.clone(),
    )));
    assert!(
        second.matrix_auth().register(req).await.is_err(),
        "a registration token works once"
    );

    let alice = client(server, None).await;
    alice
        .matrix_auth()
        .login_username("alice", "secret-pw")
        .initial_device_display_name("Praxis PC")
        .send()
        .await
        .unwrap();
    let alice_id = alice.user_id().unwrap().to_owned();
    let bob_id = bob.user_id().unwrap().to_owned();
    assert_eq!(alice.whoami().await.unwrap().user_id, alice_id);

    // Alice creates a room and invites Bob, who sees the invite and joins.
    let mut create = create_room::v3::Request::new();
    create.name = Some("Konsil Kardiologie".into());
    create.invite = vec![bob_id.clone()];
    let room = alice.create_room(create).await.unwrap();
    let room_id = room.room_id().to_owned();
    bob.sync_once(SyncSettings::default()).await.unwrap();
    assert!(
        bob.get_room(&room_id)
            .is_some_and(|r| r.state() == matrix_sdk::RoomState::Invited)
    );
    bob.join_room_by_id(&room_id).await.unwrap();
    let response = bob.sync_once(SyncSettings::default()).await.unwrap();
    let bob_room = bob.get_room(&room_id).unwrap();
    assert_eq!(bob_room.state(), matrix_sdk::RoomState::Joined);
    assert_eq!(bob_room.name().as_deref(), Some("Konsil Kardiologie"));

    // A message wakes Bob's long-polling sync.
    let since = response.next_batch;
    let waiting = {
        let bob = bob.clone();
        tokio::spawn(async move {
            bob.sync_once(
                SyncSettings::default()
                    .token(since)
                    .timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sent_at = Instant::now();
    let first = room
        .send(RoomMessageEventContent::text_plain("Befund liegt vor"))
        .await
        .unwrap()
        .response
        .event_id;
    let woke = waiting.await.unwrap();
    assert!(
        sent_at.elapsed() < Duration::from_secs(5),
        "long-poll not woken by the message"
    );
    let timeline = &woke.rooms.joined[&room_id].timeline.events;
    assert_eq!(text_bodies(timeline), vec!["Befund liegt vor"]);

    // Bob replies and reacts; both are relations of Alice's message.
    let mut reply = RoomMessageEventContent::text_plain("Danke, schaue ich mir an");
    reply.relates_to = Some(Relation::Reply(Reply::new(InReplyTo::new(first.clone()))));
    let reply_id = bob_room.send(reply).await.unwrap().response.event_id;
    bob_room
        .send(ReactionEventContent::new(Annotation::new(
            first.clone(),
            "👍".into(),
        )))
        .await
        .unwrap();
    let relations = room
        .relations(first.clone(), RelationsOptions::default())
        .await
        .unwrap();
    let ids: Vec<_> = relations
        .chunk
        .iter()
        .filter_map(|e| e.event_id())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&reply_id));

    // Alice redacts her message; Bob sees it redacted.
    room.redact(&first, Some("falscher Patient"), None)
        .await
        .unwrap();
    let redacted = bob_room.event(&first, None).await.unwrap();
    let raw = redacted.raw().json().get().to_owned();
    assert!(
        !raw.contains("Befund liegt vor"),
        "redacted content still served: {raw}"
    );
    assert!(raw.contains("redacted_because"));

    // Pagination: 25 more messages, read back in pages of 7.
    for i in 0..25 {
        room.send(RoomMessageEventContent::text_plain(format!("Wert {i}")))
            .await
            .unwrap();
    }
    let mut from: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut options = MessagesOptions::backward();
        options.limit = UInt::from(7u32);
        options.from = from.take();
        let page = bob_room.messages(options).await.unwrap();
        seen.extend(text_bodies(&page.chunk));
        match page.end {
            Some(end) => from = Some(end),
            None => break,
        }
    }
    let mut expected: Vec<String> = (0..25).rev().map(|i| format!("Wert {i}")).collect();
    expected.push("Danke, schaue ich mir an".into());
    assert_eq!(seen, expected);

    // Devices: a second login, rename, delete with the password.
    let alice2 = client(server, None).await;
    alice2
        .matrix_auth()
        .login_username("alice", "secret-pw")
        .send()
        .await
        .unwrap();
    let device2: OwnedDeviceId = alice2.device_id().unwrap().to_owned();
    assert_eq!(alice.devices().await.unwrap().devices.len(), 2);
    alice.rename_device(&device2, "Handy").await.unwrap();
    let err = alice
        .delete_devices(std::slice::from_ref(&device2), None)
        .await
        .unwrap_err();
    let info = err
        .as_uiaa_response()
        .expect("deleting a device needs user-interactive auth");
    let mut pw = uiaa::Password::new(
        uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(alice_id.to_string())),
        "secret-pw".into(),
    );
    pw.session = info.session.clone();
    alice
        .delete_devices(std::slice::from_ref(&device2), Some(AuthData::Password(pw)))
        .await
        .unwrap();
    assert!(
        alice2.whoami().await.is_err(),
        "deleted device's token still works"
    );
    assert_eq!(alice.devices().await.unwrap().devices.len(), 1);

    // A second tenant in the same process sees nothing of the first.
    let other = tim_e2e::unique("org");
    operator(
        server,
        reqwest::Method::PUT,
        &format!("tenants/{other}"),
        json!({}),
    )
    .await;
    let carol = client(server, Some(&other)).await;
    let token = server.registration_token_for(&other).await;
    register_with_token(&carol, "alice", &token).await;
    assert_eq!(carol.user_id().unwrap().server_name().as_str(), other);
    carol.sync_once(SyncSettings::default()).await.unwrap();
    assert!(carol.get_room(&room_id).is_none());
    assert!(carol.joined_rooms().is_empty());
    if server.store == tim_e2e::Store::Postgres {
        tim_homeserver::store::drop_tenant_schema(tim_e2e::PG_URL, &other)
            .await
            .unwrap();
    }
}
