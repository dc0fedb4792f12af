//! The per-tenant admin API (`/_tim/admin/v1`) for an organisation's admins (users with the
//! admin flag): create users and registration tokens. The org-admin backend builds on it.

use axum::{Json, Router, extract::State, http::HeaderMap, routing::post};

use super::{
    bearer,
    operator::{NewToken, NewUser},
    tenant_for,
};
use crate::{
    accounts::Session,
    error::{Error, Result},
    homeserver::Homeserver,
    tenants::Tenants,
};

pub fn router() -> Router<Tenants> {
    Router::new()
        .route("/_tim/admin/v1/users", post(create_user))
        .route("/_tim/admin/v1/registration_tokens", post(create_token))
}

async fn admin(
    tenants: &Tenants,
    headers: &HeaderMap,
) -> Result<(std::sync::Arc<Homeserver>, Session)> {
    let hs = tenant_for(tenants, headers)?;
    let token = bearer(headers, None).ok_or(Error::MissingToken)?;
    let session = hs.accounts.authenticate(&token, None).await?;
    if !session.is_admin {
        return Err(Error::forbidden("only organisation admins may do this"));
    }
    Ok((hs, session))
}

async fn create_user(
    State(tenants): State<Tenants>,
    headers: HeaderMap,
    body: Json<NewUser>,
) -> Result<Json<serde_json::Value>> {
    let (hs, session) = admin(&tenants, &headers).await?;
    let user_id = body.create(&hs).await?;
    tracing::info!(admin = %session.user_id, user = %user_id, "admin created user");
    Ok(Json(serde_json::json!({ "user_id": user_id })))
}

async fn create_token(
    State(tenants): State<Tenants>,
    headers: HeaderMap,
    body: Json<NewToken>,
) -> Result<Json<serde_json::Value>> {
    let (hs, _) = admin(&tenants, &headers).await?;
    let token = body.create(&hs).await?;
    Ok(Json(serde_json::json!({ "token": token })))
}
