//! The per-tenant admin API (`/_tim/admin/v1`) that the org-admin backend drives: users,
//! registration tokens, sessions, reports, server notices, rooms, settings and the audit log.
//! Authenticated with the tenant's admin API token (or an org admin's access token); a token
//! of another tenant is refused with 403. Every call is written to the audit log. The
//! OpenAPI document (`homeserver/openapi/admin-v1.json`) is served at `openapi.json`.

mod org;
mod users;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{FromRequest, FromRequestParts, Path, Query, Request},
    http::{HeaderMap, request::Parts},
    response::IntoResponse,
    routing::get,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{bearer, client_ip, json_body, read_body, tenant_for};
use crate::{
    accounts::SeenFrom,
    admin::TokenCheck,
    error::{Error, Result},
    homeserver::Homeserver,
    net::Conn,
    tenants::Tenants,
};

pub const OPENAPI: &str = include_str!("../../../openapi/admin-v1.json");

pub fn router() -> Router<Tenants> {
    let r = Router::new().route(
        "/_tim/admin/v1/openapi.json",
        get(|| async { ([(http::header::CONTENT_TYPE, "application/json")], OPENAPI) }),
    );
    let r = users::routes(r);
    org::routes(r)
}

/// An authenticated admin request: the tenant and who is acting.
pub struct Admin {
    pub hs: Arc<Homeserver>,
    /// `admin-token` or the acting org admin's user id.
    pub actor: String,
}

impl Admin {
    /// Records a read in the audit log (after it: a failed write fails the request, so
    /// nothing is shown unrecorded).
    async fn audit(
        &self,
        action: &str,
        target: Option<&str>,
        details: Option<Value>,
    ) -> Result<()> {
        self.audited(action, target, details, async { Ok(()) })
            .await
    }

    /// Runs a change with its audit entry written first and its outcome after.
    async fn audited<T>(
        &self,
        action: &str,
        target: Option<&str>,
        details: Option<Value>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        audited(&self.hs, &self.actor, action, target, details, work).await
    }
}

/// Runs an admin or operator action with its audit entry written first (so an action that
/// happened is always in the log) and its outcome — `ok` or `failed: <errcode>` — after.
pub(crate) async fn audited<T>(
    hs: &Homeserver,
    actor: &str,
    action: &str,
    target: Option<&str>,
    details: Option<Value>,
    work: impl Future<Output = Result<T>>,
) -> Result<T> {
    let details = details.map(|d| d.to_string());
    let now = crate::ephemeral::now_ms();
    let audit = &hs.stores.admin;
    let id = audit
        .audit(actor, action, target, details.as_deref(), now)
        .await?;
    let result = work.await;
    let outcome = match &result {
        Ok(_) => "ok".to_owned(),
        Err(e) => format!("failed: {}", super::error::errcode(e)),
    };
    if let Err(e) = audit.audit_outcome(id, &outcome).await {
        tracing::warn!(error = %e, action, "audit outcome not recorded");
    }
    result
}

impl FromRequestParts<Tenants> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, tenants: &Tenants) -> Result<Self> {
        let hs = tenant_for(
            tenants,
            &parts.uri,
            &parts.headers,
            parts.extensions.get::<Conn>(),
        )?;
        // Rate-limited per client address before the token is looked at: the admin API is on
        // the public listener, so token guessing and floods are slowed like any anonymous use.
        let conn = parts.extensions.get::<Conn>();
        let ip = client_ip(tenants, &parts.headers, conn)
            .map(|ip| crate::net::address_key(ip).to_string());
        hs.rate_limiter
            .check(&format!("admin-api {}", ip.unwrap_or_default()))
            .map_err(|retry_after_ms| Error::LimitExceeded { retry_after_ms })?;
        authenticate(hs, &parts.headers).await
    }
}

async fn authenticate(hs: Arc<Homeserver>, headers: &HeaderMap) -> Result<Admin> {
    let token = bearer(headers, None).ok_or(Error::MissingToken)?;
    match hs.check_admin_token(&token).await? {
        TokenCheck::Valid => {
            return Ok(Admin {
                hs,
                actor: "admin-token".into(),
            });
        }
        TokenCheck::OtherTenant => {
            return Err(Error::forbidden(
                "this token belongs to another organisation",
            ));
        }
        TokenCheck::Unknown => return Err(Error::UnknownToken { soft_logout: false }),
        TokenCheck::NotAdminToken => {}
    }
    let session = hs
        .accounts
        .authenticate(&token, SeenFrom::default())
        .await?;
    if !session.is_admin {
        return Err(Error::forbidden("only organisation admins may do this"));
    }
    Ok(Admin {
        actor: session.user_id.to_string(),
        hs,
    })
}

/// A query string, refused with 400 `M_INVALID_PARAM` when malformed.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Q<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        if super::query_has_nul(parts.uri.query()) {
            return Err(Error::invalid_param(
                "parameters may not contain NUL characters",
            ));
        }
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Q(q.0))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// Path parameters, refused with 400 when malformed.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for P<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self> {
        if parts.uri.path().contains("%00") {
            return Err(Error::invalid_param(
                "parameters may not contain NUL characters",
            ));
        }
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| P(p.0))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// A JSON body: 400 `M_NOT_JSON` when it is not JSON, `M_BAD_JSON` when it has the wrong shape.
pub struct J<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for J<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _: &S) -> Result<Self> {
        let bytes = read_body(req.into_body(), 1024 * 1024, BODY_TIMEOUT).await?;
        json_body(&bytes).map(J)
    }
}

/// How long an admin request's body may take to arrive.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A user id in a path, of this tenant.
fn local_user(hs: &Homeserver, user: &str) -> Result<ruma::OwnedUserId> {
    let id =
        ruma::UserId::parse(user).map_err(|e| Error::invalid_param(format!("user id: {e}")))?;
    if id.server_name() != hs.server_name {
        return Err(Error::not_found("no such user"));
    }
    Ok(id)
}

/// Page size from `limit` (default 50, at most 500).
fn page(limit: Option<i64>) -> Result<i64> {
    match limit {
        None => Ok(50),
        Some(l) if (1..=500).contains(&l) => Ok(l),
        Some(_) => Err(Error::invalid_param("limit must be 1 to 500")),
    }
}

fn ok() -> axum::response::Response {
    Json(serde_json::json!({})).into_response()
}
