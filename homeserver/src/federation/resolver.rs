//! Server discovery (spec: "Resolving server names"): which host and port serve a server
//! name's federation API, and what the `Host` header and TLS name are. Overrides from the
//! config come first; results are cached. The look-ups themselves (`.well-known`, SRV) are
//! injected, so tests drive every branch.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use ruma::{OwnedServerName, ServerName};

use crate::clock::Clock;

/// The spec's default federation port.
pub const DEFAULT_PORT: u16 = 8448;

/// How long a discovery result is reused.
const CACHE_MS: i64 = 24 * 3600 * 1000;
/// How long a failed `.well-known` look-up is remembered (the fallback is used meanwhile).
const FAILURE_CACHE_MS: i64 = 10 * 60 * 1000;

/// Where to connect for a server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Host for the URL and the TLS server name (an IP literal in brackets for IPv6).
    pub host: String,
    pub port: u16,
    /// The `Host` header: the server name, or the delegated name `.well-known` gave.
    pub host_header: String,
}

impl Target {
    pub fn base_url(&self) -> String {
        format!("https://{}:{}", self.host, self.port)
    }
}

/// The network look-ups discovery makes.
#[async_trait]
pub trait Lookup: Send + Sync {
    /// `m.server` of `https://{host}/.well-known/matrix/server`, if it answers with one.
    async fn well_known(&self, host: &str) -> Option<String>;
    /// SRV records of `name`, ordered by priority (then weight): `(target, port)`.
    async fn srv(&self, name: &str) -> Vec<(String, u16)>;
}

pub struct Resolver {
    overrides: BTreeMap<String, SocketAddr>,
    lookup: Arc<dyn Lookup>,
    clock: Arc<dyn Clock>,
    cache: Mutex<HashMap<OwnedServerName, (Target, i64)>>,
}

