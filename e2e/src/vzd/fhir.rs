//! The double's owner and search side: `/owner-authenticate` with a RegService-OpenID-Token
//! (B-TOK-02: BP256R1 signature chaining to the TI roots — here the double's CA —, `exp`,
//! `aud`, `idNummer`, the certificate registered with the provider credentials),
//! `/tim-authenticate` with a Matrix OpenID token (D-AUTH-01: the domain must be in the
//! federation list; the token is checked at the domain's homeserver), and FHIR
//! `/owner/{type}` (read, search, create, update, delete; writes only by the owning
//! organisation, Endpoints one per address and deletable only when nothing refers to them) and
//! `/search/{type}` (searchset bundles with `_include`, at most 100 matches, D-SRCH-01).

// Handlers answer early with ready responses; boxing them would only add noise to a double.
#![allow(clippy::result_large_err)]

use std::{sync::Arc, time::SystemTime};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};
use sqlx::Row;
use tim_vzd_sync::fhir::{TELEMATIK_ID_SYSTEM, matrix_uri};

use super::{Inner, error, unauthorized};

/// A FHIR resource id (`[A-Za-z0-9.-]{1,64}`).
fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn routes() -> Router<Arc<Inner>> {
    Router::new()
        .route("/owner-authenticate", get(owner_authenticate))
        .route(
            "/owner-authenticate-decoupled",
            axum::routing::post(decoupled),
        )
        .route("/owner-authenticate-poll", axum::routing::post(poll))
        .route("/idp/authorize", get(idp_authorize))
        .route("/signin-gematik-idp-dienst-decoupled", get(idp_signin))
        .route("/tim-authenticate", get(tim_authenticate))
        .route("/owner/{rtype}", get(owner_search).post(owner_create))
        .route(
            "/owner/{rtype}/{id}",
            get(owner_read).put(owner_update).delete(owner_delete),
        )
        .route("/search/{rtype}", get(search))
}

const TYPES: [&str; 5] = [
    "Organization",
    "HealthcareService",
    "Endpoint",
    "Practitioner",
    "PractitionerRole",
];

fn outcome(status: StatusCode, diagnostics: &str) -> Response {
    (
        status,
        Json(json!({"resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": diagnostics}]})),
    )
        .into_response()
}

fn now_iso() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    format!("{secs}")
}

pub(super) async fn load(s: &Inner, rtype: &str, id: &str) -> Option<(String, Value)> {
    sqlx::query("SELECT owner, body FROM resources WHERE rtype = $1 AND id = $2")
        .bind(rtype)
        .bind(id)
        .fetch_optional(&s.pool)
        .await
        .unwrap()
        .map(|r| {
            (
                r.get::<String, _>(0),
                serde_json::from_str(r.get::<String, _>(1).as_str()).unwrap(),
            )
        })
}

/// (id, owner, body) of every resource of a type.
pub(super) async fn all(s: &Inner, rtype: &str) -> Vec<(String, String, Value)> {
    sqlx::query("SELECT id, owner, body FROM resources WHERE rtype = $1 ORDER BY id")
        .bind(rtype)
        .fetch_all(&s.pool)
        .await
        .unwrap()
        .iter()
        .map(|r| {
            (
                r.get::<String, _>(0),
                r.get::<String, _>(1),
                serde_json::from_str(r.get::<String, _>(2).as_str()).unwrap(),
            )
        })
        .collect()
}

async fn store(s: &Inner, rtype: &str, id: &str, owner: &str, body: &Value) {
    sqlx::query(
        "INSERT INTO resources VALUES ($1, $2, $3, $4)
         ON CONFLICT (rtype, id) DO UPDATE SET body = excluded.body",
    )
    .bind(rtype)
    .bind(id)
    .bind(owner)
    .bind(body.to_string())
    .execute(&s.pool)
    .await
    .unwrap();
}

