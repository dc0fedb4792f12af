//! Our media for other servers: `GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `GET /_matrix/federation/v1/media/thumbnail/{mediaId}` (signed requests, like all of the
//! federation API).

use axum::Router;
use ruma::api::federation::authenticated_media::{
    ContentMetadata, get_content, get_content_thumbnail,
};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    federation::media::answer,
    media::thumbnail::Method,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, download);
    route(r, thumbnail)
}

async fn download(ctx: Ctx, req: get_content::v1::Request) -> Result<get_content::v1::Response> {
    ctx.origin()?;
    let hs = &ctx.hs;
    let file = hs
        .media
        .download(&hs.server_name, &req.media_id, req.timeout_ms)
        .await?;
    Ok(get_content::v1::Response::new(
        ContentMetadata::new(),
        answer(file).await?,
    ))
}

async fn thumbnail(
    ctx: Ctx,
    req: get_content_thumbnail::v1::Request,
) -> Result<get_content_thumbnail::v1::Response> {
    ctx.origin()?;
    let method = match req.method {
        Some(ruma::media::Method::Crop) => Method::Crop,
        None | Some(ruma::media::Method::Scale) => Method::Scale,
        Some(_) => return Err(Error::invalid_param("method must be crop or scale")),
    };
    let dim = |v: ruma::UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    let hs = &ctx.hs;
    let file = hs
        .media
        .thumbnail(
            &hs.server_name,
            &req.media_id,
            dim(req.width),
            dim(req.height),
            method,
            req.timeout_ms,
        )
        .await?;
    Ok(get_content_thumbnail::v1::Response::new(
        ContentMetadata::new(),
        answer(file).await?,
    ))
}
