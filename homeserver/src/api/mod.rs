//! The HTTP edge. `route::<Request>(handler)` registers a handler for every path of a Ruma
//! endpoint; the wrapper finds the tenant by Host, authenticates as the endpoint's metadata
//! demands, rate-limits, parses the typed request and serialises the typed response.

pub mod admin;
pub mod client;
pub mod error;
pub mod federation;
pub mod operator;

use std::{any::TypeId, future::Future, net::SocketAddr, sync::Arc};

use axum::{
    Router,
    body::Body,
    extract::{ConnectInfo, FromRequestParts, RawPathParams, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::BytesMut;
use http::{HeaderMap, Request};
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponseExt,
    auth_scheme::{AccessToken, AccessTokenOptional},
    path_builder::PathBuilder,
};

use crate::{
    accounts::{SeenFrom, Session},
    error::Error,
    homeserver::Homeserver,
    tenants::Tenants,
};

/// What a handler gets besides its request.
pub struct Ctx {
    pub hs: Arc<Homeserver>,
    pub session: Option<Session>,
    pub ip: Option<SocketAddr>,
}

impl Ctx {
    /// The session of an endpoint that requires authentication.
    pub fn session(&self) -> &Session {
        self.session.as_ref().expect("authenticated endpoint")
    }
}

pub fn tenant_for(tenants: &Tenants, headers: &HeaderMap) -> Result<Arc<Homeserver>, Error> {
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    tenants
        .by_host(host)
        .ok_or_else(|| Error::not_found("no homeserver is served for this host"))
}

pub(crate) fn bearer(headers: &HeaderMap, query: Option<&str>) -> Option<String> {
    if let Some(v) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        return v.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    // The deprecated query parameter, still used by some clients.
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token="))
        .map(str::to_owned)
}

/// Registers `handler` for all paths and the method of Ruma endpoint `R`.
pub fn route<R, F, Fut>(router: Router<Tenants>, handler: F) -> Router<Tenants>
where
    R: IncomingRequest + Send + 'static,
    R::OutgoingResponse: Send,
    F: Fn(Ctx, R) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse, Error>> + Send + 'static,
{
    route_with(router, false, handler)
}

/// Like `route`, but requires an access token even where the spec leaves the endpoint open
/// (TI-M A-ROOM-13: profile look-ups need authentication).
pub fn route_authenticated<R, F, Fut>(router: Router<Tenants>, handler: F) -> Router<Tenants>
where
    R: IncomingRequest + Send + 'static,
    R::OutgoingResponse: Send,
    F: Fn(Ctx, R) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse, Error>> + Send + 'static,
{
    route_with(router, true, handler)
}

fn route_with<R, F, Fut>(router: Router<Tenants>, force_auth: bool, handler: F) -> Router<Tenants>
where
    R: IncomingRequest + Send + 'static,
    R::OutgoingResponse: Send,
    F: Fn(Ctx, R) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<R::OutgoingResponse, Error>> + Send + 'static,
{
    let serve: Serve = Arc::new(move |hs, req, how| {
        let handler = handler.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let (ctx, params) = admit::<R>(hs, &mut parts, how).await?;
            let limit = ctx.hs.config.max_request_bytes;
            let bytes = axum::body::to_bytes(body, limit)
                .await
                .map_err(|_| Error::TooLarge)?;
            let request = parse::<R>(parts, &bytes, &params)?;
            let response = handler(ctx, request).await?;
            let http = response
                .try_into_http_response::<BytesMut>()
                .map_err(Error::internal)?;
            Ok(http.map(|b| Body::from(b.freeze())))
        })
    });
    register::<R>(router, force_auth, serve)
}

/// Registers a handler that gets the request body as a stream and makes its own response
/// (media up- and downloads). `R` parses the path, query and headers (its body is left empty)
/// and decides authentication and rate limiting, as for `route`.
pub fn route_streaming<R, F, Fut>(router: Router<Tenants>, handler: F) -> Router<Tenants>
where
    R: IncomingRequest + Send + 'static,
    F: Fn(Ctx, R, HeaderMap, Body) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, Error>> + Send + 'static,
{
    let serve: Serve = Arc::new(move |hs, req, how| {
        let handler = handler.clone();
        Box::pin(async move {
            let (mut parts, body) = req.into_parts();
            let (ctx, params) = admit::<R>(hs, &mut parts, how).await?;
            let headers = parts.headers.clone();
            let request = parse::<R>(parts, &[], &params)?;
            handler(ctx, request, headers, body).await
        })
    });
    register::<R>(router, false, serve)
}

type Serve = Arc<
    dyn Fn(
            Arc<Homeserver>,
            Request<Body>,
            How,
        ) -> futures::future::BoxFuture<'static, Result<Response, Error>>
        + Send
        + Sync,
>;

