//! A local double of the gematik VZD-FHIR-Directory, speaking the documented paths, status
//! codes and bodies of `I_VZD_TI_Provider_Authenticate_Service`, `I_VZD_TIM_Provider_Services`
//! 1.4.0 and the signed federation list (`FederationList.json`, JWS with `x5c`), backed by a
//! SQLite database, with a PKI of its own (root CA, sub-CA, list signers on brainpoolP256r1
//! and P-256).
//!
//! - Provider token flow (D-AUTH-03): `POST /auth/realms/TI-Provider/protocol/openid-connect/token`
//!   (client credentials, HTTP Basic) → OAuth token (300 s) → `GET /ti-provider-authenticate`
//!   → provider token (86400 s).
//! - `/tim-provider-services`: `GET /`, `POST|GET /federation`, `PUT|DELETE
//!   /federation/{domain}` (only the provider's own domains, 403 otherwise), `GET
//!   /federationCheck`, `GET /FederationList/federationList.jws?version=&sigAlg=` (200 with the
//!   list signed by the asked algorithm's key, 204 when not newer). Domains are accepted only
//!   for active organisations (400), with the IK rules of B-PROV-03 (400, duplicates 409).
//! - Owner and search side (`fhir.rs`): `/owner-authenticate` (RegService-OpenID-Token),
//!   `/tim-authenticate` (Matrix OpenID token, checked at the homeserver's
//!   `/_matrix/federation/v1/openid/userinfo`), FHIR `/owner/{type}` and `/search/{type}`.
//! - Scriptable for tests: stop and resume (the port stays), a list whose payload is tampered
//!   with after signing, an answer lost after the change was made, a log of the changes made.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post, put},
};
use base64::Engine;
use openssl::{
    pkey::{PKey, Private},
    x509::X509,
};
use serde::Deserialize;
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool, sqlite::SqliteConnectOptions};
use tim_vzd_sync::crypto::{Alg, jws, testca::TestCa};

mod fhir;

/// The subject common name of the double's list-signing certificate for `alg`.
pub fn signer_name(alg: Alg) -> String {
    format!("VZD FHIR Directory list signer {alg}")
}

pub const TOKEN_PATH: &str = "/auth/realms/TI-Provider/protocol/openid-connect/token";

struct Token {
    kind: &'static str,
    /// The provider's client id, the organisation's TelematikID or the user's MXID.
    client_id: String,
    expires: Instant,
}

#[derive(Default)]
struct Faults {
    tamper_lists: bool,
    /// Lists signed by another certificate of the same PKI (an SMC-B, say).
    foreign_signer: bool,
    lose_answers: u32,
}

pub struct Inner {
    pool: SqlitePool,
    pub ca: TestCa,
    signers: Vec<(Alg, X509, PKey<Private>)>,
    clients: Mutex<Vec<(String, String, String)>>,
    tokens: Mutex<std::collections::HashMap<String, Token>>,
    faults: Mutex<Faults>,
    changes: Mutex<Vec<String>>,
    /// Fingerprints of the RegService certificates registered with provider credentials.
    owner_certificates: Mutex<Vec<String>>,
    /// Where a Matrix domain's homeserver answers (what `.well-known/matrix/server` says).
    homeservers: Mutex<std::collections::HashMap<String, String>>,
    http: reqwest::Client,
    /// Decoupled sign-ins: auth_req_id → (TelematikID of the eHBA once signed in, expiry).
    auth_requests: Mutex<std::collections::HashMap<String, (Option<String>, Instant)>>,
    /// IDP codes: code → (auth_req_id, TelematikID of the eHBA).
    idp_codes: Mutex<std::collections::HashMap<String, (String, String)>>,
}

