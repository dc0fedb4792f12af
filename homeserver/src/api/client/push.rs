//! Push rules, pushers and the notification list.

use axum::Router;
use ruma::{
    MilliSecondsSinceUnixEpoch, UInt,
    api::client::push::{
        PusherIds, PusherInit, PusherKind, delete_pushrule, get_notifications, get_pushers,
        get_pushrule, get_pushrule_actions, get_pushrule_enabled, get_pushrules_all,
        get_pushrules_global_scope, set_pusher, set_pushrule, set_pushrule_actions,
        set_pushrule_enabled,
    },
    push::{HttpPusherData, Ruleset},
    serde::Raw,
};

use crate::{
    api::{Ctx, route},
    ephemeral::now_ms,
    error::{Error, Result},
    push::rules::rule_error,
    store::PusherRow,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, all);
    let r = route(r, global);
    let r = route(r, get_rule);
    let r = route(r, set_rule);
    let r = route(r, delete_rule);
    let r = route(r, get_enabled);
    let r = route(r, set_enabled);
    let r = route(r, get_actions);
    let r = route(r, set_actions);
    let r = route(r, pushers);
    let r = route(r, set_pusher_handler);
    route(r, notifications)
}

/// Push rule kinds are a closed set (an unknown one in the path is a bad request, not a
/// missing rule).
fn known_kind(kind: &str) -> Result<()> {
    crate::api::one_of(
        "kind",
        kind,
        &["override", "underride", "sender", "room", "content"],
    )
}

async fn rules(ctx: &Ctx) -> Result<Ruleset> {
    ctx.hs.push_rules(&ctx.session()?.user_id).await
}

async fn all(
    ctx: Ctx,
    _: get_pushrules_all::v3::Request,
) -> Result<get_pushrules_all::v3::Response> {
    Ok(get_pushrules_all::v3::Response::new(rules(&ctx).await?))
}

async fn global(
    ctx: Ctx,
    _: get_pushrules_global_scope::v3::Request,
) -> Result<get_pushrules_global_scope::v3::Response> {
    Ok(get_pushrules_global_scope::v3::Response::new(
        rules(&ctx).await?,
    ))
}

async fn get_rule(ctx: Ctx, req: get_pushrule::v3::Request) -> Result<get_pushrule::v3::Response> {
    known_kind(req.kind.as_str())?;
    let ruleset = rules(&ctx).await?;
    let rule = ruleset
        .get(req.kind, &req.rule_id)
        .ok_or_else(|| Error::not_found("no such push rule"))?;
    Ok(get_pushrule::v3::Response::new(rule.into()))
}

async fn set_rule(ctx: Ctx, req: set_pushrule::v3::Request) -> Result<set_pushrule::v3::Response> {
    ctx.hs
        .edit_push_rules(&ctx.session()?.user_id, |r| {
            r.insert(req.rule, req.after.as_deref(), req.before.as_deref())
                .map_err(|e| {
                    let missing = matches!(e, ruma::push::InsertPushRuleError::UnknownRuleId);
                    rule_error(e, missing)
                })
        })
        .await?;
    Ok(set_pushrule::v3::Response::new())
}

async fn delete_rule(
    ctx: Ctx,
    req: delete_pushrule::v3::Request,
) -> Result<delete_pushrule::v3::Response> {
    known_kind(req.kind.as_str())?;
    ctx.hs
        .edit_push_rules(&ctx.session()?.user_id, |r| {
            r.remove(req.kind, &req.rule_id).map_err(|e| {
                let missing = matches!(e, ruma::push::RemovePushRuleError::NotFound);
                rule_error(e, missing)
            })
        })
        .await?;
    Ok(delete_pushrule::v3::Response::new())
}

async fn get_enabled(
    ctx: Ctx,
    req: get_pushrule_enabled::v3::Request,
) -> Result<get_pushrule_enabled::v3::Response> {
    known_kind(req.kind.as_str())?;
    let ruleset = rules(&ctx).await?;
    let rule = ruleset
        .get(req.kind, &req.rule_id)
        .ok_or_else(|| Error::not_found("no such push rule"))?;
    Ok(get_pushrule_enabled::v3::Response::new(rule.enabled()))
}

async fn set_enabled(
    ctx: Ctx,
    req: set_pushrule_enabled::v3::Request,
) -> Result<set_pushrule_enabled::v3::Response> {
    known_kind(req.kind.as_str())?;
    ctx.hs
        .edit_push_rules(&ctx.session()?.user_id, |r| {
            r.set_enabled(req.kind, &req.rule_id, req.enabled)
                .map_err(|e| rule_error(e, true))
        })
        .await?;
    Ok(set_pushrule_enabled::v3::Response::new())
}

