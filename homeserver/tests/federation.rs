//! Federation between homeservers over TLS on loopback (issue 15): server keys, signed
//! requests both ways, request authentication, discovery by resolver override — between two
//! processes' worth of servers (one on SQLite, one on PostgreSQL) and between two tenants of one.

mod common;

use std::collections::BTreeMap;

use common::{Store, TestCa, TestServer, unique_name};
use reqwest::Method;
use ruma::api::federation::authentication::{XMatrix, XMatrixSigningInput};
use serde_json::{Value, json};

struct Pair {
    a: TestServer,
    b: TestServer,
    ca: TestCa,
    /// A second tenant of A's process.
    a2: String,
}

/// Servers A (SQLite, with a second tenant) and B (PostgreSQL), each resolving the others'
/// names to their TLS listeners and trusting the test CA.
async fn pair() -> Pair {
    pair_linked().await.0
}

/// The same, B reaching A (not A's second tenant) through a link the test can cut.
async fn pair_linked() -> (Pair, Link) {
    pair_configured(|_| {}).await
}

/// The same, A's config changed by `tweak_a`.
async fn pair_configured(tweak_a: fn(&mut tim_homeserver::config::Config)) -> (Pair, Link) {
    let (a_name, a2, b_name) = (unique_name("fa"), unique_name("fa2"), unique_name("fb"));
    let ca = TestCa::new(&[&a_name, &a2, &b_name]);
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let link = Link::to(la.local_addr().unwrap()).await;
    let resolve: BTreeMap<String, std::net::SocketAddr> = [
        (a_name.clone(), la.local_addr().unwrap()),
        (a2.clone(), la.local_addr().unwrap()),
        (b_name.clone(), lb.local_addr().unwrap()),
    ]
    .into();
    let setup = |name: String, via_link: bool| {
        let mut resolve = resolve.clone();
        if via_link {
            resolve.insert(a_name.clone(), link.addr);
        }
        let ca_file = ca.ca_file.clone();
        move |c: &mut tim_homeserver::config::Config| {
            c.server_name = name;
            c.federation.resolve = resolve;
            c.federation.ca_certificates = Some(ca_file);
        }
    };
    let setup_a = setup(a_name.clone(), false);
    let a = TestServer::start_full(Store::Sqlite, Some((la, &ca)), |c| {
        setup_a(c);
        tweak_a(c);
    })
    .await;
    let b = TestServer::start_full(Store::Postgres, Some((lb, &ca)), setup(b_name, true)).await;
    a.add_tenant(&a2).await;
    (Pair { a, b, ca, a2 }, link)
}

/// A TCP link to a listener that the test can cut (open connections dropped, new ones
/// closed at once) and mend: a network partition between two servers.
struct Link {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

impl Link {
    async fn to(target: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        // A link nobody holds any more is never cut.
                        _ = async {
                            if watch.wait_for(|cut| *cut).await.is_err() {
                                std::future::pending::<()>().await;
                            }
                        } => {}
                    }
                });
            }
        });
        Link { addr, cut }
    }

    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

#[tokio::test]
async fn profiles_cross_servers_and_tenants_through_signed_requests() {
    let Pair { a, b, ca, a2 } = pair().await;
    let alice = a.register("alice").await;
    alice
        .ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/avatar_url", alice.user_id),
            Some(json!({"avatar_url": "mxc://a/portrait"})),
        )
        .await;
    let bob = b.register("bob").await;
    bob.ok(
        Method::PUT,
        &format!("/_matrix/client/v3/profile/{}/avatar_url", bob.user_id),
        Some(json!({"avatar_url": "mxc://b/face"})),
    )
    .await;

    // Bob's server asks Alice's (signed); Alice's fetches Bob's server key to verify it.
    let profile = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}", alice.user_id),
            None,
        )
        .await;
    assert_eq!(profile["avatar_url"], "mxc://a/portrait");
    // And the other way round.
    let back = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}/avatar_url", bob.user_id),
            None,
        )
        .await;
    assert_eq!(back["avatar_url"], "mxc://b/face");
    // The keys each side fetched are stored.
    let stored = a
        .hs()
        .stores
        .remote_keys
        .remote_keys(&b.server_name)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].key_id, b.hs().federation.keys.key_id());

    // Tenants of one process talk through the same signed path.
    let mut carol = a.client_for(&a2);
    carol.register("carol").await;
    let profile = carol
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}", alice.user_id),
            None,
        )
        .await;
    assert_eq!(profile["avatar_url"], "mxc://a/portrait");

    // A user their server does not know: 404; a server nobody can reach: 502.
    let (status, body) = bob
        .raw(
            Method::GET,
            &format!("/_matrix/client/v3/profile/@nobody:{}", a.server_name),
            None,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = bob
        .raw(
            Method::GET,
            "/_matrix/client/v3/profile/@someone:unreachable.invalid:1",
            None,
        )
        .await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["errcode"], "M_UNKNOWN");
    drop(ca);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn server_keys_are_signed_and_requests_are_verified() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let (https, base) = federation_listener(&a, &ca);

    // The key document: the server's own, signed by the key it lists, valid for a day.
    let doc: Value = https
        .get(format!("{base}/_matrix/key/v2/server"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["server_name"], a.server_name);
    let key_id = a.hs().federation.keys.key_id();
    let public = doc["verify_keys"][&key_id]["key"].as_str().unwrap();
    let now = tim_homeserver::rooms::create::now_ms();
    let until = doc["valid_until_ts"].as_i64().unwrap();
    assert!(until > now + 23 * 3600 * 1000 && until <= now + 24 * 3600 * 1000 + 60_000);
    let object: ruma::CanonicalJsonObject = serde_json::from_value(doc.clone()).unwrap();
    let keys = BTreeMap::from([(
        a.server_name.clone(),
        BTreeMap::from([(key_id.clone(), ruma::serde::Base64::parse(public).unwrap())]),
    )]);
    ruma::signatures::verify_json(&keys, &object).unwrap();
    let version: Value = https
        .get(format!("{base}/_matrix/federation/v1/version"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(version["server"]["name"], "tim-homeserver");

    // Raw signed requests as B (its real key) to A's federation API.
    let b_hs = b.hs();
    let bob = b.register("bob").await;
    let alice = a.register("alice").await;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        urlencode(&alice.user_id)
    );
    let signed = |destination: &str, path: &str| {
        let mut request = http::Request::builder()
            .method("GET")
            .uri(path)
            .body(Vec::<u8>::new())
            .unwrap();
        let x = XMatrix::sign_http_request(
            &request,
            XMatrixSigningInput::new(
                b_hs.server_name.clone(),
                destination.try_into().unwrap(),
                &b_hs.key,
            ),
        )
        .unwrap();
        request
            .headers_mut()
            .insert(http::header::AUTHORIZATION, http::HeaderValue::from(&x));
        request.headers()[http::header::AUTHORIZATION]
            .to_str()
            .unwrap()
            .to_owned()
    };
    let send = |auth: Option<String>, path: String| {
        let https = https.clone();
        let url = format!("{base}{path}");
        async move {
            let mut req = https.get(url);
            if let Some(auth) = auth {
                req = req.header("authorization", auth);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = send(Some(signed(&a.server_name, &path)), path.clone()).await;
    assert_eq!(status, 200, "{body}");

    // Unsigned, signed for another server, signed for another path, a forged signature.
    let (status, body) = send(None, path.clone()).await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (401, Some("M_UNAUTHORIZED"))
    );
    let (status, _) = send(Some(signed(&b.server_name, &path)), path.clone()).await;
    assert_eq!(status, 401);
    let other_path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        urlencode(&bob.user_id)
    );
    let (status, _) = send(Some(signed(&a.server_name, &other_path)), path.clone()).await;
    assert_eq!(status, 401);
    let good = signed(&a.server_name, &path);
    let sig_start = good.find("sig=").unwrap() + 4;
    let mut forged = good.clone();
    let flipped = if &good[sig_start..sig_start + 1] == "A" {
        "B"
    } else {
        "A"
    };
    forged.replace_range(sig_start..sig_start + 1, flipped);
    let (status, _) = send(Some(forged), path.clone()).await;
    assert_eq!(status, 401);
    // An unknown key id of a real server: 401 (and no fetch storm: the refetch is throttled).
    let unknown_key = good.replace(&b_hs.federation.keys.key_id(), "ed25519:unknown");
    for _ in 0..3 {
        let (status, _) = send(Some(unknown_key.clone()), path.clone()).await;
        assert_eq!(status, 401);
    }
    // A user of another server: 404, as the spec says.
    let foreign = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        urlencode(&bob.user_id)
    );
    let (status, _) = send(Some(signed(&a.server_name, &foreign)), foreign.clone()).await;
    assert_eq!(status, 404);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn servers_outside_the_allowed_set_are_refused_both_ways() {
    let (a_name, b_name) = (unique_name("fa"), unique_name("fb"));
    let ca = TestCa::new(&[&a_name, &b_name]);
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resolve: BTreeMap<String, std::net::SocketAddr> = [
        (a_name.clone(), la.local_addr().unwrap()),
        (b_name.clone(), lb.local_addr().unwrap()),
    ]
    .into();
    let (r1, r2, ca1, ca2) = (
        resolve.clone(),
        resolve,
        ca.ca_file.clone(),
        ca.ca_file.clone(),
    );
    let a_copy = a_name.clone();
    let a = TestServer::start_full(Store::Sqlite, Some((la, &ca)), move |c| {
        c.server_name = a_copy;
        c.federation.resolve = r1;
        c.federation.ca_certificates = Some(ca1);
        c.federation.allowed_servers = vec!["somewhere-else.example".into()];
    })
    .await;
    let b = TestServer::start_full(Store::Sqlite, Some((lb, &ca)), move |c| {
        c.server_name = b_name;
        c.federation.resolve = r2;
        c.federation.ca_certificates = Some(ca2);
    })
    .await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    // A does not send to B ...
    let (status, body) = alice
        .raw(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}", bob.user_id),
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["errcode"].as_str()),
        (403, Some("M_FORBIDDEN"))
    );
    // ... and refuses what B sends.
    let (status, body) = bob
        .raw(
            Method::GET,
            &format!("/_matrix/client/v3/profile/{}", alice.user_id),
            None,
        )
        .await;
    assert_eq!(status, 403, "{body}");
    a.stop().await;
    b.stop().await;
}

