//! Everyday features through the Client-Server API, each on SQLite and PostgreSQL: profiles,
//! typing, receipts, read markers, tags, mark-as-unread, presence.

mod common;

use common::{STORES, TestServer};
use reqwest::Method;
use serde_json::{Value, json};

/// Two users in one room: (alice, bob, room).
async fn pair(server: &TestServer) -> (common::Client, common::Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
        .await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
    (alice, bob, room)
}

/// Syncs until `pred` holds on a response (long-polling), returning the last token too.
async fn sync_until(
    c: &common::Client,
    mut since: Option<String>,
    pred: impl Fn(&Value) -> bool,
) -> (Value, String) {
    for _ in 0..20 {
        let v = c.sync(since.as_deref(), 2000).await;
        let next = v["next_batch"].as_str().unwrap().to_owned();
        if pred(&v) {
            return (v, next);
        }
        since = Some(next);
    }
    panic!("condition not reached");
}

fn ephemeral<'a>(v: &'a Value, room: &str, kind: &str) -> Option<&'a Value> {
    v["rooms"]["join"][room]["ephemeral"]["events"]
        .as_array()?
        .iter()
        .find(|e| e["type"] == kind)
}

#[tokio::test]
async fn profiles_on_both_stores() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| c.displayname_admin_only = false).await;
        let (alice, bob, room) = pair(&server).await;
        let a = alice.user_id.clone();

        // A-ROOM-13: look-ups need a token.
        let anon = server.client();
        anon.err(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{a}"),
            None,
            401,
            "M_MISSING_TOKEN",
        )
        .await;
        anon.err(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{a}/displayname"),
            None,
            401,
            "M_MISSING_TOKEN",
        )
        .await;

        let (_, since) = sync_until(&bob, None, |_| true).await;
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{a}/displayname"),
                Some(json!({"displayname": "Müller, Anna"})),
            )
            .await;
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{a}/avatar_url"),
                Some(json!({"avatar_url": "mxc://example.org/face"})),
            )
            .await;
        let p = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/profile/{a}"),
                None,
            )
            .await;
        assert_eq!(
            p,
            json!({"displayname": "Müller, Anna", "avatar_url": "mxc://example.org/face"})
        );
        let d = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/profile/{a}/displayname"),
                None,
            )
            .await;
        assert_eq!(d, json!({"displayname": "Müller, Anna"}));

        // Propagated into the member event bob sees.
        let members = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/members"),
                None,
            )
            .await;
        let mine = members["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["state_key"] == a.as_str())
            .unwrap()
            .clone();
        assert_eq!(mine["content"]["displayname"], "Müller, Anna");
        assert_eq!(mine["content"]["avatar_url"], "mxc://example.org/face");
        assert_eq!(mine["content"]["membership"], "join");
        let (v, _) = sync_until(&bob, Some(since), |v| {
            v["rooms"]["join"][&room]["timeline"]["events"]
                .as_array()
                .is_some_and(|e| {
                    e.iter().any(|e| {
                        e["type"] == "m.room.member"
                            && e["content"]["avatar_url"] == "mxc://example.org/face"
                    })
                })
        })
        .await;
        assert!(v["rooms"]["join"][&room].is_object());

        // Custom fields (E-06) and deletion.
        let field = "de.gematik.client_capability.test";
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/unstable/uk.tcpip.msc4133/profile/{a}/{field}"),
                Some(json!({field: {"v": 1}})),
            )
            .await;
        let f = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/unstable/uk.tcpip.msc4133/profile/{a}/{field}"),
                None,
            )
            .await;
        assert_eq!(f, json!({field: {"v": 1}}));
        alice
            .ok(
                Method::DELETE,
                &format!("/_matrix/client/unstable/uk.tcpip.msc4133/profile/{a}/{field}"),
                None,
            )
            .await;
        bob.err(
            Method::GET,
            &format!("/_matrix/client/unstable/uk.tcpip.msc4133/profile/{a}/{field}"),
            None,
            404,
            "M_NOT_FOUND",
        )
        .await;

        // Bad input and other people's profiles.
        alice
            .err(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{a}/avatar_url"),
                Some(json!({"avatar_url": "https://x"})),
                400,
                "M_BAD_JSON",
            )
            .await;
        alice
            .err(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{a}/displayname"),
                Some(json!({"displayname": "x".repeat(300)})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        bob.err(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{a}/displayname"),
            Some(json!({"displayname": "evil"})),
            403,
            "M_FORBIDDEN",
        )
        .await;
        let ghost = format!("@ghost:{}", server.server_name);
        bob.err(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{ghost}"),
            None,
            404,
            "M_NOT_FOUND",
        )
        .await;

        // A new join carries the profile.
        let carol = server.register("carol").await;
        let c = carol.user_id.clone();
        carol
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{c}/displayname"),
                Some(json!({"displayname": "Schmidt, Carl"})),
            )
            .await;
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                Some(json!({"user_id": c})),
            )
            .await;
        carol
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(json!({})),
            )
            .await;
        let ev = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{c}"),
                None,
            )
            .await;
        assert_eq!(ev["displayname"], "Schmidt, Carl");
        server.stop().await;
    }
}

