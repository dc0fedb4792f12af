//! Findings of the security review before federation (issue 14): each has a test here that
//! failed before its fix. Every test runs on SQLite and on PostgreSQL.

mod common;

use std::time::Duration;

use common::{STORES, TestServer, raw_http, unique_name};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn get(host: &str, path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n").into_bytes()
}

fn with_body(method: &str, host: &str, path: &str, token: Option<&str>, body: &[u8]) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

/// 1. Endpoints whose authentication the spec leaves optional answer 401 without a token.
#[tokio::test]
async fn optional_auth_endpoints_without_a_token_answer_401() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let anon = server.client();
        for path in [
            "/_matrix/client/v3/account/password",
            "/_matrix/client/v3/account/deactivate",
        ] {
            anon.err(
                Method::POST,
                path,
                Some(json!({"new_password": "new-password-1"})),
                401,
                "M_MISSING_TOKEN",
            )
            .await;
        }
        server.stop().await;
    }
}

/// 2. Hosts are compared normalised, and a host that names no tenant reaches none.
#[tokio::test]
async fn unknown_hosts_reach_no_tenant() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let other = unique_name("org-b");
        server.add_tenant(&other).await;
        let gone = unique_name("gone");
        server.add_tenant(&gone).await;
        server
            .operator()
            .ok(
                Method::DELETE,
                &format!("/_tim/operator/v1/tenants/{gone}"),
                None,
            )
            .await;
        let whoami_server = |v: &Value| v["m.homeserver"]["base_url"].as_str().map(str::to_owned);
        let well_known = "/.well-known/matrix/client";
        let port = server.addr.port();
        // Case, port and a trailing dot do not matter: organisation B's host reaches B.
        for host in [
            other.to_uppercase(),
            format!("{other}."),
            format!("{}:{port}", other.to_uppercase()),
        ] {
            let (status, v) = raw_http(server.addr, &get(&host, well_known, None)).await;
            assert_eq!(status, 200, "{host}: {v}");
            assert_eq!(
                whoami_server(&v),
                Some(format!("https://{other}")),
                "{host}"
            );
        }
        // Names that are not served, no Host at all, a removed tenant, an address that is not
        // the listener's: 404 M_UNRECOGNIZED, never the default tenant.
        for host in [
            "unknown.example".to_owned(),
            gone.clone(),
            "127.0.0.2".to_owned(),
            "[::1]".to_owned(),
            format!("x.{}", server.server_name),
        ] {
            let (status, v) = raw_http(server.addr, &get(&host, well_known, None)).await;
            assert_eq!(
                (status, v["errcode"].as_str()),
                (404, Some("M_UNRECOGNIZED")),
                "{host}: {v}"
            );
            // Registration there would have made an account at the default tenant.
            let (status, v) = raw_http(
                server.addr,
                &with_body(
                    "POST",
                    &host,
                    "/_matrix/client/v3/register",
                    None,
                    br#"{"username":"intruder","password":"pw-123456","auth":{"type":"m.login.dummy"}}"#,
                ),
            )
            .await;
            assert_eq!(status, 404, "{host}: {v}");
        }
        let no_host = b"GET /.well-known/matrix/client HTTP/1.0\r\n\r\n";
        let (status, v) = raw_http(server.addr, no_host).await;
        assert_eq!(
            (status, v["errcode"].as_str()),
            (404, Some("M_UNRECOGNIZED")),
            "{v}"
        );
        assert!(
            !server
                .hs()
                .accounts
                .user_exists(
                    &ruma::UserId::parse(format!("@intruder:{}", server.server_name)).unwrap()
                )
                .await
                .unwrap()
        );
        // The listener's own address stands for the default tenant (a newcomer's client at
        // http://127.0.0.1:8008), which announces its own base URL.
        let (status, v) = raw_http(
            server.addr,
            &get(&format!("127.0.0.1:{port}"), well_known, None),
        )
        .await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(whoami_server(&v), Some(server.hs().config.public_baseurl()));
        server.stop().await;
    }
}

