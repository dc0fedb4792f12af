//! Profiles: display name, avatar and custom fields. Look-ups need an access token (TI-M
//! A-ROOM-13), although the Matrix spec leaves them open.

use axum::Router;
use ruma::{
    api::client::profile::{
        delete_profile_field, get_profile, get_profile_field, set_profile_field,
    },
    profile::{ProfileFieldValue, UserProfile},
};

use crate::{
    api::{Ctx, Guard, route, route_guarded},
    error::{Error, Result},
    profiles::Editor,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route_guarded(r, Guard::authenticated(), get);
    let r = route_guarded(r, Guard::authenticated(), get_field);
    let r = route(r, set_field);
    route(r, delete_field)
}

async fn load(ctx: &Ctx, user: &ruma::UserId) -> Result<UserProfile> {
    let profile = ctx
        .hs
        .profile(user)
        .await?
        .ok_or_else(|| Error::not_found("profile not found"))?;
    Ok(profile.into_iter().collect())
}

async fn get(ctx: Ctx, req: get_profile::v3::Request) -> Result<get_profile::v3::Response> {
    Ok(load(&ctx, &req.user_id).await?.into())
}

async fn get_field(
    ctx: Ctx,
    req: get_profile_field::v3::Request,
) -> Result<get_profile_field::v3::Response> {
    let profile = load(&ctx, &req.user_id).await?;
    let field = req.field.as_str();
    let value = profile
        .get(field)
        .ok_or_else(|| Error::not_found(format!("the profile has no {field}")))?;
    let value = ProfileFieldValue::new(field, value.clone())
        .map_err(|e| Error::internal(format!("stored profile field: {e}")))?;
    Ok(get_profile_field::v3::Response::new(value))
}

fn editor(ctx: &Ctx, user: &ruma::UserId) -> Result<Editor> {
    let s = ctx.session()?;
    if s.user_id != user {
        return Err(Error::forbidden("you can only change your own profile"));
    }
    Ok(Editor::User {
        is_admin: s.is_admin,
    })
}

async fn set_field(
    ctx: Ctx,
    req: set_profile_field::v3::Request,
) -> Result<set_profile_field::v3::Response> {
    let editor = editor(&ctx, &req.user_id)?;
    let field = req.value.field_name();
    let value = req.value.value().into_owned();
    ctx.hs
        .set_profile_field(editor, &req.user_id, field.as_str(), Some(value))
        .await?;
    Ok(set_profile_field::v3::Response::new())
}

async fn delete_field(
    ctx: Ctx,
    req: delete_profile_field::v3::Request,
) -> Result<delete_profile_field::v3::Response> {
    let editor = editor(&ctx, &req.user_id)?;
    ctx.hs
        .set_profile_field(editor, &req.user_id, req.field.as_str(), None)
        .await?;
    Ok(delete_profile_field::v3::Response::new())
}
