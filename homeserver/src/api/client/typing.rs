//! Typing notifications.

use axum::Router;
use ruma::api::client::typing::create_typing_event::{self, v3::Typing};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    route(r, typing)
}

async fn typing(
    ctx: Ctx,
    req: create_typing_event::v3::Request,
) -> Result<create_typing_event::v3::Response> {
    if req.user_id != ctx.session()?.user_id {
        return Err(Error::forbidden("you can only set your own typing state"));
    }
    let timeout = match req.state {
        Typing::Yes(info) => Some(info.timeout),
        _ => None,
    };
    ctx.hs
        .set_typing(&req.user_id, &req.room_id, timeout)
        .await?;
    Ok(create_typing_event::v3::Response::new())
}