fn urlencode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// An HTTPS client for `server`'s federation (TLS) listener and its base URL.
fn federation_listener(server: &TestServer, ca: &TestCa) -> (reqwest::Client, String) {
    let tls = server.tls_addr.unwrap();
    let base = format!("https://{}:{}", server.server_name, tls.port());
    (ca.client(&server.server_name, tls), base)
}

/// A signed federation request from `from` (its real key) to `to`'s TLS listener.
async fn federation_request(
    from: &TestServer,
    to: &TestServer,
    ca: &TestCa,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let hs = from.hs();
    let bytes = body
        .map(|b| serde_json::to_vec(&b).unwrap())
        .unwrap_or_default();
    let request = http::Request::builder()
        .method(method)
        .uri(path)
        .body(bytes.clone())
        .unwrap();
    let x = XMatrix::sign_http_request(
        &request,
        XMatrixSigningInput::new(
            hs.server_name.clone(),
            to.server_name.as_str().try_into().unwrap(),
            &hs.key,
        ),
    )
    .unwrap();
    let tls = to.tls_addr.unwrap();
    let url = format!("https://{}:{}{path}", to.server_name, tls.port());
    let mut req = ca
        .client(&to.server_name, tls)
        .request(method.parse().unwrap(), url)
        .header("authorization", http::HeaderValue::from(&x));
    if !bytes.is_empty() {
        req = req.header("content-type", "application/json").body(bytes);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Hashes and signs a PDU as `hs`; its event id.
fn sign_pdu(
    hs: &tim_homeserver::homeserver::Homeserver,
    pdu: Value,
) -> (String, ruma::CanonicalJsonObject) {
    let rules = ruma::RoomVersionId::V10.rules().unwrap();
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(pdu).unwrap();
    ruma::signatures::hash_and_sign_event(
        hs.server_name.as_str(),
        hs.key.as_ref(),
        &mut object,
        &rules.redaction,
    )
    .unwrap();
    let id = format!(
        "${}",
        ruma::signatures::reference_hash(&object, &rules).unwrap()
    );
    (id, object)
}

/// `user` of `from` joins `room` at `to` through `make_join` and `send_join` (version 10): the
/// join's id and the `send_join` answer.
async fn join_by_hand(
    from: &TestServer,
    to: &TestServer,
    ca: &TestCa,
    room: &str,
    user: &str,
) -> (String, Value) {
    let (status, made) = federation_request(
        from,
        to,
        ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=10",
            urlencode(room),
            urlencode(user)
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{made}");
    send_join(from, to, ca, room, &made).await
}

/// `send_join` of `made`'s template, signed by `from`, at `to`: the join's id and the answer.
async fn send_join(
    from: &TestServer,
    to: &TestServer,
    ca: &TestCa,
    room: &str,
    made: &Value,
) -> (String, Value) {
    let (join_id, join) = sign_pdu(&from.hs(), made["event"].clone());
    let (status, joined) = federation_request(
        from,
        to,
        ca,
        "PUT",
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            urlencode(room),
            urlencode(&join_id)
        ),
        Some(serde_json::to_value(&join).unwrap()),
    )
    .await;
    assert_eq!(status, 200, "{joined}");
    (join_id, joined)
}

fn state_id(state: &Value, kind: &str, key: &str) -> String {
    state
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == kind && e["state_key"] == key)
        .map(|e| {
            // Room versions 3+ name events by their reference hash; PDUs carry no id.
            let object: ruma::CanonicalJsonObject = serde_json::from_value(e.clone()).unwrap();
            let rules = ruma::RoomVersionId::V10.rules().unwrap();
            format!(
                "${}",
                ruma::signatures::reference_hash(&object, &rules).unwrap()
            )
        })
        .unwrap_or_else(|| panic!("no {kind} {key}"))
}

#[tokio::test]
async fn a_remote_user_joins_and_sends_through_checked_pdus() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let alice = a.register("alice").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Praxisnetz"}))
        .await;
    let bob_id = format!("@bob:{}", b.server_name);
    let b_hs = b.hs();

    // make_join: a template built on the room's tips; a room version B lacks is refused.
    let (status, body) = federation_request(
        &b,
        &a,
        &ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=1",
            urlencode(&room),
            urlencode(&bob_id)
        ),
        None,
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_INCOMPATIBLE_ROOM_VERSION"))
    );
    let (status, made) = federation_request(
        &b,
        &a,
        &ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=9&ver=10",
            urlencode(&room),
            urlencode(&bob_id)
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{made}");
    assert_eq!(made["room_version"], "10");
    // A server may only make joins for its own users.
    let (status, _) = federation_request(
        &b,
        &a,
        &ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=10",
            urlencode(&room),
            urlencode(&alice.user_id)
        ),
        None,
    )
    .await;
    assert_eq!(status, 403);

    // send_join: signed by B, checked, added; the state before it and the auth chain back.
    let (join_id, joined) = send_join(&b, &a, &ca, &room, &made).await;
    let create = state_id(&joined["state"], "m.room.create", "");
    let power = state_id(&joined["state"], "m.room.power_levels", "");
    assert!(
        joined["auth_chain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    let sync = alice.sync(None, 0).await;
    let members: Vec<&Value> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == bob_id.as_str())
        .collect();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["content"]["membership"], "join");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // A message from Bob in a transaction.
    let message = |body: &str, depth: u64, prev: &str, sender: &str| {
        json!({
            "type": "m.room.message", "room_id": room, "sender": sender,
            "content": {"msgtype": "m.text", "body": body},
            "prev_events": [prev], "auth_events": [create, power, join_id],
            "depth": depth, "origin_server_ts": 1_700_000_000_000u64,
        })
    };
    let (hello_id, hello) = sign_pdu(&b_hs, message("hello from B", 100, &join_id, &bob_id));
    let txn = |pdus: Vec<Value>| json!({"origin": b.server_name, "origin_server_ts": 1_700_000_000_000u64, "pdus": pdus, "edus": []});
    let body = txn(vec![serde_json::to_value(&hello).unwrap()]);
    let (status, result) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/t1",
        Some(body.clone()),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["pdus"][&hello_id], json!({}));
    let sync = alice.sync(Some(&since), 0).await;
    assert_eq!(common::bodies(&sync, &room), vec!["hello from B"]);
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    // The same transaction again: the same answer, nothing twice.
    let (status, again) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/t1",
        Some(body),
    )
    .await;
    assert_eq!((status, &again), (200, &result));

    // Bad PDUs, each on its own: a tampered content hash (kept, redacted), a sender who is
    // not in the room (rejected), unknown prev events (outlier), a forged signature, an
    // oversized PDU; garbage and an unknown room get no result (no event id to answer under).
    let (tampered_id, mut tampered) =
        sign_pdu(&b_hs, message("signed text", 101, &hello_id, &bob_id));
    tampered.insert(
        "content".into(),
        serde_json::from_value(json!({"msgtype": "m.text", "body": "changed on the way"})).unwrap(),
    );
    let (outsider_id, outsider) = sign_pdu(
        &b_hs,
        message(
            "let me in",
            102,
            &tampered_id,
            &format!("@mallory:{}", b.server_name),
        ),
    );
    let (orphan_id, orphan) = sign_pdu(&b_hs, message("orphan", 103, "$unknownprev", &bob_id));
    let (forged_id, mut forged) = sign_pdu(&b_hs, message("forged", 104, &tampered_id, &bob_id));
    forged.insert(
        "signatures".into(),
        serde_json::from_value(json!({b.server_name.clone(): {b_hs.federation.keys.key_id(): "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}))
            .unwrap(),
    );
    let big = {
        let mut m = message("x", 105, &tampered_id, &bob_id);
        m["content"]["body"] = Value::String("x".repeat(70_000));
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(m).unwrap();
        object.insert(
            "hashes".into(),
            serde_json::from_value(json!({"sha256": "x"})).unwrap(),
        );
        object
    };
    let unknown_room = {
        let mut m = message("elsewhere", 106, &hello_id, &bob_id);
        m["room_id"] = json!("!nowhere:elsewhere.test");
        sign_pdu(&b_hs, m).1
    };
    let pdus = vec![
        serde_json::to_value(&tampered).unwrap(),
        serde_json::to_value(&outsider).unwrap(),
        serde_json::to_value(&orphan).unwrap(),
        serde_json::to_value(&forged).unwrap(),
        serde_json::to_value(&big).unwrap(),
        json!(5),
        serde_json::to_value(&unknown_room).unwrap(),
    ];
    let (status, result) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/t2",
        Some(txn(pdus)),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    let results = result["pdus"].as_object().unwrap();
    assert_eq!(results[&tampered_id], json!({}), "{result}");
    assert!(
        results[&outsider_id]["error"]
            .as_str()
            .unwrap()
            .starts_with("rejected")
    );
    assert!(
        results[&orphan_id]["error"]
            .as_str()
            .unwrap()
            .contains("prev events")
    );
    assert!(
        results[&forged_id]["error"]
            .as_str()
            .unwrap()
            .contains("signature")
    );
    // The oversized PDU still has an id (the reference hash covers its redacted form).
    assert_eq!(
        results
            .values()
            .filter(|r| r["error"]
                .as_str()
                .is_some_and(|e| e.contains("larger than 65536")))
            .count(),
        1
    );
    assert_eq!(results.len(), 5, "{result}");
    let graph = a.hs().stores.graph.clone();
    let stored = graph
        .pdus(&[outsider_id.clone(), orphan_id.clone(), forged_id.clone()])
        .await
        .unwrap();
    let status_of = |id: &str| stored.iter().find(|p| p.event_id == id).map(|p| p.status);
    use tim_homeserver::store::EventStatus;
    assert_eq!(status_of(&outsider_id), Some(Some(EventStatus::Rejected)));
    assert_eq!(status_of(&orphan_id), Some(Some(EventStatus::Outlier)));
    assert_eq!(
        status_of(&forged_id),
        None,
        "a forged event is not stored at all"
    );
    // Alice sees the tampered event redacted, nothing else.
    let sync = alice.sync(Some(&since), 0).await;
    let events = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["event_id"], tampered_id.as_str());
    assert_eq!(events[0]["content"], json!({}));

    // A transaction that is no JSON, or too big, is refused as a whole.
    let too_many: Vec<Value> = (0..51).map(|_| json!({})).collect();
    let (status, body) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/t3",
        Some(txn(too_many)),
    )
    .await;
    assert_eq!(
        (status, body["errcode"].as_str()),
        (400, Some("M_BAD_JSON"))
    );
    let (status, _) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/t4",
        Some(json!([1])),
    )
    .await;
    assert_eq!(status, 400);
    // Another server's transaction cannot claim B's origin.
    let (status, _) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/t5",
        Some(json!({"origin": "someone-else.test", "origin_server_ts": 1, "pdus": []})),
    )
    .await;
    assert_eq!(status, 403);
    a.stop().await;
    b.stop().await;
}

