//! End-to-end encryption support over HTTP on both stores: device keys (signature checked),
//! one-time and fallback keys (each one-time key handed out once, also under concurrency),
//! device lists in sync and `/keys/changes`, to-device messages, device deletion.

mod common;

use std::collections::BTreeSet;

use base64::Engine;
use common::{Client, STORES, TestServer};
use reqwest::Method;
use ruma::{
    CanonicalJsonObject,
    signatures::{Ed25519KeyPair, sign_json},
};
use serde_json::{Value, json};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// A device's signing key, as its client holds it.
struct Device {
    pair: Ed25519KeyPair,
    user: String,
    device: String,
}

impl Device {
    fn of(client: &Client) -> Self {
        let doc = Ed25519KeyPair::generate();
        Device {
            pair: Ed25519KeyPair::from_der(&doc, client.device_id.clone()).unwrap(),
            user: client.user_id.clone(),
            device: client.device_id.clone(),
        }
    }

    fn public(&self) -> String {
        B64.encode(self.pair.public_key())
    }

    fn sign(&self, v: Value) -> Value {
        let mut object: CanonicalJsonObject = serde_json::from_value(v).unwrap();
        sign_json(&self.user, &self.pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    }

    fn device_keys(&self) -> Value {
        self.sign(json!({
            "user_id": self.user,
            "device_id": self.device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": {
                format!("curve25519:{}", self.device): B64.encode([7u8; 32]),
                format!("ed25519:{}", self.device): self.public(),
            },
        }))
    }

    /// `n` signed one-time keys named `{prefix}{i}`.
    fn one_time_keys(&self, prefix: &str, n: usize) -> Value {
        let mut keys = serde_json::Map::new();
        for i in 0..n {
            keys.insert(
                format!("signed_curve25519:{prefix}{i}"),
                self.sign(json!({"key": B64.encode([i as u8; 32])})),
            );
        }
        Value::Object(keys)
    }
}

async fn upload(client: &Client, body: Value) -> Value {
    client
        .ok(Method::POST, "/_matrix/client/v3/keys/upload", Some(body))
        .await
}

async fn claim(client: &Client, user: &str, device: &str) -> Value {
    client
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/claim",
            Some(json!({"one_time_keys": {user: {device: "signed_curve25519"}}})),
        )
        .await["one_time_keys"][user][device]
        .clone()
}

fn listed(sync: &Value, list: &str, user: &str) -> bool {
    sync["device_lists"][list]
        .as_array()
        .is_some_and(|a| a.iter().any(|u| u == user))
}

async fn encrypted_pair(server: &TestServer) -> (Client, Client, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "invite": [bob.user_id],
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }))
        .await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
    )
    .await;
    (alice, bob, room)
}

