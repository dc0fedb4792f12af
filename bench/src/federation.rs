//! Federation: two release `tim-homeserver` processes (A, B) over TLS on loopback, and as the
//! reference the same scenario between two Synapse processes (`matrix-synapse` from PyPI, see
//! `tim_e2e::synapse`; skipped with a note when Python or PyPI are missing).
//!
//! - events/s arriving on B from 32 concurrent senders on A, in 8 rooms each shared with a
//!   user on B (time from the first send until B's users have seen the last message);
//! - send → remote sync delivery p50/p99 (200 messages, a long-polling receiver on B);
//! - A's RSS while B is down and A's users send 100,000 messages to it (Synapse: 2,000),
//!   and how long B takes to catch up after it comes back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::json;
use tim_e2e::{Server, Store, federation::Net, synapse::Synapse, user::User};

use crate::{ms, percentile, rss_kib};

const ROOMS: usize = 8;
const SENDERS_PER_ROOM: usize = 4;
/// Messages sent to B while it is down (`BENCH_OUTAGE_EVENTS` overrides).
const OUTAGE_EVENTS: u64 = 100_000;

/// Messages sent to a Synapse B while it is down (`BENCH_SYNAPSE_OUTAGE_EVENTS` overrides).
fn synapse_outage_events() -> u64 {
    std::env::var("BENCH_SYNAPSE_OUTAGE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn outage_events() -> u64 {
    std::env::var("BENCH_OUTAGE_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(OUTAGE_EVENTS)
}
const WAIT: Duration = Duration::from_secs(600);

/// One side's users: the senders on A (per room) and the receiver on B (per room).
struct Setup {
    senders: Vec<Vec<Arc<User>>>,
    receivers: Vec<Arc<User>>,
    rooms: Vec<String>,
}

async fn setup(a_base: &str, b_base: &str, a_name: &str, tag: &str) -> Setup {
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        let mut in_room = Vec::new();
        for s in 0..SENDERS_PER_ROOM {
            in_room.push(Arc::new(
                User::register(a_base, &format!("{tag}s{r}x{s}")).await,
            ));
        }
        let receiver = Arc::new(User::register(b_base, &format!("{tag}r{r}")).await);
        let room = in_room[0]
            .create_room(json!({"preset": "private_chat"}))
            .await;
        for s in &in_room[1..] {
            in_room[0].invite(&room, &s.user_id).await;
            s.join(&room, &[]).await;
        }
        in_room[0].invite(&room, &receiver.user_id).await;
        receiver.sync_invite(WAIT).await;
        receiver.join(&room, &[a_name]).await;
        // Position the receiver's sync after its join.
        receiver.sync(0).await;
        senders.push(in_room);
        receivers.push(receiver);
        rooms.push(room);
    }
    Setup {
        senders,
        receivers,
        rooms,
    }
}

/// 32 senders send for `seconds`, then each room gets an end marker; returns the number sent
/// (markers included) and when B's receivers had seen every marker, from the first send.
async fn send_and_await(set: &Setup, seconds: u64, marker: &str) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (r, in_room) in set.senders.iter().enumerate() {
        for s in in_room {
            let (s, room, stop, sent) =
                (s.clone(), set.rooms[r].clone(), stop.clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    s.send_text(&room, &format!("Befund {i}")).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            }));
        }
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    for (r, room) in set.rooms.iter().enumerate() {
        set.senders[r][0].send_text(room, marker).await;
    }
    await_markers(set, marker).await;
    (
        sent.load(Ordering::Relaxed) + ROOMS as u64,
        started.elapsed(),
    )
}

/// Until every receiver on B has seen `marker` in its room.
async fn await_markers(set: &Setup, marker: &str) {
    let waits = set
        .receivers
        .iter()
        .zip(&set.rooms)
        .map(|(rcv, room)| async move {
            rcv.sync_texts(room, &[marker], WAIT).await;
        });
    futures::future::join_all(waits).await;
}