/// 2. Where the config says no, not even the listener's address stands for the default tenant.
#[tokio::test]
async fn the_listen_address_fallback_can_be_switched_off() {
    let server = TestServer::start_with(common::Store::Sqlite, |c| {
        c.default_tenant_on_listen_address = false
    })
    .await;
    let host = format!("127.0.0.1:{}", server.addr.port());
    let (status, _) = raw_http(server.addr, &get(&host, "/_matrix/client/versions", None)).await;
    assert_eq!(status, 404);
    server.stop().await;
    // Nor for requests through a trusted proxy: the address is the proxy's choice there.
    let server = TestServer::start_with(common::Store::Sqlite, |c| {
        c.trusted_proxies = vec!["127.0.0.1".into()]
    })
    .await;
    let host = format!("127.0.0.1:{}", server.addr.port());
    let (status, _) = raw_http(server.addr, &get(&host, "/_matrix/client/versions", None)).await;
    assert_eq!(status, 404);
    server.stop().await;
}

/// 2. An absolute request target names the tenant, whatever the Host header says.
#[tokio::test]
async fn an_absolute_target_names_the_tenant() {
    let server = TestServer::start(common::Store::Sqlite).await;
    let request = format!(
        "GET http://unknown.example/_matrix/client/versions HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.server_name
    );
    let (status, v) = raw_http(server.addr, request.as_bytes()).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_UNRECOGNIZED")),
        "{v}"
    );
    let request = format!(
        "GET http://{}/_matrix/client/versions HTTP/1.1\r\nHost: unknown.example\r\nConnection: close\r\n\r\n",
        server.server_name
    );
    let (status, _) = raw_http(server.addr, request.as_bytes()).await;
    assert_eq!(status, 200);
    server.stop().await;
}

/// 5. What one request may ask for is bounded: invites and initial state of a new room, filter
/// lists, devices to delete, users in a key query.
#[tokio::test]
async fn request_sizes_are_bounded() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let many_users: Vec<String> = (0..501)
            .map(|i| format!("@u{i}:{}", server.server_name))
            .collect();
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"invite": many_users})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let state: Vec<Value> = (0..101)
            .map(|i| json!({"type": "m.corpus", "state_key": i.to_string(), "content": {}}))
            .collect();
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"initial_state": state})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let types: Vec<String> = (0..101).map(|i| format!("m.t{i}")).collect();
        alice
            .err(
                Method::POST,
                &format!("/_matrix/client/v3/user/{}/filter", alice.user_id),
                Some(json!({"room": {"timeline": {"not_types": types}}})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let filter =
            serde_json::to_string(&json!({"room": {"timeline": {"types": types}}})).unwrap();
        alice
            .err(
                Method::GET,
                &format!(
                    "/_matrix/client/v3/sync?timeout=0&filter={}",
                    percent_encoding::utf8_percent_encode(
                        &filter,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                ),
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let devices: Vec<String> = (0..1001).map(|i| format!("D{i}")).collect();
        let v = alice
            .err(
                Method::POST,
                "/_matrix/client/v3/delete_devices",
                Some(json!({"devices": devices})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        assert!(
            v.get("flows").is_none(),
            "refused before the password is asked for"
        );
        let query: serde_json::Map<String, Value> = (0..1001)
            .map(|i| (format!("@q{i}:{}", server.server_name), json!([])))
            .collect();
        alice
            .err(
                Method::POST,
                "/_matrix/client/v3/keys/query",
                Some(json!({"device_keys": query})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        server.stop().await;
    }
}

/// 7. Deleting an alias by room power needs membership: a room admin who left cannot.
#[tokio::test]
async fn alias_deletion_needs_membership() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = alice
            .create_room(json!({"preset": "public_chat",
                "power_level_content_override": {"users": {alice.user_id.clone(): 100, bob.user_id.clone(): 100}}}))
            .await;
        let alias = format!(
            "/_matrix/client/v3/directory/room/%23team:{}",
            server.server_name
        );
        alice
            .ok(Method::PUT, &alias, Some(json!({"room_id": room})))
            .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(json!({})),
        )
        .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/leave"),
            Some(json!({})),
        )
        .await;
        bob.err(Method::DELETE, &alias, None, 403, "M_FORBIDDEN")
            .await;
        alice.ok(Method::DELETE, &alias, None).await;
        server.stop().await;
    }
}

/// 3. Tenant names are DNS names: `..` and friends are refused before they become paths.
#[tokio::test]
async fn tenant_names_that_are_paths_are_refused() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let internal = server.internal_addr;
        for name in [
            "%2E%2E",
            "%2E",
            "a..b",
            "Upper.example",
            "a.example%3A8448",
            "127.0.0.1",
            "a_b.example",
        ] {
            let (status, v) = raw_http(
                internal,
                &with_body(
                    "PUT",
                    "localhost",
                    &format!("/_tim/operator/v1/tenants/{name}"),
                    Some("operator-secret"),
                    b"{}",
                ),
            )
            .await;
            assert_eq!(
                (status, v["errcode"].as_str()),
                (400, Some("M_INVALID_PARAM")),
                "{name}: {v}"
            );
        }
        let (status, _) = raw_http(
            internal,
            &with_body(
                "DELETE",
                "localhost",
                "/_tim/operator/v1/tenants/%2E%2E?delete_data=true",
                Some("operator-secret"),
                b"",
            ),
        )
        .await;
        assert_eq!(status, 400);
        assert!(server.data_dir().exists());
        assert_eq!(server.tenants.names().len(), 1);
        server.stop().await;
    }
}

