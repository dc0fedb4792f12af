//! The configuration: one TOML file, every key overridable by a `TIM_`-prefixed environment
//! variable (nested keys joined with `__`, e.g. `TIM_ARGON2__M_COST_KIB`).
//!
//! The doc comment of each field is the reference; `tim-homeserver.example.toml` shows them all.

use std::{net::SocketAddr, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// The whole process configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Matrix server name of the default tenant (the part after `:` in user ids).
    pub server_name: String,
    /// Address the client and federation API listens on (public: clients, other homeservers,
    /// the org-admin backend's admin API).
    pub listen: SocketAddr,
    /// Address of the internal listener: the operator API (every tenant, one token) and
    /// `/metrics` (every organisation's traffic). Keep it on loopback or an internal network.
    pub internal_listen: SocketAddr,
    /// Requests whose Host is the address the client connected to (a newcomer's client at
    /// `http://127.0.0.1:8008`) are served by the default tenant. Any other Host that names no
    /// tenant is refused (404 `M_UNRECOGNIZED`), never served by a default.
    pub default_tenant_on_listen_address: bool,
    /// Reverse proxies whose `X-Forwarded-For` / `Forwarded` headers are believed (IP addresses
    /// or CIDR ranges, e.g. `["127.0.0.1", "10.0.0.0/8"]`). The client address (rate limits,
    /// device IPs) is the last address in those headers that is not a trusted proxy. Empty: the
    /// headers are ignored and the peer address counts.
    pub trusted_proxies: Vec<String>,
    /// The header the trusted proxies set: `x-forwarded-for` or `forwarded` (RFC 7239). Only
    /// that one is read; the other is passed through as the client sent it.
    pub trusted_proxy_header: String,
    /// Connection limits and timeouts against slow and idle clients.
    pub http: HttpConfig,
    /// Where tenant data lives. `sqlite://DIR` (the default `sqlite://./data`) keeps one SQLite
    /// file per tenant under DIR; `postgres://user@host:port/db` keeps one schema per tenant in
    /// that database (on a loopback host without TLS unless the URL sets `sslmode`).
    pub database_url: String,
    /// Folder for files that are not in the database (operator token, later media).
    pub data_dir: PathBuf,
    /// The URL clients use to reach the default tenant, announced in its
    /// `/.well-known/matrix/client`. Default: `http://{listen}`.
    pub public_baseurl: Option<String>,
    /// The URL clients use to reach every other tenant, with `{server_name}` standing for the
    /// tenant's name; each tenant announces its own in `/.well-known/matrix/client`.
    pub tenant_baseurl: String,
    /// Let anyone register with `m.login.dummy`. Meant for test and benchmark set-ups only; a
    /// warning is logged when on. Without it, registration needs a single-use registration token.
    pub open_registration: bool,
    /// Bearer token for the operator API (`/_tim/operator/v1`). When unset, a random one is made
    /// at start and written to `{data_dir}/operator.token` (mode 0600), where the CLI reads it.
    pub operator_token: Option<Secret>,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info` or `info,tim_homeserver=debug`.
    pub log_level: String,
    /// Room version used when `createRoom` names none.
    pub default_room_version: String,
    /// Room versions `createRoom` accepts. TI-M allows 9 and 10 (A-ROOM-01).
    pub supported_room_versions: Vec<String>,
    /// Lifetime of access tokens issued together with a refresh token, in seconds. Access tokens
    /// of clients that do not ask for refresh tokens do not expire.
    pub refreshable_access_token_lifetime_secs: u64,
    /// Largest request body accepted, in bytes (413 `M_TOO_LARGE` beyond).
    pub max_request_bytes: usize,
    /// Password hashing cost.
    pub argon2: Argon2Config,
    /// Request rate limits for endpoints the spec marks as rate-limited.
    pub rate_limit: RateLimitConfig,
    /// Connections per tenant database pool.
    pub db_pool_size: u32,
    /// Only organisation admins may change display names (TI-M B-ADM-02: names follow the
    /// rule `[Name], [Vorname]` and are changed through the admin client). On by default, as TI-M
    /// requires; users keep control of their avatar and other profile fields.
    pub displayname_admin_only: bool,
    /// Media repository.
    pub media: MediaConfig,
    /// Pushes to push gateways.
    pub push: PushConfig,
    /// Server notices (system messages of the organisation to its users).
    pub server_notices: ServerNoticesConfig,
    /// The Server-Server API: other homeservers.
    pub federation: FederationConfig,
}

/// Federation: talking to other homeservers (Matrix Server-Server API).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationConfig {
    /// Talk to other homeservers. Off: federation requests are refused and nothing is sent.
    pub enabled: bool,
    /// Address of the TLS listener other homeservers connect to (the spec's port is 8448; it
    /// serves the client API too). Needs `tls_certificate` and `tls_private_key`. Unset: no
    /// TLS listener (a reverse proxy terminates TLS in front of `listen`).
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener, valid for every tenant's server name.
    pub tls_certificate: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    pub tls_private_key: Option<PathBuf>,
    /// PEM bundle of CA certificates trusted for outgoing connections besides the built-in
    /// web PKI roots (a private federation's CA, tests).
    pub ca_certificates: Option<PathBuf>,
    /// Server name → `ip:port` to connect to instead of discovering it (`.well-known`, SRV,
    /// DNS): tests and private networks. TLS still checks the certificate for the server name.
    pub resolve: std::collections::BTreeMap<String, SocketAddr>,
    /// Servers we federate with; empty: all (the TI-M federation list narrows this further).
    pub allowed_servers: Vec<String>,
    /// Timeout of one outgoing federation request, in seconds.
    pub request_timeout_secs: u64,
    /// How long other servers may cache our signing key (`valid_until_ts`), in seconds.
    pub key_validity_secs: u64,
    /// Signed requests per second one other server may send us, sustained, and in a burst;
    /// beyond, 429 `M_LIMIT_EXCEEDED` (its sender retries).
    pub requests_per_second_per_server: f64,
    pub request_burst_per_server: f64,
}

impl FederationConfig {
    fn validate(&self) -> Result<(), String> {
        for name in self.allowed_servers.iter().chain(self.resolve.keys()) {
            ruma::ServerName::parse(name)
                .map_err(|e| format!("federation: {name:?} is no server name: {e}"))?;
        }
        match (&self.listen, &self.tls_certificate, &self.tls_private_key) {
            (Some(_), Some(_), Some(_)) | (None, _, _) => {}
            _ => return Err("federation.listen needs tls_certificate and tls_private_key".into()),
        }
        if self.request_timeout_secs == 0 || self.key_validity_secs == 0 {
            return Err("federation.request_timeout_secs and key_validity_secs must be > 0".into());
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !positive(self.requests_per_second_per_server)
            || !positive(self.request_burst_per_server)
        {
            return Err(
                "federation.requests_per_second_per_server and request_burst_per_server must be > 0"
                    .into(),
            );
        }
        Ok(())
    }
}

impl Default for FederationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
            tls_certificate: None,
            tls_private_key: None,
            ca_certificates: None,
            resolve: Default::default(),
            allowed_servers: vec![],
            request_timeout_secs: 30,
            key_validity_secs: 24 * 3600,
            requests_per_second_per_server: 100.0,
            request_burst_per_server: 1000.0,
        }
    }
}

/// Limits of the HTTP listeners.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Seconds a client has to send a request's headers; also how long an idle keep-alive
    /// connection is kept (slow-loris clients are cut off after this).
    pub header_read_timeout_secs: u64,
    /// Seconds a client has to send a (non-upload) request body.
    pub body_read_timeout_secs: u64,
    /// Seconds an upload may pause between two chunks of its body.
    pub upload_idle_timeout_secs: u64,
    /// After its first minute, an upload slower than this on average (bytes per second) is
    /// cut off.
    pub upload_min_bytes_per_sec: u64,
    /// Open connections at most; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Open connections per client address at most (trusted proxies are exempt); more are
    /// closed at once.
    pub max_connections_per_ip: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            upload_idle_timeout_secs: 30,
            upload_min_bytes_per_sec: 16 * 1024,
            max_connections: 10_000,
            max_connections_per_ip: 256,
        }
    }
}

/// Server notices come from a system user of each tenant, in a room per user.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerNoticesConfig {
    /// Localpart of the system user (made on first use).
    pub localpart: String,
    /// The system user's display name.
    pub display_name: String,
    /// Name of each user's notices room.
    pub room_name: String,
}

impl Default for ServerNoticesConfig {
    fn default() -> Self {
        Self {
            localpart: "systemnachrichten".into(),
            display_name: "Systemnachrichten".into(),
            room_name: "Systemnachrichten".into(),
        }
    }
}

/// The push sender: notifications to the push gateways of users' pushers.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PushConfig {
    /// Gateway URLs a pusher may name must have the scheme, host and port of one of these and
    /// its path below it (e.g. `https://push.example.org/`). Empty: any public `http(s)` URL —
    /// pushers are set by users, so a production deployment should list its gateways.
    pub gateway_url_prefixes: Vec<String>,
    /// Timeout of one request to a gateway, in seconds.
    pub timeout_secs: u64,
    /// Gateway requests in flight at the same time per tenant (each waits up to the gateway's
    /// answer, about one push service round trip).
    pub concurrency: usize,
    /// Allow gateways on loopback, private and link-local addresses (tests, a gateway on the
    /// same host). Off: pushers cannot make the server call internal services.
    pub allow_private_addresses: bool,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            gateway_url_prefixes: vec![],
            timeout_secs: 10,
            concurrency: 64,
            allow_private_addresses: false,
        }
    }
}

