//! Server keys and discovery: `GET /_matrix/key/v2/server` (our signing key, signed, with its
//! validity) and `GET /_matrix/federation/v1/version`.

use axum::Router;
use ruma::api::federation::discovery::{get_server_keys, get_server_version};

use crate::{
    api::{Ctx, route},
    error::Result,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, server_keys);
    route(r, version)
}

async fn server_keys(
    ctx: Ctx,
    _: get_server_keys::v2::Request,
) -> Result<get_server_keys::v2::Response> {
    ctx.hs.federation.check_enabled()?;
    Ok(get_server_keys::v2::Response::new(
        ctx.hs.federation.keys.own_document()?,
    ))
}

async fn version(
    ctx: Ctx,
    _: get_server_version::v1::Request,
) -> Result<get_server_version::v1::Response> {
    ctx.hs.federation.check_enabled()?;
    let mut server = get_server_version::v1::Server::new();
    server.name = Some("tim-homeserver".into());
    server.version = Some(env!("CARGO_PKG_VERSION").into());
    let mut response = get_server_version::v1::Response::new();
    response.server = Some(server);
    Ok(response)
}