/// 4. The operator API and the metrics are not on the public listener; the admin API is
/// rate-limited.
#[tokio::test]
async fn operator_api_and_metrics_listen_internally() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| {
            c.rate_limit.disabled = false;
            c.rate_limit.burst = 3.0;
            c.rate_limit.per_second = 0.01;
        })
        .await;
        let mut public = server.client();
        public.token = Some("operator-secret".into());
        public
            .err(
                Method::GET,
                "/_tim/operator/v1/tenants",
                None,
                404,
                "M_UNRECOGNIZED",
            )
            .await;
        public
            .err(Method::GET, "/metrics", None, 404, "M_UNRECOGNIZED")
            .await;
        let v = server
            .operator()
            .ok(Method::GET, "/_tim/operator/v1/tenants", None)
            .await;
        assert_eq!(v["tenants"][0], server.server_name.as_str());
        // Wrong admin tokens are refused, and soon rate-limited.
        let mut guesser = server.client();
        guesser.token = Some("guess".into());
        let mut codes = vec![];
        for _ in 0..5 {
            let (status, _) = guesser.raw(Method::GET, "/_tim/admin/v1/users", None).await;
            codes.push(status.as_u16());
        }
        assert_eq!(codes, [401, 401, 401, 429, 429]);
        server.stop().await;
    }
}

