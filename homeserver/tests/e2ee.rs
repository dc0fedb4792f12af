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

        // Renaming a device is a change too (the name travels in its keys).
        let before = bob.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        alice2
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/devices/{}", alice2.device_id),
                Some(json!({"display_name": "Praxis-PC"})),
            )
            .await;
        assert!(listed(
            &bob.sync(Some(&before), 0).await,
            "changed",
            &alice.user_id
        ));

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
/// exactly once, the rest of the claims get the fallback key, and the counts add up.
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
        // Half the keys first; the other half arrives while the claims run.
        let uploads = devices.iter().map(|(c, d)| {
            upload(c, json!({"device_keys": d.device_keys(), "one_time_keys": d.one_time_keys("K", 5), "fallback_keys": d.one_time_keys("F", 1)}))
        });
        futures::future::join_all(uploads).await;
        let more = devices
            .iter()
            .map(|(c, d)| upload(c, json!({"one_time_keys": d.one_time_keys("L", 5)})));
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
        let (_, claimed) = tokio::join!(
            futures::future::join_all(more),
            futures::future::join_all(claims)
        );
        for r in claimed {
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

fn backup_key(
    first_message_index: u64,
    forwarded_count: u64,
    is_verified: bool,
    tag: &str,
) -> Value {
    json!({
        "first_message_index": first_message_index,
        "forwarded_count": forwarded_count,
        "is_verified": is_verified,
        "session_data": {"ephemeral": B64.encode(tag), "ciphertext": B64.encode(tag), "mac": B64.encode(tag)},
    })
}

#[tokio::test]
async fn key_backup_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let room = "!room:example.test";
        let keys = |v: &str| format!("/_matrix/client/v3/room_keys/keys?version={v}");
        let session = |v: &str| format!("/_matrix/client/v3/room_keys/keys/{room}/s1?version={v}");
        alice
            .err(
                Method::GET,
                "/_matrix/client/v3/room_keys/version",
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        alice
            .err(
                Method::PUT,
                &keys("1"),
                Some(json!({"rooms": {}})),
                404,
                "M_NOT_FOUND",
            )
            .await;
        let algorithm = json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": {"public_key": "cHVibGlj", "signatures": {}}});
        let v1 = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/room_keys/version",
                Some(algorithm.clone()),
            )
            .await["version"]
            .as_str()
            .unwrap()
            .to_owned();
        let info = alice
            .ok(Method::GET, "/_matrix/client/v3/room_keys/version", None)
            .await;
        assert_eq!(
            (info["version"].as_str(), info["count"].as_u64()),
            (Some(v1.as_str()), Some(0))
        );
        assert_eq!(info["auth_data"]["public_key"], "cHVibGlj");

        let put = |key: Value| {
            let (alice, path) = (alice.clone(), session(&v1));
            async move { alice.ok(Method::PUT, &path, Some(key)).await }
        };
        let r = put(backup_key(5, 1, false, "a")).await;
        assert_eq!(r["count"], 1);
        let etag = r["etag"].clone();
        // Worse (later first index, unverified): kept out, etag unchanged.
        assert_eq!(put(backup_key(10, 0, false, "b")).await["etag"], etag);
        // Verified beats unverified, whatever the index.
        assert_ne!(put(backup_key(10, 0, true, "c")).await["etag"], etag);
        put(backup_key(0, 0, false, "d")).await;
        let stored = alice.ok(Method::GET, &session(&v1), None).await;
        assert_eq!(
            (
                stored["is_verified"].as_bool(),
                stored["first_message_index"].as_u64()
            ),
            (Some(true), Some(10))
        );
        // Same verification: the lower index wins, then the lower forwarded count.
        put(backup_key(3, 2, true, "e")).await;
        put(backup_key(3, 1, true, "f")).await;
        let stored = alice.ok(Method::GET, &session(&v1), None).await;
        assert_eq!(stored["session_data"]["ciphertext"], B64.encode("f"));
        assert_eq!(stored["forwarded_count"], 1);

        // Whole-backup and per-room writes and reads.
        let r = alice
            .ok(Method::PUT, &keys(&v1), Some(json!({"rooms": {room: {"sessions": {"s2": backup_key(0, 0, false, "g")}}, "!other:example.test": {"sessions": {"s3": backup_key(0, 0, false, "h")}}}})))
            .await;
        assert_eq!(r["count"], 3);
        let all = alice.ok(Method::GET, &keys(&v1), None).await;
        assert_eq!(all["rooms"][room]["sessions"].as_object().unwrap().len(), 2);
        let one_room = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/room_keys/keys/{room}?version={v1}"),
                None,
            )
            .await;
        assert_eq!(one_room["sessions"].as_object().unwrap().len(), 2);

        // Bad input: nothing stored.
        alice
            .err(
                Method::PUT,
                &session(&v1),
                Some(json!({"first_message_index": 0})),
                400,
                "M_BAD_JSON",
            )
            .await;
        alice
            .err(
                Method::GET,
                "/_matrix/client/v3/room_keys/keys?version=99",
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;

        // A new version becomes current: writes to the old one are refused with the current one.
        let v2 = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/room_keys/version",
                Some(algorithm.clone()),
            )
            .await["version"]
            .as_str()
            .unwrap()
            .to_owned();
        let e = alice
            .err(
                Method::PUT,
                &session(&v1),
                Some(backup_key(0, 0, true, "i")),
                403,
                "M_WRONG_ROOM_KEYS_VERSION",
            )
            .await;
        assert_eq!(e["current_version"], v2.as_str());
        // Auth data can change, the algorithm cannot.
        let mut changed = algorithm.clone();
        changed["auth_data"]["public_key"] = json!("bmV3");
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/room_keys/version/{v2}"),
                Some(changed),
            )
            .await;
        assert_eq!(
            alice
                .ok(
                    Method::GET,
                    &format!("/_matrix/client/v3/room_keys/version/{v2}"),
                    None
                )
                .await["auth_data"]["public_key"],
            "bmV3"
        );
        alice
            .err(
                Method::PUT,
                &format!("/_matrix/client/v3/room_keys/version/{v2}"),
                Some(json!({"algorithm": "m.other", "auth_data": {}})),
                400,
                "M_INVALID_PARAM",
            )
            .await;

        // Deleting keys and versions.
        alice
            .ok(
                Method::PUT,
                &session(&v2),
                Some(backup_key(0, 0, true, "j")),
            )
            .await;
        let r = alice.ok(Method::DELETE, &session(&v2), None).await;
        assert_eq!(r["count"], 0);
        alice
            .ok(
                Method::DELETE,
                &format!("/_matrix/client/v3/room_keys/version/{v2}"),
                None,
            )
            .await;
        alice
            .err(
                Method::GET,
                &format!("/_matrix/client/v3/room_keys/version/{v2}"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        // The older version is current again; another user sees none of it.
        let info = alice
            .ok(Method::GET, "/_matrix/client/v3/room_keys/version", None)
            .await;
        assert_eq!(info["version"], v1.as_str());
        assert_eq!(info["count"], 3);
        let bob = server.register("bob").await;
        bob.err(Method::GET, &keys(&v1), None, 404, "M_NOT_FOUND")
            .await;
        server.stop().await;
    }
}