fn ldap_meta() -> Value {
    json!({"tag": [{"system": "https://gematik.de/fhir/directory/CodeSystem/Origin", "code": "ldap"}]})
}

pub(super) async fn put_ldap_organization(
    s: &Inner,
    telematik_id: &str,
    name: &str,
    city: &str,
    active: bool,
) {
    let existing = all(s, "Organization")
        .await
        .into_iter()
        .find(|(_, _, b)| telematik_of(b) == Some(telematik_id));
    let id = existing.map_or_else(new_id, |(id, ..)| id);
    let org = json!({
        "resourceType": "Organization", "id": id, "meta": ldap_meta(),
        "identifier": [{"system": TELEMATIK_ID_SYSTEM, "value": telematik_id}],
        "active": active, "name": name,
        "address": [{"city": city, "country": "DE"}],
    });
    store(s, "Organization", &id, "", &org).await;
}

pub(super) async fn put_ldap_practitioner(
    s: &Inner,
    telematik_id: &str,
    given: &str,
    family: &str,
) -> String {
    let pid = new_id();
    let practitioner = json!({
        "resourceType": "Practitioner", "id": pid, "meta": ldap_meta(), "active": true,
        "identifier": [{"system": TELEMATIK_ID_SYSTEM, "value": telematik_id}],
        "name": [{"given": [given], "family": family, "text": format!("{given} {family}")}],
    });
    store(s, "Practitioner", &pid, "", &practitioner).await;
    let rid = new_id();
    let role = json!({
        "resourceType": "PractitionerRole", "id": rid, "meta": ldap_meta(),
        "practitioner": {"reference": format!("Practitioner/{pid}")},
    });
    store(s, "PractitionerRole", &rid, telematik_id, &role).await;
    rid
}

pub(super) async fn put_foreign_endpoint(s: &Inner, owner: &str, mxid: &str, name: &str) -> String {
    let id = new_id();
    let mut e =
        serde_json::to_value(tim_vzd_sync::fhir::Endpoint::tim(mxid, name, true, false).unwrap())
            .unwrap();
    e = stamped(e, &id, 1);
    store(s, "Endpoint", &id, owner, &e).await;
    id
}

fn telematik_of(body: &Value) -> Option<&str> {
    body["identifier"].as_array()?.iter().find_map(|i| {
        (i["system"] == TELEMATIK_ID_SYSTEM)
            .then(|| i["value"].as_str())
            .flatten()
    })
}

async fn owner_authenticate(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        // Without a token the IDP flow would start (HBA sign-in), which this double leaves out.
        return unauthorized();
    };
    let registered = s.owner_certificates.lock().unwrap().clone();
    let aud = format!(
        "http://{}/owner-authenticate",
        headers
            .get("host")
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
    );
    match tim_vzd_sync::regservice_token::verify(
        token,
        &s.ca.trust(),
        &aud,
        &registered,
        SystemTime::now(),
    ) {
        Ok(claims) => {
            let access = s.issue("owner", &claims.id_nummer, 3600);
            Json(json!({"access_token": access, "token_type": "Bearer", "expires_in": 3600}))
                .into_response()
        }
        Err(e) => error(StatusCode::UNAUTHORIZED, &e.to_string()),
    }
}

fn form(body: &[u8]) -> std::collections::HashMap<String, String> {
    serde_urlencoded::from_bytes(body).unwrap_or_default()
}

const DECOUPLED: &str = "urn:telematik:params:grant-type:decoupled";

/// Starts the backchannel sign-in of a person with an eHBA at the IDP.
async fn decoupled(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    if form(&body).get("grant_type").map(String::as_str) != Some(DECOUPLED) {
        return error(StatusCode::BAD_REQUEST, "missing or wrong grant type");
    }
    let id = new_id();
    s.auth_requests.lock().unwrap().insert(
        id.clone(),
        (
            None,
            std::time::Instant::now() + std::time::Duration::from_secs(300),
        ),
    );
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    Json(json!({
        "auth_req_id": id,
        "poll_uri": "/owner-authenticate-poll",
        "redirect_uri": format!("http://{host}/idp/authorize?auth_req_id={id}"),
        "expires_in": 300,
        "interval": 1
    }))
    .into_response()
}

