//! Push end to end, on the real binaries: a doctor's browser subscription registered as a
//! pusher (Sygnal's webpush layout) through matrix-sdk, the homeserver's push sender, the
//! `tim-push-gateway` process, and the Web Push service double that checks VAPID and decrypts.
//! A message and a mention each become exactly one encrypted, content-free push; a push service
//! outage is retried without duplicates; a gone subscription removes the pusher.

use std::time::Duration;

use matrix_sdk::{
    Client,
    ruma::{
        OwnedEventId,
        api::client::{
            push::{PusherIds, PusherInit, PusherKind, get_pushers},
            room::create_room,
        },
        events::{Mentions, room::message::RoomMessageEventContent},
        push::{HttpPusherData, PushFormat},
    },
};
use tim_e2e::{
    PushGateway, STORES, Server,
    push_service::{BrowserSubscription, PushService, Received},
};

mod common;
use common::{register, sync_once};

const APP_ID: &str = "de.tim.web";

/// What the web app does with `PushSubscription.toJSON()`: a pusher whose pushkey is the
/// `p256dh` key and whose data carries the endpoint and auth secret.
async fn register_pusher(client: &Client, sub: &BrowserSubscription, gateway: &PushGateway) {
    let mut data = HttpPusherData::new(gateway.notify_url());
    data.format = Some(PushFormat::EventIdOnly);
    data.data
        .insert("endpoint".into(), sub.endpoint.clone().into());
    data.data.insert("auth".into(), sub.auth.clone().into());
    let pusher = PusherInit {
        ids: PusherIds::new(sub.p256dh.clone(), APP_ID.into()),
        kind: PusherKind::Http(data),
        app_display_name: "TI-Messenger Web".into(),
        device_display_name: "Chromium".into(),
        profile_tag: None,
        lang: "de".into(),
    };
    client.pusher().set(pusher.into(), false).await.unwrap();
}

fn for_event<'a>(got: &'a [Received], event: &OwnedEventId) -> Vec<&'a Received> {
    got.iter()
        .filter(|r| r.payload["event_id"] == event.as_str())
        .collect()
}

/// Waits for a push of `event` and returns it.
async fn push_of(service: &PushService, event: &OwnedEventId) -> Received {
    for _ in 0..200 {
        let got = service.received();
        if let Some(r) = for_event(&got, event).first() {
            return (*r).clone();
        }
        service
            .wait_for(got.len() + 1, Duration::from_millis(100))
            .await;
    }
    panic!("no push for {event}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_to_an_offline_doctor_become_content_free_web_pushes() {
    for store in STORES {
        let service = PushService::start().await;
        let gateway = PushGateway::start(&[]);
        let server = Server::start_with(store, &[("TIM_PUSH__ALLOW_PRIVATE_ADDRESSES", "true")]);
        let http = reqwest::Client::new();
        let published: serde_json::Value = http
            .get(format!(
                "{}/_tim/push/v1/vapid_public_key",
                gateway.base_url()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let vapid_key = published["vapid_public_key"].as_str().unwrap().to_owned();
        assert_eq!(published["app_ids"], serde_json::json!([APP_ID]));

        let alice = register(&server, "alice").await;
        let bob = register(&server, "bob").await;
        let bob_id = bob.user_id().unwrap().to_owned();
        let subscription = service.subscribe();
        register_pusher(&bob, &subscription, &gateway).await;

        let mut request = create_room::v3::Request::new();
        request.invite = vec![bob_id.clone()];
        let room = alice.create_room(request).await.unwrap();
        sync_once(&bob).await;
        bob.join_room_by_id(room.room_id()).await.unwrap();
        sync_once(&alice).await;
        // From here Bob's client is closed: he only learns of messages by push.

        let message = room
            .send(RoomMessageEventContent::text_plain(
                "Befund Herr K.: geheim",
            ))
            .await
            .unwrap()
            .response
            .event_id;
        let push = push_of(&service, &message).await;
        assert_eq!(push.subscription, subscription.id);
        assert_eq!(push.vapid_key, vapid_key, "signed with the published key");
        let keys: Vec<&String> = push.payload.as_object().unwrap().keys().collect();
        assert!(
            keys.iter()
                .all(|k| ["room_id", "event_id", "unread", "type"].contains(&k.as_str())),
            "only ids and counts: {}",
            push.payload
        );
        assert_eq!(push.payload["room_id"], room.room_id().as_str());
        assert!(push.payload["unread"].as_u64().unwrap() >= 1);
        let text = push.payload.to_string();
        assert!(!text.contains("geheim") && !text.contains("Befund") && !text.contains("alice"));
        assert_eq!(push.ttl, "86400");
        assert_eq!(push.urgency.as_deref(), Some("normal"));
        assert!(push.topic.as_deref().is_some_and(|t| t.len() <= 32));

        // A mention is urgent.
        let mention = room
            .send(
                RoomMessageEventContent::text_plain("Bob, bitte ansehen")
                    .add_mentions(Mentions::with_user_ids([bob_id.clone()])),
            )
            .await
            .unwrap()
            .response
            .event_id;
        let push = push_of(&service, &mention).await;
        assert_eq!(push.urgency.as_deref(), Some("high"));
        assert!(!push.payload.to_string().contains("ansehen"));

        // The push service is down for three requests: the gateway retries (honouring its
        // Retry-After) and the push arrives once.
        let before = service.requests();
        service.go_down_for(3);
        let during_outage = room
            .send(RoomMessageEventContent::text_plain("Rückruf erbeten"))
            .await
            .unwrap()
            .response
            .event_id;
        push_of(&service, &during_outage).await;
        assert!(service.requests() - before >= 4, "retried");

        // Bob revokes the browser's permission: the push service answers 410, the gateway
        // rejects the pushkey, the homeserver deletes the pusher.
        service.set_gone(&subscription);
        let after_gone = room
            .send(RoomMessageEventContent::text_plain("noch da?"))
            .await
            .unwrap()
            .response
            .event_id;
        let mut pushers = 1;
        for _ in 0..100 {
            pushers = bob
                .send(get_pushers::v3::Request::new())
                .await
                .unwrap()
                .pushers
                .len();
            if pushers == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(pushers, 0, "the gone subscription's pusher was removed");

        // Settled: every event was pushed exactly once, the gone one not at all.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = service.received();
        for event in [&message, &mention, &during_outage] {
            assert_eq!(for_event(&got, event).len(), 1, "one push for {event}");
        }
        assert!(for_event(&got, &after_gone).is_empty());
        let metrics = http
            .get(format!("{}/metrics", gateway.base_url()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("tim_push_rejected_pushkeys_total 1\n"),
            "{metrics}"
        );
        assert!(metrics.contains("tim_push_retries_total 3\n"), "{metrics}");
        let log = gateway.log();
        assert!(!log.contains("geheim") && !log.contains(&subscription.auth));
        server.cleanup().await;
    }
}
