//! Federation between `tim-homeserver` processes over loopback TLS (issue 15): three servers
//! (two tenants of one process, one separate process) with `matrix-sdk` clients — an
//! end-to-end encrypted chat across them, an attachment, typing, receipts, presence, a late
//! joiner reading history, a new device getting keys — and faults: the receiving server down
//! while messages are sent, and the sending server killed with `kill -9` while its queue for
//! the other is full.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use matrix_sdk::{
    Client,
    attachment::AttachmentConfig,
    media::{MediaFormat, MediaRequestParameters},
    ruma::{
        OwnedUserId,
        api::client::receipt::create_receipt::v3::ReceiptType as SendReceiptType,
        events::{
            AnySyncMessageLikeEvent, AnySyncTimelineEvent,
            receipt::{ReceiptThread, ReceiptType},
            room::message::MessageType,
            typing::SyncTypingEvent,
        },
    },
};
use reqwest::Method;
use serde_json::json;
use tim_e2e::{Store, federation::Net, user::User};

mod common;
use common::{
    chat_both_ways, encrypted_room, login_url, send, sync_all, sync_once, wait_decrypted,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_other_server_is_down_or_we_crash_arrive_once_and_in_order() {
    let net = Net::new(&[1, 1]);
    let mut a = net.homeserver(0, Store::Postgres, &[]).await;
    let mut b = net.homeserver(1, Store::Sqlite, &[]).await;
    let alice = User::register(&a.base_url(), "alice").await;
    let bob = User::register(&b.base_url(), "bob").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.invite(&room, &bob.user_id).await;
    assert_eq!(bob.sync_invite(WAIT).await, room);
    bob.join(&room, &[net.name(0)]).await;
    alice.send_text(&room, "hello").await;
    bob.sync_texts(&room, &["hello"], WAIT).await;

    // B is down while A sends 100 messages; B comes back and gets each once, in order.
    b.kill9();
    let first: Vec<String> = (0..100).map(|i| format!("down {i}")).collect();
    for text in &first {
        alice.send_text(&room, text).await;
    }
    b.start_again();
    let back = Instant::now();
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let seen = bob.sync_texts(&room, &refs, WAIT).await;
    assert_eq!(seen, first, "B:\n{}", b.log());
    eprintln!(
        "100 messages arrived {:?} after B came back",
        back.elapsed()
    );

    // B is down again and A is killed with its queue for B full; after both restart, A's
    // queue (durable, written with each event) drains: each message once, in order.
    b.kill9();
    let second: Vec<String> = (0..100).map(|i| format!("crash {i}")).collect();
    for text in &second {
        alice.send_text(&room, text).await;
    }
    a.kill9();
    b.start_again();
    a.start_again();
    let refs: Vec<&str> = second.iter().map(String::as_str).collect();
    let seen = bob.sync_texts(&room, &refs, WAIT).await;
    assert_eq!(seen, second, "A:\n{}", a.log());
    // And the room goes on both ways.
    bob.send_text(&room, "alles angekommen").await;
    alice.sync_texts(&room, &["alles angekommen"], WAIT).await;
    a.cleanup().await;
    b.cleanup().await;
}

/// Syncs `c` until `done` holds (within `WAIT`).
async fn sync_until_sdk(c: &Client, what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not seen");
        sync_once(c).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctors_on_three_servers_chat_encrypted_with_matrix_sdk() {
    // Process 0 hosts A and C (two tenants), process 1 is B.
    let net = Net::new(&[2, 1]);
    let a_proc = net.homeserver(0, Store::Sqlite, &[]).await;
    let b_proc = net.homeserver(1, Store::Postgres, &[]).await;
    let (a, c, b) = (
        net.processes[0].0[0].clone(),
        net.processes[0].0[1].clone(),
        net.name(1).to_owned(),
    );
    let (pa, pb) = (a_proc.port, b_proc.port);
    let alice_raw = User::register_at(&a, pa, "alice").await;
    let bob_raw = User::register_at(&b, pb, "bob").await;
    let carol_raw = User::register_at(&c, pa, "carol").await;
    let alice = login_url(&format!("http://{a}:{pa}"), "alice").await;
    let bob = login_url(&format!("http://{b}:{pb}"), "bob").await;
    sync_all(&[&alice, &bob]).await;

    // Alice on A opens an encrypted chat with Bob on B; every message decrypts on the other
    // server.
    let room = encrypted_room(&alice, &bob).await;
    let sent = chat_both_ways(
        (&alice, &bob),
        &room,
        3,
        (
            |i| format!("Überweisung {i}: bitte MRT"),
            |i| format!("Termin {i}: Dienstag 9 Uhr"),
        ),
    )
    .await;

    // An image uploaded on A (encrypted attachment) is shown on B: B fetches it from A.
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(64, 48)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let png = png.into_inner();
    let image_event = alice
        .get_room(&room)
        .unwrap()
        .send_attachment(
            "befund.png",
            &mime::IMAGE_PNG,
            png.clone(),
            AttachmentConfig::new(),
        )
        .await
        .unwrap()
        .event_id;
    let mut source = None;
    let deadline = Instant::now() + WAIT;
    while source.is_none() {
        assert!(Instant::now() < deadline, "the image did not reach B");
        sync_once(&bob).await;
        if let Ok(ev) = bob.get_room(&room).unwrap().event(&image_event, None).await
            && let Ok(AnySyncTimelineEvent::MessageLike(AnySyncMessageLikeEvent::RoomMessage(m))) =
                ev.raw().deserialize()
            && let Some(MessageType::Image(img)) =
                m.as_original().map(|o| o.content.msgtype.clone())
        {
            source = Some(img.source);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let shown = bob
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: source.unwrap(),
                format: MediaFormat::File,
            },
            false,
        )
        .await
        .unwrap();
    assert!(shown == png, "the image on B differs");

    // Typing and read receipts cross the servers.
    let typing: Arc<Mutex<Vec<OwnedUserId>>> = Arc::default();
    let seen = typing.clone();
    alice.add_event_handler(move |ev: SyncTypingEvent| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap() = ev.content.user_ids;
        }
    });
    bob.get_room(&room)
        .unwrap()
        .typing_notice(true)
        .await
        .unwrap();
    let bob_id = bob.user_id().unwrap().to_owned();
    sync_until_sdk(&alice, "Bob typing at A", || {
        typing.lock().unwrap().contains(&bob_id)
    })
    .await;
    let last = sent[4].clone();
    bob.get_room(&room)
        .unwrap()
        .send_single_receipt(
            SendReceiptType::Read,
            ReceiptThread::Unthreaded,
            last.clone(),
        )
        .await
        .unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        sync_once(&alice).await;
        let receipt = alice
            .get_room(&room)
            .unwrap()
            .load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, &bob_id)
            .await
            .unwrap();
        if receipt.map(|(id, _)| id) == Some(last.clone()) {
            break;
        }
        assert!(Instant::now() < deadline, "Bob's receipt not seen at A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Presence: Bob's status reaches Alice.
    bob_raw
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/presence/{}/status", bob_raw.user_id),
            Some(json!({"presence": "online", "status_msg": "Visite"})),
        )
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, p) = alice_raw
            .call(
                Method::GET,
                &format!("/_matrix/client/v3/presence/{}/status", bob_raw.user_id),
                None,
            )
            .await;
        if p["status_msg"] == "Visite" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Bob's presence not seen at A: {p}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A new device of Bob's appears at A and gets the keys of Alice's next message.
    let bob2 = login_url(&format!("http://{b}:{pb}"), "bob").await;
    sync_once(&bob2).await;
    let bob2_device = bob2.device_id().unwrap().to_owned();
    let deadline = Instant::now() + WAIT;
    loop {
        sync_once(&alice).await;
        let devices = alice.encryption().get_user_devices(&bob_id).await.unwrap();
        if devices.get(&bob2_device).is_some() {
            break;
        }
        assert!(Instant::now() < deadline, "Bob's new device not seen at A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let everyone = [&alice, &bob, &bob2];
    sync_all(&everyone).await;
    let event = send(&alice, &room, "Befund für alle Geräte").await;
    assert_eq!(
        wait_decrypted(&everyone, &bob2, &room, &event).await,
        "Befund für alle Geräte"
    );

    // Carol on C (A's process, another tenant: the same federation path) joins later and
    // reads the history from before her join, backfilled from A.
    alice_raw.invite(room.as_str(), &carol_raw.user_id).await;
    assert_eq!(carol_raw.sync_invite(WAIT).await, room.as_str());
    carol_raw.join(room.as_str(), &[&a]).await;
    let mut ids = Vec::new();
    let mut from = String::new();
    loop {
        let page = carol_raw
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=5{from}"),
                None,
            )
            .await;
        let chunk = page["chunk"].as_array().unwrap().clone();
        ids.extend(
            chunk
                .iter()
                .filter_map(|e| e["event_id"].as_str().map(str::to_owned)),
        );
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
            _ => break,
        }
    }
    for event in &sent {
        assert!(
            ids.contains(&event.to_string()),
            "{event} not in C's history"
        );
    }
    a_proc.cleanup_tenants(&[&c]).await;
    a_proc.cleanup().await;
    b_proc.cleanup().await;
}
