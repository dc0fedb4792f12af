//! Rooms: create, aliases, membership, state, messages, redaction, pagination, context,
//! single events and relations.

use axum::Router;
use ruma::{
    OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomOrAliasId, UInt,
    api::{
        Direction as RumaDirection,
        client::{
            alias::{create_alias, delete_alias, get_alias},
            context::get_context,
            membership::{
                ban_user, forget_room, get_member_events, invite_user, join_room_by_id,
                join_room_by_id_or_alias, joined_members, joined_rooms, kick_user, leave_room,
                unban_user,
            },
            message::{get_message_events, send_message_event},
            redact::redact_event,
            relations::{
                get_relating_events, get_relating_events_with_rel_type,
                get_relating_events_with_rel_type_and_event_type,
            },
            room::{aliases, create_room, get_room_event},
            state::{get_state_event_for_key, get_state_events, send_state_event},
        },
    },
    events::TimelineEventType,
    serde::Raw,
};
use serde_json::{Map, Value};

use crate::{
    api::{Ctx, Guard, one_of, route, route_guarded},
    error::{Error, Result},
    rooms::{
        CreateRoom, NewContent, Page, PagePoint, TopoPoint, create::Preset, membership::Change,
    },
    store::Direction,
    sync::{event_filter, page_token, parse_page_token, parse_token, token},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    // Rate-limited: a room is dozens of signed events.
    let r = route_guarded(r, Guard::rate_limited(), create_room);
    let r = route(r, create_alias);
    let r = route(r, get_alias);
    let r = route(r, delete_alias);
    let r = route(r, room_aliases);
    let r = route(r, joined_rooms);
    let r = route(r, join_by_id);
    let r = route(r, join_by_id_or_alias);
    let r = route(r, invite);
    let r = route(r, leave);
    let r = route(r, forget);
    let r = route(r, kick);
    let r = route(r, ban);
    let r = route(r, unban);
    let r = route(r, members);
    let r = route(r, joined_members);
    let r = route(r, send_state);
    let r = route(r, get_state);
    let r = route(r, get_state_for_key);
    let r = route(r, send_message);
    let r = route(r, redact);
    let r = route(r, messages);
    let r = route(r, context);
    let r = route(r, event);
    let r = route(r, relations);
    let r = route(r, relations_rel_type);
    route(r, relations_rel_type_event_type)
}

fn raws<T>(values: Vec<Value>) -> Result<Vec<Raw<T>>> {
    values
        .iter()
        .map(|v| {
            Ok(Raw::from_json(
                serde_json::value::to_raw_value(v).map_err(Error::internal)?,
            ))
        })
        .collect()
}

fn object(raw: &serde_json::value::RawValue) -> Result<Value> {
    match serde_json::from_str(raw.get()) {
        Ok(v @ Value::Object(_)) => Ok(v),
        _ => Err(Error::bad_json("content must be a JSON object")),
    }
}

/// Invites in one `createRoom` at most (more are sent one by one afterwards).
const MAX_CREATE_INVITES: usize = 500;
/// `initial_state` events in one `createRoom` at most.
const MAX_INITIAL_STATE: usize = 100;

fn limit(l: UInt, max: u64) -> i64 {
    u64::from(l).clamp(1, max) as i64
}