#[derive(serde::Deserialize)]
struct IdpQuery {
    auth_req_id: String,
    /// The eHBA in the card reader: its holder's TelematikID.
    card: String,
}

/// The IDP: the person signs in with the card and is sent back to the directory.
async fn idp_authorize(State(s): State<Arc<Inner>>, Query(q): Query<IdpQuery>) -> Response {
    if !s.auth_requests.lock().unwrap().contains_key(&q.auth_req_id) {
        return error(StatusCode::BAD_REQUEST, "unknown authorization request");
    }
    let code = new_id();
    s.idp_codes
        .lock()
        .unwrap()
        .insert(code.clone(), (q.auth_req_id.clone(), q.card));
    (
        StatusCode::FOUND,
        [(
            "location",
            format!(
                "/signin-gematik-idp-dienst-decoupled?code={code}&state={}",
                q.auth_req_id
            ),
        )],
    )
        .into_response()
}

#[derive(serde::Deserialize)]
struct SigninQuery {
    code: String,
    state: String,
}

async fn idp_signin(State(s): State<Arc<Inner>>, Query(q): Query<SigninQuery>) -> Response {
    let Some((req, card)) = s.idp_codes.lock().unwrap().remove(&q.code) else {
        return error(StatusCode::UNAUTHORIZED, "unknown code");
    };
    if req != q.state {
        return error(StatusCode::UNAUTHORIZED, "state does not fit the code");
    }
    match s.auth_requests.lock().unwrap().get_mut(&req) {
        Some(r) => r.0 = Some(card),
        None => return error(StatusCode::UNAUTHORIZED, "authorization request ended"),
    }
    StatusCode::OK.into_response()
}

/// The owner token of a signed-in person: an ES256 JWT naming their TelematikID.
async fn poll(State(s): State<Arc<Inner>>, body: Bytes) -> Response {
    let f = form(&body);
    if f.get("grant_type").map(String::as_str) != Some(DECOUPLED) {
        return error(StatusCode::BAD_REQUEST, "missing or wrong grant type");
    }
    let id = f.get("auth_req_id").cloned().unwrap_or_default();
    let state = s.auth_requests.lock().unwrap().get(&id).cloned();
    let pending = |e: &str| (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response();
    match state {
        None => pending("access_denied"),
        Some((_, until)) if until < std::time::Instant::now() => pending("expired_token"),
        Some((None, _)) => pending("authorization_pending"),
        Some((Some(tid), _)) => {
            s.auth_requests.lock().unwrap().remove(&id);
            let exp = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 3600;
            let (_, cert, key) = s
                .signers
                .iter()
                .find(|(a, ..)| *a == tim_vzd_sync::crypto::Alg::ES256)
                .unwrap();
            let claims = json!({"sub": tid, "idNummer": tid, "exp": exp});
            let jwt = tim_vzd_sync::crypto::jws::sign(
                tim_vzd_sync::crypto::Alg::ES256,
                key,
                std::slice::from_ref(cert),
                Some("JWT"),
                claims.to_string().as_bytes(),
            )
            .unwrap();
            s.tokens.lock().unwrap().insert(
                jwt.clone(),
                super::Token {
                    kind: "owner",
                    client_id: tid,
                    expires: std::time::Instant::now() + std::time::Duration::from_secs(3600),
                },
            );
            Json(json!({"access_token": jwt, "token_type": "Bearer", "expires_in": 3600}))
                .into_response()
        }
    }
}

#[derive(serde::Deserialize)]
struct TimAuthQuery {
    #[serde(rename = "mxId")]
    mx_id: String,
}

/// D-AUTH-01: the domain must be in the federation list; its homeserver must know the token.
async fn tim_authenticate(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<TimAuthQuery>,
) -> Response {
    let Some(openid) = headers
        .get("x-matrix-openid-token")
        .and_then(|v| v.to_str().ok())
    else {
        return error(StatusCode::UNAUTHORIZED, "X-Matrix-OpenID-Token missing");
    };
    let federated: Option<i64> = sqlx::query_scalar("SELECT 1 FROM domains WHERE domain = $1")
        .bind(&q.mx_id)
        .fetch_optional(&s.pool)
        .await
        .unwrap();
    if federated.is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "domain is not in the federation list",
        );
    }
    let Some(base) = s.homeservers.lock().unwrap().get(&q.mx_id).cloned() else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "homeserver not found");
    };
    let answer = s
        .http
        .get(format!("{base}/_matrix/federation/v1/openid/userinfo"))
        .query(&[("access_token", openid)])
        .send()
        .await;
    let sub = match answer {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["sub"].as_str().map(str::to_owned)),
        Ok(_) => None,
        Err(_) => return error(StatusCode::SERVICE_UNAVAILABLE, "homeserver unreachable"),
    };
    match sub {
        Some(sub) if sub.ends_with(&format!(":{}", q.mx_id)) => {
            let token = s.issue("search", &sub, 86400);
            Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 86400}))
                .into_response()
        }
        _ => error(StatusCode::UNAUTHORIZED, "OpenID token not valid"),
    }
}

