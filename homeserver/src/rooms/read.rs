//! Reading rooms as a user may see them: history visibility, the client form of events (with
//! `transaction_id` for the sender's device and `redacted_because`), pagination, context,
//! relations, state and members.

use std::collections::{BTreeMap, HashMap};

use ruma::{EventId, RoomId, UserId};
use serde_json::Value;

use super::{
    Rooms,
    pdu::{Unsigned, client_event, content_of},
};
use crate::{
    error::{Error, Result},
    store::{Direction, EventFilter, EventRow, StateIds},
};

/// A page of events in client form, with the tokens around it.
/// A point in a room's topological order (depth, then stream position): just after the event
/// at `(depth, stream)`. `/messages` and `/context` page through this order, so history that
/// arrives late (backfill, a fork) sits where it belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TopoPoint {
    pub depth: i64,
    pub stream: i64,
}

impl TopoPoint {
    pub const START: Self = Self {
        depth: i64::MIN,
        stream: i64::MIN,
    };
    pub const END: Self = Self {
        depth: i64::MAX,
        stream: i64::MAX,
    };

    /// Just after `row`.
    pub fn after(row: &EventRow) -> Self {
        Self {
            depth: row.depth,
            stream: row.stream_pos,
        }
    }

    /// Just before `row` (positions are integers: "at or before stream - 1" is "before").
    pub fn before(row: &EventRow) -> Self {
        Self {
            depth: row.depth,
            stream: row.stream_pos - 1,
        }
    }

    fn pair(self) -> (i64, i64) {
        (self.depth, self.stream)
    }
}

/// Where a page starts or ends: a topological point (from `/messages`, `/context`, sync's
/// `prev_batch`) or a stream position (a sync token some clients pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PagePoint {
    Topo(TopoPoint),
    Stream(i64),
}

/// A page in stream order (`/relations`): `end` is where the next page starts.
pub struct StreamPage {
    pub chunk: Vec<Value>,
    pub end: Option<i64>,
}

pub struct Page {
    pub chunk: Vec<Value>,
    pub start: TopoPoint,
    pub end: Option<TopoPoint>,
    /// Member events of the page's senders (lazy loading).
    pub state: Vec<Value>,
}

/// What a user may see of a room's history: the room's history visibility settings and the
/// user's membership changes, by stream position.
pub struct Visibility {
    /// Each setting with the position it took effect at, oldest first.
    settings: Vec<(i64, String)>,
    memberships: Vec<(i64, String)>,
}

impl Visibility {
    pub fn new(settings: Vec<(i64, String)>, memberships: Vec<(i64, String)>) -> Self {
        Self {
            settings,
            memberships,
        }
    }

    fn setting_at(&self, pos: i64) -> &str {
        let at = self.settings.iter().rev().find(|(p, _)| *p <= pos);
        match at {
            Some((_, v)) => v.as_str(),
            // History from other servers sits at negative positions, below the state they
            // gave us: it takes the earliest setting known rather than the spec's default
            // (the stricter reading: a room that was not `shared` when we joined does not
            // open its earlier history).
            None if pos < 0 => self
                .settings
                .first()
                .map(|(_, v)| v.as_str())
                .unwrap_or("shared"),
            None => "shared",
        }
    }

    fn current_setting(&self) -> &str {
        self.settings
            .last()
            .map(|(_, v)| v.as_str())
            .unwrap_or("shared")
    }

    fn membership_at(&self, pos: i64) -> Option<&str> {
        self.memberships
            .iter()
            .rev()
            .find(|(p, _)| *p <= pos)
            .map(|(_, m)| m.as_str())
    }

    fn current(&self) -> Option<&str> {
        self.memberships.last().map(|(_, m)| m.as_str())
    }

    /// Whether the user may see the event at `pos`, by the setting in force at the event.
    pub fn can_see(&self, pos: i64) -> bool {
        // Users always see their own membership changes (an invite, a kick, a ban).
        if self.memberships.iter().any(|(p, _)| *p == pos) {
            return true;
        }
        let at = self.membership_at(pos);
        match self.setting_at(pos) {
            "world_readable" => true,
            "shared" => at == Some("join") || self.current() == Some("join"),
            "invited" => matches!(at, Some("join" | "invite")),
            _ => at == Some("join"),
        }
    }

