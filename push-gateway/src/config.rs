//! The gateway's configuration: one TOML file, every key overridable by a `TIM_PUSH_`-prefixed
//! environment variable (nested keys joined with `__`, e.g. `TIM_PUSH_DELIVERY__MAX_ATTEMPTS`).
//! The prefix differs from the homeserver's `TIM_` so both can run from one environment.
//!
//! The doc comment of each field is the reference; `tim-push-gateway.example.toml` shows them all.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

/// The whole gateway configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address the Push Gateway API listens on (the homeserver's pushers point here).
    pub listen: SocketAddr,
    /// File holding the gateway's VAPID private key (PEM, PKCS#8 or SEC1). Made on first start
    /// (mode 0600) when missing; its public key is what browsers subscribe with.
    pub vapid_private_key_file: PathBuf,
    /// Contact of the operator sent to push services in every VAPID token (`mailto:` or
    /// `https:`), as RFC 8292 asks so that a push service can reach whoever sends.
    pub vapid_subject: String,
    /// The apps whose pushers this gateway serves, by the pusher's `app_id`. Pushkeys of other
    /// app ids are rejected (the homeserver then deletes those pushers).
    pub apps: BTreeMap<String, AppConfig>,
    /// How pushes are delivered to the push services.
    pub delivery: DeliveryConfig,
    /// Largest `/notify` body accepted, in bytes (413 `M_TOO_LARGE` beyond).
    pub max_request_bytes: usize,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax, e.g. `info` or `info,tim_push_gateway=debug`.
    pub log_level: String,
}

/// One app (a client build, e.g. the PWA) and how its pushes look.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AppConfig {
    /// The push kind. Only `webpush` (RFC 8030/8291/8292) exists.
    pub kind: AppKind,
    /// Put the sender, room name and message content into the push when the homeserver sends
    /// them. Off by default, as TI-M requires (C-03): pushes carry room id, event id, event type
    /// and unread count, and the client fetches and decrypts the event itself.
    pub include_content: bool,
    /// Seconds a push service keeps a push for a browser that is offline.
    pub ttl_secs: u32,
    /// Push service hosts (`host` or `*.suffix` patterns) this app's subscriptions may use.
    /// Empty: any public host. Pushes to other hosts are dropped (the pushkey is not rejected,
    /// since a configuration change can make it valid again).
    pub allowed_endpoint_hosts: Vec<String>,
}

impl Default for AppConfig {
    fn default() -> Self {
        Self {
            kind: AppKind::Webpush,
            include_content: false,
            ttl_secs: 24 * 3600,
            allowed_endpoint_hosts: vec![],
        }
    }
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AppKind {
    Webpush,
}

/// Queue, retries, circuit breaker and the outbound HTTP client.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryConfig {
    /// Pushes held at once (queued, in flight or waiting for a retry). A `/notify` that does
    /// not fit is answered 429 `M_LIMIT_EXCEEDED`, so the homeserver keeps it and retries.
    pub queue_capacity: usize,
    /// Requests in flight to one push service host at a time.
    pub per_host_concurrency: usize,
    /// Attempts per push before it is given up (retries also end when the push's TTL is over).
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt.
    pub backoff_initial_ms: u64,
    /// Longest retry delay in milliseconds (also caps a push service's `Retry-After`).
    pub backoff_max_ms: u64,
    /// Consecutive failures of a push service host that open its circuit breaker.
    pub breaker_failures: u32,
    /// How long an open breaker keeps requests away from its host, in milliseconds.
    pub breaker_open_ms: u64,
    /// Timeout of one request to a push service, in milliseconds.
    pub request_timeout_ms: u64,
    /// How long `/notify` waits for the first attempts before answering, in milliseconds, so
    /// that pushkeys the push service reports gone are rejected in the same answer. Pushes not
    /// done by then continue in the background; later findings are rejected on the next notify.
    pub answer_within_ms: u64,
    /// Allow plain `http` endpoints on loopback addresses (tests with a local push service).
    /// Off: endpoints must be `https`.
    pub allow_loopback_http: bool,
    /// Allow push services on private, link-local and loopback addresses (an on-site push
    /// service). Off: subscriptions cannot make the gateway call internal hosts (SSRF).
    pub allow_private_addresses: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 100_000,
            per_host_concurrency: 64,
            max_attempts: 10,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 5 * 60_000,
            breaker_failures: 10,
            breaker_open_ms: 30_000,
            request_timeout_ms: 10_000,
            answer_within_ms: 1_000,
            allow_loopback_http: false,
            allow_private_addresses: false,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

/// The app id of the TI-Messenger web client, configured by default.
pub const DEFAULT_APP_ID: &str = "de.tim.web";

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8009)),
            vapid_private_key_file: PathBuf::from("./data/vapid_private_key.pem"),
            vapid_subject: "mailto:postmaster@localhost".into(),
            apps: BTreeMap::from([(DEFAULT_APP_ID.to_owned(), AppConfig::default())]),
            delivery: DeliveryConfig::default(),
            max_request_bytes: 64 * 1024,
            log_format: LogFormat::Human,
            log_level: "info".into(),
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `TIM_PUSH_*` variables.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("TIM_PUSH_").split("__"))
            .extract()
            .map_err(|e| format!("invalid configuration: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(self.vapid_subject.starts_with("mailto:") || self.vapid_subject.starts_with("https:"))
        {
            return Err("vapid_subject must be a mailto: or https: URI (RFC 8292)".into());
        }
        if self.apps.is_empty() {
            return Err("configure at least one app under [apps.\"<app id>\"]".into());
        }
        for (id, app) in &self.apps {
            if id.is_empty() || id.len() > 64 {
                return Err(format!("app id {id:?} must have 1 to 64 characters"));
            }
            if app.ttl_secs == 0 {
                return Err(format!("apps.{id}.ttl_secs must be > 0"));
            }
        }
        let d = &self.delivery;
        if d.queue_capacity == 0 || d.per_host_concurrency == 0 || d.max_attempts == 0 {
            return Err(
                "delivery.queue_capacity, per_host_concurrency and max_attempts must be > 0".into(),
            );
        }
        if d.backoff_initial_ms == 0 || d.backoff_max_ms < d.backoff_initial_ms {
            return Err("delivery.backoff_initial_ms must be > 0 and <= backoff_max_ms".into());
        }
        if d.breaker_failures == 0 || d.request_timeout_ms == 0 {
            return Err("delivery.breaker_failures and request_timeout_ms must be > 0".into());
        }
        if self.max_request_bytes < 1024 {
            return Err("max_request_bytes must be at least 1024".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_content_is_off() {
        let c = Config::default();
        c.validate().unwrap();
        assert!(!c.apps[DEFAULT_APP_ID].include_content);
        assert!(!c.delivery.allow_loopback_http);
        assert!(!c.delivery.allow_private_addresses);
    }

    #[test]
    fn the_example_config_is_the_defaults() {
        // The documented example stays true: what it shows are the defaults.
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tim-push-gateway.example.toml");
        let loaded = Config::load(Some(&path)).unwrap();
        assert_eq!(format!("{loaded:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut c = Config {
            vapid_subject: "ops@example.org".into(),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("vapid_subject"));
        c.vapid_subject = "mailto:ops@example.org".into();
        c.apps.clear();
        assert!(c.validate().is_err());
    }
}
