//! The listeners and their routers. The public listener serves the Matrix APIs,
//! `.well-known/matrix/server`, `/health` and the per-tenant admin API; the internal one the
//! operator API (all tenants) and `/metrics` (every organisation's traffic). Both answer
//! unknown paths and methods with Matrix errors, turn a panicking handler into a 500, and cut
//! off clients that are slow to send headers or bodies.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, MatchedPath, State},
    http::{Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
    service::TowerToHyperService,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceExt;
use tower_http::{catch_panic::CatchPanicLayer, cors::CorsLayer, trace::TraceLayer};

use crate::{
    api,
    config::HttpConfig,
    error::Error,
    net::{Conn, TrustedProxies},
    tenants::Tenants,
};

/// The public listener's router: what clients, other homeservers and the org-admin backend use.
pub fn router(tenants: Tenants) -> Router {
    let max = tenants.config().max_request_bytes;
    let app = api::federation::router(api::client::router(Router::new()))
        .route("/.well-known/matrix/server", get(well_known_server))
        .route("/health", get(|| async { "OK" }))
        .merge(api::admin::router())
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed.into_response() })
        .with_state(tenants)
        // Bodies are read with our own limit (413 M_TOO_LARGE); axum's must not cut in first.
        .layer(DefaultBodyLimit::max(max.saturating_add(1)))
        .layer(CorsLayer::permissive());
    guarded(app)
}

/// The internal listener's router: the operator API and the metrics.
pub fn internal_router(
    tenants: Tenants,
    operator_token: String,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let app = api::operator::router(operator_token)
        .route("/health", get(|| async { "OK" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.map(|m| m.render()).unwrap_or_default() }
            }),
        )
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed.into_response() })
        .with_state(tenants);
    guarded(app)
}

/// Layers of every listener: request spans and the panic catcher.
fn guarded(app: Router) -> Router {
    app.layer(
        TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
            // The route template, never the path: paths carry registration tokens, aliases,
            // media and file names, query strings access tokens.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "unmatched".into());
            tracing::info_span!("request", method = %req.method(), route = %route)
        }),
    )
    .layer(CatchPanicLayer::custom(panicked))
}

static PANICS: AtomicU64 = AtomicU64::new(0);

/// Handler panics caught since the process started (a bug each; the test suite insists on 0).
pub fn panics_caught() -> u64 {
    PANICS.load(Ordering::SeqCst)
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic message went to stderr through the panic hook; it may quote request data, so
    // the log line says only that it happened.
    PANICS.fetch_add(1, Ordering::SeqCst);
    metrics::counter!("tim_http_panics_total").increment(1);
    tracing::error!("a request handler panicked; answered 500");
    Error::Internal("handler panicked".into()).into_response()
}

async fn fallback(method: Method) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    Error::Unrecognized.into_response()
}

async fn well_known_server(
    State(tenants): State<Tenants>,
    request: http::Request<axum::body::Body>,
) -> Result<Json<serde_json::Value>, Error> {
    let hs = api::tenant_of(&tenants, &request)?;
    let port = hs.config.listen.port();
    Ok(Json(
        serde_json::json!({ "m.server": format!("{}:{port}", hs.server_name) }),
    ))
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets open requests finish for up
/// to 10 s. Each request carries its connection's `Conn`. Clients get `header_read_timeout`
/// to send a request's headers (also the limit for a silent or idle keep-alive connection); at
/// most `max_connections` connections are open, `max_connections_per_ip` per peer address
/// (IPv6: per /64; trusted proxies exempt).
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &HttpConfig,
    trusted: TrustedProxies,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, app, limits, trusted, None, shutdown).await
}

/// `serve` behind TLS (the federation listener): the handshake must finish within the header
/// timeout, so a silent socket cannot hold a connection slot either.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &HttpConfig,
    trusted: TrustedProxies,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    serve_with(listener, app, limits, trusted, Some(acceptor), shutdown).await
}

