//! Other servers asking for our users' keys so their users can encrypt for them:
//! `POST /_matrix/federation/v1/user/keys/query`, `POST /v1/user/keys/claim` and
//! `GET /v1/user/devices/{userId}`.

use axum::Router;
use ruma::{
    UInt,
    api::federation::{
        device::get_devices,
        keys::{claim_keys, get_keys},
    },
};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

/// Users one query from another server may ask for (as a client may).
const MAX_QUERY_USERS: usize = 1000;

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, query);
    let r = route(r, claim);
    route(r, devices)
}

async fn query(ctx: Ctx, req: get_keys::v1::Request) -> Result<get_keys::v1::Response> {
    ctx.origin()?;
    if req.device_keys.len() > MAX_QUERY_USERS
        || req.device_keys.values().any(|d| d.len() > MAX_QUERY_USERS)
    {
        return Err(Error::invalid_param(format!(
            "a key query asks for at most {MAX_QUERY_USERS} users and devices per user"
        )));
    }
    let keys = ctx.hs.local_keys(None, &req.device_keys).await?;
    let mut resp = get_keys::v1::Response::new(keys.device_keys);
    resp.master_keys = keys.master_keys;
    resp.self_signing_keys = keys.self_signing_keys;
    Ok(resp)
}

async fn claim(ctx: Ctx, req: claim_keys::v1::Request) -> Result<claim_keys::v1::Response> {
    ctx.origin()?;
    let keys = ctx.hs.claim_local_keys(&req.one_time_keys).await?;
    Ok(claim_keys::v1::Response::new(keys))
}

async fn devices(ctx: Ctx, req: get_devices::v1::Request) -> Result<get_devices::v1::Response> {
    ctx.origin()?;
    if req.user_id.server_name() != ctx.hs.server_name {
        return Err(Error::not_found("the user is not on this server"));
    }
    let wanted = [(req.user_id.clone(), vec![])].into();
    let mut keys = ctx.hs.local_keys(None, &wanted).await?;
    let position = ctx
        .hs
        .stores
        .keys
        .device_list_position(req.user_id.as_str())
        .await?;
    let mut resp = get_devices::v1::Response::new(
        req.user_id.clone(),
        UInt::try_from(position.max(0)).unwrap_or_default(),
    );
    resp.devices = keys
        .device_keys
        .remove(&req.user_id)
        .unwrap_or_default()
        .into_iter()
        .map(|(device, keys)| {
            let name = keys
                .get_field::<serde_json::Value>("unsigned")
                .ok()
                .flatten()
                .and_then(|u| u["device_display_name"].as_str().map(str::to_owned));
            let mut d = get_devices::v1::UserDevice::new(device, keys);
            d.device_display_name = name;
            d
        })
        .collect();
    resp.master_key = keys.master_keys.remove(&req.user_id);
    resp.self_signing_key = keys.self_signing_keys.remove(&req.user_id);
    Ok(resp)
}
