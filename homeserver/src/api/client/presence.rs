//! Presence of users.

use std::time::Duration;

use axum::Router;
use ruma::api::client::presence::{get_presence, set_presence};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, get);
    route(r, set)
}

/// Longest status message accepted.
const MAX_STATUS_CHARS: usize = 1024;

async fn get(ctx: Ctx, req: get_presence::v3::Request) -> Result<get_presence::v3::Response> {
    let me = &ctx.session()?.user_id;
    // Presence is for people one shares a room with (and oneself).
    if &req.user_id != me
        && !ctx
            .hs
            .stores
            .events
            .users_sharing_rooms(me.as_str())
            .await?
            .iter()
            .any(|u| u == req.user_id.as_str())
    {
        return Err(Error::forbidden("you share no room with this user"));
    }
    if req.user_id.server_name() == ctx.hs.server_name
        && !ctx.hs.accounts.user_exists(&req.user_id).await?
    {
        return Err(Error::not_found("no such user"));
    }
    let (shown, ago) = ctx.hs.presence.get(&req.user_id).await?;
    let mut resp = get_presence::v3::Response::new(shown.state);
    resp.status_msg = shown.status_msg;
    resp.currently_active = Some(shown.currently_active);
    resp.last_active_ago = ago.map(|ms| Duration::from_millis(ms.max(0) as u64));
    Ok(resp)
}

async fn set(ctx: Ctx, req: set_presence::v3::Request) -> Result<set_presence::v3::Response> {
    if req.user_id != ctx.session()?.user_id {
        return Err(Error::forbidden("you can only set your own presence"));
    }
    crate::api::one_of(
        "presence",
        req.presence.as_str(),
        &["online", "offline", "unavailable"],
    )?;
    if req
        .status_msg
        .as_ref()
        .is_some_and(|m| m.chars().count() > MAX_STATUS_CHARS)
    {
        return Err(Error::invalid_param(
            "status_msg is at most 1024 characters",
        ));
    }
    ctx.hs
        .presence
        .set(&req.user_id, req.presence, req.status_msg)
        .await?;
    Ok(set_presence::v3::Response::new())
}
