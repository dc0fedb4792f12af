//! Password change, deactivation and device management (with user-interactive auth).

use axum::Router;
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::{
        account::{change_password, deactivate},
        device::{Device, delete_device, delete_devices, get_device, get_devices, update_device},
    },
};

use crate::{
    api::{Ctx, Guard, route, route_guarded},
    error::{Error, Result},
    store::DeviceRow,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    // Each of these checks a password: rate-limited as well as throttled per account.
    let r = route_guarded(r, Guard::rate_limited(), change_password);
    let r = route_guarded(r, Guard::rate_limited(), deactivate);
    let r = route(r, get_devices);
    let r = route(r, get_device);
    let r = route(r, update_device);
    let r = route_guarded(r, Guard::rate_limited(), delete_device);
    route_guarded(r, Guard::rate_limited(), delete_devices)
}

/// Devices one `delete_devices` may name (each is a write in one transaction).
const MAX_DELETE_DEVICES: usize = 1000;

fn device(row: DeviceRow) -> Result<Device> {
    let mut d = Device::new(row.device_id.into());
    d.display_name = row.display_name;
    d.last_seen_ip = row.last_seen_ip;
    d.last_seen_ts = row
        .last_seen_ts
        .and_then(|t| UInt::try_from(t).ok())
        .map(MilliSecondsSinceUnixEpoch);
    Ok(d)
}

async fn change_password(
    ctx: Ctx,
    req: change_password::v3::Request,
) -> Result<change_password::v3::Response> {
    let s = ctx.session()?;
    // Refused before the password confirmation, which it would otherwise spend.
    crate::accounts::hashing::check_new_password(&req.new_password)?;
    ctx.hs
        .accounts
        .uia_password(&s.user_id, req.auth.as_ref())
        .await?;
    ctx.hs
        .accounts
        .change_password(s, &req.new_password, req.logout_devices)
        .await?;
    Ok(change_password::v3::Response::new())
}

async fn deactivate(ctx: Ctx, req: deactivate::v3::Request) -> Result<deactivate::v3::Response> {
    let s = ctx.session()?;
    ctx.hs
        .accounts
        .uia_password(&s.user_id, req.auth.as_ref())
        .await?;
    ctx.hs.deactivate_user(&s.user_id).await?;
    Ok(deactivate::v3::Response::new(
        ruma::api::client::account::ThirdPartyIdRemovalStatus::NoSupport,
    ))
}

async fn get_devices(ctx: Ctx, _: get_devices::v3::Request) -> Result<get_devices::v3::Response> {
    let rows = ctx
        .hs
        .accounts
        .sessions()
        .list_devices(ctx.session()?.user_id.as_str())
        .await?;
    Ok(get_devices::v3::Response::new(
        rows.into_iter().map(device).collect::<Result<_>>()?,
    ))
}

async fn get_device(ctx: Ctx, req: get_device::v3::Request) -> Result<get_device::v3::Response> {
    let row = ctx
        .hs
        .accounts
        .sessions()
        .get_device(ctx.session()?.user_id.as_str(), req.device_id.as_str())
        .await?;
    Ok(get_device::v3::Response::new(device(
        row.ok_or_else(|| Error::not_found("device not found"))?,
    )?))
}

async fn update_device(
    ctx: Ctx,
    req: update_device::v3::Request,
) -> Result<update_device::v3::Response> {
    let found = ctx
        .hs
        .accounts
        .rename_device(
            &ctx.session()?.user_id,
            req.device_id.as_str(),
            req.display_name.as_deref(),
        )
        .await?;
    if !found {
        return Err(Error::not_found("device not found"));
    }
    Ok(update_device::v3::Response::new())
}

async fn delete_device(
    ctx: Ctx,
    req: delete_device::v3::Request,
) -> Result<delete_device::v3::Response> {
    let s = ctx.session()?;
    if ctx
        .hs
        .accounts
        .sessions()
        .get_device(s.user_id.as_str(), req.device_id.as_str())
        .await?
        .is_none()
    {
        return Err(Error::not_found("device not found"));
    }
    ctx.hs
        .accounts
        .uia_password(&s.user_id, req.auth.as_ref())
        .await?;
    ctx.hs
        .accounts
        .delete_devices(&s.user_id, &[req.device_id.to_string()])
        .await?;
    Ok(delete_device::v3::Response::new())
}

async fn delete_devices(
    ctx: Ctx,
    req: delete_devices::v3::Request,
) -> Result<delete_devices::v3::Response> {
    let s = ctx.session()?;
    let mut ids: Vec<String> = req.devices.iter().map(|d| d.to_string()).collect();
    ids.sort_unstable();
    ids.dedup();
    // Refused before the password confirmation, which it would otherwise spend.
    if ids.len() > MAX_DELETE_DEVICES {
        return Err(Error::invalid_param(format!(
            "at most {MAX_DELETE_DEVICES} devices at once"
        )));
    }
    ctx.hs
        .accounts
        .uia_password(&s.user_id, req.auth.as_ref())
        .await?;
    ctx.hs.accounts.delete_devices(&s.user_id, &ids).await?;
    Ok(delete_devices::v3::Response::new())
}
