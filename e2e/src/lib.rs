//! Starts the real `tim-homeserver` binary for black-box tests, on SQLite (a temp folder) or
//! PostgreSQL (127.0.0.1:5432, a throw-away schema per tenant, dropped on `cleanup`), and the
//! real `tim-push-gateway` and `tim-vzd-sync`; `push_service` is a local Web Push service
//! double, `vzd` a double of the gematik VZD-FHIR-Directory.

pub mod federation;
pub mod push_service;
pub mod synapse;
pub mod user;
pub mod vzd;

use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Store {
    Sqlite,
    Postgres,
}

pub const STORES: [Store; 2] = [Store::Sqlite, Store::Postgres];

/// The `tim-homeserver` binary next to the test executable (`target/<profile>/`).
pub fn binary() -> PathBuf {
    binary_named("tim-homeserver")
}

/// A workspace binary next to the test executable.
pub fn binary_named(name: &str) -> PathBuf {
    // Tests live in target/<profile>/deps, binaries like tim-bench in target/<profile>.
    let exe = std::env::current_exe().expect("executable path");
    let dirs = [exe.parent(), exe.parent().and_then(|p| p.parent())];
    dirs.iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|b| b.exists())
        .unwrap_or_else(|| panic!("no {name} binary next to {}: build it with `cargo build -p {name}` (cargo test --workspace --all-targets does)", exe.display()))
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn unique(prefix: &str) -> String {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}{:x}{}.test", n & 0xffff_ffff, std::process::id())
}

/// A running `tim-homeserver serve` process.
pub struct Server {
    pub store: Store,
    pub server_name: String,
    pub port: u16,
    /// The internal listener's port (operator API, metrics).
    pub internal_port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
    extra_env: Vec<(String, String)>,
}

impl Server {
    pub fn start(store: Store) -> Self {
        Self::start_with(store, &[])
    }

    pub fn start_with(store: Store, env: &[(&str, &str)]) -> Self {
        Self::start_named(store, &unique("e2e"), env)
    }

    /// A server whose default tenant is `server_name`.
    pub fn start_named(store: Store, server_name: &str, env: &[(&str, &str)]) -> Self {
        let mut server = Server {
            store,
            server_name: server_name.to_owned(),
            port: free_port(),
            internal_port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra_env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        server.spawn();
        server
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The operator API and metrics listener.
    pub fn internal_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.internal_port)
    }

