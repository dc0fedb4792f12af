//! In-process test harness: starts the real router on a random loopback port, on SQLite (a
//! temp folder) or PostgreSQL (127.0.0.1:5432, one throw-away schema per tenant, dropped at the
//! end). Every test runs on both stores.

#![allow(dead_code)]

use std::{net::SocketAddr, sync::Arc};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tim_homeserver::{config::Config, server, tenants::Tenants};

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub const STORES: [Store; 2] = [Store::Sqlite, Store::Postgres];

pub struct TestServer {
    pub addr: SocketAddr,
    pub tenants: Tenants,
    pub server_name: String,
    pub store: Store,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

pub fn unique_name(prefix: &str) -> String {
    format!(
        "{prefix}{}.test",
        tim_homeserver::accounts::random_string(8).to_lowercase()
    )
}

impl TestServer {
    pub async fn start(store: Store) -> Self {
        Self::start_with(store, |_| {}).await
    }

    pub async fn start_with(store: Store, tweak: impl FnOnce(&mut Config)) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let dir = tempfile::tempdir().unwrap();
        let server_name = unique_name("hs");
        let mut config = Config {
            server_name: server_name.clone(),
            data_dir: dir.path().to_owned(),
            database_url: match store {
                Store::Sqlite => format!("sqlite://{}", dir.path().display()),
                Store::Postgres => PG_URL.into(),
            },
            open_registration: true,
            ..Config::default()
        };
        // Cheap hashing keeps the suite fast; the production cost is measured in the benchmark.
        config.argon2.m_cost_kib = 256;
        config.argon2.t_cost = 1;
        config.rate_limit.disabled = true;
        tweak(&mut config);
        let tenants = Tenants::open(Arc::new(config)).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = server::router(tenants.clone(), "operator-secret".into(), None);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::serve(listener, app, async {
            let _ = rx.await;
        }));
        TestServer {
            addr,
            tenants,
            server_name,
            store,
            _dir: dir,
            shutdown: Some(tx),
        }
    }

    /// A client that reaches tenant `host` (resolved to this server).
    pub fn client_for(&self, host: &str) -> Client {
        let http = reqwest::Client::builder()
            .resolve(host, self.addr)
            .build()
            .unwrap();
        Client {
            http,
            base: format!("http://{host}:{}", self.addr.port()),
            token: None,
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn hs(&self) -> Arc<tim_homeserver::homeserver::Homeserver> {
        self.tenants.by_host(&self.server_name).unwrap()
    }

    pub fn client(&self) -> Client {
        self.client_for(&self.server_name.clone())
    }

    pub async fn register(&self, name: &str) -> Client {
        let mut c = self.client();
        c.register(name).await;
        c
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let names = self.tenants.names();
        self.tenants.close().await;
        if let Store::Postgres = self.store {
            for n in names {
                tim_homeserver::store::drop_tenant_schema(PG_URL, n.as_str())
                    .await
                    .unwrap();
            }
        }
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    pub user_id: String,
    pub device_id: String,
}

impl Client {
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A request that must succeed.
    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.raw(method.clone(), path, body).await;
        assert!(status.is_success(), "{method} {path} -> {status}: {v}");
        v
    }

    /// A request that must fail with `status` and `errcode`.
    pub async fn err(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        status: u16,
        errcode: &str,
    ) -> Value {
        let (s, v) = self.raw(method.clone(), path, body).await;
        assert_eq!(s.as_u16(), status, "{method} {path}: {v}");
        assert_eq!(v["errcode"], errcode, "{method} {path}: {v}");
        v
    }

    pub async fn register(&mut self, name: &str) {
        let v = self
            .ok(Method::POST, "/_matrix/client/v3/register", Some(json!({"username": name, "password": "secret-pw", "auth": {"type": "m.login.dummy"}})))
            .await;
        self.adopt(&v);
    }

    pub fn adopt(&mut self, v: &Value) {
        self.token = Some(v["access_token"].as_str().unwrap().to_owned());
        self.user_id = v["user_id"].as_str().unwrap().to_owned();
        self.device_id = v["device_id"].as_str().unwrap().to_owned();
    }

    pub async fn create_room(&self, body: Value) -> String {
        self.ok(Method::POST, "/_matrix/client/v3/createRoom", Some(body))
            .await["room_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn send(&self, room: &str, txn: &str, body: &str) -> String {
        let path = format!("/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}");
        self.ok(
            Method::PUT,
            &path,
            Some(json!({"msgtype": "m.text", "body": body})),
        )
        .await["event_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64) -> Value {
        let mut path = format!("/_matrix/client/v3/sync?timeout={timeout_ms}");
        if let Some(s) = since {
            path.push_str(&format!("&since={s}"));
        }
        self.ok(Method::GET, &path, None).await
    }
}

/// Timeline event bodies of a room in a sync response.
pub fn bodies(sync: &Value, room: &str) -> Vec<String> {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
