//! Global and per-room account data.

use axum::Router;
use ruma::{
    api::client::config::{
        get_global_account_data, get_room_account_data, set_global_account_data,
        set_room_account_data,
    },
    serde::Raw,
};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, get_global);
    let r = route(r, set_global);
    let r = route(r, get_room);
    route(r, set_room)
}

fn check_user(ctx: &Ctx, user: &ruma::UserId) -> Result<()> {
    if ctx.session()?.user_id != user {
        return Err(Error::forbidden(
            "you can only access your own account data",
        ));
    }
    Ok(())
}

async fn store(ctx: &Ctx, room: &str, kind: &str, content: &str) -> Result<()> {
    // The spec reserves these for their own endpoints.
    if matches!(kind, "m.fully_read" | "m.push_rules") {
        return Err(Error::ServerManagedAccountData(kind.to_owned()));
    }
    ctx.hs
        .set_account_data(&ctx.session()?.user_id, room, kind, content)
        .await
}

async fn load(ctx: &Ctx, room: &str, kind: &str) -> Result<Box<serde_json::value::RawValue>> {
    let content = ctx
        .hs
        .stores
        .account_data
        .get(ctx.session()?.user_id.as_str(), room, kind)
        .await?;
    let content = content.ok_or_else(|| Error::not_found("account data not found"))?;
    serde_json::value::RawValue::from_string(content).map_err(Error::internal)
}

async fn get_global(
    ctx: Ctx,
    req: get_global_account_data::v3::Request,
) -> Result<get_global_account_data::v3::Response> {
    check_user(&ctx, &req.user_id)?;
    Ok(get_global_account_data::v3::Response::new(Raw::from_json(
        load(&ctx, "", &req.event_type.to_string()).await?,
    )))
}

async fn set_global(
    ctx: Ctx,
    req: set_global_account_data::v3::Request,
) -> Result<set_global_account_data::v3::Response> {
    check_user(&ctx, &req.user_id)?;
    store(&ctx, "", &req.event_type.to_string(), req.data.json().get()).await?;
    Ok(set_global_account_data::v3::Response::new())
}

async fn get_room(
    ctx: Ctx,
    req: get_room_account_data::v3::Request,
) -> Result<get_room_account_data::v3::Response> {
    check_user(&ctx, &req.user_id)?;
    Ok(get_room_account_data::v3::Response::new(Raw::from_json(
        load(&ctx, req.room_id.as_str(), &req.event_type.to_string()).await?,
    )))
}

async fn set_room(
    ctx: Ctx,
    req: set_room_account_data::v3::Request,
) -> Result<set_room_account_data::v3::Response> {
    check_user(&ctx, &req.user_id)?;
    store(
        &ctx,
        req.room_id.as_str(),
        &req.event_type.to_string(),
        req.data.json().get(),
    )
    .await?;
    Ok(set_room_account_data::v3::Response::new())
}
