//! Benchmark of a release `tim-homeserver` on this machine: server, database and load
//! generator share it. Prints messages/s with 32 concurrent senders (50 users in 10 rooms),
//! send→sync delivery latency under a long-poll receiver, initial sync of a user in 200 rooms
//! × 20 events (timeline limit 10), registrations/s (production argon2 cost), RSS idle and
//! after load, the RSS of 100 extra idle tenants, the same send load while all 50 users
//! long-poll sync with presence on and send typing notifications and read receipts, and media
//! upload/download MB/s of a 100 MiB file, Web Push through `tim-push-gateway` (`push`), and
//! the directory sync `tim-vzd-sync` (`vzd`), and federation between two servers over TLS with
//! two Synapses as the reference (`federation`).
//!
//! `cargo run --release -p tim-bench [-- sqlite|postgres|both] [--seconds N]
//!  [--only tenants|keys|send|initial-sync|media|push|vzd|federation]`

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tim_e2e::{Server, Store};

mod federation;
mod push;
mod vzd;

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn register(&self, name: &str) -> (String, String) {
        let v = self
            .call(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(json!({"username": name, "password": "bench-pw", "auth": {"type": "m.login.dummy"}})))
            .await;
        (
            v["user_id"].as_str().unwrap().to_owned(),
            v["access_token"].as_str().unwrap().to_owned(),
        )
    }

    async fn send(&self, token: &str, room: &str, txn: &str, body: &str) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        self.call(
            reqwest::Method::PUT,
            &path,
            Some(token),
            Some(json!({"msgtype": "m.text", "body": body})),
        )
        .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }
}

