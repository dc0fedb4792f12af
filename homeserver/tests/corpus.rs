//! A malformed-request corpus over every client, federation, admin and operator endpoint:
//! wrong types, missing and unknown fields, huge numbers, deep nesting, invalid UTF-8, wrong
//! methods, bad and foreign tokens, other tenants' ids, hostile path values. Nothing may answer
//! 5xx or panic, every 4xx carries a Matrix `errcode`, and a refused request stores nothing.

mod common;

use std::collections::BTreeMap;

use common::{Client, Store, TestServer, unique_name};
use reqwest::Method;
use serde_json::{Value, json};

/// Values a field gets in place of the right one.
fn wrong_values() -> Vec<Value> {
    vec![
        json!(null),
        json!(true),
        json!(-1),
        json!(18446744073709551615u64),
        json!(1.5e300),
        json!("text"),
        json!("x".repeat(70_000)),
        json!([]),
        json!([1, "a", null]),
        json!({}),
        json!({"nested": {"deeper": [{}]}}),
    ]
}

/// Field names the client API uses, to be sent with wrong values.
const FIELDS: [&str; 24] = [
    "room_id",
    "user_id",
    "limit",
    "body",
    "msgtype",
    "visibility",
    "preset",
    "timeout",
    "device_keys",
    "one_time_keys",
    "auth",
    "password",
    "new_password",
    "presence",
    "membership",
    "reason",
    "displayname",
    "avatar_url",
    "filter",
    "invite",
    "room_version",
    "initial_state",
    "messages",
    "algorithm",
];

const QUERIES: [&str; 7] = [
    "limit=-1",
    "limit=99999999999999999999",
    "from=garbage",
    "dir=sideways",
    "timeout=abc",
    "since=s0_0",
    "access_token=%00",
];

/// `count` items of `all`, starting at `seed` (wrapping): a deterministic share of the corpus.
fn pick<T>(all: &[T], seed: usize, count: usize) -> Vec<&T> {
    (0..count.min(all.len()))
        .map(|i| &all[(seed * 7 + i) % all.len()])
        .collect()
}

/// Bodies that are not what any endpoint wants.
fn hostile_bodies() -> Vec<Vec<u8>> {
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    vec![
        b"{".to_vec(),
        b"not json".to_vec(),
        vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}'],
        b"[]".to_vec(),
        b"null".to_vec(),
        b"42".to_vec(),
        b"\"string\"".to_vec(),
        b"{\"a\": 1e999}".to_vec(),
        b"{\"limit\": 123456789012345678901234567890}".to_vec(),
        deep.into_bytes(),
        b"{\"unknown_extra_field\": {\"x\": 1}}".to_vec(),
    ]
}

/// Values for path parameters that no endpoint should choke on.
fn hostile_path_values(other: &Fixture) -> Vec<String> {
    vec![
        other.room.clone(),
        other.user.clone(),
        other.event.clone(),
        "x".repeat(5000),
        "%00".into(),
        "%FF%FE".into(),
        "..%2F..%2Fetc".into(),
        "!bad:".into(),
        "@".into(),
        "%F0%9F%92%A9".into(),
    ]
}

/// One user's world in one tenant: what path parameters are filled with.
struct Fixture {
    client: Client,
    user: String,
    room: String,
    event: String,
    alias: String,
    media: String,
    server: String,
}

async fn fixture(server: &TestServer, host: &str) -> Fixture {
    let mut client = server.client_for(host);
    client
        .register(&format!("u{}", unique_name("").replace('.', "")))
        .await;
    let room = client.create_room(json!({"preset": "public_chat"})).await;
    let event = client.send(&room, "fixture", "hello").await;
    let alias = format!("#{}:{host}", unique_name("a").replace('.', "-"));
    client
        .ok(
            Method::PUT,
            &format!(
                "/_matrix/client/v3/directory/room/{}",
                alias.replace('#', "%23")
            ),
            Some(json!({"room_id": room})),
        )
        .await;
    let (_, upload) = client
        .upload(b"content".to_vec(), "text/plain", "f.txt")
        .await;
    let media = upload["content_uri"]
        .as_str()
        .unwrap()
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    Fixture {
        user: client.user_id.clone(),
        client,
        room,
        event,
        alias,
        media,
        server: host.to_owned(),
    }
}