/// Syncs until `body` shows up in `room` (or ten seconds pass); the sync token after it.
async fn wait_for(
    client: &common::Client,
    room: &str,
    body: &str,
    since: Option<String>,
) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut since = since;
    loop {
        let sync = client.sync(since.as_deref(), 1_000).await;
        let next = sync["next_batch"].as_str().unwrap().to_owned();
        let bodies = common::bodies(&sync, room);
        if bodies.iter().any(|b| b == body) {
            return next;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{body} did not arrive in {room}"
        );
        since = Some(next);
    }
}

#[tokio::test]
async fn users_of_two_servers_chat_in_a_room_joined_over_federation() {
    let Pair {
        a,
        b,
        ca: _ca,
        a2: _,
    } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Praxisnetz"}))
        .await;
    alice.send(&room, "before", "from before the join").await;

    // Bob's server does not have the room: it joins through Alice's.
    let joined = bob
        .ok(
            Method::POST,
            &format!(
                "/_matrix/client/v3/join/{}?via={}",
                urlencode(&room),
                a.server_name
            ),
            Some(json!({})),
        )
        .await;
    assert_eq!(joined["room_id"], room.as_str());
    let sync = bob.sync(None, 0).await;
    let state = &sync["rooms"]["join"][&room]["state"]["events"];
    let timeline = &sync["rooms"]["join"][&room]["timeline"]["events"];
    let none = vec![];
    let all: Vec<&Value> = state
        .as_array()
        .unwrap_or(&none)
        .iter()
        .chain(timeline.as_array().unwrap_or(&none))
        .collect();
    assert!(
        all.iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Praxisnetz"),
        "{sync}"
    );
    assert!(
        all.iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
    );
    let bob_since = sync["next_batch"].as_str().unwrap().to_owned();
    // Alice sees Bob arrive.
    let alice_sync = alice.sync(None, 0).await;
    assert!(alice_sync.to_string().contains(&bob.user_id));
    let alice_since = alice_sync["next_batch"].as_str().unwrap().to_owned();

    // Both directions, through each server's sender.
    let greeting = alice.send(&room, "a1", "Guten Tag aus der Praxis").await;
    wait_for(&bob, &room, "Guten Tag aus der Praxis", Some(bob_since)).await;
    bob.send(&room, "b1", "Hallo aus der Klinik").await;
    let alice_since = wait_for(&alice, &room, "Hallo aus der Klinik", Some(alice_since)).await;

    // Bob has read Alice's message: her client shows it (an m.receipt EDU).
    bob.ok(
        Method::POST,
        &format!(
            "/_matrix/client/v3/rooms/{}/receipt/m.read/{}",
            urlencode(&room),
            urlencode(&greeting)
        ),
        Some(json!({})),
    )
    .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut since = alice_since;
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "bob's receipt not seen"
        );
        let sync = alice.sync(Some(&since), 1_000).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        let receipt = sync["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "m.receipt")
            .map(|e| e["content"][&greeting]["m.read"][&bob.user_id].clone());
        if let Some(receipt) = receipt.filter(|r| !r.is_null()) {
            assert!(receipt["ts"].is_u64(), "{receipt}");
            break;
        }
    }

    // Bob types, then stops: Alice's client shows both (m.typing EDUs).
    let typing_path = format!(
        "/_matrix/client/v3/rooms/{}/typing/{}",
        urlencode(&room),
        urlencode(&bob.user_id)
    );
    let typists = |sync: &Value| {
        sync["rooms"]["join"][&room]["ephemeral"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["type"] == "m.typing")
            .map(|e| e["content"]["user_ids"].clone())
    };
    for typing in [true, false] {
        bob.ok(
            Method::PUT,
            &typing_path,
            Some(json!({"typing": typing, "timeout": 30_000})),
        )
        .await;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "typing {typing} not seen"
            );
            let sync = alice.sync(Some(&since), 1_000).await;
            since = sync["next_batch"].as_str().unwrap().to_owned();
            if let Some(users) = typists(&sync) {
                let listed = users
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|u| u == bob.user_id.as_str());
                if listed == typing {
                    break;
                }
            }
        }
    }

    // Bob's presence crosses too (m.presence EDUs): his status, then hidden (TI-M: others
    // see him offline, without status).
    bob.ok(
        Method::PUT,
        &format!(
            "/_matrix/client/v3/presence/{}/status",
            urlencode(&bob.user_id)
        ),
        Some(json!({"presence": "unavailable", "status_msg": "Im OP bis 14 Uhr"})),
    )
    .await;
    let p = presence_until(&alice, &mut since, &bob.user_id, "unavailable").await;
    assert_eq!(p["status_msg"], "Im OP bis 14 Uhr");
    let seen = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/presence/{}/status",
                urlencode(&bob.user_id)
            ),
            None,
        )
        .await;
    assert_eq!(seen["presence"], "unavailable", "{seen}");
    bob.ok(
        Method::PUT,
        &format!(
            "/_matrix/client/v3/user/{}/account_data/de.tim.presence",
            urlencode(&bob.user_id)
        ),
        Some(json!({"visible": false})),
    )
    .await;
    let p = presence_until(&alice, &mut since, &bob.user_id, "offline").await;
    assert!(p["status_msg"].is_null(), "{p}");

    // The outboxes are empty once delivered.
    for server in [&a, &b] {
        let hs = server.hs();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !hs
            .stores
            .federation
            .outbox_destinations()
            .await
            .unwrap()
            .is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "outbox not drained");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    a.stop().await;
    b.stop().await;
}

/// Syncs `client` on from `since` until it shows `user`'s presence as `state` (within ten
/// seconds); that presence's content.
async fn presence_until(
    client: &common::Client,
    since: &mut String,
    user: &str,
    state: &str,
) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "{user}'s presence {state} not seen"
        );
        let sync = client.sync(Some(since), 1_000).await;
        *since = sync["next_batch"].as_str().unwrap().to_owned();
        let last = sync["presence"]["events"]
            .as_array()
            .into_iter()
            .flatten()
            .rfind(|e| e["type"] == "m.presence" && e["sender"] == user)
            .map(|e| e["content"].clone());
        if let Some(p) = last.filter(|p| p["presence"] == state) {
            return p;
        }
    }
}

