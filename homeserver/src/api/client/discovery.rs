//! Versions, capabilities and `.well-known` discovery.

use std::collections::BTreeMap;

use axum::Router;
use ruma::{
    RoomVersionId,
    api::client::discovery::{
        discover_homeserver::{self, HomeserverInfo},
        get_capabilities::{
            self,
            v3::{Capabilities, RoomVersionStability, RoomVersionsCapability},
        },
        get_supported_versions,
    },
};

use crate::{
    api::{Ctx, route},
    error::Result,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, versions);
    let r = route(r, capabilities);
    route(r, well_known_client)
}

async fn versions(
    _: Ctx,
    _: get_supported_versions::Request,
) -> Result<get_supported_versions::Response> {
    let versions = [
        "r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10",
        "v1.11",
    ];
    let mut resp =
        get_supported_versions::Response::new(versions.iter().map(|v| v.to_string()).collect());
    resp.unstable_features = BTreeMap::from([
        ("org.matrix.msc2285.stable".to_owned(), true),
        // Custom profile fields (TI-M client capabilities, E-06).
        ("uk.tcpip.msc4133".to_owned(), true),
    ]);
    Ok(resp)
}

async fn capabilities(
    ctx: Ctx,
    _: get_capabilities::v3::Request,
) -> Result<get_capabilities::v3::Response> {
    let rooms = &ctx.hs.rooms;
    let available: BTreeMap<RoomVersionId, RoomVersionStability> = rooms
        .supported_versions
        .iter()
        .map(|v| (v.clone(), RoomVersionStability::Stable))
        .collect();
    let mut caps = Capabilities::new();
    caps.room_versions = RoomVersionsCapability::new(rooms.default_version.clone(), available);
    Ok(get_capabilities::v3::Response::new(caps))
}

async fn well_known_client(
    ctx: Ctx,
    _: discover_homeserver::Request,
) -> Result<discover_homeserver::Response> {
    // Each tenant names its own address, never the default tenant's.
    Ok(discover_homeserver::Response::new(HomeserverInfo::new(
        ctx.hs.config.baseurl_of(ctx.hs.server_name.as_str()),
    )))
}