/// The TLS listener's configuration from PEM files: the certificate chain and its key.
pub fn tls_config(
    certificate: &std::path::Path,
    private_key: &std::path::Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
    let chain = CertificateDer::pem_file_iter(certificate)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("TLS certificate {}: {e}", certificate.display()))?;
    if chain.is_empty() {
        anyhow::bail!(
            "TLS certificate {} holds no certificate",
            certificate.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(private_key)
        .map_err(|e| anyhow::anyhow!("TLS private key {}: {e}", private_key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn serve_with(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: &HttpConfig,
    trusted: TrustedProxies,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // HTTP/1.1 only: clients reach us in plain HTTP/1.1 (TLS and HTTP/2 end at the reverse
    // proxy). hyper arms the header timeout as soon as it waits for a request, so silent
    // sockets and idle keep-alive connections are closed too — an HTTP/2 connection without
    // streams, or a half-sent HTTP/2 preface, would have no such limit.
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(limits.header_read_timeout_secs));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_ip = Arc::new(PerIp {
        open: Mutex::default(),
        max: limits.max_connections_per_ip,
    });
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(local) = stream.local_addr() else {
            continue;
        };
        let ip = crate::net::address_key(peer.ip());
        let counted = !trusted.trusts(peer.ip());
        if counted && !per_ip.enter(ip) {
            metrics::counter!("tim_http_connections_refused_total").increment(1);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let conn = Conn { local, peer };
        let service =
            app.clone()
                .map_request(move |mut req: http::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(conn);
                    req
                });
        let service = TowerToHyperService::new(service);
        let per_ip = per_ip.clone();
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let handshake_timeout = Duration::from_secs(limits.header_read_timeout_secs);
        tokio::spawn(async move {
            match tls {
                None => {
                    let connection = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(connection).await;
                }
                Some(acceptor) => {
                    if let Ok(Ok(stream)) =
                        tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await
                    {
                        let connection = builder.serve_connection(TokioIo::new(stream), service);
                        let _ = watcher.watch(connection).await;
                    }
                }
            }
            if counted {
                per_ip.leave(ip);
            }
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(Duration::from_secs(10)) => {
            tracing::info!("requests still open after 10 s; stopping anyway");
        }
    }
    Ok(())
}

/// Open connections per peer address (IPv6: per /64, what one client can get).
struct PerIp {
    open: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

impl PerIp {
    fn enter(&self, ip: IpAddr) -> bool {
        let mut open = self.open.lock().expect("per-ip lock");
        let n = open.entry(ip).or_default();
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: IpAddr) {
        let mut open = self.open.lock().expect("per-ip lock");
        if let Some(n) = open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&ip);
            }
        }
    }
}

/// The operator token: configured, or made once and kept in `{data_dir}/operator.token`,
/// created readable by the owner only (written to a private temporary file, fsynced, renamed).
/// An empty or short token is never used.
pub fn operator_token(config: &crate::config::Config) -> std::io::Result<String> {
    if let Some(t) = &config.operator_token {
        return Ok(t.0.clone());
    }
    let path = config.data_dir.join("operator.token");
    if let Ok(t) = std::fs::read_to_string(&path)
        && t.trim().len() >= MIN_OPERATOR_TOKEN
    {
        return Ok(t.trim().to_owned());
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let token = crate::accounts::random_string(40);
    let tmp = config.data_dir.join("operator.token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp)?;
    std::io::Write::write_all(&mut file, token.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(&config.data_dir)?.sync_all()?;
    Ok(token)
}

/// The shortest operator token accepted (configured or found in the token file).
pub const MIN_OPERATOR_TOKEN: usize = 16;

#[cfg(test)]
mod tests {
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_is_counted() {
        let before = super::panics_caught();
        let app = super::guarded(axum::Router::new().route(
            "/boom",
            axum::routing::get(|| async {
                if super::panics_caught() < u64::MAX {
                    panic!("a bug");
                }
                "unreachable"
            }),
        ));
        let request = http::Request::get("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), 500);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["errcode"], "M_UNKNOWN");
        assert_eq!(super::panics_caught(), before + 1);
    }

    #[test]
    fn per_ip_limit() {
        let p = super::PerIp {
            open: Default::default(),
            max: 2,
        };
        let ip = "192.0.2.1".parse().unwrap();
        assert!(p.enter(ip) && p.enter(ip));
        assert!(!p.enter(ip));
        p.leave(ip);
        assert!(p.enter(ip));
    }

    #[test]
    fn the_operator_token_file_is_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::config::Config {
            data_dir: dir.path().to_owned(),
            ..Default::default()
        };
        // A file left empty (a crash while it was made) is not a token.
        std::fs::write(dir.path().join("operator.token"), "").unwrap();
        let token = super::operator_token(&config).unwrap();
        assert_eq!(token.len(), 40);
        assert_eq!(super::operator_token(&config).unwrap(), token);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("operator.token"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
