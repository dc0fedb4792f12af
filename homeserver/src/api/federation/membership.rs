//! Remote users joining and leaving our rooms (`make_join`, `send_join` v2, `make_leave`,
//! `send_leave` v2) and other servers inviting our users (`invite` v2).

use axum::Router;
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_leave_event, prepare_join_event, prepare_leave_event,
};
use serde_json::value::RawValue;

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, make_join);
    let r = route(r, send_join);
    let r = route(r, make_leave);
    let r = route(r, send_leave);
    route(r, invite)
}

async fn make_leave(
    ctx: Ctx,
    req: prepare_leave_event::v1::Request,
) -> Result<prepare_leave_event::v1::Response> {
    let origin = ctx.origin()?;
    let (version, template) = ctx
        .hs
        .federation
        .receiver
        .make_leave(origin, &req.room_id, &req.user_id)
        .await?;
    Ok(prepare_leave_event::v1::Response::new(
        Some(version),
        raw(template)?,
    ))
}

async fn send_leave(
    ctx: Ctx,
    req: create_leave_event::v2::Request,
) -> Result<create_leave_event::v2::Response> {
    let origin = ctx.origin()?;
    ctx.hs
        .federation
        .receiver
        .send_leave(origin, &req.room_id, &req.event_id, &req.pdu)
        .await?;
    Ok(create_leave_event::v2::Response::new())
}

async fn invite(ctx: Ctx, req: create_invite::v2::Request) -> Result<create_invite::v2::Response> {
    let origin = ctx.origin()?;
    let signed = ctx
        .hs
        .federation
        .receiver
        .invite(
            origin,
            &req.room_id,
            &req.event_id,
            &req.room_version,
            &req.event,
            &req.invite_room_state,
        )
        .await?;
    Ok(create_invite::v2::Response::new(raw(signed)?))
}

async fn make_join(
    ctx: Ctx,
    req: prepare_join_event::v1::Request,
) -> Result<prepare_join_event::v1::Response> {
    let origin = ctx.origin()?;
    let (version, template) = ctx
        .hs
        .federation
        .receiver
        .make_join(origin, &req.room_id, &req.user_id, &req.ver)
        .await?;
    let mut response = prepare_join_event::v1::Response::new(raw(template)?);
    response.room_version = Some(version);
    Ok(response)
}

async fn send_join(
    ctx: Ctx,
    req: create_join_event::v2::Request,
) -> Result<create_join_event::v2::Response> {
    let origin = ctx.origin()?;
    let joined = ctx
        .hs
        .federation
        .receiver
        .send_join(origin, &req.room_id, &req.event_id, &req.pdu)
        .await?;
    let mut state = create_join_event::v2::RoomState::new();
    state.state = joined.state.into_iter().map(raw).collect::<Result<_>>()?;
    state.auth_chain = joined
        .auth_chain
        .into_iter()
        .map(raw)
        .collect::<Result<_>>()?;
    Ok(create_join_event::v2::Response::new(state))
}

fn raw(json: String) -> Result<Box<RawValue>> {
    RawValue::from_string(json).map_err(Error::internal)
}
