//! The internal HTTP API (never exposed to the internet): `I_internVerification` for our
//! homeservers (B-FL-03), the domain management for the registration service (B-PROV-*),
//! `/health` and `/metrics`. Everything under `/_tim/` takes the internal bearer token.

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    extract::{Path, Query, Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, put},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    VzdSync, domains,
    domains::EntryError,
    federation_sync::Handout,
    provider::Domain,
    reconcile::now_ms,
    services::{self, ServiceSpec},
    store::{EntryRow, Kind},
};

/// An error answer: `{errcode, error}` with its status.
pub struct ApiError {
    status: StatusCode,
    errcode: &'static str,
    error: String,
}

impl ApiError {
    pub fn new(status: StatusCode, errcode: &'static str, error: impl Into<String>) -> Self {
        Self {
            status,
            errcode,
            error: error.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({"errcode": self.errcode, "error": self.error})),
        )
            .into_response()
    }
}

impl From<EntryError> for ApiError {
    fn from(e: EntryError) -> Self {
        match e {
            EntryError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", m),
            EntryError::NotFound => {
                ApiError::new(StatusCode::NOT_FOUND, "TIM_NOT_FOUND", "not known")
            }
            EntryError::Store(e) => {
                tracing::error!(error = %e, "store error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "TIM_UNAVAILABLE",
                    "store unavailable, try again",
                )
            }
        }
    }
}

impl From<crate::directory_error::DirectoryError> for ApiError {
    fn from(e: crate::directory_error::DirectoryError) -> Self {
        ApiError::new(StatusCode::BAD_GATEWAY, "TIM_DIRECTORY", e.to_string())
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub fn router(sync: Arc<VzdSync>) -> Router {
    let internal = Router::new()
        .route("/_tim/internal/v1/federation-list", get(federation_list))
        .route("/_tim/vzd/v1/domains", get(list_domains))
        .route(
            "/_tim/vzd/v1/domains/{domain}",
            get(get_domain).put(put_domain).delete(delete_domain),
        )
        .route(
            "/_tim/vzd/v1/organizations/{telematik_id}",
            put(put_organization),
        )
        .route(
            "/_tim/vzd/v1/organizations/{telematik_id}/services",
            get(list_services),
        )
        .route(
            "/_tim/vzd/v1/organizations/{telematik_id}/services/{id}",
            get(get_service).put(put_service).delete(delete_service),
        )
        .route(
            "/_tim/vzd/v1/practitioners/{mxid}",
            put(bind_practitioner).delete(unbind_practitioner),
        )
        .route("/_tim/vzd/v1/federation-check", get(federation_check))
        .route("/_tim/vzd/v1/localization", get(localization))
        .route_layer(middleware::from_fn_with_state(sync.clone(), authenticate));
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(internal)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "TIM_UNRECOGNIZED",
                "unknown endpoint",
            )
        })
        .with_state(sync)
}

/// The directory search for messenger clients (its own, public listener).
pub fn search_router(sync: Arc<VzdSync>) -> Router {
    Router::new()
        .route("/_tim/directory/v1/search", get(search))
        .route(
            "/_tim/directory/v1/practitioner/sessions",
            axum::routing::post(start_practitioner_session),
        )
        .route(
            "/_tim/directory/v1/practitioner/sessions/{id}",
            get(practitioner_session),
        )
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "TIM_UNRECOGNIZED",
                "unknown endpoint",
            )
        })
        .layer(tower_http::cors::CorsLayer::permissive())
        .with_state(sync)
}

/// `GET /_tim/directory/v1/search?mxId=<the user's homeserver domain>&name=…&organization=…
/// &specialty=…&city=…&telematikID=…&limit=…` with header `X-Matrix-OpenID-Token`.
async fn search(
    State(sync): State<Arc<VzdSync>>,
    headers: axum::http::HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    use crate::search::SearchError;
    let Query(pairs) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", e.body_text()))?;
    let openid = headers
        .get("x-matrix-openid-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "TIM_MISSING_TOKEN",
                "X-Matrix-OpenID-Token is required",
            )
        })?;
    let mut domain = None;
    let mut rest = serde_json::Map::new();
    for (k, v) in pairs {
        match k.as_str() {
            "mxId" => domain = Some(v),
            "limit" => {
                let n: u64 = v.parse().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "TIM_INVALID",
                        "limit is not a number",
                    )
                })?;
                rest.insert(k, n.into());
            }
            _ => {
                rest.insert(k, v.into());
            }
        }
    }
    let domain = domain.ok_or_else(|| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "TIM_INVALID",
            "mxId (the homeserver's domain) is required",
        )
    })?;
    let criteria: crate::search::Criteria = serde_json::from_value(rest.into())
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", e.to_string()))?;
    match sync.search.search(openid, &domain, &criteria).await {
        Ok(hits) => Ok(Json(serde_json::json!({ "results": hits }))),
        Err(SearchError::Invalid(m)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", m))
        }
        Err(e @ SearchError::Unauthorized) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "TIM_UNKNOWN_TOKEN",
            e.to_string(),
        )),
        Err(e @ SearchError::NotFederated(_)) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "TIM_NOT_FEDERATED",
            e.to_string(),
        )),
        Err(SearchError::Directory(e)) => Err(e.into()),
    }
}