/// Uploads, downloads and thumbnails. Files live under `{data_dir}/media/{server_name}/`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MediaConfig {
    /// Largest upload in bytes (413 `M_TOO_LARGE` beyond). Default 110 MiB, the TI-Messenger's
    /// attachment limit.
    pub max_upload_bytes: u64,
    /// Serve the deprecated unauthenticated `/_matrix/media/v3/{download,thumbnail}` endpoints.
    /// On by default: TI-M's test suite expects them to answer (A-ROOM-15, A_26263), and TI-M
    /// attachments are end-to-end encrypted, so a guessed media id yields only ciphertext.
    /// Switch off to serve media to authenticated clients only (Matrix 1.11 "freeze").
    pub legacy_unauthenticated_media: bool,
    /// Media ids reserved with `/create` but not uploaded yet, per user.
    pub max_pending_uploads: usize,
    /// How long a reserved media id waits for its upload, in seconds.
    pub pending_upload_secs: u64,
    /// Images larger than this (bytes) get no server-side thumbnails.
    pub max_thumbnail_source_bytes: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 110 * 1024 * 1024,
            legacy_unauthenticated_media: true,
            max_pending_uploads: 10,
            pending_upload_secs: 24 * 3600,
            max_thumbnail_source_bytes: 30 * 1024 * 1024,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// Argon2id parameters. The defaults (19 MiB, 2 passes, 1 lane) are OWASP's recommendation and