/// Fills a path template's `{params}` from the fixture; `hostile` replaces the `n`th one.
fn fill(template: &str, f: &Fixture, hostile: Option<(usize, &str)>) -> String {
    let mut out = String::new();
    let mut rest = template;
    let mut n = 0;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map(|e| start + e)
            .unwrap_or(rest.len() - 1);
        let name = rest[start + 1..end].to_ascii_lowercase().replace('_', "");
        let value = match hostile {
            Some((i, v)) if i == n => v.to_owned(),
            _ => match name.as_str() {
                "roomid" | "roomidoralias" => f.room.clone(),
                "userid" => f.user.clone(),
                "eventid" => f.event.clone(),
                "roomalias" => f.alias.replace('#', "%23"),
                "eventtype" => "m.room.message".into(),
                "txnid" => format!("t{}", unique_name("").replace('.', "")),
                "statekey" => String::new(),
                "type" => "m.corpus".into(),
                "servername" | "origin" => f.server.clone(),
                "mediaid" => f.media.clone(),
                "deviceid" => f.client.device_id.clone(),
                "filterid" => "0".into(),
                "tag" => "u.corpus".into(),
                "version" => "1".into(),
                "sessionid" => "session".into(),
                "scope" => "global".into(),
                "kind" => "override".into(),
                "ruleid" => ".m.rule.master".into(),
                "receipttype" => "m.read".into(),
                "reltype" => "m.annotation".into(),
                "filename" => "f.txt".into(),
                "keyid" => "ed25519:x".into(),
                "logintype" => "m.login.password".into(),
                "token" => "notatoken".into(),
                "id" => "1".into(),
                _ => "x".into(),
            },
        };
        out.push_str(&value);
        n += 1;
        rest = &rest[(end + 1).min(rest.len())..];
    }
    out.push_str(rest);
    out
}

fn params(template: &str) -> usize {
    template.matches('{').count()
}

/// What a refused request may not change: each tenant's stream position (every event, room,
/// account data, receipt, key and device change takes one) and its accounts.
async fn fingerprint(server: &TestServer) -> Vec<i64> {
    let mut out = Vec::new();
    let mut names = server.tenants.names();
    names.sort();
    for name in names {
        let hs = server.tenants.get(&name).unwrap();
        out.push(hs.stores.events.max_stream_pos().await.unwrap());
        out.push(hs.stores.accounts.count_users().await.unwrap());
    }
    out
}

#[derive(Clone)]
struct Case {
    method: Method,
    path: String,
    token: Option<String>,
    body: Option<Vec<u8>>,
    base: String,
}

struct Tally {
    cases: usize,
    by_status: BTreeMap<u16, usize>,
}

async fn run(server: &TestServer, http: &reqwest::Client, case: Case, tally: &mut Tally) {
    let before = fingerprint(server).await;
    let mut req = http.request(case.method.clone(), format!("{}{}", case.base, case.path));
    if let Some(t) = &case.token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = case.body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let what = format!(
        "{} {}",
        case.method,
        case.path.chars().take(200).collect::<String>()
    );
    // 502 is the one 5xx allowed: a request about a remote user or room whose server cannot
    // be reached (the corpus names servers that do not exist); the fault is not ours.
    let unreachable = status == 502 && text.contains("could not be reached");
    assert!(status < 500 || unreachable, "{what} -> {status}: {text}");
    if (400..500).contains(&status) {
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{what} -> {status} without JSON: {text}"));
        // A user-interactive auth challenge (401 with flows) is the one 4xx without errcode.
        assert!(
            v["errcode"].as_str().is_some_and(|c| c.starts_with("M_")) || v.get("flows").is_some(),
            "{what} -> {status} without errcode: {text}"
        );
        assert_eq!(
            fingerprint(server).await,
            before,
            "{what} -> {status} was refused but changed what is stored"
        );
    }
    tally.cases += 1;
    *tally.by_status.entry(status).or_default() += 1;
}