fn openid_header(headers: &axum::http::HeaderMap) -> ApiResult<&str> {
    headers
        .get("x-matrix-openid-token")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "TIM_MISSING_TOKEN",
                "X-Matrix-OpenID-Token is required",
            )
        })
}

/// Starts an eHBA session: body `{mxId, action: "publish", name, hideFromInsured}` or
/// `{mxId, action: "withdraw"}`; answers the IDP address to open and the session id.
async fn start_practitioner_session(
    State(sync): State<Arc<VzdSync>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<crate::practitioner::Started>)> {
    use crate::practitioner::PractitionerError;
    let openid = openid_header(&headers)?;
    let mut value: serde_json::Value = parse(&body)?;
    let domain = value
        .as_object_mut()
        .and_then(|o| o.remove("mxId"))
        .and_then(|d| d.as_str().map(str::to_owned))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "TIM_INVALID",
                "mxId (the homeserver's domain) is required",
            )
        })?;
    let action = serde_json::from_value(value)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", e.to_string()))?;
    match sync.practitioners.start(openid, &domain, action).await {
        Ok(started) => Ok((StatusCode::CREATED, Json(started))),
        Err(PractitionerError::Invalid(m)) => {
            Err(ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", m))
        }
        Err(e @ PractitionerError::Unauthorized) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "TIM_UNKNOWN_TOKEN",
            e.to_string(),
        )),
        Err(PractitionerError::Directory(e)) => Err(e.into()),
    }
}

#[derive(Deserialize)]
struct SessionQuery {
    /// Wait up to this long for the session to end (at most 30 s).
    #[serde(default)]
    wait_ms: u64,
}

async fn practitioner_session(
    State(sync): State<Arc<VzdSync>>,
    Path(id): Path<String>,
    query: Result<Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<crate::practitioner::Status>> {
    let Query(q) =
        query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TIM_INVALID", e.body_text()))?;
    let wait = std::time::Duration::from_millis(q.wait_ms.min(30_000));
    sync.practitioners
        .status(&id, wait)
        .await
        .map(Json)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "TIM_NOT_FOUND",
                "no such session (they end after the sign-in)",
            )
        })
}

/// Constant-time comparison of the token's hash with the configured token's hash.
async fn authenticate(State(sync): State<Arc<VzdSync>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Sha256::digest(t.trim().as_bytes()));
    match given {
        Some(h) if openssl::memcmp::eq(&h, &sync.internal_token_hash) => next.run(request).await,
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "TIM_UNKNOWN_TOKEN",
            "token not accepted",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "TIM_MISSING_TOKEN",
            "bearer token required",
        )
        .into_response(),
    }
}

async fn health(State(sync): State<Arc<VzdSync>>) -> Response {
    let status = sync.federation.status();
    let ok = matches!(
        sync.federation.handout(None, SystemTime::now()),
        Handout::List { .. }
    );
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(serde_json::json!({"ok": ok, "federation_list": status})),
    )
        .into_response()
}

async fn metrics(State(sync): State<Arc<VzdSync>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        sync.metrics.render(sync.federation.age_secs()),
    )
        .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    version: Option<i64>,
    /// A homeserver met a domain not on its list: fetch from the directory first (A-FED-10).
    #[serde(default)]
    refresh: bool,
}

#[derive(Serialize)]
struct ListAnswer<'a> {
    version: i64,
    /// The federation list exactly as the directory signed it (the homeserver verifies it).
    jws: &'a str,
    /// When the directory last confirmed this list (ms since the epoch).
    checked_at_ms: u64,
}

fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `I_internVerification`: the version held in, 304 when it is current, else the signed list;
/// 503 when there is no list the directory confirmed within the last 72 h (fail closed).
async fn federation_list(
    State(sync): State<Arc<VzdSync>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Response> {
    if q.refresh {
        sync.federation
            .refresh_soon(std::time::Duration::from_secs(60))
            .await;
    }
    match sync.federation.handout(q.version, SystemTime::now()) {
        Handout::Current {
            version,
            checked_at,
        } => Ok((
            StatusCode::NOT_MODIFIED,
            [
                ("x-tim-federation-list-version", version.to_string()),
                ("x-tim-checked-at-ms", epoch_ms(checked_at).to_string()),
            ],
        )
            .into_response()),
        Handout::List { list, checked_at } => Ok(Json(ListAnswer {
            version: list.version(),
            jws: &list.jws,
            checked_at_ms: epoch_ms(checked_at),
        })
        .into_response()),
        Handout::Outdated { reason } => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TIM_FEDERATION_LIST_OUTDATED",
            reason,
        )),
    }
}

/// An entry as the API shows it: what is configured and how far the directory has taken it.
#[derive(Serialize)]
struct EntryView {
    #[serde(flatten)]
    body: serde_json::Value,
    /// `present` or `absent`: what should be in the directory.
    wanted: &'static str,
    /// The directory holds what is wanted.
    synced: bool,
    attempts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_error: Option<String>,
}

impl From<EntryRow> for EntryView {
    fn from(r: EntryRow) -> Self {
        let mut body = r.body.clone();
        if r.kind == Kind::Service {
            body["id"] = r.key.clone().into();
            body["telematikID"] = r.owner.clone().into();
        }
        Self {
            synced: !r.pending(),
            wanted: if r.wanted { "present" } else { "absent" },
            body,
            attempts: r.attempts,
            last_error: r.last_error,
        }
    }
}

async fn list_domains(State(sync): State<Arc<VzdSync>>) -> ApiResult<Json<serde_json::Value>> {
    let rows = sync
        .reconciler
        .store
        .entries(Kind::Domain, None)
        .await
        .map_err(EntryError::from)?;
    let views: Vec<EntryView> = rows.into_iter().map(EntryView::from).collect();
    Ok(Json(serde_json::json!({ "domains": views })))
}

async fn get_domain(
    State(sync): State<Arc<VzdSync>>,
    Path(domain): Path<String>,
) -> ApiResult<Json<EntryView>> {
    let row = sync
        .reconciler
        .store
        .entry(Kind::Domain, &domain)
        .await
        .map_err(EntryError::from)?;
    row.map(|r| Json(r.into()))
        .ok_or(EntryError::NotFound.into())
}

/// The body of `PUT /domains/{domain}` (the domain comes from the path).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DomainBody {
    #[serde(rename = "telematikID")]
    telematik_id: String,
    #[serde(rename = "isInsurance", default)]
    is_insurance: bool,
    #[serde(default)]
    ik: Vec<String>,
    #[serde(rename = "redirectDomains", default)]
    redirect_domains: Vec<String>,
}

/// Parses a JSON body with a clear 400 (not axum's plain-text rejection).
fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "TIM_BAD_JSON", e.to_string()))
}

