//! `/sync` and filters.

use axum::Router;
use ruma::{
    api::client::{
        filter::{FilterDefinition, create_filter, get_filter},
        sync::sync_events::{self, v3::Filter},
    },
    presence::PresenceState,
};

use crate::{
    api::{Ctx, route},
    ephemeral::presence::SyncPresence,
    error::{Error, Result},
    sync::{SyncRequest, parse_sync_token, parse_to_device_cursor, sync},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, sync_handler);
    let r = route(r, create_filter);
    route(r, get_filter)
}

async fn load_filter(ctx: &Ctx, id: &str) -> Result<FilterDefinition> {
    let id: i64 = id
        .parse()
        .map_err(|_| Error::not_found("filter not found"))?;
    let json = ctx
        .hs
        .stores
        .filters
        .get_filter(ctx.session()?.user_id.as_str(), id)
        .await?
        .ok_or_else(|| Error::not_found("filter not found"))?;
    serde_json::from_str(&json).map_err(Error::internal)
}

async fn sync_handler(
    ctx: Ctx,
    req: sync_events::v3::Request,
) -> Result<sync_events::v3::Response> {
    let filter = match &req.filter {
        None => FilterDefinition::default(),
        Some(Filter::FilterDefinition(def)) => def.clone(),
        Some(Filter::FilterId(id)) => load_filter(&ctx, id).await?,
        Some(_) => FilterDefinition::default(),
    };
    crate::sync::check_filter(&filter)?;
    let since = req.since.as_deref().map(parse_sync_token).transpose()?;
    crate::api::one_of(
        "set_presence",
        req.set_presence.as_str(),
        &["online", "offline", "unavailable"],
    )?;
    let set_presence = match req.set_presence {
        PresenceState::Offline => SyncPresence::Offline,
        PresenceState::Unavailable => SyncPresence::Unavailable,
        _ => SyncPresence::Online,
    };
    let timeout = req.timeout.unwrap_or_default();
    sync(
        &ctx.hs,
        ctx.session()?,
        SyncRequest {
            since: since.map(|(pos, _)| pos),
            since_serial: since.and_then(|(_, serial)| serial),
            since_to_device: req.since.as_deref().and_then(parse_to_device_cursor),
            set_presence,
            full_state: req.full_state,
            timeout,
            filter,
            use_state_after: req.use_state_after,
        },
    )
    .await
}

async fn create_filter(
    ctx: Ctx,
    req: create_filter::v3::Request,
) -> Result<create_filter::v3::Response> {
    if req.user_id != ctx.session()?.user_id {
        return Err(Error::forbidden("you can only create filters for yourself"));
    }
    crate::sync::check_filter(&req.filter)?;
    let json = serde_json::to_string(&req.filter).map_err(Error::internal)?;
    // Two concurrent creations may pick the same next id; the loser takes the one after.
    let mut attempt = 0;
    let id = loop {
        match ctx
            .hs
            .stores
            .filters
            .create_filter(req.user_id.as_str(), &json)
            .await
        {
            Err(crate::store::StoreError::Conflict) if attempt < 5 => attempt += 1,
            other => break other?,
        }
    };
    Ok(create_filter::v3::Response::new(id.to_string()))
}

async fn get_filter(ctx: Ctx, req: get_filter::v3::Request) -> Result<get_filter::v3::Response> {
    if req.user_id != ctx.session()?.user_id {
        return Err(Error::forbidden("you can only read your own filters"));
    }
    Ok(get_filter::v3::Response::new(
        load_filter(&ctx, &req.filter_id).await?,
    ))
}
