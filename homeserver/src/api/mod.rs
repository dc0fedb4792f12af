//! The HTTP edge. `route::<Request>(handler)` registers a handler for every path of a Ruma
//! endpoint; the wrapper finds the tenant by Host, authenticates as the endpoint's metadata
//! demands, rate-limits, parses the typed request and serialises the typed response.

pub mod admin;
pub mod client;
pub mod error;
pub mod federation;
pub mod operator;

use std::{any::TypeId, future::Future, net::IpAddr, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{FromRequestParts, RawPathParams, State},
    response::{IntoResponse, Response},
    routing::{MethodFilter, on},
};
use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Request};
use ruma::api::{
    IncomingRequest, IncomingRequestExt, OutgoingResponseExt,
    auth_scheme::{AccessToken, AccessTokenOptional},
    federation::authentication::ServerSignatures,
    path_builder::PathBuilder,
};

use crate::{
    accounts::{SeenFrom, Session},
    error::Error,
    homeserver::Homeserver,
    net::Conn,
    tenants::Tenants,
};

/// What a handler gets besides its request.
pub struct Ctx {
    pub hs: Arc<Homeserver>,
    pub session: Option<Session>,
    /// The client's address (behind a trusted proxy: the address it forwarded).
    pub ip: Option<IpAddr>,
    /// The server that signed a federation request (`X-Matrix`, verified).
    pub origin: Option<ruma::OwnedServerName>,
}

impl Ctx {
    /// The caller's session; 401 `M_MISSING_TOKEN` when the request carried no token (the
    /// spec leaves some endpoints' authentication optional, e.g. password change).
    pub fn session(&self) -> Result<&Session, Error> {
        self.session.as_ref().ok_or(Error::MissingToken)
    }

    /// The server that signed the request; 401 when it was not signed (federation endpoints
    /// are always authenticated, so a handler reaching this without one is a routing bug).
    pub fn origin(&self) -> Result<&ruma::ServerName, Error> {
        self.origin
            .as_deref()
            .ok_or_else(|| Error::Unauthorized("the request carries no server signature".into()))
    }
}

/// The tenant a request names: the authority of an absolute request target, else the Host
/// header; 404 `M_UNRECOGNIZED` when it names none. The address the client dialled stands for
/// the default tenant only for clients connected directly (not through a trusted proxy, where
/// it is the proxy's choice, not the client's).
pub fn tenant_for(
    tenants: &Tenants,
    uri: &http::Uri,
    headers: &HeaderMap,
    conn: Option<&Conn>,
) -> Result<Arc<Homeserver>, Error> {
    let host = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let dialled = conn
        .filter(|c| !tenants.trusted_proxies().trusts(c.peer.ip()))
        .map(|c| c.local.ip());
    tenants.by_host(host, dialled).ok_or(Error::UnknownHost)
}

/// The tenant of a request (target, Host and the connection it came in on).
pub fn tenant_of<B>(tenants: &Tenants, req: &Request<B>) -> Result<Arc<Homeserver>, Error> {
    tenant_for(
        tenants,
        req.uri(),
        req.headers(),
        req.extensions().get::<Conn>(),
    )
}

/// The client's address: the peer, or what a trusted proxy forwarded.
pub fn client_ip(tenants: &Tenants, headers: &HeaderMap, conn: Option<&Conn>) -> Option<IpAddr> {
    let conn = conn?;
    Some(tenants.trusted_proxies().client_ip(conn.peer.ip(), headers))
}

/// Reads a whole request body: at most `limit` bytes (413 `M_TOO_LARGE`), within `timeout`
/// (408: a client that sends slowly must not hold a request open).
pub async fn read_body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, Error> {
    match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(Error::RequestTimeout),
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
                Error::TooLarge
            } else {
                Error::Unknown("the request body could not be read".into())
            })
        }
    }
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
    route_guarded(router, Guard::default(), handler)
}

/// What a route demands beyond its endpoint's metadata.
#[derive(Clone, Copy, Default)]
pub struct Guard {
    /// Authenticate although the endpoint's metadata does not ask for it.
    auth: bool,
    /// Rate-limit although the endpoint's metadata does not ask for it.
    rate_limit: bool,
    /// Looks at (and may complete) the raw body before it is parsed.
    body_hook: Option<BodyHook>,
}

impl Guard {
    /// An access token even where the spec leaves the endpoint open (TI-M A-ROOM-13:
    /// profile look-ups need authentication).
    pub fn authenticated() -> Self {
        Self {
            auth: true,
            ..Self::default()
        }
    }