impl Resolver {
    pub fn new(
        overrides: BTreeMap<String, SocketAddr>,
        lookup: Arc<dyn Lookup>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            overrides,
            lookup,
            clock,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub async fn resolve(&self, server: &ServerName) -> Target {
        let now = self.clock.now_ms();
        if let Some((target, until)) = self.cache.lock().expect("resolver cache").get(server)
            && *until > now
        {
            return target.clone();
        }
        let (target, ttl) = self.discover(server).await;
        self.cache
            .lock()
            .expect("resolver cache")
            .insert(server.to_owned(), (target.clone(), now + ttl));
        target
    }

    async fn discover(&self, server: &ServerName) -> (Target, i64) {
        let host = server.host();
        let direct = |port: u16| Target {
            host: host.to_owned(),
            port,
            host_header: server.to_string(),
        };
        // Overrides: the connection goes to the configured address (the HTTP client maps the
        // host there); the certificate is still checked for the server name.
        if let Some(addr) = self.overrides.get(server.as_str()) {
            return (direct(addr.port()), CACHE_MS);
        }
        // 1. An IP literal, 2. an explicit port: no look-ups.
        if server.is_ip_literal() || server.port().is_some() {
            return (direct(server.port().unwrap_or(DEFAULT_PORT)), CACHE_MS);
        }
        // 3. Delegation through `.well-known`.
        if let Some(delegated) = self.lookup.well_known(host).await {
            if let Ok(name) = <&ServerName>::try_from(delegated.as_str()) {
                let d_host = name.host();
                let delegated_to = |port: u16| Target {
                    host: d_host.to_owned(),
                    port,
                    host_header: name.to_string(),
                };
                if name.is_ip_literal() || name.port().is_some() {
                    return (delegated_to(name.port().unwrap_or(DEFAULT_PORT)), CACHE_MS);
                }
                if let Some(target) = self.srv(d_host, name.as_str()).await {
                    return (target, CACHE_MS);
                }
                return (delegated_to(DEFAULT_PORT), CACHE_MS);
            }
            tracing::debug!(server = %server, "ignoring an invalid .well-known delegation");
        }
        // 4./5. SRV records of the server name, 6. the name itself on port 8448.
        if let Some(target) = self.srv(host, server.as_str()).await {
            return (target, FAILURE_CACHE_MS);
        }
        (direct(DEFAULT_PORT), FAILURE_CACHE_MS)
    }

    /// `_matrix-fed._tcp.{host}`, then the deprecated `_matrix._tcp.{host}`. The `Host` header
    /// stays `host_header`; TLS checks the certificate for the name, not the SRV target
    /// (spec v1.11, steps 3.4 and 4).
    async fn srv(&self, host: &str, host_header: &str) -> Option<Target> {
        for prefix in ["_matrix-fed._tcp", "_matrix._tcp"] {
            if let Some((target, port)) = self
                .lookup
                .srv(&format!("{prefix}.{host}"))
                .await
                .into_iter()
                .next()
            {
                return Some(Target {
                    host: target.trim_end_matches('.').to_owned(),
                    port,
                    host_header: host_header.to_owned(),
                });
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[derive(Default)]
    struct Fake {
        well_known: HashMap<String, String>,
        srv: HashMap<String, Vec<(String, u16)>>,
        calls: Mutex<usize>,
    }

    #[async_trait]
    impl Lookup for Fake {
        async fn well_known(&self, host: &str) -> Option<String> {
            *self.calls.lock().unwrap() += 1;
            self.well_known.get(host).cloned()
        }
        async fn srv(&self, name: &str) -> Vec<(String, u16)> {
            self.srv.get(name).cloned().unwrap_or_default()
        }
    }

    fn target(host: &str, port: u16, host_header: &str) -> Target {
        Target {
            host: host.into(),
            port,
            host_header: host_header.into(),
        }
    }

    #[tokio::test]
    async fn follows_the_spec_steps_in_order() {
        let mut fake = Fake::default();
        fake.well_known
            .insert("delegated.example".into(), "matrix.example:443".into());
        fake.well_known
            .insert("srv-delegated.example".into(), "fed.example".into());
        fake.well_known
            .insert("plain-delegated.example".into(), "other.example".into());
        fake.well_known
            .insert("broken.example".into(), "not a server name".into());
        fake.srv.insert(
            "_matrix-fed._tcp.fed.example".into(),
            vec![("srv-target.example.".into(), 8449)],
        );
        fake.srv.insert(
            "_matrix._tcp.old.example".into(),
            vec![("legacy.example".into(), 1234)],
        );
        let overrides = [("over.example".to_owned(), "127.0.0.1:9001".parse().unwrap())].into();
        let clock = Arc::new(ManualClock::new(0));
        let fake = Arc::new(fake);
        let r = Resolver::new(overrides, fake.clone(), clock.clone());
        let resolve = |s: &'static str| {
            let r = &r;
            async move { r.resolve(<&ServerName>::try_from(s).unwrap()).await }
        };
        assert_eq!(
            resolve("over.example").await,
            target("over.example", 9001, "over.example")
        );
        assert_eq!(resolve("1.2.3.4").await, target("1.2.3.4", 8448, "1.2.3.4"));
        assert_eq!(resolve("[::1]:99").await, target("[::1]", 99, "[::1]:99"));
        assert_eq!(
            resolve("port.example:8000").await,
            target("port.example", 8000, "port.example:8000")
        );
        assert_eq!(
            resolve("delegated.example").await,
            target("matrix.example", 443, "matrix.example:443")
        );
        assert_eq!(
            resolve("srv-delegated.example").await,
            target("srv-target.example", 8449, "fed.example")
        );
        assert_eq!(
            resolve("plain-delegated.example").await,
            target("other.example", 8448, "other.example")
        );
        assert_eq!(
            resolve("old.example").await,
            target("legacy.example", 1234, "old.example")
        );
        assert_eq!(
            resolve("broken.example").await,
            target("broken.example", 8448, "broken.example")
        );

        // Cached: no second look-up until the entry expires.
        let calls = *fake.calls.lock().unwrap();
        resolve("delegated.example").await;
        assert_eq!(*fake.calls.lock().unwrap(), calls);
        clock.advance(CACHE_MS + 1);
        resolve("delegated.example").await;
        assert_eq!(*fake.calls.lock().unwrap(), calls + 1);
    }
}