impl Api {
    /// 10 rooms of 5 users each (`users` has 50): the first makes the room and invites the
    /// others, who join.
    async fn rooms_of_five(&self, users: &[(String, String)]) -> Vec<String> {
        let mut rooms = Vec::new();
        for r in 0..10 {
            let members = &users[r * 5..r * 5 + 5];
            let invite: Vec<&str> = members[1..].iter().map(|(u, _)| u.as_str()).collect();
            let room = self
                .call(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/createRoom",
                    Some(&members[0].1),
                    Some(json!({"invite": invite})),
                )
                .await["room_id"]
                .as_str()
                .unwrap()
                .to_owned();
            for (_, token) in &members[1..] {
                self.call(
                    reqwest::Method::POST,
                    &format!("/_matrix/client/v3/join/{room}"),
                    Some(token),
                    Some(json!({})),
                )
                .await;
            }
            rooms.push(room);
        }
        rooms
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn run(store: Store, seconds: u64, only: Option<&str>) {
    println!("== {store:?}");
    // Production password cost: registration is measured as users would see it.
    let server = Server::start_with(
        store,
        &[
            ("TIM_ARGON2__M_COST_KIB", "19456"),
            ("TIM_ARGON2__T_COST", "2"),
            ("TIM_LOG_LEVEL", "warn"),
        ],
    );
    let pid = server.pid();
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        base: server.base_url(),
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!("RSS idle (one tenant): {} KiB", rss_kib(pid));

    if only.is_none_or(|o| o == "tenants") {
        // 100 idle tenants.
        let before = rss_kib(pid);
        let started = Instant::now();
        let http = reqwest::Client::new();
        for t in 0..100 {
            let name = format!("idle{t}.{}", server.server_name);
            let resp = http
                .put(format!(
                    "{}/_tim/operator/v1/tenants/{name}",
                    server.internal_url()
                ))
                .bearer_auth(server.operator_token())
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            let status = resp.status();
            assert!(
                status.is_success(),
                "adding tenant {name}: {status} {}",
                resp.text().await.unwrap_or_default()
            );
        }
        let add_secs = started.elapsed().as_secs_f64();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss_kib(pid);
        println!(
            "100 idle tenants: +{} KiB RSS ({:.0} KiB per tenant), added in {add_secs:.1} s",
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 / 100.0
        );
    }
    if only.is_none_or(|o| o == "keys") {
        keys_bench(&api, seconds).await;
    }
    if only.is_none_or(|o| o == "send") {
        // Registrations: 50 users, 4 at a time.
        let started = Instant::now();
        let users: Vec<(String, String)> = futures::future::join_all((0..50).map(|i| {
            let api = api.clone();
            async move { api.register(&format!("user{i}")).await }
        }))
        .await;
        let reg_secs = started.elapsed().as_secs_f64();
        println!(
            "register: {:.1} users/s (50 users, argon2id 19 MiB / t=2)",
            50.0 / reg_secs
        );

        let rooms = api.rooms_of_five(&users).await;

        // 32 concurrent senders for `seconds`.
        let (rate, lat) = send_load(&api, &users, &rooms, seconds, "b").await;
        println!(
            "send: {rate:.0} messages/s with 32 concurrent senders ({} messages), latency p50 {} p99 {}",
            lat.len(),
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
        println!("RSS after load: {} KiB", rss_kib(pid));

        // The same load while every user long-polls sync (presence on), and answers what
        // arrives with a read receipt and, now and then, a typing notification.
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(EphemeralCounters::default());
        let mut syncers = Vec::new();
        for (i, (user, token)) in users.iter().enumerate() {
            let (api, stop, counters) = (api.clone(), stop.clone(), counters.clone());
            let (user, token, room) = (user.clone(), token.clone(), rooms[i / 5].clone());
            syncers.push(tokio::spawn(async move {
                ephemeral_client(&api, (&user, &token), &room, &stop, &counters).await
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rate, lat) = send_load(&api, &users, &rooms, seconds, "e").await;
        stop.store(true, Ordering::Relaxed);
        for s in syncers {
            s.await.unwrap();
        }
        let secs = seconds as f64;
        println!(
            "send with 50 syncing users, typing and receipts: {rate:.0} messages/s, latency p50 {} p99 {}; {:.0} sync responses/s, {:.0} receipts/s, {:.0} typing/s",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99)),
            counters.syncs.load(Ordering::Relaxed) as f64 / secs,
            counters.receipts.load(Ordering::Relaxed) as f64 / secs,
            counters.typing.load(Ordering::Relaxed) as f64 / secs,
        );

        // Send→sync delivery under a long-polling receiver.
        let (sender_token, receiver_token) = (users[0].1.clone(), users[1].1.clone());
        let room = rooms[0].clone();
        let mut since = api.call(reqwest::Method::GET, "/_matrix/client/v3/sync?timeout=0&filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A1%7D%7D%7D", Some(&receiver_token), None).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut delivery = Vec::new();
        for i in 0..200 {
            let api2 = api.clone();
            let token = receiver_token.clone();
            let since2 = since.clone();
            let poll = tokio::spawn(async move {
                api2.call(
                    reqwest::Method::GET,
                    &format!("/_matrix/client/v3/sync?timeout=30000&since={since2}"),
                    Some(&token),
                    None,
                )
                .await
            });
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            api.send(&sender_token, &room, &format!("d{i}"), "ping")
                .await;
            let resp = poll.await.unwrap();
            delivery.push(t.elapsed());
            since = resp["next_batch"].as_str().unwrap().to_owned();
        }
        delivery.sort();
        println!(
            "send→sync delivery: p50 {} p99 {} (200 messages, long-poll receiver)",
            ms(percentile(&delivery, 0.5)),
            ms(percentile(&delivery, 0.99))
        );
    }
    if only.is_none_or(|o| o == "initial-sync") {
        // Initial sync of a user in 200 rooms × 20 events, timeline limit 10.
        let (_, heavy) = api.register("heavy").await;
        for r in 0..200 {
            let room = api
                .call(
                    reqwest::Method::POST,
                    "/_matrix/client/v3/createRoom",
                    Some(&heavy),
                    Some(json!({"name": format!("Raum {r}")})),
                )
                .await["room_id"]
                .as_str()
                .unwrap()
                .to_owned();
            // createRoom wrote 6 events; 14 messages make 20.
            for m in 0..14 {
                api.send(&heavy, &room, &format!("h{r}-{m}"), "Laborwerte")
                    .await;
            }
        }
        let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A10%7D%7D%7D";
        let mut times = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let v = api
                .call(
                    reqwest::Method::GET,
                    &format!("/_matrix/client/v3/sync?filter={filter}"),
                    Some(&heavy),
                    None,
                )
                .await;
            times.push(t.elapsed());
            assert_eq!(v["rooms"]["join"].as_object().map(|o| o.len()), Some(200));
        }
        times.sort();
        println!(
            "initial sync, 200 rooms × 20 events, timeline limit 10: median {} best {}",
            ms(times[2]),
            ms(times[0])
        );
    }
    if only.is_none_or(|o| o == "media") {
        media(&api, pid).await;
    }
    if only.is_none_or(|o| o == "push") {
        push::bench(store, seconds).await;
    }
    if only.is_none_or(|o| o == "vzd") {
        vzd::bench(store, seconds).await;
    }
    if only.is_none_or(|o| o == "federation") {
        federation::bench(store, seconds).await;
    }
    if store == Store::Postgres {
        for t in 0..100 {
            let _ = tim_homeserver_drop(&format!("idle{t}.{}", server.server_name)).await;
        }
    }
    server.cleanup().await;
}

/// End-to-end encryption: one-time key claims/s with 32 concurrent claimers, and what the
/// server adds to the first message of an encrypted room with 50 member devices (the client
/// queries the members' keys, claims a one-time key per device and sends each the room key).
async fn keys_bench(api: &Arc<Api>, seconds: u64) {
    const DEVICES: usize = 50;
    const KEYS_PER_DEVICE: usize = 1_000;
    let members: Vec<(String, String, String)> =
        futures::future::join_all((0..DEVICES).map(|i| {
            let api = api.clone();
            async move {
                let v = api
                    .call(reqwest::Method::POST, "/_matrix/client/v3/register", None, Some(json!({"username": format!("keys{i}"), "password": "bench-pw", "auth": {"type": "m.login.dummy"}})))
                    .await;
                let field = |k: &str| v[k].as_str().unwrap().to_owned();
                (field("user_id"), field("access_token"), field("device_id"))
            }
        }))
        .await;
    // Unsigned uploads (no device keys): the server checks signatures only against a known
    // device key, and the claim path is the same.
    futures::future::join_all(members.iter().map(|(_, token, _)| {
        let api = api.clone();
        async move {
            for batch in 0..KEYS_PER_DEVICE / 100 {
                let keys: serde_json::Map<String, Value> = (0..100)
                    .map(|k| {
                        (
                            format!("signed_curve25519:K{batch:02}{k:03}"),
                            json!({"key": "dGVzdGtleXRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3Q", "signatures": {}}),
                        )
                    })
                    .collect();
                api.call(reqwest::Method::POST, "/_matrix/client/v3/keys/upload", Some(token), Some(json!({"one_time_keys": keys})))
                    .await;
            }
        }
    }))
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let claimer = members[0].1.clone();
    let tasks: Vec<_> = (0..32)
        .map(|w| {
            let (api, stop, claimer, members) =
                (api.clone(), stop.clone(), claimer.clone(), members.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let (user, _, device) = &members[(w + n as usize) % members.len()];
                    let v = api
                        .call(
                            reqwest::Method::POST,
                            "/_matrix/client/v3/keys/claim",
                            Some(&claimer),
                            Some(json!({"one_time_keys": {user: {device: "signed_curve25519"}}})),
                        )
                        .await;
                    assert!(v["one_time_keys"][user][device].is_object(), "keys ran out");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut claims = 0;
    for t in tasks {
        claims += t.await.unwrap();
    }
    println!(
        "key claims: {:.0} claims/s with 32 concurrent claimers",
        claims as f64 / started.elapsed().as_secs_f64()
    );

    // An encrypted room of all 50.
    let (sender, token, _) = &members[0];
    let invite: Vec<&str> = members[1..].iter().map(|(u, _, _)| u.as_str()).collect();
    let room = api
        .call(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(token), Some(json!({"invite": invite, "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]})))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for (_, t, _) in &members[1..] {
        api.call(
            reqwest::Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(t),
            Some(json!({})),
        )
        .await;
    }
    let ciphertext = "A".repeat(1_000);
    let mut plain = Vec::new();
    let mut encrypted = Vec::new();
    for i in 0..50 {
        let t = Instant::now();
        api.send(token, &room, &format!("p{i}"), "Blutdruck 120/80")
            .await;
        plain.push(t.elapsed());
        let t = Instant::now();
        let users: serde_json::Map<String, Value> = members
            .iter()
            .map(|(u, _, _)| (u.clone(), json!([])))
            .collect();
        api.call(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(token),
            Some(json!({"device_keys": users})),
        )
        .await;
        let wanted: serde_json::Map<String, Value> = members[1..]
            .iter()
            .map(|(u, _, d)| (u.clone(), json!({d.as_str(): "signed_curve25519"})))
            .collect();
        api.call(
            reqwest::Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(token),
            Some(json!({"one_time_keys": wanted})),
        )
        .await;
        let messages: serde_json::Map<String, Value> = members[1..]
            .iter()
            .map(|(u, _, d)| (u.clone(), json!({d.as_str(): {"algorithm": "m.olm.v1.curve25519-aes-sha2", "sender_key": "x", "ciphertext": {"k": {"type": 0, "body": ciphertext}}}})))
            .collect();
        api.call(
            reqwest::Method::PUT,
            &format!("/_matrix/client/v3/sendToDevice/m.room.encrypted/e{i}"),
            Some(token),
            Some(json!({"messages": messages})),
        )
        .await;
        api.call(reqwest::Method::PUT, &format!("/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/e{i}"), Some(token), Some(json!({"algorithm": "m.megolm.v1.aes-sha2", "sender_key": "x", "session_id": "s", "device_id": "D", "ciphertext": ciphertext})))
            .await;
        encrypted.push(t.elapsed());
    }
    plain.sort();
    encrypted.sort();
    println!(
        "encrypted room, 50 member devices, {sender}: first message of a session (keys/query + keys/claim + sendToDevice ×49 + send) p50 {} p99 {}; a plain send p50 {}",
        ms(percentile(&encrypted, 0.5)),
        ms(percentile(&encrypted, 0.99)),
        ms(percentile(&plain, 0.5))
    );
}

/// 32 senders in the 10 rooms for `seconds`: messages/s and sorted latencies.
async fn send_load(
    api: &Arc<Api>,
    users: &[(String, String)],
    rooms: &[String],
    seconds: u64,
    tag: &str,
) -> (f64, Vec<Duration>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..32 {
        let (api, stop) = (api.clone(), stop.clone());
        let room_idx = s % 10;
        let (_, token) = users[room_idx * 5 + (s / 10) % 5].clone();
        let room = rooms[room_idx].clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                api.send(
                    &token,
                    &room,
                    &format!("{tag}{s}-{i}"),
                    "Blutdruck 120/80, Puls 64",
                )
                .await;
                lat.push(t.elapsed());
                i += 1;
            }
            lat
        }));
    }
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<Duration> = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort();
    (lat.len() as f64 / elapsed, lat)
}

#[derive(Default)]
struct EphemeralCounters {
    syncs: std::sync::atomic::AtomicU64,
    receipts: std::sync::atomic::AtomicU64,
    typing: std::sync::atomic::AtomicU64,
}

/// A client that long-polls, sends a read receipt for the newest message of each response
/// and a typing notification every tenth response.
async fn ephemeral_client(
    api: &Api,
    (user, token): (&str, &str),
    room: &str,
    stop: &AtomicBool,
    counters: &EphemeralCounters,
) {
    let filter = "%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A5%7D%7D%7D";
    let mut since: Option<String> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let path = match &since {
            Some(s) => format!("/_matrix/client/v3/sync?timeout=1000&filter={filter}&since={s}"),
            None => format!("/_matrix/client/v3/sync?timeout=0&filter={filter}"),
        };
        let v = api
            .call(reqwest::Method::GET, &path, Some(token), None)
            .await;
        counters.syncs.fetch_add(1, Ordering::Relaxed);
        since = v["next_batch"].as_str().map(str::to_owned);
        let newest = v["rooms"]["join"][room]["timeline"]["events"]
            .as_array()
            .and_then(|e| e.last())
            .and_then(|e| e["event_id"].as_str())
            .map(str::to_owned);
        if let Some(event) = newest {
            api.call(
                reqwest::Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
                Some(token),
                Some(json!({})),
            )
            .await;
            counters.receipts.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
        if n.is_multiple_of(10) {
            api.call(
                reqwest::Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room}/typing/{user}"),
                Some(token),
                Some(json!({"typing": true, "timeout": 5000})),
            )
            .await;
            counters.typing.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Uploads and downloads a 100 MiB file: MB/s each way and the server's peak RSS.
async fn media(api: &Api, pid: u32) {
    let (_, token) = api.register("media").await;
    // Peak RSS from here on (writing 5 to clear_refs resets VmHWM).
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
    let data: Vec<u8> = (0..100 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mb = data.len() as f64 / 1e6;
    let mut up = Vec::new();
    let mut down = Vec::new();
    let mut uri = String::new();
    for _ in 0..3 {
        let t = Instant::now();
        let v: Value = api
            .http
            .post(format!(
                "{}/_matrix/media/v3/upload?filename=scan.pdf",
                api.base
            ))
            .bearer_auth(&token)
            .header("content-type", "application/pdf")
            .body(data.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        up.push(mb / t.elapsed().as_secs_f64());
        uri = v["content_uri"].as_str().expect("uploaded").to_owned();
    }
    let path = uri.trim_start_matches("mxc://");
    for _ in 0..3 {
        let t = Instant::now();
        let bytes = api
            .http
            .get(format!(
                "{}/_matrix/client/v1/media/download/{path}",
                api.base
            ))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len(), data.len());
        down.push(mb / t.elapsed().as_secs_f64());
    }
    let best = |v: &[f64]| v.iter().cloned().fold(0.0, f64::max);
    let peak = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:").map(|v| v.trim().to_owned()))
        .unwrap_or_default();
    println!(
        "media, 100 MiB file: upload {:.0} MB/s, download {:.0} MB/s (best of 3); server peak RSS during them {peak}",
        best(&up),
        best(&down)
    );
}

async fn tim_homeserver_drop(name: &str) -> Result<(), String> {
    tim_homeserver::store::drop_tenant_schema(tim_e2e::PG_URL, name)
        .await
        .map_err(|e| e.to_string())
}

#[tokio::main]
async fn main() {
    // Under `cargo run`, make sure the release server binary is built and current. Built
    // together with tim-bench, so that dependency features unify as in the `cargo run` that
    // started us and nothing is compiled twice.
    if let Ok(cargo) = std::env::var("CARGO") {
        let mut build = std::process::Command::new(cargo);
        // Without the variables `cargo run` set for us: build scripts (ring's) that watch
        // them would otherwise rerun and recompile half the tree on every alternation.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy();
            if (key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR")
                || key == "OUT_DIR"
            {
                build.env_remove(key.as_ref());
            }
        }
        let status = build
            .args([
                "build",
                "--release",
                "-p",
                "tim-homeserver",
                "-p",
                "tim-push-gateway",
                "-p",
                "tim-vzd-sync",
                "-p",
                "tim-bench",
            ])
            .status()
            .expect("cargo build");
        assert!(status.success(), "building tim-homeserver failed");
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = args
        .iter()
        .position(|a| a == "--seconds")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    // `--only tenants|keys|send|initial-sync|media|push|vzd|federation` runs one scenario ("send" includes registrations and
    // delivery latency, which use its users and rooms).
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(String::as_str);
    let which = args
        .iter()
        .find(|a| matches!(a.as_str(), "sqlite" | "postgres" | "both"))
        .map(String::as_str)
        .unwrap_or("both");
    println!(
        "tim-bench on {} cores; server, database and load generator share the machine",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    if matches!(which, "sqlite" | "both") {
        run(Store::Sqlite, seconds, only).await;
    }
    if matches!(which, "postgres" | "both") {
        run(Store::Postgres, seconds, only).await;
    }
}