fn known_type(rtype: &str) -> Result<(), Response> {
    match TYPES.contains(&rtype) {
        true => Ok(()),
        false => Err(outcome(
            StatusCode::NOT_FOUND,
            &format!("unknown resource type {rtype}"),
        )),
    }
}

fn params(raw: Option<String>) -> Vec<(String, String)> {
    serde_urlencoded::from_str(raw.as_deref().unwrap_or_default()).unwrap_or_default()
}

fn lower(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_lowercase()
}

/// Token match `[system|]code` against codings.
fn token_matches(codings: impl Iterator<Item = Value>, wanted: &str) -> bool {
    let (system, code) = match wanted.split_once('|') {
        Some((s, c)) => (Some(s), c),
        None => (None, wanted),
    };
    codings
        .into_iter()
        .any(|c| c["code"] == code && system.is_none_or(|s| c["system"] == s))
}

fn string_matches(value: &str, wanted: &str, contains: bool) -> bool {
    let (v, w) = (value.to_lowercase(), wanted.to_lowercase());
    if contains {
        v.contains(&w)
    } else {
        v.starts_with(&w)
    }
}

fn reference_id<'a>(v: &'a Value, rtype: &str) -> Option<&'a str> {
    v["reference"]
        .as_str()?
        .strip_prefix(rtype)?
        .strip_prefix('/')
}

fn identifier_matches(body: &Value, wanted: &str) -> bool {
    let (system, value) = match wanted.split_once('|') {
        Some((s, v)) => (Some(s), v),
        None => (None, wanted),
    };
    body["identifier"].as_array().is_some_and(|ids| {
        ids.iter()
            .any(|i| i["value"] == value && system.is_none_or(|s| i["system"] == s))
    })
}

struct Index {
    orgs: Vec<(String, Value)>,
    endpoints: Vec<(String, Value)>,
    practitioners: Vec<(String, Value)>,
}

impl Index {
    async fn load(s: &Inner) -> Self {
        let pick =
            |v: Vec<(String, String, Value)>| v.into_iter().map(|(id, _, b)| (id, b)).collect();
        Self {
            orgs: pick(all(s, "Organization").await),
            endpoints: pick(all(s, "Endpoint").await),
            practitioners: pick(all(s, "Practitioner").await),
        }
    }

    fn get<'a>(list: &'a [(String, Value)], id: Option<&str>) -> Option<&'a Value> {
        let id = id?;
        list.iter().find(|(i, _)| i == id).map(|(_, b)| b)
    }
}

