//! Interop with Synapse, an independent implementation (issue 15): `matrix-synapse` from PyPI
//! (a venv made on first run, see `tim_e2e::synapse`) federates with our homeserver over
//! loopback TLS, each checking the other's certificate against the test CA and the other's
//! signatures against its published keys.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tim_e2e::{Store, federation::Net, synapse::Synapse, user::User};

mod common;
use common::{chat_both_ways, encrypted_room, login_url, stored_event, sync_all};

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_on_either_server_are_joined_from_the_other_and_messages_cross_both_ways() {
    let net = Net::new(&[1, 1]);
    let tim = net.homeserver(0, Store::Postgres, &[]).await;
    let synapse = Synapse::start(&net, 1);
    let alice = User::register(&tim.base_url(), "alice").await;
    let sam = User::register(&synapse.base_url(), "sam").await;

    // Our room, with history from before Sam joins; Synapse joins through make/send_join.
    let ours = alice.create_room(json!({"preset": "private_chat"})).await;
    for i in 0..15 {
        alice.send_text(&ours, &format!("before {i}")).await;
    }
    alice.invite(&ours, &sam.user_id).await;
    let invited = sam.sync_invite(WAIT).await;
    assert_eq!(invited, ours, "{}", synapse.log());
    sam.join(&ours, &[net.name(0)]).await;
    alice.send_text(&ours, "hello from tim").await;
    sam.sync_texts(&ours, &["hello from tim"], WAIT).await;
    sam.send_text(&ours, "hello from synapse").await;
    alice.sync_texts(&ours, &["hello from synapse"], WAIT).await;

    // Synapse backfills the history from before its join from us as Sam scrolls up.
    let history = sam.history_texts(&ours).await;
    let expected: Vec<String> = (0..15)
        .map(|i| format!("before {i}"))
        .chain(["hello from tim".into(), "hello from synapse".into()])
        .collect();
    assert_eq!(history, expected, "{}", synapse.log());

    // A Synapse room, joined by our user through our make/send_join.
    let theirs = sam.create_room(json!({"preset": "private_chat"})).await;
    for i in 0..25 {
        sam.send_text(&theirs, &format!("earlier {i}")).await;
    }
    sam.invite(&theirs, &alice.user_id).await;
    let invited = alice.sync_invite(WAIT).await;
    assert_eq!(invited, theirs);
    alice.join(&theirs, &[&synapse.server_name]).await;
    sam.send_text(&theirs, "welcome alice").await;
    alice.sync_texts(&theirs, &["welcome alice"], WAIT).await;
    alice.send_text(&theirs, "thanks sam").await;
    sam.sync_texts(&theirs, &["thanks sam"], WAIT).await;

    // We backfill the history from before our join from Synapse as Alice scrolls up.
    let history = alice.history_texts(&theirs).await;
    let expected: Vec<String> = (0..25)
        .map(|i| format!("earlier {i}"))
        .chain(["welcome alice".into(), "thanks sam".into()])
        .collect();
    assert_eq!(history, expected, "{}", tim.log());

    // Presence both ways (m.presence EDUs): each sees the other's status.
    for (setter, viewer) in [(&alice, &sam), (&sam, &alice)] {
        let status = format!("Sprechstunde {}", setter.user_id);
        setter
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/presence/{}/status", setter.user_id),
                Some(json!({"presence": "online", "status_msg": status})),
            )
            .await;
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let (_, seen) = viewer
                .call(
                    Method::GET,
                    &format!("/_matrix/client/v3/presence/{}/status", setter.user_id),
                    None,
                )
                .await;
            if seen["status_msg"] == status.as_str() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} does not see {}'s presence: {seen}\n{}",
                viewer.user_id,
                setter.user_id,
                synapse.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Both servers agree on the room's members.
    for user in [&alice, &sam] {
        let members = user
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{theirs}/joined_members"),
                None,
            )
            .await;
        let mut ids: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
        ids.sort();
        let mut want = vec![&alice.user_id, &sam.user_id];
        want.sort();
        assert_eq!(ids, want);
    }
    tim.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_chat_between_matrix_sdk_clients_on_ours_and_on_synapse_decrypts_both_ways() {
    let net = Net::new(&[1, 1]);
    let tim = net.homeserver(0, Store::Sqlite, &[]).await;
    let synapse = Synapse::start(&net, 1);
    User::register(&tim.base_url(), "hausarzt").await;
    User::register(&synapse.base_url(), "klinik").await;
    let gp = login_url(&tim.base_url(), "hausarzt").await;
    let doc = login_url(&synapse.base_url(), "klinik").await;
    let everyone = [&gp, &doc];
    sync_all(&everyone).await;

    // The GP opens an encrypted chat with the hospital doctor on Synapse. Both ways, several
    // messages each: keys are queried and claimed across the servers and room keys travel as
    // to-device messages over federation.
    let room = encrypted_room(&gp, &doc).await;
    let sent = chat_both_ways(
        (&gp, &doc),
        &room,
        3,
        (
            |i| format!("Befund {i}: Labor unauffällig"),
            |i| format!("Antwort {i}: danke, Entlassbrief folgt"),
        ),
    )
    .await;
    // Neither server holds the plain text.
    let raw = stored_event(&gp, &room, &sent[1]).await;
    assert!(
        raw.contains("m.room.encrypted") && !raw.contains("Antwort"),
        "{raw}"
    );
    tim.cleanup().await;
}

/// We are down (killed) while a Synapse user writes; after our restart Synapse catches us up
/// and every message is here, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_outage_synapse_catches_us_up_with_every_message_once_in_order() {
    let net = Net::new(&[1, 1]);
    let mut tim = net.homeserver(0, Store::Postgres, &[]).await;
    let synapse = Synapse::start(&net, 1);
    let alice = User::register(&tim.base_url(), "alice").await;
    let sam = User::register(&synapse.base_url(), "sam").await;
    let room = sam.create_room(json!({"preset": "private_chat"})).await;
    sam.invite(&room, &alice.user_id).await;
    assert_eq!(alice.sync_invite(WAIT).await, room);
    alice.join(&room, &[&synapse.server_name]).await;
    sam.send_text(&room, "vor dem Ausfall").await;
    alice.sync_texts(&room, &["vor dem Ausfall"], WAIT).await;

    // We are down while Sam writes 25 messages: after the first, Synapse marks us as
    // unreachable and keeps only a note to catch us up.
    tim.kill9();
    let sent: Vec<String> = (0..25).map(|i| format!("während {i}")).collect();
    sam.send_text(&room, &sent[0]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for text in &sent[1..] {
        sam.send_text(&room, text).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    tim.start_again();
    let last = sent.last().unwrap().as_str();
    alice.sync_texts(&room, &[last], WAIT).await;

    // Everything, once, in order (what did not come with the catch-up comes by backfill).
    let history = alice.history_texts(&room).await;
    let expected: Vec<String> = ["vor dem Ausfall".to_owned()]
        .into_iter()
        .chain(sent.iter().cloned())
        .collect();
    assert_eq!(history, expected, "{}", tim.log());
    tim.cleanup().await;
}