    /// Rate-limited although the spec does not mark the endpoint so: endpoints that check a
    /// password or do much work per request.
    pub fn rate_limited() -> Self {
        Self {
            rate_limit: true,
            ..Self::default()
        }
    }

    /// The body goes through `hook` before Ruma parses it: to refuse what Ruma's parser is not
    /// safe on, or to fill in what stock clients leave out and the spec's types require.
    pub fn body_hook(hook: BodyHook) -> Self {
        Self {
            body_hook: Some(hook),
            ..Self::default()
        }
    }
}

pub type BodyHook = fn(Bytes) -> Result<Bytes, Error>;

/// Like `route`, with more demands than the endpoint's metadata makes.
pub fn route_guarded<R, F, Fut>(
    router: Router<Tenants>,
    guard: Guard,
    handler: F,
) -> Router<Tenants>
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
            let (mut ctx, params) = admit::<R>(hs, &mut parts, how).await?;
            let config = &ctx.hs.config;
            let bytes = read_body(
                body,
                config.max_request_bytes,
                Duration::from_secs(config.http.body_read_timeout_secs),
            )
            .await?;
            refuse_nul(&bytes)?;
            let bytes = match how.guard.body_hook {
                Some(hook) => hook(bytes)?,
                None => bytes,
            };
            if TypeId::of::<R::Authentication>() == TypeId::of::<ServerSignatures>() {
                ctx.origin = Some(ctx.hs.federation.authenticate(&parts, &bytes).await?);
            }
            let request = parse::<R>(parts, &bytes, &params)?;
            let response = handler(ctx, request).await?;
            let http = response
                .try_into_http_response::<BytesMut>()
                .map_err(Error::internal)?;
            Ok(http.map(|b| Body::from(b.freeze())))
        })
    });
    register::<R>(router, guard, serve)
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
    register::<R>(router, Guard::default(), serve)
}

type Serve = Arc<
    dyn Fn(
            Admitted,
            Request<Body>,
            How,
        ) -> futures::future::BoxFuture<'static, Result<Response, Error>>
        + Send
        + Sync,
>;