/// The running double.
pub struct VzdDouble {
    pub inner: Arc<Inner>,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

pub(crate) fn random_token() -> String {
    let bytes: [u8; 24] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl VzdDouble {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let pool = SqlitePool::connect_with(
            SqliteConnectOptions::new()
                .filename(dir.path().join("vzd.db"))
                .create_if_missing(true),
        )
        .await
        .unwrap();
        for stmt in [
            "CREATE TABLE organizations (telematik_id TEXT PRIMARY KEY, active INTEGER NOT NULL)",
            "CREATE TABLE domains (domain TEXT PRIMARY KEY, telematik_id TEXT NOT NULL,
               is_insurance INTEGER NOT NULL, ik TEXT NOT NULL, redirect_domains TEXT NOT NULL,
               client_id TEXT NOT NULL, tim_anbieter TEXT NOT NULL)",
            "CREATE TABLE list_version (version INTEGER NOT NULL)",
            "INSERT INTO list_version VALUES (1)",
            "CREATE TABLE resources (rtype TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL,
               body TEXT NOT NULL, PRIMARY KEY (rtype, id))",
        ] {
            sqlx::query(stmt).execute(&pool).await.unwrap();
        }
        let ca = TestCa::new(Alg::BP256R1);
        let signers = [Alg::BP256R1, Alg::ES256]
            .into_iter()
            .map(|alg| {
                let (cert, key) = ca.issue(&signer_name(alg), alg);
                (alg, cert, key)
            })
            .collect();
        let inner = Arc::new(Inner {
            pool,
            ca,
            signers,
            clients: Mutex::new(vec![]),
            tokens: Mutex::default(),
            faults: Mutex::default(),
            changes: Mutex::default(),
            owner_certificates: Mutex::default(),
            homeservers: Mutex::default(),
            http: reqwest::Client::new(),
            auth_requests: Mutex::default(),
            idp_codes: Mutex::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut double = Self {
            inner,
            addr,
            _dir: dir,
            stop: None,
            task: None,
        };
        double.serve(listener);
        double
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = router(self.inner.clone());
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }));
    }

    /// The directory is down: nothing listens on its port.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Back on the same port, with everything it held.
    pub async fn resume(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.base_url())
    }

    /// `n` domains of other providers in the federation list, as a populated TI would have
    /// (benchmarks); the list version goes up once.
    pub async fn add_other_domains(&self, n: usize) {
        let mut tx = self.inner.pool.begin().await.unwrap();
        for i in 0..n {
            sqlx::query("INSERT INTO domains VALUES ($1, $2, 0, '[]', '[]', 'other-provider', 'ORG-9999:BT-9999')")
                .bind(format!("tim-{i}.provider-{}.example", i % 40))
                .bind(format!("1-SMC-B-{i:06}"))
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        self.inner.bump_version().await;
    }

    /// A TI-M provider's credentials and its ITSM assignment group (`timAnbieter`).
    pub fn add_provider(&self, client_id: &str, secret: &str, assignment_group: &str) {
        self.inner.clients.lock().unwrap().push((
            client_id.into(),
            secret.into(),
            assignment_group.into(),
        ));
    }

    /// An organisation (its Organization entry, from the LDAP-VZD sync) and whether it is active.
    pub async fn set_organization(&self, telematik_id: &str, active: bool) {
        self.set_organization_entry(
            telematik_id,
            &format!("Organisation {telematik_id}"),
            "Berlin",
            active,
        )
        .await;
    }

    /// An organisation with its name and city, as the LDAP-VZD sync would enter it.
    pub async fn set_organization_entry(
        &self,
        telematik_id: &str,
        name: &str,
        city: &str,
        active: bool,
    ) {
        fhir::put_ldap_organization(&self.inner, telematik_id, name, city, active).await;
        sqlx::query(
            "INSERT INTO organizations VALUES ($1, $2)
             ON CONFLICT (telematik_id) DO UPDATE SET active = excluded.active",
        )
        .bind(telematik_id)
        .bind(active as i64)
        .execute(&self.inner.pool)
        .await
        .unwrap();
    }

    /// Registers our RegService signing certificate (`/owner-auth-certificate-hash`).
    pub fn register_owner_certificate(&self, cert: &X509) {
        self.inner
            .owner_certificates
            .lock()
            .unwrap()
            .push(jws::fingerprint(cert));
    }

    /// Where the homeserver of `domain` answers (its `.well-known/matrix/server`).
    pub fn set_homeserver(&self, domain: &str, base_url: &str) {
        self.inner
            .homeservers
            .lock()
            .unwrap()
            .insert(domain.into(), base_url.into());
    }

    /// A doctor from the LDAP-VZD sync: Practitioner and PractitionerRole; returns the role's id.
    pub async fn add_practitioner(&self, telematik_id: &str, given: &str, family: &str) -> String {
        fhir::put_ldap_practitioner(&self.inner, telematik_id, given, family).await
    }

    /// An Endpoint another organisation (`owner`) made for `mxid`; returns its id.
    pub async fn add_foreign_endpoint(&self, owner: &str, mxid: &str, name: &str) -> String {
        fhir::put_foreign_endpoint(&self.inner, owner, mxid, name).await
    }

    /// A resource as the directory holds it.
    pub async fn resource(&self, rtype: &str, id: &str) -> Option<Value> {
        fhir::load(&self.inner, rtype, id).await.map(|(_, v)| v)
    }

    /// All resources of a type.
    pub async fn resources(&self, rtype: &str) -> Vec<Value> {
        fhir::all(&self.inner, rtype)
            .await
            .into_iter()
            .map(|(_, _, v)| v)
            .collect()
    }

    /// Lists handed out from now on have their payload changed after signing.
    pub fn tamper_lists(&self, on: bool) {
        self.inner.faults.lock().unwrap().tamper_lists = on;
    }

    /// Lists handed out from now on are signed by another certificate under the same roots.
    pub fn sign_lists_with_a_foreign_certificate(&self, on: bool) {
        self.inner.faults.lock().unwrap().foreign_signer = on;
    }

    /// The next `n` changes are made but answered 504, as if the answer got lost on the way.
    pub fn lose_answers(&self, n: u32) {
        self.inner.faults.lock().unwrap().lose_answers = n;
    }

    /// The changes made so far, e.g. `POST /federation a.de`.
    pub fn changes(&self) -> Vec<String> {
        self.inner.changes.lock().unwrap().clone()
    }

    pub async fn list_version(&self) -> i64 {
        sqlx::query("SELECT version FROM list_version")
            .fetch_one(&self.inner.pool)
            .await
            .unwrap()
            .get(0)
    }
}