/// `case` once with each of `bodies`.
async fn run_bodies(
    server: &TestServer,
    http: &reqwest::Client,
    case: Case,
    bodies: Vec<Option<Vec<u8>>>,
    tally: &mut Tally,
) {
    for body in bodies {
        run(
            server,
            http,
            Case {
                body,
                ..case.clone()
            },
            tally,
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_fail_the_server_on_sqlite() {
    corpus(Store::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_never_fail_the_server_on_postgres() {
    corpus(Store::Postgres).await;
}

async fn corpus(store: Store) {
    {
        let server = TestServer::start(store).await;
        let other_name = unique_name("other");
        server.add_tenant(&other_name).await;
        let other = fixture(&server, &other_name).await;
        let admin_token = server.admin_token(&server.server_name).await;
        let http = reqwest::Client::builder()
            .resolve(&server.server_name, server.addr)
            .resolve(&other_name, server.addr)
            .build()
            .unwrap();
        let mut tally = Tally {
            cases: 0,
            by_status: BTreeMap::new(),
        };
        let bad_tokens = |mine: &str| {
            vec![
                None,
                Some("garbage".to_owned()),
                Some(format!("{mine}x")),
                other.client.token.clone(),
            ]
        };

        // The Matrix APIs, every registered endpoint.
        let routes = tim_homeserver::api::registered_routes();
        assert!(routes.len() > 100, "{} routes", routes.len());
        for (n, (method, template)) in routes.iter().enumerate() {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            // A fresh user and room per endpoint: an accepted request (a logout, a leave)
            // changes only what belongs to it.
            let f = fixture(&server, &server.server_name).await;
            let token = f.client.token.clone().unwrap();
            let base = f.client.base.clone();
            let case = |path: String, token: Option<String>, body: Option<Vec<u8>>| Case {
                method: method.clone(),
                path,
                token,
                body,
                base: base.clone(),
            };
            let path = fill(template, &f, None);
            for bad in bad_tokens(&token) {
                run(&server, &http, case(path.clone(), bad, None), &mut tally).await;
            }
            // The wrong method.
            let wrong = if method == Method::GET {
                Method::DELETE
            } else {
                Method::PATCH
            };
            run(
                &server,
                &http,
                Case {
                    method: wrong,
                    ..case(path.clone(), Some(token.clone()), None)
                },
                &mut tally,
            )
            .await;
            // Each endpoint gets a few of the hostile values, chosen so that over all endpoints
            // every value meets many (the whole cross product would take minutes).
            let paths = hostile_path_values(&other);
            for i in 0..params(template) {
                for v in pick(&paths, n + i, 4) {
                    let path = fill(template, &f, Some((i, v)));
                    run(
                        &server,
                        &http,
                        case(path, Some(token.clone()), None),
                        &mut tally,
                    )
                    .await;
                }
            }
            let query = if template.contains('?') { '&' } else { '?' };
            for q in pick(&QUERIES, n, 3) {
                let path = format!("{path}{query}{q}");
                run(
                    &server,
                    &http,
                    case(path, Some(token.clone()), None),
                    &mut tally,
                )
                .await;
            }
            if method == Method::POST || method == Method::PUT {
                for body in hostile_bodies() {
                    run(
                        &server,
                        &http,
                        case(path.clone(), Some(token.clone()), Some(body)),
                        &mut tally,
                    )
                    .await;
                }
                let values = wrong_values();
                for (k, field) in pick(&FIELDS, n, 4).into_iter().enumerate() {
                    for v in pick(&values, n + k, 2) {
                        let body = serde_json::to_vec(&json!({ *field: v })).unwrap();
                        run(
                            &server,
                            &http,
                            case(path.clone(), Some(token.clone()), Some(body)),
                            &mut tally,
                        )
                        .await;
                    }
                }
            }
        }

        // The admin API (every documented endpoint) and the operator API.
        let doc: Value = serde_json::from_str(tim_homeserver::api::admin::OPENAPI).unwrap();
        let f = fixture(&server, &server.server_name).await;
        let admin_base = f.client.base.clone();
        for (template, ops) in doc["paths"].as_object().unwrap() {
            for method in ops.as_object().unwrap().keys() {
                let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                let mut paths = vec![fill(template, &f, None)];
                let hostile = hostile_path_values(&other);
                for i in 0..params(template) {
                    for v in pick(&hostile, i + paths.len(), 4) {
                        paths.push(fill(template, &f, Some((i, v))));
                    }
                }
                for path in paths {
                    for token in bad_tokens(&admin_token)
                        .into_iter()
                        .chain([Some(admin_token.clone())])
                    {
                        let writes = method != Method::GET && method != Method::DELETE;
                        let bodies = if writes && token.as_deref() == Some(&admin_token) {
                            hostile_bodies().into_iter().map(Some).collect()
                        } else {
                            vec![None]
                        };
                        let case = Case {
                            method: method.clone(),
                            path: path.clone(),
                            token: token.clone(),
                            body: None,
                            base: admin_base.clone(),
                        };
                        run_bodies(&server, &http, case, bodies, &mut tally).await;
                    }
                }
            }
        }
        let operator_base = format!("http://{}", server.internal_addr);
        let tenant = server.server_name.clone();
        for (method, path) in [
            (Method::GET, "/_tim/operator/v1/tenants".to_owned()),
            (Method::PUT, "/_tim/operator/v1/tenants/%2E%2E".to_owned()),
            (
                Method::DELETE,
                format!("/_tim/operator/v1/tenants/{}", "x".repeat(300)),
            ),
            (
                Method::POST,
                format!("/_tim/operator/v1/tenants/{tenant}/users"),
            ),
            (
                Method::POST,
                format!("/_tim/operator/v1/tenants/{tenant}/registration_tokens"),
            ),
            (
                Method::POST,
                "/_tim/operator/v1/tenants/nosuch.example/admin_token".to_owned(),
            ),
            (Method::PATCH, "/_tim/operator/v1/tenants".to_owned()),
        ] {
            for token in [
                None,
                Some("wrong".to_owned()),
                Some("operator-secret".to_owned()),
            ] {
                let bodies: Vec<Option<Vec<u8>>> = if method == Method::POST {
                    hostile_bodies().into_iter().map(Some).collect()
                } else {
                    vec![None]
                };
                let case = Case {
                    method: method.clone(),
                    path: path.clone(),
                    token: token.clone(),
                    body: None,
                    base: operator_base.clone(),
                };
                run_bodies(&server, &http, case, bodies, &mut tally).await;
            }
        }
        println!(
            "{store:?}: {} cases, by status {:?}",
            tally.cases, tally.by_status
        );
        assert!(tally.cases >= 1000, "only {} cases", tally.cases);
        server.stop().await;
    }
}
