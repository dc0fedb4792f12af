//! Login, rooms, messages, sync, pagination, redaction and relations through the HTTP API.

mod common;

use common::{STORES, TestServer, bodies};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn chat_flow_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        chat_flow(&server).await;
        server.stop().await;
    }
}

async fn chat_flow(server: &TestServer) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let who = alice
        .ok(Method::GET, "/_matrix/client/v3/account/whoami", None)
        .await;
    assert_eq!(who["user_id"], alice.user_id);

    let room = alice
        .create_room(json!({"name": "Station 3", "invite": [bob.user_id], "is_direct": true}))
        .await;
    let invited = bob.sync(None, 0).await;
    assert!(
        invited["rooms"]["invite"][&room]["invite_state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name")
    );
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/join/{room}"),
        Some(json!({})),
    )
    .await;

    // Sending is idempotent per transaction id.
    let e1 = alice.send(&room, "txn1", "hello bob").await;
    assert_eq!(alice.send(&room, "txn1", "hello bob").await, e1);

    let first = bob.sync(None, 0).await;
    assert_eq!(bodies(&first, &room), vec!["hello bob"]);
    let since = first["next_batch"].as_str().unwrap().to_owned();

    // A long-polling sync is woken by the next message.
    let waiting = {
        let bob = bob.clone();
        let since = since.clone();
        tokio::spawn(async move { bob.sync(Some(&since), 10_000).await })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    alice.send(&room, "txn2", "are you there?").await;
    let woke = waiting.await.unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "long-poll not woken"
    );
    assert_eq!(bodies(&woke, &room), vec!["are you there?"]);
    let since = woke["next_batch"].as_str().unwrap().to_owned();

    // An incremental sync with nothing new returns after its timeout with no rooms.
    let empty = bob.sync(Some(&since), 50).await;
    assert!(empty["rooms"]["join"].get(&room).is_none());

    // Reply, reaction, edit are relations.
    let reply = bob
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r1"),
            Some(json!({"msgtype": "m.text", "body": "yes", "m.relates_to": {"m.in_reply_to": {"event_id": e1}}})),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.reaction/r2"),
        Some(json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": e1, "key": "👍"}})),
    )
    .await;
    let rel = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{room}/relations/{e1}"),
            None,
        )
        .await;
    let chunk = rel["chunk"].as_array().unwrap();
    assert_eq!(chunk.len(), 2);
    assert!(chunk.iter().any(|e| e["event_id"] == reply));
    let annotations = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v1/rooms/{room}/relations/{e1}/m.annotation"),
            None,
        )
        .await;
    assert_eq!(annotations["chunk"].as_array().unwrap().len(), 1);

    // Redaction prunes the content and explains why.
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/redact/{e1}/red1"),
            Some(json!({"reason": "typo"})),
        )
        .await;
    let ev = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/event/{e1}"),
            None,
        )
        .await;
    assert_eq!(ev["content"], json!({}));
    assert_eq!(
        ev["unsigned"]["redacted_because"]["content"]["reason"],
        "typo"
    );
    // Bob may not redact Alice's message (power 0 < redact 50).
    bob.err(
        Method::PUT,
        &format!(
            "/_matrix/client/v3/rooms/{room}/redact/{}/red2",
            woke["rooms"]["join"][&room]["timeline"]["events"][0]["event_id"]
                .as_str()
                .unwrap()
        ),
        Some(json!({})),
        403,
        "M_FORBIDDEN",
    )
    .await;

    // Pagination backwards over everything, then forwards again.
    for i in 0..15 {
        alice
            .send(&room, &format!("p{i}"), &format!("msg {i}"))
            .await;
    }
    let mut from: Option<String> = None;
    let mut seen = Vec::new();
    loop {
        let mut path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=4");
        if let Some(f) = &from {
            path.push_str(&format!("&from={f}"));
        }
        let page = bob.ok(Method::GET, &path, None).await;
        for e in page["chunk"].as_array().unwrap() {
            if let Some(b) = e["content"]["body"].as_str() {
                seen.push(b.to_owned());
            }
        }
        match page["end"].as_str() {
            Some(end) => from = Some(end.to_owned()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..15)
        .rev()
        .map(|i| format!("msg {i}"))
        .chain(["yes".to_owned(), "are you there?".to_owned()])
        .collect();
    assert_eq!(seen, expected);
    let forward = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100&from=s0"),
            None,
        )
        .await;
    assert!(forward["chunk"].as_array().unwrap().first().unwrap()["type"] == "m.room.create");

    // Filtered messages: only reactions.
    let filter = urlencode(&json!({"types": ["m.reaction"]}).to_string());
    let only = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50&filter={filter}"),
            None,
        )
        .await;
    assert!(
        only["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["type"] == "m.reaction")
    );
    assert_eq!(only["chunk"].as_array().unwrap().len(), 1);

    // A wildcard type filter: everything of m.room.*, no reactions.
    let filter =
        urlencode(&json!({"types": ["m.room.*"], "not_types": ["m.room.mem*"]}).to_string());
    let wild = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100&filter={filter}"),
            None,
        )
        .await;
    let types: std::collections::BTreeSet<&str> = wild["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains("m.room.message") && types.contains("m.room.create"),
        "{types:?}"
    );
    assert!(
        !types.contains("m.reaction") && !types.contains("m.room.member"),
        "{types:?}"
    );

    // Context around a message.
    let ctx = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/context/{reply}?limit=4"),
            None,
        )
        .await;
    assert_eq!(ctx["event"]["event_id"], reply);
    assert!(
        ctx["state"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );

    // Members and state.
    let joined = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/joined_members"),
            None,
        )
        .await;
    assert_eq!(joined["joined"].as_object().unwrap().len(), 2);
    let name = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
            None,
        )
        .await;
    assert_eq!(name["name"], "Station 3");
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.topic/"),
            Some(json!({"topic": "night shift"})),
        )
        .await;
    // Bob lacks the power to change the name.
    bob.err(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
        Some(json!({"name": "mine"})),
        403,
        "M_FORBIDDEN",
    )
    .await;

    // Leave, then the room moves to the leave section and can be forgotten.
    let before = bob.sync(None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/leave"),
        Some(json!({})),
    )
    .await;
    let left = bob.sync(Some(&before), 0).await;
    assert!(left["rooms"]["leave"].get(&room).is_some(), "{left}");
    // A retry of a send that succeeded before Bob left gets its answer, not a 403.
    let retried = bob
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/r1"),
            Some(json!({"msgtype": "m.text", "body": "yes", "m.relates_to": {"m.in_reply_to": {"event_id": e1}}})),
        )
        .await;
    assert_eq!(retried["event_id"], reply.as_str());
    bob.err(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/x"),
        Some(json!({"body": "x", "msgtype": "m.text"})),
        403,
        "M_FORBIDDEN",
    )
    .await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/forget"),
        Some(json!({})),
    )
    .await;
    let rooms = bob
        .ok(Method::GET, "/_matrix/client/v3/joined_rooms", None)
        .await;
    assert!(rooms["joined_rooms"].as_array().unwrap().is_empty());

    // Kick and ban need power; Alice has it.
    let carol = server.register("carol").await;
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
    carol
        .err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/kick"),
            Some(json!({"user_id": alice.user_id})),
            403,
            "M_FORBIDDEN",
        )
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/ban"),
            Some(json!({"user_id": carol.user_id, "reason": "spam"})),
        )
        .await;
    carol
        .err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(json!({})),
            403,
            "M_FORBIDDEN",
        )
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/unban"),
            Some(json!({"user_id": carol.user_id})),
        )
        .await;
}