#[tokio::test]
async fn displaynames_are_set_by_the_org_admin_by_default() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let a = alice.user_id.clone();
        // B-ADM-02: users may not rename themselves; avatars are theirs.
        alice
            .err(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{a}/displayname"),
                Some(json!({"displayname": "Dr. Who"})),
                403,
                "M_FORBIDDEN",
            )
            .await;
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/profile/{a}/avatar_url"),
                Some(json!({"avatar_url": "mxc://x/y"})),
            )
            .await;
        // The operator/admin path sets names on creation.
        let op = server.operator();
        let (status, v) = op
            .http
            .post(format!("{}/_tim/operator/v1/tenants/{}/users", op.base, server.server_name))
            .bearer_auth("operator-secret")
            .json(&json!({"localpart": "doc", "password": "pw-12345678", "displayname": "Meier, Jana"}))
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        assert!(status.is_success(), "{:?}", v.text().await);
        let doc = format!("@doc:{}", server.server_name);
        let p = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/profile/{doc}"),
                None,
            )
            .await;
        assert_eq!(p["displayname"], "Meier, Jana");
        server.stop().await;
    }
}

#[tokio::test]
async fn typing_and_receipts_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, room) = pair(&server).await;
        let (_, since) = sync_until(&bob, None, |_| true).await;

        // Typing reaches bob's long-poll, then stops.
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
                Some(json!({"typing": true, "timeout": 30000})),
            )
            .await;
        let (v, since) = sync_until(&bob, Some(since), |v| {
            ephemeral(v, &room, "m.typing").is_some()
        })
        .await;
        assert_eq!(
            ephemeral(&v, &room, "m.typing").unwrap()["content"]["user_ids"],
            json!([alice.user_id])
        );
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
                Some(json!({"typing": false})),
            )
            .await;
        let (v, since) = sync_until(&bob, Some(since), |v| {
            ephemeral(v, &room, "m.typing").is_some()
        })
        .await;
        assert_eq!(
            ephemeral(&v, &room, "m.typing").unwrap()["content"]["user_ids"],
            json!([])
        );
        // A timeout ends typing by itself.
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/typing/{}", alice.user_id),
                Some(json!({"typing": true, "timeout": 300})),
            )
            .await;
        let (_, since) = sync_until(&bob, Some(since), |v| {
            ephemeral(v, &room, "m.typing").is_some_and(|e| e["content"]["user_ids"] != json!([]))
        })
        .await;
        let (_, since) = sync_until(&bob, Some(since), |v| {
            ephemeral(v, &room, "m.typing").is_some_and(|e| e["content"]["user_ids"] == json!([]))
        })
        .await;
        // Typing for someone else, or in a room one is not in, is refused.
        alice
            .err(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/typing/{}", bob.user_id),
                Some(json!({"typing": true, "timeout": 1000})),
                403,
                "M_FORBIDDEN",
            )
            .await;
        let other = alice.create_room(json!({})).await;
        bob.err(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{other}/typing/{}", bob.user_id),
            Some(json!({"typing": true, "timeout": 1000})),
            403,
            "M_FORBIDDEN",
        )
        .await;

        // Receipts: public ones reach the other user, private ones do not.
        let e1 = alice.send(&room, "t1", "eins").await;
        let e2 = alice.send(&room, "t2", "zwei").await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{e2}"),
            Some(json!({})),
        )
        .await;
        let (v, _) = sync_until(&alice, None, |v| ephemeral(v, &room, "m.receipt").is_some()).await;
        let r = ephemeral(&v, &room, "m.receipt").unwrap();
        assert!(
            r["content"][&e2]["m.read"][&bob.user_id]["ts"].is_u64(),
            "{r}"
        );
        // An older receipt does not move it back.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{e1}"),
            Some(json!({})),
        )
        .await;
        let v = alice.sync(None, 0).await;
        let r = ephemeral(&v, &room, "m.receipt").unwrap();
        assert!(r["content"].get(&e1).is_none(), "{r}");
        // Private receipts and threaded ones.
        let (_, asince) = sync_until(&alice, None, |_| true).await;
        let e3 = alice.send(&room, "t3", "drei").await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read.private/{e3}"),
            Some(json!({})),
        )
        .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{e3}"),
            Some(json!({"thread_id": "main"})),
        )
        .await;
        let (v, _) = sync_until(&bob, Some(since.clone()), |v| {
            ephemeral(v, &room, "m.receipt")
                .is_some_and(|r| r["content"][&e3]["m.read.private"].is_object())
        })
        .await;
        assert_eq!(
            ephemeral(&v, &room, "m.receipt").unwrap()["content"][&e3]["m.read"][&bob.user_id]["thread_id"],
            "main"
        );
        let (v, _) = sync_until(&alice, Some(asince), |v| {
            ephemeral(v, &room, "m.receipt").is_some()
        })
        .await;
        assert!(
            ephemeral(&v, &room, "m.receipt").unwrap()["content"][&e3]
                .get("m.read.private")
                .is_none()
        );

        // Someone joining later sees the receipts already there in the room's first sync.
        let carol = server.register("carol").await;
        let (_, csince) = sync_until(&carol, None, |_| true).await;
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                Some(json!({"user_id": carol.user_id})),
            )
            .await;
        carol
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/join"),
                Some(json!({})),
            )
            .await;
        let (v, _) = sync_until(&carol, Some(csince), |v| {
            v["rooms"]["join"][&room].is_object()
        })
        .await;
        let r = ephemeral(&v, &room, "m.receipt").expect("existing receipts");
        assert!(r["content"][&e3]["m.read"][&bob.user_id].is_object(), "{r}");

        // Read marker: m.fully_read as room account data.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/read_markers"),
            Some(json!({"m.fully_read": e3, "m.read": e3})),
        )
        .await;
        let fr = bob
            .ok(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/user/{}/rooms/{room}/account_data/m.fully_read",
                    bob.user_id
                ),
                None,
            )
            .await;
        assert_eq!(fr["event_id"], e3.as_str());

        // Bad input.
        bob.err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/$nope"),
            Some(json!({})),
            404,
            "M_NOT_FOUND",
        )
        .await;
        bob.err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/receipt/m.bogus/{e3}"),
            Some(json!({})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        server.stop().await;
    }
}

