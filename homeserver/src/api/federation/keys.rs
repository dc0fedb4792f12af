//! Server keys and discovery: `GET /_matrix/key/v2/server` (our signing key, signed, with its
//! validity), the notary `/_matrix/key/v2/query` (other servers' keys, signed by them and by
//! us; TI-M serves both key endpoints, A-FED-15) and `GET /_matrix/federation/v1/version`.

use axum::Router;
use ruma::api::federation::discovery::{
    get_remote_server_keys, get_remote_server_keys_batch, get_server_keys, get_server_version,
};

use crate::{
    api::{Ctx, route},
    error::Result,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, server_keys);
    let r = route(r, query_keys);
    let r = route(r, query_keys_batch);
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

async fn query_keys(
    ctx: Ctx,
    req: get_remote_server_keys::v2::Request,
) -> Result<get_remote_server_keys::v2::Response> {
    let until = i64::from(req.minimum_valid_until_ts.0);
    let servers = [(req.server_name, vec![], Some(until))];
    Ok(get_remote_server_keys::v2::Response::new(
        ctx.hs.federation.notary(&servers).await?,
    ))
}

async fn query_keys_batch(
    ctx: Ctx,
    req: get_remote_server_keys_batch::v2::Request,
) -> Result<get_remote_server_keys_batch::v2::Response> {
    let servers: Vec<_> = req
        .server_keys
        .into_iter()
        .map(|(server, keys)| {
            // The latest time any key must be valid until is what the answer must reach.
            let until = keys
                .values()
                .filter_map(|c| c.minimum_valid_until_ts)
                .map(|t| i64::from(t.0))
                .max();
            let wanted = keys.into_keys().map(|k| k.to_string()).collect();
            (server, wanted, until)
        })
        .collect();
    Ok(get_remote_server_keys_batch::v2::Response::new(
        ctx.hs.federation.notary(&servers).await?,
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
