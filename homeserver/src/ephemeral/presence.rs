//! Presence: online while the user's client syncs (and for 30 s after), unavailable after five
//! minutes without activity or when set so, offline otherwise. A user may hide their presence
//! (global account data `de.tim.presence` `{"visible": false}`): others then always see them
//! offline. Changes wake the users who share a room; a timer task per tenant applies the time
//! outs — it sleeps until the next deadline, nothing polls.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ruma::{OwnedUserId, UserId, presence::PresenceState};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Serial, now_ms};
use crate::{error::Result, homeserver::Homeserver};

/// Account data type of the user's presence visibility setting.
pub const VISIBILITY_SETTING: &str = "de.tim.presence";
/// A client that stopped syncing this long ago is offline.
const SYNC_TIMEOUT_MS: i64 = 30_000;
/// Without activity this long, an online user becomes unavailable.
const IDLE_MS: i64 = 5 * 60_000;

/// What others see of a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    pub state: PresenceState,
    pub currently_active: bool,
    pub status_msg: Option<String>,
}

#[derive(Default)]
struct UserPresence {
    /// What the user set (state, status, visibility) was read from the store.
    loaded: bool,
    /// Set by `PUT /presence`: `unavailable` and `offline` stick while the client syncs.
    explicit: Option<PresenceState>,
    status_msg: Option<String>,
    hidden: bool,
    last_active_ms: i64,
    /// Syncs in flight that count as online, and syncs asking to show the user unavailable.
    syncing: u32,
    syncing_unavailable: u32,
    last_sync_ms: i64,
    shown: Option<Shown>,
    serial: i64,
    /// The deadline the timer task holds for the user: one at a time, however often the
    /// user is active.
    armed: Option<i64>,
}

impl UserPresence {
    fn compute(&self, now: i64) -> Shown {
        let connected = self.syncing > 0 || now - self.last_sync_ms < SYNC_TIMEOUT_MS;
        let state = if self.hidden || !connected || self.explicit == Some(PresenceState::Offline) {
            PresenceState::Offline
        } else if self.explicit == Some(PresenceState::Unavailable)
            || (self.syncing_unavailable > 0 && self.syncing_unavailable == self.syncing)
            || now - self.last_active_ms >= IDLE_MS
        {
            PresenceState::Unavailable
        } else {
            PresenceState::Online
        };
        Shown {
            currently_active: state == PresenceState::Online,
            state,
            status_msg: if self.hidden {
                None
            } else {
                self.status_msg.clone()
            },
        }
    }

    /// When the shown state may change next without anything happening.
    fn next_deadline(&self, now: i64) -> Option<i64> {
        let mut next = None;
        if self.syncing == 0 && now - self.last_sync_ms < SYNC_TIMEOUT_MS {
            next = Some(self.last_sync_ms + SYNC_TIMEOUT_MS);
        }
        if now - self.last_active_ms < IDLE_MS {
            let idle = self.last_active_ms + IDLE_MS;
            next = Some(next.map_or(idle, |n: i64| n.min(idle)));
        }
        next
    }
}

/// How a sync asks to show the user (`set_presence`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPresence {
    Online,
    Unavailable,
    /// The sync does not make the user appear online.
    Offline,
}

pub struct Presence {
    serial: Arc<Serial>,
    users: Mutex<HashMap<OwnedUserId, UserPresence>>,
    timers: mpsc::UnboundedSender<(i64, OwnedUserId)>,
}

