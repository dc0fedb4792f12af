//! `/sync` v2 over stream positions: initial and incremental, long-polling woken by the
//! notifier. Tokens are `s{position}`: everything at or below the position has been sent.

pub mod notifier;
pub mod stream;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use ruma::{
    OwnedRoomId, RoomId,
    api::client::{
        filter::FilterDefinition,
        sync::sync_events::v3::{
            InvitedRoom, JoinedRoom, LeftRoom, Response, RoomSummary, State, StateEvents, Timeline,
        },
    },
    serde::Raw,
};
use serde_json::{Value, json};

use crate::{
    accounts::Session,
    ephemeral::presence::SyncPresence,
    error::{Error, Result},
    homeserver::Homeserver,
    rooms::{
        PagePoint, TopoPoint, Visibility,
        pdu::{content_of, stripped_event},
    },
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

/// A pagination token: a point of the topological order (`t{depth}_{stream}`), or a stream
/// position (`s{pos}`, a sync token).
pub fn parse_page_token(token: &str) -> Result<PagePoint> {
    if let Some(rest) = token.strip_prefix('t') {
        let parsed = rest
            .split_once('_')
            .and_then(|(d, s)| Some((d.parse::<i64>().ok()?, s.parse::<i64>().ok()?)));
        return parsed
            .map(|(depth, stream)| PagePoint::Topo(TopoPoint { depth, stream }))
            .ok_or_else(|| Error::invalid_param("unknown pagination token"));
    }
    parse_token(token).map(PagePoint::Stream)
}

pub fn page_token(point: TopoPoint) -> String {
    format!("t{}_{}", point.depth, point.stream)
}

/// A sync token: the stream position and the ephemeral serial (`s{pos}_{serial}`; tokens
/// without a serial, e.g. from before typing existed, see all current ephemeral state).
pub fn parse_sync_token(token: &str) -> Result<(i64, Option<i64>)> {
    let pos = parse_token(token)?;
    let serial = token.split('_').nth(1).and_then(|t| t.parse::<i64>().ok());
    Ok((pos, serial))
}

fn sync_token(pos: i64, serial: i64) -> String {
    format!("s{pos}_{serial}")
}

/// Where a sync token's to-device messages end when that is before its position
/// (`s{pos}_{serial}_{to_device}`: more were waiting than one sync delivers).
pub fn parse_to_device_cursor(token: &str) -> Option<i64> {
    token.split('_').nth(2).and_then(|t| t.parse::<i64>().ok())
}

pub struct SyncRequest {
    pub since: Option<i64>,
    /// The ephemeral serial of the `since` token.
    pub since_serial: Option<i64>,
    /// The `since` token's to-device cursor, if it has one.
    pub since_to_device: Option<i64>,
    pub set_presence: SyncPresence,
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

/// Entries a filter's lists (`types`, `senders`, `rooms` and their `not_` forms) may have:
/// each entry becomes a condition of every read the filter is used for.
pub const MAX_FILTER_ENTRIES: usize = 100;

/// Refuses filters with lists longer than `MAX_FILTER_ENTRIES` (400 `M_INVALID_PARAM`).
pub fn check_filter(f: &FilterDefinition) -> Result<()> {
    let room = &f.room;
    let mut lists = vec![
        room.not_rooms.len(),
        room.rooms.as_ref().map_or(0, Vec::len),
    ];
    for e in [
        &room.timeline,
        &room.state,
        &room.ephemeral,
        &room.account_data,
    ] {
        lists.extend(room_event_filter_lists(e));
    }
    for g in [&f.presence, &f.account_data] {
        lists.extend([
            g.types.as_ref().map_or(0, Vec::len),
            g.not_types.len(),
            g.senders.as_ref().map_or(0, Vec::len),
            g.not_senders.len(),
        ]);
    }
    check_lists(&lists)
}

/// `check_filter` for the room event filter of `/messages` and `/context`.
pub fn check_room_event_filter(f: &ruma::api::client::filter::RoomEventFilter) -> Result<()> {
    check_lists(&room_event_filter_lists(f))
}

fn room_event_filter_lists(f: &ruma::api::client::filter::RoomEventFilter) -> Vec<usize> {
    vec![
        f.types.as_ref().map_or(0, Vec::len),
        f.not_types.len(),
        f.senders.as_ref().map_or(0, Vec::len),
        f.not_senders.len(),
        f.rooms.as_ref().map_or(0, Vec::len),
        f.not_rooms.len(),
    ]
}

fn check_lists(lengths: &[usize]) -> Result<()> {
    if lengths.iter().any(|n| *n > MAX_FILTER_ENTRIES) {
        return Err(Error::invalid_param(format!(
            "filter lists have at most {MAX_FILTER_ENTRIES} entries"
        )));
    }
    Ok(())
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

pub async fn sync(hs: &Arc<Homeserver>, session: &Session, req: SyncRequest) -> Result<Response> {
    let deadline = tokio::time::Instant::now() + req.timeout.min(Duration::from_secs(300));
    let mut sub = hs.notifier.subscribe(&session.user_id);
    // The user counts as online while this request lasts.
    let _online = hs
        .presence
        .sync_started(&session.user_id, req.set_presence)
        .await?;
    loop {
        let upto = hs.stream.visible();
        // Read before computing: a change during the computation comes again next time.
        let serial = hs.ephemeral.current();
        let fresh = req.since.is_none() || req.full_state;
        let news = req.since.is_some_and(|s| upto > s)
            || req.since_serial.is_none_or(|s| serial > s)
            || req.since_to_device.is_some();
        if fresh || news {
            let resp = compute(hs, session, &req, upto, serial).await?;
            if fresh || !is_empty(&resp) || tokio::time::Instant::now() >= deadline {
                return Ok(resp);
            }
        }
        tokio::select! {
            _ = sub.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {
                let pos = hs.stream.visible().max(req.since.unwrap_or(0));
                let pos = req.since.map_or(pos, |s| s.max(upto.min(pos)));
                return Ok(Response::new(sync_token(pos, req.since_serial.unwrap_or(0))));
            }
        }
    }
}

fn is_empty(r: &Response) -> bool {
    r.rooms.is_empty()
        && r.presence.is_empty()
        && r.account_data.is_empty()
        && r.to_device.is_empty()
        && r.device_lists.is_empty()
}

async fn compute(
    hs: &Homeserver,
    session: &Session,
    req: &SyncRequest,
    upto: i64,
    serial: i64,
) -> Result<Response> {
    let user = session.user_id.as_str();
    let device = session.device_id.as_str();
    let since = req.since;
    let since_pos = since.unwrap_or(0);
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
    let mut resp = Response::new(sync_token(upto, serial));

    // The user's membership history up to this sync's position: membership as of `upto`
    // (later changes belong to the next sync), what changed since `since`, and visibility.
    let mut history: BTreeMap<String, Vec<(i64, String)>> = BTreeMap::new();
    for m in hs.stores.events.membership_changes(user, 0, upto).await? {
        history
            .entry(m.room_id)
            .or_default()
            .push((m.stream_pos, m.membership));
    }
    // Rooms the user forgot after leaving are not listed any more.
    let listed: HashSet<String> = hs
        .stores
        .events
        .rooms_for_user(user)
        .await?
        .into_iter()
        .map(|m| m.room_id)
        .collect();
    // Device lists follow every room the user was in, whatever the filter shows.
    let all_rooms: Vec<String> = history.keys().cloned().collect();
    history.retain(|room, _| listed.contains(room) && room_allowed(filter, room));
    let rooms: Vec<String> = history.keys().cloned().collect();
    let mut settings: HashMap<String, Vec<(i64, String)>> = HashMap::new();
    for (room, pos, setting) in hs.stores.events.history_visibility_changes(&rooms).await? {
        settings.entry(room).or_default().push((pos, setting));
    }
    let visibility = |room: &str| {
        Visibility::new(
            settings.get(room).cloned().unwrap_or_default(),
            history.get(room).cloned().unwrap_or_default(),
        )
    };

    let mut full_rooms = Vec::new();
    let mut incr_rooms = Vec::new();
    for (room, changes) in &history {
        let (last_pos, membership) = changes.last().expect("history entries are non-empty");
        let changed = since.is_some_and(|s| *last_pos > s);
        // Newly joined: not joined at `since` (a profile change is a join→join and not new).
        let joined_at_since = since.is_some_and(|s| {
            changes
                .iter()
                .rev()
                .find(|(p, _)| *p <= s)
                .is_some_and(|(_, m)| m == "join")
        });
        match membership.as_str() {
            "join" if !joined_at_since || req.full_state => full_rooms.push(room.clone()),
            "join" => incr_rooms.push(room.clone()),
            "invite" if since.is_none() || changed => {
                let mut invited = InvitedRoom::new();
                invited.invite_state.events = invite_state(hs, room, user, *last_pos)
                    .await?
                    .iter()
                    .map(raw)
                    .collect::<Result<_>>()?;
                resp.rooms.invite.insert(room_id(room)?, invited);
            }
            "leave" | "ban" if changed || (since.is_none() && include_leave) => {
                let rows = hs
                    .stores
                    .events
                    .room_events(
                        room,
                        *last_pos,
                        since_pos,
                        Direction::Backward,
                        limit + 1,
                        &tl_filter,
                    )
                    .await?;
                let vis = visibility(room);
                let rows: Vec<EventRow> = rows
                    .into_iter()
                    .filter(|r| vis.can_see(r.stream_pos))
                    .collect();
                let mut left = LeftRoom::new();
                left.timeline = timeline(hs, &rows, limit, device).await?.0;
                resp.rooms.leave.insert(room_id(room)?, left);
            }
            _ => {}
        }
    }

    // Full rooms: newest events of all rooms in one query, state from the current state.
    if !full_rooms.is_empty() {
        let latest = hs
            .stores
            .events
            .latest_events(&full_rooms, upto, limit + 1, &tl_filter)
            .await?;
        let mut by_room: HashMap<String, Vec<EventRow>> = HashMap::new();
        for row in latest {
            by_room.entry(row.room_id.clone()).or_default().push(row);
        }
        let mut state_by_room: HashMap<String, BTreeMap<(String, String), EventRow>> =
            HashMap::new();
        for (room, kind, key, row) in hs.stores.events.current_state_events(&full_rooms).await? {
            state_by_room
                .entry(room)
                .or_default()
                .insert((kind, key), row);
        }
        for room in &full_rooms {
            let rows = match (since, req.full_state) {
                // full_state on an incremental sync: the timeline still starts at `since`.
                (Some(s), true) if history[room].last().is_some_and(|(p, _)| *p <= s) => {
                    hs.stores
                        .events
                        .room_events(room, upto, s, Direction::Backward, limit + 1, &tl_filter)
                        .await?
                }
                _ => by_room.remove(room).unwrap_or_default(),
            };
            let vis = visibility(room);
            let rows: Vec<EventRow> = rows
                .into_iter()
                .filter(|r| vis.can_see(r.stream_pos))
                .collect();
            let mut state = state_by_room.remove(room).unwrap_or_default();
            rewind_past(hs, &mut state, upto).await?;
            let summary = summary(&state, user);
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
            joined.summary = summary;
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
            let vis = visibility(&room);
            let rows: Vec<EventRow> = rows
                .into_iter()
                .filter(|r| vis.can_see(r.stream_pos))
                .collect();
            let (timeline, shown) = timeline(hs, &rows, limit, device).await?;
            let state_end = if req.use_state_after {
                upto
            } else {
                shown.first().map(|r| r.stream_pos - 1).unwrap_or(upto)
            };
            let mut changed: BTreeMap<(String, String), EventRow> = BTreeMap::new();
            // With a filtered timeline, state changes may be missing from it: send them as state.
            let filtered = tl_filter.types.is_some()
                || !tl_filter.not_types.is_empty()
                || tl_filter.senders.is_some()
                || !tl_filter.not_senders.is_empty();
            // A filtered timeline may leave out state changes after its start too: send them all.
            let state_end = if filtered { upto } else { state_end };
            let shown_ids: HashSet<&str> = shown.iter().map(|r| r.event_id.as_str()).collect();
            if req.use_state_after || timeline.limited || filtered {
                for row in hs
                    .stores
                    .events
                    .state_events_between(&room, since_pos, state_end)
                    .await?
                    .into_iter()
                    .filter(|r| req.use_state_after || !shown_ids.contains(r.event_id.as_str()))
                {
                    if let Some(key) = row_key(&row) {
                        changed.insert(key, row);
                    }
                }
            }
            let members_changed = changed.keys().any(|(kind, _)| kind == "m.room.member")
                || shown
                    .iter()
                    .any(|r| row_key(r).is_some_and(|(kind, _)| kind == "m.room.member"));
            let mut state: Vec<EventRow> = changed.into_values().collect();
            if lazy {
                // Member events of the timeline's senders as of where the state applies: the
                // start of the timeline (`state`) or its end (`state_after`).
                let members = match shown.first() {
                    Some(first) if !req.use_state_after => {
                        let at_start = hs.stores.events.state_at_group(first.state_group).await?;
                        let ids: Vec<String> = shown
                            .iter()
                            .filter_map(row_sender)
                            .collect::<BTreeSet<_>>()
                            .into_iter()
                            .filter_map(|u| at_start.get(&("m.room.member".to_owned(), u)).cloned())
                            .collect();
                        hs.stores.events.get_events(&ids).await?
                    }
                    _ => {
                        let mut at_end: BTreeMap<(String, String), EventRow> = hs
                            .rooms
                            .member_events_rows(&room, &shown)
                            .await?
                            .into_iter()
                            .filter_map(|r| Some((row_key(&r)?, r)))
                            .collect();
                        rewind_past(hs, &mut at_end, upto).await?;
                        at_end.into_values().collect()
                    }
                };
                let in_timeline: HashSet<&str> =
                    shown.iter().map(|r| r.event_id.as_str()).collect();
                state.extend(
                    members
                        .into_iter()
                        .filter(|r| !in_timeline.contains(r.event_id.as_str())),
                );
                state.sort_by_key(|r| r.stream_pos);
                state.dedup_by(|a, b| a.event_id == b.event_id);
            }
            let mut joined = JoinedRoom::new();
            if members_changed {
                let ids: Vec<String> = hs
                    .stores
                    .events
                    .current_state_ids(&room)
                    .await?
                    .into_values()
                    .collect();
                let mut current: BTreeMap<(String, String), EventRow> = hs
                    .stores
                    .events
                    .get_events(&ids)
                    .await?
                    .into_iter()
                    .filter_map(|r| Some((row_key(&r)?, r)))
                    .collect();
                rewind_past(hs, &mut current, upto).await?;
                joined.summary = summary(&current, user);
            }
            joined.timeline = timeline;
            joined.state = state_section(hs, &state, req.use_state_after).await?;
            if !joined.is_empty() {
                resp.rooms.join.insert(room_id(&room)?, joined);
            }
        }
    }

    ephemeral(
        hs,
        user,
        req,
        &history,
        &full_rooms,
        &mut resp,
        since_pos,
        upto,
    )
    .await?;

    // Account data, global and per room.
    let mut push_rules_sent = false;
    for row in hs
        .stores
        .account_data
        .changed(user, if req.full_state { 0 } else { since_pos }, upto)
        .await?
    {
        let Ok(content) = serde_json::from_str::<Value>(&row.content) else {
            continue;
        };
        let event = serde_json::json!({ "type": row.data_type, "content": content });
        push_rules_sent |= row.room_id.is_empty() && row.data_type == crate::push::PUSH_RULES;
        if row.room_id.is_empty() {
            resp.account_data.events.push(raw(&event)?);
        } else if let Some(joined) = resp.rooms.join.get_mut(&room_id(&row.room_id)?) {
            joined.account_data.events.push(raw(&event)?);
        } else if history
            .get(&row.room_id)
            .and_then(|h| h.last())
            .is_some_and(|(_, m)| m == "join")
        {
            let mut joined = JoinedRoom::new();
            joined.account_data.events.push(raw(&event)?);
            resp.rooms.join.insert(room_id(&row.room_id)?, joined);
        }
    }
    // Clients expect the push rules in a first sync, also when the user never changed them.
    if (since.is_none() || req.full_state) && !push_rules_sent {
        let ruleset = hs.push_rules(&session.user_id).await?;
        let event = json!({ "type": crate::push::PUSH_RULES, "content": { "global": ruleset } });
        resp.account_data.events.push(raw(&event)?);
    }

    // Notification and highlight counts of the rooms in this response.
    let rooms: Vec<String> = resp.rooms.join.keys().map(|r| r.to_string()).collect();
    if !rooms.is_empty() {
        let counts = hs.unread.counts(user, &rooms, upto).await?;
        for (room, joined) in resp.rooms.join.iter_mut() {
            let (n, h) = counts.get(room.as_str()).copied().unwrap_or((0, 0));
            joined.unread_notifications.notification_count =
                Some(ruma::UInt::new_saturating(n as u64));
            joined.unread_notifications.highlight_count =
                Some(ruma::UInt::new_saturating(h as u64));
        }
    }

    // End-to-end encryption: to-device messages, device lists, key counts.
    let e2ee = hs
        .sync_e2ee(session, since, req.since_to_device, upto, &all_rooms)
        .await?;
    resp.to_device.events = e2ee.to_device;
    resp.device_lists = e2ee.device_lists;
    resp.device_one_time_keys_count = e2ee.one_time_keys_count;
    resp.device_unused_fallback_key_types = Some(e2ee.unused_fallback_key_types);
    if let Some(cursor) = e2ee.to_device_cursor {
        resp.next_batch = format!("{}_{cursor}", sync_token(upto, serial));
    }
    Ok(resp)
}

/// Typing and receipts of joined rooms, and the presence of users sharing a room.
#[allow(clippy::too_many_arguments)]
async fn ephemeral(
    hs: &Homeserver,
    user: &str,
    req: &SyncRequest,
    history: &BTreeMap<String, Vec<(i64, String)>>,
    full_rooms: &[String],
    resp: &mut Response,
    since_pos: i64,
    upto: i64,
) -> Result<()> {
    let filter = &req.filter;
    let joined: Vec<String> = history
        .iter()
        .filter(|(_, h)| h.last().is_some_and(|(_, m)| m == "join"))
        .map(|(r, _)| r.clone())
        .collect();
    let since_serial = req.since.and(req.since_serial).filter(|_| !req.full_state);
    let wanted = |kind: &str| type_allowed(&filter.room.ephemeral, kind);
    let mut per_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    if wanted("m.typing") {
        for room in &joined {
            // Changes after this sync's serial come with the next sync.
            if let Some(users) = hs.typing.changed_since(room, since_serial) {
                let event = json!({ "type": "m.typing", "content": { "user_ids": users } });
                per_room.entry(room.clone()).or_default().push(event);
            }
        }
    }
    if wanted("m.receipt") {
        // Rooms sent in full (new or full_state) get all their receipts, the others the changes.
        let since = if req.full_state { 0 } else { since_pos };
        let full_set: HashSet<&String> = full_rooms.iter().collect();
        let (full, incremental): (Vec<String>, Vec<String>) =
            joined.iter().cloned().partition(|r| full_set.contains(r));
        let mut rows = hs.stores.receipts.receipts_changed(&full, 0, upto).await?;
        rows.extend(
            hs.stores
                .receipts
                .receipts_changed(&incremental, since, upto)
                .await?,
        );
        let mut receipts: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
        for r in rows {
            if r.receipt_type == crate::receipts::READ_PRIVATE && r.user_id != user {
                continue;
            }
            let mut entry = json!({ "ts": r.ts });
            if !r.thread_id.is_empty() {
                entry["thread_id"] = json!(r.thread_id);
            }
            let content = receipts.entry(r.room_id).or_default();
            let by_type = content
                .entry(r.event_id)
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("object");
            by_type.entry(r.receipt_type).or_insert_with(|| json!({}))[r.user_id.as_str()] = entry;
        }
        for (room, content) in receipts {
            let event = json!({ "type": "m.receipt", "content": content });
            per_room.entry(room).or_default().push(event);
        }
    }
    for (room, events) in per_room {
        let id = room_id(&room)?;
        let joined = resp.rooms.join.entry(id).or_default();
        for event in &events {
            joined.ephemeral.events.push(raw(event)?);
        }
    }
    if type_allowed(&filter.presence, "m.presence") {
        let user = ruma::UserId::parse(user).map_err(Error::internal)?;
        for event in hs.presence.events_for(&user, since_serial).await? {
            resp.presence.events.push(raw(&event)?);
        }
    }
    Ok(())
}

/// The `types`/`not_types`/`limit` part of an event filter (with `*` wildcards).
fn type_allowed(filter: &impl TypeFilter, kind: &str) -> bool {
    let (types, not_types, limit) = filter.parts();
    let matches = |pattern: &String| match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    };
    types.is_none_or(|t| t.iter().any(matches))
        && !not_types.iter().any(matches)
        && limit.is_none_or(|l| l > ruma::UInt::MIN)
}

trait TypeFilter {
    fn parts(&self) -> (Option<&Vec<String>>, &[String], Option<ruma::UInt>);
}

impl TypeFilter for ruma::api::client::filter::RoomEventFilter {
    fn parts(&self) -> (Option<&Vec<String>>, &[String], Option<ruma::UInt>) {
        (self.types.as_ref(), &self.not_types, self.limit)
    }
}

impl TypeFilter for ruma::api::client::filter::Filter {
    fn parts(&self) -> (Option<&Vec<String>>, &[String], Option<ruma::UInt>) {
        (self.types.as_ref(), &self.not_types, self.limit)
    }
}

/// The room summary clients use to name rooms without a name (heroes) and count members.
fn summary(state: &BTreeMap<(String, String), EventRow>, user: &str) -> RoomSummary {
    let mut joined = 0u64;
    let mut invited = 0u64;
    let mut heroes = Vec::new();
    for ((kind, key), row) in state {
        if kind != "m.room.member" {
            continue;
        }
        let membership = content_of(row).and_then(|c| {
            c.get("membership")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
        match membership.as_deref() {
            Some("join") => joined += 1,
            Some("invite") => invited += 1,
            _ => continue,
        }
        if key != user
            && heroes.len() < 5
            && let Ok(id) = ruma::UserId::parse(key.as_str())
        {
            heroes.push(id);
        }
    }
    let mut summary = RoomSummary::new();
    let named = state.contains_key(&("m.room.name".to_owned(), String::new()))
        || state.contains_key(&("m.room.canonical_alias".to_owned(), String::new()));
    if !named {
        summary.heroes = heroes;
    }
    summary.joined_member_count = Some(ruma::UInt::new_saturating(joined));
    summary.invited_member_count = Some(ruma::UInt::new_saturating(invited));
    summary
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
    timeline.prev_batch = shown.first().map(|r| page_token(TopoPoint::before(r)));
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

/// Stripped state shown with an invite: the room's identity, the invite itself and the
/// inviter's member event (for their name and avatar) — not other people's invites.
async fn invite_state(hs: &Homeserver, room: &str, user: &str, at: i64) -> Result<Vec<Value>> {
    // An invite to a room this server does not have (or no longer follows): the state it
    // came with, and the invite.
    if let Some(invite) = hs.stores.graph.remote_membership(user, room).await?
        && invite.stream_pos == at
    {
        let mut state: Vec<Value> = serde_json::from_str(&invite.invite_state).unwrap_or_default();
        state.retain(|e| !(e["type"] == "m.room.member" && e["state_key"] == user));
        if let Ok(event) = serde_json::from_str::<Value>(&invite.json) {
            state.push(serde_json::json!({
                "type": "m.room.member",
                "state_key": user,
                "sender": event["sender"],
                "content": event["content"],
            }));
        }
        return Ok(state);
    }
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
    let mut pick: Vec<String> = ids
        .iter()
        .filter(|((kind, _), _)| wanted.contains(&kind.as_str()))
        .map(|(_, id)| id.clone())
        .collect();
    let invite = ids
        .get(&("m.room.member".to_owned(), user.to_owned()))
        .cloned();
    pick.extend(invite.clone());
    let mut rows = hs.stores.events.get_events(&pick).await?;
    let inviter = rows
        .iter()
        .find(|r| Some(&r.event_id) == invite.as_ref())
        .and_then(row_sender)
        .and_then(|sender| ids.get(&("m.room.member".to_owned(), sender)).cloned());
    if let Some(inviter) = inviter {
        rows.extend(hs.stores.events.get_events(&[inviter]).await?);
    }
    Ok(rows.iter().map(stripped_event).collect())
}
