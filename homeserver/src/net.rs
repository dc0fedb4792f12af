//! Who is on the other end of a connection: the addresses of the connection, trusted reverse
//! proxies, and the client address they forward.

use std::net::{IpAddr, SocketAddr};

/// The two ends of the TCP connection a request came in on (a request extension set by the
/// listener).
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    /// Our address, as the client dialled it.
    pub local: SocketAddr,
    /// The peer: the client, or a reverse proxy in front of us.
    pub peer: SocketAddr,
}

/// An IP address or CIDR range (`10.0.0.0/8`, `::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    net: IpAddr,
    prefix: u8,
}

impl IpRange {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has an invalid prefix length"))?,
        };
        Ok(Self { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, canonical(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 addresses that arrive mapped into IPv6 (`::ffff:a.b.c.d`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The key under which an address is counted (connections, rate limits): IPv4 addresses as
/// they are, IPv6 addresses by their /64 — one client gets a whole /64, so counting single
/// addresses would count nothing.
pub fn address_key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & (u128::MAX << 64);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

/// The reverse proxies whose forwarding header we believe, and which header that is.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    ranges: Vec<IpRange>,
    /// `Forwarded` (RFC 7239) instead of `X-Forwarded-For`.
    rfc7239: bool,
}

impl TrustedProxies {
    /// From the config's `trusted_proxies` and `trusted_proxy_header` (already validated).
    pub fn new(ranges: &[String], header: &str) -> Self {
        Self {
            ranges: ranges
                .iter()
                .filter_map(|r| IpRange::parse(r).ok())
                .collect(),
            rfc7239: header.eq_ignore_ascii_case("forwarded"),
        }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip))
    }

    /// The client's address: the peer, unless the peer is a trusted proxy, in which case the
    /// last address of the one forwarding header the proxies set that is not itself a trusted
    /// proxy. Addresses a client put first in that header are never believed (each proxy
    /// appends the address it saw, so only the tail is vouched for), and the other header is
    /// never read: a proxy that sets one passes the other through as the client sent it.
    pub fn client_ip(&self, peer: IpAddr, headers: &http::HeaderMap) -> IpAddr {
        if !self.trusts(peer) {
            return canonical(peer);
        }
        let chain = forwarded_for(headers, self.rfc7239);
        for ip in chain.iter().rev() {
            match ip {
                Some(ip) if self.trusts(*ip) => continue,
                Some(ip) => return canonical(*ip),
                // An entry we cannot read (`unknown`, obfuscated): stop at the last proxy.
                None => break,
            }
        }
        // Every hop a trusted proxy (or no header): the innermost one we could read.
        chain
            .iter()
            .flatten()
            .next()
            .copied()
            .map(canonical)
            .unwrap_or(canonical(peer))
    }
}

/// The addresses a request passed, oldest first: from RFC 7239 `Forwarded: for=` or from
/// `X-Forwarded-For`. Entries that are not IP addresses are `None`.
fn forwarded_for(headers: &http::HeaderMap, rfc7239: bool) -> Vec<Option<IpAddr>> {
    if rfc7239 {
        return headers
            .get_all(http::header::FORWARDED)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim()
                        .eq_ignore_ascii_case("for")
                        .then(|| parse_node(v.trim().trim_matches('"')))
                })
            })
            .collect();
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// `1.2.3.4`, `1.2.3.4:5678`, `[::1]`, `[::1]:5678` or `::1`.
fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')?.split(']').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let c = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            address_key("::ffff:192.0.2.1".parse().unwrap()),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ranges() {
        let r = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(r.contains("10.1.2.3".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        assert!(
            IpRange::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(
            IpRange::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("proxy.internal").is_err());
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let ranges = ["127.0.0.1".to_owned(), "10.0.0.0/8".to_owned()];
        let proxies = TrustedProxies::new(&ranges, "x-forwarded-for");
        let peer: IpAddr = "127.0.0.1".parse().unwrap();
        let stranger: IpAddr = "203.0.113.9".parse().unwrap();
        let xff = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.0.0.2")]);
        // A client that is not a proxy cannot choose its address.
        assert_eq!(proxies.client_ip(stranger, &xff), stranger);
        // Behind the proxies: the last address that is not a proxy; the spoofed first one is
        // ignored.
        assert_eq!(
            proxies.client_ip(peer, &xff),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let fwd = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https",
        )]);
        // The proxies set X-Forwarded-For: a Forwarded header is the client's own word.
        assert_eq!(proxies.client_ip(peer, &fwd), peer);
        let rfc = TrustedProxies::new(&ranges, "forwarded");
        assert_eq!(
            rfc.client_ip(peer, &fwd),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(rfc.client_ip(peer, &xff), peer);
        assert_eq!(proxies.client_ip(peer, &headers(&[])), peer);
        // Nothing trusted: headers ignored.
        assert_eq!(TrustedProxies::default().client_ip(peer, &xff), peer);
    }
}