impl Drop for VzdDouble {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

fn router(inner: Arc<Inner>) -> Router {
    Router::new()
        .route(TOKEN_PATH, post(oauth_token))
        .route("/ti-provider-authenticate", get(provider_authenticate))
        .route("/tim-provider-services/", get(info))
        .route(
            "/tim-provider-services/federation",
            post(add_domain).get(get_domains),
        )
        .route(
            "/tim-provider-services/federation/{domain}",
            put(update_domain).delete(delete_domain),
        )
        .route(
            "/tim-provider-services/localization",
            get(fhir::localization),
        )
        .route(
            "/tim-provider-services/federationCheck",
            get(federation_check),
        )
        .route(
            "/tim-provider-services/FederationList/federationList.jws",
            get(federation_list),
        )
        .merge(fhir::routes())
        .with_state(inner)
}

impl Inner {
    pub(crate) fn bearer(&self, headers: &HeaderMap, kind: &str) -> Option<String> {
        let token = headers
            .get(header::AUTHORIZATION)?
            .to_str()
            .ok()?
            .strip_prefix("Bearer ")?;
        let tokens = self.tokens.lock().unwrap();
        let t = tokens.get(token)?;
        (t.kind == kind && t.expires > Instant::now()).then(|| t.client_id.clone())
    }

    pub(crate) fn issue(&self, kind: &'static str, client_id: &str, secs: u64) -> String {
        let token = random_token();
        self.tokens.lock().unwrap().insert(
            token.clone(),
            Token {
                kind,
                client_id: client_id.into(),
                expires: Instant::now() + Duration::from_secs(secs),
            },
        );
        token
    }

    fn assignment_group(&self, client_id: &str) -> String {
        self.clients
            .lock()
            .unwrap()
            .iter()
            .find(|c| c.0 == client_id)
            .map(|c| c.2.clone())
            .unwrap_or_default()
    }