    /// Whether the user may read the room at all (members, state).
    pub fn is_or_was_member(&self) -> bool {
        self.memberships.iter().any(|(_, m)| m == "join")
            || self.current_setting() == "world_readable"
    }

    /// The last position the user may see, if they are no longer joined.
    pub fn upper_bound(&self) -> Option<i64> {
        match self.current() {
            Some("join") => None,
            _ => self
                .memberships
                .iter()
                .rev()
                .find(|(_, m)| m != "join")
                .map(|(p, _)| *p),
        }
    }
}

impl Rooms {
    pub async fn visibility(&self, room_id: &RoomId, user: &UserId) -> Result<Visibility> {
        let memberships = self
            .store
            .membership_history(user.as_str(), room_id.as_str())
            .await?;
        let settings = self
            .store
            .history_visibility_changes(&[room_id.to_string()])
            .await?
            .into_iter()
            .map(|(_, pos, setting)| (pos, setting))
            .collect();
        Ok(Visibility::new(settings, memberships))
    }

    /// Client form of stored events, in the given order.
    pub async fn client_events(
        &self,
        rows: &[EventRow],
        device: Option<&str>,
    ) -> Result<Vec<Value>> {
        let redactions: Vec<String> = rows.iter().filter_map(|r| r.redacted_by.clone()).collect();
        let because: HashMap<String, EventRow> = if redactions.is_empty() {
            HashMap::new()
        } else {
            self.store
                .get_events(&redactions)
                .await?
                .into_iter()
                .map(|r| (r.event_id.clone(), r))
                .collect()
        };
        let replaced: Vec<String> = rows
            .iter()
            .filter_map(|r| r.replaces_state.clone())
            .collect();
        let prev: HashMap<String, EventRow> = if replaced.is_empty() {
            HashMap::new()
        } else {
            self.store
                .get_events(&replaced)
                .await?
                .into_iter()
                .map(|r| (r.event_id.clone(), r))
                .collect()
        };
        let now_ms = super::create::now_ms() as u64;
        Ok(rows
            .iter()
            .map(|row| {
                let redacted_because =
                    row.redacted_by
                        .as_ref()
                        .and_then(|id| because.get(id))
                        .map(|r| {
                            client_event(
                                r,
                                Unsigned {
                                    now_ms,
                                    ..Default::default()
                                },
                            )
                        });
                let transaction_id = match (&row.txn, device) {
                    (Some((d, t)), Some(device)) if d == device => Some(t.as_str()),
                    _ => None,
                };
                let prev_content = row
                    .replaces_state
                    .as_ref()
                    .and_then(|id| prev.get(id))
                    .and_then(content_of);
                client_event(
                    row,
                    Unsigned {
                        now_ms,
                        transaction_id,
                        redacted_because,
                        prev_content,
                        replaces_state: row.replaces_state.as_deref(),
                    },
                )
            })
            .collect())
    }

    /// `/messages`: a page of visible events from `from` in direction `dir`.
    #[allow(clippy::too_many_arguments)]
    pub async fn messages(
        &self,
        room_id: &RoomId,
        user: &UserId,
        device: &str,
        from: PagePoint,
        to: Option<PagePoint>,
        dir: Direction,
        limit: i64,
        filter: &EventFilter,
        lazy_members: bool,
    ) -> Result<Page> {
        let vis = self.visibility(room_id, user).await?;
        if !vis.is_or_was_member() {
            return Err(Error::forbidden("you are not in this room"));
        }
        let bound = match vis.upper_bound() {
            Some(pos) => self.topo_point(room_id, PagePoint::Stream(pos)).await?,
            None => TopoPoint::END,
        };
        let from = self.topo_point(room_id, from).await?;
        let to = match to {
            Some(to) => Some(self.topo_point(room_id, to).await?),
            None => None,
        };
        let (from, to) = match dir {
            Direction::Backward => (from.min(bound), to.unwrap_or(TopoPoint::START)),
            Direction::Forward => (from, to.unwrap_or(TopoPoint::END).min(bound)),
        };
        let rows = self
            .store
            .room_events_topological(room_id.as_str(), from.pair(), to.pair(), dir, limit, filter)
            .await?;
        let end = rows.last().map(|r| match dir {
            Direction::Backward => TopoPoint::before(r),
            Direction::Forward => TopoPoint::after(r),
        });
        let end = if (rows.len() as i64) < limit {
            None
        } else {
            end
        };
        let visible: Vec<EventRow> = rows
            .into_iter()
            .filter(|r| vis.can_see(r.stream_pos))
            .collect();
        let state = if lazy_members {
            self.member_events_for(room_id, &visible).await?
        } else {
            vec![]
        };
        Ok(Page {
            chunk: self.client_events(&visible, Some(device)).await?,
            start: from,
            end,
            state,
        })
    }

