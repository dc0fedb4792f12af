//! The operator API (`/_tim/operator/v1`): tenants, users and registration tokens, for the
//! CLI and the registration service. Authenticated with the operator bearer token.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::HeaderMap,
    routing::{get, post, put},
};
use ruma::OwnedServerName;
use serde::{Deserialize, Serialize};

use super::admin::{J, P, Q, audited};
use crate::{
    error::{Error, Result},
    homeserver::Homeserver,
    tenants::Tenants,
};

pub fn router(token: String) -> Router<Tenants> {
    let check = move |headers: &HeaderMap| -> Result<()> {
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            None | Some("") => Err(Error::MissingToken),
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Error::UnknownToken { soft_logout: false }),
        }
    };
    let c1 = check.clone();
    let c2 = check.clone();
    let c3 = check.clone();
    let c4 = check.clone();
    let c5 = check.clone();
    Router::new()
        .route(
            "/_tim/operator/v1/tenants",
            get(move |State(t): State<Tenants>, h: HeaderMap| async move {
                c1(&h)?;
                Ok::<_, Error>(Json(TenantList { tenants: t.names() }))
            }),
        )
        .route(
            "/_tim/operator/v1/tenants/{server_name}",
            put(
                move |State(t): State<Tenants>, h: HeaderMap, P(name): P<String>| async move {
                    c2(&h)?;
                    let name = parse_name(&name)?;
                    let created = t.add(name).await?;
                    Ok::<_, Error>(Json(serde_json::json!({ "created": created })))
                },
            )
            .delete(
                move |State(t): State<Tenants>,
                      h: HeaderMap,
                      P(name): P<String>,
                      Q(q): Q<RemoveQuery>| async move {
                    check(&h)?;
                    let name = parse_name(&name)?;
                    if !t.remove(&name, q.delete_data).await? {
                        return Err(Error::not_found("no such tenant"));
                    }
                    Ok::<_, Error>(Json(serde_json::json!({})))
                },
            ),
        )
        .route(
            "/_tim/operator/v1/tenants/{server_name}/users",
            post(
                move |State(t): State<Tenants>,
                      h: HeaderMap,
                      P(name): P<String>,
                      J(body): J<NewUser>| async move {
                    c3(&h)?;
                    let hs = tenant(&t, &name)?;
                    let target = hs.accounts.new_user_id(&body.localpart.to_lowercase())?;
                    let details = serde_json::json!({"admin": body.admin});
                    let user_id = audited(
                        &hs,
                        "operator",
                        "users.create",
                        Some(target.as_str()),
                        Some(details),
                        body.create(&hs),
                    )
                    .await?;
                    Ok::<_, Error>(Json(serde_json::json!({ "user_id": user_id })))
                },
            ),
        )
        .route(
            "/_tim/operator/v1/tenants/{server_name}/registration_tokens",
            post(
                move |State(t): State<Tenants>,
                      h: HeaderMap,
                      P(name): P<String>,
                      J(body): J<NewToken>| async move {
                    c4(&h)?;
                    let hs = tenant(&t, &name)?;
                    let token = body.with_token();
                    let target = crate::accounts::registration_token_id(&token.token);
                    let details = serde_json::json!({"uses_allowed": token.uses()});
                    let token = audited(
                        &hs,
                        "operator",
                        "registration_tokens.create",
                        Some(&target),
                        Some(details),
                        token.create(&hs),
                    )
                    .await?;
                    Ok::<_, Error>(Json(serde_json::json!({ "token": token })))
                },
            ),
        )
        .route(
            "/_tim/operator/v1/tenants/{server_name}/admin_token",
            post(
                move |State(t): State<Tenants>, h: HeaderMap, P(name): P<String>| async move {
                    c5(&h)?;
                    let hs = tenant(&t, &name)?;
                    let token = audited(
                        &hs,
                        "operator",
                        "admin_token.rotate",
                        None,
                        None,
                        hs.rotate_admin_token(),
                    )
                    .await?;
                    Ok::<_, Error>(Json(serde_json::json!({ "token": token })))
                },
            ),
        )
}

fn parse_name(name: &str) -> Result<OwnedServerName> {
    crate::tenants::tenant_name(name)
        .map_err(|e| Error::invalid_param(format!("invalid tenant name: {e}")))
}

fn tenant(t: &Tenants, name: &str) -> Result<std::sync::Arc<Homeserver>> {
    t.get(&parse_name(name)?)
        .ok_or_else(|| Error::not_found("no such tenant"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(Serialize)]
struct TenantList {
    tenants: Vec<OwnedServerName>,
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(default)]
    delete_data: bool,
}

#[derive(Deserialize)]
pub struct NewUser {
    pub localpart: String,
    pub password: Option<String>,
    #[serde(default)]
    pub admin: bool,
    /// Set by the organisation's admin (TI-M B-ADM-02: `[Name], [Vorname]`).
    pub displayname: Option<String>,
}

#[derive(Deserialize)]
pub struct NewToken {
    pub token: Option<String>,
    /// Default 1: single use.
    pub uses_allowed: Option<i64>,
    /// Milliseconds since the epoch.
    pub expiry_time: Option<i64>,
}

/// Request bodies shared by the operator API and the per-tenant admin API.
impl NewUser {
    pub async fn create(&self, hs: &Arc<Homeserver>) -> Result<ruma::OwnedUserId> {
        if let Some(name) = &self.displayname {
            crate::profiles::check_displayname(name)?;
        }
        let user = hs
            .accounts
            .create_user(
                &self.localpart.to_lowercase(),
                self.password.as_deref(),
                self.admin,
            )
            .await?;
        if let Some(name) = &self.displayname {
            hs.set_profile_field(
                crate::profiles::Editor::OrgAdmin,
                &user,
                crate::profiles::DISPLAYNAME,
                Some(serde_json::Value::String(name.clone())),
            )
            .await?;
        }
        Ok(user)
    }
}

/// A registration token about to be made: the requested one or a random one.
pub struct TokenToMake {
    pub token: String,
    uses_allowed: Option<i64>,
    expiry_time: Option<i64>,
}

impl NewToken {
    /// The token to make, chosen now so that the audit entry can name it (by its id) first.
    pub fn with_token(&self) -> TokenToMake {
        TokenToMake {
            token: self
                .token
                .clone()
                .unwrap_or_else(|| crate::accounts::random_string(16)),
            uses_allowed: self.uses_allowed,
            expiry_time: self.expiry_time,
        }
    }
}

impl TokenToMake {
    /// Uses allowed: single use unless asked otherwise.
    pub fn uses(&self) -> Option<i64> {
        self.uses_allowed.or(Some(1))
    }

    pub async fn create(&self, hs: &Homeserver) -> Result<String> {
        hs.accounts
            .create_registration_token(Some(self.token.clone()), self.uses(), self.expiry_time)
            .await
    }
}