/// Syncs until `found` holds for a sync response (or ten seconds pass); that response.
async fn sync_until(client: &common::Client, what: &str, found: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut since: Option<String> = None;
    loop {
        let sync = client.sync(since.as_deref(), 1_000).await;
        if found(&sync) {
            return sync;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: not seen");
        since = Some(sync["next_batch"].as_str().unwrap().to_owned());
    }
}

/// The membership of `user` in `room` as a (full) sync shows it in the room's state or
/// timeline.
fn member_of(sync: &Value, room: &str, user: &str) -> Option<String> {
    let mut found = None;
    for section in ["join", "leave"] {
        for part in ["state", "timeline"] {
            for e in sync["rooms"][section][room][part]["events"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if e["type"] == "m.room.member" && e["state_key"] == user {
                    found = e["content"]["membership"].as_str().map(str::to_owned);
                }
            }
        }
    }
    found
}

#[tokio::test]
async fn invites_cross_servers_and_are_accepted_or_rejected() {
    let Pair {
        a,
        b,
        ca: _ca,
        a2: _,
    } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let dave = b.register("dave").await;

    // Alice invites Bob when she creates the room: B countersigns, Bob sees the invite with
    // the room's name and who invited him.
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Konsil", "invite": [bob.user_id]}))
        .await;
    let sync = sync_until(&bob, "bob's invite", |s| {
        !s["rooms"]["invite"][&room].is_null()
    })
    .await;
    let state = sync["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Konsil"),
        "{sync}"
    );
    assert!(state.iter().any(|e| e["type"] == "m.room.member"
        && e["state_key"] == bob.user_id.as_str()
        && e["sender"] == alice.user_id.as_str()
        && e["content"]["membership"] == "invite"));
    // The invite Alice's server stored carries B's signature.
    let hs = a.hs();
    let invite_id = hs
        .stores
        .events
        .current_state_ids(&room)
        .await
        .unwrap()
        .get(&("m.room.member".to_owned(), bob.user_id.clone()))
        .cloned()
        .unwrap();
    let stored = hs.stores.graph.pdus(&[invite_id]).await.unwrap();
    let signed: Value = serde_json::from_str(&stored[0].json).unwrap();
    assert!(signed["signatures"][&b.server_name].is_object(), "{signed}");

    // Bob accepts without naming a server: the inviting server is tried.
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", urlencode(&room)),
        Some(json!({})),
    )
    .await;
    alice.send(&room, "k1", "Befund anbei").await;
    wait_for(&bob, &room, "Befund anbei", None).await;

    // B is in the room now: Carol's invite reaches B with the room's events, and her
    // rejection goes back the same way.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", urlencode(&room)),
            Some(json!({"user_id": carol.user_id})),
        )
        .await;
    sync_until(&carol, "carol's invite", |s| {
        !s["rooms"]["invite"][&room].is_null()
    })
    .await;
    carol
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", urlencode(&room)),
            Some(json!({})),
        )
        .await;
    sync_until(&alice, "carol's rejection", |s| {
        member_of(s, &room, &carol.user_id).as_deref() == Some("leave")
    })
    .await;

    // A room B does not have: Dave's invite is kept on B with the invite state, and his
    // rejection goes to Alice's server through make_leave/send_leave.
    let other = alice
        .create_room(json!({"preset": "private_chat", "name": "Fallbesprechung"}))
        .await;
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", urlencode(&other)),
            Some(json!({"user_id": dave.user_id})),
        )
        .await;
    let sync = sync_until(&dave, "dave's invite", |s| {
        !s["rooms"]["invite"][&other].is_null()
    })
    .await;
    assert!(sync.to_string().contains("Fallbesprechung"), "{sync}");
    dave.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", urlencode(&other)),
        Some(json!({"reason": "nicht zuständig"})),
    )
    .await;
    sync_until(&alice, "dave's rejection", |s| {
        member_of(s, &other, &dave.user_id).as_deref() == Some("leave")
    })
    .await;
    // Dave's sync drops the invite and lists the room as left.
    let sync = dave.sync(None, 0).await;
    assert!(sync["rooms"]["invite"][&other].is_null(), "{sync}");
    // Rejecting again: the invite is gone.
    let (status, _) = dave
        .raw(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/leave", urlencode(&other)),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404);

    // Users B does not have are refused by B, and Alice learns it.
    let (status, body) = alice
        .raw(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", urlencode(&other)),
            Some(json!({"user_id": format!("@nobody:{}", b.server_name)})),
        )
        .await;
    assert_eq!(status, 404, "{body}");

    // Bob leaves; Alice sees it.
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/leave", urlencode(&room)),
        Some(json!({})),
    )
    .await;
    sync_until(&alice, "bob's leave", |s| {
        member_of(s, &room, &bob.user_id).as_deref() == Some("leave")
    })
    .await;

    // Invited again: B still knows the room but has nobody in it. Bob sees the invite, and
    // his join goes through Alice's server (the room's state fetched anew), not onto B's
    // stale copy.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/invite", urlencode(&room)),
            Some(json!({"user_id": bob.user_id})),
        )
        .await;
    sync_until(&bob, "bob's second invite", |s| {
        !s["rooms"]["invite"][&room].is_null()
    })
    .await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", urlencode(&room)),
        Some(json!({})),
    )
    .await;
    alice.send(&room, "k2", "Willkommen zurück").await;
    wait_for(&bob, &room, "Willkommen zurück", None).await;
    bob.send(&room, "b2", "Danke").await;
    wait_for(&alice, &room, "Danke", None).await;
    a.stop().await;
    b.stop().await;
}

/// Device keys of `client`'s device, signed with a fresh device key, and `n` signed one-time
/// keys.
fn device_upload(client: &common::Client, n: usize) -> Value {
    use base64::Engine;
    use ruma::signatures::{Ed25519KeyPair, sign_json};
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;
    let doc = Ed25519KeyPair::generate();
    let pair = Ed25519KeyPair::from_der(&doc, client.device_id.clone()).unwrap();
    let sign = |v: Value| {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(v).unwrap();
        sign_json(&client.user_id, &pair, &mut object).unwrap();
        serde_json::to_value(object).unwrap()
    };
    let device_keys = sign(json!({
        "user_id": client.user_id,
        "device_id": client.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {
            format!("curve25519:{}", client.device_id): B64.encode([7u8; 32]),
            format!("ed25519:{}", client.device_id): B64.encode(pair.public_key()),
        },
    }));
    let mut one_time = serde_json::Map::new();
    for i in 0..n {
        one_time.insert(
            format!("signed_curve25519:k{i}"),
            sign(json!({"key": B64.encode([i as u8; 32])})),
        );
    }
    json!({"device_keys": device_keys, "one_time_keys": one_time})
}

#[tokio::test]
async fn encryption_keys_and_to_device_messages_cross_servers() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(device_upload(&alice, 0)),
        )
        .await;
    bob.ok(
        Method::POST,
        "/_matrix/client/v3/keys/upload",
        Some(device_upload(&bob, 2)),
    )
    .await;

    // Alice's server asks Bob's for his keys; a server that cannot be reached is a failure,
    // not an error of the whole query.
    let unreachable = "@someone:unreachable.invalid";
    let keys = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {bob.user_id.clone(): [], unreachable: []}})),
        )
        .await;
    let device = &keys["device_keys"][&bob.user_id][&bob.device_id];
    assert_eq!(device["device_id"], bob.device_id.as_str(), "{keys}");
    assert!(device["signatures"][&bob.user_id].is_object());
    assert!(
        keys["failures"]["unreachable.invalid"].is_object(),
        "{keys}"
    );
    // And Bob's for Alice's.
    let keys = bob
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {alice.user_id.clone(): [alice.device_id]}})),
        )
        .await;
    assert!(
        keys["device_keys"][&alice.user_id][&alice.device_id].is_object(),
        "{keys}"
    );

    // One-time keys are handed out across servers exactly once.
    let mut claimed = std::collections::BTreeSet::new();
    for _ in 0..3 {
        let resp = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/keys/claim",
                Some(json!({"one_time_keys": {bob.user_id.clone(): {bob.device_id.clone(): "signed_curve25519"}}})),
            )
            .await;
        if let Some(keys) = resp["one_time_keys"][&bob.user_id][&bob.device_id].as_object() {
            claimed.extend(keys.keys().cloned());
        }
    }
    assert_eq!(claimed.len(), 2, "{claimed:?}");

    // The server's device list of a user, as other servers resync it.
    let devices = federation_request(
        &a,
        &b,
        &ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/user/devices/{}",
            urlencode(&bob.user_id)
        ),
        None,
    )
    .await;
    assert_eq!(devices.0, 200, "{:?}", devices.1);
    assert_eq!(devices.1["devices"][0]["device_id"], bob.device_id.as_str());

    // To-device messages go as EDUs; a retried request is delivered once.
    let start = bob.sync(None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        alice
            .ok(
                Method::PUT,
                "/_matrix/client/v3/sendToDevice/m.room.encrypted/t1",
                Some(json!({"messages": {bob.user_id.clone(): {bob.device_id.clone(): {"ciphertext": "olm"}}}})),
            )
            .await;
    }
    alice
        .ok(
            Method::PUT,
            "/_matrix/client/v3/sendToDevice/m.room.encrypted/t2",
            Some(json!({"messages": {bob.user_id.clone(): {"*": {"ciphertext": "second"}}}})),
        )
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut events: Vec<Value> = vec![];
    let mut since = start;
    while events.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "to-device not delivered: {events:?}"
        );
        let sync = bob.sync(Some(&since), 1_000).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        events.extend(
            sync["to_device"]["events"]
                .as_array()
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    // Nothing more arrives (the retry was dropped by message id).
    let sync = bob.sync(Some(&since), 500).await;
    assert!(
        sync["to_device"]["events"]
            .as_array()
            .is_none_or(|e| e.is_empty()),
        "{sync}"
    );
    assert_eq!(events[0]["sender"], alice.user_id.as_str());
    assert_eq!(events[0]["type"], "m.room.encrypted");
    assert_eq!(events[0]["content"]["ciphertext"], "olm");
    assert_eq!(events[1]["content"]["ciphertext"], "second");
    a.stop().await;
    b.stop().await;
}