/// 5. Behind a trusted proxy the forwarded client address is rate-limited, not the proxy's;
/// from anyone else the forwarding headers are ignored.
#[tokio::test]
async fn rate_limits_key_on_the_forwarded_address_only_behind_trusted_proxies() {
    for (trusted, store) in [
        (true, common::Store::Sqlite),
        (false, common::Store::Postgres),
    ] {
        let server = TestServer::start_with(store, |c| {
            c.rate_limit.disabled = false;
            c.rate_limit.burst = 2.0;
            c.rate_limit.per_second = 0.01;
            if trusted {
                c.trusted_proxies = vec!["127.0.0.0/8".into()];
            }
        })
        .await;
        let host = server.server_name.clone();
        let check = |client: &str| {
            format!(
                "GET /_matrix/client/v3/register/available?username=free HTTP/1.1\r\nHost: {host}\r\nX-Forwarded-For: 6.6.6.6, {client}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes()
        };
        let mut a = vec![];
        for _ in 0..3 {
            a.push(raw_http(server.addr, &check("198.51.100.1")).await.0);
        }
        assert_eq!(a, [200, 200, 429]);
        let b = raw_http(server.addr, &check("198.51.100.2")).await.0;
        // Trusted: another client behind the proxy has its own bucket. Not trusted: the header
        // is the client's own word and counts for nothing.
        assert_eq!(b, if trusted { 200 } else { 429 }, "trusted: {trusted}");
        server.stop().await;
    }
}

/// 5. Wrong passwords throttle the account, on every endpoint that checks one.
#[tokio::test]
async fn wrong_passwords_throttle_the_account() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| {
            c.rate_limit.login_failures_allowed = 3;
        })
        .await;
        let alice = server.register("alice").await;
        let body = |pw: &str| {
            json!({"auth": {"type": "m.login.password", "password": pw,
                "identifier": {"type": "m.id.user", "user": alice.user_id}}, "devices": ["X"]})
        };
        for _ in 0..3 {
            let (status, v) = alice
                .raw(
                    Method::POST,
                    "/_matrix/client/v3/delete_devices",
                    Some(body("wrong")),
                )
                .await;
            assert_eq!(status, 401, "{v}");
            assert_eq!(v["errcode"], "M_FORBIDDEN", "{v}");
        }
        let (status, v) = alice
            .raw(
                Method::POST,
                "/_matrix/client/v3/delete_devices",
                Some(body("wrong")),
            )
            .await;
        assert_eq!(status, 401, "the fourth failure still costs a hash: {v}");
        // Now every attempt waits, whichever endpoint and even with the right password.
        let v = alice
            .err(
                Method::POST,
                "/_matrix/client/v3/delete_devices",
                Some(body("secret-pw")),
                429,
                "M_LIMIT_EXCEEDED",
            )
            .await;
        assert!(
            v["retry_after_ms"]
                .as_u64()
                .is_some_and(|ms| ms > 0 && ms <= 1000),
            "{v}"
        );
        let anon = server.client();
        anon.err(
            Method::POST,
            "/_matrix/client/v3/login",
            Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw"})),
            429,
            "M_LIMIT_EXCEEDED",
        )
        .await;
        tokio::time::sleep(Duration::from_millis(1100)).await;
        alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/delete_devices",
                Some(body("secret-pw")),
            )
            .await;
        server.stop().await;
    }
}

/// 5. Password checks on device deletion are rate-limited like logins.
#[tokio::test]
async fn device_deletion_is_rate_limited() {
    let server = TestServer::start_with(common::Store::Sqlite, |c| {
        c.rate_limit.disabled = false;
        c.rate_limit.burst = 5.0;
        c.rate_limit.per_second = 0.01;
    })
    .await;
    let alice = server.register("alice").await;
    let mut last = 0;
    for i in 0..6 {
        let (status, _) = alice
            .raw(
                Method::DELETE,
                &format!("/_matrix/client/v3/devices/D{i}"),
                Some(json!({})),
            )
            .await;
        last = status.as_u16();
    }
    assert_eq!(last, 429);
    server.stop().await;
}

/// 5. Hashing is limited for the whole process: requests spread over tenants share one queue.
#[tokio::test]
async fn password_hashing_is_limited_across_tenants() {
    let server = TestServer::start_with(common::Store::Sqlite, |c| {
        c.argon2.m_cost_kib = 19 * 1024;
        c.argon2.t_cost = 2;
        c.argon2.max_concurrent = 1;
        c.argon2.max_queued = 1;
    })
    .await;
    let mut hosts = vec![server.server_name.clone()];
    for _ in 0..3 {
        let name = unique_name("t");
        server.add_tenant(&name).await;
        hosts.push(name);
    }
    // Eight logins at once over four tenants: one hashes, one waits, the rest are told to come
    // back (a per-tenant limit would have let four hash at once and queued the rest).
    let logins = hosts.iter().cycle().take(8).map(|host| {
        let c = server.client_for(host);
        async move {
            c.raw(
                Method::POST,
                "/_matrix/client/v3/login",
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "nobody"}, "password": "pw"})),
            )
            .await
        }
    });
    let answers = futures::future::join_all(logins).await;
    let refused = answers.iter().filter(|(s, _)| s.as_u16() == 429).count();
    assert!(refused >= 4, "{answers:?}");
    assert!(
        answers
            .iter()
            .all(|(s, _)| [403, 429].contains(&s.as_u16()))
    );
    server.stop().await;
}