impl Presence {
    /// The presence service and its timer task's input (start it with `run_timers`).
    pub fn new(serial: Arc<Serial>) -> (Self, mpsc::UnboundedReceiver<(i64, OwnedUserId)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                serial,
                users: Mutex::default(),
                timers: tx,
            },
            rx,
        )
    }

    /// Applies `f` to the user's presence; returns whether what others see changed (and then
    /// gives the change a new serial) and arms the timer for the next timed change.
    fn update(&self, user: &UserId, f: impl FnOnce(&mut UserPresence)) -> bool {
        let now = now_ms();
        let mut users = self.users.lock().expect("presence lock");
        let entry = users.entry(user.to_owned()).or_default();
        f(entry);
        let shown = entry.compute(now);
        // Someone never seen was offline: appearing offline is no change to announce.
        let before = entry.shown.clone().unwrap_or(Shown {
            state: PresenceState::Offline,
            currently_active: false,
            status_msg: None,
        });
        let changed = before != shown;
        if changed {
            entry.shown = Some(shown);
            entry.serial = self.serial.next();
        }
        if entry.armed.is_some_and(|a| a <= now) {
            entry.armed = None;
        }
        if let Some(at) = entry.next_deadline(now)
            && entry.armed.is_none_or(|a| at < a)
        {
            entry.armed = Some(at);
            let _ = self.timers.send((at, user.to_owned()));
        }
        changed
    }

    /// The user did something (sent, read, typed): they are active now.
    pub fn active(&self, hs: &Arc<Homeserver>, user: &UserId) {
        if !self.is_loaded(user) {
            // What the user set (e.g. hidden) must be known before anything is shown.
            let (hs, user) = (hs.clone(), user.to_owned());
            tokio::spawn(async move {
                if hs.presence.ensure_loaded(&hs, &user).await.is_ok() {
                    hs.presence.active(&hs, &user);
                }
            });
            return;
        }
        if self.update(user, |p| p.last_active_ms = now_ms()) {
            publish(hs, user);
        }
    }

    fn is_loaded(&self, user: &UserId) -> bool {
        self.users
            .lock()
            .expect("presence lock")
            .get(user)
            .is_some_and(|p| p.loaded)
    }

    /// Loads what the user set (state, status message, visibility) on first use.
    async fn ensure_loaded(&self, hs: &Homeserver, user: &UserId) -> Result<()> {
        if self.is_loaded(user) {
            return Ok(());
        }
        let explicit = hs.stores.profiles.presence(user.as_str()).await?;
        let hidden = hidden(
            hs.stores
                .account_data
                .get(user.as_str(), "", VISIBILITY_SETTING)
                .await?
                .as_deref(),
        );
        let mut users = self.users.lock().expect("presence lock");
        let entry = users.entry(user.to_owned()).or_default();
        if entry.loaded {
            return Ok(());
        }
        if let Some((state, msg)) = explicit {
            entry.explicit = Some(PresenceState::from(state.as_str()));
            entry.status_msg = msg;
        }
        entry.hidden = hidden;
        entry.loaded = true;
        Ok(())
    }

    /// Presence of users changed after serial `since` (all known ones for `None`), as shown.
    pub fn changed_since(&self, since: Option<i64>) -> Vec<(OwnedUserId, Shown, i64)> {
        let now = now_ms();
        let users = self.users.lock().expect("presence lock");
        users
            .iter()
            .filter(|(_, p)| since.is_none_or(|s| p.serial > s))
            .filter_map(|(u, p)| {
                let shown = p.shown.clone()?;
                let ago = if shown.state == PresenceState::Offline && p.hidden {
                    -1
                } else {
                    now - p.last_active_ms
                };
                Some((u.clone(), shown, ago))
            })
            .collect()
    }

    /// What others see of the user now: `(shown, ms since last active)`.
    pub async fn get(&self, hs: &Homeserver, user: &UserId) -> Result<(Shown, Option<i64>)> {
        self.ensure_loaded(hs, user).await?;
        let users = self.users.lock().expect("presence lock");
        let p = users.get(user).expect("loaded");
        let shown = p.compute(now_ms());
        let ago = (!p.hidden && p.last_active_ms > 0).then(|| now_ms() - p.last_active_ms);
        Ok((shown, ago))
    }
}

fn hidden(setting: Option<&str>) -> bool {
    setting
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|v| v.get("visible").and_then(Value::as_bool))
        == Some(false)
}

/// Wakes the users who share a room with `user` (and the user) to see their new presence.
fn publish(hs: &Arc<Homeserver>, user: &UserId) {
    let (hs, user) = (Arc::downgrade(hs), user.to_owned());
    tokio::spawn(async move {
        let Some(hs) = hs.upgrade() else { return };
        match hs.stores.events.users_sharing_rooms(user.as_str()).await {
            Ok(users) => {
                let users: Vec<OwnedUserId> = users
                    .into_iter()
                    .filter_map(|u| OwnedUserId::try_from(u).ok())
                    .chain([user.clone()])
                    .collect();
                hs.notifier.wake(users.iter().map(|u| u.as_ref()));
            }
            Err(e) => tracing::warn!(error = %e, "presence change not announced"),
        }
    });
}

/// A sync in flight; dropping it ends it.
pub struct SyncGuard {
    hs: Weak<Homeserver>,
    user: OwnedUserId,
    how: SyncPresence,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let Some(hs) = self.hs.upgrade() else { return };
        if self.how == SyncPresence::Offline {
            return;
        }
        let unavailable = self.how == SyncPresence::Unavailable;
        if hs.presence.update(&self.user, |p| {
            p.syncing = p.syncing.saturating_sub(1);
            if unavailable {
                p.syncing_unavailable = p.syncing_unavailable.saturating_sub(1);
            }
            p.last_sync_ms = now_ms();
        }) {
            publish(&hs, &self.user);
        }
    }
}

