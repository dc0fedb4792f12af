//! Push benchmark: a release `tim-push-gateway` delivering to the Web Push service double
//! (which verifies VAPID and decrypts every push, in this process).
//! 1. The gateway alone: 32 concurrent homeserver-like clients POST `/notify` (one device each,
//!    256 subscriptions); notifications/s delivered to the double, and the time from sending the
//!    notification to the push arriving (what the gateway adds).
//! 2. Homeserver → gateway → double: 32 senders in 10 rooms of 5 users, every user with a Web
//!    Push pusher (4 pushes per message), at 50, 250 and 500 messages/s offered and unthrottled;
//!    pushes/s delivered and the time from sending a message to its pushes arriving.

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tim_e2e::{
    PushGateway, Server, Store,
    push_service::{BrowserSubscription, PushService},
};

use crate::{Api, ms, percentile};

pub async fn bench(store: Store, seconds: u64) {
    let service = PushService::start().await;
    let gateway = PushGateway::start(&[("TIM_PUSH_LOG_LEVEL", "warn")]);
    gateway_alone(&service, &gateway, seconds).await;
    through_homeserver(store, &service, &gateway, seconds).await;
}

/// Lets the sender tasks run for `seconds`, stops them and collects when each event was sent.
async fn run_for(
    seconds: u64,
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<Vec<(String, Instant)>>>,
) -> HashMap<String, Instant> {
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut sent = HashMap::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    sent
}

/// Send → arrival of each push, sorted.
fn latencies(
    got: &[tim_e2e::push_service::Received],
    sent: &HashMap<String, Instant>,
) -> Vec<Duration> {
    let mut lat: Vec<Duration> = got
        .iter()
        .filter_map(|r| Some(r.at - *sent.get(r.payload["event_id"].as_str()?)?))
        .collect();
    lat.sort();
    lat
}

/// Seconds from `started` to the last push's arrival.
fn last_arrival(got: &[tim_e2e::push_service::Received], started: Instant) -> f64 {
    got.iter()
        .map(|r| r.at)
        .max()
        .map_or(0.0, |at| (at - started).as_secs_f64())
}

async fn gateway_alone(service: &PushService, gateway: &PushGateway, seconds: u64) {
    // Light load first: one notification at a time.
    {
        let sub = service.subscribe();
        let http = reqwest::Client::new();
        let mut lat = Vec::new();
        for i in 0..200 {
            let before = service.received().len();
            let body = json!({"notification": {
                "event_id": format!("$light{i}:bench.test"), "room_id": "!r:bench.test",
                "devices": [{"app_id": "de.tim.web", "pushkey": sub.p256dh,
                             "data": {"endpoint": sub.endpoint, "auth": sub.auth}}],
            }});
            let at = Instant::now();
            http.post(gateway.notify_url())
                .json(&body)
                .send()
                .await
                .unwrap();
            let got = service.wait_for(before + 1, Duration::from_secs(5)).await;
            lat.push(got[before].at - at);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        lat.sort();
        println!(
            "push gateway alone, one at a time: notify→push p50 {} p99 {}",
            ms(percentile(&lat, 0.5)),
            ms(percentile(&lat, 0.99))
        );
    }
    let subs: Arc<Vec<BrowserSubscription>> =
        Arc::new((0..256).map(|_| service.subscribe()).collect());
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let url = gateway.notify_url();
    let stop = Arc::new(AtomicBool::new(false));
    let before = service.received().len();
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let (http, url, subs, stop) = (http.clone(), url.clone(), subs.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sent: Vec<(String, Instant)> = Vec::new();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    let sub = &subs[(t * 8 + i) % subs.len()];
                    let event = format!("$g{t}_{i}:bench.test");
                    let body = json!({"notification": {
                        "event_id": event,
                        "room_id": format!("!room{}:bench.test", i % 10),
                        "prio": "low",
                        "counts": {"unread": i % 20 + 1},
                        "devices": [{"app_id": "de.tim.web", "pushkey": sub.p256dh,
                                     "data": {"endpoint": sub.endpoint, "auth": sub.auth},
                                     "tweaks": {}}],
                    }});
                    let at = Instant::now();
                    let resp = http.post(&url).json(&body).send().await.unwrap();
                    assert!(resp.status().is_success(), "{}", resp.status());
                    sent.push((event, at));
                    i += 1;
                }
                sent
            })
        })
        .collect();
    let sent = run_for(seconds, &stop, tasks).await;
    let got = service
        .wait_for(before + sent.len(), Duration::from_secs(30))
        .await;
    let elapsed = last_arrival(&got[before..], started);
    let lat = latencies(&got[before..], &sent);
    println!(
        "push gateway alone: {:.0} notifications/s delivered to the push service ({} of {} sent, 32 concurrent senders), notify→push p50 {} p99 {}",
        lat.len() as f64 / elapsed,
        lat.len(),
        sent.len(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
    );
}