    /// A change was made; returns the answer to give (504 while answers are being lost).
    pub(crate) fn changed(&self, what: String, answer: Response) -> Response {
        self.changes.lock().unwrap().push(what);
        let mut faults = self.faults.lock().unwrap();
        if faults.lose_answers > 0 {
            faults.lose_answers -= 1;
            return error(StatusCode::GATEWAY_TIMEOUT, "upstream timeout");
        }
        answer
    }

    async fn bump_version(&self) {
        sqlx::query("UPDATE list_version SET version = version + 1")
            .execute(&self.pool)
            .await
            .unwrap();
    }
}

pub(crate) fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"message": "Unauthorized"})),
    )
        .into_response()
}

async fn oauth_token(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if !form
        .iter()
        .any(|(k, v)| k == "grant_type" && v == "client_credentials")
    {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "unsupported_grant_type"})),
        )
            .into_response();
    }
    let basic = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok());
    let Some((id, secret)) = basic.as_deref().and_then(|b| b.split_once(':')) else {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    };
    let known = s
        .clients
        .lock()
        .unwrap()
        .iter()
        .any(|c| c.0 == id && c.1 == secret);
    if !known {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "invalid_client"})),
        )
            .into_response();
    }
    let token = s.issue("oauth", id, 300);
    Json(json!({"access_token": token, "expires_in": 300, "token_type": "Bearer"})).into_response()
}

async fn provider_authenticate(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let Some(client_id) = s.bearer(&headers, "oauth") else {
        return unauthorized();
    };
    let token = s.issue("provider", &client_id, 86400);
    Json(json!({"access_token": token, "client_id": client_id, "token_type": "Bearer", "expires_in": 86400}))
        .into_response()
}

async fn info(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if s.bearer(&headers, "provider").is_none() {
        return unauthorized();
    }
    Json(json!({"title": "I_VZD_TIM_Provider_Services", "version": "1.4.0",
        "description": "REST interface to retrieve the TI-Messenger federation list and to administrate the TI-Messenger domains."}))
        .into_response()
}

#[derive(Deserialize)]
struct DomainBody {
    domain: String,
    #[serde(rename = "telematikID")]
    telematik_id: String,
    #[serde(rename = "isInsurance", default)]
    is_insurance: bool,
    #[serde(default)]
    ik: Vec<String>,
    #[serde(rename = "redirectDomains", default)]
    redirect_domains: Vec<String>,
}

fn domain_json(r: &sqlx::sqlite::SqliteRow) -> Value {
    let ik: Vec<String> = serde_json::from_str(r.get::<String, _>("ik").as_str()).unwrap();
    let redirects: Vec<String> =
        serde_json::from_str(r.get::<String, _>("redirect_domains").as_str()).unwrap();
    let mut v = json!({
        "domain": r.get::<String, _>("domain"),
        "telematikID": r.get::<String, _>("telematik_id"),
        "isInsurance": r.get::<i64, _>("is_insurance") != 0,
        "timAnbieter": r.get::<String, _>("tim_anbieter"),
    });
    if !ik.is_empty() {
        v["ik"] = json!(ik);
    }
    if !redirects.is_empty() {
        v["redirectDomains"] = json!(redirects);
    }
    v
}

/// B-PROV-02/03: the organisation must be active; IK rules; an IK in use elsewhere is a 409.
async fn check_domain(s: &Inner, d: &DomainBody, except: Option<&str>) -> Result<(), Response> {
    if d.domain.is_empty() || d.telematik_id.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "domain and telematikID are required",
        ));
    }
    let active: Option<i64> =
        sqlx::query_scalar("SELECT active FROM organizations WHERE telematik_id = $1")
            .bind(&d.telematik_id)
            .fetch_optional(&s.pool)
            .await
            .unwrap();
    if active != Some(1) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "organization which belongs to the telematikID is not active",
        ));
    }
    if let Err(e) = tim_vzd_sync::ik::validate_iks(d.is_insurance, &d.ik) {
        return Err(error(StatusCode::BAD_REQUEST, &e));
    }
    let rows = sqlx::query("SELECT domain, ik FROM domains")
        .fetch_all(&s.pool)
        .await
        .unwrap();
    for r in rows {
        if Some(r.get::<String, _>("domain").as_str()) == except {
            continue;
        }
        let used: Vec<String> = serde_json::from_str(r.get::<String, _>("ik").as_str()).unwrap();
        if d.ik.iter().any(|i| used.contains(i)) {
            return Err(error(
                StatusCode::CONFLICT,
                "ik already assigned to a domain",
            ));
        }
    }
    Ok(())
}

