//! End-to-end encryption endpoints: device keys, one-time keys, key changes, to-device
//! messages.

use axum::Router;
use ruma::api::client::{
    keys::{
        claim_keys, get_key_changes, get_keys, upload_keys, upload_signatures, upload_signing_keys,
    },
    to_device::send_event_to_device,
};

use crate::{
    api::{Ctx, Guard, route, route_guarded},
    error::{Error, Result},
    sync::parse_token,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, upload);
    // Stock clients ask with `{}` or no body at all; Synapse reads that as no users.
    let r = route_guarded(r, Guard::body_hook(default_device_keys), query);
    let r = route(r, claim);
    let r = route(r, changes);
    let r = route(r, signing_keys);
    let r = route(r, signatures);
    route(r, send_to_device)
}

async fn upload(ctx: Ctx, req: upload_keys::v3::Request) -> Result<upload_keys::v3::Response> {
    let counts = ctx.hs.upload_keys(ctx.session()?, req).await?;
    Ok(upload_keys::v3::Response::new(counts))
}

/// A key query without `device_keys` asks for nobody's keys (Ruma's type requires the field).
pub(crate) fn default_device_keys(body: bytes::Bytes) -> Result<bytes::Bytes> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(bytes::Bytes::from_static(br#"{"device_keys":{}}"#));
    }
    let mut object: serde_json::Map<String, serde_json::Value> = crate::api::json_body(&body)?;
    if object.contains_key("device_keys") {
        return Ok(body);
    }
    object.insert("device_keys".into(), serde_json::json!({}));
    Ok(serde_json::to_vec(&object).map_err(Error::internal)?.into())
}

/// Users (and devices per user) one key query may ask for.
const MAX_QUERY_USERS: usize = 1000;

async fn query(ctx: Ctx, req: get_keys::v3::Request) -> Result<get_keys::v3::Response> {
    if req.device_keys.len() > MAX_QUERY_USERS
        || req.device_keys.values().any(|d| d.len() > MAX_QUERY_USERS)
    {
        return Err(Error::invalid_param(format!(
            "a key query asks for at most {MAX_QUERY_USERS} users and devices per user"
        )));
    }
    ctx.hs.query_keys(&ctx.session()?.user_id, req).await
}

async fn claim(ctx: Ctx, req: claim_keys::v3::Request) -> Result<claim_keys::v3::Response> {
    ctx.hs.claim_keys(req).await
}

async fn changes(
    ctx: Ctx,
    req: get_key_changes::v3::Request,
) -> Result<get_key_changes::v3::Response> {
    let lists = ctx
        .hs
        .key_changes(
            ctx.session()?,
            parse_token(&req.from)?,
            parse_token(&req.to)?,
        )
        .await?;
    Ok(get_key_changes::v3::Response::new(
        lists.changed,
        lists.left,
    ))
}

async fn send_to_device(
    ctx: Ctx,
    req: send_event_to_device::v3::Request,
) -> Result<send_event_to_device::v3::Response> {
    ctx.hs.send_to_device(ctx.session()?, req).await?;
    Ok(send_event_to_device::v3::Response::new())
}

async fn signing_keys(
    ctx: Ctx,
    req: upload_signing_keys::v3::Request,
) -> Result<upload_signing_keys::v3::Response> {
    ctx.hs.upload_signing_keys(ctx.session()?, req).await?;
    Ok(upload_signing_keys::v3::Response::new())
}

async fn signatures(
    ctx: Ctx,
    req: upload_signatures::v3::Request,
) -> Result<upload_signatures::v3::Response> {
    ctx.hs.upload_signatures(ctx.session()?, req).await
}
