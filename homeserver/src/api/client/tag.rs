//! Room tags.

use axum::Router;
use ruma::api::client::tag::{create_tag, delete_tag, get_tags};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, get);
    let r = route(r, put);
    route(r, delete)
}

fn own(ctx: &Ctx, user: &ruma::UserId) -> Result<()> {
    if ctx.session()?.user_id != user {
        return Err(Error::forbidden("you can only access your own tags"));
    }
    Ok(())
}

async fn get(ctx: Ctx, req: get_tags::v3::Request) -> Result<get_tags::v3::Response> {
    own(&ctx, &req.user_id)?;
    Ok(get_tags::v3::Response::new(
        ctx.hs.tags(&req.user_id, &req.room_id).await?,
    ))
}

async fn put(ctx: Ctx, req: create_tag::v3::Request) -> Result<create_tag::v3::Response> {
    own(&ctx, &req.user_id)?;
    ctx.hs
        .set_tag(&req.user_id, &req.room_id, &req.tag, Some(req.tag_info))
        .await?;
    Ok(create_tag::v3::Response::new())
}

async fn delete(ctx: Ctx, req: delete_tag::v3::Request) -> Result<delete_tag::v3::Response> {
    own(&ctx, &req.user_id)?;
    ctx.hs
        .set_tag(&req.user_id, &req.room_id, &req.tag, None)
        .await?;
    Ok(delete_tag::v3::Response::new())
}