async fn add_domain(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(client_id) = s.bearer(&headers, "provider") else {
        return unauthorized();
    };
    let Ok(d) = serde_json::from_slice::<DomainBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not a Domain");
    };
    if let Err(r) = check_domain(&s, &d, None).await {
        return r;
    }
    let inserted = sqlx::query("INSERT INTO domains VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(&d.domain)
        .bind(&d.telematik_id)
        .bind(d.is_insurance as i64)
        .bind(serde_json::to_string(&d.ik).unwrap())
        .bind(serde_json::to_string(&d.redirect_domains).unwrap())
        .bind(&client_id)
        .bind(s.assignment_group(&client_id))
        .execute(&s.pool)
        .await;
    if inserted.is_err() {
        return error(StatusCode::CONFLICT, "domain already exists");
    }
    s.bump_version().await;
    let row = sqlx::query("SELECT * FROM domains WHERE domain = $1")
        .bind(&d.domain)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    s.changed(
        format!("POST /federation {}", d.domain),
        Json(domain_json(&row)).into_response(),
    )
}

#[derive(Deserialize)]
struct DomainQuery {
    domain: Option<String>,
}

async fn get_domains(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<DomainQuery>,
) -> Response {
    let Some(client_id) = s.bearer(&headers, "provider") else {
        return unauthorized();
    };
    let rows = match &q.domain {
        Some(d) => sqlx::query("SELECT * FROM domains WHERE domain = $1")
            .bind(d)
            .fetch_all(&s.pool)
            .await
            .unwrap(),
        None => sqlx::query("SELECT * FROM domains WHERE client_id = $1 ORDER BY domain")
            .bind(&client_id)
            .fetch_all(&s.pool)
            .await
            .unwrap(),
    };
    if q.domain.is_some() && rows.is_empty() {
        return error(StatusCode::NOT_FOUND, "domain not found");
    }
    Json(rows.iter().map(domain_json).collect::<Vec<_>>()).into_response()
}

async fn owner_of(s: &Inner, domain: &str) -> Option<String> {
    sqlx::query_scalar("SELECT client_id FROM domains WHERE domain = $1")
        .bind(domain)
        .fetch_optional(&s.pool)
        .await
        .unwrap()
}

async fn update_domain(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
    body: Bytes,
) -> Response {
    let Some(client_id) = s.bearer(&headers, "provider") else {
        return unauthorized();
    };
    let Ok(d) = serde_json::from_slice::<DomainBody>(&body) else {
        return error(StatusCode::BAD_REQUEST, "body is not a Domain");
    };
    if d.domain != domain {
        return error(StatusCode::BAD_REQUEST, "domain in path and body differ");
    }
    match owner_of(&s, &domain).await {
        None => return error(StatusCode::NOT_FOUND, "domain not found"),
        Some(owner) if owner != client_id => {
            return error(StatusCode::FORBIDDEN, "domain belongs to another provider");
        }
        Some(_) => {}
    }
    if let Err(r) = check_domain(&s, &d, Some(&domain)).await {
        return r;
    }
    sqlx::query(
        "UPDATE domains SET telematik_id = $2, is_insurance = $3, ik = $4, redirect_domains = $5
         WHERE domain = $1",
    )
    .bind(&domain)
    .bind(&d.telematik_id)
    .bind(d.is_insurance as i64)
    .bind(serde_json::to_string(&d.ik).unwrap())
    .bind(serde_json::to_string(&d.redirect_domains).unwrap())
    .execute(&s.pool)
    .await
    .unwrap();
    s.bump_version().await;
    let row = sqlx::query("SELECT * FROM domains WHERE domain = $1")
        .bind(&domain)
        .fetch_one(&s.pool)
        .await
        .unwrap();
    s.changed(
        format!("PUT /federation/{domain}"),
        Json(domain_json(&row)).into_response(),
    )
}