    fn spawn(&mut self) {
        let db = match self.store {
            Store::Sqlite => format!("sqlite://{}", self.dir.path().display()),
            Store::Postgres => PG_URL.to_owned(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))
            .unwrap();
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .env("TIM_SERVER_NAME", &self.server_name)
            .env("TIM_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "TIM_INTERNAL_LISTEN",
                format!("127.0.0.1:{}", self.internal_port),
            )
            .env("TIM_DATABASE_URL", db)
            .env("TIM_DATA_DIR", self.dir.path())
            .env("TIM_OPEN_REGISTRATION", "true")
            .env("TIM_RATE_LIMIT__DISABLED", "true")
            .env("TIM_ARGON2__M_COST_KIB", "1024")
            .env("TIM_ARGON2__T_COST", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start tim-homeserver"));
        self.wait_healthy();
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("server did not come up; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// `kill -9`: no shutdown, no flush.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Starts the process again after `kill9` (same folder, database and ports).
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.spawn();
    }

    /// Adds a tenant through the operator API.
    pub async fn add_tenant(&self, name: &str) {
        let resp = reqwest::Client::new()
            .put(format!(
                "{}/_tim/operator/v1/tenants/{name}",
                self.internal_url()
            ))
            .bearer_auth(self.operator_token())
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success(), "adding tenant {name}: {resp:?}");
    }

    pub async fn cleanup(mut self) {
        self.kill9();
        if self.store == Store::Postgres {
            tim_homeserver::store::drop_tenant_schema(PG_URL, &self.server_name)
                .await
                .unwrap();
        }
    }

    /// Drops the PostgreSQL schemas of these further tenants (the default tenant's goes in
    /// `cleanup`).
    pub async fn cleanup_tenants(&self, tenants: &[&str]) {
        if self.store == Store::Postgres {
            for t in tenants {
                tim_homeserver::store::drop_tenant_schema(PG_URL, t)
                    .await
                    .unwrap();
            }
        }
    }

    /// The operator token the server wrote on first start.
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("operator.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// A single-use registration token of the default tenant, made through the operator API.
    pub async fn registration_token(&self) -> String {
        self.registration_token_for(&self.server_name).await
    }

    /// A single-use registration token of `tenant`, made through the operator API.
    pub async fn registration_token_for(&self, tenant: &str) -> String {
        let v: serde_json::Value = reqwest::Client::new()
            .post(format!(
                "{}/_tim/operator/v1/tenants/{tenant}/registration_tokens",
                self.internal_url()
            ))
            .bearer_auth(self.operator_token())
            .json(&serde_json::json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["token"].as_str().unwrap().to_owned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A running `tim-push-gateway` process, allowed to push to loopback `http` endpoints (the
/// push service double) and retrying quickly.
pub struct PushGateway {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl PushGateway {
    pub fn start(env: &[(&str, &str)]) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("gateway.log")).unwrap();
        let mut cmd = Command::new(binary_named("tim-push-gateway"));
        cmd.arg("serve")
            .env("TIM_PUSH_LISTEN", format!("127.0.0.1:{port}"))
            .env(
                "TIM_PUSH_VAPID_PRIVATE_KEY_FILE",
                dir.path().join("vapid.pem"),
            )
            .env("TIM_PUSH_VAPID_SUBJECT", "mailto:ops@e2e.test")
            .env("TIM_PUSH_DELIVERY__ALLOW_LOOPBACK_HTTP", "true")
            .env("TIM_PUSH_DELIVERY__BACKOFF_INITIAL_MS", "100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("start tim-push-gateway");
        let gateway = Self { port, dir, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "gateway did not come up; log:\n{}",
                gateway.log()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
        gateway
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL pushers name (`data.url`).
    pub fn notify_url(&self) -> String {
        format!("{}/_matrix/push/v1/notify", self.base_url())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for PushGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `tim-vzd-sync` process talking to a directory double, its store on SQLite (a
/// file in its folder) or PostgreSQL (a schema of its own, dropped on `cleanup`).
pub struct VzdSyncProcess {
    pub port: u16,
    pub search_port: u16,
    pub dir: tempfile::TempDir,
    pub store: Store,
    schema: String,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl VzdSyncProcess {
    /// Starts it against `directory` (the double's base URL, token URL and CA files), polling
    /// the federation list every second.
    pub fn start(store: Store, directory: &vzd::VzdDouble, env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (root, sub) = directory.inner.ca.write_pems(dir.path());
        // Our RegService signature certificate (C.FD.SIG), registered with the directory.
        let (cert, key) = directory.inner.ca.issue(
            "TIM e2e RegService C.FD.SIG",
            tim_vzd_sync::crypto::Alg::BP256R1,
        );
        directory.register_owner_certificate(&cert);
        let (key_file, cert_file) = (
            dir.path().join("regservice.key.pem"),
            dir.path().join("regservice.cert.pem"),
        );
        std::fs::write(&key_file, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(&cert_file, cert.to_pem().unwrap()).unwrap();
        let schema = format!("vzd_e2e_{}_{}", std::process::id(), rand::random::<u32>());
        let db = match store {
            Store::Sqlite => format!("sqlite://{}", dir.path().join("vzd-sync.db").display()),
            Store::Postgres => PG_URL.to_owned(),
        };
        let mut all: Vec<(String, String)> = [
            ("TIM_VZD_DATA_DIR", dir.path().display().to_string()),
            ("TIM_VZD_DATABASE_URL", db),
            ("TIM_VZD_DATABASE_SCHEMA", schema.clone()),
            ("TIM_VZD_DIRECTORY__BASE_URL", directory.base_url()),
            ("TIM_VZD_DIRECTORY__TOKEN_URL", directory.token_url()),
            ("TIM_VZD_DIRECTORY__CLIENT_ID", "tim-provider-e2e".into()),
            ("TIM_VZD_DIRECTORY__CLIENT_SECRET", "e2e-secret".into()),
            ("TIM_VZD_DIRECTORY__REQUEST_TIMEOUT_MS", "2000".into()),
            (
                "TIM_VZD_FEDERATION_LIST__TRUST_ANCHORS",
                format!("[\"{}\"]", root.display()),
            ),
            (
                "TIM_VZD_FEDERATION_LIST__INTERMEDIATES",
                format!("[\"{}\"]", sub.display()),
            ),
            ("TIM_VZD_FEDERATION_LIST__REFRESH_SECS", "1".into()),
            // The double's list signers; its PKI has no OCSP responder (OCSP is tested with
            // the openssl responder in vzd-sync's unit tests).
            (
                "TIM_VZD_FEDERATION_LIST__SIGNER_COMMON_NAMES",
                format!(
                    "[\"{}\", \"{}\"]",
                    vzd::signer_name(tim_vzd_sync::crypto::Alg::BP256R1),
                    vzd::signer_name(tim_vzd_sync::crypto::Alg::ES256)
                ),
            ),
            ("TIM_VZD_FEDERATION_LIST__OCSP", "false".into()),
            ("TIM_VZD_FEDERATION_LIST__RETRY_SECS", "1".into()),
            (
                "TIM_VZD_OWNER__SIGNING_KEY_FILE",
                key_file.display().to_string(),
            ),
            (
                "TIM_VZD_OWNER__SIGNING_CERT_FILE",
                cert_file.display().to_string(),
            ),
            ("TIM_VZD_RECONCILE__RETRY_INITIAL_MS", "200".into()),
            ("TIM_VZD_RECONCILE__RETRY_MAX_MS", "1000".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        all.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let mut p = Self {
            port: free_port(),
            search_port: free_port(),
            dir,
            store,
            schema,
            env: all,
            child: None,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("vzd-sync.log"))
            .unwrap();
        let mut cmd = Command::new(binary_named("tim-vzd-sync"));
        cmd.arg("serve")
            .env("TIM_VZD_LISTEN", format!("127.0.0.1:{}", self.port))
            .env(
                "TIM_VZD_SEARCH_LISTEN",
                format!("127.0.0.1:{}", self.search_port),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("start tim-vzd-sync"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tim-vzd-sync did not come up; log:\n{}",
                self.log()
            );
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tim-vzd-sync exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The directory search the messenger clients call.
    pub fn search_url(&self) -> String {
        format!(
            "http://127.0.0.1:{}/_tim/directory/v1/search",
            self.search_port
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("vzd-sync.log")).unwrap_or_default()
    }

    /// The internal API's token (made on first start).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("internal.token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn cleanup(mut self) {
        self.kill9();
        if self.store == Store::Postgres {
            tim_vzd_sync::store::drop_pg_schema(PG_URL, &self.schema)
                .await
                .unwrap();
        }
    }
}

impl Drop for VzdSyncProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
