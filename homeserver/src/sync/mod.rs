//! `/sync` v2 over stream positions: initial and incremental, long-polling woken by the
//! notifier. Tokens are `s{position}`: everything at or below the position has been sent.

pub mod notifier;
pub mod stream;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    time::Duration,
};

use ruma::{
    OwnedRoomId, RoomId,
    api::client::{
        filter::FilterDefinition,
        sync::sync_events::v3::{
            InvitedRoom, JoinedRoom, LeftRoom, Response, State, StateEvents, Timeline,
        },
    },
    serde::Raw,
};
use serde_json::Value;

use crate::{
    accounts::Session,
    error::{Error, Result},
    homeserver::Homeserver,
    rooms::pdu::stripped_event,
    store::{Direction, EventFilter, EventRow},
};

pub fn parse_token(token: &str) -> Result<i64> {
    token
        .strip_prefix('s')
        .and_then(|t| t.split('_').next())
        .and_then(|t| t.parse::<i64>().ok())
        .filter(|p| *p >= 0)
        .ok_or_else(|| Error::invalid_param("unknown pagination or sync token"))
}

pub fn token(pos: i64) -> String {
    format!("s{pos}")
}

pub struct SyncRequest {
    pub since: Option<i64>,
    pub full_state: bool,
    pub timeout: Duration,
    pub filter: FilterDefinition,
    pub use_state_after: bool,
}

fn raw<T>(v: &Value) -> Result<Raw<T>> {
    Ok(Raw::from_json(
        serde_json::value::to_raw_value(v).map_err(Error::internal)?,
    ))
}

pub fn event_filter(f: &ruma::api::client::filter::RoomEventFilter) -> EventFilter {
    EventFilter {
        types: f.types.clone(),
        not_types: f.not_types.clone(),
        senders: f
            .senders
            .as_ref()
            .map(|s| s.iter().map(|u| u.to_string()).collect()),
        not_senders: f.not_senders.iter().map(|u| u.to_string()).collect(),
    }
}

fn row_key(row: &EventRow) -> Option<(String, String)> {
    let v: Value = serde_json::from_str(&row.json).ok()?;
    Some((
        v.get("type")?.as_str()?.to_owned(),
        v.get("state_key")?.as_str()?.to_owned(),
    ))
}

fn row_sender(row: &EventRow) -> Option<String> {
    let v: Value = serde_json::from_str(&row.json).ok()?;
    v.get("sender")?.as_str().map(str::to_owned)
}

fn room_allowed(filter: &FilterDefinition, room_id: &str) -> bool {
    let rf = &filter.room;
    rf.rooms
        .as_ref()
        .is_none_or(|r| r.iter().any(|x| x.as_str() == room_id))
        && !rf.not_rooms.iter().any(|x| x.as_str() == room_id)
}

pub async fn sync(hs: &Homeserver, session: &Session, req: SyncRequest) -> Result<Response> {
    let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(300));
    let mut sub = hs.notifier.subscribe(&session.user_id);
    loop {
        let upto = hs.stream.visible();
        let fresh = req.since.is_none() || req.full_state;
        if fresh || req.since.is_some_and(|s| upto > s) {
            let resp = compute(hs, session, &req, upto).await?;
            if fresh || !is_empty(&resp) || tokio::time::Instant::now() >= deadline {
                return Ok(resp);
            }
        }
        tokio::select! {
            _ = sub.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let pos = hs.stream.visible().max(req.since.unwrap_or(0));
                return Ok(Response::new(token(req.since.map_or(pos, |s| s.max(upto.min(pos))))));
            }
        }
    }
}

fn is_empty(r: &Response) -> bool {
    r.rooms.is_empty()
        && r.account_data.is_empty()
        && r.to_device.is_empty()
        && r.device_lists.is_empty()
}

