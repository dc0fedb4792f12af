//! Users, their sessions (devices) and registration tokens.

use axum::{
    Json, Router,
    routing::{delete, get, post, put},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, J, P, Q, local_user, ok, page};
use crate::{
    api::operator::{NewToken, NewUser},
    error::{Error, Result},
    profiles::{DISPLAYNAME, Editor},
    store::UserSummary,
    tenants::Tenants,
};

pub fn routes(r: axum::Router<Tenants>) -> Router<Tenants> {
    r.route("/_tim/admin/v1/users", get(list).post(create))
        .route("/_tim/admin/v1/users/{user_id}", get(show))
        .route(
            "/_tim/admin/v1/users/{user_id}/displayname",
            put(displayname),
        )
        .route(
            "/_tim/admin/v1/users/{user_id}/deactivate",
            post(deactivate),
        )
        .route("/_tim/admin/v1/users/{user_id}/password", post(password))
        .route(
            "/_tim/admin/v1/users/{user_id}/devices",
            get(devices).delete(delete_all_devices),
        )
        .route(
            "/_tim/admin/v1/users/{user_id}/devices/{device_id}",
            delete(delete_device),
        )
        .route(
            "/_tim/admin/v1/registration_tokens",
            get(list_tokens).post(create_token),
        )
        .route(
            "/_tim/admin/v1/registration_tokens/{token}",
            delete(delete_token),
        )
}

