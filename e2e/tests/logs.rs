//! Logs never carry message contents, passwords or tokens — also at debug level, in JSON.

use serde_json::{Value, json};
use tim_e2e::{Server, Store};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_contents_passwords_or_tokens() {
    let server = Server::start_with(
        Store::Sqlite,
        &[("TIM_LOG_FORMAT", "json"), ("TIM_LOG_LEVEL", "debug")],
    );
    let base = server.base_url();
    let http = reqwest::Client::new();
    let password = "pw-Zq81-never-logged";
    let reg: Value = http
        .post(format!("{base}/_matrix/client/v3/register"))
        .json(
            &json!({"username": "alice", "password": password, "auth": {"type": "m.login.dummy"}}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = reg["access_token"].as_str().unwrap().to_owned();
    let room: Value = http
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(&token)
        .json(&json!({"name": "Name-Xk3-private"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let room = room["room_id"].as_str().unwrap();
    let body = "Befund-Qw7-confidential";
    let sent = http
        .put(format!(
            "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/t1"
        ))
        .bearer_auth(&token)
        .json(&json!({"msgtype": "m.text", "body": body}))
        .send()
        .await
        .unwrap();
    assert!(sent.status().is_success());
    // A token in the query string (deprecated, still accepted) must not reach the log either.
    let synced = http
        .get(format!(
            "{base}/_matrix/client/v3/sync?access_token={token}"
        ))
        .send()
        .await
        .unwrap();
    assert!(synced.status().is_success());
    // Paths carry aliases and file names: the log names the route, not the path.
    let alias = format!("#Alias-Zz9-secret:{}", server.server_name);
    let put_alias = http
        .put(format!(
            "{base}/_matrix/client/v3/directory/room/{}",
            alias.replace('#', "%23")
        ))
        .bearer_auth(&token)
        .json(&json!({"room_id": room}))
        .send()
        .await
        .unwrap();
    assert!(
        put_alias.status().is_success(),
        "{:?}",
        put_alias.text().await
    );
    http.get(format!(
        "{base}/_matrix/client/v1/media/download/{}/nosuchmedia/Befund-Mm2.pdf",
        server.server_name
    ))
    .bearer_auth(&token)
    .send()
    .await
    .unwrap();
    // A failing request with a bad body.
    http.post(format!("{base}/_matrix/client/v3/login"))
        .body(format!("{{\"password\": \"{password}\""))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    let log = server.log();
    assert!(
        log.lines().filter(|l| l.starts_with('{')).count() > 5,
        "expected JSON log lines:\n{log}"
    );
    for secret in [
        password,
        token.as_str(),
        body,
        "Name-Xk3-private",
        "Alias-Zz9-secret",
        "Befund-Mm2",
    ] {
        assert!(!log.contains(secret), "the log contains {secret:?}");
    }
    server.cleanup().await;
}
