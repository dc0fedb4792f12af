//! Server-side key backup (`/room_keys`).

use std::collections::BTreeMap;

use axum::Router;
use ruma::api::client::backup::{
    RoomKeyBackup, add_backup_keys, add_backup_keys_for_room, add_backup_keys_for_session,
    create_backup_version, delete_backup_keys, delete_backup_keys_for_room,
    delete_backup_keys_for_session, delete_backup_version, get_backup_info, get_backup_keys,
    get_backup_keys_for_room, get_backup_keys_for_session, get_latest_backup_info,
    update_backup_version,
};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, create_version);
    let r = route(r, latest_version);
    let r = route(r, version);
    let r = route(r, update_version);
    let r = route(r, delete_version);
    let r = route(r, put_all);
    let r = route(r, put_room);
    let r = route(r, put_session);
    let r = route(r, get_all);
    let r = route(r, get_room);
    let r = route(r, get_session);
    let r = route(r, delete_all);
    let r = route(r, delete_room);
    route(r, delete_session)
}

async fn create_version(
    ctx: Ctx,
    req: create_backup_version::v3::Request,
) -> Result<create_backup_version::v3::Response> {
    let version = ctx
        .hs
        .create_backup_version(&ctx.session()?.user_id, &req.algorithm)
        .await?;
    Ok(create_backup_version::v3::Response::new(version))
}

async fn latest_version(
    ctx: Ctx,
    _req: get_latest_backup_info::v3::Request,
) -> Result<get_latest_backup_info::v3::Response> {
    let i = ctx.hs.backup_info(&ctx.session()?.user_id, None).await?;
    Ok(get_latest_backup_info::v3::Response::new(
        i.algorithm,
        i.count,
        i.etag,
        i.version,
    ))
}

async fn version(
    ctx: Ctx,
    req: get_backup_info::v3::Request,
) -> Result<get_backup_info::v3::Response> {
    let i = ctx
        .hs
        .backup_info(&ctx.session()?.user_id, Some(&req.version))
        .await?;
    Ok(get_backup_info::v3::Response::new(
        i.algorithm,
        i.count,
        i.etag,
        i.version,
    ))
}

async fn update_version(
    ctx: Ctx,
    req: update_backup_version::v3::Request,
) -> Result<update_backup_version::v3::Response> {
    ctx.hs
        .update_backup_version(&ctx.session()?.user_id, &req.version, &req.algorithm)
        .await?;
    Ok(update_backup_version::v3::Response::new())
}

async fn delete_version(
    ctx: Ctx,
    req: delete_backup_version::v3::Request,
) -> Result<delete_backup_version::v3::Response> {
    ctx.hs
        .delete_backup_version(&ctx.session()?.user_id, &req.version)
        .await?;
    Ok(delete_backup_version::v3::Response::new())
}

async fn put_all(
    ctx: Ctx,
    req: add_backup_keys::v3::Request,
) -> Result<add_backup_keys::v3::Response> {
    let s = ctx
        .hs
        .put_backup_keys(&ctx.session()?.user_id, &req.version, &req.rooms)
        .await?;
    Ok(add_backup_keys::v3::Response::new(s.etag, s.count))
}

async fn put_room(
    ctx: Ctx,
    req: add_backup_keys_for_room::v3::Request,
) -> Result<add_backup_keys_for_room::v3::Response> {
    let rooms = BTreeMap::from([(req.room_id, RoomKeyBackup::new(req.sessions))]);
    let s = ctx
        .hs
        .put_backup_keys(&ctx.session()?.user_id, &req.version, &rooms)
        .await?;
    Ok(add_backup_keys_for_room::v3::Response::new(s.etag, s.count))
}

async fn put_session(
    ctx: Ctx,
    req: add_backup_keys_for_session::v3::Request,
) -> Result<add_backup_keys_for_session::v3::Response> {
    let sessions = BTreeMap::from([(req.session_id, req.session_data)]);
    let rooms = BTreeMap::from([(req.room_id, RoomKeyBackup::new(sessions))]);
    let s = ctx
        .hs
        .put_backup_keys(&ctx.session()?.user_id, &req.version, &rooms)
        .await?;
    Ok(add_backup_keys_for_session::v3::Response::new(
        s.etag, s.count,
    ))
}

async fn get_all(
    ctx: Ctx,
    req: get_backup_keys::v3::Request,
) -> Result<get_backup_keys::v3::Response> {
    let rooms = ctx
        .hs
        .backup_keys(&ctx.session()?.user_id, &req.version, None, None)
        .await?;
    Ok(get_backup_keys::v3::Response::new(rooms))
}

async fn get_room(
    ctx: Ctx,
    req: get_backup_keys_for_room::v3::Request,
) -> Result<get_backup_keys_for_room::v3::Response> {
    let mut rooms = ctx
        .hs
        .backup_keys(
            &ctx.session()?.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            None,
        )
        .await?;
    let sessions = rooms
        .remove(&req.room_id)
        .map(|r| r.sessions)
        .unwrap_or_default();
    Ok(get_backup_keys_for_room::v3::Response::new(sessions))
}

async fn get_session(
    ctx: Ctx,
    req: get_backup_keys_for_session::v3::Request,
) -> Result<get_backup_keys_for_session::v3::Response> {
    let mut rooms = ctx
        .hs
        .backup_keys(
            &ctx.session()?.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            Some(&req.session_id),
        )
        .await?;
    let key = rooms
        .remove(&req.room_id)
        .and_then(|mut r| r.sessions.remove(&req.session_id))
        .ok_or_else(|| Error::not_found("no key for this session in the backup"))?;
    Ok(get_backup_keys_for_session::v3::Response::new(key))
}

async fn delete_all(
    ctx: Ctx,
    req: delete_backup_keys::v3::Request,
) -> Result<delete_backup_keys::v3::Response> {
    let s = ctx
        .hs
        .delete_backup_keys(&ctx.session()?.user_id, &req.version, None, None)
        .await?;
    Ok(delete_backup_keys::v3::Response::new(s.etag, s.count))
}

async fn delete_room(
    ctx: Ctx,
    req: delete_backup_keys_for_room::v3::Request,
) -> Result<delete_backup_keys_for_room::v3::Response> {
    let s = ctx
        .hs
        .delete_backup_keys(
            &ctx.session()?.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            None,
        )
        .await?;
    Ok(delete_backup_keys_for_room::v3::Response::new(
        s.etag, s.count,
    ))
}

async fn delete_session(
    ctx: Ctx,
    req: delete_backup_keys_for_session::v3::Request,
) -> Result<delete_backup_keys_for_session::v3::Response> {
    let s = ctx
        .hs
        .delete_backup_keys(
            &ctx.session()?.user_id,
            &req.version,
            Some(req.room_id.as_str()),
            Some(&req.session_id),
        )
        .await?;
    Ok(delete_backup_keys_for_session::v3::Response::new(
        s.etag, s.count,
    ))
}
