//! Queries from other servers: `GET /_matrix/federation/v1/query/profile`.

use axum::Router;
use ruma::api::federation::query::get_profile_information;

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    route(r, profile)
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
