//! The room as an event graph (issue 15): edges stored as data and walked in SQL, events outside
//! the timeline with their status, pagination in topological order.

mod common;

use common::{STORES, TestServer};
use reqwest::Method;
use serde_json::{Value, json};
use tim_homeserver::store::{EventStatus, OutsideEvent};

fn pdu_of(stored: &[tim_homeserver::store::StoredPdu], id: &str) -> Value {
    serde_json::from_str(&stored.iter().find(|p| p.event_id == id).unwrap().json).unwrap()
}

#[tokio::test]
async fn edges_auth_chains_and_walks_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let room = alice.create_room(json!({"name": "Graph"})).await;
        let mut sent = Vec::new();
        for i in 0..30 {
            sent.push(alice.send(&room, &format!("t{i}"), &format!("m{i}")).await);
        }
        let hs = server.hs();
        let graph = hs.stores.graph.clone();
        let last = sent.last().unwrap().clone();

        // Edges are the PDU's own lists.
        let stored = graph.pdus(std::slice::from_ref(&last)).await.unwrap();
        let pdu = pdu_of(&stored, &last);
        assert_eq!(stored[0].status, None, "a sent message is in the timeline");
        let (prev, auth) = graph.edges(&last).await.unwrap();
        assert_eq!(prev, vec![sent[28].clone()]);
        let mut want_auth: Vec<String> = pdu["auth_events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect();
        want_auth.sort();
        assert_eq!(auth, want_auth);

        // The auth chain reaches the create event and holds no messages.
        let chain = graph.auth_chain(std::slice::from_ref(&last)).await.unwrap();
        let chain_pdus = graph.pdus(&chain).await.unwrap();
        let types: Vec<&str> = chain_pdus
            .iter()
            .map(|p| serde_json::from_str::<Value>(&p.json).unwrap())
            .map(|v| match v["type"].as_str().unwrap() {
                "m.room.create" => "create",
                "m.room.member" => "member",
                "m.room.power_levels" => "power",
                "m.room.join_rules" => "join_rules",
                _ => "other",
            })
            .collect();
        assert!(types.contains(&"create") && types.contains(&"member"));
        assert!(types.contains(&"power"));
        assert!(!types.contains(&"other"), "{types:?}");
        for id in &want_auth {
            assert!(chain.contains(id));
        }

        // Walking back: newest first, a page at a time, never past a stop event.
        let page = graph
            .walk_back(&room, std::slice::from_ref(&last), &[], 0, 10, true)
            .await
            .unwrap();
        let ids: Vec<&str> = page.iter().map(|p| p.event_id.as_str()).collect();
        let want: Vec<&str> = sent[20..].iter().rev().map(String::as_str).collect();
        assert_eq!(ids, want);
        let missing = graph
            .walk_back(
                &room,
                std::slice::from_ref(&last),
                std::slice::from_ref(&sent[25]),
                0,
                10,
                false,
            )
            .await
            .unwrap();
        let ids: Vec<&str> = missing.iter().map(|p| p.event_id.as_str()).collect();
        let want: Vec<&str> = sent[26..29].iter().rev().map(String::as_str).collect();
        assert_eq!(ids, want, "from excluded, stops before the earliest event");
        let depth_floor = graph
            .walk_back(
                &room,
                std::slice::from_ref(&last),
                &[],
                page[3].depth,
                100,
                false,
            )
            .await
            .unwrap();
        assert_eq!(depth_floor.len(), 3, "min_depth bounds the walk");
        assert!(graph.backward_extremities(&room).await.unwrap().is_empty());
        assert_eq!(graph.min_stream_pos().await.unwrap(), 0);

        // Events outside the timeline: kept with their status and reason, shown to no client.
        let outlier_id = "$outlier-event-for-the-graph-test";
        let missing_prev = "$an-event-this-server-never-saw".to_owned();
        let json = json!({
            "type": "m.room.message", "room_id": room, "sender": "@mallory:elsewhere.test",
            "content": {"body": "from outside", "msgtype": "m.text"}, "depth": 7,
            "prev_events": [missing_prev], "auth_events": [sent[0]], "origin_server_ts": 1,
        })
        .to_string();
        let prevs = vec![missing_prev.clone()];
        let auths = vec![sent[0].clone()];
        let outside = |event_id: &'static str, status| OutsideEvent {
            event_id,
            room_id: &room,
            depth: 7,
            json: &json,
            prev_events: &prevs,
            auth_events: &auths,
            status,
            reason: Some("failed the auth rules: test"),
            received_ts: 1,
        };
        graph
            .store_outside_timeline(&[outside(outlier_id, EventStatus::Rejected)])
            .await
            .unwrap();
        // Storing it again, or naming a timeline event, changes nothing.
        let last_static: &'static str = Box::leak(last.clone().into_boxed_str());
        graph
            .store_outside_timeline(&[
                outside(outlier_id, EventStatus::Outlier),
                outside(last_static, EventStatus::Rejected),
            ])
            .await
            .unwrap();
        let stored = graph
            .pdus(&[outlier_id.to_owned(), last.clone()])
            .await
            .unwrap();
        assert_eq!(stored.len(), 2);
        let outlier = stored.iter().find(|p| p.event_id == outlier_id).unwrap();
        assert_eq!(outlier.status, Some(EventStatus::Rejected));
        assert_eq!(
            outlier.reason.as_deref(),
            Some("failed the auth rules: test")
        );
        let timeline = stored.iter().find(|p| p.event_id == last).unwrap();
        assert_eq!(timeline.status, None);
        assert_eq!(graph.edges(outlier_id).await.unwrap().0, prevs);
        // An outlier's missing prev event is not where the timeline's history ends.
        assert!(graph.backward_extremities(&room).await.unwrap().is_empty());

        let messages = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=100"),
                None,
            )
            .await;
        let ids: Vec<&str> = messages["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert!(!ids.contains(&outlier_id));
        assert!(ids.contains(&last.as_str()));
        let sync = alice.sync(None, 0).await;
        assert!(!sync.to_string().contains(outlier_id));
        server.stop().await;
    }
}

