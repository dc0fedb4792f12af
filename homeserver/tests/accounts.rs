//! Accounts, devices, registration tokens, bad input and tenant isolation.

mod common;

use common::{STORES, TestServer, unique_name};
use reqwest::Method;
use serde_json::json;

#[tokio::test]
async fn devices_and_sessions_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        // A second device by password login, with a refresh token.
        let mut phone = server.client();
        let login = phone
            .ok(
                Method::POST,
                "/_matrix/client/v3/login",
                Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw", "initial_device_display_name": "Phone", "refresh_token": true})),
            )
            .await;
        assert!(login["refresh_token"].is_string() && login["expires_in_ms"].is_number());
        phone.adopt(&login);
        // A lost refresh response: the old refresh token still works until the new session is used.
        let refresh = |t: &serde_json::Value| Some(json!({"refresh_token": t}));
        let lost = phone
            .ok(
                Method::POST,
                "/_matrix/client/v3/refresh",
                refresh(&login["refresh_token"]),
            )
            .await;
        let refreshed = phone
            .ok(
                Method::POST,
                "/_matrix/client/v3/refresh",
                refresh(&login["refresh_token"]),
            )
            .await;
        let old = phone.clone();
        let mut unused = phone.clone();
        unused.token = Some(lost["access_token"].as_str().unwrap().to_owned());
        unused
            .err(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;
        phone.token = Some(refreshed["access_token"].as_str().unwrap().to_owned());
        old.err(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
            401,
            "M_UNKNOWN_TOKEN",
        )
        .await;
        phone
            .ok(Method::GET, "/_matrix/client/v3/account/whoami", None)
            .await;
        // Used once, the new session revokes the old refresh token.
        phone
            .err(
                Method::POST,
                "/_matrix/client/v3/refresh",
                refresh(&login["refresh_token"]),
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;
        let next = phone
            .ok(
                Method::POST,
                "/_matrix/client/v3/refresh",
                refresh(&refreshed["refresh_token"]),
            )
            .await;
        phone.token = Some(next["access_token"].as_str().unwrap().to_owned());
        phone
            .ok(Method::GET, "/_matrix/client/v3/account/whoami", None)
            .await;

        server.client().err(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "wrong"})), 403, "M_FORBIDDEN").await;

        let devices = alice
            .ok(Method::GET, "/_matrix/client/v3/devices", None)
            .await;
        assert_eq!(devices["devices"].as_array().unwrap().len(), 2);
        alice
            .ok(
                Method::PUT,
                &format!("/_matrix/client/v3/devices/{}", phone.device_id),
                Some(json!({"display_name": "Work phone"})),
            )
            .await;
        let d = alice
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/devices/{}", phone.device_id),
                None,
            )
            .await;
        assert_eq!(d["display_name"], "Work phone");

        // Deleting a device needs the password (user-interactive auth).
        let path = format!("/_matrix/client/v3/devices/{}", phone.device_id);
        let (status, challenge) = alice.raw(Method::DELETE, &path, Some(json!({}))).await;
        assert_eq!(status.as_u16(), 401);
        assert_eq!(challenge["flows"][0]["stages"][0], "m.login.password");
        let session = challenge["session"].as_str().unwrap();
        let auth = |pw: &str| json!({"auth": {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": alice.user_id}, "password": pw, "session": session}});
        let (status, again) = alice.raw(Method::DELETE, &path, Some(auth("wrong"))).await;
        assert_eq!(status.as_u16(), 401);
        assert_eq!(again["errcode"], "M_FORBIDDEN");
        alice
            .ok(Method::DELETE, &path, Some(auth("secret-pw")))
            .await;
        phone
            .err(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;

        // Password change, logout, logout/all.
        let (_, c) = alice
            .raw(
                Method::POST,
                "/_matrix/client/v3/account/password",
                Some(json!({"new_password": "new-pw"})),
            )
            .await;
        let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "secret-pw", "session": c["session"]});
        alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/account/password",
                Some(json!({"new_password": "new-pw", "auth": auth, "logout_devices": true})),
            )
            .await;
        let mut again = server.client();
        let l = again.ok(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "alice"}, "password": "new-pw"}))).await;
        again.adopt(&l);
        again
            .ok(Method::POST, "/_matrix/client/v3/logout", Some(json!({})))
            .await;
        again
            .err(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;
        alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/logout/all",
                Some(json!({})),
            )
            .await;
        alice
            .err(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;

        // Deactivation ends every session and the login.
        let mut bob = server.register("bob").await;
        let (_, c) = bob
            .raw(
                Method::POST,
                "/_matrix/client/v3/account/deactivate",
                Some(json!({})),
            )
            .await;
        let auth = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "secret-pw", "session": c["session"]});
        bob.ok(
            Method::POST,
            "/_matrix/client/v3/account/deactivate",
            Some(json!({"auth": auth})),
        )
        .await;
        bob.err(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
            401,
            "M_UNKNOWN_TOKEN",
        )
        .await;
        bob.token = None;
        bob.err(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bob"}, "password": "secret-pw"})), 403, "M_USER_DEACTIVATED").await;
        server.stop().await;
    }
}

