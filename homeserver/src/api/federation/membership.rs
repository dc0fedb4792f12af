//! Remote users joining our rooms: `GET /_matrix/federation/v1/make_join/{roomId}/{userId}`
//! and `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`.

use axum::Router;
use ruma::api::federation::membership::{create_join_event, prepare_join_event};
use serde_json::value::RawValue;

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, make_join);
    route(r, send_join)
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