/// Registers `serve` for all paths and the method of Ruma endpoint `R`.
fn register<R: IncomingRequest + 'static>(
    router: Router<Tenants>,
    guard: Guard,
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
    {
        let mut table = ROUTES.lock().expect("route table lock");
        for (path, _) in &paths {
            table.insert((R::METHOD.to_string(), path.clone()));
        }
    }
    for (path, empty_last) in paths {
        let serve = serve.clone();
        let how = How {
            empty_last,
            guard,
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

/// Every (method, path template) registered through `route*`, for tests that walk the API.
static ROUTES: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// The Matrix endpoints of the routers built so far: (method, path template).
pub fn registered_routes() -> Vec<(String, String)> {
    ROUTES
        .lock()
        .expect("route table lock")
        .iter()
        .cloned()
        .collect()
}

/// How a route serves its endpoint.
#[derive(Clone, Copy)]
struct How {
    /// The path ends in an empty state key.
    empty_last: bool,
    guard: Guard,
    metric_path: &'static str,
}

/// Finds the tenant, serves, and records the request's duration per tenant and endpoint.
async fn measured(tenants: Tenants, req: Request<Body>, serve: Serve, how: How) -> Response {
    let hs = match tenant_of(&tenants, &req) {
        Ok(hs) => hs,
        Err(e) => return e.into_response(),
    };
    let started = std::time::Instant::now();
    let server_name = hs.server_name.to_string();
    let ip = client_ip(&tenants, req.headers(), req.extensions().get::<Conn>());
    let response = match serve(Admitted { hs, ip }, req, how).await {
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

/// A request's tenant and client address, found before it is served.
struct Admitted {
    hs: Arc<Homeserver>,
    ip: Option<IpAddr>,
}

/// Authenticates and rate-limits as endpoint `R` demands; the handler's context and the path
/// parameters.
async fn admit<R: IncomingRequest + 'static>(
    Admitted { hs, ip }: Admitted,
    parts: &mut http::request::Parts,
    how: How,
) -> Result<(Ctx, Vec<String>), Error> {
    let params = RawPathParams::from_request_parts(parts, &())
        .await
        .map_err(|e| Error::invalid_param(e.to_string()))?;
    let mut params: Vec<String> = params.iter().map(|(_, v)| v.to_owned()).collect();
    if params.iter().any(|p| p.contains('\0')) || query_has_nul(parts.uri.query()) {
        return Err(Error::invalid_param(
            "parameters may not contain NUL characters",
        ));
    }
    if how.empty_last {
        params.push(String::new());
    }

    let auth = TypeId::of::<R::Authentication>();
    let required = how.guard.auth || auth == TypeId::of::<AccessToken>();
    let token = bearer(&parts.headers, parts.uri.query());
    let session = match token {
        Some(t) if required || auth == TypeId::of::<AccessTokenOptional>() => {
            let ip = ip.map(|a| a.to_string());
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
    if R::RATE_LIMITED || how.guard.rate_limit {
        let key = match (&session, ip) {
            (Some(s), _) => s.user_id.to_string(),
            (None, Some(ip)) => crate::net::address_key(ip).to_string(),
            (None, None) => String::new(),
        };
        hs.rate_limiter
            .check(&key)
            .map_err(|retry_after_ms| Error::LimitExceeded { retry_after_ms })?;
    }
    Ok((
        Ctx {
            hs,
            session,
            ip,
            origin: None,
        },
        params,
    ))
}

/// Refuses a value outside a closed set the spec defines: Ruma keeps unknown strings in a
/// hidden `_Custom` variant instead of failing, so each handler names the values it accepts.
pub(crate) fn one_of(field: &str, value: &str, known: &[&str]) -> Result<(), Error> {
    if known.contains(&value) {
        return Ok(());
    }
    Err(Error::invalid_param(format!(
        "{field} must be one of {}",
        known.join(", ")
    )))
}

/// Whether a query string carries a NUL character (`%00`).
pub(crate) fn query_has_nul(query: Option<&str>) -> bool {
    query.is_some_and(|q| q.as_bytes().windows(3).any(|w| w == b"%00"))
}

/// Refuses JSON with NUL characters in strings (`\u0000`): no client needs them, and
/// PostgreSQL cannot store them in text, so they would fail deep in the store instead of here.
pub(crate) fn refuse_nul(json: &[u8]) -> Result<(), Error> {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                return Err(Error::bad_json("strings may not contain NUL characters"));
            }
            // Skip the escaped character, so `\\u0000` (a backslash, then text) passes.
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// A JSON body of a hand-parsed request: 400 `M_NOT_JSON` when it is not JSON, `M_BAD_JSON`
/// when it has the wrong shape.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    refuse_nul(bytes)?;
    serde_json::from_slice(bytes).map_err(|e| {
        if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
            Error::NotJson("the request body is not valid JSON".into())
        } else {
            Error::bad_json(e.to_string())
        }
    })
}

/// Parses the typed request, telling broken JSON, wrong JSON and wrong parameters apart. An
/// empty body counts as `{}`: stock clients send none where every field is optional
/// (matrix-nio's `POST /join/{roomId}`), and the spec's empty object means the same.
fn parse<R: IncomingRequest>(
    parts: http::request::Parts,
    bytes: &[u8],
    params: &[String],
) -> Result<R, Error> {
    // Ruma's parsers are not all panic-free on hostile input (its `LoginInfo` indexes a
    // missing `type`, which the login route checks first); a parser that panics anyway has
    // refused the request.
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse_typed::<R>(parts, bytes, params)
    }))
    .unwrap_or_else(|_| {
        tracing::warn!("the request parser panicked; answered 400");
        Err(Error::bad_json(
            "the request body does not have the required shape",
        ))
    })
}