async fn put_domain(
    State(sync): State<Arc<VzdSync>>,
    Path(domain): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<EntryView>)> {
    let b: DomainBody = parse(&body)?;
    let domain = Domain {
        domain,
        telematik_id: b.telematik_id,
        is_insurance: b.is_insurance,
        ik: b.ik,
        tim_anbieter: None,
        redirect_domains: b.redirect_domains,
    };
    let row = domains::put(sync.reconciler.store.as_ref(), domain).await?;
    sync.reconciler.wake();
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

async fn delete_domain(
    State(sync): State<Arc<VzdSync>>,
    Path(domain): Path<String>,
) -> ApiResult<(StatusCode, Json<EntryView>)> {
    let row = domains::remove(sync.reconciler.store.as_ref(), &domain).await?;
    sync.reconciler.wake();
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrganizationBody {
    #[serde(rename = "professionOID")]
    profession_oid: String,
}

/// Registers an organisation whose entries we manage (what its RegService token will name).
async fn put_organization(
    State(sync): State<Arc<VzdSync>>,
    Path(telematik_id): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let b: OrganizationBody = parse(&body)?;
    let oid_ok = !b.profession_oid.is_empty()
        && b.profession_oid
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()));
    if telematik_id.trim().is_empty() || !oid_ok {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "TIM_INVALID",
            "telematikID and a dotted professionOID are required",
        ));
    }
    sync.reconciler
        .store
        .put_organization(&telematik_id, &b.profession_oid, now_ms())
        .await
        .map_err(EntryError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PractitionerBody {
    #[serde(rename = "telematikID")]
    telematik_id: String,
}

/// The org admin binds a doctor's Matrix ID (on one of our domains) to their eHBA's TelematikID.
async fn bind_practitioner(
    State(sync): State<Arc<VzdSync>>,
    Path(mxid): Path<String>,
    body: axum::body::Bytes,
) -> ApiResult<StatusCode> {
    let b: PractitionerBody = parse(&body)?;
    let store = sync.reconciler.store.as_ref();
    let domain = mxid
        .strip_prefix('@')
        .and_then(|m| m.split_once(':'))
        .map(|(_, d)| d);
    let ours = match domain {
        Some(d) => store
            .entry(Kind::Domain, d)
            .await
            .map_err(EntryError::from)?
            .is_some_and(|e| e.wanted),
        None => false,
    };
    if !ours || b.telematik_id.trim().is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "TIM_INVALID",
            "a Matrix ID on one of our domains and a telematikID are required",
        ));
    }
    store
        .bind_practitioner(&mxid, Some(b.telematik_id.trim()), now_ms())
        .await
        .map_err(EntryError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn unbind_practitioner(
    State(sync): State<Arc<VzdSync>>,
    Path(mxid): Path<String>,
) -> ApiResult<StatusCode> {
    match sync
        .reconciler
        .store
        .bind_practitioner(&mxid, None, now_ms())
        .await
        .map_err(EntryError::from)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(EntryError::NotFound.into()),
    }
}

async fn list_services(
    State(sync): State<Arc<VzdSync>>,
    Path(telematik_id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let rows = sync
        .reconciler
        .store
        .entries(Kind::Service, Some(&telematik_id))
        .await
        .map_err(EntryError::from)?;
    let views: Vec<EntryView> = rows.into_iter().map(EntryView::from).collect();
    Ok(Json(serde_json::json!({ "services": views })))
}

async fn get_service(
    State(sync): State<Arc<VzdSync>>,
    Path((telematik_id, id)): Path<(String, String)>,
) -> ApiResult<Json<EntryView>> {
    let row = sync
        .reconciler
        .store
        .entry(Kind::Service, &id)
        .await
        .map_err(EntryError::from)?;
    row.filter(|r| r.owner == telematik_id)
        .map(|r| Json(r.into()))
        .ok_or(EntryError::NotFound.into())
}

async fn put_service(
    State(sync): State<Arc<VzdSync>>,
    Path((telematik_id, id)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> ApiResult<(StatusCode, Json<EntryView>)> {
    let spec: ServiceSpec = parse(&body)?;
    let row = services::put(sync.reconciler.store.as_ref(), &telematik_id, &id, &spec).await?;
    sync.reconciler.wake();
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

async fn delete_service(
    State(sync): State<Arc<VzdSync>>,
    Path((telematik_id, id)): Path<(String, String)>,
) -> ApiResult<(StatusCode, Json<EntryView>)> {
    let row = services::remove(sync.reconciler.store.as_ref(), &telematik_id, &id).await?;
    sync.reconciler.wake();
    Ok((StatusCode::ACCEPTED, Json(row.into())))
}

async fn federation_check(State(sync): State<Arc<VzdSync>>) -> ApiResult<Json<serde_json::Value>> {
    let inactive = sync.provider.federation_check().await?;
    Ok(Json(
        serde_json::json!({ "inactiveOrganizationDomains": inactive }),
    ))
}

#[derive(Deserialize)]
struct LocalizationQuery {
    mxid: String,
}

async fn localization(
    State(sync): State<Arc<VzdSync>>,
    Query(q): Query<LocalizationQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    if crate::fhir::matrix_uri(&q.mxid).is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "TIM_INVALID",
            "mxid is not a Matrix ID (@localpart:domain)",
        ));
    }
    let part = sync.provider.localization(&q.mxid).await?;
    Ok(Json(
        serde_json::json!({ "mxid": q.mxid, "localization": part }),
    ))
}