/// take about 25 ms per hash on the 2-core reference machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    pub m_cost_kib: u32,
    pub t_cost: u32,
    pub p_cost: u32,
    /// Hashes computed at the same time by the whole process, across all tenants (0: one per
    /// core). Memory for hashing stays below this × `m_cost_kib`.
    pub max_concurrent: usize,
    /// Password checks waiting for a hashing slot, process-wide, served first come first
    /// served; beyond, 429 `M_LIMIT_EXCEEDED`.
    pub max_queued: usize,
}

/// Token buckets per user (authenticated requests) and per IP address (anonymous ones).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Sustained requests per second.
    pub per_second: f64,
    /// Requests allowed in a burst.
    pub burst: f64,
    /// Turn rate limiting off (benchmarks).
    pub disabled: bool,
    /// Wrong passwords an account may see before each further attempt must wait (login and
    /// password confirmation alike; 429 `M_LIMIT_EXCEEDED` with `retry_after_ms`). Applies even
    /// when `disabled`.
    pub login_failures_allowed: u32,
    /// The wait after the allowed failures doubles from one second with each further failure,
    /// up to this many seconds. A correct password clears it.
    pub login_backoff_max_secs: u64,
}

/// A secret string that never prints.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server_name: "localhost".into(),
            listen: "127.0.0.1:8008".parse().expect("valid default address"),
            internal_listen: "127.0.0.1:8007".parse().expect("valid default address"),
            default_tenant_on_listen_address: true,
            trusted_proxies: vec![],
            trusted_proxy_header: "x-forwarded-for".into(),
            http: HttpConfig::default(),
            database_url: "sqlite://./data".into(),
            data_dir: "./data".into(),
            public_baseurl: None,
            tenant_baseurl: "https://{server_name}".into(),
            open_registration: false,
            operator_token: None,
            log_format: LogFormat::Human,
            // Ruma's state resolution reports every passed auth check at `info`.
            log_level: "info,ruma_state_res=warn".into(),
            default_room_version: "10".into(),
            supported_room_versions: vec!["9".into(), "10".into()],
            refreshable_access_token_lifetime_secs: 300,
            max_request_bytes: 1024 * 1024,
            argon2: Argon2Config::default(),
            rate_limit: RateLimitConfig::default(),
            db_pool_size: 8,
            displayname_admin_only: true,
            media: MediaConfig::default(),
            push: PushConfig::default(),
            server_notices: ServerNoticesConfig::default(),
            federation: FederationConfig::default(),
        }
    }
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            m_cost_kib: 19 * 1024,
            t_cost: 2,
            p_cost: 1,
            max_concurrent: 0,
            max_queued: 256,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 10.0,
            burst: 50.0,
            disabled: false,
            login_failures_allowed: 5,
            login_backoff_max_secs: 300,
        }
    }
}