#[tokio::test]
async fn registration_needs_a_single_use_token_on_both_stores() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| c.open_registration = false).await;
        let hs = server.tenants.default_tenant();
        let anon = server.client();
        let (status, flows) = anon
            .raw(
                Method::POST,
                "/_matrix/client/v3/register",
                Some(json!({"username": "doc", "password": "pw"})),
            )
            .await;
        assert_eq!(status.as_u16(), 401);
        assert_eq!(flows["flows"][0]["stages"][0], "m.login.registration_token");
        let (status, _) = anon
            .raw(
                Method::POST,
                "/_matrix/client/v3/register",
                Some(
                    json!({"username": "doc", "password": "pw", "auth": {"type": "m.login.dummy"}}),
                ),
            )
            .await;
        assert_eq!(
            status.as_u16(),
            401,
            "m.login.dummy must not register while registration is closed"
        );
        let token = hs
            .accounts
            .create_registration_token(None, Some(1), None)
            .await
            .unwrap();
        let valid = anon
            .ok(
                Method::GET,
                &format!(
                    "/_matrix/client/v1/register/m.login.registration_token/validity?token={token}"
                ),
                None,
            )
            .await;
        assert_eq!(valid["valid"], true);
        let body = |name: &str, t: &str| json!({"username": name, "password": "pw", "auth": {"type": "m.login.registration_token", "token": t}});
        anon.err(
            Method::POST,
            "/_matrix/client/v3/register",
            Some(body("doc", "nope")),
            403,
            "M_FORBIDDEN",
        )
        .await;
        let ok = anon
            .ok(
                Method::POST,
                "/_matrix/client/v3/register",
                Some(body("doc", &token)),
            )
            .await;
        assert!(ok["access_token"].is_string());
        anon.err(
            Method::POST,
            "/_matrix/client/v3/register",
            Some(body("nurse", &token)),
            403,
            "M_FORBIDDEN",
        )
        .await;
        anon.err(
            Method::POST,
            "/_matrix/client/v3/register",
            Some(body("doc", &token)),
            400,
            "M_USER_IN_USE",
        )
        .await;
        server.stop().await;
    }
}