/// Syncs from `since` until `user` is listed in `device_lists.changed` (or ten seconds pass).
async fn wait_device_change(client: &common::Client, since: String, user: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut since = since;
    loop {
        let sync = client.sync(Some(&since), 1_000).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        if sync["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == user))
        {
            return since;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{user}'s device change not seen by {}",
            client.user_id
        );
    }
}

#[tokio::test]
async fn device_list_changes_reach_the_other_servers_in_encrypted_rooms() {
    let Pair {
        a,
        b,
        ca: _ca,
        a2: _,
    } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "invite": [bob.user_id],
            "initial_state": [{"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        }))
        .await;
    sync_until(&bob, "bob's invite", |s| {
        !s["rooms"]["invite"][&room].is_null()
    })
    .await;
    bob.ok(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{}/join", urlencode(&room)),
        Some(json!({})),
    )
    .await;
    let alice_since = sync_until(&alice, "bob's join", |s| {
        member_of(s, &room, &bob.user_id).as_deref() == Some("join")
    })
    .await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob_since = bob.sync(None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // Bob signs in on a second device and uploads its keys: A hears of it (an EDU) and
    // Alice's client is told to query Bob's keys again — and finds the new device.
    let mut laptop = b.client();
    let login = laptop
        .ok(
            Method::POST,
            "/_matrix/client/v3/login",
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "secret-pw"})),
        )
        .await;
    laptop.adopt(&login);
    laptop
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(device_upload(&laptop, 1)),
        )
        .await;
    let alice_since = wait_device_change(&alice, alice_since, &bob.user_id).await;
    let keys = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {bob.user_id.clone(): []}})),
        )
        .await;
    assert!(
        keys["device_keys"][&bob.user_id][&laptop.device_id].is_object(),
        "{keys}"
    );

    // The device signs out: told again, and gone from the keys.
    laptop
        .ok(Method::POST, "/_matrix/client/v3/logout", Some(json!({})))
        .await;
    wait_device_change(&alice, alice_since, &bob.user_id).await;
    let keys = alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/query",
            Some(json!({"device_keys": {bob.user_id.clone(): []}})),
        )
        .await;
    assert!(
        keys["device_keys"][&bob.user_id][&laptop.device_id].is_null(),
        "{keys}"
    );

    // And the other way round.
    alice
        .ok(
            Method::POST,
            "/_matrix/client/v3/keys/upload",
            Some(device_upload(&alice, 0)),
        )
        .await;
    wait_device_change(&bob, bob_since, &alice.user_id).await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn forks_are_resolved_and_soft_failed_events_kept_out_of_the_timeline() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let alice = a.register("alice").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Praxisnetz"}))
        .await;
    let bob_id = format!("@bob:{}", b.server_name);
    let b_hs = b.hs();
    // Bob joins by hand (B's server only signs), so the test decides what B builds on.
    let (join_id, joined) = join_by_hand(&b, &a, &ca, &room, &bob_id).await;
    let create = state_id(&joined["state"], "m.room.create", "");
    let power = state_id(&joined["state"], "m.room.power_levels", "");
    let join_rules = state_id(&joined["state"], "m.room.join_rules", "");
    let now = u64::from(ruma::MilliSecondsSinceUnixEpoch::now().get());
    let send = |id: &str, pdu: ruma::CanonicalJsonObject| {
        let body =
            json!({"origin": b.server_name, "origin_server_ts": now, "pdus": [pdu], "edus": []});
        let path = format!("/_matrix/federation/v1/send/{}", urlencode(id));
        let (b, a, ca) = (&b, &a, &ca);
        async move {
            let (status, result) = federation_request(b, a, ca, "PUT", &path, Some(body)).await;
            assert_eq!(status, 200, "{result}");
            result["pdus"]
                .as_object()
                .and_then(|r| r.values().next().cloned())
                .unwrap()
        }
    };
    let message = |body: &str, prev: &str, sender: &str, ts: u64| {
        json!({
            "type": "m.room.message", "room_id": room, "sender": sender,
            "content": {"msgtype": "m.text", "body": body},
            "prev_events": [prev], "auth_events": [create, power, join_id],
            "depth": 100, "origin_server_ts": ts,
        })
    };

    // Alice renames the room on top of Bob's join; B has not seen it and builds on the join.
    let renamed = alice
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                urlencode(&room)
            ),
            Some(json!({"name": "Neu"})),
        )
        .await["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let since = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (fork_id, fork) = sign_pdu(&b_hs, message("vom Zweig", &join_id, &bob_id, now + 1));
    assert_eq!(send(&fork_id, fork).await, json!({}));
    // Still on the fork: Bob changes his display name (a state event both branches differ on).
    let (profile_id, profile) = sign_pdu(
        &b_hs,
        json!({
            "type": "m.room.member", "state_key": bob_id, "room_id": room, "sender": bob_id,
            "content": {"membership": "join", "displayname": "Bob (Klinik)"},
            "prev_events": [fork_id], "auth_events": [create, power, join_rules, join_id],
            "depth": 101, "origin_server_ts": now + 2,
        }),
    );
    assert_eq!(send(&profile_id, profile).await, json!({}));
    let sync = alice.sync(Some(&since), 0).await;
    assert_eq!(common::bodies(&sync, &room), vec!["vom Zweig"], "{sync}");
    // The resolved state keeps both branches' changes.
    let name = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.name/",
                urlencode(&room)
            ),
            None,
        )
        .await;
    assert_eq!(name["name"], "Neu");
    let member = alice
        .ok(
            Method::GET,
            &format!(
                "/_matrix/client/v3/rooms/{}/state/m.room.member/{}",
                urlencode(&room),
                urlencode(&bob_id)
            ),
            None,
        )
        .await;
    assert_eq!(member["displayname"], "Bob (Klinik)");
    // Alice's next event joins the branches again: it names both tips.
    let joined_again = alice.send(&room, "m1", "wieder vereint").await;
    let (mut prev, _) = a.hs().stores.graph.edges(&joined_again).await.unwrap();
    prev.sort();
    let mut tips = vec![renamed, profile_id.clone()];
    tips.sort();
    assert_eq!(prev, tips);

    // On a fork, someone who is not in the room there is rejected.
    let (outsider_id, outsider) = sign_pdu(
        &b_hs,
        message(
            "nicht dabei",
            &fork_id,
            &format!("@mallory:{}", b.server_name),
            now + 3,
        ),
    );
    assert!(
        send(&outsider_id, outsider).await["error"]
            .as_str()
            .unwrap()
            .starts_with("rejected")
    );
    // Alice kicks Bob; a message B builds on the state before the kick is allowed by its own
    // history but not by the room as it is now: soft-failed, never shown.
    alice
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{}/kick", urlencode(&room)),
            Some(json!({"user_id": bob_id})),
        )
        .await;
    let since = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let (late_id, late) = sign_pdu(
        &b_hs,
        message("nach dem Rauswurf", &profile_id, &bob_id, now + 4),
    );
    assert_eq!(send(&late_id, late).await, json!({}));
    let status = a
        .hs()
        .stores
        .graph
        .pdus(std::slice::from_ref(&late_id))
        .await
        .unwrap();
    assert_eq!(
        status[0].status,
        Some(tim_homeserver::store::EventStatus::SoftFailed)
    );
    let sync = alice.sync(Some(&since), 0).await;
    assert!(common::bodies(&sync, &room).is_empty(), "{sync}");
    // B builds on its soft-failed event: the state after it is known (the state before it),
    // so the next event is judged like any, not left aside for lack of history.
    let (next_id, next) = sign_pdu(&b_hs, message("noch einmal", &late_id, &bob_id, now + 5));
    assert_eq!(send(&next_id, next).await, json!({}));
    let stored = a
        .hs()
        .stores
        .graph
        .pdus(std::slice::from_ref(&next_id))
        .await
        .unwrap();
    assert_eq!(
        stored[0].status,
        Some(tim_homeserver::store::EventStatus::SoftFailed),
        "{:?}",
        stored[0].reason
    );
    a.stop().await;
    b.stop().await;
}

/// Joins `client` to `room` through `via`.
async fn join_via(client: &common::Client, room: &str, via: &str) {
    client
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}?via={via}", urlencode(room)),
            Some(json!({})),
        )
        .await;
}

/// Alice on A with a public room that Bob (on B) and Carol (on A's second tenant) joined
/// through A; B has seen Carol's join, so it sends to Carol's server too.
async fn room_of_three(
    a: &TestServer,
    b: &TestServer,
    a2: &str,
    name: &str,
) -> (common::Client, common::Client, common::Client, String) {
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let mut carol = a.client_for(a2);
    carol.register("carol").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": name}))
        .await;
    join_via(&bob, &room, &a.server_name).await;
    join_via(&carol, &room, &a.server_name).await;
    sync_until(&bob, "carol's join at B", |s| {
        member_of(s, &room, &carol.user_id).as_deref() == Some("join")
    })
    .await;
    (alice, bob, carol, room)
}

