//! Outbound HTTP to other homeservers, injected as a `Transport`: the real one discovers the
//! server (`Resolver`) and speaks HTTPS with rustls (web PKI roots plus the configured CA
//! bundle); tests may put their own in.

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use ruma::ServerName;

use super::resolver::{Lookup, Resolver};
use crate::{clock::Clock, config::FederationConfig};

/// Largest answer read from another server for an API request (a large room's state with
/// its auth chain stays below it).
pub const MAX_RESPONSE_BYTES: usize = 32 * 1024 * 1024;
/// Largest media answer: a 110 MiB attachment (the TI-M limit) with its multipart framing.
pub const MAX_MEDIA_BYTES: usize = 120 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{destination} could not be reached: {reason}")]
    Unreachable { destination: String, reason: String },
    #[error("{0} sent an answer larger than allowed")]
    TooLarge(String),
}

#[async_trait]
pub trait Transport: Send + Sync {
    /// Sends `request` (its URI's path and query are used) to `destination`; an answer of
    /// more than `max_bytes` is refused.
    async fn send(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        max_bytes: usize,
    ) -> Result<http::Response<Bytes>, TransportError>;
}

pub struct HttpsTransport {
    resolver: Resolver,
    http: reqwest::Client,
}

impl HttpsTransport {
    pub fn new(config: &FederationConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let http = http_client(config, reqwest::redirect::Policy::none())?;
        let lookup = Arc::new(NetworkLookup {
            // `.well-known` may redirect (spec); API requests may not.
            http: http_client(config, reqwest::redirect::Policy::limited(5))?,
            dns: hickory_resolver::TokioResolver::builder_tokio()
                .map(|b| b.build())
                .ok(),
        });
        Ok(Self {
            resolver: Resolver::new(config.resolve.clone(), lookup, clock),
            http,
        })
    }
}

/// The HTTPS client for federation: rustls, the web PKI roots and the configured CA bundle,
/// the configured address overrides; `redirects`: none for API requests (a redirect would
/// send us, and our signature, where the other server chooses), a few for `.well-known`.
fn http_client(
    config: &FederationConfig,
    redirects: reqwest::redirect::Policy,
) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .timeout(Duration::from_secs(config.request_timeout_secs))
        .connect_timeout(Duration::from_secs(config.request_timeout_secs.min(10)))
        .redirect(redirects)
        .user_agent(concat!("tim-homeserver/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &config.ca_certificates {
        let pem = std::fs::read(path)
            .map_err(|e| anyhow::anyhow!("CA certificates {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("CA certificates {}: {e}", path.display()))?;
        builder = builder.tls_certs_merge(certs);
    }
    for (server, addr) in &config.resolve {
        let host = <&ServerName>::try_from(server.as_str())
            .map_err(|e| anyhow::anyhow!("federation.resolve: {server}: {e}"))?
            .host();
        builder = builder.resolve(host, *addr);
    }
    Ok(builder.build()?)
}

#[async_trait]
impl Transport for HttpsTransport {
    async fn send(
        &self,
        destination: &ServerName,
        request: http::Request<Vec<u8>>,
        max_bytes: usize,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            destination: destination.to_string(),
            reason,
        };
        let target = self.resolver.resolve(destination).await;
        let (parts, body) = request.into_parts();
        let path = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/");
        let mut headers = parts.headers;
        headers.insert(
            http::header::HOST,
            http::HeaderValue::from_str(&target.host_header)
                .map_err(|e| unreachable(e.to_string()))?,
        );
        let response = self
            .http
            .request(parts.method, format!("{}{path}", target.base_url()))
            .headers(headers)
            .body(body)
            .send()
            .await
            .map_err(|e| unreachable(error_chain(&e)))?;
        let status = response.status();
        let headers = response.headers().clone();
        if response
            .content_length()
            .is_some_and(|n| n as usize > max_bytes)
        {
            return Err(TransportError::TooLarge(destination.to_string()));
        }
        let mut body = Vec::new();
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| unreachable(error_chain(&e)))?;
            if body.len() + chunk.len() > max_bytes {
                return Err(TransportError::TooLarge(destination.to_string()));
            }
            body.extend_from_slice(&chunk);
        }
        let mut out = http::Response::new(Bytes::from(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// An error with its causes (reqwest's own message hides the TLS or connect reason).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `.well-known` over HTTPS and SRV records from the system's DNS servers.
struct NetworkLookup {
    http: reqwest::Client,
    dns: Option<hickory_resolver::TokioResolver>,
}

#[async_trait]
impl Lookup for NetworkLookup {
    async fn well_known(&self, host: &str) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct WellKnown {
            #[serde(rename = "m.server")]
            server: String,
        }
        let response = self
            .http
            .get(format!("https://{host}/.well-known/matrix/server"))
            .send()
            .await
            .ok()?;
        if !response.status().is_success()
            || response.content_length().is_some_and(|n| n > 64 * 1024)
        {
            return None;
        }
        let body = response.bytes().await.ok()?;
        serde_json::from_slice::<WellKnown>(&body)
            .ok()
            .map(|w| w.server)
    }

    async fn srv(&self, name: &str) -> Vec<(String, u16)> {
        let Some(dns) = &self.dns else {
            return vec![];
        };
        let Ok(found) = dns.srv_lookup(format!("{name}.")).await else {
            return vec![];
        };
        let mut records: Vec<_> = found
            .iter()
            .map(|r| {
                (
                    r.priority(),
                    std::cmp::Reverse(r.weight()),
                    r.target().to_utf8(),
                    r.port(),
                )
            })
            .collect();
        records.sort();
        records.into_iter().map(|(_, _, t, p)| (t, p)).collect()
    }
}