#[tokio::test]
async fn bad_input_gets_matrix_errors() {
    let server =
        TestServer::start_with(common::Store::Sqlite, |c| c.max_request_bytes = 4096).await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let anon = server.client();

    anon.err(
        Method::GET,
        "/_matrix/client/v3/joined_rooms",
        None,
        401,
        "M_MISSING_TOKEN",
    )
    .await;
    let mut forged = anon.clone();
    forged.token = Some("tima_forged".into());
    forged
        .err(
            Method::GET,
            "/_matrix/client/v3/joined_rooms",
            None,
            401,
            "M_UNKNOWN_TOKEN",
        )
        .await;
    anon.err(
        Method::GET,
        "/_matrix/client/v3/no/such/endpoint",
        None,
        404,
        "M_UNRECOGNIZED",
    )
    .await;
    anon.err(
        Method::DELETE,
        "/_matrix/client/versions",
        None,
        405,
        "M_UNRECOGNIZED",
    )
    .await;

    // Not JSON, wrong JSON types, oversized bodies.
    let resp = alice
        .http
        .post(format!("{}/_matrix/client/v3/createRoom", alice.base))
        .bearer_auth(alice.token.as_ref().unwrap())
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(
        resp.json::<serde_json::Value>().await.unwrap()["errcode"],
        "M_NOT_JSON"
    );
    alice
        .err(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            Some(json!({"name": 5})),
            400,
            "M_BAD_JSON",
        )
        .await;
    alice
        .err(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/big"),
            Some(json!({"body": "x".repeat(5000)})),
            413,
            "M_TOO_LARGE",
        )
        .await;
    alice
        .err(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/arr"),
            Some(json!([1, 2])),
            400,
            "M_BAD_JSON",
        )
        .await;
    alice
        .err(
            Method::GET,
            "/_matrix/client/v3/rooms/not-a-room-id/messages?dir=b",
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await
        .get("error")
        .unwrap();
    alice
        .err(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&from=garbage"),
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await;
    alice
        .err(
            Method::GET,
            "/_matrix/client/v3/sync?since=zzz",
            None,
            400,
            "M_INVALID_PARAM",
        )
        .await;

    // Forbidden actions and events that fail the auth rules.
    bob.err(
        Method::PUT,
        &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/t"),
        Some(json!({"body": "hi", "msgtype": "m.text"})),
        403,
        "M_FORBIDDEN",
    )
    .await;
    bob.err(
        Method::POST,
        &format!("/_matrix/client/v3/rooms/{room}/join"),
        Some(json!({})),
        403,
        "M_FORBIDDEN",
    )
    .await;
    bob.err(
        Method::GET,
        &format!("/_matrix/client/v3/rooms/{room}/messages?dir=b"),
        None,
        403,
        "M_FORBIDDEN",
    )
    .await;
    alice
        .err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(json!({"user_id": format!("@ghost:{}", server.server_name)})),
            404,
            "M_NOT_FOUND",
        )
        .await;
    alice
        .err(
            Method::GET,
            "/_matrix/client/v3/rooms/!unknown:nowhere/state",
            None,
            403,
            "M_FORBIDDEN",
        )
        .await;
    alice.err(Method::POST, "/_matrix/client/v3/register", Some(json!({"username": "Bad Name!", "password": "pw", "auth": {"type": "m.login.dummy"}})), 400, "M_INVALID_USERNAME").await;
    server.stop().await;
}

#[tokio::test]
async fn rate_limits_answer_429() {
    let server = TestServer::start_with(common::Store::Sqlite, |c| {
        c.rate_limit.disabled = false;
        c.rate_limit.burst = 3.0;
        c.rate_limit.per_second = 0.5;
    })
    .await;
    let anon = server.client();
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "x"}, "password": "y"});
    for _ in 0..3 {
        anon.err(
            Method::POST,
            "/_matrix/client/v3/login",
            Some(login.clone()),
            403,
            "M_FORBIDDEN",
        )
        .await;
    }
    let limited = anon
        .err(
            Method::POST,
            "/_matrix/client/v3/login",
            Some(login),
            429,
            "M_LIMIT_EXCEEDED",
        )
        .await;
    assert!(limited["retry_after_ms"].as_u64().unwrap() > 0);
    server.stop().await;
}

#[tokio::test]
async fn tenants_are_isolated_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let other = unique_name("org");
        assert!(
            server
                .tenants
                .add(other.as_str().try_into().unwrap())
                .await
                .unwrap()
        );
        let mut a = server.client();
        a.register("alice").await;
        let mut b = server.client_for(&other);
        b.register("alice").await;
        assert_ne!(a.user_id, b.user_id);
        assert!(b.user_id.ends_with(&other));
        let room_a = a.create_room(json!({"name": "A only"})).await;
        // B's token means nothing on A and A's room is not visible from B.
        let mut cross = server.client();
        cross.token = b.token.clone();
        cross
            .err(
                Method::GET,
                "/_matrix/client/v3/joined_rooms",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;
        b.err(
            Method::GET,
            &format!("/_matrix/client/v3/rooms/{room_a}/state"),
            None,
            403,
            "M_FORBIDDEN",
        )
        .await;
        let sync_b = b.sync(None, 0).await;
        assert!(
            sync_b
                .get("rooms")
                .is_none_or(|r| r["join"].as_object().is_none_or(|j| j.is_empty()))
        );
        // Another tenant's user is invited over federation only (signed, through the
        // network), never by a shortcut inside the process: here the tenant's name resolves
        // nowhere, so the invite fails and A's user sees nothing.
        let (status, body) = b
            .raw(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                Some(json!({"invite": [a.user_id]})),
            )
            .await;
        assert_eq!(status, 502, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("could not be reached")
        );
        let sync_a = a.sync(None, 0).await;
        assert!(
            sync_a["rooms"]["invite"]
                .as_object()
                .is_none_or(|i| i.is_empty()),
            "{sync_a}"
        );
        // Removing the tenant stops serving it; its host reaches no tenant at all (A-ARCH-04:
        // never the default one, where B's users could register).
        assert!(
            server
                .tenants
                .remove(&ruma::ServerName::parse(&other).unwrap(), true)
                .await
                .unwrap()
        );
        b.err(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
            404,
            "M_UNRECOGNIZED",
        )
        .await;
        server.stop().await;
    }
}