#[tokio::test]
async fn a_gap_is_filled_from_the_server_that_sent_across_it_and_history_is_served() {
    let (Pair { a, b, ca, a2 }, link) = pair_linked().await;
    let (alice, bob, carol, room) = room_of_three(&a, &b, &a2, "Qualitätszirkel").await;

    // B cannot reach A: Bob's message gets to Carol's server only.
    link.set_cut(true);
    bob.send(&room, "b1", "über den Umweg").await;
    wait_for(&carol, &room, "über den Umweg", None).await;
    // Carol answers; A gets her event, lacks Bob's before it, and fetches it from her server.
    carol.send(&room, "c1", "angekommen").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen: Vec<String> = vec![];
    let mut since = None;
    while !seen.contains(&"angekommen".to_owned()) {
        assert!(std::time::Instant::now() < deadline, "alice saw {seen:?}");
        let sync = alice.sync(since.as_deref(), 1_000).await;
        since = sync["next_batch"].as_str().map(str::to_owned);
        seen.extend(common::bodies(&sync, &room));
    }
    assert_eq!(seen, vec!["über den Umweg", "angekommen"]);
    link.set_cut(false);

    // What other servers may read: an event, the state and auth chain before it, history
    // and the events between two points — for servers in the room only.
    let b_hs = b.hs();
    let bob_event = b_hs
        .stores
        .events
        .room_events(
            &room,
            i64::MAX,
            0,
            tim_homeserver::store::Direction::Backward,
            1,
            &Default::default(),
        )
        .await
        .unwrap();
    let latest = bob_event[0].event_id.clone();
    let get = |path: String| {
        let (b, a, ca) = (&b, &a, &ca);
        async move { federation_request(b, a, ca, "GET", &path, None).await }
    };
    let (status, event) = get(format!(
        "/_matrix/federation/v1/event/{}",
        urlencode(&latest)
    ))
    .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["pdus"].as_array().map(Vec::len), Some(1), "{event}");
    let (status, ids) = get(format!(
        "/_matrix/federation/v1/state_ids/{}?event_id={}",
        urlencode(&room),
        urlencode(&latest)
    ))
    .await;
    assert_eq!(status, 200, "{ids}");
    assert!(ids["pdu_ids"].as_array().unwrap().len() >= 5, "{ids}");
    assert!(!ids["auth_chain_ids"].as_array().unwrap().is_empty());
    let (status, state) = get(format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        urlencode(&room),
        urlencode(&latest)
    ))
    .await;
    assert_eq!(status, 200);
    assert!(
        state["pdus"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.name")
    );
    let (status, history) = get(format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=3",
        urlencode(&room),
        urlencode(&latest)
    ))
    .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["pdus"].as_array().unwrap().len(), 3);
    let (status, auth) = get(format!(
        "/_matrix/federation/v1/event_auth/{}/{}",
        urlencode(&room),
        urlencode(&latest)
    ))
    .await;
    assert_eq!(status, 200);
    assert!(
        auth["auth_chain"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "m.room.create")
    );
    let create = state["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "m.room.create")
        .cloned()
        .unwrap();
    let create_id = {
        let object: ruma::CanonicalJsonObject = serde_json::from_value(create).unwrap();
        let rules = ruma::RoomVersionId::V10.rules().unwrap();
        format!(
            "${}",
            ruma::signatures::reference_hash(&object, &rules).unwrap()
        )
    };
    let (status, missing) = federation_request(
        &b,
        &a,
        &ca,
        "POST",
        &format!(
            "/_matrix/federation/v1/get_missing_events/{}",
            urlencode(&room)
        ),
        Some(json!({"earliest_events": [create_id], "latest_events": [latest], "limit": 4})),
    )
    .await;
    assert_eq!(status, 200, "{missing}");
    let depths: Vec<u64> = missing["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths.len(), 4, "{missing}");
    assert!(
        depths.windows(2).all(|w| w[0] <= w[1]),
        "oldest first: {depths:?}"
    );
    // A server with nobody in the room is refused.
    let other = alice.create_room(json!({"preset": "private_chat"})).await;
    let (status, _) = get(format!(
        "/_matrix/federation/v1/backfill/{}?v={}&limit=3",
        urlencode(&other),
        urlencode(&latest)
    ))
    .await;
    assert_eq!(status, 403);
    // Nor does access to one room read another's state through an event id of it.
    let hidden = a
        .hs()
        .stores
        .events
        .room_events(
            &other,
            i64::MAX,
            0,
            tim_homeserver::store::Direction::Backward,
            1,
            &Default::default(),
        )
        .await
        .unwrap()[0]
        .event_id
        .clone();
    for path in [
        format!(
            "/_matrix/federation/v1/state_ids/{}?event_id={}",
            urlencode(&room),
            urlencode(&hidden)
        ),
        format!(
            "/_matrix/federation/v1/event_auth/{}/{}",
            urlencode(&room),
            urlencode(&hidden)
        ),
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, 404, "{body}");
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn messages_sent_during_a_partition_arrive_once_and_in_order_after_it() {
    let (
        Pair {
            a,
            b,
            ca: _ca,
            a2: _,
        },
        link,
    ) = pair_linked().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Bereitschaft"}))
        .await;
    join_via(&bob, &room, &a.server_name).await;
    let since = sync_until(&alice, "bob's join", |s| {
        member_of(s, &room, &bob.user_id).as_deref() == Some("join")
    })
    .await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    link.set_cut(true);
    let sent: Vec<String> = (0..5).map(|i| format!("Nachricht {i}")).collect();
    for (i, body) in sent.iter().enumerate() {
        bob.send(&room, &format!("p{i}"), body).await;
    }
    // B's sender fails and backs off while the link is down.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    assert!(
        !b.hs()
            .stores
            .federation
            .outbox_destinations()
            .await
            .unwrap()
            .is_empty(),
        "B's events wait in its outbox"
    );
    link.set_cut(false);
    // A contacts B: B tries again at once instead of waiting out its backoff.
    alice.send(&room, "a1", "wieder da?").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen: Vec<String> = vec![];
    let mut since = Some(since);
    while seen.iter().filter(|b| b.starts_with("Nachricht")).count() < sent.len() {
        if std::time::Instant::now() > deadline {
            let outbox = b
                .hs()
                .stores
                .federation
                .outbox_destinations()
                .await
                .unwrap();
            panic!("alice saw {seen:?}; B's outbox {outbox:?}");
        }
        let sync = alice.sync(since.as_deref(), 1_000).await;
        since = sync["next_batch"].as_str().map(str::to_owned);
        seen.extend(common::bodies(&sync, &room));
    }
    let from_bob: Vec<&String> = seen.iter().filter(|b| b.starts_with("Nachricht")).collect();
    assert_eq!(
        from_bob,
        sent.iter().collect::<Vec<_>>(),
        "once each, in order"
    );
    // Nothing arrives twice later.
    let sync = alice.sync(since.as_deref(), 500).await;
    assert!(common::bodies(&sync, &room).is_empty(), "{sync}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn attachments_are_fetched_from_the_server_that_holds_them() {
    let Pair {
        a,
        b,
        ca: _ca,
        a2: _,
    } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    // An (encrypted, in real life) attachment of 3 MB: bytes the test can recognise.
    let file: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let (status, uploaded) = alice
        .upload(file.clone(), "application/octet-stream", "befund.pdf.enc")
        .await;
    assert_eq!(status, 200, "{uploaded}");
    let mxc = uploaded["content_uri"].as_str().unwrap();
    let (server, id) = mxc.trim_start_matches("mxc://").split_once('/').unwrap();
    assert_eq!(server, a.server_name);
    let get = |path: String| {
        let bob = &bob;
        async move {
            bob.http
                .get(format!("{}{path}", bob.base))
                .bearer_auth(bob.token.as_ref().unwrap())
                .send()
                .await
                .unwrap()
        }
    };
    // Bob's server fetches it from Alice's (signed) and hands it on.
    let resp = get(format!("/_matrix/client/v1/media/download/{server}/{id}")).await;
    assert_eq!(resp.status(), 200);
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.contains("befund%2Epdf%2Eenc"), "{disposition}");
    let body = resp.bytes().await.unwrap();
    assert_eq!(body.len(), file.len());
    assert!(
        body.as_ref() == file.as_slice(),
        "the bytes arrive unchanged"
    );
    // Media Alice's server does not have: 404, not an error of Bob's server.
    let resp = get(format!(
        "/_matrix/client/v1/media/download/{server}/nothere"
    ))
    .await;
    assert_eq!(resp.status(), 404);
    // Media ids that are no ids are refused before any request goes out.
    let resp = get(format!(
        "/_matrix/client/v1/media/download/{server}/..%2Fetc"
    ))
    .await;
    assert_eq!(resp.status(), 404);

    // An image: Bob's server fetches a thumbnail in a standard size, for many asking at once.
    let mut png = std::io::Cursor::new(Vec::new());
    image::DynamicImage::new_rgba8(640, 480)
        .write_to(&mut png, image::ImageFormat::Png)
        .unwrap();
    let (status, uploaded) = alice
        .upload(png.into_inner(), "image/png", "roentgen.png")
        .await;
    assert_eq!(status, 200, "{uploaded}");
    let image_id = uploaded["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let thumb_path = format!(
        "/_matrix/client/v1/media/thumbnail/{server}/{image_id}?width=90&height=70&method=crop"
    );
    let thumbs = futures::future::join_all((0..4).map(|_| get(thumb_path.clone()))).await;
    let mut thumb_bytes = Vec::new();
    for resp in thumbs {
        assert_eq!(resp.status(), 200);
        thumb_bytes.push(resp.bytes().await.unwrap());
    }
    let thumb = image::load_from_memory(&thumb_bytes[0]).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (96, 96));
    assert!(thumb_bytes.iter().all(|t| *t == thumb_bytes[0]));

    // Alice's server goes away: what Bob's server fetched is served from its own storage.
    a.stop().await;
    let resp = get(format!("/_matrix/client/v1/media/download/{server}/{id}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-disposition"].to_str().unwrap(),
        disposition
    );
    assert!(resp.bytes().await.unwrap().as_ref() == file.as_slice());
    let resp = get(thumb_path.replace("width=90&height=70", "width=96&height=96")).await;
    assert_eq!(resp.status(), 200, "the same standard size, kept");
    assert_eq!(resp.bytes().await.unwrap(), thumb_bytes[0]);
    // What it never fetched cannot be had now.
    let resp = get(format!(
        "/_matrix/client/v1/media/thumbnail/{server}/{image_id}?width=800&height=600&method=scale"
    ))
    .await;
    assert_eq!(resp.status(), 502);
    b.stop().await;
}