#[tokio::test]
async fn device_keys_and_claims_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, room) = encrypted_pair(&server).await;
        let dev = Device::of(&alice);
        let bob_start = bob.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();

        // Bad input first: nothing of it may be stored.
        let mut forged = dev.device_keys();
        forged["keys"][format!("curve25519:{}", dev.device)] = json!(B64.encode([9u8; 32]));
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/keys/upload",
                Some(json!({"device_keys": forged})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let other = Device {
            pair: Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), "OTHER".into()).unwrap(),
            user: alice.user_id.clone(),
            device: "OTHER".into(),
        };
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/keys/upload",
                Some(json!({"device_keys": other.device_keys()})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/keys/upload",
                Some(json!({"device_keys": {"user_id": alice.user_id}})),
                400,
                "M_BAD_JSON",
            )
            .await;
        let mut bad_otk = dev.one_time_keys("X", 1);
        bad_otk["signed_curve25519:X0"]["key"] = json!(B64.encode([1u8; 32]));
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/keys/upload",
                Some(json!({"device_keys": dev.device_keys(), "one_time_keys": bad_otk})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let q = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(json!({"device_keys": {alice.user_id.clone(): []}})),
            )
            .await;
        assert_eq!(q["device_keys"][&alice.user_id], json!({}), "{q}");

        // Keys, three one-time keys and a fallback key.
        let fallback = dev.one_time_keys("F", 1);
        let r = upload(&alice, json!({"device_keys": dev.device_keys(), "one_time_keys": dev.one_time_keys("A", 3), "fallback_keys": fallback})).await;
        assert_eq!(r["one_time_key_counts"]["signed_curve25519"], 3);
        // Uploading the same key id again keeps the first (no duplicate to hand out).
        let r = upload(&alice, json!({"one_time_keys": dev.one_time_keys("A", 1)})).await;
        assert_eq!(r["one_time_key_counts"]["signed_curve25519"], 3);

        // Bob learns of Alice's new device from his sync and from /keys/changes.
        let s = bob.sync(Some(&bob_start), 0).await;
        assert!(listed(&s, "changed", &alice.user_id), "{s}");
        let now = s["next_batch"].as_str().unwrap().to_owned();
        let c = bob
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/keys/changes?from={bob_start}&to={now}"),
                None,
            )
            .await;
        assert!(
            c["changed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|u| u == alice.user_id.as_str())
        );

        let q = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(
                    json!({"device_keys": {alice.user_id.clone(): [], "@x:elsewhere.example": []}}),
                ),
            )
            .await;
        let keys = &q["device_keys"][&alice.user_id][&alice.device_id];
        assert_eq!(
            keys["keys"][format!("ed25519:{}", dev.device)],
            dev.public()
        );
        assert!(keys["signatures"][&alice.user_id].is_object());
        assert!(q["failures"]["elsewhere.example"].is_object(), "{q}");

        // Three claims, three different keys; then the fallback key, again and again.
        let mut seen = BTreeSet::new();
        for _ in 0..3 {
            let k = claim(&bob, &alice.user_id, &alice.device_id).await;
            let id = k.as_object().unwrap().keys().next().unwrap().clone();
            assert!(id.starts_with("signed_curve25519:A"), "{id}");
            assert!(seen.insert(id));
        }
        let s = alice.sync(None, 0).await;
        assert_eq!(s["device_one_time_keys_count"]["signed_curve25519"], 0);
        assert_eq!(
            s["device_unused_fallback_key_types"],
            json!(["signed_curve25519"])
        );
        for _ in 0..2 {
            let k = claim(&bob, &alice.user_id, &alice.device_id).await;
            assert!(k.get("signed_curve25519:F0").is_some(), "{k}");
        }
        let s = alice.sync(None, 0).await;
        assert_eq!(s["device_unused_fallback_key_types"], json!([]));
        // Unknown users and devices: nothing, and no error.
        let r = bob
            .ok(Method::POST, "/_matrix/client/v3/keys/claim", Some(json!({"one_time_keys": {"@nobody:x.test": {"D": "signed_curve25519"}, alice.user_id.clone(): {"NODEVICE": "signed_curve25519"}}})))
            .await;
        assert_eq!(r["one_time_keys"], json!({}), "{r}");

        // Alice signs in a second device and deletes the first: Bob hears of it, and the
        // deleted device's keys are gone.
        let mut alice2 = server.client();
        let login = alice2
            .ok(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw"})))
            .await;
        alice2.adopt(&login);
        let before = bob.sync(Some(&now), 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        alice2
            .ok(Method::DELETE, &format!("/_matrix/client/v3/devices/{}", alice.device_id), Some(json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw"}})))
            .await;
        let s = bob.sync(Some(&before), 0).await;
        assert!(listed(&s, "changed", &alice.user_id), "{s}");
        let q = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(json!({"device_keys": {alice.user_id.clone(): []}})),
            )
            .await;
        assert_eq!(q["device_keys"][&alice.user_id], json!({}));
        assert_eq!(
            claim(&bob, &alice.user_id, &alice.device_id).await,
            Value::Null
        );

        // Bob leaves: Alice no longer shares a room with him.
        let a_before = alice2.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(json!({})),
        )
        .await;
        let s = alice2.sync(Some(&a_before), 0).await;
        assert!(listed(&s, "left", &bob.user_id), "{s}");
        server.stop().await;
    }
}