async fn compute(
    hs: &Homeserver,
    session: &Session,
    req: &SyncRequest,
    upto: i64,
) -> Result<Response> {
    let user = session.user_id.as_str();
    let device = session.device_id.as_str();
    let since = if req.full_state { None } else { req.since };
    let since_pos = req.since.unwrap_or(0);
    let filter = &req.filter;
    let limit = filter
        .room
        .timeline
        .limit
        .map(|l| u64::from(l) as i64)
        .unwrap_or(10)
        .clamp(1, 100);
    let lazy = !filter.room.state.lazy_load_options.is_disabled();
    let include_leave = filter.room.include_leave;
    let tl_filter = event_filter(&filter.room.timeline);
    let mut resp = Response::new(token(upto));

    let memberships = hs.stores.events.rooms_for_user(user).await?;
    let changes = match req.since {
        Some(s) => hs.stores.events.membership_changes(user, s, upto).await?,
        None => vec![],
    };
    let changed_rooms: HashMap<&str, &str> = changes
        .iter()
        .map(|c| (c.room_id.as_str(), c.membership.as_str()))
        .collect();

    // Rooms to render fully (initial sync, newly joined) or incrementally.
    let mut full_rooms = Vec::new();
    let mut incr_rooms = Vec::new();
    for m in memberships
        .iter()
        .filter(|m| room_allowed(filter, &m.room_id))
    {
        if m.stream_pos > upto {
            continue;
        }
        match m.membership.as_str() {
            "join" => match since {
                None => full_rooms.push(m.room_id.clone()),
                Some(_) if changed_rooms.get(m.room_id.as_str()) == Some(&"join") => {
                    full_rooms.push(m.room_id.clone())
                }
                Some(_) => incr_rooms.push(m.room_id.clone()),
            },
            "invite" if since.is_none() || changed_rooms.contains_key(m.room_id.as_str()) => {
                let state = invite_state(hs, &m.room_id).await?;
                let mut invited = InvitedRoom::new();
                invited.invite_state.events = state.iter().map(raw).collect::<Result<_>>()?;
                resp.rooms.invite.insert(room_id(&m.room_id)?, invited);
            }
            "leave" | "ban"
                if (since.is_some() && changed_rooms.contains_key(m.room_id.as_str()))
                    || (since.is_none() && include_leave) =>
            {
                let from = if since.is_some() { since_pos } else { 0 };
                let rows = hs
                    .stores
                    .events
                    .room_events(
                        &m.room_id,
                        m.stream_pos,
                        from,
                        Direction::Backward,
                        limit + 1,
                        &tl_filter,
                    )
                    .await?;
                let mut left = LeftRoom::new();
                let (timeline, _) = timeline(hs, &rows, limit, device).await?;
                left.timeline = timeline;
                resp.rooms.leave.insert(room_id(&m.room_id)?, left);
            }
            _ => {}
        }
    }

    // Full rooms: newest events of all rooms in one query, state from the current state.
    if !full_rooms.is_empty() {
        let latest = hs
            .stores
            .events
            .latest_events(&full_rooms, upto, limit + 1)
            .await?;
        let mut by_room: HashMap<String, Vec<EventRow>> = HashMap::new();
        for row in latest {
            by_room.entry(row.room_id.clone()).or_default().push(row);
        }
        let state_rows = hs.stores.events.current_state_events(&full_rooms).await?;
        let mut state_by_room: HashMap<String, BTreeMap<(String, String), EventRow>> =
            HashMap::new();
        for (room, kind, key, row) in state_rows {
            state_by_room
                .entry(room)
                .or_default()
                .insert((kind, key), row);
        }
        for room in &full_rooms {
            let rows = by_room.remove(room).unwrap_or_default();
            let mut state = state_by_room.remove(room).unwrap_or_default();
            rewind_past(hs, &mut state, upto).await?;
            let (timeline, shown) = timeline(hs, &rows, limit, device).await?;
            if !req.use_state_after {
                // State before the timeline: undo the timeline's state events, newest first.
                for row in shown.iter().rev() {
                    if let Some(key) = row_key(row) {
                        match &row.replaces_state {
                            Some(prev) => {
                                if let Some(p) = hs.stores.events.get_event(prev).await? {
                                    state.insert(key, p);
                                }
                            }
                            None => {
                                state.remove(&key);
                            }
                        }
                    }
                }
            }
            let state: Vec<EventRow> =
                lazy_filter(state.into_values().collect(), &shown, user, lazy);
            let mut joined = JoinedRoom::new();
            joined.timeline = timeline;
            joined.state = state_section(hs, &state, req.use_state_after).await?;
            resp.rooms.join.insert(room_id(room)?, joined);
        }
    }

    // Incremental rooms: only those with new events.
    if !incr_rooms.is_empty() {
        for room in hs
            .stores
            .events
            .rooms_with_events(&incr_rooms, since_pos, upto)
            .await?
        {
            let rows = hs
                .stores
                .events
                .room_events(
                    &room,
                    upto,
                    since_pos,
                    Direction::Backward,
                    limit + 1,
                    &tl_filter,
                )
                .await?;
            let (timeline, shown) = timeline(hs, &rows, limit, device).await?;
            let state_end = if req.use_state_after {
                upto
            } else {
                shown.first().map(|r| r.stream_pos - 1).unwrap_or(upto)
            };
            let mut changed: BTreeMap<(String, String), EventRow> = BTreeMap::new();
            if req.use_state_after || timeline.limited {
                for row in hs
                    .stores
                    .events
                    .state_events_between(&room, since_pos, state_end)
                    .await?
                {
                    if let Some(key) = row_key(&row) {
                        changed.insert(key, row);
                    }
                }
            }
            let mut state: Vec<EventRow> = changed.into_values().collect();
            if lazy {
                state.extend(hs.rooms.member_events_rows(&room, &shown).await?);
                state.sort_by_key(|r| r.stream_pos);
                state.dedup_by(|a, b| a.event_id == b.event_id);
            }
            let mut joined = JoinedRoom::new();
            joined.timeline = timeline;
            joined.state = state_section(hs, &state, req.use_state_after).await?;
            resp.rooms.join.insert(room_id(&room)?, joined);
        }
    }

    // Account data, global and per room.
    for row in hs
        .stores
        .account_data
        .changed(user, since.unwrap_or(0), upto)
        .await?
    {
        let Ok(content) = serde_json::from_str::<Value>(&row.content) else {
            continue;
        };
        let event = serde_json::json!({ "type": row.data_type, "content": content });
        if row.room_id.is_empty() {
            resp.account_data.events.push(raw(&event)?);
        } else if let Some(joined) = resp.rooms.join.get_mut(&room_id(&row.room_id)?) {
            joined.account_data.events.push(raw(&event)?);
        } else if memberships
            .iter()
            .any(|m| m.room_id == row.room_id && m.membership == "join")
        {
            let mut joined = JoinedRoom::new();
            joined.account_data.events.push(raw(&event)?);
            resp.rooms.join.insert(room_id(&row.room_id)?, joined);
        }
    }
    Ok(resp)
}

