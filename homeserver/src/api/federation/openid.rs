//! `GET /_matrix/federation/v1/openid/userinfo`: who an OpenID token belongs to. Not signed
//! (the caller is a third party such as the VZD-FHIR-Directory, A-FED-11); the token itself is
//! the credential, so unknown and expired tokens get 401 `M_UNKNOWN_TOKEN`.

use axum::Router;
use ruma::api::federation::openid::get_openid_userinfo;

use crate::{
    api::{Ctx, route},
    error::Result,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    route(r, userinfo)
}

async fn userinfo(
    ctx: Ctx,
    req: get_openid_userinfo::v1::Request,
) -> Result<get_openid_userinfo::v1::Response> {
    let user = ctx.hs.accounts.openid_user(&req.access_token).await?;
    Ok(get_openid_userinfo::v1::Response::new(user))
}