/// Whether `body` (of `rtype`) matches one search parameter; Err for parameters not supported.
fn matches(rtype: &str, body: &Value, name: &str, value: &str, ix: &Index) -> Result<bool, String> {
    let (param, modifier) = name
        .split_once(':')
        .map_or((name, None), |(p, m)| (p, Some(m)));
    let contains = modifier == Some("contains");
    let org = || Index::get(&ix.orgs, reference_id(&body["providedBy"], "Organization"));
    let practitioner = || {
        Index::get(
            &ix.practitioners,
            reference_id(&body["practitioner"], "Practitioner"),
        )
    };
    let endpoints = || {
        body["endpoint"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|r| Index::get(&ix.endpoints, reference_id(&r, "Endpoint")).cloned())
            .collect::<Vec<_>>()
    };
    Ok(match (rtype, param) {
        (_, "_id") => body["id"] == value,
        (_, "identifier") => identifier_matches(body, value),
        ("Endpoint", "address") => body["address"] == value,
        ("Endpoint", "name") => {
            string_matches(body["name"].as_str().unwrap_or_default(), value, contains)
        }
        ("Organization" | "HealthcareService", "name") => {
            string_matches(body["name"].as_str().unwrap_or_default(), value, contains)
        }
        ("HealthcareService", "organization") => {
            reference_id(&body["providedBy"], "Organization")
                == value.strip_prefix("Organization/").or(Some(value))
        }
        ("HealthcareService", "organization.name") => org().is_some_and(|o| {
            string_matches(o["name"].as_str().unwrap_or_default(), value, contains)
        }),
        ("HealthcareService", "organization.identifier") => {
            org().is_some_and(|o| identifier_matches(o, value))
        }
        ("HealthcareService", "organization.active") => org().is_some_and(|o| {
            o["active"].as_bool().map(|b| b.to_string()).as_deref() == Some(value)
        }),
        ("HealthcareService", "organization.address-city") => org().is_some_and(|o| {
            o["address"].as_array().is_some_and(|a| {
                a.iter().any(|a| {
                    string_matches(a["city"].as_str().unwrap_or_default(), value, contains)
                })
            })
        }),
        ("HealthcareService" | "PractitionerRole", "specialty") => token_matches(
            body["specialty"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .flat_map(|c| c["coding"].as_array().cloned().unwrap_or_default()),
            value,
        ),
        ("HealthcareService" | "PractitionerRole", "endpoint.name") => endpoints()
            .iter()
            .any(|e| string_matches(e["name"].as_str().unwrap_or_default(), value, contains)),
        ("HealthcareService" | "PractitionerRole", "endpoint.address") => {
            endpoints().iter().any(|e| e["address"] == value)
        }
        ("PractitionerRole", "practitioner") => {
            reference_id(&body["practitioner"], "Practitioner")
                == value.strip_prefix("Practitioner/").or(Some(value))
        }
        ("PractitionerRole", "practitioner.name") => practitioner().is_some_and(|p| {
            p["name"].as_array().is_some_and(|n| {
                n.iter().any(|n| {
                    string_matches(&lower(&n["text"]), value, contains)
                        || string_matches(&lower(&n["family"]), value, contains)
                })
            })
        }),
        ("PractitionerRole", "practitioner.identifier") => {
            practitioner().is_some_and(|p| identifier_matches(p, value))
        }
        ("PractitionerRole", "practitioner.active") => practitioner().is_some_and(|p| {
            p["active"].as_bool().map(|b| b.to_string()).as_deref() == Some(value)
        }),
        _ => {
            return Err(format!(
                "search parameter {name} is not supported for {rtype}"
            ));
        }
    })
}

/// A searchset: matches (at most `_count`, at most 100) and what `_include` asks for.
async fn search_bundle(s: &Inner, rtype: &str, raw: Option<String>) -> Response {
    if let Err(r) = known_type(rtype) {
        return r;
    }
    let ix = Index::load(s).await;
    let mut count = 100usize;
    let mut includes = vec![];
    let mut filters = vec![];
    for (k, v) in params(raw) {
        match k.as_str() {
            "_count" => match v.parse::<usize>() {
                Ok(n) => count = n.min(100),
                Err(_) => return outcome(StatusCode::BAD_REQUEST, "_count is not a number"),
            },
            "_include" => includes.push(v),
            "_tag" | "_format" => {}
            _ => filters.push((k, v)),
        }
    }
    let mut hits = vec![];
    for (_, _, body) in all(s, rtype).await {
        let mut ok = true;
        for (k, v) in &filters {
            match matches(rtype, &body, k, v, &ix) {
                Ok(m) => ok &= m,
                Err(e) => return outcome(StatusCode::BAD_REQUEST, &e),
            }
        }
        if ok {
            hits.push(body);
        }
    }
    let total = hits.len();
    hits.truncate(count);
    let mut entries: Vec<Value> = hits
        .iter()
        .map(|b| json!({"resource": b, "search": {"mode": "match"}}))
        .collect();
    let mut seen = std::collections::HashSet::new();
    for inc in &includes {
        for hit in &hits {
            let refs: Vec<(&str, Value)> = match inc.as_str() {
                "HealthcareService:endpoint" | "PractitionerRole:endpoint" => hit["endpoint"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .map(|r| ("Endpoint", r))
                    .collect(),
                "HealthcareService:organization" => {
                    vec![("Organization", hit["providedBy"].clone())]
                }
                "PractitionerRole:practitioner" => {
                    vec![("Practitioner", hit["practitioner"].clone())]
                }
                other => {
                    return outcome(
                        StatusCode::BAD_REQUEST,
                        &format!("_include {other} is not supported"),
                    );
                }
            };
            for (ty, r) in refs {
                let list = match ty {
                    "Endpoint" => &ix.endpoints,
                    "Organization" => &ix.orgs,
                    _ => &ix.practitioners,
                };
                if let Some(b) = Index::get(list, reference_id(&r, ty))
                    && seen.insert(format!("{ty}/{}", b["id"]))
                {
                    entries.push(json!({"resource": b, "search": {"mode": "include"}}));
                }
            }
        }
    }
    Json(json!({"resourceType": "Bundle", "type": "searchset", "total": total, "entry": entries}))
        .into_response()
}

async fn search(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(rtype): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if s.bearer(&headers, "search").is_none() {
        return unauthorized();
    }
    search_bundle(&s, &rtype, raw).await
}

async fn owner_search(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(rtype): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    if s.bearer(&headers, "owner").is_none() {
        return unauthorized();
    }
    search_bundle(&s, &rtype, raw).await
}

async fn owner_read(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
) -> Response {
    if s.bearer(&headers, "owner").is_none() {
        return unauthorized();
    }
    if let Err(r) = known_type(&rtype) {
        return r;
    }
    match load(&s, &rtype, &id).await {
        Some((_, body)) => Json(body).into_response(),
        None => outcome(StatusCode::NOT_FOUND, "resource not found"),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct LocalizationQuery {
    mxid: Option<String>,
}

/// `whereIs`: in which part of the directory an MXID (`matrix:u/…`) has an Endpoint.
pub(super) async fn localization(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<LocalizationQuery>,
) -> Response {
    if s.bearer(&headers, "provider").is_none() {
        return unauthorized();
    }
    let Some(address) = q.mxid.filter(|m| m.starts_with("matrix:u/")) else {
        return error(
            StatusCode::BAD_REQUEST,
            "mxid must be matrix:u/<localpart>:<domain>",
        );
    };
    let Some((id, ..)) = all(&s, "Endpoint")
        .await
        .into_iter()
        .find(|(_, _, b)| b["address"] == address.as_str())
    else {
        return error(StatusCode::NOT_FOUND, "MXID not found in FHIR VZD");
    };
    let reference = format!("Endpoint/{id}");
    let mut parts = vec![];
    for ty in ["HealthcareService", "PractitionerRole"] {
        let used = all(&s, ty).await.into_iter().any(|(_, _, b)| {
            b["endpoint"]
                .as_array()
                .is_some_and(|e| e.iter().any(|r| r["reference"] == reference.as_str()))
        });
        parts.push(used);
    }
    let answer = match (parts[0], parts[1]) {
        (true, true) => "orgPract",
        (true, false) => "org",
        (false, true) => "pract",
        (false, false) => "none",
    };
    Json(answer).into_response()
}

/// Every `endpoint` reference of `body` names an Endpoint.
async fn endpoints_exist(s: &Inner, body: &Value) -> Result<(), Response> {
    for r in body["endpoint"].as_array().cloned().unwrap_or_default() {
        let id = reference_id(&r, "Endpoint").unwrap_or_default();
        if load(s, "Endpoint", id).await.is_none() {
            return Err(outcome(
                StatusCode::UNPROCESSABLE_ENTITY,
                "endpoint reference to nothing",
            ));
        }
    }
    Ok(())
}

/// What a resource written by an owner must satisfy.
async fn check_owned(
    s: &Inner,
    rtype: &str,
    body: &Value,
    org: &str,
    id: Option<&str>,
) -> Result<(), Response> {
    if body["resourceType"] != rtype {
        return Err(outcome(
            StatusCode::BAD_REQUEST,
            "resourceType does not fit the URL",
        ));
    }
    let origin_owner = body["meta"]["tag"].as_array().is_some_and(|t| {
        t.iter().any(|t| {
            t["system"] == "https://gematik.de/fhir/directory/CodeSystem/Origin"
                && t["code"] == "owner"
        })
    });
    if !origin_owner && rtype != "PractitionerRole" {
        return Err(outcome(
            StatusCode::UNPROCESSABLE_ENTITY,
            "meta.tag Origin must be owner",
        ));
    }
    match rtype {
        "Endpoint" => {
            let tim = body["connectionType"]["system"]
                == "https://gematik.de/fhir/directory/CodeSystem/EndpointDirectoryConnectionType"
                && body["connectionType"]["code"] == "tim";
            let chat = body["payloadType"].as_array().is_some_and(|p| {
                p.iter().any(|p| {
                    p["coding"]
                        .as_array()
                        .is_some_and(|c| c.iter().any(|c| c["code"] == "tim-chat"))
                })
            });
            let address = body["address"].as_str().unwrap_or_default();
            let mxid_ok = tim_vzd_sync::fhir::mxid_of_address(address)
                .and_then(|m| matrix_uri(&m))
                .is_some_and(|u| u == address);
            let status_ok = matches!(body["status"].as_str(), Some("active" | "off"));
            if !(tim && chat && mxid_ok && status_ok && body["name"].is_string()) {
                return Err(outcome(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "not a valid TI-M Endpoint (endpoint-directory-Strict)",
                ));
            }
            let taken = all(s, "Endpoint")
                .await
                .into_iter()
                .any(|(eid, _, b)| b["address"] == address && Some(eid.as_str()) != id);
            if taken {
                return Err(outcome(
                    StatusCode::CONFLICT,
                    "an Endpoint with this address exists",
                ));
            }
        }
        "HealthcareService" => {
            let org_id = reference_id(&body["providedBy"], "Organization").unwrap_or_default();
            let providing = load(s, "Organization", org_id).await;
            if providing.as_ref().and_then(|(_, o)| telematik_of(o)) != Some(org) {
                return Err(outcome(
                    StatusCode::FORBIDDEN,
                    "providedBy is not the token's organisation",
                ));
            }
            endpoints_exist(s, body).await?;
        }
        "PractitionerRole" => {
            let Some(id) = id else {
                return Err(outcome(
                    StatusCode::FORBIDDEN,
                    "PractitionerRoles come from the LDAP directory",
                ));
            };
            let (_, old) = load(s, "PractitionerRole", id).await.unwrap_or_default();
            if old["practitioner"] != body["practitioner"] {
                return Err(outcome(
                    StatusCode::FORBIDDEN,
                    "the practitioner of a role cannot change",
                ));
            }
            let person = load(
                s,
                "Practitioner",
                reference_id(&body["practitioner"], "Practitioner").unwrap_or_default(),
            )
            .await;
            if person.as_ref().and_then(|(_, p)| telematik_of(p)) != Some(org) {
                return Err(outcome(
                    StatusCode::FORBIDDEN,
                    "not the token's practitioner",
                ));
            }
            endpoints_exist(s, body).await?;
        }
        _ => {
            return Err(outcome(
                StatusCode::FORBIDDEN,
                "owners write Endpoints, HealthcareServices and their PractitionerRoles here",
            ));
        }
    }
    Ok(())
}

fn stamped(mut body: Value, id: &str, version: u64) -> Value {
    body["id"] = id.into();
    body["meta"]["versionId"] = version.to_string().into();
    body["meta"]["lastUpdated"] = now_iso().into();
    body
}

async fn owner_create(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(rtype): Path<String>,
    body: Bytes,
) -> Response {
    let Some(org) = s.bearer(&headers, "owner") else {
        return unauthorized();
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return outcome(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if let Err(r) = check_owned(&s, &rtype, &body, &org, None).await {
        return r;
    }
    let id = new_id();
    let body = stamped(body, &id, 1);
    store(&s, &rtype, &id, &org, &body).await;
    s.changed(
        format!("POST {rtype}"),
        (StatusCode::CREATED, Json(body)).into_response(),
    )
}

async fn owner_update(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let Some(org) = s.bearer(&headers, "owner") else {
        return unauthorized();
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return outcome(StatusCode::BAD_REQUEST, "body is not JSON");
    };
    if body["id"] != id.as_str() {
        return outcome(StatusCode::BAD_REQUEST, "id in body and URL differ");
    }
    let Some((owner, old)) = load(&s, &rtype, &id).await else {
        return outcome(StatusCode::NOT_FOUND, "resource not found");
    };
    if owner != org {
        return outcome(StatusCode::FORBIDDEN, "resource belongs to another owner");
    }
    if let Err(r) = check_owned(&s, &rtype, &body, &org, Some(&id)).await {
        return r;
    }
    let version = old["meta"]["versionId"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        + 1;
    let body = stamped(body, &id, version);
    store(&s, &rtype, &id, &org, &body).await;
    s.changed(format!("PUT {rtype}/{id}"), Json(body).into_response())
}

async fn owner_delete(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path((rtype, id)): Path<(String, String)>,
) -> Response {
    let Some(org) = s.bearer(&headers, "owner") else {
        return unauthorized();
    };
    let Some((owner, _)) = load(&s, &rtype, &id).await else {
        return outcome(StatusCode::NOT_FOUND, "resource not found");
    };
    if owner != org {
        return outcome(StatusCode::FORBIDDEN, "resource belongs to another owner");
    }
    if rtype == "Endpoint" {
        let reference = format!("Endpoint/{id}");
        for ty in ["HealthcareService", "PractitionerRole"] {
            let used = all(&s, ty).await.into_iter().any(|(_, _, b)| {
                b["endpoint"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|r| r["reference"] == reference.as_str()))
            });
            if used {
                return outcome(StatusCode::CONFLICT, "the Endpoint is still referred to");
            }
        }
    }
    sqlx::query("DELETE FROM resources WHERE rtype = $1 AND id = $2")
        .bind(&rtype)
        .bind(&id)
        .execute(&s.pool)
        .await
        .unwrap();
    s.changed(
        format!("DELETE {rtype}/{id}"),
        StatusCode::NO_CONTENT.into_response(),
    )
}