#[tokio::test]
async fn pagination_tokens_name_points_of_the_topological_order_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let room = alice.create_room(json!({})).await;
        for i in 0..12 {
            alice.send(&room, &format!("t{i}"), &format!("m{i}")).await;
        }
        let sync = alice.sync(None, 0).await;
        let timeline = &sync["rooms"]["join"][&room]["timeline"];
        let prev_batch = timeline["prev_batch"].as_str().unwrap().to_owned();
        assert!(prev_batch.starts_with('t'), "{prev_batch}");

        // Back from sync's prev_batch, then back again from the page's end: no event twice,
        // none left out, newest first, down to the create event.
        let shown: Vec<String> = timeline["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        let mut seen = shown.clone();
        let mut from = prev_batch;
        loop {
            let page = alice
                .ok(
                    Method::GET,
                    &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=3&from={from}"),
                    None,
                )
                .await;
            for e in page["chunk"].as_array().unwrap() {
                seen.insert(0, e["event_id"].as_str().unwrap().to_owned());
            }
            match page["end"].as_str() {
                Some(end) => from = end.to_owned(),
                None => break,
            }
        }
        let all = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=100"),
                None,
            )
            .await;
        let forward: Vec<String> = all["chunk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(seen, forward);
        assert_eq!(all["chunk"][0]["type"], "m.room.create");

        // A sync token still works as a pagination token; a malformed one is refused.
        let next = sync["next_batch"].as_str().unwrap();
        let back = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=2&from={next}"),
                None,
            )
            .await;
        assert_eq!(
            back["chunk"][0]["event_id"].as_str(),
            forward.last().map(String::as_str)
        );
        for bad in ["t5", "tx_1", "t1_y", "q12"] {
            let (status, body) = alice
                .raw(
                    Method::GET,
                    &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from={bad}"),
                    None,
                )
                .await;
            assert_eq!(status, 400, "{bad}");
            assert_eq!(body["errcode"], "M_INVALID_PARAM");
        }
        server.stop().await;
    }
}