    /// A page point as a topological point: a stream position stands for the point just
    /// after the room's newest event at or before it.
    async fn topo_point(&self, room_id: &RoomId, point: PagePoint) -> Result<TopoPoint> {
        Ok(match point {
            PagePoint::Topo(t) => t,
            PagePoint::Stream(pos) => TopoPoint {
                depth: self
                    .store
                    .depth_at(room_id.as_str(), pos)
                    .await?
                    .unwrap_or(0),
                stream: pos,
            },
        })
    }

    /// Current member events of the senders of `rows`, in client form.
    pub async fn member_events_for(
        &self,
        room_id: &RoomId,
        rows: &[EventRow],
    ) -> Result<Vec<Value>> {
        let rows = self.member_events_rows(room_id.as_str(), rows).await?;
        self.client_events(&rows, None).await
    }

    /// Current member events of the senders of `rows`.
    pub async fn member_events_rows(
        &self,
        room_id: &str,
        rows: &[EventRow],
    ) -> Result<Vec<EventRow>> {
        let senders: std::collections::BTreeSet<String> = rows
            .iter()
            .filter_map(|r| {
                serde_json::from_str::<Value>(&r.json)
                    .ok()?
                    .get("sender")?
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        let state = self.store.current_state_ids(room_id).await?;
        let ids: Vec<String> = senders
            .into_iter()
            .filter_map(|u| state.get(&("m.room.member".to_owned(), u)).cloned())
            .collect();
        Ok(self.store.get_events(&ids).await?)
    }

    /// One event, if the user may see it.
    pub async fn event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        device: &str,
        event_id: &EventId,
    ) -> Result<Value> {
        let row = self.visible_event(room_id, user, event_id).await?;
        Ok(self.client_events(&[row], Some(device)).await?.remove(0))
    }

    async fn visible_event(
        &self,
        room_id: &RoomId,
        user: &UserId,
        event_id: &EventId,
    ) -> Result<EventRow> {
        let vis = self.visibility(room_id, user).await?;
        match self.store.get_event(event_id.as_str()).await? {
            Some(row) if row.room_id == room_id.as_str() && vis.can_see(row.stream_pos) => Ok(row),
            _ => Err(Error::not_found("event not found")),
        }
    }

    /// `/context`: events before and after an event, and the state at the last one.
    pub async fn context(
        &self,
        room_id: &RoomId,
        user: &UserId,
        device: &str,
        event_id: &EventId,
        limit: i64,
        filter: &EventFilter,
    ) -> Result<Context> {
        let row = self.visible_event(room_id, user, event_id).await?;
        let vis = self.visibility(room_id, user).await?;
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let bound = match vis.upper_bound() {
            Some(pos) => self.topo_point(room_id, PagePoint::Stream(pos)).await?,
            None => TopoPoint::END,
        };
        let before = self
            .store
            .room_events_topological(
                room_id.as_str(),
                TopoPoint::before(&row).pair(),
                TopoPoint::START.pair(),
                Direction::Backward,
                before_n,
                filter,
            )
            .await?;
        let after = self
            .store
            .room_events_topological(
                room_id.as_str(),
                TopoPoint::after(&row).pair(),
                bound.pair(),
                Direction::Forward,
                after_n,
                filter,
            )
            .await?;
        let start = before
            .last()
            .map(TopoPoint::before)
            .unwrap_or(TopoPoint::before(&row));
        let end = after
            .last()
            .map(TopoPoint::after)
            .unwrap_or(TopoPoint::after(&row));
        let last = after.last().unwrap_or(&row);
        let state_ids = self.state_after(last).await?;
        let state_rows = self
            .store
            .get_events(&state_ids.into_values().collect::<Vec<_>>())
            .await?;
        let before: Vec<EventRow> = before
            .into_iter()
            .filter(|r| vis.can_see(r.stream_pos))
            .collect();
        let after: Vec<EventRow> = after
            .into_iter()
            .filter(|r| vis.can_see(r.stream_pos))
            .collect();
        Ok(Context {
            event: self
                .client_events(std::slice::from_ref(&row), Some(device))
                .await?
                .remove(0),
            before: self.client_events(&before, Some(device)).await?,
            after: self.client_events(&after, Some(device)).await?,
            state: self.client_events(&state_rows, None).await?,
            start,
            end,
        })
    }

    /// The room state after an event (its state group plus the event itself if it is state).
    pub async fn state_after(&self, row: &EventRow) -> Result<StateIds> {
        let mut state = self.store.state_at_group(row.state_group).await?;
        let v: Value = serde_json::from_str(&row.json).map_err(Error::internal)?;
        if let (Some(kind), Some(key)) = (
            v.get("type").and_then(Value::as_str),
            v.get("state_key").and_then(Value::as_str),
        ) {
            state.insert((kind.to_owned(), key.to_owned()), row.event_id.clone());
        }
        Ok(state)
    }

    /// `/relations`: events relating to a visible event.
    #[allow(clippy::too_many_arguments)]
    pub async fn relations(
        &self,
        room_id: &RoomId,
        user: &UserId,
        device: &str,
        event_id: &EventId,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: Option<i64>,
        to: Option<i64>,
        dir: Direction,
        limit: i64,
    ) -> Result<StreamPage> {
        self.visible_event(room_id, user, event_id).await?;
        let vis = self.visibility(room_id, user).await?;
        let (from, to) = match dir {
            Direction::Backward => (from.unwrap_or(i64::MAX), to.unwrap_or(0)),
            Direction::Forward => (from.unwrap_or(0), to.unwrap_or(i64::MAX)),
        };
        let rows = self
            .store
            .relations(
                room_id.as_str(),
                event_id.as_str(),
                rel_type,
                event_type,
                from,
                to,
                dir,
                limit,
            )
            .await?;
        let end = if (rows.len() as i64) < limit {
            None
        } else {
            rows.last().map(|r| {
                if dir == Direction::Backward {
                    r.stream_pos - 1
                } else {
                    r.stream_pos
                }
            })
        };
        let rows: Vec<EventRow> = rows
            .into_iter()
            .filter(|r| vis.can_see(r.stream_pos))
            .collect();
        Ok(StreamPage {
            chunk: self.client_events(&rows, Some(device)).await?,
            end,
        })
    }

    /// The state a user may see: current state while joined, else the state when they left.
    pub async fn visible_state(&self, room_id: &RoomId, user: &UserId) -> Result<Vec<EventRow>> {
        let vis = self.visibility(room_id, user).await?;
        let ids = match vis.upper_bound() {
            None if vis.current() == Some("join") => {
                self.store.current_state_ids(room_id.as_str()).await?
            }
            _ if vis.current_setting() == "world_readable" => {
                self.store.current_state_ids(room_id.as_str()).await?
            }
            Some(pos) if vis.is_or_was_member() => {
                let leave = self
                    .store
                    .membership_changes(user.as_str(), pos - 1, pos)
                    .await?
                    .into_iter()
                    .find(|m| m.room_id == room_id.as_str())
                    .ok_or_else(|| Error::forbidden("you are not in this room"))?;
                let row = self
                    .store
                    .get_event(&leave.event_id)
                    .await?
                    .ok_or_else(|| Error::internal("membership event missing"))?;
                self.state_after(&row).await?
            }
            _ => return Err(Error::forbidden("you are not in this room")),
        };
        let rows = self
            .store
            .get_events(&ids.into_values().collect::<Vec<_>>())
            .await?;
        Ok(rows)
    }

    /// One state event's content, as the user may see it.
    pub async fn state_content(
        &self,
        room_id: &RoomId,
        user: &UserId,
        kind: &str,
        key: &str,
    ) -> Result<Value> {
        let rows = self.visible_state(room_id, user).await?;
        rows.iter()
            .find(|r| {
                serde_json::from_str::<Value>(&r.json)
                    .map(|v| {
                        v.get("type").and_then(Value::as_str) == Some(kind)
                            && v.get("state_key").and_then(Value::as_str) == Some(key)
                    })
                    .unwrap_or(false)
            })
            .and_then(content_of)
            .ok_or_else(|| Error::not_found("state event not found"))
    }

    /// Member events the user may see, by membership.
    pub async fn member_events(
        &self,
        room_id: &RoomId,
        user: &UserId,
        membership: Option<&str>,
        not_membership: Option<&str>,
    ) -> Result<Vec<Value>> {
        let rows: Vec<EventRow> = self
            .visible_state(room_id, user)
            .await?
            .into_iter()
            .filter(|r| {
                let v: Value = serde_json::from_str(&r.json).unwrap_or_default();
                let m = v.pointer("/content/membership").and_then(Value::as_str);
                v.get("type").and_then(Value::as_str) == Some("m.room.member")
                    && membership.is_none_or(|want| m == Some(want))
                    && not_membership.is_none_or(|not| m != Some(not))
            })
            .collect();
        self.client_events(&rows, None).await
    }

    /// `joined_members`: display names and avatars of joined members.
    pub async fn joined_members(
        &self,
        room_id: &RoomId,
        user: &UserId,
    ) -> Result<BTreeMap<String, (Option<String>, Option<String>)>> {
        if self
            .with_state(room_id, |s| s.membership(user))
            .await?
            .flatten()
            .as_deref()
            != Some("join")
        {
            return Err(Error::forbidden("you are not in this room"));
        }
        let rows = self.store.members(room_id.as_str(), Some("join")).await?;
        let ids: Vec<String> = rows.iter().map(|(_, id)| id.clone()).collect();
        let events = self.store.get_events(&ids).await?;
        Ok(events
            .iter()
            .filter_map(|r| {
                let v: Value = serde_json::from_str(&r.json).ok()?;
                let content = v.get("content")?;
                Some((
                    v.get("state_key")?.as_str()?.to_owned(),
                    (
                        content
                            .get("displayname")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        content
                            .get("avatar_url")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                    ),
                ))
            })
            .collect())
    }
}

pub struct Context {
    pub event: Value,
    pub before: Vec<Value>,
    pub after: Vec<Value>,
    pub state: Vec<Value>,
    pub start: TopoPoint,
    pub end: TopoPoint,
}

#[cfg(test)]
mod tests {
    use super::Visibility;

    fn vis(settings: &[(i64, &str)], memberships: &[(i64, &str)]) -> Visibility {
        let own = |v: &[(i64, &str)]| v.iter().map(|(p, s)| (*p, s.to_string())).collect();
        Visibility::new(own(settings), own(memberships))
    }

    #[test]
    fn history_from_other_servers_takes_the_earliest_known_setting() {
        // Joined over federation at 5; the state we were given (at -3) says `joined`.
        let v = vis(&[(-3, "joined")], &[(5, "join")]);
        assert!(
            !v.can_see(-20),
            "backfilled history before the join stays hidden"
        );
        assert!(v.can_see(6));
        let v = vis(&[(-3, "shared")], &[(5, "join")]);
        assert!(v.can_see(-20));
        // Local history before any setting keeps the spec's default, `shared`.
        let v = vis(&[(3, "joined")], &[(5, "join")]);
        assert!(v.can_see(1));
    }
}
