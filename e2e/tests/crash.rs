//! Durability: every send the server acknowledged survives `kill -9` in the middle of a burst
//! of concurrent sends, in the order it was acknowledged, on SQLite and on PostgreSQL.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tim_e2e::{STORES, Server};

async fn post(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut req = http.post(url).json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.send().await.unwrap().json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_kill_9_on_both_stores() {
    for store in STORES {
        let mut server = Server::start(store);
        let base = server.base_url();
        let http = reqwest::Client::new();
        let reg = post(
            &http,
            format!("{base}/_matrix/client/v3/register"),
            None,
            json!({"username": "alice", "password": "pw", "auth": {"type": "m.login.dummy"}}),
        )
        .await;
        let token = reg["access_token"].as_str().unwrap().to_owned();
        let room = post(
            &http,
            format!("{base}/_matrix/client/v3/createRoom"),
            Some(&token),
            json!({}),
        )
        .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned();

        // Four senders in a loop; each records the event ids the server acknowledged.
        let acked: Arc<Mutex<Vec<Vec<String>>>> = Arc::new(Mutex::new(vec![Vec::new(); 4]));
        let mut tasks = Vec::new();
        for sender in 0..4 {
            let (http, base, token, room, acked) = (
                http.clone(),
                base.clone(),
                token.clone(),
                room.clone(),
                acked.clone(),
            );
            tasks.push(tokio::spawn(async move {
                for i in 0.. {
                    let url = format!(
                        "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/s{sender}-{i}"
                    );
                    let Ok(resp) = http
                        .put(url)
                        .bearer_auth(&token)
                        .json(&json!({"msgtype": "m.text", "body": format!("{sender}/{i}")}))
                        .send()
                        .await
                    else {
                        break;
                    };
                    let Ok(v) = resp.json::<Value>().await else {
                        break;
                    };
                    let Some(id) = v["event_id"].as_str() else {
                        break;
                    };
                    acked.lock().unwrap()[sender].push(id.to_owned());
                }
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        server.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        let total: usize = acked.iter().map(Vec::len).sum();
        assert!(total > 20, "too few sends before the kill: {total}");

        server.restart();
        let login = post(&http, format!("{base}/_matrix/client/v3/login"), None, json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "pw"})).await;
        let token = login["access_token"].as_str().unwrap().to_owned();
        let mut stored: Vec<String> = Vec::new();
        let mut from = "s0".to_owned();
        loop {
            let page: Value = http
                .get(format!(
                    "{base}/_matrix/client/v3/rooms/{room}/messages?dir=f&limit=500&from={from}"
                ))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            stored.extend(
                page["chunk"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["event_id"].as_str().unwrap().to_owned()),
            );
            match page["end"].as_str() {
                Some(end) => from = end.to_owned(),
                None => break,
            }
        }
        for (sender, ids) in acked.iter().enumerate() {
            // Present, and in the order the sender had them acknowledged.
            let positions: Vec<usize> = ids
                .iter()
                .map(|id| {
                    stored.iter().position(|s| s == id).unwrap_or_else(|| {
                        panic!("acknowledged event {id} of sender {sender} lost")
                    })
                })
                .collect();
            assert!(
                positions.windows(2).all(|w| w[0] < w[1]),
                "sender {sender}: events out of order"
            );
        }
        // The room still works after the crash.
        let url = format!("{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/after-crash");
        let v: Value = http
            .put(url)
            .bearer_auth(&token)
            .json(&json!({"msgtype": "m.text", "body": "after"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(v["event_id"].is_string(), "send after restart failed: {v}");
        eprintln!("{store:?}: {total} acknowledged sends survived kill -9");
        server.cleanup().await;
    }
}