/// 5. Slow clients are cut off: headers, bodies, idle connections, connections per address.
#[tokio::test]
async fn slow_and_greedy_clients_are_cut_off() {
    let server = TestServer::start_with(common::Store::Sqlite, |c| {
        c.http.header_read_timeout_secs = 1;
        c.http.body_read_timeout_secs = 1;
        c.http.max_connections_per_ip = 4;
    })
    .await;
    let host = server.server_name.clone();
    let closed_within = |mut s: tokio::net::TcpStream, within: Duration| async move {
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        let read = tokio::time::timeout(within, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await;
        (read.is_ok(), got)
    };
    // A socket that never says anything.
    let s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (closed, _) = closed_within(s, Duration::from_secs(5)).await;
    assert!(closed, "a silent connection is disconnected");
    // Slow loris: headers that never end.
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: {host}\r\nX-Slow: a").as_bytes(),
    )
    .await
    .unwrap();
    let (closed, _) = closed_within(s, Duration::from_secs(5)).await;
    assert!(
        closed,
        "a client that never finishes its headers is disconnected"
    );
    // A body that never arrives: 408.
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!("POST /_matrix/client/v3/login HTTP/1.1\r\nHost: {host}\r\nContent-Length: 100\r\n\r\n{{\"type\"").as_bytes(),
    )
    .await
    .unwrap();
    let (closed, answer) = closed_within(s, Duration::from_secs(5)).await;
    assert!(closed);
    assert_eq!(
        common::parse_http_answer(&answer).0,
        408,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    // An idle keep-alive connection is closed after the header timeout.
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!("GET /_matrix/client/versions HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let (closed, answer) = closed_within(s, Duration::from_secs(5)).await;
    assert!(closed, "idle keep-alive connection left open");
    assert_eq!(common::parse_http_answer(&answer).0, 200);
    // Four connections from one address are served; a fifth is closed at once.
    let mut open = Vec::new();
    for _ in 0..4 {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET").await.unwrap();
        open.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let fifth = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (closed, got) = closed_within(fifth, Duration::from_millis(300)).await;
    assert!(closed && got.is_empty(), "the fifth connection was served");
    drop(open);
    server.stop().await;
}

/// 6. Admin actions are in the audit log with their outcome, failed ones too.
#[tokio::test]
async fn admin_actions_are_audited_with_their_outcome() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let token = server.admin_token(&server.server_name).await;
        let mut admin = server.client();
        admin.token = Some(token);
        let bob = server.register("bob").await;
        let bob_path = bob.user_id.replace('@', "%40").replace(':', "%3A");
        admin
            .ok(
                Method::POST,
                &format!("/_tim/admin/v1/users/{bob_path}/deactivate"),
                Some(json!({})),
            )
            .await;
        admin
            .err(
                Method::DELETE,
                "/_tim/admin/v1/media/nosuchmedia",
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        let log = admin
            .ok(Method::GET, "/_tim/admin/v1/audit_log", None)
            .await;
        let entry = |action: &str| {
            log["entries"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["action"] == action)
                .cloned()
                .unwrap_or_else(|| panic!("{action} not in {log}"))
        };
        assert_eq!(entry("users.deactivate")["outcome"], "ok");
        assert_eq!(entry("users.deactivate")["target"], bob.user_id.as_str());
        assert_eq!(entry("media.delete")["outcome"], "failed: M_NOT_FOUND");
        server.stop().await;
    }
}

/// 7. Only members who may set the canonical alias may give a room an alias.
#[tokio::test]
async fn aliases_need_the_rooms_permission() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        let alias = |name: &str| {
            format!(
                "/_matrix/client/v3/directory/room/%23{name}:{}",
                server.server_name
            )
        };
        // A stranger cannot name someone else's room.
        bob.err(
            Method::PUT,
            &alias("squat"),
            Some(json!({"room_id": room})),
            403,
            "M_FORBIDDEN",
        )
        .await;
        // Nor can a member without the power to set the canonical alias.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{room}"),
            Some(json!({})),
        )
        .await;
        bob.err(
            Method::PUT,
            &alias("squat"),
            Some(json!({"room_id": room})),
            403,
            "M_FORBIDDEN",
        )
        .await;
        alice
            .ok(Method::PUT, &alias("team"), Some(json!({"room_id": room})))
            .await;
        let v = bob.ok(Method::GET, &alias("team"), None).await;
        assert_eq!(v["room_id"], room.as_str());
        bob.err(Method::GET, &alias("squat"), None, 404, "M_NOT_FOUND")
            .await;
        server.stop().await;
    }
}

