//! Reading a room's graph from another server: `GET /v1/event/{eventId}`,
//! `GET /v1/state/{roomId}`, `GET /v1/state_ids/{roomId}`, `GET /v1/event_auth/{roomId}/{eventId}`,
//! `GET /v1/backfill/{roomId}` and `POST /v1/get_missing_events/{roomId}`.

use axum::Router;
use ruma::{
    MilliSecondsSinceUnixEpoch, OwnedEventId,
    api::federation::{
        authorization::get_event_authorization,
        backfill::get_backfill,
        event::{get_event, get_missing_events, get_room_state, get_room_state_ids},
    },
};
use serde_json::value::RawValue;

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, event);
    let r = route(r, state);
    let r = route(r, state_ids);
    let r = route(r, event_auth);
    let r = route(r, backfill);
    route(r, missing_events)
}

async fn event(ctx: Ctx, req: get_event::v1::Request) -> Result<get_event::v1::Response> {
    let origin = ctx.origin()?;
    let pdu = ctx
        .hs
        .federation
        .history
        .event(origin, &req.event_id)
        .await?;
    Ok(get_event::v1::Response::new(
        ctx.hs.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        raw(pdu)?,
    ))
}

async fn state(ctx: Ctx, req: get_room_state::v1::Request) -> Result<get_room_state::v1::Response> {
    let origin = ctx.origin()?;
    let at = ctx
        .hs
        .federation
        .history
        .state_at(origin, (&req.room_id, &req.event_id), false)
        .await?;
    Ok(get_room_state::v1::Response::new(
        raws(at.auth_chain)?,
        raws(at.state)?,
    ))
}

async fn state_ids(
    ctx: Ctx,
    req: get_room_state_ids::v1::Request,
) -> Result<get_room_state_ids::v1::Response> {
    let origin = ctx.origin()?;
    let at = ctx
        .hs
        .federation
        .history
        .state_at(origin, (&req.room_id, &req.event_id), true)
        .await?;
    Ok(get_room_state_ids::v1::Response::new(
        ids(at.auth_chain)?,
        ids(at.state)?,
    ))
}

async fn event_auth(
    ctx: Ctx,
    req: get_event_authorization::v1::Request,
) -> Result<get_event_authorization::v1::Response> {
    let origin = ctx.origin()?;
    let chain = ctx
        .hs
        .federation
        .history
        .auth_chain(origin, &req.room_id, &req.event_id)
        .await?;
    Ok(get_event_authorization::v1::Response::new(raws(chain)?))
}

async fn backfill(ctx: Ctx, req: get_backfill::v1::Request) -> Result<get_backfill::v1::Response> {
    let origin = ctx.origin()?;
    let pdus = ctx
        .hs
        .federation
        .history
        .backfill(origin, &req.room_id, &req.v, u64::from(req.limit))
        .await?;
    Ok(get_backfill::v1::Response::new(
        ctx.hs.server_name.clone(),
        MilliSecondsSinceUnixEpoch::now(),
        raws(pdus)?,
    ))
}

async fn missing_events(
    ctx: Ctx,
    req: get_missing_events::v1::Request,
) -> Result<get_missing_events::v1::Response> {
    let origin = ctx.origin()?;
    let events = ctx
        .hs
        .federation
        .history
        .missing(
            origin,
            &req.room_id,
            (&req.earliest_events, &req.latest_events),
            (u64::from(req.limit), u64::from(req.min_depth)),
        )
        .await?;
    Ok(get_missing_events::v1::Response::new(raws(events)?))
}

fn raw(json: String) -> Result<Box<RawValue>> {
    RawValue::from_string(json).map_err(Error::internal)
}

fn raws(jsons: Vec<String>) -> Result<Vec<Box<RawValue>>> {
    jsons.into_iter().map(raw).collect()
}

fn ids(ids: Vec<String>) -> Result<Vec<OwnedEventId>> {
    ids.into_iter()
        .map(|id| OwnedEventId::try_from(id).map_err(Error::internal))
        .collect()
}