fn room_id(s: &str) -> Result<OwnedRoomId> {
    RoomId::parse(s).map_err(Error::internal)
}

/// Replaces current-state entries newer than `upto` (written after this sync's snapshot) by
/// the state they replaced.
async fn rewind_past(
    hs: &Homeserver,
    state: &mut BTreeMap<(String, String), EventRow>,
    upto: i64,
) -> Result<()> {
    let newer: Vec<(String, String)> = state
        .iter()
        .filter(|(_, r)| r.stream_pos > upto)
        .map(|(k, _)| k.clone())
        .collect();
    for key in newer {
        let mut replaced = state.remove(&key).and_then(|r| r.replaces_state);
        while let Some(prev) = replaced {
            let Some(row) = hs.stores.events.get_event(&prev).await? else {
                break;
            };
            if row.stream_pos <= upto {
                state.insert(key.clone(), row);
                break;
            }
            replaced = row.replaces_state;
        }
    }
    Ok(())
}

/// The timeline from rows fetched newest-first with one extra row to detect `limited`.
async fn timeline(
    hs: &Homeserver,
    rows_newest_first: &[EventRow],
    limit: i64,
    device: &str,
) -> Result<(Timeline, Vec<EventRow>)> {
    let limited = rows_newest_first.len() as i64 > limit;
    let mut shown: Vec<EventRow> = rows_newest_first
        .iter()
        .take(limit as usize)
        .cloned()
        .collect();
    shown.reverse();
    let events = hs.rooms.client_events(&shown, Some(device)).await?;
    let mut timeline = Timeline::new();
    timeline.limited = limited;
    timeline.prev_batch = shown.first().map(|r| token(r.stream_pos - 1));
    timeline.events = events.iter().map(raw).collect::<Result<_>>()?;
    Ok((timeline, shown))
}

/// Lazy loading: keep all non-member state, and member events of the timeline's senders and
/// the syncing user.
fn lazy_filter(state: Vec<EventRow>, shown: &[EventRow], user: &str, lazy: bool) -> Vec<EventRow> {
    if !lazy {
        return state;
    }
    let senders: BTreeSet<String> = shown
        .iter()
        .filter_map(row_sender)
        .chain([user.to_owned()])
        .collect();
    state
        .into_iter()
        .filter(|r| match row_key(r) {
            Some((kind, key)) if kind == "m.room.member" => senders.contains(&key),
            _ => true,
        })
        .collect()
}

async fn state_section(hs: &Homeserver, rows: &[EventRow], after: bool) -> Result<State> {
    let events = hs.rooms.client_events(rows, None).await?;
    let mut state = StateEvents::default();
    state.events = events.iter().map(raw).collect::<Result<_>>()?;
    Ok(if after {
        State::After(state)
    } else {
        State::Before(state)
    })
}

/// Stripped state shown with an invite.
async fn invite_state(hs: &Homeserver, room: &str) -> Result<Vec<Value>> {
    let ids = hs.stores.events.current_state_ids(room).await?;
    let wanted = [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.encryption",
        "m.room.topic",
    ];
    let pick: Vec<String> = ids
        .iter()
        .filter(|((kind, _), _)| wanted.contains(&kind.as_str()))
        .map(|(_, id)| id.clone())
        .collect();
    let mut rows = hs.stores.events.get_events(&pick).await?;
    // The invite itself and the inviter's member event.
    let members: Vec<String> = ids
        .iter()
        .filter(|((kind, _), _)| kind == "m.room.member")
        .map(|(_, id)| id.clone())
        .collect();
    rows.extend(
        hs.stores
            .events
            .get_events(&members)
            .await?
            .into_iter()
            .filter(|r| {
                serde_json::from_str::<Value>(&r.json)
                    .ok()
                    .and_then(|v| {
                        v.pointer("/content/membership")
                            .and_then(Value::as_str)
                            .map(|m| m == "invite")
                    })
                    .unwrap_or(false)
            }),
    );
    Ok(rows.iter().map(stripped_event).collect())
}