#[tokio::test]
async fn to_device_messages_are_delivered_once_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let start = bob.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let send = |txn: String, device: String, n: i64| {
            let (alice, bob_user) = (alice.clone(), bob.user_id.clone());
            async move {
                alice
                    .ok(
                        Method::PUT,
                        &format!("/_matrix/client/v3/sendToDevice/m.room_key_request/{txn}"),
                        Some(json!({"messages": {bob_user: {device: {"n": n}}}})),
                    )
                    .await
            }
        };
        send("t1".into(), bob.device_id.clone(), 1).await;
        send("t2".into(), "*".into(), 2).await;
        // A retried transaction is not queued twice.
        send("t2".into(), "*".into(), 2).await;
        let s = bob.sync(Some(&start), 0).await;
        let events = s["to_device"]["events"].as_array().unwrap();
        assert_eq!(events.len(), 2, "{s}");
        assert_eq!(events[0]["content"]["n"], 1);
        assert_eq!(events[0]["sender"], alice.user_id.as_str());
        assert_eq!(events[0]["type"], "m.room_key_request");
        assert_eq!(events[1]["content"]["n"], 2);
        // The same token again (the answer was lost): delivered again.
        let again = bob.sync(Some(&start), 0).await;
        assert_eq!(again["to_device"]["events"].as_array().unwrap().len(), 2);
        // The next token acknowledges them: gone.
        let next = s["next_batch"].as_str().unwrap().to_owned();
        let s = bob.sync(Some(&next), 0).await;
        assert!(
            s["to_device"]["events"]
                .as_array()
                .is_none_or(|a| a.is_empty()),
            "{s}"
        );

        // More than one sync carries: the rest come with the next, in order, none twice.
        for i in 0..130 {
            send(format!("b{i}"), bob.device_id.clone(), i).await;
        }
        let mut token = s["next_batch"].as_str().unwrap().to_owned();
        let mut got = Vec::new();
        for _ in 0..3 {
            let s = bob.sync(Some(&token), 0).await;
            for e in s["to_device"]["events"].as_array().into_iter().flatten() {
                got.push(e["content"]["n"].as_i64().unwrap());
            }
            token = s["next_batch"].as_str().unwrap().to_owned();
        }
        assert_eq!(got, (0..130).collect::<Vec<_>>());

        // A long-polling sync wakes for a to-device message.
        let waiter = {
            let (bob, token) = (bob.clone(), token.clone());
            tokio::spawn(async move { bob.sync(Some(&token), 10_000).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let t0 = std::time::Instant::now();
        send("late".into(), bob.device_id.clone(), 999).await;
        let s = waiter.await.unwrap();
        assert!(t0.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(s["to_device"]["events"][0]["content"]["n"], 999);

        // Bad input.
        alice
            .err(
                Method::PUT,
                "/_matrix/client/v3/sendToDevice/m.x/bad",
                Some(json!({"messages": {bob.user_id.clone(): {"*": "not an object"}}})),
                400,
                "M_BAD_JSON",
            )
            .await;
        server.stop().await;
    }
}

/// 50 devices upload keys while 32 claimers claim them: every one-time key is handed out
/// exactly once, the rest of the claims get the fallback key.
#[tokio::test]
async fn concurrent_claims_hand_out_each_key_once_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let mut devices = Vec::new();
        for i in 0..50 {
            let c = server.register(&format!("d{i}")).await;
            let d = Device::of(&c);
            devices.push((c, d));
        }
        let claimer = server.register("claimer").await;
        let uploads = devices.iter().map(|(c, d)| {
            upload(c, json!({"device_keys": d.device_keys(), "one_time_keys": d.one_time_keys("K", 10), "fallback_keys": d.one_time_keys("F", 1)}))
        });
        futures::future::join_all(uploads).await;
        let targets: Vec<(String, String)> = devices
            .iter()
            .map(|(c, _)| (c.user_id.clone(), c.device_id.clone()))
            .collect();
        let claims = (0..32).map(|worker| {
            let (claimer, targets) = (claimer.clone(), targets.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                // Each worker claims from every device, 20 rounds in all across workers.
                for round in 0..(50 * 20 / 32 + 1) {
                    let (user, device) = &targets[(worker * 7 + round) % targets.len()];
                    let k = claim(&claimer, user, device).await;
                    for id in k.as_object().into_iter().flat_map(|o| o.keys()) {
                        got.push(format!("{device}/{id}"));
                    }
                }
                got
            })
        });
        let mut otks = Vec::new();
        let mut fallbacks = 0;
        for r in futures::future::join_all(claims).await {
            for id in r.unwrap() {
                if id.ends_with(":F0") {
                    fallbacks += 1;
                } else {
                    otks.push(id);
                }
            }
        }
        let distinct: BTreeSet<&String> = otks.iter().collect();
        assert_eq!(
            distinct.len(),
            otks.len(),
            "a one-time key was handed out twice"
        );
        // Counts agree with what was handed out.
        let mut left = 0;
        for (c, _) in &devices {
            left += c.sync(None, 0).await["device_one_time_keys_count"]["signed_curve25519"]
                .as_u64()
                .unwrap();
        }
        assert_eq!(otks.len() as u64 + left, 500);
        assert_eq!(otks.len() + fallbacks, 32 * (50 * 20 / 32 + 1));
        server.stop().await;
    }
}