#[tokio::test]
async fn rooms_are_joined_by_another_servers_alias() {
    let Pair {
        a,
        b,
        ca: _ca,
        a2: _,
    } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "notfallkonsil"}))
        .await;
    let alias = format!("#notfallkonsil:{}", a.server_name);
    // B asks A what the alias names (`/query/directory`).
    let found = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", urlencode(&alias)),
            None,
        )
        .await;
    assert_eq!(found["room_id"], room.as_str());
    assert_eq!(found["servers"], json!([a.server_name]));
    // Joined by the alias alone: the servers come with the answer.
    let joined = bob
        .ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{}", urlencode(&alias)),
            Some(json!({})),
        )
        .await;
    assert_eq!(joined["room_id"], room.as_str());
    // Now B is in the room too, and says so.
    let found = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/directory/room/{}", urlencode(&alias)),
            None,
        )
        .await;
    assert_eq!(found["servers"], json!([a.server_name, b.server_name]));
    let (status, _) = bob
        .raw(
            Method::GET,
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                urlencode(&format!("#gibtsnicht:{}", a.server_name))
            ),
            None,
        )
        .await;
    assert_eq!(status, 404);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_server_sending_too_much_is_slowed_down() {
    let (Pair { a, b, ca, a2: _ }, _link) = pair_configured(|c| {
        c.federation.requests_per_second_per_server = 0.5;
        c.federation.request_burst_per_server = 3.0;
    })
    .await;
    let alice = a.register("alice").await;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        urlencode(&alice.user_id)
    );
    let mut statuses = vec![];
    for _ in 0..5 {
        statuses.push(federation_request(&b, &a, &ca, "GET", &path, None).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|(s, _)| *s).collect();
    assert_eq!(codes, vec![200, 200, 200, 429, 429]);
    assert_eq!(statuses[3].1["errcode"], "M_LIMIT_EXCEEDED");
    assert!(statuses[3].1["retry_after_ms"].as_u64().unwrap() > 0);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn signed_but_malformed_requests_get_a_clear_refusal() {
    let Pair { a, b, ca, a2 } = pair().await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    // A room of the other tenant of A's process, asked of A.
    let mut carol = a.client_for(&a2);
    carol.register("carol").await;
    let foreign = carol.create_room(json!({"preset": "public_chat"})).await;
    let bob = format!("@bob:{}", b.server_name);
    let r = urlencode(&room);
    let f = urlencode(&foreign);
    let cases: Vec<(&str, String, Option<Value>)> = vec![
        (
            "PUT",
            format!("/_matrix/federation/v2/invite/{r}/$x"),
            Some(json!({})),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/invite/{r}/$x"),
            Some(json!({"event": 5, "room_version": [], "invite_room_state": "x"})),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/invite/{r}/$x"),
            Some(
                json!({"event": {"type": "m.room.member"}, "room_version": "10", "invite_room_state": []}),
            ),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/send_leave/{r}/$x"),
            Some(json!({})),
        ),
        (
            "PUT",
            format!("/_matrix/federation/v2/send_leave/{r}/$x"),
            Some(json!({"type": 1})),
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/make_leave/{f}/{}", urlencode(&bob)),
            None,
        ),
        (
            "GET",
            format!(
                "/_matrix/federation/v1/make_leave/{r}/{}",
                urlencode(&alice.user_id)
            ),
            None,
        ),
        (
            "POST",
            "/_matrix/federation/v1/user/keys/query".into(),
            Some(json!({})),
        ),
        (
            "POST",
            "/_matrix/federation/v1/user/keys/query".into(),
            Some(json!({"device_keys": []})),
        ),
        (
            "POST",
            "/_matrix/federation/v1/user/keys/claim".into(),
            Some(json!({"one_time_keys": {"x": 1}})),
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/user/devices/{}", urlencode(&bob)),
            None,
        ),
        (
            "GET",
            "/_matrix/federation/v1/user/devices/notauser".into(),
            None,
        ),
        ("GET", "/_matrix/federation/v1/event/$nothere".into(), None),
        (
            "GET",
            format!("/_matrix/federation/v1/state_ids/{f}?event_id=$x"),
            None,
        ),
        ("GET", format!("/_matrix/federation/v1/state/{r}"), None),
        (
            "GET",
            format!("/_matrix/federation/v1/backfill/{r}?v=$x&limit=abc"),
            None,
        ),
        (
            "GET",
            format!("/_matrix/federation/v1/event_auth/{f}/$x"),
            None,
        ),
        (
            "POST",
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({})),
        ),
        (
            "POST",
            format!("/_matrix/federation/v1/get_missing_events/{f}"),
            Some(json!({"earliest_events": [], "latest_events": [], "limit": -1})),
        ),
        (
            "GET",
            "/_matrix/federation/v1/media/download/..%2Fetc".into(),
            None,
        ),
        (
            "GET",
            "/_matrix/federation/v1/media/thumbnail/nothere?width=0&height=x".into(),
            None,
        ),
        (
            "GET",
            "/_matrix/federation/v1/query/directory?room_alias=notanalias".into(),
            None,
        ),
        (
            "GET",
            format!(
                "/_matrix/federation/v1/query/directory?room_alias={}",
                urlencode(&format!("#x:{a2}"))
            ),
            None,
        ),
        (
            "PUT",
            "/_matrix/federation/v1/send/t9".into(),
            Some(
                json!({"origin": b.server_name, "origin_server_ts": 1, "pdus": [], "edus": [{"edu_type": "m.typing", "content": {"room_id": room, "user_id": alice.user_id, "typing": true}}, {"edu_type": "m.receipt", "content": 5}, {"edu_type": "m.direct_to_device", "content": {"sender": alice.user_id}}, {"edu_type": "m.presence", "content": {"push": [{"user_id": alice.user_id, "presence": "online", "status_msg": "forged", "last_active_ago": 0}]}}]}),
            ),
        ),
    ];
    for (method, path, body) in cases {
        let (status, answer) = federation_request(&b, &a, &ca, method, &path, body).await;
        assert!(status < 500, "{method} {path} -> {status}: {answer}");
        if status >= 400 {
            assert!(
                answer["errcode"].is_string(),
                "{method} {path} -> {status}: {answer}"
            );
        }
    }
    // The EDUs about A's own user, sent by B, changed nothing.
    let sync = alice.sync(None, 0).await;
    assert!(!sync.to_string().contains("m.typing"), "{sync}");
    assert!(!sync.to_string().contains("forged"), "{sync}");
    a.stop().await;
    b.stop().await;
}

/// Texts of the room's messages, paging `/messages` back to the start, oldest first.
async fn history_texts(client: &common::Client, room: &str) -> Vec<String> {
    let mut texts = Vec::new();
    let mut from = String::new();
    loop {
        let page = client
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=7{from}"),
                None,
            )
            .await;
        let chunk = page["chunk"].as_array().unwrap();
        texts.extend(
            chunk
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .map(|e| e["content"]["body"].as_str().unwrap().to_owned()),
        );
        match page["end"].as_str() {
            Some(end) if !chunk.is_empty() => from = format!("&from={end}"),
            _ => break,
        }
    }
    texts.reverse();
    texts
}

#[tokio::test]
async fn history_from_before_a_join_is_backfilled_as_the_client_pages_back() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let shared = alice.create_room(json!({"preset": "public_chat"})).await;
    let closed = alice
        .create_room(json!({"preset": "public_chat", "initial_state": [{
            "type": "m.room.history_visibility", "state_key": "",
            "content": {"history_visibility": "joined"}}]}))
        .await;
    for i in 0..30 {
        alice
            .send(&shared, &format!("s{i}"), &format!("shared {i}"))
            .await;
        alice
            .send(&closed, &format!("c{i}"), &format!("closed {i}"))
            .await;
    }
    join_via(&bob, &shared, &a.server_name).await;
    join_via(&bob, &closed, &a.server_name).await;
    alice.send(&shared, "after", "after the join").await;
    alice.send(&closed, "after2", "after the join").await;
    for room in [&shared, &closed] {
        sync_until(&bob, "the message after the join", |s| {
            s["rooms"]["join"][room.as_str()]["timeline"]["events"]
                .as_array()
                .is_some_and(|evs| evs.iter().any(|e| e["content"]["body"] == "after the join"))
        })
        .await;
    }

    // B had only the state from the join: the 30 messages come by backfill, page by page,
    // in order, once each — and never show up in sync as new.
    let since = bob
        .ok(Method::GET, "/_matrix/client/v3/sync?timeout=0", None)
        .await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let expected: Vec<String> = (0..30)
        .map(|i| format!("shared {i}"))
        .chain(["after the join".into()])
        .collect();
    assert_eq!(history_texts(&bob, &shared).await, expected);
    assert_eq!(history_texts(&bob, &shared).await, expected);
    let after = bob
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/sync?timeout=0&since={since}"),
            None,
        )
        .await;
    assert!(
        after["rooms"]["join"][shared.as_str()]["timeline"]["events"]
            .as_array()
            .is_none_or(|evs| evs.is_empty()),
        "{after}"
    );

    // A room whose history is for members only shows B nothing from before B's join: A
    // serves those events to B's server redacted, the graph walkable, the texts not there.
    assert_eq!(history_texts(&bob, &closed).await, vec!["after the join"]);
    let latest = latest_of(&a, &closed).await;
    let (status, history) = federation_request(
        &b,
        &a,
        &ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit=50",
            urlencode(&closed),
            urlencode(&latest)
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    let messages: Vec<&Value> = history["pdus"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .collect();
    assert_eq!(messages.len(), 31, "{history}");
    let bodies: Vec<&str> = messages
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    assert_eq!(bodies, vec!["after the join"]);
    let hidden = messages
        .iter()
        .find(|e| e["content"].as_object().is_some_and(|c| c.is_empty()))
        .unwrap();
    let hidden_id = {
        let object: ruma::CanonicalJsonObject = serde_json::from_value((*hidden).clone()).unwrap();
        let rules = ruma::RoomVersionId::V10.rules().unwrap();
        format!(
            "${}",
            ruma::signatures::reference_hash(&object, &rules).unwrap()
        )
    };
    let (status, event) = federation_request(
        &b,
        &a,
        &ca,
        "GET",
        &format!("/_matrix/federation/v1/event/{}", urlencode(&hidden_id)),
        None,
    )
    .await;
    assert_eq!(status, 200, "{event}");
    assert_eq!(event["pdus"][0]["content"], json!({}));
    // The shared room's history goes whole.
    let (status, history) = federation_request(
        &b,
        &a,
        &ca,
        "GET",
        &format!(
            "/_matrix/federation/v1/backfill/{}?v={}&limit=5",
            urlencode(&shared),
            urlencode(&latest_of(&a, &shared).await)
        ),
        None,
    )
    .await;
    assert_eq!(status, 200, "{history}");
    assert!(
        history["pdus"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .all(|e| e["content"]["body"].is_string())
    );
    a.stop().await;
    b.stop().await;
}

/// A transaction mixing messages and a state event in one room: the messages before the state
/// event are committed together, the state event alone, the message built on it after; each
/// is accepted, in order, and the room's state follows.
#[tokio::test]
async fn a_transaction_of_messages_around_a_state_event_is_taken_in_order() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    let bob_id = format!("@bob:{}", b.server_name);
    let (join_id, joined) = join_by_hand(&b, &a, &ca, &room, &bob_id).await;
    let create = state_id(&joined["state"], "m.room.create", "");
    let power = state_id(&joined["state"], "m.room.power_levels", "");
    let rules = state_id(&joined["state"], "m.room.join_rules", "");
    let since = alice.sync(None, 0).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    let b_hs = b.hs();
    let event = |kind: &str, content: Value, depth: u64, prev: &str, member: &str| {
        let mut e = json!({
            "type": kind, "room_id": room, "sender": bob_id, "content": content,
            "prev_events": [prev], "auth_events": [create, power, member],
            "depth": depth, "origin_server_ts": 1_700_000_000_000u64,
        });
        if kind == "m.room.member" {
            e["state_key"] = json!(bob_id);
            e["auth_events"].as_array_mut().unwrap().push(json!(rules));
        }
        sign_pdu(&b_hs, e)
    };
    let text = |body: &str| json!({"msgtype": "m.text", "body": body});
    let (m1, p1) = event("m.room.message", text("eins"), 100, &join_id, &join_id);
    let (m2, p2) = event("m.room.message", text("zwei"), 101, &m1, &join_id);
    let (renamed, p3) = event(
        "m.room.member",
        json!({"membership": "join", "displayname": "Dr. Bob"}),
        102,
        &m2,
        &join_id,
    );
    let (m3, p4) = event("m.room.message", text("drei"), 103, &renamed, &renamed);
    let pdus: Vec<Value> = [p1, p2, p3, p4]
        .iter()
        .map(|p| serde_json::to_value(p).unwrap())
        .collect();
    let body = json!({"origin": b.server_name, "origin_server_ts": 1_700_000_000_000u64, "pdus": pdus, "edus": []});
    let (status, result) = federation_request(
        &b,
        &a,
        &ca,
        "PUT",
        "/_matrix/federation/v1/send/mixed",
        Some(body),
    )
    .await;
    assert_eq!(status, 200, "{result}");
    for id in [&m1, &m2, &renamed, &m3] {
        assert_eq!(result["pdus"][id], json!({}), "{id}: {result}");
    }
    let sync = alice.sync(Some(&since), 0).await;
    let timeline: Vec<&str> = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        timeline,
        vec![m1.as_str(), m2.as_str(), renamed.as_str(), m3.as_str()]
    );
    assert_eq!(common::bodies(&sync, &room), vec!["eins", "zwei", "drei"]);
    let member = alice
        .ok(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/state/m.room.member/{bob_id}"),
            None,
        )
        .await;
    assert_eq!(member["displayname"], "Dr. Bob", "{member}");
}

