//! Queries from other servers: `GET /_matrix/federation/v1/query/profile` and
//! `/query/directory` (our room aliases).

use axum::Router;
use ruma::api::federation::query::{get_profile_information, get_room_information};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, profile);
    route(r, room_alias)
}

async fn room_alias(
    ctx: Ctx,
    req: get_room_information::v1::Request,
) -> Result<get_room_information::v1::Response> {
    ctx.origin()?;
    if req.room_alias.server_name() != ctx.hs.server_name {
        return Err(Error::not_found("the alias is not on this server"));
    }
    let (room, servers) = crate::directory::local_alias(&ctx.hs, &req.room_alias).await?;
    Ok(get_room_information::v1::Response::new(room, servers))
}

async fn profile(
    ctx: Ctx,
    req: get_profile_information::v1::Request,
) -> Result<get_profile_information::v1::Response> {
    ctx.origin()?;
    if req.user_id.server_name() != ctx.hs.server_name {
        return Err(Error::not_found("the user is not on this server"));
    }
    let profile = ctx
        .hs
        .profile(&req.user_id)
        .await?
        .ok_or_else(|| Error::not_found("profile not found"))?;
    let wanted = req.field.as_ref().map(|f| f.as_str().to_owned());
    Ok(profile
        .into_iter()
        .filter(|(field, _)| wanted.as_ref().is_none_or(|w| w == field))
        .collect())
}
