//! Push rules, notification counts, `/notifications`, pushers and the push sender against a
//! local push gateway, on both stores.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use common::{STORES, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

/// A push gateway that records notifications and answers as told.
#[derive(Clone, Default)]
struct Gateway {
    received: Arc<Mutex<Vec<Value>>>,
    /// Answers to give, in order (then 200 with no rejections).
    script: Arc<Mutex<Vec<(u16, Value)>>>,
}

impl Gateway {
    async fn start() -> (Self, String) {
        let gw = Gateway::default();
        let app = Router::new()
            .route("/_matrix/push/v1/notify", post(notify))
            .with_state(gw.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/_matrix/push/v1/notify",
            listener.local_addr().unwrap()
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (gw, url)
    }

    fn received(&self) -> Vec<Value> {
        self.received.lock().unwrap().clone()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        for _ in 0..200 {
            if self.received().len() >= n {
                return self.received();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "gateway got {} notifications, wanted {n}",
            self.received().len()
        );
    }
}

async fn notify(State(gw): State<Gateway>, Json(body): Json<Value>) -> (StatusCode, Json<Value>) {
    gw.received.lock().unwrap().push(body);
    let next = {
        let mut s = gw.script.lock().unwrap();
        if s.is_empty() {
            None
        } else {
            Some(s.remove(0))
        }
    };
    match next {
        Some((status, v)) => (StatusCode::from_u16(status).unwrap(), Json(v)),
        None => (StatusCode::OK, Json(json!({"rejected": []}))),
    }
}

async fn pair(server: &TestServer) -> (common::Client, common::Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(
            json!({"preset": "private_chat", "invite": [bob.user_id], "name": "Station 3"}),
        )
        .await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
    (alice, bob, room)
}

fn counts(sync: &Value, room: &str) -> (u64, u64) {
    let c = &sync["rooms"]["join"][room]["unread_notifications"];
    (
        c["notification_count"].as_u64().unwrap(),
        c["highlight_count"].as_u64().unwrap(),
    )
}

#[tokio::test]
async fn push_rules_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let all = alice
            .ok(Method::GET, "/_matrix/client/v3/pushrules/", None)
            .await;
        let overrides = all["global"]["override"].as_array().unwrap();
        assert!(overrides.iter().any(|r| r["rule_id"] == ".m.rule.master"));
        // The first sync carries them too.
        let v = alice.sync(None, 0).await;
        assert!(
            v["account_data"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["type"] == "m.push_rules")
        );

        // A keyword rule: create, read, disable, change actions, delete.
        let rule = "/_matrix/client/v3/pushrules/global/content/dringend";
        alice.ok(Method::PUT, rule, Some(json!({"pattern": "dringend", "actions": ["notify", {"set_tweak": "highlight"}]}))).await;
        let r = alice.ok(Method::GET, rule, None).await;
        assert_eq!(r["pattern"], "dringend");
        alice
            .ok(
                Method::PUT,
                &format!("{rule}/enabled"),
                Some(json!({"enabled": false})),
            )
            .await;
        assert_eq!(
            alice
                .ok(Method::GET, &format!("{rule}/enabled"), None)
                .await["enabled"],
            false
        );
        alice
            .ok(
                Method::PUT,
                &format!("{rule}/actions"),
                Some(json!({"actions": []})),
            )
            .await;
        assert_eq!(
            alice
                .ok(Method::GET, &format!("{rule}/actions"), None)
                .await["actions"],
            json!([])
        );
        let v = alice.sync(None, 0).await;
        let stored = v["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.push_rules")
            .unwrap()
            .clone();
        assert!(
            stored["content"]["global"]["content"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["rule_id"] == "dringend")
        );
        alice.ok(Method::DELETE, rule, None).await;
        alice.err(Method::GET, rule, None, 404, "M_NOT_FOUND").await;
        alice
            .err(Method::DELETE, rule, None, 404, "M_NOT_FOUND")
            .await;
        // Server defaults cannot be deleted, nor shadowed; `m.push_rules` is not plain account data.
        alice
            .err(
                Method::DELETE,
                "/_matrix/client/v3/pushrules/global/override/.m.rule.master",
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;
        alice
            .err(
                Method::PUT,
                "/_matrix/client/v3/pushrules/global/content/.x",
                Some(json!({"pattern": "x", "actions": []})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        alice
            .err(
                Method::PUT,
                "/_matrix/client/v3/pushrules/global/content/y?before=nope",
                Some(json!({"pattern": "y", "actions": []})),
                404,
                "M_NOT_FOUND",
            )
            .await;
        alice
            .err(
                Method::PUT,
                &format!(
                    "/_matrix/client/v3/user/{}/account_data/m.push_rules",
                    alice.user_id
                ),
                Some(json!({})),
                405,
                "M_BAD_JSON",
            )
            .await;
        // Disabling a default rule works.
        alice
            .ok(
                Method::PUT,
                "/_matrix/client/v3/pushrules/global/override/.m.rule.master/enabled",
                Some(json!({"enabled": true})),
            )
            .await;
        server.stop().await;
    }
}

#[tokio::test]
async fn counts_and_notifications_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, room) = pair(&server).await;
        alice.send(&room, "n1", "Guten Morgen").await;
        let e2 = alice.send(&room, "n2", "Visite um 10").await;
        let v = bob.sync(None, 0).await;
        assert_eq!(counts(&v, &room), (2, 0));
        // A mention highlights.
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/n3");
        let mention = alice
            .ok(Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": "bob: bitte", "m.mentions": {"user_ids": [bob.user_id]}})))
            .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let since = v["next_batch"].as_str().unwrap().to_owned();
        let v = bob.sync(Some(&since), 5000).await;
        assert_eq!(counts(&v, &room), (3, 1));
        // The sender's own counts stay zero.
        assert_eq!(counts(&alice.sync(None, 0).await, &room), (0, 0));
        // A new avatar (a member event the server writes for bob) does not read the room.
        let since = v["next_batch"].as_str().unwrap().to_owned();
        bob.ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/avatar_url", bob.user_id),
            Some(json!({"avatar_url": "mxc://x/y"})),
        )
        .await;
        let v = bob.sync(Some(&since), 5000).await;
        assert_eq!(counts(&v, &room), (3, 1));

        let n = bob
            .ok(Method::GET, "/_matrix/client/v3/notifications", None)
            .await;
        let list = n["notifications"].as_array().unwrap();
        // Three messages, and the invite (read: bob joined after it).
        assert_eq!(list.len(), 4);
        assert_eq!(list[0]["event"]["event_id"], mention.as_str());
        assert!(
            list[..3]
                .iter()
                .all(|n| n["read"] == false && n["room_id"] == room.as_str())
        );
        assert_eq!(list[3]["event"]["content"]["membership"], "invite");
        assert_eq!(list[3]["read"], true);
        let h = bob
            .ok(
                Method::GET,
                "/_matrix/client/v3/notifications?only=highlight",
                None,
            )
            .await;
        assert_eq!(h["notifications"].as_array().unwrap().len(), 1);
        let page = bob
            .ok(
                Method::GET,
                "/_matrix/client/v3/notifications?limit=2",
                None,
            )
            .await;
        let token = page["next_token"].as_str().unwrap().to_owned();
        let rest = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/notifications?limit=2&from={token}"),
                None,
            )
            .await;
        assert_eq!(rest["notifications"].as_array().unwrap().len(), 2);
        bob.err(
            Method::GET,
            "/_matrix/client/v3/notifications?from=xyz",
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await;

        // Reading up to the second message leaves the mention unread; reading all clears.
        let since = v["next_batch"].as_str().unwrap().to_owned();
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{e2}"),
            Some(json!({})),
        )
        .await;
        let v = bob.sync(Some(&since), 5000).await;
        assert_eq!(counts(&v, &room), (1, 1));
        let since = v["next_batch"].as_str().unwrap().to_owned();
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{mention}"),
            Some(json!({})),
        )
        .await;
        let v = bob.sync(Some(&since), 5000).await;
        assert_eq!(counts(&v, &room), (0, 0));
        let n = bob
            .ok(Method::GET, "/_matrix/client/v3/notifications", None)
            .await;
        assert!(
            n["notifications"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["read"] == true)
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn pushers_cannot_reach_internal_addresses() {
    let server = TestServer::start_with(STORES[0], |c| {
        c.push.gateway_url_prefixes = vec!["https://push.example.org/".into()];
    })
    .await;
    let bob = server.register("bob").await;
    let pusher = |url: &str| {
        json!({
            "kind": "http", "app_id": "de.tim.web", "pushkey": "k", "app_display_name": "a",
            "device_display_name": "d", "lang": "de", "data": {"url": url}
        })
    };
    for url in [
        "http://127.0.0.1:8080/_matrix/push/v1/notify",
        "https://push.example.org.evil.com/_matrix/push/v1/notify",
        "http://push.example.org/_matrix/push/v1/notify",
    ] {
        let (status, _) = bob
            .raw(
                Method::POST,
                "/_matrix/client/v3/pushers/set",
                Some(pusher(url)),
            )
            .await;
        assert_eq!(status, 400, "{url} was accepted");
    }
    server.stop().await;
    // Without an allow-list, internal addresses are still refused.
    let server = TestServer::start(STORES[0]).await;
    let bob = server.register("bob").await;
    for url in [
        "http://127.0.0.1:8080/_matrix/push/v1/notify",
        "http://[::1]:8080/_matrix/push/v1/notify",
        "http://10.1.2.3/_matrix/push/v1/notify",
        "http://169.254.169.254/_matrix/push/v1/notify",
        "http://localhost/_matrix/push/v1/notify",
    ] {
        let (status, _) = bob
            .raw(
                Method::POST,
                "/_matrix/client/v3/pushers/set",
                Some(pusher(url)),
            )
            .await;
        assert_eq!(status, 400, "{url} was accepted");
    }
    server.stop().await;
}

#[tokio::test]
async fn pushers_and_the_push_sender_on_both_stores() {
    for store in STORES {
        // The test gateway listens on loopback.
        let server = TestServer::start_with(store, |c| c.push.allow_private_addresses = true).await;
        let (gw, url) = Gateway::start().await;
        let (alice, bob, room) = pair(&server).await;
        let pusher = json!({
            "kind": "http", "app_id": "de.tim.web", "pushkey": "bobs-browser",
            "app_display_name": "TI-M Web", "device_display_name": "Firefox", "lang": "de",
            "data": {"url": url, "format": "event_id_only", "endpoint": "https://push.example/xyz"}
        });
        bob.ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(pusher.clone()),
        )
        .await;
        let listed = bob
            .ok(Method::GET, "/_matrix/client/v3/pushers", None)
            .await;
        assert_eq!(listed["pushers"][0]["pushkey"], "bobs-browser");
        assert_eq!(listed["pushers"][0]["data"]["url"], url.as_str());

        // A mention: exactly one content-free push.
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/p1");
        let event_id = alice
            .ok(Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": "Befund für bob: geheim", "m.mentions": {"user_ids": [bob.user_id]}})))
            .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let got = gw.wait_for(1).await;
        let n = &got[0]["notification"];
        assert_eq!(n["event_id"], event_id.as_str());
        assert_eq!(n["room_id"], room.as_str());
        assert_eq!(n["counts"]["unread"], 1);
        // `prio` left out means high (the Push Gateway API's default).
        assert!(n.get("prio").is_none(), "{n}");
        assert_eq!(n["devices"][0]["pushkey"], "bobs-browser");
        assert_eq!(
            n["devices"][0]["data"]["endpoint"],
            "https://push.example/xyz"
        );
        assert!(n["devices"][0]["data"].get("url").is_none());
        assert_eq!(n["devices"][0]["tweaks"]["highlight"], true);
        let text = got[0].to_string();
        for secret in [
            "geheim",
            "Befund",
            "Station 3",
            "content",
            "sender",
            "sender_display_name",
            "room_name",
        ] {
            assert!(!text.contains(secret), "push leaks {secret}: {text}");
        }

        // The gateway is down twice: retried, then delivered once.
        *gw.script.lock().unwrap() = vec![(500, json!({})), (503, json!({}))];
        alice.send(&room, "p2", "zwei").await;
        let got = gw.wait_for(4).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(gw.received().len(), 4, "{got:?}");
        assert!(
            got[1..]
                .iter()
                .all(|g| g["notification"]["counts"]["unread"] == 2
                    && g["notification"]["prio"] == "low")
        );

        // The gateway rejects the pushkey: the pusher is deleted.
        *gw.script.lock().unwrap() = vec![(200, json!({"rejected": ["bobs-browser"]}))];
        alice.send(&room, "p3", "drei").await;
        gw.wait_for(5).await;
        for _ in 0..50 {
            let listed = bob
                .ok(Method::GET, "/_matrix/client/v3/pushers", None)
                .await;
            if listed["pushers"].as_array().unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            bob.ok(Method::GET, "/_matrix/client/v3/pushers", None)
                .await["pushers"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        alice.send(&room, "p4", "vier").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(gw.received().len(), 5, "no pushes without a pusher");

        // Bad pushers.
        let mut bad = pusher.clone();
        bad["data"]["url"] = json!("ftp://x/_matrix/push/v1/notify");
        bob.err(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(bad.clone()),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bad["data"]["url"] = json!("http://127.0.0.1:1/somewhere");
        bob.err(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(bad.clone()),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bad["kind"] = json!("email");
        bob.err(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(bad),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        // Deleting with kind null.
        bob.ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(pusher.clone()),
        )
        .await;
        bob.ok(
            Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(json!({"kind": null, "app_id": "de.tim.web", "pushkey": "bobs-browser"})),
        )
        .await;
        assert!(
            bob.ok(Method::GET, "/_matrix/client/v3/pushers", None)
                .await["pushers"]
                .as_array()
                .unwrap()
                .is_empty()
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_signed_out_device_loses_its_pushers() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| c.push.allow_private_addresses = true).await;
        let carol = server.register("carol").await;
        let pusher = json!({
            "kind": "http", "app_id": "de.tim.web", "pushkey": "carols-phone", "app_display_name": "a",
            "device_display_name": "d", "lang": "de",
            "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify"}
        });
        carol
            .ok(Method::POST, "/_matrix/client/v3/pushers/set", Some(pusher))
            .await;
        let hs = server.hs();
        assert_eq!(
            hs.stores.push.pushers(&carol.user_id).await.unwrap().len(),
            1
        );
        carol
            .ok(Method::POST, "/_matrix/client/v3/logout", Some(json!({})))
            .await;
        assert!(
            hs.stores
                .push
                .pushers(&carol.user_id)
                .await
                .unwrap()
                .is_empty()
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn the_push_badge_agrees_with_the_exact_count_within_its_window() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, room) = pair(&server).await;
        // A second shared room without anything unread.
        let other = alice
            .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
            .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{other}/join"),
            Some(json!({})),
        )
        .await;
        let hs = server.hs();
        let rooms = vec![room.clone(), other.clone()];
        let exact = || async {
            let counts = hs
                .unread
                .counts(&bob.user_id, &rooms, hs.stream.visible())
                .await
                .unwrap();
            counts.values().map(|(n, _)| n).sum::<i64>()
        };
        for i in 0..5 {
            alice.send(&room, &format!("b{i}"), "Befund").await;
        }
        let badge = |per_room| hs.stores.push.unread_badge(&bob.user_id, &rooms, per_room);
        assert_eq!(badge(100).await.unwrap(), 5);
        assert_eq!(badge(100).await.unwrap(), exact().await);
        // Only the newest events of a room are looked at.
        assert_eq!(badge(3).await.unwrap(), 3);
        // Bob writes: what came before counts as read; then a receipt reads the rest.
        bob.send(&room, "own", "Danke").await;
        let last = alice.send(&room, "b5", "Noch einer").await;
        assert_eq!(badge(100).await.unwrap(), 1);
        assert_eq!(exact().await, 1);
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{last}"),
            Some(json!({})),
        )
        .await;
        assert_eq!(badge(100).await.unwrap(), 0);
        assert_eq!(badge(100).await.unwrap(), exact().await);
    }
}

/// Counts carried on from sync to sync agree with counting afresh after every step: new
/// messages, a mention, the user's own message, a receipt, and a receipt moved back.
#[tokio::test]
async fn counts_carried_on_between_syncs_agree_with_counting_afresh() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, room) = pair(&server).await;
        let hs = server.hs();
        let afresh = || async {
            let counter = tim_homeserver::push::unread::UnreadCounts::new(hs.stores.push.clone());
            let counts = counter
                .counts(
                    &bob.user_id,
                    std::slice::from_ref(&room),
                    hs.stream.visible(),
                )
                .await
                .unwrap();
            let (n, h) = counts.get(&room).copied().unwrap_or((0, 0));
            (n as u64, h as u64)
        };
        let mut v = bob.sync(None, 0).await;
        let mut step = async |expected: (u64, u64)| {
            let since = v["next_batch"].as_str().unwrap().to_owned();
            v = bob.sync(Some(&since), 5000).await;
            assert_eq!(counts(&v, &room), expected);
            assert_eq!(afresh().await, expected);
        };
        alice.send(&room, "a1", "eins").await;
        alice.send(&room, "a2", "zwei").await;
        step((2, 0)).await;
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/a3");
        alice
            .ok(Method::PUT, &path, Some(json!({"msgtype": "m.text", "body": "bob?", "m.mentions": {"user_ids": [bob.user_id]}})))
            .await;
        step((3, 1)).await;
        let a4 = alice.send(&room, "a4", "vier").await;
        step((4, 1)).await;
        // Bob answers: what came before is read; what follows counts again.
        bob.send(&room, "b1", "gelesen").await;
        alice.send(&room, "a5", "fünf").await;
        step((1, 0)).await;
        alice.send(&room, "a6", "sechs").await;
        step((2, 0)).await;
        // A receipt on a message before bob's answer leaves the answer's reset in force.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{a4}"),
            Some(json!({})),
        )
        .await;
        alice.send(&room, "a7", "sieben").await;
        step((3, 0)).await;
        let a8 = alice.send(&room, "a8", "acht").await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{a8}"),
            Some(json!({})),
        )
        .await;
        step((0, 0)).await;
        alice.send(&room, "a9", "neun").await;
        step((1, 0)).await;
        server.stop().await;
    }
}