/// Bodies of `room` that `client` sees from `since` on, until `done` says it has them all.
async fn bodies_until(
    client: &common::Client,
    room: &str,
    since: String,
    done: impl Fn(&[String]) -> bool,
) -> (Vec<String>, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut seen: Vec<String> = vec![];
    let mut since = since;
    while !done(&seen) {
        assert!(std::time::Instant::now() < deadline, "saw {seen:?}");
        let sync = client.sync(Some(&since), 1_000).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        seen.extend(common::bodies(&sync, room));
    }
    (seen, since)
}

/// A gap longer than `get_missing_events` reaches (10 events): the events it brings join the
/// timeline on the state the sending server reports at the gap (`/state_ids`, `/event`), and
/// what lay in the gap arrives later from its own server, once each — the missing event that
/// had been fetched as an outlier included.
#[tokio::test]
async fn a_gap_beyond_missing_events_is_closed_with_the_state_at_it() {
    let (Pair { a, b, ca: _ca, a2 }, link) = pair_linked().await;
    let (alice, bob, carol, room) = room_of_three(&a, &b, &a2, "Tumorkonferenz").await;
    let since = sync_until(&alice, "carol's join at A", |s| {
        member_of(s, &room, &carol.user_id).as_deref() == Some("join")
    })
    .await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();

    // B cannot reach A: Bob's fifteen messages get to Carol's server only.
    link.set_cut(true);
    let sent: Vec<String> = (1..=15).map(|i| format!("Befund {i}")).collect();
    for (i, body) in sent.iter().enumerate() {
        bob.send(&room, &format!("g{i}"), body).await;
    }
    wait_for(&carol, &room, "Befund 15", None).await;
    // Carol answers; A fetches the ten events before her answer, and the state before them.
    carol.send(&room, "c1", "alles da").await;
    let (seen, since) = bodies_until(&alice, &room, since, |seen| {
        seen.iter().any(|b| b == "alles da")
    })
    .await;
    let mut expected: Vec<String> = sent[5..].to_vec();
    expected.push("alles da".into());
    assert_eq!(seen, expected);

    // The link is back and A writes: B sends what A lacks, the first five arrive once each.
    link.set_cut(false);
    alice.send(&room, "a1", "wieder da?").await;
    let (seen, since) = bodies_until(&alice, &room, since, |seen| {
        seen.iter().filter(|b| b.starts_with("Befund")).count() >= 5
    })
    .await;
    let from_bob: Vec<&String> = seen.iter().filter(|b| b.starts_with("Befund")).collect();
    assert_eq!(from_bob, sent[..5].iter().collect::<Vec<_>>(), "{seen:?}");
    let sync = alice.sync(Some(&since), 500).await;
    assert!(common::bodies(&sync, &room).is_empty(), "{sync}");
    a.stop().await;
    b.stop().await;
}

/// A as a notary (`/_matrix/key/v2/query`): B's key document as B signed it, with A's
/// signature added; A's own; nothing for a server that cannot be reached; too many servers
/// refused.
#[tokio::test]
async fn a_notary_serves_other_servers_keys_signed_by_them_and_by_itself() {
    let Pair { a, b, ca, a2: _ } = pair().await;
    let (https, base) = federation_listener(&a, &ca);
    let (a_hs, b_hs) = (a.hs(), b.hs());
    // One signer's signature, the others' set aside.
    let verify = |doc: &Value, signer: &str, hs: &tim_homeserver::homeserver::Homeserver| {
        let mut doc = doc.clone();
        let own = doc["signatures"][signer].clone();
        doc["signatures"] = json!({ signer: own });
        let object: ruma::CanonicalJsonObject = serde_json::from_value(doc).unwrap();
        let public = ruma::serde::Base64::new(hs.key.public_key().to_vec());
        let keys = BTreeMap::from([(
            signer.to_owned(),
            BTreeMap::from([(hs.federation.keys.key_id(), public)]),
        )]);
        ruma::signatures::verify_json(&keys, &object)
    };
    let query = |body: Value| {
        let (https, url) = (https.clone(), format!("{base}/_matrix/key/v2/query"));
        async move {
            let resp = https.post(url).json(&body).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, answer) = query(json!({"server_keys": {
        &b.server_name: {},
        &a.server_name: {},
        "nowhere.invalid": {},
    }}))
    .await;
    assert_eq!(status, 200, "{answer}");
    let docs = answer["server_keys"].as_array().unwrap();
    assert_eq!(docs.len(), 2, "{answer}");
    let of = |name: &str| docs.iter().find(|d| d["server_name"] == name).unwrap();
    let b_doc = of(&b.server_name);
    assert!(b_doc["verify_keys"][b_hs.federation.keys.key_id()]["key"].is_string());
    verify(b_doc, &b.server_name, &b_hs).unwrap();
    verify(b_doc, &a.server_name, &a_hs).unwrap();
    verify(of(&a.server_name), &a.server_name, &a_hs).unwrap();
    // A tampered copy does not verify: the signatures cover the document.
    let mut tampered = b_doc.clone();
    tampered["valid_until_ts"] = json!(1);
    assert!(verify(&tampered, &b.server_name, &b_hs).is_err());

    // The single-server form, from what A now holds.
    let resp = https
        .get(format!("{base}/_matrix/key/v2/query/{}", b.server_name))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let answer: Value = resp.json().await.unwrap();
    let docs = answer["server_keys"].as_array().unwrap();
    assert_eq!(docs.len(), 1, "{answer}");
    verify(&docs[0], &a.server_name, &a_hs).unwrap();
    // Keys that must stay valid longer than B vouches for: asked again (B's answer is the
    // same, so the document is as before).
    let far = tim_homeserver::rooms::create::now_ms() + 365 * 24 * 3600 * 1000;
    let (status, answer) = query(json!({"server_keys": {
        &b.server_name: {"ed25519:nope": {"minimum_valid_until_ts": far}},
    }}))
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["server_keys"].as_array().unwrap().len(), 1);

    let many: serde_json::Map<String, Value> = (0..21)
        .map(|i| (format!("s{i}.example"), json!({})))
        .collect();
    let (status, answer) = query(json!({ "server_keys": many })).await;
    assert_eq!(
        (status, answer["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM"))
    );
    a.stop().await;
    b.stop().await;
}

/// The newest event of a room on `server`.
async fn latest_of(server: &TestServer, room: &str) -> String {
    server
        .hs()
        .stores
        .events
        .room_events(
            room,
            i64::MAX,
            0,
            tim_homeserver::store::Direction::Backward,
            1,
            &Default::default(),
        )
        .await
        .unwrap()[0]
        .event_id
        .clone()
}