async fn delete_domain(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Path(domain): Path<String>,
) -> Response {
    let Some(client_id) = s.bearer(&headers, "provider") else {
        return unauthorized();
    };
    match owner_of(&s, &domain).await {
        None => return error(StatusCode::NOT_FOUND, "domain not found"),
        Some(owner) if owner != client_id => {
            return error(StatusCode::FORBIDDEN, "domain belongs to another provider");
        }
        Some(_) => {}
    }
    sqlx::query("DELETE FROM domains WHERE domain = $1")
        .bind(&domain)
        .execute(&s.pool)
        .await
        .unwrap();
    s.bump_version().await;
    s.changed(
        format!("DELETE /federation/{domain}"),
        StatusCode::NO_CONTENT.into_response(),
    )
}

async fn federation_check(State(s): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    let Some(client_id) = s.bearer(&headers, "provider") else {
        return unauthorized();
    };
    let rows = sqlx::query(
        "SELECT d.* FROM domains d LEFT JOIN organizations o ON o.telematik_id = d.telematik_id
         WHERE d.client_id = $1 AND COALESCE(o.active, 0) = 0 ORDER BY d.domain",
    )
    .bind(&client_id)
    .fetch_all(&s.pool)
    .await
    .unwrap();
    if rows.is_empty() {
        return StatusCode::NO_CONTENT.into_response();
    }
    Json(json!({"inactiveOrganizationDomains": rows.iter().map(domain_json).collect::<Vec<_>>()}))
        .into_response()
}

#[derive(Deserialize)]
struct ListQuery {
    version: Option<String>,
    #[serde(rename = "sigAlg")]
    sig_alg: Option<String>,
}

async fn federation_list(
    State(s): State<Arc<Inner>>,
    headers: HeaderMap,
    Query(q): Query<ListQuery>,
) -> Response {
    if s.bearer(&headers, "provider").is_none() {
        return unauthorized();
    }
    let known = match q.version.as_deref().map(str::parse::<i64>) {
        None => None,
        Some(Ok(v)) => Some(v),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "version is not an integer"),
    };
    let alg = match q.sig_alg.as_deref().map(Alg::parse) {
        None => Alg::BP256R1,
        Some(Some(a)) => a,
        Some(None) => return error(StatusCode::BAD_REQUEST, "sigAlg must be BP256R1 or ES256"),
    };
    let version: i64 = sqlx::query_scalar("SELECT version FROM list_version")
        .fetch_one(&s.pool)
        .await
        .unwrap();
    if known.is_some_and(|k| version <= k) {
        return StatusCode::NO_CONTENT.into_response();
    }
    let rows = sqlx::query("SELECT * FROM domains ORDER BY domain")
        .fetch_all(&s.pool)
        .await
        .unwrap();
    let list = json!({
        "version": version,
        "domainList": rows.iter().map(|r| {
            let mut d = domain_json(r);
            if let Some(o) = d.as_object_mut() { o.remove("redirectDomains"); }
            d
        }).collect::<Vec<_>>(),
    });
    let (_, cert, key) = s.signers.iter().find(|(a, ..)| *a == alg).unwrap();
    let foreign = s
        .faults
        .lock()
        .unwrap()
        .foreign_signer
        .then(|| s.ca.issue("SMC-B Praxis Mallory", alg));
    let (cert, key) = foreign.as_ref().map_or((cert, key), |(c, k)| (c, k));
    let mut signed = jws::sign(
        alg,
        key,
        std::slice::from_ref(cert),
        Some("JWT"),
        list.to_string().as_bytes(),
    )
    .unwrap();
    if s.faults.lock().unwrap().tamper_lists {
        // Someone on the way adds a domain of their own; the signature stays the old one.
        let mut forged = list.clone();
        forged["domainList"]
            .as_array_mut()
            .unwrap()
            .push(json!({"domain": "evil.example", "telematikID": "x", "isInsurance": false}));
        let parts: Vec<&str> = signed.split('.').collect();
        signed = format!(
            "{}.{}.{}",
            parts[0],
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(forged.to_string()),
            parts[2]
        );
    }
    ([(header::CONTENT_TYPE, "application/octet-stream")], signed).into_response()
}