/// 8. A tenant is served only once it is in the registry on disk.
#[tokio::test]
async fn a_tenant_is_served_only_after_its_registry_entry_is_saved() {
    for store in STORES {
        let server = TestServer::start(store).await;
        // Saving the registry fails: its temporary file's place is taken by a folder.
        std::fs::create_dir_all(server.data_dir().join("tenants.json.tmp")).unwrap();
        let name = unique_name("unsaved");
        let (status, v) = server
            .operator()
            .raw(
                Method::PUT,
                &format!("/_tim/operator/v1/tenants/{name}"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 500, "{v}");
        let (status, _) =
            raw_http(server.addr, &get(&name, "/_matrix/client/versions", None)).await;
        assert_eq!(
            status, 404,
            "a tenant that would be lost at restart is not served"
        );
        // Once saving works again, it can be added (its database lock was given back).
        std::fs::remove_dir(server.data_dir().join("tenants.json.tmp")).unwrap();
        server.add_tenant(&name).await;
        let saved = std::fs::read_to_string(server.data_dir().join("tenants.json")).unwrap();
        assert!(saved.contains(&name));
        server.stop().await;
    }
}

/// 9. Two processes never serve the same tenant database.
#[tokio::test]
async fn a_tenant_database_is_served_by_one_process() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let config = (*server.tenants.config()).as_ref().clone();
        let second = tim_homeserver::tenants::Tenants::open(std::sync::Arc::new(config)).await;
        let err = second
            .err()
            .expect("a second server on the same database is refused");
        assert!(err.to_string().contains("another process"), "{err}");
        server.stop().await;
    }
}

