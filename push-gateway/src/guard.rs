//! Where the gateway may send: subscription endpoints come from users (through their pushers),
//! so they must not make the gateway call internal hosts (SSRF). Checked twice: the URL when a
//! push is accepted (scheme, IP literals, the app's allowed hosts), and every address a host
//! name resolves to when connecting (the resolver below), so DNS cannot point past the check.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use reqwest::Url;

use crate::config::{AppConfig, DeliveryConfig};

/// Why an endpoint is not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a Web Push endpoint at all (the pushkey is rejected).
    Invalid(String),
    /// A valid endpoint this gateway will not call (dropped, pushkey kept).
    Blocked(String),
}

/// Whether an address is one a user-chosen URL must not reach: anything but public unicast,
/// including IPv4 addresses carried inside IPv6 (mapped, compatible, NAT64, 6to4).
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                // 0.0.0.0/8 ("this network"), 240.0.0.0/4 (reserved).
                || a == 0
                || a >= 240
                // Carrier-grade NAT 100.64.0.0/10, IETF protocol assignments 192.0.0.0/24,
                // benchmarking 198.18.0.0/15.
                || (a == 100 && (b & 0xc0) == 64)
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (b & 0xfe) == 18)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                std::net::Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)
            };
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || v6.to_ipv4_mapped().is_some_and(|v4| internal(v4.into()))
                // IPv4-compatible ::a.b.c.d (deprecated, still routed by some stacks).
                || (s[..6] == [0; 6] && internal(embedded(s[6], s[7]).into()))
                // NAT64 64:ff9b::/96 and 64:ff9b:1::/48 reach the IPv4 address they carry.
                || (s[0] == 0x64 && s[1] == 0xff9b && internal(embedded(s[6], s[7]).into()))
                // 6to4 2002:a.b.c.d::/48.
                || (s[0] == 0x2002 && internal(embedded(s[1], s[2]).into()))
        }
    }
}

/// The resolver's refusal (every address of a host internal), told apart from network errors
/// so that such a push is dropped rather than retried.
#[derive(Debug)]
pub struct AddressRefused(String);

impl std::fmt::Display for AddressRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} resolves to no permitted address", self.0)
    }
}

impl std::error::Error for AddressRefused {}

/// Whether a request failed because the guarded resolver refused every address of its host.
pub fn is_address_refusal(e: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<AddressRefused>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// The address rule for one connection attempt.
#[derive(Clone, Copy, Debug)]
pub struct AddressPolicy {
    pub allow_loopback: bool,
    pub allow_private: bool,
}

impl AddressPolicy {
    pub fn from_config(d: &DeliveryConfig) -> Self {
        Self {
            allow_loopback: d.allow_loopback_http || d.allow_private_addresses,
            allow_private: d.allow_private_addresses,
        }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        if self.allow_private {
            return true;
        }
        if ip.is_loopback() || ip.to_canonical().is_loopback() {
            return self.allow_loopback;
        }
        !internal(ip)
    }
}

/// Checks a subscription endpoint before it is used.
pub fn check_endpoint(
    endpoint: &str,
    app: &AppConfig,
    delivery: &DeliveryConfig,
) -> Result<Url, Refusal> {
    let url = Url::parse(endpoint).map_err(|e| Refusal::Invalid(format!("endpoint: {e}")))?;
    let host = url
        .host_str()
        .ok_or_else(|| Refusal::Invalid("endpoint has no host".into()))?
        .to_ascii_lowercase();
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Invalid("endpoint carries credentials".into()));
    }
    let ip: Option<IpAddr> = host.trim_matches(['[', ']']).parse().ok();
    let loopback_host = host == "localhost" || ip.is_some_and(|ip| ip.is_loopback());
    match url.scheme() {
        "https" => {}
        "http" if delivery.allow_loopback_http && loopback_host => {}
        _ => {
            return Err(Refusal::Invalid(
                "endpoint must be an https URL (RFC 8030)".into(),
            ));
        }
    }
    // IP literals are connected to without the resolver: check them here.
    if let Some(ip) = ip
        && !AddressPolicy::from_config(delivery).permits(ip)
    {
        return Err(Refusal::Blocked(format!(
            "endpoint address {ip} is internal"
        )));
    }
    if !app.allowed_endpoint_hosts.is_empty()
        && !app
            .allowed_endpoint_hosts
            .iter()
            .any(|p| host_matches(p, &host))
    {
        return Err(Refusal::Blocked(format!(
            "push service host {host} is not allowed for this app"
        )));
    }
    Ok(url)
}