#[tokio::test]
async fn aliases_and_public_rooms_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = alice
            .create_room(json!({"preset": "public_chat", "room_alias_name": "lobby"}))
            .await;
        let alias = format!("#lobby:{}", server.server_name);
        let looked = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/directory/room/{}", urlencode(&alias)),
                None,
            )
            .await;
        assert_eq!(looked["room_id"], room);
        // Joining a public room by alias needs no invite.
        let joined = bob
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/join/{}", urlencode(&alias)),
                Some(json!({})),
            )
            .await;
        assert_eq!(joined["room_id"], room);
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"room_alias_name": "lobby"})),
                400,
                "M_ROOM_IN_USE",
            )
            .await;
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"room_version": "1"})),
                400,
                "M_UNSUPPORTED_ROOM_VERSION",
            )
            .await;
        let v9 = alice.create_room(json!({"room_version": "9"})).await;
        let create = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{v9}/state/m.room.create/"),
                None,
            )
            .await;
        assert_eq!(create["room_version"], "9");
        server.stop().await;
    }
}

pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn concurrent_sends_are_batched_correctly_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let room = alice.create_room(json!({})).await;
        // 40 different messages at once: all stored once, each id distinct.
        let sends = (0..40).map(|i| {
            let alice = alice.clone();
            let room = room.clone();
            async move { alice.send(&room, &format!("c{i}"), &format!("m{i}")).await }
        });
        let ids: Vec<String> = futures::future::join_all(sends).await;
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), 40);
        // The same transaction id sent 8 times at once, mixed with new ones: one event.
        let repeats = (0..16).map(|i| {
            let alice = alice.clone();
            let room = room.clone();
            async move {
                let txn = if i % 2 == 0 {
                    "same".to_owned()
                } else {
                    format!("other{i}")
                };
                (
                    txn,
                    alice
                        .send(
                            &room,
                            &if i % 2 == 0 {
                                "same".to_owned()
                            } else {
                                format!("other{i}")
                            },
                            "x",
                        )
                        .await,
                )
            }
        });
        let results = futures::future::join_all(repeats).await;
        let same: std::collections::BTreeSet<&String> = results
            .iter()
            .filter(|(t, _)| t == "same")
            .map(|(_, id)| id)
            .collect();
        assert_eq!(
            same.len(),
            1,
            "a repeated transaction id made several events"
        );
        let page = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=200"),
                None,
            )
            .await;
        let messages = page["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .count();
        assert_eq!(messages, 40 + 1 + 8);
        // The event graph stays a chain: one forward extremity, depth = number of events.
        let hs = server.tenants.default_tenant();
        let loaded = hs.stores.events.load_room(&room).await.unwrap().unwrap();
        assert_eq!(loaded.extremities.len(), 1);
        let total = page["chunk"].as_array().unwrap().len() as i64;
        assert_eq!(loaded.max_depth, total);
        server.stop().await;
    }
}