/// A cross-signing key pair: its id is its public key.
fn cross_signing_pair() -> (Ed25519KeyPair, String) {
    let doc = Ed25519KeyPair::generate();
    let public = B64.encode(
        Ed25519KeyPair::from_der(&doc, "x".into())
            .unwrap()
            .public_key(),
    );
    (
        Ed25519KeyPair::from_der(&doc, public.clone()).unwrap(),
        public,
    )
}

fn cross_signing_key(user: &str, usage: &str, public: &str) -> Value {
    json!({"user_id": user, "usage": [usage], "keys": {format!("ed25519:{public}"): public}})
}

fn signed_by(user: &str, pair: &Ed25519KeyPair, v: Value) -> Value {
    let mut object: CanonicalJsonObject = serde_json::from_value(v).unwrap();
    sign_json(user, pair, &mut object).unwrap();
    serde_json::to_value(object).unwrap()
}

#[tokio::test]
async fn cross_signing_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let (alice, bob, _room) = encrypted_pair(&server).await;
        let dev = Device::of(&alice);
        upload(&alice, json!({"device_keys": dev.device_keys()})).await;
        let a = alice.user_id.as_str();
        let (master, master_pub) = cross_signing_pair();
        let (ssk, ssk_pub) = cross_signing_pair();
        let (usk, usk_pub) = cross_signing_pair();
        let upload_path = "/_matrix/client/v3/keys/device_signing/upload";
        // A self-signing key the master key did not sign is refused.
        alice
            .err(Method::POST, upload_path, Some(json!({"master_key": cross_signing_key(a, "master", &master_pub), "self_signing_key": cross_signing_key(a, "self_signing", &ssk_pub)})), 400, "M_INVALID_PARAM")
            .await;
        // First upload: no password needed.
        let keys = json!({
            "master_key": cross_signing_key(a, "master", &master_pub),
            "self_signing_key": signed_by(a, &master, cross_signing_key(a, "self_signing", &ssk_pub)),
            "user_signing_key": signed_by(a, &master, cross_signing_key(a, "user_signing", &usk_pub)),
        });
        alice
            .ok(Method::POST, upload_path, Some(keys.clone()))
            .await;
        // Bob sees the master and self-signing keys, not the user-signing key.
        let query = json!({"device_keys": {a: []}});
        let q = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(query.clone()),
            )
            .await;
        assert_eq!(
            q["master_keys"][a]["keys"][format!("ed25519:{master_pub}")],
            master_pub.as_str()
        );
        assert!(q["self_signing_keys"][a].is_object());
        assert!(q["user_signing_keys"].get(a).is_none(), "{q}");
        let q = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(query.clone()),
            )
            .await;
        assert!(q["user_signing_keys"][a].is_object());

        // Replacing the master key takes the password.
        let (master2, master2_pub) = cross_signing_pair();
        let replace = json!({
            "master_key": cross_signing_key(a, "master", &master2_pub),
            "self_signing_key": signed_by(a, &master2, cross_signing_key(a, "self_signing", &ssk_pub)),
        });
        let (status, v) = alice
            .raw(Method::POST, upload_path, Some(replace.clone()))
            .await;
        assert_eq!(status.as_u16(), 401, "{v}");
        let mut with_auth = replace.clone();
        with_auth["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw", "session": v["session"]});
        alice.ok(Method::POST, upload_path, Some(with_auth)).await;
        // Back to the first master key (the self-signing key is the same).
        let mut back = keys.clone();
        back["auth"] = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw"});
        let (status, v) = alice
            .raw(Method::POST, upload_path, Some(back.clone()))
            .await;
        if status.as_u16() == 401 {
            back["auth"]["session"] = v["session"].clone();
            alice.ok(Method::POST, upload_path, Some(back)).await;
        }

        // Alice's self-signing key signs her device; Bob sees the signature.
        let bob_before = bob.sync(None, 0).await["next_batch"]
            .as_str()
            .unwrap()
            .to_owned();
        let signed_device = signed_by(a, &ssk, dev.device_keys());
        let r = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/signatures/upload",
                Some(json!({a: {alice.device_id.clone(): signed_device}})),
            )
            .await;
        assert!(
            r["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{r}"
        );
        let q = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(query.clone()),
            )
            .await;
        assert!(
            q["device_keys"][a][&alice.device_id]["signatures"][a][format!("ed25519:{ssk_pub}")]
                .is_string(),
            "{q}"
        );
        assert!(listed(&bob.sync(Some(&bob_before), 0).await, "changed", a));
        // A signature by the wrong key is a failure, and is not stored.
        let forged = signed_by(a, &usk, dev.device_keys());
        let mut forged = forged;
        forged["signatures"][a][format!("ed25519:{ssk_pub}")] =
            forged["signatures"][a][format!("ed25519:{usk_pub}")].clone();
        let r = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/signatures/upload",
                Some(json!({a: {alice.device_id.clone(): forged}})),
            )
            .await;
        assert_eq!(
            r["failures"][a][&alice.device_id]["errcode"], "M_INVALID_SIGNATURE",
            "{r}"
        );

        // Bob verifies Alice: his user-signing key signs her master key; only Bob sees that.
        let (bob_master, bob_master_pub) = cross_signing_pair();
        let (bob_usk, bob_usk_pub) = cross_signing_pair();
        let b = bob.user_id.as_str();
        bob.ok(Method::POST, upload_path, Some(json!({
            "master_key": cross_signing_key(b, "master", &bob_master_pub),
            "user_signing_key": signed_by(b, &bob_master, cross_signing_key(b, "user_signing", &bob_usk_pub)),
        }))).await;
        let alice_master = q["master_keys"][a].clone();
        let mut alice_master_clean = alice_master.clone();
        alice_master_clean
            .as_object_mut()
            .unwrap()
            .remove("signatures");
        let signed = signed_by(b, &bob_usk, alice_master_clean);
        let r = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/signatures/upload",
                Some(json!({a: {master_pub.clone(): signed}})),
            )
            .await;
        assert!(
            r["failures"].as_object().is_none_or(|f| f.is_empty()),
            "{r}"
        );
        let q = bob
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(query.clone()),
            )
            .await;
        assert!(
            q["master_keys"][a]["signatures"][b][format!("ed25519:{bob_usk_pub}")].is_string(),
            "{q}"
        );
        let q = alice
            .ok(Method::POST, "/_matrix/client/v3/keys/query", Some(query))
            .await;
        assert!(q["master_keys"][a]["signatures"].get(b).is_none(), "{q}");
        server.stop().await;
    }
}