/// Registers `serve` for all paths and the method of Ruma endpoint `R`.
fn register<R: IncomingRequest + 'static>(
    router: Router<Tenants>,
    force_auth: bool,
    serve: Serve,
) -> Router<Tenants> {
    let filter = MethodFilter::try_from(R::METHOD).expect("standard method");
    let mut router = router;
    let mut paths: Vec<(String, bool)> = Vec::new();
    for path in R::PATH_BUILDER.all_paths() {
        paths.push((path.to_owned(), false));
        // An empty state key leaves the last segment empty: `/state/m.room.name/` or `/state/m.room.name`.
        if let Some(prefix) = path.strip_suffix("/{state_key}") {
            paths.push((format!("{prefix}/"), true));
            paths.push((prefix.to_owned(), true));
        }
    }
    let metric_path: &'static str = R::PATH_BUILDER.all_paths().last().unwrap_or("unknown");
    for (path, empty_last) in paths {
        let serve = serve.clone();
        let how = How {
            empty_last,
            force_auth,
            metric_path,
        };
        router = router.route(
            &path,
            on(
                filter,
                move |State(tenants): State<Tenants>, req: Request<Body>| {
                    let serve = serve.clone();
                    async move { measured(tenants, req, serve, how).await }
                },
            ),
        );
    }
    router
}

/// How a route serves its endpoint.
#[derive(Clone, Copy)]
struct How {
    /// The path ends in an empty state key.
    empty_last: bool,
    /// Authenticate although the endpoint's metadata does not ask for it.
    force_auth: bool,
    metric_path: &'static str,
}

/// Finds the tenant, serves, and records the request's duration per tenant and endpoint.
async fn measured(tenants: Tenants, req: Request<Body>, serve: Serve, how: How) -> Response {
    let hs = match tenant_for(&tenants, req.headers()) {
        Ok(hs) => hs,
        Err(e) => return e.into_response(),
    };
    let started = std::time::Instant::now();
    let server_name = hs.server_name.to_string();
    let response = match serve(hs, req, how).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let labels = [
        ("server_name", server_name),
        ("endpoint", how.metric_path.to_owned()),
        ("status", response.status().as_u16().to_string()),
    ];
    metrics::histogram!("tim_http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Authenticates and rate-limits as endpoint `R` demands; the handler's context and the path
/// parameters.
async fn admit<R: IncomingRequest + 'static>(
    hs: Arc<Homeserver>,
    parts: &mut http::request::Parts,
    how: How,
) -> Result<(Ctx, Vec<String>), Error> {
    let ip = ConnectInfo::<SocketAddr>::from_request_parts(parts, &())
        .await
        .ok()
        .map(|c| c.0);
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| Error::invalid_param(e.to_string()))?;
    let mut params: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
    if how.empty_last {
        params.push(String::new());
    }

    let auth = TypeId::of::<R::Authentication>();
    let required = how.force_auth || auth == TypeId::of::<AccessToken>();
    let token = bearer(&parts.headers, parts.uri.query());
    let session = match token {
        Some(t) if required || auth == TypeId::of::<AccessTokenOptional>() => {
            let ip = ip.map(|a| a.ip().to_string());
            let user_agent = parts
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok());
            let seen = SeenFrom {
                ip: ip.as_deref(),
                user_agent,
            };
            Some(hs.accounts.authenticate(&t, seen).await?)
        }
        None if required => return Err(Error::MissingToken),
        _ => None,
    };
    if R::RATE_LIMITED {
        let key = match (&session, ip) {
            (Some(s), _) => s.user_id.to_string(),
            (None, Some(ip)) => ip.ip().to_string(),
            (None, None) => String::new(),
        };
        hs.rate_limiter
            .check(&key)
            .map_err(|retry_after_ms| Error::LimitExceeded { retry_after_ms })?;
    }
    Ok((Ctx { hs, session, ip }, params))
}

/// A JSON body of a hand-parsed request: 400 `M_NOT_JSON` when it is not JSON, `M_BAD_JSON`
/// when it has the wrong shape.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| {
        if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
            Error::NotJson("the request body is not valid JSON".into())
        } else {
            Error::bad_json(e.to_string())
        }
    })
}

/// Parses the typed request, telling broken JSON, wrong JSON and wrong parameters apart.
fn parse<R: IncomingRequest>(
    parts: http::request::Parts,
    bytes: &[u8],
    params: &[String],
) -> Result<R, Error> {
    let refs: Vec<&str> = params.iter().map(String::as_str).collect();
    let http_req = Request::from_parts(parts, bytes);
    R::try_from_http_request(http_req, &refs).map_err(|e| {
        if !bytes.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
            Error::NotJson("the request body is not valid JSON".into())
        } else if bytes.is_empty() {
            // Without a body, only the path or query string can be wrong.
            Error::invalid_param(e.to_string())
        } else {
            Error::bad_json(e.to_string())
        }
    })
}