async fn get_actions(
    ctx: Ctx,
    req: get_pushrule_actions::v3::Request,
) -> Result<get_pushrule_actions::v3::Response> {
    known_kind(req.kind.as_str())?;
    let ruleset = rules(&ctx).await?;
    let rule = ruleset
        .get(req.kind, &req.rule_id)
        .ok_or_else(|| Error::not_found("no such push rule"))?;
    Ok(get_pushrule_actions::v3::Response::new(
        rule.actions().to_vec(),
    ))
}

async fn set_actions(
    ctx: Ctx,
    req: set_pushrule_actions::v3::Request,
) -> Result<set_pushrule_actions::v3::Response> {
    known_kind(req.kind.as_str())?;
    ctx.hs
        .edit_push_rules(&ctx.session()?.user_id, |r| {
            r.set_actions(req.kind, &req.rule_id, req.actions)
                .map_err(|e| rule_error(e, true))
        })
        .await?;
    Ok(set_pushrule_actions::v3::Response::new())
}

async fn pushers(ctx: Ctx, _: get_pushers::v3::Request) -> Result<get_pushers::v3::Response> {
    let rows = ctx
        .hs
        .stores
        .push
        .pushers(ctx.session()?.user_id.as_str())
        .await?;
    let pushers = rows
        .into_iter()
        .filter_map(|p| {
            let data: HttpPusherData = serde_json::from_str(&p.data).ok()?;
            Some(
                PusherInit {
                    ids: PusherIds::new(p.pushkey, p.app_id),
                    kind: PusherKind::Http(data),
                    app_display_name: p.app_display_name,
                    device_display_name: p.device_display_name,
                    profile_tag: p.profile_tag,
                    lang: p.lang,
                }
                .into(),
            )
        })
        .collect();
    Ok(get_pushers::v3::Response::new(pushers))
}

async fn set_pusher_handler(
    ctx: Ctx,
    req: set_pusher::v3::Request,
) -> Result<set_pusher::v3::Response> {
    let user = ctx.session()?.user_id.to_string();
    match req.action {
        set_pusher::v3::PusherAction::Post(post) => {
            let p = post.pusher;
            let PusherKind::Http(data) = p.kind else {
                return Err(Error::invalid_param("only http pushers are supported"));
            };
            if p.ids.pushkey.len() > 512 || p.ids.app_id.len() > 64 {
                return Err(Error::invalid_param(
                    "pushkey: at most 512 bytes, app_id: at most 64",
                ));
            }
            let row = PusherRow {
                user_id: user,
                app_id: p.ids.app_id,
                pushkey: p.ids.pushkey,
                app_display_name: p.app_display_name,
                device_display_name: p.device_display_name,
                profile_tag: p.profile_tag,
                lang: p.lang,
                data: serde_json::to_string(&data).map_err(Error::internal)?,
                device_id: ctx.session()?.device_id.to_string(),
                created_ts: now_ms(),
            };
            ctx.hs.set_pusher(row, post.append).await?;
        }
        set_pusher::v3::PusherAction::Delete(ids) => {
            ctx.hs
                .delete_pusher(&user, &ids.app_id, &ids.pushkey)
                .await?;
        }
        _ => return Err(Error::invalid_param("unknown pusher action")),
    }
    Ok(set_pusher::v3::Response::new())
}

async fn notifications(
    ctx: Ctx,
    req: get_notifications::v3::Request,
) -> Result<get_notifications::v3::Response> {
    let before = match &req.from {
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| Error::invalid_param("invalid from token"))?,
        ),
        None => None,
    };
    let limit = req.limit.map(u64::from).unwrap_or(20).clamp(1, 100) as i64;
    let only_highlight = req.only.as_deref() == Some("highlight");
    let user = ctx.session()?.user_id.as_str();
    let rooms: Vec<String> = ctx
        .hs
        .stores
        .events
        .rooms_for_user(user)
        .await?
        .into_iter()
        .map(|m| m.room_id)
        .collect();
    let rows = ctx
        .hs
        .stores
        .push
        .notifications(user, &rooms, before, limit, only_highlight)
        .await?;
    let events: Vec<_> = rows.iter().map(|r| r.event.clone()).collect();
    let clients = ctx.hs.rooms.client_events(&events, None).await?;
    let mut out = Vec::with_capacity(rows.len());
    for (row, event) in rows.iter().zip(clients) {
        let raw = serde_json::value::to_raw_value(&event).map_err(Error::internal)?;
        let room_id = ruma::RoomId::parse(&row.event.room_id).map_err(Error::internal)?;
        out.push(get_notifications::v3::Notification::new(
            serde_json::from_str(&row.actions).unwrap_or_default(),
            Raw::from_json(raw),
            row.read,
            room_id,
            MilliSecondsSinceUnixEpoch(UInt::new_saturating(row.ts.max(0) as u64)),
        ));
    }
    let mut resp = get_notifications::v3::Response::new(out);
    if rows.len() as i64 == limit {
        resp.next_token = rows.last().map(|r| r.event.stream_pos.to_string());
    }
    Ok(resp)
}
