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

use super::{bearer, json_body, tenant_for};
use crate::{
    accounts::SeenFrom,
    admin::TokenCheck,
    error::{Error, Result},
    homeserver::Homeserver,
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
    async fn audit(
        &self,
        action: &str,
        target: Option<&str>,
        details: Option<Value>,
    ) -> Result<()> {
        self.hs.audit(&self.actor, action, target, details).await
    }
}

impl FromRequestParts<Tenants> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, tenants: &Tenants) -> Result<Self> {
        authenticate(tenants, &parts.headers).await
    }
}

async fn authenticate(tenants: &Tenants, headers: &HeaderMap) -> Result<Admin> {
    let hs = tenant_for(tenants, headers)?;
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
        let bytes = axum::body::to_bytes(req.into_body(), 1024 * 1024)
            .await
            .map_err(|_| Error::TooLarge)?;
        json_body(&bytes).map(J)
    }
}

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
