//! Federation between separate `tim-homeserver` processes over loopback TLS (issue 15), under
//! faults: the receiving server down while messages are sent, and the sending server killed
//! with `kill -9` while its queue for the other is full. A on PostgreSQL, B on SQLite.

use std::time::{Duration, Instant};

use serde_json::json;
use tim_e2e::{Store, federation::Net, user::User};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_other_server_is_down_or_we_crash_arrive_once_and_in_order() {
    let net = Net::new(&[1, 1]);
    let mut a = net.homeserver(0, Store::Postgres, &[]).await;
    let mut b = net.homeserver(1, Store::Sqlite, &[]).await;
    let alice = User::register(&a.base_url(), "alice").await;
    let bob = User::register(&b.base_url(), "bob").await;
    let room = alice.create_room(json!({"preset": "private_chat"})).await;
    alice.invite(&room, &bob.user_id).await;
    assert_eq!(bob.sync_invite(WAIT).await, room);
    bob.join(&room, &[net.name(0)]).await;
    alice.send_text(&room, "hello").await;
    bob.sync_texts(&room, &["hello"], WAIT).await;

    // B is down while A sends 100 messages; B comes back and gets each once, in order.
    b.kill9();
    let first: Vec<String> = (0..100).map(|i| format!("down {i}")).collect();
    for text in &first {
        alice.send_text(&room, text).await;
    }
    b.start_again();
    let back = Instant::now();
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    let seen = bob.sync_texts(&room, &refs, WAIT).await;
    assert_eq!(seen, first, "B:\n{}", b.log());
    eprintln!(
        "100 messages arrived {:?} after B came back",
        back.elapsed()
    );

    // B is down again and A is killed with its queue for B full; after both restart, A's
    // queue (durable, written with each event) drains: each message once, in order.
    b.kill9();
    let second: Vec<String> = (0..100).map(|i| format!("crash {i}")).collect();
    for text in &second {
        alice.send_text(&room, text).await;
    }
    a.kill9();
    b.start_again();
    a.start_again();
    let refs: Vec<&str> = second.iter().map(String::as_str).collect();
    let seen = bob.sync_texts(&room, &refs, WAIT).await;
    assert_eq!(seen, second, "A:\n{}", a.log());
    // And the room goes on both ways.
    bob.send_text(&room, "alles angekommen").await;
    alice.sync_texts(&room, &["alles angekommen"], WAIT).await;
    a.cleanup().await;
    b.cleanup().await;
}
