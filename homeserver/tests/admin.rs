//! The organisation admin API on both stores: every documented endpoint with a valid token, a
//! missing token, another tenant's token (403) and bad input; users, sessions, tokens,
//! reports, server notices, rooms, settings, the audit log; plus the user directory.

mod common;

use std::time::Duration;

use common::{STORES, TestServer, unique_name};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A client for the tenant with the given bearer token.
fn with_token(server: &TestServer, host: &str, token: &str) -> common::Client {
    let mut c = server.client_for(host);
    c.token = Some(token.to_owned());
    c
}

async fn admin_token(server: &TestServer, tenant: &str) -> String {
    let op = server.operator();
    op.ok(
        Method::POST,
        &format!("/_tim/operator/v1/tenants/{tenant}/admin_token"),
        Some(json!({})),
    )
    .await["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// Every (method, path) in the checked-in OpenAPI document, with sample path values.
fn documented(user: &str) -> Vec<(Method, String)> {
    let doc: Value = serde_json::from_str(tim_homeserver::api::admin::OPENAPI).unwrap();
    let mut out = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            let path = path
                .replace("{user_id}", &user.replace('@', "%40").replace(':', "%3A"))
                .replace("{device_id}", "NODEVICE")
                .replace("{token}", "notatoken")
                .replace("{id}", "999999")
                .replace("{media_id}", "nomedia");
            out.push((
                Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(),
                path,
            ));
        }
    }
    out
}

#[tokio::test]
async fn every_endpoint_checks_its_token_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let other = unique_name("other");
        let op = server.operator();
        op.ok(
            Method::PUT,
            &format!("/_tim/operator/v1/tenants/{other}"),
            Some(json!({})),
        )
        .await;
        let mine = admin_token(&server, &server.server_name).await;
        let theirs = admin_token(&server, &other).await;
        let alice = server.register("alice").await;
        // Not an admin (and not the target, whose sessions the checks end).
        let bob = server.register("bob").await;
        let endpoints = documented(&alice.user_id);
        assert!(endpoints.len() >= 20, "{endpoints:?}");
        let body = |m: &Method| (m != Method::GET && m != Method::DELETE).then(|| json!({}));
        for (method, path) in &endpoints {
            if path.ends_with("openapi.json") {
                let doc = server.client().ok(Method::GET, path, None).await;
                assert_eq!(doc["openapi"], "3.0.3");
                continue;
            }
            server
                .client()
                .err(method.clone(), path, body(method), 401, "M_MISSING_TOKEN")
                .await;
            with_token(&server, &server.server_name, &theirs)
                .err(method.clone(), path, body(method), 403, "M_FORBIDDEN")
                .await;
            with_token(&server, &server.server_name, "timadm_000000000000_forged")
                .err(method.clone(), path, body(method), 403, "M_FORBIDDEN")
                .await;
            bob.err(method.clone(), path, body(method), 403, "M_FORBIDDEN")
                .await;
            // With the right token the endpoint exists and answers (maybe 400/404 for the
            // sample values), never 401/403/405/500.
            let (status, v) = with_token(&server, &server.server_name, &mine)
                .raw(method.clone(), path, body(method))
                .await;
            assert!(
                status.is_success()
                    || status == StatusCode::BAD_REQUEST
                    || status == StatusCode::NOT_FOUND,
                "{method} {path}: {status} {v}"
            );
            if !status.is_success() {
                assert!(v["errcode"].is_string(), "{method} {path}: {v}");
            }
        }
        // Rotation: the old token stops working.
        let newer = admin_token(&server, &server.server_name).await;
        with_token(&server, &server.server_name, &mine)
            .err(
                Method::GET,
                "/_tim/admin/v1/users",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;
        with_token(&server, &server.server_name, &newer)
            .ok(Method::GET, "/_tim/admin/v1/users", None)
            .await;
        server.stop().await;
    }
}