fn user_json(u: &UserSummary) -> Value {
    json!({
        "user_id": u.user_id,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "admin": u.is_admin,
        "deactivated": u.deactivated,
        "created_ts": u.created_ts,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    search: Option<String>,
    from: Option<String>,
    limit: Option<i64>,
}

async fn list(admin: Admin, Q(q): Q<ListQuery>) -> Result<Json<Value>> {
    let limit = page(q.limit)?;
    let search = q.search.as_deref().map(str::to_lowercase);
    let users = admin
        .hs
        .stores
        .accounts
        .list_users(search.as_deref(), q.from.as_deref(), limit)
        .await?;
    admin.audit("users.list", None, None).await?;
    let next = (users.len() as i64 == limit).then(|| users.last().map(|u| u.user_id.clone()));
    Ok(Json(json!({
        "users": users.iter().map(user_json).collect::<Vec<_>>(),
        "next_from": next.flatten(),
    })))
}

async fn create(admin: Admin, J(body): J<NewUser>) -> Result<Json<Value>> {
    let target = admin
        .hs
        .accounts
        .new_user_id(&body.localpart.to_lowercase())?;
    let user_id = admin
        .audited(
            "users.create",
            Some(target.as_str()),
            Some(json!({"admin": body.admin})),
            body.create(&admin.hs),
        )
        .await?;
    Ok(Json(json!({ "user_id": user_id })))
}

async fn show(admin: Admin, P(user): P<String>) -> Result<Json<Value>> {
    let user = local_user(&admin.hs, &user)?;
    let summary = admin
        .hs
        .stores
        .accounts
        .user_summary(user.as_str())
        .await?
        .ok_or_else(|| Error::not_found("no such user"))?;
    let devices = admin
        .hs
        .accounts
        .sessions()
        .list_devices(user.as_str())
        .await?;
    admin.audit("users.get", Some(user.as_str()), None).await?;
    let mut v = user_json(&summary);
    v["devices"] = json!(devices.len());
    Ok(Json(v))
}

#[derive(Deserialize)]
struct DisplaynameBody {
    displayname: String,
}

async fn displayname(
    admin: Admin,
    P(user): P<String>,
    J(body): J<DisplaynameBody>,
) -> Result<Json<Value>> {
    let user = local_user(&admin.hs, &user)?;
    admin
        .audited(
            "users.displayname",
            Some(user.as_str()),
            Some(json!({"displayname": body.displayname})),
            admin.hs.set_profile_field(
                Editor::OrgAdmin,
                &user,
                DISPLAYNAME,
                Some(Value::String(body.displayname.clone())),
            ),
        )
        .await?;
    Ok(Json(json!({})))
}

async fn deactivate(admin: Admin, P(user): P<String>) -> Result<axum::response::Response> {
    let user = local_user(&admin.hs, &user)?;
    admin
        .audited(
            "users.deactivate",
            Some(user.as_str()),
            None,
            admin.hs.deactivate_user(&user),
        )
        .await?;
    Ok(ok())
}

#[derive(Deserialize)]
struct PasswordBody {
    password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
}

fn yes() -> bool {
    true
}

async fn password(
    admin: Admin,
    P(user): P<String>,
    J(body): J<PasswordBody>,
) -> Result<axum::response::Response> {
    let user = local_user(&admin.hs, &user)?;
    admin
        .audited(
            "users.password",
            Some(user.as_str()),
            Some(json!({"logout_devices": body.logout_devices})),
            admin
                .hs
                .reset_password(&user, &body.password, body.logout_devices),
        )
        .await?;
    Ok(ok())
}

async fn devices(admin: Admin, P(user): P<String>) -> Result<Json<Value>> {
    let user = local_user(&admin.hs, &user)?;
    if !admin.hs.accounts.user_exists(&user).await? {
        return Err(Error::not_found("no such user"));
    }
    let devices = admin
        .hs
        .accounts
        .sessions()
        .list_devices(user.as_str())
        .await?;
    admin
        .audit("devices.list", Some(user.as_str()), None)
        .await?;
    Ok(Json(json!({
        "devices": devices.iter().map(|d| json!({
            "device_id": d.device_id,
            "display_name": d.display_name,
            "last_seen_ts": d.last_seen_ts,
            "last_seen_ip": d.last_seen_ip,
            "last_seen_user_agent": d.last_seen_user_agent,
        })).collect::<Vec<_>>()
    })))
}

async fn delete_device(
    admin: Admin,
    P((user, device)): P<(String, String)>,
) -> Result<axum::response::Response> {
    let user = local_user(&admin.hs, &user)?;
    if admin
        .hs
        .accounts
        .sessions()
        .get_device(user.as_str(), &device)
        .await?
        .is_none()
    {
        return Err(Error::not_found("no such device"));
    }
    admin
        .audited(
            "devices.delete",
            Some(user.as_str()),
            Some(json!({"device_id": device})),
            admin
                .hs
                .accounts
                .delete_devices(&user, std::slice::from_ref(&device)),
        )
        .await?;
    Ok(ok())
}

async fn delete_all_devices(admin: Admin, P(user): P<String>) -> Result<axum::response::Response> {
    let user = local_user(&admin.hs, &user)?;
    if !admin.hs.accounts.user_exists(&user).await? {
        return Err(Error::not_found("no such user"));
    }
    admin
        .audited(
            "devices.delete_all",
            Some(user.as_str()),
            None,
            admin.hs.accounts.logout_all(&user),
        )
        .await?;
    Ok(ok())
}

async fn list_tokens(admin: Admin) -> Result<Json<Value>> {
    let now = crate::ephemeral::now_ms();
    let tokens = admin.hs.stores.accounts.list_registration_tokens().await?;
    admin.audit("registration_tokens.list", None, None).await?;
    Ok(Json(json!({
        "registration_tokens": tokens.iter().map(|t| json!({
            "id": t.token,
            "hint": t.hint,
            "uses_allowed": t.uses_allowed,
            "completed": t.completed,
            "expiry_time": t.expiry_ts,
            "valid": t.uses_allowed.is_none_or(|u| t.completed < u) && t.expiry_ts.is_none_or(|e| e > now),
        })).collect::<Vec<_>>()
    })))
}

async fn create_token(admin: Admin, J(body): J<NewToken>) -> Result<Json<Value>> {
    let token = body.with_token();
    let target = crate::accounts::registration_token_id(&token.token);
    let token = admin
        .audited(
            "registration_tokens.create",
            Some(&target),
            Some(json!({"uses_allowed": token.uses(), "expiry_time": body.expiry_time})),
            token.create(&admin.hs),
        )
        .await?;
    Ok(Json(json!({ "token": token })))
}

async fn delete_token(admin: Admin, P(token): P<String>) -> Result<axum::response::Response> {
    // The entry names the token by its id, whether the path gave the token or its id.
    let target = if token.len() == 43 && !token.contains(['.', '~']) {
        token.clone()
    } else {
        crate::accounts::registration_token_id(&token)
    };
    admin
        .audited("registration_tokens.revoke", Some(&target), None, async {
            if !admin.hs.accounts.revoke_registration_token(&token).await? {
                return Err(Error::not_found("no such registration token"));
            }
            Ok(())
        })
        .await?;
    Ok(ok())
}