impl Config {
    /// Defaults, then the TOML file (if any), then `TIM_*` environment variables.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            // TIM_CONFIG names the file (the CLI reads it), it is no setting.
            .merge(Env::prefixed("TIM_").ignore(&["CONFIG"]).split("__"))
            .extract()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        crate::tenants::tenant_name(&self.server_name)
            .map_err(|e| format!("server_name {:?}: {e}", self.server_name))?;
        if !["x-forwarded-for", "forwarded"].contains(&self.trusted_proxy_header.as_str()) {
            return Err("trusted_proxy_header must be x-forwarded-for or forwarded".into());
        }
        for p in &self.trusted_proxies {
            crate::net::IpRange::parse(p).map_err(|e| format!("trusted_proxies: {e}"))?;
        }
        if self
            .operator_token
            .as_ref()
            .is_some_and(|t| t.0.len() < crate::server::MIN_OPERATOR_TOKEN)
        {
            return Err(format!(
                "operator_token must have at least {} characters",
                crate::server::MIN_OPERATOR_TOKEN
            ));
        }
        self.federation.validate()?;
        if !self.tenant_baseurl.contains("{server_name}") {
            return Err("tenant_baseurl must contain {server_name}".into());
        }
        if self.http.max_connections == 0 || self.http.max_connections_per_ip == 0 {
            return Err("http.max_connections and http.max_connections_per_ip must be > 0".into());
        }
        if !self
            .supported_room_versions
            .contains(&self.default_room_version)
        {
            return Err("default_room_version must be one of supported_room_versions".into());
        }
        for v in &self.supported_room_versions {
            let id = ruma::RoomVersionId::try_from(v.as_str()).map_err(|e| e.to_string())?;
            if id.rules().is_none() {
                return Err(format!("room version {v} is not supported by this build"));
            }
        }
        DatabaseLocation::parse(&self.database_url)?;
        if self.rate_limit.per_second <= 0.0 || self.rate_limit.burst < 1.0 {
            return Err("rate_limit.per_second must be > 0 and rate_limit.burst >= 1".into());
        }
        if self.max_request_bytes < 1024 {
            return Err("max_request_bytes must be at least 1024".into());
        }
        Ok(())
    }

    pub fn public_baseurl(&self) -> String {
        match &self.public_baseurl {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.listen),
        }
    }

    /// The base URL of tenant `server_name`.
    pub fn baseurl_of(&self, server_name: &str) -> String {
        if server_name == self.server_name {
            return self.public_baseurl();
        }
        self.tenant_baseurl
            .replace("{server_name}", server_name)
            .trim_end_matches('/')
            .to_owned()
    }
}

/// Where the tenants' databases live, parsed from `database_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DatabaseLocation {
    /// One SQLite file per tenant in this folder.
    SqliteDir(PathBuf),
    /// One schema per tenant in this PostgreSQL database.
    Postgres(String),
}

impl DatabaseLocation {
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(dir) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if dir.is_empty() {
                return Err("database_url sqlite:// needs a folder".into());
            }
            Ok(Self::SqliteDir(dir.into()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(url.to_owned()))
        } else {
            Err(format!(
                "database_url must start with sqlite:// or postgres://, got {url:?}"
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn the_example_config_is_the_defaults() {
        // The documented example stays true: what it shows are the defaults.
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tim-homeserver.example.toml");
        let loaded = Config::load(Some(&path)).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{loaded:?}"), format!("{defaults:?}"));
    }

    #[test]
    fn database_urls() {
        assert_eq!(
            DatabaseLocation::parse("sqlite://./data").unwrap(),
            DatabaseLocation::SqliteDir("./data".into())
        );
        assert!(matches!(
            DatabaseLocation::parse("postgres://u@h/db").unwrap(),
            DatabaseLocation::Postgres(_)
        ));
        assert!(DatabaseLocation::parse("mysql://x").is_err());
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(..)");
    }

    #[test]
    fn unsupported_default_version_rejected() {
        let config = Config {
            default_room_version: "11".into(),
            ..Config::default()
        };
        assert!(config.validate().is_err());
    }
}