/// `host` equals `pattern`, or `pattern` is `*.suffix` and `host` is below `suffix`.
fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.to_ascii_lowercase();
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        None => pattern == host,
    }
}

/// A DNS resolver that drops addresses the policy does not permit, and fails when none remain.
pub struct GuardedResolver {
    pub policy: AddressPolicy,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| policy.permits(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(
                    Box::new(AddressRefused(host)) as Box<dyn std::error::Error + Send + Sync>
                );
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The outbound client: rustls, no redirects (a redirect could lead anywhere), the guarded
/// resolver, timeouts.
pub fn http_client(d: &DeliveryConfig) -> reqwest::Client {
    reqwest::Client::builder()
        // A proxy would resolve endpoint host names itself, past the guarded resolver.
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .dns_resolver(Arc::new(GuardedResolver {
            policy: AddressPolicy::from_config(d),
        }))
        .timeout(std::time::Duration::from_millis(d.request_timeout_ms))
        .connect_timeout(std::time::Duration::from_millis(
            d.request_timeout_ms.min(5_000),
        ))
        .pool_max_idle_per_host(d.per_host_concurrency)
        .user_agent(concat!("tim-push-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("http client")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(loopback: bool, private: bool) -> DeliveryConfig {
        DeliveryConfig {
            allow_loopback_http: loopback,
            allow_private_addresses: private,
            ..DeliveryConfig::default()
        }
    }

    #[test]
    fn endpoints_are_checked() {
        let app = AppConfig::default();
        let strict = delivery(false, false);
        assert!(check_endpoint("https://fcm.googleapis.com/fcm/send/x", &app, &strict).is_ok());
        assert!(check_endpoint("https://[2606:4700::1111]/x", &app, &strict).is_ok());
        assert!(check_endpoint("https://142.250.1.1/x", &app, &strict).is_ok());
        for bad in [
            "http://push.example.org/x",
            "ftp://push.example.org/x",
            "not a url",
            "https://user:pw@push.example.org/x",
            "http://127.0.0.1:9/x",
        ] {
            assert!(
                matches!(check_endpoint(bad, &app, &strict), Err(Refusal::Invalid(_))),
                "{bad}"
            );
        }
        for internal in [
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://100.64.0.1/x",
            "https://0.1.2.3/x",
            "https://198.18.0.1/x",
            "https://[64:ff9b::a9fe:a9fe]/x",
            "https://[2002:a00:1::]/x",
            "https://[::10.0.0.1]/x",
        ] {
            assert!(
                matches!(
                    check_endpoint(internal, &app, &strict),
                    Err(Refusal::Blocked(_))
                ),
                "{internal}"
            );
        }
        // The test configuration allows loopback http, and nothing else internal.
        let test = delivery(true, false);
        assert!(check_endpoint("http://127.0.0.1:9/x", &app, &test).is_ok());
        assert!(check_endpoint("http://localhost:9/x", &app, &test).is_ok());
        assert!(check_endpoint("http://10.0.0.1/x", &app, &test).is_err());
        assert!(check_endpoint("https://10.0.0.1/x", &app, &test).is_err());
        assert!(check_endpoint("https://10.0.0.1/x", &app, &delivery(false, true)).is_ok());
    }

    #[test]
    fn allowed_hosts_match_exactly_or_below_a_wildcard() {
        let app = AppConfig {
            allowed_endpoint_hosts: vec!["fcm.googleapis.com".into(), "*.mozilla.com".into()],
            ..AppConfig::default()
        };
        let d = delivery(false, false);
        assert!(check_endpoint("https://fcm.googleapis.com/x", &app, &d).is_ok());
        assert!(check_endpoint("https://updates.push.services.mozilla.com/x", &app, &d).is_ok());
        for other in [
            "https://evilmozilla.com/x",
            "https://mozilla.com/x",
            "https://fcm.googleapis.com.evil.org/x",
        ] {
            assert!(
                matches!(check_endpoint(other, &app, &d), Err(Refusal::Blocked(_))),
                "{other}"
            );
        }
    }

    #[tokio::test]
    async fn the_resolver_drops_internal_addresses() {
        use reqwest::dns::Resolve;
        let strict = GuardedResolver {
            policy: AddressPolicy::from_config(&delivery(false, false)),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(strict.resolve(name).await.is_err());
        let test = GuardedResolver {
            policy: AddressPolicy::from_config(&delivery(true, false)),
        };
        let name: reqwest::dns::Name = "localhost".parse().unwrap();
        assert!(
            test.resolve(name)
                .await
                .unwrap()
                .all(|a| a.ip().is_loopback())
        );
    }
}