#[tokio::test]
async fn sync_respects_history_visibility_and_membership_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let eve = server.register("eve").await;
        let room = alice.create_room(json!({"initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "joined"}}]})).await;
        alice
            .send(&room, "secret", "before anyone else joined")
            .await;

        // Eve, never a member, is banned: she learns of the ban, not of the conversation.
        let since = eve.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        alice.send(&room, "s2", "still private").await;
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/ban"),
                Some(json!({"user_id": eve.user_id})),
            )
            .await;
        let eve_sync = eve.sync(Some(&since), 0).await;
        let events = eve_sync["rooms"]["leave"][&room]["timeline"]["events"]
            .as_array()
            .unwrap()
            .clone();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0]["content"]["membership"], "ban");

        // Bob, invited: the invite shows who invited him, and nobody else's invite.
        let carol = server.register("carol").await;
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                Some(json!({"user_id": carol.user_id})),
            )
            .await;
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                Some(json!({"user_id": bob.user_id})),
            )
            .await;
        let invite = bob.sync(None, 0).await["rooms"]["invite"][&room]["invite_state"]["events"]
            .as_array()
            .unwrap()
            .clone();
        let members: Vec<&str> = invite
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap())
            .collect();
        assert!(
            members.contains(&bob.user_id.as_str()) && members.contains(&alice.user_id.as_str()),
            "{members:?}"
        );
        assert!(
            !members.contains(&carol.user_id.as_str()),
            "another user's invite leaked: {members:?}"
        );

        // With "joined" visibility, Bob's first sync after joining shows nothing from before.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(json!({})),
        )
        .await;
        let joined = bob.sync(None, 0).await;
        let texts = bodies(&joined, &room);
        assert!(
            texts.is_empty(),
            "history before the join leaked: {texts:?}"
        );
        // The room has no name: the summary names its members.
        let summary = &joined["rooms"]["join"][&room]["summary"];
        assert_eq!(summary["m.joined_member_count"], 2);
        assert!(
            summary["m.heroes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h == alice.user_id.as_str())
        );
        let page = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=50"),
                None,
            )
            .await;
        assert!(
            page["chunk"]
                .as_array()
                .unwrap()
                .iter()
                .all(|e| e["content"]["body"].is_null())
        );

        // Leave and forget, then a new invite still reaches Bob.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(json!({})),
        )
        .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/forget"),
            Some(json!({})),
        )
        .await;
        let before = bob.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                Some(json!({"user_id": bob.user_id})),
            )
            .await;
        let again = bob.sync(Some(&before), 0).await;
        assert!(again["rooms"]["invite"].get(&room).is_some(), "{again}");
        server.stop().await;
    }
}

#[tokio::test]
async fn lazy_loading_sends_the_members_a_timeline_needs_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(json!({})),
        )
        .await;
        let lazy = |limit: u32| {
            urlencode(&json!({"room": {"timeline": {"limit": limit}, "state": {"lazy_load_members": true}}}).to_string())
        };
        let first = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/sync?filter={}", lazy(10)),
                None,
            )
            .await;
        let since = first["next_batch"].as_str().unwrap().to_owned();
        carol
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/join/{room}"),
                Some(json!({})),
            )
            .await;
        for i in 0..3 {
            carol.send(&room, &format!("c{i}"), "hallo").await;
        }
        // Limited timeline: Carol's join is not in it, so her member event comes as state.
        let next = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/sync?since={since}&filter={}", lazy(2)),
                None,
            )
            .await;
        let joined = &next["rooms"]["join"][&room];
        assert_eq!(joined["timeline"]["limited"], true);
        let state = joined["state"]["events"].as_array().unwrap();
        let members: Vec<&str> = state
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap())
            .collect();
        assert!(members.contains(&carol.user_id.as_str()), "{members:?}");
        // Nothing in the state section repeats a timeline event.
        let timeline_ids: Vec<&str> = joined["timeline"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert!(
            state
                .iter()
                .all(|e| !timeline_ids.contains(&e["event_id"].as_str().unwrap()))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn filtered_timelines_still_deliver_state_changes_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let room = alice.create_room(json!({"name": "old"})).await;
        let filter =
            urlencode(&json!({"room": {"timeline": {"types": ["m.room.message"]}}}).to_string());
        let since = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/sync?filter={filter}"),
                None,
            )
            .await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        alice.send(&room, "a", "A").await;
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/state/m.room.name/"),
                Some(json!({"name": "new"})),
            )
            .await;
        alice.send(&room, "b", "B").await;
        let next = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/sync?since={since}&filter={filter}"),
                None,
            )
            .await;
        assert_eq!(bodies(&next, &room), vec!["A", "B"]);
        let state = next["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .unwrap();
        assert!(
            state
                .iter()
                .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "new"),
            "{state:?}"
        );
        server.stop().await;
    }
}