#[tokio::test]
async fn tags_and_marked_unread_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, _bob, room) = pair(&server).await;
        let a = alice.user_id.clone();
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/user/{a}/rooms/{room}/tags/m.favourite"),
                Some(json!({"order": 0.5})),
            )
            .await;
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/user/{a}/rooms/{room}/tags/u.station"),
                Some(json!({})),
            )
            .await;
        let t = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/user/{a}/rooms/{room}/tags"),
                None,
            )
            .await;
        assert_eq!(
            t,
            json!({"tags": {"m.favourite": {"order": 0.5}, "u.station": {}}})
        );
        alice
            .ok(
                Method::DELETE,
                &format!("/_matrix/client/v3/user/{a}/rooms/{room}/tags/u.station"),
                None,
            )
            .await;
        let v = alice.sync(None, 0).await;
        let tags = v["rooms"]["join"][&room]["account_data"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["type"] == "m.tag")
            .unwrap()
            .clone();
        assert_eq!(
            tags["content"],
            json!({"tags": {"m.favourite": {"order": 0.5}}})
        );

        // Mark as unread, stable and unstable names.
        for kind in ["m.marked_unread", "com.famedly.marked_unread"] {
            alice
                .ok(
                    Method::PUT,
                    &format!("/_matrix/client/v3/user/{a}/rooms/{room}/account_data/{kind}"),
                    Some(json!({"unread": true})),
                )
                .await;
            let v = alice.sync(None, 0).await;
            let ev = v["rooms"]["join"][&room]["account_data"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["type"] == kind)
                .unwrap()
                .clone();
            assert_eq!(ev["content"]["unread"], true);
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn presence_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, _room) = pair(&server).await;
        let a = alice.user_id.clone();
        // Alice syncs: she is online for bob.
        let (_, _) = sync_until(&alice, None, |_| true).await;
        let (v, since) = sync_until(&bob, None, |v| {
            v["presence"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["sender"] == a.as_str()))
        })
        .await;
        let ev = v["presence"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["sender"] == a.as_str())
            .unwrap()
            .clone();
        assert_eq!(ev["content"]["presence"], "online");
        let p = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/presence/{a}/status"),
                None,
            )
            .await;
        assert_eq!(p["presence"], "online");
        assert!(p["last_active_ago"].is_u64());

        // A status message, then "unavailable" set explicitly.
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/presence/{a}/status"),
                Some(json!({"presence": "unavailable", "status_msg": "In Sprechstunde"})),
            )
            .await;
        let (v, since) = sync_until(&bob, Some(since), |v| {
            v["presence"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["content"]["presence"] == "unavailable"))
        })
        .await;
        let ev = v["presence"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["sender"] == a.as_str())
            .unwrap()
            .clone();
        assert_eq!(ev["content"]["status_msg"], "In Sprechstunde");

        // Hidden: bob sees her offline, without status.
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/user/{a}/account_data/de.tim.presence"),
                Some(json!({"visible": false})),
            )
            .await;
        let (_, _) = sync_until(&bob, Some(since), |v| {
            v["presence"]["events"]
                .as_array()
                .is_some_and(|e| e.iter().any(|e| e["content"]["presence"] == "offline"))
        })
        .await;
        let p = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/presence/{a}/status"),
                None,
            )
            .await;
        assert_eq!(p["presence"], "offline");
        assert!(
            p.get("status_msg").is_none() && p.get("last_active_ago").is_none(),
            "{p}"
        );

        // Strangers see nothing; bad input is refused.
        let eve = server.register("eve").await;
        eve.err(
            Method::GET,
            &format!("/_matrix/client/v3/presence/{a}/status"),
            None,
            403,
            "M_FORBIDDEN",
        )
        .await;
        eve.err(
            Method::PUT,
            &format!("/_matrix/client/v3/presence/{a}/status"),
            Some(json!({"presence": "online"})),
            403,
            "M_FORBIDDEN",
        )
        .await;
        eve.err(
            Method::PUT,
            &format!("/_matrix/client/v3/presence/{}/status", eve.user_id),
            Some(json!({"presence": "online", "status_msg": "x".repeat(2000)})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        server.stop().await;
    }
}