async fn create_room(ctx: Ctx, req: create_room::v3::Request) -> Result<create_room::v3::Response> {
    let hs = &ctx.hs;
    let creator = ctx.session()?.user_id.clone();
    // Each invite and initial state event is an event signed and stored under the room lock.
    if req.invite.len() > MAX_CREATE_INVITES || req.initial_state.len() > MAX_INITIAL_STATE {
        return Err(Error::invalid_param(format!(
            "createRoom takes at most {MAX_CREATE_INVITES} invites and {MAX_INITIAL_STATE} initial state events"
        )));
    }
    for user in &req.invite {
        invitable(hs, user).await?;
    }
    if let Some(preset) = &req.preset {
        one_of(
            "preset",
            preset.as_str(),
            &["private_chat", "public_chat", "trusted_private_chat"],
        )?;
    }
    one_of(
        "visibility",
        req.visibility.as_str(),
        &["public", "private"],
    )?;
    let preset = match req.preset {
        Some(create_room::v3::RoomPreset::PublicChat) => Preset::PublicChat,
        Some(create_room::v3::RoomPreset::TrustedPrivateChat) => Preset::TrustedPrivateChat,
        Some(create_room::v3::RoomPreset::PrivateChat) => Preset::PrivateChat,
        None if req.visibility == ruma::api::client::room::Visibility::Public => Preset::PublicChat,
        _ => Preset::PrivateChat,
    };
    let creation_content = match &req.creation_content {
        Some(raw) => match object(raw.json())? {
            Value::Object(m) => m,
            _ => Map::new(),
        },
        None => Map::new(),
    };
    let mut initial_state = Vec::new();
    for raw in &req.initial_state {
        let v = object(raw.json())?;
        let kind = v
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::bad_json("initial_state events need a type"))?;
        if matches!(kind, "m.room.create" | "m.room.member") {
            return Err(Error::bad_json(format!(
                "{kind} cannot be set in initial_state"
            )));
        }
        let key = v.get("state_key").and_then(Value::as_str).unwrap_or("");
        let content = v
            .get("content")
            .filter(|c| c.is_object())
            .cloned()
            .ok_or_else(|| Error::bad_json("initial_state content must be an object"))?;
        initial_state.push((kind.to_owned(), key.to_owned(), content));
    }
    let power_level_content_override = match &req.power_level_content_override {
        Some(raw) => match object(raw.json())? {
            Value::Object(m) => Some(m),
            _ => None,
        },
        None => None,
    };
    let alias = match &req.room_alias_name {
        Some(name) => Some(
            OwnedRoomAliasId::try_from(format!("#{name}:{}", hs.server_name))
                .map_err(|e| Error::invalid_param(format!("invalid alias: {e}")))?,
        ),
        None => None,
    };
    let room_id = hs
        .rooms
        .create_room(CreateRoom {
            creator,
            preset,
            room_version: req.room_version.clone(),
            creation_content,
            initial_state,
            name: req.name.clone(),
            topic: req.topic.clone(),
            invite: req.invite.clone(),
            is_direct: req.is_direct,
            power_level_content_override,
            alias,
            creator_profile: hs.member_profile(&ctx.session()?.user_id).await?,
        })
        .await?;
    Ok(create_room::v3::Response::new(room_id))
}

/// The room an alias names and servers to join it through: ours from the store, another
/// server's asked of it.
async fn resolve_alias(
    ctx: &Ctx,
    alias: &RoomAliasId,
) -> Result<(OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    if alias.server_name() != ctx.hs.server_name {
        return ctx.hs.federation.room_alias(alias).await;
    }
    crate::directory::local_alias(&ctx.hs, alias).await
}

async fn create_alias(
    ctx: Ctx,
    req: create_alias::v3::Request,
) -> Result<create_alias::v3::Response> {
    if req.room_alias.server_name() != ctx.hs.server_name {
        return Err(Error::invalid_param("aliases must be on this server"));
    }
    let user = &ctx.session()?.user_id;
    // Only a joined member who may set the room's canonical alias may name the room: anyone
    // else could squat a name on a room (or point a trusted name at one).
    let may = ctx
        .hs
        .rooms
        .with_state(&req.room_id, |st| {
            st.membership(user).as_deref() == Some("join")
                && st
                    .power_levels()
                    .user_can_send_state(user, ruma::events::StateEventType::RoomCanonicalAlias)
        })
        .await?
        .ok_or_else(|| Error::not_found("room not found"))?;
    if !may {
        return Err(Error::forbidden(
            "only room members who may set the room's canonical alias may create aliases for it",
        ));
    }
    ctx.hs
        .stores
        .events
        .set_alias(req.room_alias.as_str(), req.room_id.as_str(), user.as_str())
        .await
        .map_err(|e| match e {
            crate::store::StoreError::Conflict => Error::RoomInUse,
            e => e.into(),
        })?;
    Ok(create_alias::v3::Response::new())
}

async fn get_alias(ctx: Ctx, req: get_alias::v3::Request) -> Result<get_alias::v3::Response> {
    let (room, servers) = resolve_alias(&ctx, &req.room_alias).await?;
    Ok(get_alias::v3::Response::new(room, servers))
}