/// Send → remote sync: one sender on A, B's receiver long-polling.
async fn delivery(set: &Setup) -> (Duration, Duration) {
    let (sender, receiver, room) = (&set.senders[0][0], &set.receivers[0], &set.rooms[0]);
    let mut times = Vec::new();
    for i in 0..200 {
        let text = format!("ping {i}");
        let wait = async {
            let t = Instant::now();
            receiver.sync_texts(room, &[text.as_str()], WAIT).await;
            t
        };
        let send = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let t = Instant::now();
            sender.send_text(room, &text).await;
            t
        };
        let (_, sent_at) = tokio::join!(wait, send);
        times.push(sent_at.elapsed());
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

pub async fn bench(store: Store, seconds: u64) {
    let net = Net::new(&[1, 1]);
    let env = [("TIM_LOG_LEVEL", "warn")];
    let a = net.homeserver(0, store, &env).await;
    let mut b = net.homeserver(1, store, &env).await;
    let set = setup(&a.base_url(), &b.base_url(), net.name(0), "t").await;
    let (n, took) = send_and_await(&set, seconds, "ende").await;
    println!(
        "federation ({store:?}): {:.0} events/s arriving on B from 32 senders on A ({n} events in {:.1} s)",
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let (p50, p99) = delivery(&set).await;
    println!(
        "federation ({store:?}): send → remote sync p50 {} p99 {}",
        ms(p50),
        ms(p99)
    );
    outage(&a, &mut b, &set).await;
    cleanup(a, b).await;
    synapse_reference(seconds).await;
}

/// B down while A's users send `OUTAGE_EVENTS`: A's memory, then B's catch-up.
async fn outage(a: &Server, b: &mut Server, set: &Setup) {
    let before = rss_kib(a.pid());
    b.kill9();
    let peak = Arc::new(AtomicU64::new(before));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, stop, pid) = (peak.clone(), stop.clone(), a.pid());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let started = Instant::now();
    // Sent without awaiting B: the markers' wait starts after B is back.
    let events = outage_events();
    send_all(set, events).await;
    let sent_in = started.elapsed();
    let during = rss_kib(a.pid());
    b.start_again();
    let back = Instant::now();
    await_markers(set, "nach dem Ausfall").await;
    stop.store(true, Ordering::Relaxed);
    sampler.await.unwrap();
    println!(
        "federation: B down while A sent {events} messages ({:.0}/s): A's RSS {before} KiB before, {during} KiB after, peak {} KiB; B caught up {:.1} s after it came back ({:.0} events/s)",
        events as f64 / sent_in.as_secs_f64(),
        peak.load(Ordering::Relaxed),
        back.elapsed().as_secs_f64(),
        events as f64 / back.elapsed().as_secs_f64()
    );
}

/// Sends `total` messages from all senders, then a marker per room.
async fn send_all(set: &Setup, total: u64) {
    let sent = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (r, in_room) in set.senders.iter().enumerate() {
        for s in in_room {
            let (s, room, sent) = (s.clone(), set.rooms[r].clone(), sent.clone());
            tasks.push(tokio::spawn(async move {
                while sent.fetch_add(1, Ordering::Relaxed) < total {
                    s.send_text(&room, "Laborwert").await;
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    for (r, room) in set.rooms.iter().enumerate() {
        set.senders[r][0].send_text(room, "nach dem Ausfall").await;
    }
}

async fn cleanup(a: Server, b: Server) {
    a.cleanup().await;
    b.cleanup().await;
}

/// The same throughput and latency between two Synapse processes.
async fn synapse_reference(seconds: u64) {
    let installed = std::panic::catch_unwind(tim_e2e::synapse::python);
    if installed.is_err() {
        println!("federation, Synapse reference: skipped (Synapse could not be installed)");
        return;
    }
    let net = Net::new(&[1, 1]);
    let sa = Synapse::start(&net, 0);
    let mut sb = Synapse::start(&net, 1);
    let set = setup(&sa.base_url(), &sb.base_url(), &sa.server_name, "s").await;
    let (n, took) = send_and_await(&set, seconds, "ende").await;
    println!(
        "federation, Synapse {} → Synapse: {:.0} events/s arriving ({n} events in {:.1} s)",
        tim_e2e::synapse::VERSION,
        n as f64 / took.as_secs_f64(),
        took.as_secs_f64()
    );
    let (p50, p99) = delivery(&set).await;
    println!(
        "federation, Synapse → Synapse: send → remote sync p50 {} p99 {}",
        ms(p50),
        ms(p99)
    );
    synapse_outage(&sa, &mut sb, &set).await;
    drop((sa, sb));
}

/// The outage scenario between Synapses: B killed while A's users send it
/// `synapse_outage_events()` messages (fewer than ours: Synapse takes them at tens per
/// second), A's RSS, and how long until B's users see the end markers after B is back.
async fn synapse_outage(a: &Synapse, b: &mut Synapse, set: &Setup) {
    let before = rss_kib(a.pid());
    b.kill9();
    let events = synapse_outage_events();
    let started = Instant::now();
    send_all(set, events).await;
    let sent_in = started.elapsed();
    let during = rss_kib(a.pid());
    b.start_again();
    let back = Instant::now();
    await_markers(set, "nach dem Ausfall").await;
    println!(
        "federation, Synapse: B down while A sent {events} messages ({:.0}/s): A's RSS {before} KiB before, {during} KiB after; B's users saw the last messages {:.1} s after it came back",
        events as f64 / sent_in.as_secs_f64(),
        back.elapsed().as_secs_f64()
    );
}
