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
    let (a_name, a2, b_name) = (unique_name("fa"), unique_name("fa2"), unique_name("fb"));
    let ca = TestCa::new(&[&a_name, &a2, &b_name]);
    let la = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let lb = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let resolve: BTreeMap<String, std::net::SocketAddr> = [
        (a_name.clone(), la.local_addr().unwrap()),
        (a2.clone(), la.local_addr().unwrap()),
        (b_name.clone(), lb.local_addr().unwrap()),
    ]
    .into();
    let setup = |name: String| {
        let resolve = resolve.clone();
        let ca_file = ca.ca_file.clone();
        move |c: &mut tim_homeserver::config::Config| {
            c.server_name = name;
            c.federation.resolve = resolve;
            c.federation.ca_certificates = Some(ca_file);
        }
    };
    let a = TestServer::start_full(Store::Sqlite, Some((la, &ca)), setup(a_name)).await;
    let b = TestServer::start_full(Store::Postgres, Some((lb, &ca)), setup(b_name)).await;
    a.add_tenant(&a2).await;
    Pair { a, b, ca, a2 }
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
    let a_tls = a.tls_addr.unwrap();
    let https = ca.client(&a.server_name, a_tls);
    let base = format!("https://{}:{}", a.server_name, a_tls.port());

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