#[tokio::test]
async fn users_sessions_and_tokens_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let token = admin_token(&server, &server.server_name).await;
        let admin = with_token(&server, &server.server_name, &token);
        let sn = server.server_name.clone();

        let created = admin
            .ok(
                Method::POST,
                "/_tim/admin/v1/users",
                Some(
                    json!({"localpart": "meier", "password": "pw-1", "displayname": "Meier, Jana"}),
                ),
            )
            .await;
        let meier = created["user_id"].as_str().unwrap().to_owned();
        admin
            .ok(
                Method::POST,
                "/_tim/admin/v1/users",
                Some(json!({"localpart": "schulz", "password": "pw-2"})),
            )
            .await;
        // Bad input.
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/users",
                Some(json!({"password": "x"})),
                400,
                "M_BAD_JSON",
            )
            .await;
        let (status, v) = admin
            .http
            .post(format!("{}/_tim/admin/v1/users", admin.base))
            .bearer_auth(&token)
            .body("{not json")
            .send()
            .await
            .map(|r| (r.status(), r))
            .unwrap();
        assert_eq!(status, 400);
        assert_eq!(v.json::<Value>().await.unwrap()["errcode"], "M_NOT_JSON");
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/users",
                Some(json!({"localpart": "bad name!"})),
                400,
                "M_INVALID_USERNAME",
            )
            .await;
        admin
            .err(
                Method::GET,
                "/_tim/admin/v1/users?limit=0",
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;
        admin
            .err(
                Method::GET,
                "/_tim/admin/v1/users?limit=abc",
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;
        admin
            .err(
                Method::GET,
                "/_tim/admin/v1/users/not-a-user-id",
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;
        admin
            .err(
                Method::GET,
                &format!("/_tim/admin/v1/users/@ghost:{sn}"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;

        // List, search, paginate, get.
        let all = admin.ok(Method::GET, "/_tim/admin/v1/users", None).await;
        assert_eq!(all["users"].as_array().unwrap().len(), 2);
        let found = admin
            .ok(Method::GET, "/_tim/admin/v1/users?search=jana", None)
            .await;
        assert_eq!(found["users"][0]["user_id"], meier.as_str());
        let p1 = admin
            .ok(Method::GET, "/_tim/admin/v1/users?limit=1", None)
            .await;
        let next = p1["next_from"].as_str().unwrap();
        let p2 = admin
            .ok(
                Method::GET,
                &format!("/_tim/admin/v1/users?limit=1&from={next}"),
                None,
            )
            .await;
        assert_ne!(p1["users"][0]["user_id"], p2["users"][0]["user_id"]);
        let one = admin
            .ok(Method::GET, &format!("/_tim/admin/v1/users/{meier}"), None)
            .await;
        assert_eq!(one["displayname"], "Meier, Jana");
        assert_eq!(one["devices"], 0);

        // Sessions: log in twice, see both with IP and user agent, end one, then all.
        let mut sessions = Vec::new();
        for _ in 0..2 {
            let mut c = server.client();
            let l = c.ok(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "meier"}, "password": "pw-1"}))).await;
            c.adopt(&l);
            c.ok(Method::GET, "/_matrix/client/v3/account/whoami", None)
                .await;
            sessions.push(c);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let devices = admin
            .ok(
                Method::GET,
                &format!("/_tim/admin/v1/users/{meier}/devices"),
                None,
            )
            .await;
        let list = devices["devices"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert!(
            list.iter()
                .all(|d| d["last_seen_ip"] == "127.0.0.1" && d["last_seen_ts"].is_i64())
        );
        admin
            .ok(
                Method::DELETE,
                &format!(
                    "/_tim/admin/v1/users/{meier}/devices/{}",
                    sessions[0].device_id
                ),
                None,
            )
            .await;
        sessions[0]
            .err(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;
        sessions[1]
            .ok(Method::GET, "/_matrix/client/v3/account/whoami", None)
            .await;
        admin
            .err(
                Method::DELETE,
                &format!("/_tim/admin/v1/users/{meier}/devices/NOPE"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        admin
            .ok(
                Method::DELETE,
                &format!("/_tim/admin/v1/users/{meier}/devices"),
                None,
            )
            .await;
        sessions[1]
            .err(
                Method::GET,
                "/_matrix/client/v3/account/whoami",
                None,
                401,
                "M_UNKNOWN_TOKEN",
            )
            .await;

        // Display name (propagated), password reset, deactivation.
        admin
            .ok(
                Method::PUT,
                &format!("/_tim/admin/v1/users/{meier}/displayname"),
                Some(json!({"displayname": "Meier-Lang, Jana"})),
            )
            .await;
        let mut c = server.client();
        admin
            .ok(
                Method::POST,
                &format!("/_tim/admin/v1/users/{meier}/password"),
                Some(json!({"password": "neu-2"})),
            )
            .await;
        c.err(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "meier"}, "password": "pw-1"})), 403, "M_FORBIDDEN").await;
        let l = c.ok(Method::POST, "/_matrix/client/v3/login", Some(json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "meier"}, "password": "neu-2"}))).await;
        c.adopt(&l);
        let p = c
            .ok(
                Method::GET,
                &format!("/_matrix/client/v3/profile/{meier}"),
                None,
            )
            .await;
        assert_eq!(p["displayname"], "Meier-Lang, Jana");
        admin
            .err(
                Method::POST,
                &format!("/_tim/admin/v1/users/{meier}/password"),
                Some(json!({"password": ""})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        let room = c.create_room(json!({"name": "Station"})).await;
        admin
            .ok(
                Method::POST,
                &format!("/_tim/admin/v1/users/{meier}/deactivate"),
                None,
            )
            .await;
        c.err(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            None,
            401,
            "M_UNKNOWN_TOKEN",
        )
        .await;
        let rooms = admin.ok(Method::GET, "/_tim/admin/v1/rooms", None).await;
        let r = rooms["rooms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["room_id"] == room.as_str())
            .unwrap()
            .clone();
        assert_eq!(
            r["joined_members"], 0,
            "a deactivated user leaves their rooms"
        );
        assert!(r.get("name").is_none());
        let one = admin
            .ok(Method::GET, &format!("/_tim/admin/v1/users/{meier}"), None)
            .await;
        assert_eq!(one["deactivated"], true);

        // Registration tokens: create, list, revoke.
        let t = admin
            .ok(
                Method::POST,
                "/_tim/admin/v1/registration_tokens",
                Some(json!({"expiry_time": 4102444800000i64})),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let list = admin
            .ok(Method::GET, "/_tim/admin/v1/registration_tokens", None)
            .await;
        let entry = list["registration_tokens"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == tim_homeserver::accounts::registration_token_id(&t))
            .unwrap()
            .clone();
        assert_eq!(
            (entry["uses_allowed"].as_i64(), entry["valid"].as_bool()),
            (Some(1), Some(true))
        );
        // Stored hashed: neither the list nor the database holds the token itself.
        assert!(!list.to_string().contains(&t), "{list}");
        assert_eq!(entry["hint"], t[..4]);
        admin
            .ok(
                Method::DELETE,
                &format!("/_tim/admin/v1/registration_tokens/{t}"),
                None,
            )
            .await;
        admin
            .err(
                Method::DELETE,
                &format!("/_tim/admin/v1/registration_tokens/{t}"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/registration_tokens",
                Some(json!({"token": "bad token!"})),
                400,
                "M_INVALID_PARAM",
            )
            .await;

        // Settings.
        let s = admin.ok(Method::GET, "/_tim/admin/v1/settings", None).await;
        assert_eq!(s["displayname_admin_only"], true);
        let s = admin
            .ok(
                Method::PUT,
                "/_tim/admin/v1/settings",
                Some(json!({"displayname_admin_only": false})),
            )
            .await;
        assert_eq!(s["displayname_admin_only"], false);
        let bob = server.register("bob").await;
        bob.ok(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{}/displayname", bob.user_id),
            Some(json!({"displayname": "Bob"})),
        )
        .await;
        admin
            .err(
                Method::PUT,
                "/_tim/admin/v1/settings",
                Some(json!({"unknown": 1})),
                400,
                "M_BAD_JSON",
            )
            .await;

        // The audit log has it all, newest first.
        let log = admin
            .ok(Method::GET, "/_tim/admin/v1/audit_log?limit=500", None)
            .await;
        let actions: Vec<&str> = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["action"].as_str().unwrap())
            .collect();
        for a in [
            "users.create",
            "users.list",
            "devices.delete",
            "devices.delete_all",
            "users.displayname",
            "users.password",
            "users.deactivate",
            "registration_tokens.create",
            "registration_tokens.revoke",
            "settings.update",
            "admin_token.rotate",
        ] {
            assert!(actions.contains(&a), "{a} missing in {actions:?}");
        }
        assert_eq!(actions[0], "settings.update");
        let entry = log["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["action"] == "users.deactivate")
            .unwrap()
            .clone();
        assert_eq!(
            (entry["actor"].as_str(), entry["target"].as_str()),
            (Some("admin-token"), Some(meier.as_str()))
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn reports_notices_and_directory_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let token = admin_token(&server, &server.server_name).await;
        let admin = with_token(&server, &server.server_name, &token);
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let carol = server.register("carol").await;
        let room = alice
            .create_room(json!({"preset": "private_chat", "invite": [bob.user_id]}))
            .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/join"),
            Some(json!({})),
        )
        .await;
        let event = alice.send(&room, "r1", "Unangemessen").await;

        // Nobody can take the notices system account's name.
        let mut squatter = server.client();
        squatter
            .err(Method::POST, "/_matrix/client/v3/register", Some(json!({"username": "systemnachrichten", "password": "pw", "auth": {"type": "m.login.dummy"}})), 400, "M_USER_IN_USE")
            .await;
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/users",
                Some(json!({"localpart": "systemnachrichten"})),
                400,
                "M_USER_IN_USE",
            )
            .await;
        let _ = &mut squatter;

        // Reports: event (with score) and room; outsiders and bad input refused.
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
            Some(json!({"reason": "Beleidigung", "score": -80})),
        )
        .await;
        bob.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/report"),
            Some(json!({"reason": "Spam-Raum"})),
        )
        .await;
        carol
            .err(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
                Some(json!({"reason": "x"})),
                404,
                "M_NOT_FOUND",
            )
            .await;
        bob.err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/report/$nope"),
            Some(json!({"reason": "x"})),
            404,
            "M_NOT_FOUND",
        )
        .await;
        bob.err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
            Some(json!({"score": 5})),
            400,
            "M_INVALID_PARAM",
        )
        .await;
        bob.err(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/report/{event}"),
            Some(json!({"score": "high"})),
            400,
            "M_BAD_JSON",
        )
        .await;
        let open = admin
            .ok(Method::GET, "/_tim/admin/v1/reports?handled=false", None)
            .await;
        let list = open["reports"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        let r = list
            .iter()
            .find(|r| r["event_id"] == event.as_str())
            .unwrap()
            .clone();
        assert_eq!(r["reporter"], bob.user_id.as_str());
        assert_eq!(r["event_sender"], alice.user_id.as_str());
        assert_eq!(
            (r["reason"].as_str(), r["score"].as_i64()),
            (Some("Beleidigung"), Some(-80))
        );
        assert!(!r.to_string().contains("Unangemessen"), "no content copied");
        let id = r["id"].as_i64().unwrap();
        admin
            .ok(
                Method::POST,
                &format!("/_tim/admin/v1/reports/{id}/handled"),
                None,
            )
            .await;
        admin
            .err(
                Method::POST,
                &format!("/_tim/admin/v1/reports/{id}/handled"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        let open = admin
            .ok(Method::GET, "/_tim/admin/v1/reports?handled=false", None)
            .await;
        assert_eq!(open["reports"].as_array().unwrap().len(), 1);
        let done = admin
            .ok(
                Method::GET,
                &format!("/_tim/admin/v1/reports?handled=true&room_id={room}"),
                None,
            )
            .await;
        assert_eq!(done["reports"][0]["handled_by"], "admin-token");
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/reports/abc/handled",
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;

        // A notice to one user, then to everyone: each finds it in their notices room.
        let one = admin
            .ok(
                Method::POST,
                "/_tim/admin/v1/server_notices",
                Some(json!({"user_id": carol.user_id, "body": "Willkommen"})),
            )
            .await;
        assert!(one["event_id"].is_string());
        let (status, v) = admin
            .raw(
                Method::POST,
                "/_tim/admin/v1/server_notices",
                Some(json!({"body": "Wartung heute 22 Uhr"})),
            )
            .await;
        assert_eq!(status, 202, "{v}");
        let job = v["job_id"].as_i64().unwrap();
        let mut done = false;
        for _ in 0..100 {
            let j = admin
                .ok(
                    Method::GET,
                    &format!("/_tim/admin/v1/server_notices/jobs/{job}"),
                    None,
                )
                .await;
            if j["done"] == true {
                assert_eq!(j["sent"], 3);
                done = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(done);
        for user in [&alice, &bob, &carol] {
            let v = user.sync(None, 0).await;
            let (room_id, _) = v["rooms"]["invite"]
                .as_object()
                .unwrap()
                .iter()
                .next()
                .expect("invited to a notices room");
            user.ok(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{room_id}/join"),
                Some(json!({})),
            )
            .await;
            let v = user.sync(None, 0).await;
            let joined = &v["rooms"]["join"][room_id];
            let bodies: Vec<&str> = joined["timeline"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["content"]["msgtype"] == "m.server_notice")
                .map(|e| e["content"]["body"].as_str().unwrap())
                .collect();
            assert!(bodies.contains(&"Wartung heute 22 Uhr"), "{bodies:?}");
            let tags = joined["account_data"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .find(|e| e["type"] == "m.tag")
                .unwrap()
                .clone();
            assert!(tags["content"]["tags"]["m.server_notice"].is_object());
            // Users cannot write there.
            user.err(
                Method::PUT,
                &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/x"),
                Some(json!({"msgtype": "m.text", "body": "hi"})),
                403,
                "M_FORBIDDEN",
            )
            .await;
        }
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/server_notices",
                Some(json!({"body": ""})),
                400,
                "M_INVALID_PARAM",
            )
            .await;
        admin
            .err(
                Method::POST,
                "/_tim/admin/v1/server_notices",
                Some(json!({"user_id": format!("@ghost:{}", server.server_name), "body": "x"})),
                404,
                "M_NOT_FOUND",
            )
            .await;
        admin
            .err(
                Method::GET,
                "/_tim/admin/v1/server_notices/jobs/424242",
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;

        // The directory: by name or id, people sharing a room first, no system user.
        admin
            .ok(
                Method::PUT,
                &format!("/_tim/admin/v1/users/{}/displayname", carol.user_id),
                Some(json!({"displayname": "Bobinski, Carol"})),
            )
            .await;
        let res = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Some(json!({"search_term": "bob", "limit": 10})),
            )
            .await;
        let ids: Vec<&str> = res["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["user_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, vec![bob.user_id.as_str(), carol.user_id.as_str()]);
        assert_eq!(res["limited"], false);
        let res = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Some(json!({"search_term": "systemnachrichten"})),
            )
            .await;
        assert!(res["results"].as_array().unwrap().is_empty());
        let res = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Some(json!({"search_term": "b", "limit": 1})),
            )
            .await;
        assert_eq!(
            (
                res["results"].as_array().unwrap().len(),
                res["limited"].as_bool()
            ),
            (1, Some(true))
        );
        let res = alice
            .ok(
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Some(json!({"search_term": "%"})),
            )
            .await;
        assert!(
            res["results"].as_array().unwrap().is_empty(),
            "LIKE wildcards are literal"
        );
        server
            .client()
            .err(
                Method::POST,
                "/_matrix/client/v3/user_directory/search",
                Some(json!({"search_term": "bob"})),
                401,
                "M_MISSING_TOKEN",
            )
            .await;
        server.stop().await;
    }
}
