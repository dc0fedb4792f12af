//! A Matrix user driven with the raw HTTP of the Client-Server API, the same against our
//! homeserver and Synapse: registration, calls, and sync that remembers its position.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Mutex;

pub struct User {
    http: reqwest::Client,
    base: String,
    pub token: String,
    pub user_id: String,
    since: Mutex<Option<String>>,
}

impl User {
    /// Registers `name` at `base` (open registration, `m.login.dummy`).
    pub async fn register(base: &str, name: &str) -> User {
        Self::register_with(reqwest::Client::new(), base, name).await
    }

    /// Registers `name` at tenant `host` of a process listening on `port` (plain HTTP).
    pub async fn register_at(host: &str, port: u16, name: &str) -> User {
        let http = reqwest::Client::builder()
            .resolve(host, ([127, 0, 0, 1], port).into())
            .build()
            .unwrap();
        Self::register_with(http, &format!("http://{host}:{port}"), name).await
    }

    async fn register_with(http: reqwest::Client, base: &str, name: &str) -> User {
        let mut user = User {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: String::new(),
            user_id: String::new(),
            since: Mutex::new(None),
        };
        let mut body = json!({"username": name, "password": "secret-pw",
            "auth": {"type": "m.login.dummy"}});
        let (mut status, mut v) = user
            .call(Method::POST, "/_matrix/client/v3/register", Some(&body))
            .await;
        // Servers that want a UIA session first (Synapse may) name it in the 401.
        if status == StatusCode::UNAUTHORIZED
            && let Some(session) = v["session"].as_str()
        {
            body["auth"]["session"] = session.into();
            (status, v) = user
                .call(Method::POST, "/_matrix/client/v3/register", Some(&body))
                .await;
        }
        assert!(
            status.is_success(),
            "register {name} at {base}: {status} {v}"
        );
        user.token = v["access_token"].as_str().unwrap().to_owned();
        user.user_id = v["user_id"].as_str().unwrap().to_owned();
        user
    }

    /// Any request; the answer's status and JSON body (null when it has none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let v = resp.json().await.unwrap_or(Value::Null);
        (status, v)
    }

    /// A request that must succeed; its JSON body.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method.clone(), path, body.as_ref()).await;
        assert!(
            status.is_success(),
            "{} {method} {path}: {status} {v}",
            self.user_id
        );
        v
    }

    pub async fn create_room(&self, body: Value) -> String {
        self.ok(Method::POST, "/_matrix/client/v3/createRoom", Some(body))
            .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn invite(&self, room: &str, user: &str) {
        self.ok(
            Method::POST,
            &format!("/_matrix/client/v3/rooms/{room}/invite"),
            Some(json!({"user_id": user})),
        )
        .await;
    }

    /// Joins by room id or alias, through `via` servers when the room is not known here.
    pub async fn join(&self, room: &str, via: &[&str]) -> String {
        let query = via
            .iter()
            .map(|s| format!("server_name={s}"))
            .collect::<Vec<_>>()
            .join("&");
        let room = room.replace('#', "%23");
        self.ok(
            Method::POST,
            &format!("/_matrix/client/v3/join/{room}?{query}"),
            Some(json!({})),
        )
        .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sends a text message; its event id.
    pub async fn send_text(&self, room: &str, text: &str) -> String {
        let txn = crate::unique("txn");
        self.ok(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"),
            Some(json!({"msgtype": "m.text", "body": text})),
        )
        .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// One incremental sync from where the last one stopped (long-polling up to `timeout_ms`).
    /// Timelines carry up to 500 events, so messages arriving together (a server catching up
    /// after an outage commits a transaction's worth at once) are all in the response.
    pub async fn sync(&self, timeout_ms: u64) -> Value {
        let mut since = self.since.lock().await;
        // {"room":{"timeline":{"limit":500}}}
        let mut path = format!(
            "/_matrix/client/v3/sync?timeout={timeout_ms}\
             &filter=%7B%22room%22%3A%7B%22timeline%22%3A%7B%22limit%22%3A500%7D%7D%7D"
        );
        if let Some(s) = since.as_deref() {
            path.push_str(&format!("&since={s}"));
        }
        let v = self.ok(Method::GET, &path, None).await;
        *since = v["next_batch"].as_str().map(str::to_owned);
        v
    }

    /// Syncs until `found` picks something out of a sync response, within `within`.
    pub async fn sync_until<T>(
        &self,
        within: Duration,
        mut found: impl FnMut(&Value) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            let v = self.sync(500).await;
            if let Some(t) = found(&v) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{}: not seen in sync within {within:?}",
                self.user_id
            );
        }
    }

    /// Syncs until a timeline of `room` has shown every text of `texts` (in any order, across
    /// syncs); returns the texts of the room's messages seen meanwhile, in sync order.
    pub async fn sync_texts(&self, room: &str, texts: &[&str], within: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        self.sync_until(within, |v| {
            seen.extend(timeline_texts(v, room));
            texts
                .iter()
                .all(|t| seen.iter().any(|s| s == t))
                .then_some(())
        })
        .await;
        seen
    }

    /// Syncs until an invite to some room is shown; its room id.
    pub async fn sync_invite(&self, within: Duration) -> String {
        self.sync_until(within, |v| {
            v["rooms"]["invite"]
                .as_object()
                .and_then(|rooms| rooms.keys().next().cloned())
        })
        .await
    }

    /// Pages `/messages` backwards from the end until the start of the room; the texts of its
    /// messages, oldest first.
    pub async fn history_texts(&self, room: &str) -> Vec<String> {
        let mut texts = Vec::new();
        let mut from: Option<String> = None;
        loop {
            let mut path = format!("/_matrix/client/v3/rooms/{room}/messages?dir=b&limit=10");
            if let Some(f) = &from {
                path.push_str(&format!("&from={f}"));
            }
            let v = self.ok(Method::GET, &path, None).await;
            for e in v["chunk"].as_array().into_iter().flatten() {
                if e["type"] == "m.room.message" {
                    texts.push(e["content"]["body"].as_str().unwrap_or_default().to_owned());
                }
            }
            match v["end"].as_str() {
                Some(end) if v["chunk"].as_array().is_some_and(|c| !c.is_empty()) => {
                    from = Some(end.to_owned())
                }
                _ => break,
            }
        }
        texts.reverse();
        texts
    }
}

/// The bodies of the messages in `room`'s joined timeline of a sync response.
pub fn timeline_texts(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}