/// 9. Passwords are bounded where they are set; a refused registration keeps its token.
#[tokio::test]
async fn passwords_are_bounded() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| c.open_registration = false).await;
        let token = server
            .operator()
            .ok(
                Method::POST,
                &format!(
                    "/_tim/operator/v1/tenants/{}/registration_tokens",
                    server.server_name
                ),
                Some(json!({})),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let anon = server.client();
        for password in [String::new(), "x".repeat(513)] {
            anon.err(
                Method::POST,
                "/_matrix/client/v3/register",
                Some(json!({"username": "carol", "password": password,
                    "auth": {"type": "m.login.registration_token", "token": token}})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        }
        let mut carol = server.client();
        let v = carol
            .ok(
                Method::POST,
                "/_matrix/client/v3/register",
                Some(json!({"username": "carol", "password": "a-fine-password",
                    "auth": {"type": "m.login.registration_token", "token": token}})),
            )
            .await;
        carol.adopt(&v);
        carol
            .err(
                Method::POST,
                "/_matrix/client/v3/account/password",
                Some(json!({"new_password": "", "auth": {"type": "m.login.password", "password": "a-fine-password",
                    "identifier": {"type": "m.id.user", "user": carol.user_id}}})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        server.stop().await;
    }
}

/// 10. What stock clients send: no body where every field is optional, bodies that are not
/// JSON, values outside the spec's closed sets.
#[tokio::test]
async fn stock_client_requests() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let token = bob.token.clone().unwrap();
        let host = server.server_name.clone();
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        let raw = |method: &str, path: String, body: &[u8]| {
            with_body(method, &host, &path, Some(&token), body)
        };
        // matrix-nio joins, leaves and forgets with no body at all.
        for (method, path) in [
            ("POST", format!("/_matrix/client/v3/join/{room}")),
            ("POST", format!("/_matrix/client/v3/rooms/{room}/leave")),
            ("POST", format!("/_matrix/client/v3/rooms/{room}/join")),
            (
                "POST",
                format!("/_matrix/client/v3/rooms/{room}/read_markers"),
            ),
            ("POST", "/_matrix/client/v3/keys/upload".to_owned()),
            ("POST", "/_matrix/client/v3/createRoom".to_owned()),
            (
                "POST",
                "/_matrix/client/v3/user_directory/search".to_owned(),
            ),
            ("POST", "/_matrix/client/v3/logout".to_owned()),
        ] {
            let (status, v) = raw_http(server.addr, &raw(method, path.clone(), b"")).await;
            // The user directory needs a search term: that one is refused as not JSON.
            if path.ends_with("/search") {
                assert_eq!(
                    (status, v["errcode"].as_str()),
                    (400, Some("M_NOT_JSON")),
                    "{path}: {v}"
                );
            } else {
                assert_eq!(status, 200, "{method} {path}: {v}");
            }
        }
        let mut bob = server.client();
        bob.register("bob2").await;
        // Not JSON at all: M_NOT_JSON, whatever the endpoint.
        for body in [&b"{"[..], b"not json", b"\xff\xfe", b"{\"a\":}"] {
            let (status, v) = raw_http(
                server.addr,
                &with_body(
                    "POST",
                    &host,
                    "/_matrix/client/v3/createRoom",
                    bob.token.as_deref(),
                    body,
                ),
            )
            .await;
            assert_eq!(
                (status, v["errcode"].as_str()),
                (400, Some("M_NOT_JSON")),
                "{v}"
            );
        }
        // Values outside the spec's closed sets are refused, not stored.
        bob.err(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"preset": "no_such_preset"})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bob.err(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"visibility": "secret"})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bob.err(
            Method::PUT,
            &format!("/_matrix/client/v3/presence/{}/status", bob.user_id),
            Some(json!({"presence": "busy"})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bob.err(
            Method::GET,
            "/_matrix/client/v3/sync?set_presence=busy&timeout=0",
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bob.err(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/members?membership=lurking"),
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bob.err(
            Method::GET,
            "/_matrix/client/v3/pushrules/global/nosuchkind/rule",
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await;
        let rooms = bob
            .ok(Method::GET, "/_matrix/client/v3/joined_rooms", None)
            .await;
        assert_eq!(rooms["joined_rooms"], json!([]), "nothing was created");
        // A key backup whose auth_data is not signed yet (the spec does not require it).
        bob.ok(
            Method::POST,
            "/_matrix/client/v3/room_keys/version",
            Some(
                json!({"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2",
                "auth_data": {"public_key": "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"}}),
            ),
        )
        .await;
        bob.err(
            Method::POST,
            "/_matrix/client/v3/room_keys/version",
            Some(json!({"algorithm": "org.example.backup", "auth_data": {}})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        server.stop().await;
    }
}

/// 9. Registration tokens stored in plain text before are hashed at start and still work.
#[tokio::test]
async fn plain_registration_tokens_are_hashed_at_start() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let name = unique_name("legacy");
    let config = std::sync::Arc::new(tim_homeserver::config::Config {
        server_name: name.clone(),
        data_dir: dir.path().to_owned(),
        database_url: format!("sqlite://{}", dir.path().display()),
        ..Default::default()
    });
    let tenants = tim_homeserver::tenants::Tenants::open(config.clone())
        .await
        .unwrap();
    tenants.close().await;
    // A row as an older version wrote it: the token itself in `token`.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}/{name}.db", dir.path().display()))
        .await
        .unwrap();
    sqlx::query("INSERT INTO registration_tokens (token, uses_allowed, completed, expiry_ts, created_ts) VALUES ('legacy-code-42', 1, 0, NULL, 0)")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let tenants = tim_homeserver::tenants::Tenants::open(config)
        .await
        .unwrap();
    let hs = tenants.default_tenant();
    assert!(
        hs.accounts
            .registration_token_valid("legacy-code-42")
            .await
            .unwrap()
    );
    let rows = hs.stores.accounts.list_registration_tokens().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].token,
        tim_homeserver::accounts::registration_token_id("legacy-code-42")
    );
    assert_eq!(rows[0].hint, "le");
    assert!(
        hs.accounts
            .consume_registration_token("legacy-code-42")
            .await
            .unwrap()
    );
    assert!(
        !hs.accounts
            .registration_token_valid("legacy-code-42")
            .await
            .unwrap()
    );
    tenants.close().await;
}

/// 10. A session as a stock client (matrix-nio, Element) drives it, with the bodies they send:
/// empty where everything is optional, extra fields the spec does not know.
#[tokio::test]
async fn stock_client_session() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let room = alice.create_room(json!({"preset": "private_chat"})).await;
        let mut bob = server.client();
        bob.register("bob").await;
        let login = server
            .client()
            .ok(
                Method::POST,
                "/_matrix/client/v3/login",
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"},
                    "password": "secret-pw", "initial_device_display_name": "nio", "org.example.extra": 1})),
            )
            .await;
        bob.adopt(&login);
        let (me, host) = (bob.user_id.clone(), server.server_name.clone());
        alice
            .ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/invite"),
                Some(json!({"user_id": me, "reason": "welcome", "extra": true})),
            )
            .await;
        let token = bob.token.clone().unwrap();
        let event = alice.send(&room, "s1", "hello").await;
        let steps: Vec<(&str, String, Option<Value>)> = vec![
            ("POST", format!("/_matrix/client/v3/join/{room}"), None),
            (
                "GET",
                "/_matrix/client/v3/sync?timeout=0&full_state=false&set_presence=online".into(),
                None,
            ),
            (
                "PUT",
                format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/nio1"),
                Some(json!({"msgtype": "m.text", "body": "hi", "io.nio.extra": {"x": 1}})),
            ),
            (
                "PUT",
                format!("/_matrix/client/v3/rooms/{room}/typing/{me}"),
                Some(json!({"typing": true, "timeout": 30000})),
            ),
            (
                "POST",
                format!("/_matrix/client/v3/rooms/{room}/receipt/m.read/{event}"),
                None,
            ),
            (
                "POST",
                format!("/_matrix/client/v3/rooms/{room}/read_markers"),
                Some(json!({"m.fully_read": event, "m.read": event})),
            ),
            (
                "PUT",
                format!("/_matrix/client/v3/profile/{me}/avatar_url"),
                Some(json!({"avatar_url": "mxc://x/y"})),
            ),
            (
                "PUT",
                format!("/_matrix/client/v3/user/{me}/account_data/m.direct"),
                Some(json!({})),
            ),
            (
                "PUT",
                format!("/_matrix/client/v3/user/{me}/rooms/{room}/tags/u.work"),
                Some(json!({"order": 0.5})),
            ),
            (
                "PUT",
                format!("/_matrix/client/v3/presence/{me}/status"),
                Some(json!({"presence": "online", "status_msg": "da"})),
            ),
            ("POST", "/_matrix/client/v3/keys/upload".into(), None),
            (
                "POST",
                "/_matrix/client/v3/keys/query".into(),
                Some(json!({"device_keys": {me.clone(): []}, "timeout": 10000})),
            ),
            (
                "POST",
                "/_matrix/client/v3/keys/claim".into(),
                Some(json!({"one_time_keys": {}})),
            ),
            ("GET", "/_matrix/client/v3/pushrules/".into(), None),
            (
                "POST",
                format!("/_matrix/client/v3/user/{me}/filter"),
                Some(json!({"room": {"timeline": {"limit": 10}}, "x": 1})),
            ),
            (
                "GET",
                format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10"),
                None,
            ),
            (
                "POST",
                "/_matrix/client/v3/user_directory/search".into(),
                Some(json!({"search_term": "ali", "limit": 10})),
            ),
            (
                "POST",
                format!("/_matrix/client/v3/rooms/{room}/leave"),
                None,
            ),
            (
                "POST",
                format!("/_matrix/client/v3/rooms/{room}/forget"),
                None,
            ),
            ("POST", "/_matrix/client/v3/logout".into(), None),
        ];
        for (method, path, body) in steps {
            let body = body
                .map(|b| serde_json::to_vec(&b).unwrap())
                .unwrap_or_default();
            let request = if method == "GET" {
                get(&host, &path, Some(&token))
            } else {
                with_body(method, &host, &path, Some(&token), &body)
            };
            let (status, v) = raw_http(server.addr, &request).await;
            assert_eq!(status, 200, "{method} {path}: {v}");
        }
        server.stop().await;
    }
}
