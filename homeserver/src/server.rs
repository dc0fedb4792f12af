//! The listener and the axum router: Matrix APIs, `.well-known/matrix/server`, `/health`,
//! `/metrics`, the operator API, and Matrix errors for unknown paths and methods.

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::{cors::CorsLayer, trace::TraceLayer};

use crate::{api, error::Error, tenants::Tenants};

pub fn router(
    tenants: Tenants,
    operator_token: String,
    metrics: Option<PrometheusHandle>,
) -> Router {
    let max = tenants.config().max_request_bytes;
    let matrix = api::federation::router(api::client::router(Router::new()))
        .route("/.well-known/matrix/server", get(well_known_server))
        .route("/health", get(|| async { "OK" }))
        .route(
            "/metrics",
            get(move || {
                let m = metrics.clone();
                async move { m.map(|m| m.render()).unwrap_or_default() }
            }),
        )
        .merge(api::operator::router(operator_token))
        .merge(api::admin::router())
        .fallback(fallback)
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed.into_response() });
    matrix
        .with_state(tenants)
        // Bodies are read with our own limit (413 M_TOO_LARGE); axum's must not cut in first.
        .layer(DefaultBodyLimit::max(max.saturating_add(1)))
        .layer(CorsLayer::permissive())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &http::Request<_>| {
                // Path only: query strings may carry access tokens.
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
            }),
        )
}

async fn fallback(method: Method) -> Response {
    if method == Method::OPTIONS {
        return StatusCode::NO_CONTENT.into_response();
    }
    Error::Unrecognized.into_response()
}

async fn well_known_server(
    State(tenants): State<Tenants>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Error> {
    let hs = api::tenant_for(&tenants, &headers)?;
    let port = hs.config.listen.port();
    Ok(Json(
        serde_json::json!({ "m.server": format!("{}:{port}", hs.server_name) }),
    ))
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

/// The operator token: configured, or made once and kept in `{data_dir}/operator.token`.
pub fn operator_token(config: &crate::config::Config) -> std::io::Result<String> {
    if let Some(t) = &config.operator_token {
        return Ok(t.0.clone());
    }
    let path = config.data_dir.join("operator.token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        return Ok(t.trim().to_owned());
    }
    std::fs::create_dir_all(&config.data_dir)?;
    let token = crate::accounts::random_string(40);
    std::fs::write(&path, &token)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(token)
}
