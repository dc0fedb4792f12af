//! End-to-end encryption with a stock client library (`matrix-sdk` with vodozemac inside)
//! against the real binary, on SQLite and on PostgreSQL: two doctors with two devices each chat
//! in an encrypted room and every message decrypts on every device; a device signed in later
//! reads the history through the server-side key backup, another through key forwarding from
//! the user's first device; a deleted device gets no more room keys; cross-signing set up on
//! one side is visible on the other.

use std::time::Duration;

use matrix_sdk::{
    Client,
    encryption::LocalTrust,
    ruma::api::client::uiaa::{self, AuthData},
};
use tim_e2e::{STORES, Server};

mod common;
use common::{
    PASSWORD, encrypted_room, new_client, register, send, stored_event, sync_all, sync_once,
    text_of, wait_decrypted,
};

async fn login(server: &Server, name: &str) -> Client {
    let c = new_client(server).await;
    c.matrix_auth()
        .login_username(name, PASSWORD)
        .send()
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_chat_with_matrix_sdk_on_both_stores() {
    for store in STORES {
        let server = Server::start(store);
        encrypted_chat(&server).await;
        server.cleanup().await;
    }
}

async fn encrypted_chat(server: &Server) {
    // Two doctors, two devices each.
    let alice = register(server, "alice").await;
    let bob = register(server, "bob").await;
    let alice2 = login(server, "alice").await;
    let bob2 = login(server, "bob").await;
    let everyone = [&alice, &alice2, &bob, &bob2];
    sync_all(&everyone).await;
    let room = encrypted_room(&alice, &bob).await;
    sync_all(&everyone).await;
    assert!(
        alice
            .get_room(&room)
            .unwrap()
            .latest_encryption_state()
            .await
            .unwrap()
            .is_encrypted()
    );

    // Every message, from any device, decrypts on every other device.
    let mut sent = Vec::new();
    for (i, sender) in everyone.iter().enumerate() {
        let text = format!("Befund {i}: bitte Rückruf");
        sync_all(&everyone).await;
        sent.push((send(sender, &room, &text).await, text));
    }
    for (event, text) in &sent {
        for reader in everyone {
            assert_eq!(&wait_decrypted(&everyone, reader, &room, event).await, text);
        }
    }
    // The server stored only ciphertext.
    let raw = stored_event(&bob, &room, &sent[0].0).await;
    assert!(
        raw.contains("m.room.encrypted") && !raw.contains("Befund"),
        "{raw}"
    );

    // Cross-signing: Alice bootstraps; Bob sees her identity.
    alice
        .encryption()
        .bootstrap_cross_signing(Some(AuthData::Password(uiaa::Password::new(
            uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new("alice".into())),
            PASSWORD.into(),
        ))))
        .await
        .unwrap();
    sync_all(&everyone).await;
    let identity = bob
        .encryption()
        .request_user_identity(alice.user_id().unwrap())
        .await
        .unwrap();
    assert!(
        identity.is_some(),
        "Bob does not see Alice's cross-signing identity"
    );
    let own = alice.encryption().get_own_device().await.unwrap().unwrap();
    assert!(
        own.is_cross_signed_by_owner(),
        "Alice's device is not signed by her identity"
    );

    // Key backup: Alice enables recovery; her device signed in later reads the history.
    let recovery_key = alice.encryption().recovery().enable().await.unwrap();
    alice
        .encryption()
        .backups()
        .wait_for_steady_state()
        .await
        .unwrap();
    let alice3 = login(server, "alice").await;
    sync_once(&alice3).await;
    // Without the backup the new device has no keys for what was said before it existed.
    assert_eq!(text_of(&alice3, &room, &sent[0].0).await, None);
    alice3
        .encryption()
        .recovery()
        .recover(&recovery_key)
        .await
        .unwrap();
    for (event, text) in &sent {
        let mut got = None;
        for _ in 0..40 {
            sync_once(&alice3).await;
            if let Some(t) = text_of(&alice3, &room, event).await {
                got = Some(t);
                break;
            }
            let _ = alice3
                .encryption()
                .backups()
                .download_room_keys_for_room(&room)
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(
            got.as_ref(),
            Some(text),
            "history not readable on a new device"
        );
    }

    // Key forwarding: Bob's device signed in later asks his first device for the room keys
    // (m.room_key_request) and gets them (m.forwarded_room_key), both as to-device messages.
    // Clients forward only between own devices they trust, so both trust each other first.
    let bob3 = login(server, "bob").await;
    let bob_id = bob.user_id().unwrap().to_owned();
    let (bob1_id, bob3_id) = (
        bob.device_id().unwrap().to_owned(),
        bob3.device_id().unwrap().to_owned(),
    );
    for (client, other) in [(&bob, &bob3_id), (&bob3, &bob1_id)] {
        let mut device = None;
        for _ in 0..40 {
            sync_all(&[&bob, &bob3]).await;
            device = client
                .encryption()
                .get_device(&bob_id, other)
                .await
                .unwrap();
            if device.is_some() {
                break;
            }
        }
        device
            .expect("Bob's devices see each other")
            .set_local_trust(LocalTrust::Verified)
            .await
            .unwrap();
    }
    let (event, text) = &sent[0];
    // The failed decryption sends the key request.
    assert_eq!(text_of(&bob3, &room, event).await, None);
    assert_eq!(
        wait_decrypted(&[&bob3, &bob], &bob3, &room, event).await,
        *text,
        "history not readable through key forwarding"
    );

    // A deleted device disappears from Alice's view of Bob and gets no more room keys.
    let bob2_id = bob2.device_id().unwrap().to_owned();
    let bob2_token = bob2.access_token().unwrap();
    // User-interactive auth: the first call is answered with the password stage.
    let challenge = bob
        .delete_devices(std::slice::from_ref(&bob2_id), None)
        .await
        .unwrap_err();
    let mut password = uiaa::Password::new(
        uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new("bob".into())),
        PASSWORD.into(),
    );
    password.session = challenge.as_uiaa_response().and_then(|i| i.session.clone());
    bob.delete_devices(
        std::slice::from_ref(&bob2_id),
        Some(AuthData::Password(password)),
    )
    .await
    .unwrap();
    sync_all(&[&alice, &bob]).await;
    let devices = alice
        .encryption()
        .get_user_devices(bob.user_id().unwrap())
        .await
        .unwrap();
    assert!(
        devices.get(&bob2_id).is_none(),
        "a deleted device is still listed"
    );
    let after = send(&alice, &room, "nach dem Abmelden").await;
    assert_eq!(
        wait_decrypted(&[&alice, &bob], &bob, &room, &after).await,
        "nach dem Abmelden"
    );
    // The deleted device's token is dead; its inbox is gone with it.
    let status = reqwest::Client::new()
        .get(format!(
            "{}/_matrix/client/v3/sync?timeout=0",
            server.base_url()
        ))
        .bearer_auth(bob2_token)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 401);
}
