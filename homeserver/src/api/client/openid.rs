//! OpenID: a token that proves the user's identity to a third party — in TI-M the
//! VZD-FHIR-Directory's `/tim-authenticate`, which exchanges it for a directory search token
//! (D-AUTH-01) after checking it at `/_matrix/federation/v1/openid/userinfo`.

use axum::Router;
use ruma::{api::client::account::request_openid_token, authentication::TokenType};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    route(r, request_token)
}

async fn request_token(
    ctx: Ctx,
    req: request_openid_token::v3::Request,
) -> Result<request_openid_token::v3::Response> {
    let user = &ctx.session()?.user_id;
    if req.user_id != *user {
        return Err(Error::forbidden(
            "you can only request OpenID tokens for yourself",
        ));
    }
    let (token, expires_in) = ctx.hs.accounts.request_openid_token(user).await?;
    Ok(request_openid_token::v3::Response::new(
        token,
        TokenType::Bearer,
        ctx.hs.server_name.clone(),
        expires_in,
    ))
}
