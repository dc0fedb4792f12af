//! Everyday features with a stock client library (`matrix-sdk`) against the real binary, on
//! SQLite and PostgreSQL: a 110 MiB attachment up and down (with the server's peak memory
//! measured), thumbnails, the upload limit, display names in the member list, typing, read
//! receipts, mark-as-unread, a mention counted and pushed (without content) to a local push
//! gateway, a report listed in the admin API, and a server notice to all users.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use matrix_sdk::{
    RoomMemberships,
    media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings},
    ruma::{
        OwnedUserId, UInt,
        api::client::{
            media::create_content, receipt::create_receipt::v3::ReceiptType as SendReceiptType,
            room::create_room,
        },
        events::{
            Mentions,
            receipt::{ReceiptThread, ReceiptType},
            room::{MediaSource, message::RoomMessageEventContent},
            typing::SyncTypingEvent,
        },
    },
};
use tim_e2e::{STORES, Server};

mod common;
use common::{register, sync_once};

const MIB: usize = 1024 * 1024;

/// The server process's peak resident memory (VmHWM) in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A push gateway recording what it receives; its notify URL.
async fn push_gateway() -> (Arc<Mutex<Vec<serde_json::Value>>>, String) {
    let got: Arc<Mutex<Vec<serde_json::Value>>> = Arc::default();
    let store = got.clone();
    let app = axum::Router::new().route(
        "/_matrix/push/v1/notify",
        axum::routing::post(move |axum::Json(body): axum::Json<serde_json::Value>| {
            let store = store.clone();
            async move {
                store.lock().unwrap().push(body);
                axum::Json(serde_json::json!({"rejected": []}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/_matrix/push/v1/notify",
        listener.local_addr().unwrap()
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (got, url)
}

/// An HTTP client with the tenant's admin API token.
async fn admin_client(server: &Server) -> reqwest::Client {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!(
            "{}/_tim/operator/v1/tenants/{}/admin_token",
            server.internal_url(),
            server.server_name
        ))
        .bearer_auth(server.operator_token())
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", v["token"].as_str().unwrap())
            .parse()
            .unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everyday_features_with_matrix_sdk_on_both_stores() {
    for store in STORES {
        let server = Server::start_with(
            store,
            &[
                ("TIM_DISPLAYNAME_ADMIN_ONLY", "false"),
                // The test's push gateway listens on loopback.
                ("TIM_PUSH__ALLOW_PRIVATE_ADDRESSES", "true"),
            ],
        );
        everyday(&server).await;
        server.cleanup().await;
    }
}

async fn everyday(server: &Server) {
    let alice = register(server, "alice").await;
    let bob = register(server, "bob").await;
    let bob_id: OwnedUserId = bob.user_id().unwrap().to_owned();
    let mut req = create_room::v3::Request::new();
    req.invite = vec![bob_id.clone()];
    let room = alice.create_room(req).await.unwrap();
    sync_once(&bob).await;
    bob.join_room_by_id(room.room_id()).await.unwrap();
    sync_once(&alice).await;

    // A 110 MiB attachment: the server streams it, its memory stays small.
    let data: Vec<u8> = (0..110 * MIB).map(|i| (i % 253) as u8).collect();
    let before = peak_rss_kib(server.pid());
    let uploaded = alice
        .media()
        .upload(&mime::APPLICATION_OCTET_STREAM, data.clone(), None)
        .await
        .unwrap();
    let request = MediaRequestParameters {
        source: MediaSource::Plain(uploaded.content_uri.clone()),
        format: MediaFormat::File,
    };
    let downloaded = bob
        .media()
        .get_media_content(&request, false)
        .await
        .unwrap();
    assert!(downloaded == data, "downloaded bytes differ");
    let peak = peak_rss_kib(server.pid());
    println!(
        "server peak RSS: {before} KiB before, {peak} KiB after a 110 MiB upload and download"
    );
    assert!(peak < 60 * 1024, "peak RSS {peak} KiB");
    drop(downloaded);

    // 111 MiB: refused by the server (sent raw; the SDK itself would refuse it first).
    let err = alice
        .send(create_content::v3::Request::new(vec![0u8; 111 * MIB]))
        .await
        .unwrap_err();
    assert_eq!(
        err.client_api_error_kind(),
        Some(&matrix_sdk::ruma::api::error::ErrorKind::TooLarge),
        "{err}"
    );

    // A thumbnail of a photo.
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgb8(1200, 900)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let photo = alice
        .media()
        .upload(&mime::IMAGE_PNG, png.into_inner(), None)
        .await
        .unwrap();
    let thumb = bob
        .media()
        .get_media_content(
            &MediaRequestParameters {
                source: MediaSource::Plain(photo.content_uri),
                format: MediaFormat::Thumbnail(MediaThumbnailSettings::new(
                    UInt::new(96).unwrap(),
                    UInt::new(96).unwrap(),
                )),
            },
            false,
        )
        .await
        .unwrap();
    let t = image::load_from_memory(&thumb).unwrap();
    assert!(
        t.width() <= 800 && t.height() <= 600,
        "{}x{}",
        t.width(),
        t.height()
    );

    // Display name: changed by Alice, seen in Bob's member list.
    alice
        .account()
        .set_display_name(Some("Müller, Anna"))
        .await
        .unwrap();
    sync_once(&bob).await;
    let bob_room = bob.get_room(room.room_id()).unwrap();
    let members = bob_room.members(RoomMemberships::JOIN).await.unwrap();
    let anna = members
        .iter()
        .find(|m| m.user_id() == alice.user_id().unwrap())
        .unwrap();
    assert_eq!(anna.display_name(), Some("Müller, Anna"));

    // Typing, seen by Bob's sync.
    let typing: Arc<Mutex<Vec<OwnedUserId>>> = Arc::default();
    let seen = typing.clone();
    bob.add_event_handler(move |ev: SyncTypingEvent| {
        let seen = seen.clone();
        async move {
            *seen.lock().unwrap() = ev.content.user_ids;
        }
    });
    room.typing_notice(true).await.unwrap();
    for _ in 0..10 {
        sync_once(&bob).await;
        if !typing.lock().unwrap().is_empty() {
            break;
        }
    }
    assert_eq!(
        *typing.lock().unwrap(),
        vec![alice.user_id().unwrap().to_owned()]
    );

    // Read receipt: Bob reads Alice's message, Alice sees it.
    let sent = room
        .send(RoomMessageEventContent::text_plain("Befund ist da"))
        .await
        .unwrap();
    sync_once(&bob).await;
    bob_room
        .send_single_receipt(
            SendReceiptType::Read,
            ReceiptThread::Unthreaded,
            sent.response.event_id.clone(),
        )
        .await
        .unwrap();
    sync_once(&alice).await;
    let receipt = room
        .load_user_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, &bob_id)
        .await
        .unwrap();
    assert_eq!(receipt.map(|(id, _)| id), Some(sent.response.event_id));

    // A mention: highlighted for Bob and pushed to his gateway, without the message.
    let (pushes, gateway) = push_gateway().await;
    let mut data = matrix_sdk::ruma::push::HttpPusherData::new(gateway);
    data.format = Some(matrix_sdk::ruma::push::PushFormat::EventIdOnly);
    let pusher = matrix_sdk::ruma::api::client::push::PusherInit {
        ids: matrix_sdk::ruma::api::client::push::PusherIds::new(
            "bob-browser".into(),
            "de.tim.web".into(),
        ),
        kind: matrix_sdk::ruma::api::client::push::PusherKind::Http(data),
        app_display_name: "TI-M Web".into(),
        device_display_name: "Chromium".into(),
        profile_tag: None,
        lang: "de".into(),
    };
    bob.pusher().set(pusher.into(), false).await.unwrap();
    let mention = room
        .send(
            RoomMessageEventContent::text_plain("Bob, bitte Befund prüfen: geheim")
                .add_mentions(Mentions::with_user_ids([bob_id.clone()])),
        )
        .await
        .unwrap();
    sync_once(&bob).await;
    let counts = bob
        .get_room(room.room_id())
        .unwrap()
        .unread_notification_counts();
    assert!(counts.highlight_count >= 1, "{counts:?}");
    let mut pushed = Vec::new();
    for _ in 0..100 {
        pushed = pushes.lock().unwrap().clone();
        if !pushed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let push = pushed
        .iter()
        .find(|p| p["notification"]["event_id"] == mention.response.event_id.as_str())
        .expect("the mention was pushed");
    assert_eq!(push["notification"]["devices"][0]["pushkey"], "bob-browser");
    let text = push.to_string();
    assert!(
        !text.contains("geheim") && !text.contains("Befund"),
        "{text}"
    );

    // Bob reports the message; the org admin finds it.
    bob_room
        .report_content(
            mention.response.event_id.clone(),
            Some("Datenschutz".into()),
        )
        .await
        .unwrap();
    let admin = admin_client(server).await;
    let reports: serde_json::Value = admin
        .get(format!("{}/_tim/admin/v1/reports", server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let report = &reports["reports"][0];
    assert_eq!(report["event_id"], mention.response.event_id.as_str());
    assert_eq!(report["reporter"], bob_id.as_str());
    assert_eq!(report["reason"], "Datenschutz");

    // A server notice to all users arrives in each one's notices room.
    let resp = admin
        .post(format!(
            "{}/_tim/admin/v1/server_notices",
            server.base_url()
        ))
        .json(&serde_json::json!({"body": "Wartung heute ab 22 Uhr"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    for client in [&alice, &bob] {
        let mut found = false;
        for _ in 0..50 {
            sync_once(client).await;
            for invited in client.invited_rooms() {
                invited.join().await.unwrap();
            }
            for joined in client.joined_rooms() {
                let msgs = joined
                    .messages(matrix_sdk::room::MessagesOptions::backward())
                    .await
                    .unwrap();
                found |= msgs.chunk.iter().any(|e| {
                    let v: serde_json::Value = e.raw().deserialize_as().unwrap();
                    v["content"]["msgtype"] == "m.server_notice"
                        && v["content"]["body"] == "Wartung heute ab 22 Uhr"
                });
            }
            if found {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            found,
            "notice not received by {}",
            client.user_id().unwrap()
        );
    }

    // Mark as unread and back.
    bob_room.set_unread_flag(true).await.unwrap();
    sync_once(&bob).await;
    assert!(bob.get_room(room.room_id()).unwrap().is_marked_unread());
    bob_room.set_unread_flag(false).await.unwrap();
    sync_once(&bob).await;
    assert!(!bob.get_room(room.room_id()).unwrap().is_marked_unread());
}