async fn delete_alias(
    ctx: Ctx,
    req: delete_alias::v3::Request,
) -> Result<delete_alias::v3::Response> {
    let s = ctx.session()?;
    let (room, creator) = ctx
        .hs
        .stores
        .events
        .get_alias(req.room_alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    let room_id = OwnedRoomId::try_from(room).map_err(Error::internal)?;
    let may = creator == s.user_id.as_str()
        || s.is_admin
        || ctx
            .hs
            .rooms
            .with_state(&room_id, |st| {
                // Power counts only while one is in the room (not after leaving or a ban).
                st.membership(&s.user_id).as_deref() == Some("join")
                    && st.power_levels().user_can_send_state(
                        &s.user_id,
                        ruma::events::StateEventType::RoomCanonicalAlias,
                    )
            })
            .await?
            .unwrap_or(false);
    if !may {
        return Err(Error::forbidden("you may not delete this alias"));
    }
    ctx.hs
        .stores
        .events
        .delete_alias(req.room_alias.as_str())
        .await?;
    Ok(delete_alias::v3::Response::new())
}

async fn room_aliases(ctx: Ctx, req: aliases::v3::Request) -> Result<aliases::v3::Response> {
    ctx.hs
        .rooms
        .visible_state(&req.room_id, &ctx.session()?.user_id)
        .await?;
    let list = ctx
        .hs
        .stores
        .events
        .room_aliases(req.room_id.as_str())
        .await?;
    Ok(aliases::v3::Response::new(
        list.into_iter().filter_map(|a| a.try_into().ok()).collect(),
    ))
}

async fn joined_rooms(
    ctx: Ctx,
    _: joined_rooms::v3::Request,
) -> Result<joined_rooms::v3::Response> {
    let rooms = ctx
        .hs
        .stores
        .events
        .rooms_for_user(ctx.session()?.user_id.as_str())
        .await?;
    Ok(joined_rooms::v3::Response::new(
        rooms
            .into_iter()
            .filter(|m| m.membership == "join")
            .filter_map(|m| m.room_id.try_into().ok())
            .collect(),
    ))
}

async fn change(
    ctx: &Ctx,
    room: &ruma::RoomId,
    target: &ruma::UserId,
    change: Change,
    reason: Option<&str>,
    via: &[ruma::OwnedServerName],
) -> Result<()> {
    let s = ctx.session()?;
    if change == Change::Join {
        ctx.hs
            .stores
            .events
            .unforget_room(s.user_id.as_str(), room.as_str())
            .await?;
    }
    // Joins and invites carry the user's display name and avatar.
    let profile = match change {
        Change::Join | Change::Invite { .. } => ctx.hs.member_profile(target).await?,
        _ => Map::new(),
    };
    // A room none of this server's users are in (we never had it, or all left it): joined
    // through the servers that are in it, or an invite to it rejected there.
    let elsewhere = match change {
        // (A room only this server ever had is joined here, whoever is left in it.)
        Change::Join => {
            !ctx.hs.rooms.knows(room).await?
                || (!ctx.hs.rooms.is_resident(room).await?
                    && !ctx.hs.rooms.other_servers(room).await?.is_empty())
        }
        Change::Leave => {
            !ctx.hs.rooms.knows(room).await?
                || (!ctx.hs.rooms.is_resident(room).await?
                    && ctx.hs.rooms.remote_invite(target, room).await?.is_some())
        }
        _ => false,
    };
    if elsewhere && *target == s.user_id {
        let join = change == Change::Join;
        return ctx
            .hs
            .federation
            .join_or_reject(room, target, join, via, (profile, reason))
            .await;
    }
    ctx.hs
        .rooms
        .change_membership(room, &s.user_id, target, change, reason, profile)
        .await?;
    Ok(())
}

async fn join_by_id(
    ctx: Ctx,
    req: join_room_by_id::v3::Request,
) -> Result<join_room_by_id::v3::Response> {
    let me = ctx.session()?.user_id.clone();
    change(
        &ctx,
        &req.room_id,
        &me,
        Change::Join,
        req.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(join_room_by_id::v3::Response::new(req.room_id))
}

async fn join_by_id_or_alias(
    ctx: Ctx,
    req: join_room_by_id_or_alias::v3::Request,
) -> Result<join_room_by_id_or_alias::v3::Response> {
    let id: &RoomOrAliasId = &req.room_id_or_alias;
    let mut via = req.via.clone();
    let room_id = match <&ruma::RoomId>::try_from(id) {
        Ok(room_id) => {
            let room_id: &ruma::RoomId = room_id;
            room_id.to_owned()
        }
        Err(alias) => {
            let alias: &RoomAliasId = alias;
            let (room_id, servers) = resolve_alias(&ctx, alias).await?;
            via.extend(servers);
            room_id
        }
    };
    let me = ctx.session()?.user_id.clone();
    change(
        &ctx,
        &room_id,
        &me,
        Change::Join,
        req.reason.as_deref(),
        &via,
    )
    .await?;
    Ok(join_room_by_id_or_alias::v3::Response::new(room_id))
}

/// A local user that exists, or a user of another server when federation is on (their
/// server answers whether they exist when it countersigns the invite).
async fn invitable(hs: &crate::homeserver::Homeserver, user: &ruma::UserId) -> Result<()> {
    if user.server_name() != hs.server_name {
        return hs.federation.check_enabled();
    }
    if !hs.accounts.user_exists(user).await? {
        return Err(Error::not_found(format!("user {user} does not exist")));
    }
    Ok(())
}

async fn invite(ctx: Ctx, req: invite_user::v3::Request) -> Result<invite_user::v3::Response> {
    let invite_user::v3::InvitationRecipient::UserId(recipient) = &req.recipient else {
        return Err(Error::forbidden("third-party invites are not supported"));
    };
    let target = &recipient.user_id;
    invitable(&ctx.hs, target).await?;
    change(
        &ctx,
        &req.room_id,
        target,
        Change::Invite { is_direct: false },
        recipient.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(invite_user::v3::Response::new())
}

async fn leave(ctx: Ctx, req: leave_room::v3::Request) -> Result<leave_room::v3::Response> {
    let me = ctx.session()?.user_id.clone();
    change(
        &ctx,
        &req.room_id,
        &me,
        Change::Leave,
        req.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(leave_room::v3::Response::new())
}

async fn forget(ctx: Ctx, req: forget_room::v3::Request) -> Result<forget_room::v3::Response> {
    let me = &ctx.session()?.user_id;
    let membership = ctx
        .hs
        .rooms
        .with_state(&req.room_id, |s| s.membership(me))
        .await?
        .flatten();
    if matches!(membership.as_deref(), Some("join" | "invite")) {
        return Err(Error::forbidden("leave the room before forgetting it"));
    }
    ctx.hs
        .stores
        .events
        .forget_room(me.as_str(), req.room_id.as_str())
        .await?;
    Ok(forget_room::v3::Response::new())
}

async fn kick(ctx: Ctx, req: kick_user::v3::Request) -> Result<kick_user::v3::Response> {
    change(
        &ctx,
        &req.room_id,
        &req.user_id,
        Change::Kick,
        req.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(kick_user::v3::Response::new())
}

async fn ban(ctx: Ctx, req: ban_user::v3::Request) -> Result<ban_user::v3::Response> {
    change(
        &ctx,
        &req.room_id,
        &req.user_id,
        Change::Ban,
        req.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(ban_user::v3::Response::new())
}

async fn unban(ctx: Ctx, req: unban_user::v3::Request) -> Result<unban_user::v3::Response> {
    change(
        &ctx,
        &req.room_id,
        &req.user_id,
        Change::Unban,
        req.reason.as_deref(),
        &[],
    )
    .await?;
    Ok(unban_user::v3::Response::new())
}

async fn members(
    ctx: Ctx,
    req: get_member_events::v3::Request,
) -> Result<get_member_events::v3::Response> {
    const MEMBERSHIPS: [&str; 5] = ["join", "invite", "leave", "ban", "knock"];
    let membership = req.membership.as_ref().map(|m| m.to_string());
    let not = req.not_membership.as_ref().map(|m| m.to_string());
    for (field, value) in [("membership", &membership), ("not_membership", &not)] {
        if let Some(v) = value {
            one_of(field, v, &MEMBERSHIPS)?;
        }
    }
    let events = ctx
        .hs
        .rooms
        .member_events(
            &req.room_id,
            &ctx.session()?.user_id,
            membership.as_deref(),
            not.as_deref(),
        )
        .await?;
    Ok(get_member_events::v3::Response::new(raws(events)?))
}

async fn joined_members(
    ctx: Ctx,
    req: joined_members::v3::Request,
) -> Result<joined_members::v3::Response> {
    let members = ctx
        .hs
        .rooms
        .joined_members(&req.room_id, &ctx.session()?.user_id)
        .await?;
    let joined = members
        .into_iter()
        .filter_map(|(user, (name, avatar))| {
            let mut m = joined_members::v3::RoomMember::new();
            m.display_name = name;
            m.avatar_url = avatar.map(Into::into);
            Some((ruma::OwnedUserId::try_from(user).ok()?, m))
        })
        .collect();
    Ok(joined_members::v3::Response::new(joined))
}

async fn send_state(
    ctx: Ctx,
    req: send_state_event::v3::Request,
) -> Result<send_state_event::v3::Response> {
    let content = object(req.body.json())?;
    let new = NewContent::state(req.event_type.to_string(), req.state_key.clone(), content);
    if matches!(new.kind, TimelineEventType::RoomMember) {
        return Err(Error::forbidden(
            "use the membership endpoints to change membership",
        ));
    }
    let event_id = ctx
        .hs
        .rooms
        .append(&req.room_id, &ctx.session()?.user_id, new, None)
        .await?;
    Ok(send_state_event::v3::Response::new(event_id))
}

async fn get_state(
    ctx: Ctx,
    req: get_state_events::v3::Request,
) -> Result<get_state_events::v3::Response> {
    let rows = ctx
        .hs
        .rooms
        .visible_state(&req.room_id, &ctx.session()?.user_id)
        .await?;
    let events = ctx.hs.rooms.client_events(&rows, None).await?;
    Ok(get_state_events::v3::Response::new(raws(events)?))
}

async fn get_state_for_key(
    ctx: Ctx,
    req: get_state_event_for_key::v3::Request,
) -> Result<get_state_event_for_key::v3::Response> {
    let content = ctx
        .hs
        .rooms
        .state_content(
            &req.room_id,
            &ctx.session()?.user_id,
            &req.event_type.to_string(),
            &req.state_key,
        )
        .await?;
    let raw = serde_json::value::to_raw_value(&content).map_err(Error::internal)?;
    Ok(get_state_event_for_key::v3::Response::new(raw))
}

async fn send_message(
    ctx: Ctx,
    req: send_message_event::v3::Request,
) -> Result<send_message_event::v3::Response> {
    let s = ctx.session()?;
    let content = object(req.body.json())?;
    let kind = TimelineEventType::from(req.event_type.to_string());
    if matches!(kind, TimelineEventType::RoomRedaction) {
        return Err(Error::bad_json("use the redact endpoint to redact events"));
    }
    ctx.hs.presence.active(&s.user_id);
    let event_id = ctx
        .hs
        .rooms
        .append(
            &req.room_id,
            &s.user_id,
            NewContent::message(kind, content),
            Some((&s.device_id, &req.txn_id)),
        )
        .await?;
    Ok(send_message_event::v3::Response::new(event_id))
}

async fn redact(ctx: Ctx, req: redact_event::v3::Request) -> Result<redact_event::v3::Response> {
    let s = ctx.session()?;
    let mut content = Map::new();
    if let Some(reason) = &req.reason {
        content.insert("reason".into(), Value::String(reason.clone()));
    }
    let new = NewContent {
        kind: TimelineEventType::RoomRedaction,
        state_key: None,
        content: Value::Object(content),
        redacts: Some(req.event_id.clone()),
    };
    let event_id = ctx
        .hs
        .rooms
        .append(
            &req.room_id,
            &s.user_id,
            new,
            Some((&s.device_id, &req.txn_id)),
        )
        .await?;
    Ok(redact_event::v3::Response::new(event_id))
}

fn direction(d: RumaDirection) -> Direction {
    match d {
        RumaDirection::Forward => Direction::Forward,
        RumaDirection::Backward => Direction::Backward,
    }
}

async fn messages(
    ctx: Ctx,
    req: get_message_events::v3::Request,
) -> Result<get_message_events::v3::Response> {
    let s = ctx.session()?;
    let dir = direction(req.dir);
    let from = match &req.from {
        Some(t) => parse_page_token(t)?,
        None if dir == Direction::Backward => PagePoint::Stream(ctx.hs.stream.visible()),
        None => PagePoint::Topo(TopoPoint::START),
    };
    let to = req.to.as_deref().map(parse_page_token).transpose()?;
    crate::sync::check_room_event_filter(&req.filter)?;
    let lazy = !req.filter.lazy_load_options.is_disabled();
    let page: Page = ctx
        .hs
        .federation
        .backfiller
        .messages(
            &req.room_id,
            &s.user_id,
            s.device_id.as_str(),
            from,
            to,
            dir,
            limit(req.limit, 1000),
            &event_filter(&req.filter),
            lazy,
        )
        .await?;
    let mut resp = get_message_events::v3::Response::new();
    resp.start = page_token(page.start);
    resp.end = page.end.map(page_token);
    resp.chunk = raws(page.chunk)?;
    resp.state = raws(page.state)?;
    Ok(resp)
}

async fn context(ctx: Ctx, req: get_context::v3::Request) -> Result<get_context::v3::Response> {
    crate::sync::check_room_event_filter(&req.filter)?;
    let s = ctx.session()?;
    let c = ctx
        .hs
        .rooms
        .context(
            &req.room_id,
            &s.user_id,
            s.device_id.as_str(),
            &req.event_id,
            limit(req.limit, 100),
            &event_filter(&req.filter),
        )
        .await?;
    let mut resp = get_context::v3::Response::new();
    resp.start = Some(page_token(c.start));
    resp.end = Some(page_token(c.end));
    resp.event = Some(Raw::from_json(
        serde_json::value::to_raw_value(&c.event).map_err(Error::internal)?,
    ));
    resp.events_before = raws(c.before)?;
    resp.events_after = raws(c.after)?;
    resp.state = raws(c.state)?;
    Ok(resp)
}

async fn event(ctx: Ctx, req: get_room_event::v3::Request) -> Result<get_room_event::v3::Response> {
    let s = ctx.session()?;
    let v = ctx
        .hs
        .rooms
        .event(
            &req.room_id,
            &s.user_id,
            s.device_id.as_str(),
            &req.event_id,
        )
        .await?;
    Ok(get_room_event::v3::Response::new(Raw::from_json(
        serde_json::value::to_raw_value(&v).map_err(Error::internal)?,
    )))
}

struct RelationsQuery<'a> {
    room_id: &'a ruma::RoomId,
    event_id: &'a ruma::EventId,
    rel_type: Option<String>,
    event_type: Option<String>,
    from: Option<&'a str>,
    to: Option<&'a str>,
    dir: RumaDirection,
    limit: Option<UInt>,
}

async fn relations_page(
    ctx: &Ctx,
    q: RelationsQuery<'_>,
) -> Result<(Vec<Raw<ruma::events::AnyMessageLikeEvent>>, Option<String>)> {
    let s = ctx.session()?;
    let from = q.from.map(parse_token).transpose()?;
    let to = q.to.map(parse_token).transpose()?;
    let limit = q.limit.map(|l| limit(l, 100)).unwrap_or(50);
    let page = ctx
        .hs
        .rooms
        .relations(
            q.room_id,
            &s.user_id,
            s.device_id.as_str(),
            q.event_id,
            q.rel_type.as_deref(),
            q.event_type.as_deref(),
            from,
            to,
            direction(q.dir),
            limit,
        )
        .await?;
    Ok((raws(page.chunk)?, page.end.map(token)))
}

async fn relations(
    ctx: Ctx,
    req: get_relating_events::v1::Request,
) -> Result<get_relating_events::v1::Response> {
    let q = RelationsQuery {
        room_id: &req.room_id,
        event_id: &req.event_id,
        rel_type: None,
        event_type: None,
        from: req.from.as_deref(),
        to: req.to.as_deref(),
        dir: req.dir,
        limit: req.limit,
    };
    let (chunk, next) = relations_page(&ctx, q).await?;
    let mut resp = get_relating_events::v1::Response::new(chunk);
    resp.next_batch = next;
    Ok(resp)
}

async fn relations_rel_type(
    ctx: Ctx,
    req: get_relating_events_with_rel_type::v1::Request,
) -> Result<get_relating_events_with_rel_type::v1::Response> {
    let q = RelationsQuery {
        room_id: &req.room_id,
        event_id: &req.event_id,
        rel_type: Some(req.rel_type.to_string()),
        event_type: None,
        from: req.from.as_deref(),
        to: req.to.as_deref(),
        dir: req.dir,
        limit: req.limit,
    };
    let (chunk, next) = relations_page(&ctx, q).await?;
    let mut resp = get_relating_events_with_rel_type::v1::Response::new(chunk);
    resp.next_batch = next;
    Ok(resp)
}

async fn relations_rel_type_event_type(
    ctx: Ctx,
    req: get_relating_events_with_rel_type_and_event_type::v1::Request,
) -> Result<get_relating_events_with_rel_type_and_event_type::v1::Response> {
    let q = RelationsQuery {
        room_id: &req.room_id,
        event_id: &req.event_id,
        rel_type: Some(req.rel_type.to_string()),
        event_type: Some(req.event_type.to_string()),
        from: req.from.as_deref(),
        to: req.to.as_deref(),
        dir: req.dir,
        limit: req.limit,
    };
    let (chunk, next) = relations_page(&ctx, q).await?;
    let mut resp = get_relating_events_with_rel_type_and_event_type::v1::Response::new(chunk);
    resp.next_batch = next;
    Ok(resp)
}
