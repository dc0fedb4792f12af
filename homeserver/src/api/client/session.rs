//! Login, logout, refresh, whoami and registration.

use axum::Router;
use ruma::{
    OwnedDeviceId,
    api::client::{
        account::{check_registration_token_validity, get_username_availability, register, whoami},
        session::{
            get_login_types::{self, v3::LoginType},
            login::{self, v3::LoginInfo},
            logout, logout_all, refresh_token,
        },
        uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo, UserIdentifier},
    },
};

use crate::{
    api::{Ctx, Guard, route, route_guarded},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, login_types);
    // Ruma's login parser panics on an object without `type`: checked first.
    let r = route_guarded(r, Guard::body_hook(login_has_type), login);
    let r = route(r, logout);
    let r = route(r, logout_all);
    let r = route(r, refresh);
    let r = route(r, whoami);
    let r = route(r, register);
    let r = route(r, username_available);
    route(r, registration_token_validity)
}

async fn login_types(
    _: Ctx,
    _: get_login_types::v3::Request,
) -> Result<get_login_types::v3::Response> {
    Ok(get_login_types::v3::Response::new(vec![
        LoginType::Password(Default::default()),
    ]))
}

/// A login body must be an object with a string `type` (what Ruma's parser assumes).
pub(crate) fn login_has_type(body: bytes::Bytes) -> Result<bytes::Bytes> {
    #[derive(serde::Deserialize)]
    struct Typed {
        #[serde(rename = "type")]
        _kind: String,
    }
    crate::api::json_body::<Typed>(&body).map(|_| body)
}

async fn login(ctx: Ctx, req: login::v3::Request) -> Result<login::v3::Response> {
    let LoginInfo::Password(p) = &req.login_info else {
        return Err(Error::Unrecognized);
    };
    let user_id = match &p.identifier {
        Some(UserIdentifier::Matrix(m)) => ctx
            .hs
            .accounts
            .user_id(&m.user)
            .map_err(|_| Error::WrongCredentials)?,
        _ => return Err(Error::bad_json("identifier must be of type m.id.user")),
    };
    ctx.hs
        .accounts
        .check_password(&user_id, &p.password)
        .await?;
    let ip = ctx.ip.map(|a| a.to_string());
    let (device_id, tokens) = ctx
        .hs
        .accounts
        .new_session(
            &user_id,
            req.device_id.clone(),
            req.initial_device_display_name.as_deref(),
            req.refresh_token,
            ip.as_deref(),
        )
        .await?;
    tracing::info!(user = %user_id, device = %device_id, "login");
    let mut resp = login::v3::Response::new(user_id, tokens.access_token, device_id);
    resp.refresh_token = tokens.refresh_token;
    resp.expires_in = tokens.expires_in;
    Ok(resp)
}

async fn logout(ctx: Ctx, _: logout::v3::Request) -> Result<logout::v3::Response> {
    ctx.hs.accounts.logout(ctx.session()?).await?;
    Ok(logout::v3::Response::new())
}

async fn logout_all(ctx: Ctx, _: logout_all::v3::Request) -> Result<logout_all::v3::Response> {
    ctx.hs.accounts.logout_all(&ctx.session()?.user_id).await?;
    Ok(logout_all::v3::Response::new())
}

async fn refresh(ctx: Ctx, req: refresh_token::v3::Request) -> Result<refresh_token::v3::Response> {
    let tokens = ctx.hs.accounts.refresh(&req.refresh_token).await?;
    let mut resp = refresh_token::v3::Response::new(tokens.access_token);
    resp.refresh_token = tokens.refresh_token;
    resp.expires_in_ms = tokens.expires_in;
    Ok(resp)
}

async fn whoami(ctx: Ctx, _: whoami::v3::Request) -> Result<whoami::v3::Response> {
    let s = ctx.session()?;
    let mut resp = whoami::v3::Response::new(s.user_id.clone(), false);
    resp.device_id = Some(s.device_id.clone());
    Ok(resp)
}

/// Registration is closed unless the request carries a valid single-use registration token
/// (`m.login.registration_token`), or open registration is configured (`m.login.dummy`).
async fn register(ctx: Ctx, req: register::v3::Request) -> Result<register::v3::Response> {
    let hs = &ctx.hs;
    if req.kind != register::RegistrationKind::User {
        return Err(Error::GuestAccessForbidden);
    }
    let open = hs.config.open_registration;
    let flow = if open {
        AuthType::Dummy
    } else {
        AuthType::RegistrationToken
    };
    let localpart = match &req.username {
        Some(name) => name.to_lowercase(),
        None => crate::accounts::random_string(12).to_lowercase(),
    };
    // Check the name before asking for auth (and before a registration token is spent), so
    // clients learn early that it is invalid or taken.
    hs.accounts.new_user_id(&localpart)?;
    if !hs.accounts.username_available(&localpart).await? {
        return Err(Error::UserInUse);
    }
    let token = match &req.auth {
        Some(AuthData::RegistrationToken(t)) if !open => Some(t.token.clone()),
        Some(AuthData::Dummy(_)) if open => None,
        _ => {
            let mut info = UiaaInfo::new(vec![AuthFlow::new(vec![flow])]);
            info.session = Some(crate::accounts::random_string(24));
            return Err(Error::Uiaa(Box::new(info)));
        }
    };
    let password = req
        .password
        .as_deref()
        .ok_or_else(|| Error::MissingParam("password is required".into()))?;
    crate::accounts::hashing::check_new_password(password)?;
    if let Some(token) = &token {
        // Consumed before the account exists: a failed creation costs the token, a race
        // between two registrations cannot use it twice.
        if !hs.accounts.consume_registration_token(token).await? {
            return Err(Error::forbidden("invalid or used registration token"));
        }
    }
    let user_id = hs
        .accounts
        .create_user(&localpart, Some(password), false)
        .await?;
    tracing::info!(user = %user_id, with_token = token.is_some(), "registered");
    let mut resp = register::v3::Response::new(user_id.clone());
    if !req.inhibit_login {
        let ip = ctx.ip.map(|a| a.to_string());
        let device: Option<OwnedDeviceId> = req.device_id.clone();
        let (device_id, tokens) = hs
            .accounts
            .new_session(
                &user_id,
                device,
                req.initial_device_display_name.as_deref(),
                req.refresh_token,
                ip.as_deref(),
            )
            .await?;
        resp.access_token = Some(tokens.access_token);
        resp.device_id = Some(device_id);
        resp.refresh_token = tokens.refresh_token;
        resp.expires_in = tokens.expires_in;
    }
    Ok(resp)
}

async fn username_available(
    ctx: Ctx,
    req: get_username_availability::v3::Request,
) -> Result<get_username_availability::v3::Response> {
    if !ctx.hs.accounts.username_available(&req.username).await? {
        return Err(Error::UserInUse);
    }
    Ok(get_username_availability::v3::Response::new(true))
}

async fn registration_token_validity(
    ctx: Ctx,
    req: check_registration_token_validity::v1::Request,
) -> Result<check_registration_token_validity::v1::Response> {
    Ok(check_registration_token_validity::v1::Response::new(
        ctx.hs.accounts.registration_token_valid(&req.token).await?,
    ))
}