#[tokio::test]
async fn org_admins_create_users_and_tokens() {
    let server =
        TestServer::start_with(common::Store::Sqlite, |c| c.open_registration = false).await;
    let hs = server.tenants.default_tenant();
    hs.accounts
        .create_user("orgadmin", Some("admin-pw"), true)
        .await
        .unwrap();
    let mut admin = server.client();
    let login = json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "orgadmin"}, "password": "admin-pw"});
    let l = admin
        .ok(Method::POST, "/_matrix/client/v3/login", Some(login))
        .await;
    admin.adopt(&l);
    let created = admin
        .ok(
            Method::POST,
            "/_tim/admin/v1/users",
            Some(json!({"localpart": "drmeier", "password": "pw"})),
        )
        .await;
    assert_eq!(
        created["user_id"],
        format!("@drmeier:{}", server.server_name)
    );
    let mut meier = server.client();
    let l = meier.ok(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "drmeier"}, "password": "pw"}))).await;
    meier.adopt(&l);
    meier
        .err(
            Method::POST,
            "/_tim/admin/v1/users",
            Some(json!({"localpart": "x", "password": "pw"})),
            403,
            "M_FORBIDDEN",
        )
        .await;
    server
        .client()
        .err(
            Method::POST,
            "/_tim/admin/v1/registration_tokens",
            Some(json!({})),
            401,
            "M_MISSING_TOKEN",
        )
        .await;
    let token = admin
        .ok(
            Method::POST,
            "/_tim/admin/v1/registration_tokens",
            Some(json!({})),
        )
        .await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(hs.accounts.registration_token_valid(&token).await.unwrap());
    admin
        .err(
            Method::POST,
            "/_tim/admin/v1/users",
            Some(json!({"localpart": "drmeier", "password": "pw"})),
            400,
            "M_USER_IN_USE",
        )
        .await;
    server.stop().await;
}

#[tokio::test]
async fn discovery_endpoints() {
    let server = TestServer::start(common::Store::Sqlite).await;
    let anon = server.client();
    let versions = anon.ok(Method::GET, "/_matrix/client/versions", None).await;
    assert!(
        versions["versions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v == "v1.11")
    );
    let client = anon
        .ok(Method::GET, "/.well-known/matrix/client", None)
        .await;
    assert!(
        client["m.homeserver"]["base_url"]
            .as_str()
            .unwrap()
            .starts_with("http")
    );
    let fed = anon
        .ok(Method::GET, "/.well-known/matrix/server", None)
        .await;
    assert!(
        fed["m.server"]
            .as_str()
            .unwrap()
            .starts_with(&server.server_name)
    );
    anon.err(
        Method::GET,
        "/_matrix/client/v3/capabilities",
        None,
        401,
        "M_MISSING_TOKEN",
    )
    .await;
    let alice = server.register("alice").await;
    let caps = alice
        .ok(Method::GET, "/_matrix/client/v3/capabilities", None)
        .await;
    assert_eq!(caps["capabilities"]["m.room_versions"]["default"], "10");
    let available = caps["capabilities"]["m.room_versions"]["available"]
        .as_object()
        .unwrap();
    assert_eq!(available.keys().collect::<Vec<_>>(), vec!["10", "9"]);
    let health = reqwest::get(format!("http://{}/health", server.addr))
        .await
        .unwrap();
    assert_eq!(health.text().await.unwrap(), "OK");
    server.stop().await;
}
