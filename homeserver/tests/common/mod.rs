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
    /// The TLS (federation) listener, when the test asked for one.
    pub tls_addr: Option<SocketAddr>,
    /// The internal listener (operator API, metrics).
    pub internal_addr: SocketAddr,
    pub tenants: Tenants,
    pub server_name: String,
    pub store: Store,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::watch::Sender<bool>>,
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
        Self::start_full(store, None, tweak).await
    }

    /// A server that also serves TLS on `tls` (a bound listener, so other servers' configs
    /// can name its port before it starts) with the certificate of `ca`.
    pub async fn start_full(
        store: Store,
        tls: Option<(tokio::net::TcpListener, &TestCa)>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
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
        // The tweak may name the server.
        let server_name = config.server_name.clone();
        let config = Arc::new(config);
        let tenants = Tenants::open(config.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let internal = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let internal_addr = internal.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let trusted = tenants.trusted_proxies().clone();
        let app = server::router(tenants.clone());
        tokio::spawn({
            let (config, trusted, stopped) = (config.clone(), trusted.clone(), stopped());
            async move { server::serve(listener, app, &config.http, trusted, stopped).await }
        });
        let tls_addr = match tls {
            Some((listener, ca)) => {
                let addr = listener.local_addr().unwrap();
                let tls = server::tls_config(&ca.cert_file, &ca.key_file).unwrap();
                let app = server::router(tenants.clone());
                let (config, trusted, stopped) = (config.clone(), trusted.clone(), stopped());
                tokio::spawn(async move {
                    server::serve_tls(listener, app, &config.http, trusted, tls, stopped).await
                });
                Some(addr)
            }
            None => None,
        };
        let internal_app = server::internal_router(tenants.clone(), "operator-secret".into(), None);
        tokio::spawn(async move {
            server::serve(internal, internal_app, &config.http, trusted, stopped()).await
        });
        TestServer {
            addr,
            tls_addr,
            internal_addr,
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

    /// A client of the operator API (internal listener), with the operator token.
    pub fn operator(&self) -> Client {
        Client {
            http: reqwest::Client::new(),
            base: format!("http://{}", self.internal_addr),
            token: Some("operator-secret".into()),
            user_id: String::new(),
            device_id: String::new(),
        }
    }

    /// Adds tenant `name` through the operator API.
    pub async fn add_tenant(&self, name: &str) {
        self.operator()
            .ok(
                Method::PUT,
                &format!("/_tim/operator/v1/tenants/{name}"),
                Some(json!({})),
            )
            .await;
    }

    /// A new admin API token of tenant `name`, through the operator API.
    pub async fn admin_token(&self, name: &str) -> String {
        self.operator()
            .ok(
                Method::POST,
                &format!("/_tim/operator/v1/tenants/{name}/admin_token"),
                Some(json!({})),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn hs(&self) -> Arc<tim_homeserver::homeserver::Homeserver> {
        let name = tim_homeserver::tenants::tenant_name(&self.server_name).unwrap();
        self.tenants.get(&name).unwrap()
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
            let _ = tx.send(true);
        }
        // Strict: a panic caught anywhere in the suite is a bug, even if the test passed.
        assert_eq!(server::panics_caught(), 0, "a request handler panicked");
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

/// A test CA and one certificate (with its key) for every name a federation test uses, as
/// PEM files in a temp folder.
pub struct TestCa {
    pub ca_file: std::path::PathBuf,
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    pub ca_pem: String,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let write = |name: &str, pem: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, pem).unwrap();
            path
        };
        TestCa {
            ca_file: write("ca.pem", ca.pem()),
            cert_file: write("cert.pem", cert.pem()),
            key_file: write("key.pem", key.serialize_pem()),
            ca_pem: ca.pem(),
            _dir: dir,
        }
    }

    /// An HTTPS client that trusts only this CA and reaches `host` at `addr`.
    pub fn client(&self, host: &str, addr: SocketAddr) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap();
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve(host, addr)
            .build()
            .unwrap()
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

    /// `POST /_matrix/media/v3/upload`: status and answer.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> (StatusCode, Value) {
        let resp = self
            .http
            .post(format!(
                "{}/_matrix/media/v3/upload?filename={filename}",
                self.base
            ))
            .bearer_auth(self.token.as_ref().unwrap())
            .header("content-type", content_type)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
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

/// Sends `request` (raw HTTP/1.1, which should say `Connection: close`) on a new connection
/// and reads the answer: status and JSON body (a string if the body is not JSON).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(30),
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("the server answers")
    .unwrap();
    parse_http_answer(&answer)
}

/// Status and body of a raw HTTP/1.1 answer (plain or chunked body).
pub fn parse_http_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            rest = after[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_owned()
    };
    (
        status,
        serde_json::from_str(&body).unwrap_or(Value::String(body)),
    )
}