impl Homeserver {
    /// A sync starts: the user is connected until it ends (and `SYNC_TIMEOUT_MS` after).
    pub async fn sync_started(
        self: &Arc<Self>,
        user: &UserId,
        how: SyncPresence,
    ) -> Result<SyncGuard> {
        self.presence.ensure_loaded(self, user).await?;
        if how != SyncPresence::Offline {
            let changed = self.presence.update(user, |p| {
                p.syncing += 1;
                if how == SyncPresence::Unavailable {
                    p.syncing_unavailable += 1;
                }
                p.last_sync_ms = now_ms();
                // Coming back after being offline counts as activity.
                if p.shown
                    .as_ref()
                    .is_none_or(|s| s.state == PresenceState::Offline)
                {
                    p.last_active_ms = now_ms();
                }
            });
            if changed {
                publish(self, user);
            }
        }
        Ok(SyncGuard {
            hs: Arc::downgrade(self),
            user: user.to_owned(),
            how,
        })
    }

    /// `PUT /presence/{userId}/status`: kept across restarts.
    pub async fn set_presence(
        self: &Arc<Self>,
        user: &UserId,
        state: PresenceState,
        status_msg: Option<String>,
    ) -> Result<()> {
        self.presence.ensure_loaded(self, user).await?;
        self.stores
            .profiles
            .set_presence(
                user.as_str(),
                state.as_str(),
                status_msg.as_deref(),
                now_ms(),
            )
            .await?;
        let changed = self.presence.update(user, |p| {
            if state == PresenceState::Online {
                p.last_active_ms = now_ms();
            }
            p.explicit = Some(state);
            p.status_msg = status_msg;
        });
        if changed {
            publish(self, user);
        }
        Ok(())
    }

    /// The visibility setting changed (account data `de.tim.presence`).
    pub(crate) async fn presence_visibility_changed(
        self: &Arc<Self>,
        user: &UserId,
        content: &str,
    ) {
        if let Err(e) = self.presence.ensure_loaded(self, user).await {
            tracing::warn!(error = %e, "presence setting not applied");
            return;
        }
        let hide = hidden(Some(content));
        if self.presence.update(user, |p| p.hidden = hide) {
            publish(self, user);
        }
    }

    /// `m.presence` events for a sync: users sharing a room with `user` (and the user) whose
    /// presence changed after serial `since`.
    pub async fn presence_events(&self, user: &UserId, since: Option<i64>) -> Result<Vec<Value>> {
        let changed = self.presence.changed_since(since);
        if changed.is_empty() {
            return Ok(vec![]);
        }
        let sharing: std::collections::HashSet<String> = if changed.iter().any(|(u, ..)| u != user)
        {
            self.stores
                .events
                .users_sharing_rooms(user.as_str())
                .await?
                .into_iter()
                .collect()
        } else {
            Default::default()
        };
        Ok(changed
            .into_iter()
            .filter(|(u, ..)| u == user || sharing.contains(u.as_str()))
            .map(|(u, shown, ago)| presence_event(&u, &shown, (ago >= 0).then_some(ago)))
            .collect())
    }
}

pub fn presence_event(user: &UserId, shown: &Shown, last_active_ago: Option<i64>) -> Value {
    let mut content = json!({
        "presence": shown.state.as_str(),
        "currently_active": shown.currently_active,
    });
    if let Some(ago) = last_active_ago {
        content["last_active_ago"] = json!(ago);
    }
    if let Some(msg) = &shown.status_msg {
        content["status_msg"] = json!(msg);
    }
    json!({ "type": "m.presence", "sender": user, "content": content })
}

/// The tenant's presence timer task: applies timed changes (sync timeout, idle) at their
/// deadlines. Ends when the tenant goes away.
pub async fn run_timers(hs: Weak<Homeserver>, mut rx: mpsc::UnboundedReceiver<(i64, OwnedUserId)>) {
    let mut heap: BinaryHeap<Reverse<(i64, OwnedUserId)>> = BinaryHeap::new();
    loop {
        let next = heap.peek().map(|Reverse((at, _))| *at);
        let sleep = async {
            match next {
                Some(at) => {
                    let wait = (at - now_ms()).max(0) as u64;
                    tokio::time::sleep(Duration::from_millis(wait)).await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((at, user)) => heap.push(Reverse((at, user))),
                None => return,
            },
            _ = sleep => {
                let now = now_ms();
                let Some(hs) = hs.upgrade() else { return };
                while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    let Reverse((_, user)) = heap.pop().expect("peeked");
                    if hs.presence.update(&user, |_| {}) {
                        publish(&hs, &user);
                    }
                }
            }
        }
    }
}