fn parse_typed<R: IncomingRequest>(
    parts: http::request::Parts,
    bytes: &[u8],
    params: &[String],
) -> Result<R, Error> {
    let refs: Vec<&str> = params.iter().map(String::as_str).collect();
    let empty = bytes.iter().all(u8::is_ascii_whitespace);
    let body: &[u8] = if empty { b"{}" } else { bytes };
    R::try_from_http_request(Request::from_parts(parts, body), &refs).map_err(|e| {
        use ruma::api::error::{DeserializationError as D, FromHttpRequestError as F};
        match e {
            F::Deserialization(D::Json(e)) if empty => {
                Error::NotJson(format!("this endpoint needs a JSON body: {e}"))
            }
            F::Deserialization(D::Json(e)) => {
                if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_err() {
                    Error::NotJson("the request body is not valid JSON".into())
                } else {
                    Error::bad_json(e.to_string())
                }
            }
            F::MethodMismatch { .. } => Error::MethodNotAllowed,
            e => Error::invalid_param(e.to_string()),
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn nul_characters_are_found_only_where_they_are() {
        assert!(super::refuse_nul(br#"{"a":"x\u0000y"}"#).is_err());
        assert!(super::refuse_nul(br#"{"a":"x\\u0000y"}"#).is_ok());
        assert!(super::refuse_nul(br#"{"a":"\u00001"}"#).is_err());
        assert!(super::refuse_nul(br#"{"a":"\u0001"}"#).is_ok());
        assert!(super::query_has_nul(Some("a=%00")));
        assert!(!super::query_has_nul(Some("a=%2000")));
    }

    /// Fuzz target: the request extractor (our guards, then Ruma's parsers, unguarded by
    /// `catch_unwind`) on arbitrary query strings, path parameters and bodies, for endpoints of
    /// every shape (body, query, path parameters, user-interactive auth). It must classify, not
    /// panic. `cargo test` runs it on random inputs (`BOLERO_RANDOM_ITERATIONS`, default
    /// 1000); `cargo bolero test api::tests::fuzz_request_extractor` fuzzes with libFuzzer.
    #[test]
    fn fuzz_request_extractor() {
        use ruma::api::client::{
            account::register,
            backup::create_backup_version,
            device::delete_devices,
            keys::{get_keys, upload_keys},
            membership::get_member_events,
            message::send_message_event,
            presence::set_presence,
            room::create_room,
            session::login,
            sync::sync_events,
            user_directory::search_users,
        };

        fn extract<R: ruma::api::IncomingRequest>(
            method: http::Method,
            path: &str,
            query: &str,
            params: &[String],
            body: &[u8],
            hook: Option<super::BodyHook>,
        ) {
            const QUERY: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
                .remove(b'=')
                .remove(b'&')
                .remove(b'_')
                .remove(b'-')
                .remove(b'.');
            let query = percent_encoding::utf8_percent_encode(query, QUERY);
            let Ok(request) = http::Request::builder()
                .method(method)
                .uri(format!("{path}?{query}"))
                .body(())
            else {
                return;
            };
            let (parts, ()) = request.into_parts();
            if super::refuse_nul(body).is_err() {
                return;
            }
            let body = match hook.map(|h| h(bytes::Bytes::copy_from_slice(body))) {
                None => bytes::Bytes::copy_from_slice(body),
                Some(Ok(body)) => body,
                Some(Err(_)) => return,
            };
            let _ = super::parse_typed::<R>(parts, &body, params);
        }

        bolero::check!()
            .with_type::<(String, String, Vec<u8>)>()
            .for_each(|(query, param, body)| {
                use http::Method;
                let one = std::slice::from_ref(param);
                let send = vec![param.clone(), "m.room.message".to_owned(), "t".to_owned()];
                // The raw bytes, and the same bytes as a string in a JSON object.
                let wrapped = serde_json::to_vec(&serde_json::json!({
                    "preset": String::from_utf8_lossy(body),
                    "type": String::from_utf8_lossy(body),
                    "auth": {"type": "m.login.password", "session": String::from_utf8_lossy(body)},
                }))
                .unwrap();
                for body in [body.as_slice(), wrapped.as_slice()] {
                    let p = "/_matrix/client/v3/x";
                    extract::<create_room::v3::Request>(Method::POST, p, query, &[], body, None);
                    extract::<login::v3::Request>(
                        Method::POST,
                        p,
                        query,
                        &[],
                        body,
                        Some(crate::api::client::session::login_has_type),
                    );
                    extract::<get_keys::v3::Request>(
                        Method::POST,
                        p,
                        query,
                        &[],
                        body,
                        Some(crate::api::client::keys::default_device_keys),
                    );
                    extract::<register::v3::Request>(Method::POST, p, query, &[], body, None);
                    extract::<send_message_event::v3::Request>(
                        Method::PUT,
                        p,
                        query,
                        &send,
                        body,
                        None,
                    );
                    extract::<sync_events::v3::Request>(Method::GET, p, query, &[], body, None);
                    extract::<upload_keys::v3::Request>(Method::POST, p, query, &[], body, None);
                    extract::<set_presence::v3::Request>(Method::PUT, p, query, one, body, None);
                    extract::<get_member_events::v3::Request>(
                        Method::GET,
                        p,
                        query,
                        one,
                        body,
                        None,
                    );
                    extract::<create_backup_version::v3::Request>(
                        Method::POST,
                        p,
                        query,
                        &[],
                        body,
                        None,
                    );
                    extract::<search_users::v3::Request>(Method::POST, p, query, &[], body, None);
                    extract::<delete_devices::v3::Request>(Method::POST, p, query, &[], body, None);
                }
            });
    }
}