async fn through_homeserver(
    store: Store,
    service: &PushService,
    gateway: &PushGateway,
    seconds: u64,
) {
    let server = Server::start_with(
        store,
        &[
            ("TIM_LOG_LEVEL", "warn"),
            ("TIM_PUSH__ALLOW_PRIVATE_ADDRESSES", "true"),
        ],
    );
    let api = Arc::new(Api {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(64)
            .build()
            .unwrap(),
        base: server.base_url(),
    });
    let users: Vec<(String, String)> = futures::future::join_all((0..50).map(|i| {
        let api = api.clone();
        async move { api.register(&format!("pushuser{i}")).await }
    }))
    .await;
    for (_, token) in &users {
        let sub = service.subscribe();
        api.call(
            reqwest::Method::POST,
            "/_matrix/client/v3/pushers/set",
            Some(token),
            Some(json!({
                "kind": "http", "app_id": "de.tim.web", "pushkey": sub.p256dh,
                "app_display_name": "TI-M Web", "device_display_name": "Bench", "lang": "de",
                "data": {"url": gateway.notify_url(), "format": "event_id_only",
                         "endpoint": sub.endpoint, "auth": sub.auth},
            })),
        )
        .await;
    }
    let rooms = Arc::new(api.rooms_of_five(&users).await);
    // Let the invite and join pushes pass before measuring.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Offered loads (messages/s, 4 pushes each), then as fast as the senders can.
    for rate in [Some(50.0), Some(250.0), Some(500.0), None] {
        phase(&api, &users, &rooms, service, rate, seconds).await;
    }
    server.cleanup().await;
}

/// 32 senders (at `rate` messages/s in all, or unthrottled) for `seconds`; then waits for the
/// pushes and prints pushes/s and the send→push latency.
async fn phase(
    api: &Arc<Api>,
    users: &[(String, String)],
    rooms: &Arc<Vec<String>>,
    service: &PushService,
    rate: Option<f64>,
    seconds: u64,
) {
    let before = service.received().len();
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tag = rate.map_or("max".to_owned(), |r| format!("r{r}"));
    let tasks: Vec<_> = (0..32)
        .map(|s| {
            let (api, stop, rooms, tag) = (api.clone(), stop.clone(), rooms.clone(), tag.clone());
            let room_idx = s % 10;
            let (_, token) = users[room_idx * 5 + (s / 10) % 5].clone();
            tokio::spawn(async move {
                // Each sender every 32/rate s, the 32 of them spread evenly over that period
                // (in step they would send bursts of 32 messages).
                let mut tick = rate.map(|r| {
                    let period = Duration::from_secs_f64(32.0 / r);
                    let offset = period.mul_f64(s as f64 / 32.0);
                    let mut t =
                        tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
                    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    t
                });
                let mut sent = Vec::new();
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    let at = Instant::now();
                    let txn = format!("{tag}-{s}-{i}");
                    let event = api
                        .send(&token, &rooms[room_idx], &txn, "Blutdruck 120/80")
                        .await;
                    sent.push((event, at));
                    i += 1;
                }
                sent
            })
        })
        .collect();
    let sent = run_for(seconds, &stop, tasks).await;
    let send_secs = started.elapsed().as_secs_f64();
    let expected = sent.len() * 4;
    let got = service
        .wait_for(before + expected, Duration::from_secs(60))
        .await;
    let drained = last_arrival(&got[before..], started);
    let lat = latencies(&got[before..], &sent);
    println!(
        "homeserver → gateway → push service, {}: {:.0} messages/s sent, {} of {expected} pushes delivered, {:.0} pushes/s (over {drained:.1} s); send→push p50 {} p99 {}",
        rate.map_or("senders unthrottled".to_owned(), |r| format!(
            "offered {r:.0} messages/s"
        )),
        sent.len() as f64 / send_secs,
        lat.len(),
        lat.len() as f64 / drained,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
    );
}
