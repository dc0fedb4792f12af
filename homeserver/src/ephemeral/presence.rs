//! Presence: online while the user's client syncs (and for 30 s after), unavailable after five
//! minutes without activity or when set so, offline otherwise. A user may hide their presence
//! (global account data `de.tim.presence` `{"visible": false}`): others then always see them
//! offline. Changes wake the users who share a room and go to the servers of the others as
//! `m.presence` EDUs (renewed every `PING_MS` while not offline); other servers' users are
//! shown as their server last said, offline once it has not renewed it for `REMOTE_TIMEOUT_MS`.
//! A timer task per tenant applies the time outs — it sleeps until the next deadline, nothing
//! polls.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::{Arc, Mutex, Weak},
    time::Duration,
};

use ruma::{
    OwnedServerName, OwnedUserId, ServerName, UserId,
    api::federation::transactions::edu::PresenceContent, presence::PresenceState,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Serial, now_ms};
use crate::{
    e2ee::device_lists::RemoteUpdates,
    error::{Error, Result},
    store::{AccountDataStore, EventStore, ProfileStore},
    sync::notifier::Notifier,
};

/// Account data type of the user's presence visibility setting.
pub const VISIBILITY_SETTING: &str = "de.tim.presence";
/// A client that stopped syncing this long ago is offline.
const SYNC_TIMEOUT_MS: i64 = 30_000;
/// Without activity this long, an online user becomes unavailable.
const IDLE_MS: i64 = 5 * 60_000;
/// A local user who is not offline is told to other servers again this often (as Synapse
/// does), so their view does not time out.
const PING_MS: i64 = 25 * 60_000;
/// Another server's user it has not said anything about for this long is shown offline.
const REMOTE_TIMEOUT_MS: i64 = 30 * 60_000;

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
    /// A user of another server: what its server last said, and when.
    remote: Option<(Shown, i64)>,
    /// When other servers were last told about this (local) user.
    told_ms: i64,
}

impl UserPresence {
    fn compute(&self, now: i64) -> Shown {
        if let Some((shown, at)) = &self.remote {
            return if now - at < REMOTE_TIMEOUT_MS {
                shown.clone()
            } else {
                OFFLINE
            };
        }
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
        if let Some((_, at)) = self.remote {
            return (now - at < REMOTE_TIMEOUT_MS).then_some(at + REMOTE_TIMEOUT_MS);
        }
        let mut next = None;
        if self
            .shown
            .as_ref()
            .is_some_and(|s| s.state != PresenceState::Offline)
        {
            next = Some(self.told_ms + PING_MS);
        }
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

const OFFLINE: Shown = Shown {
    state: PresenceState::Offline,
    currently_active: false,
    status_msg: None,
};

/// What an update changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// What others see changed: wake them.
    changed: bool,
    /// A local user to tell other servers about (changed, or due again).
    tell: bool,
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
    server_name: OwnedServerName,
    serial: Arc<Serial>,
    users: Mutex<HashMap<OwnedUserId, UserPresence>>,
    timers: mpsc::UnboundedSender<(i64, OwnedUserId)>,
    profiles: Arc<dyn ProfileStore>,
    account_data: Arc<dyn AccountDataStore>,
    events: Arc<dyn EventStore>,
    notifier: Arc<Notifier>,
    remote: Arc<dyn RemoteUpdates>,
}

impl Presence {
    /// The presence service and its timer task's input (start it with `run_timers`).
    pub fn new(
        server_name: OwnedServerName,
        serial: Arc<Serial>,
        (profiles, account_data, events): (
            Arc<dyn ProfileStore>,
            Arc<dyn AccountDataStore>,
            Arc<dyn EventStore>,
        ),
        notifier: Arc<Notifier>,
        remote: Arc<dyn RemoteUpdates>,
    ) -> (Self, mpsc::UnboundedReceiver<(i64, OwnedUserId)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Self {
                server_name,
                serial,
                users: Mutex::default(),
                timers: tx,
                profiles,
                account_data,
                events,
                notifier,
                remote,
            },
            rx,
        )
    }

    /// Applies `f` to the user's presence and arms the timer for the next timed change; what
    /// others see gets a new serial when it changed.
    fn update(&self, user: &UserId, f: impl FnOnce(&mut UserPresence)) -> Outcome {
        let now = now_ms();
        let local = user.server_name() == self.server_name;
        let mut users = self.users.lock().expect("presence lock");
        let entry = users.entry(user.to_owned()).or_default();
        f(entry);
        let shown = entry.compute(now);
        // Someone never seen was offline: appearing offline is no change to announce.
        let before = entry.shown.clone().unwrap_or(OFFLINE);
        let changed = before != shown;
        let due = shown.state != PresenceState::Offline && now - entry.told_ms >= PING_MS;
        let tell = local && (changed || due);
        if changed {
            entry.shown = Some(shown);
            entry.serial = self.serial.next();
        }
        if tell {
            entry.told_ms = now;
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
        Outcome { changed, tell }
    }

    /// `update`, then the change announced: to the users who share a room with `user` (and
    /// the user), and for a local user to the servers of the remote ones.
    fn change(self: &Arc<Self>, user: &UserId, f: impl FnOnce(&mut UserPresence)) {
        let outcome = self.update(user, f);
        if outcome.changed || outcome.tell {
            self.publish(user, outcome);
        }
    }

    /// The user did something (sent, read, typed): they are active now.
    pub fn active(self: &Arc<Self>, user: &UserId) {
        if !self.is_loaded(user) {
            // What the user set (e.g. hidden) must be known before anything is shown.
            let (this, user) = (self.clone(), user.to_owned());
            tokio::spawn(async move {
                if this.ensure_loaded(&user).await.is_ok() {
                    this.active(&user);
                }
            });
            return;
        }
        self.change(user, |p| p.last_active_ms = now_ms());
    }

    fn is_loaded(&self, user: &UserId) -> bool {
        self.users
            .lock()
            .expect("presence lock")
            .get(user)
            .is_some_and(|p| p.loaded)
    }

    /// Loads what the user set (state, status message, visibility) on first use.
    async fn ensure_loaded(&self, user: &UserId) -> Result<()> {
        if self.is_loaded(user) {
            return Ok(());
        }
        let explicit = self.profiles.presence(user.as_str()).await?;
        let hidden = hidden(
            self.account_data
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
    pub async fn get(&self, user: &UserId) -> Result<(Shown, Option<i64>)> {
        self.ensure_loaded(user).await?;
        let users = self.users.lock().expect("presence lock");
        let p = users.get(user).expect("loaded");
        let shown = p.compute(now_ms());
        let ago = (!p.hidden && p.last_active_ms > 0).then(|| now_ms() - p.last_active_ms);
        Ok((shown, ago))
    }

    /// Wakes the users who share a room with `user` (and the user) to see their new presence;
    /// a local user's presence goes to the servers of the others too.
    fn publish(self: &Arc<Self>, user: &UserId, outcome: Outcome) {
        let (this, user) = (Arc::downgrade(self), user.to_owned());
        tokio::spawn(async move {
            let Some(this) = this.upgrade() else { return };
            let users = match this.events.users_sharing_rooms(user.as_str()).await {
                Ok(users) => users,
                Err(e) => {
                    tracing::warn!(error = %e, "presence change not announced");
                    return;
                }
            };
            let users: Vec<OwnedUserId> = users
                .into_iter()
                .filter_map(|u| OwnedUserId::try_from(u).ok())
                .chain([user.clone()])
                .collect();
            if outcome.changed {
                this.notifier.wake(
                    users
                        .iter()
                        .filter(|u| u.server_name() == this.server_name)
                        .map(|u| u.as_ref()),
                );
            }
            if outcome.tell {
                this.tell_servers(&user, &users).await;
            }
        });
    }

    /// An `m.presence` EDU about `user` for the servers of `sharing` other than ours.
    async fn tell_servers(&self, user: &UserId, sharing: &[OwnedUserId]) {
        let mut servers: Vec<OwnedServerName> = sharing
            .iter()
            .map(|u| u.server_name().to_owned())
            .filter(|s| *s != self.server_name)
            .collect();
        servers.sort();
        servers.dedup();
        if servers.is_empty() {
            return;
        }
        let (shown, ago) = {
            let users = self.users.lock().expect("presence lock");
            let Some(p) = users.get(user) else { return };
            let shown = p.shown.clone().unwrap_or(OFFLINE);
            // Hidden: other servers learn nothing of when the user was last active.
            let ago = if p.hidden {
                0
            } else {
                (now_ms() - p.last_active_ms).max(0)
            };
            (shown, ago)
        };
        let mut update = json!({
            "user_id": user,
            "presence": shown.state.as_str(),
            "currently_active": shown.currently_active,
            "last_active_ago": ago,
        });
        if let Some(msg) = &shown.status_msg {
            update["status_msg"] = json!(msg);
        }
        let content = json!({ "push": [update] });
        let edus = servers
            .into_iter()
            .map(|s| (s, "m.presence".to_owned(), content.clone()))
            .collect();
        if let Err(e) = self.remote.queue(edus).await {
            tracing::warn!(error = %e, "presence for other servers not queued");
        }
    }

    /// An `m.presence` EDU from `origin`: its users' presence as it says; users of other
    /// servers in it are refused (a server speaks only for its own users).
    pub fn receive(self: &Arc<Self>, origin: &ServerName, edu: PresenceContent) -> Result<()> {
        let mut foreign = false;
        for update in edu.push {
            if update.user_id.server_name() != origin {
                foreign = true;
                continue;
            }
            let now = now_ms();
            let ago = i64::try_from(u64::from(update.last_active_ago)).unwrap_or(i64::MAX);
            let shown = Shown {
                currently_active: update.currently_active
                    && update.presence == PresenceState::Online,
                state: update.presence,
                status_msg: update.status_msg,
            };
            self.change(&update.user_id, |p| {
                p.loaded = true;
                p.last_active_ms = now.saturating_sub(ago);
                p.remote = Some((shown, now));
            });
        }
        if foreign {
            return Err(Error::forbidden(
                "a presence update names users of another server",
            ));
        }
        Ok(())
    }

    /// A sync starts: the user is connected until it ends (and `SYNC_TIMEOUT_MS` after).
    pub async fn sync_started(
        self: &Arc<Self>,
        user: &UserId,
        how: SyncPresence,
    ) -> Result<SyncGuard> {
        self.ensure_loaded(user).await?;
        if how != SyncPresence::Offline {
            self.change(user, |p| {
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
        }
        Ok(SyncGuard {
            presence: Arc::downgrade(self),
            user: user.to_owned(),
            how,
        })
    }

    /// `PUT /presence/{userId}/status`: kept across restarts.
    pub async fn set(
        self: &Arc<Self>,
        user: &UserId,
        state: PresenceState,
        status_msg: Option<String>,
    ) -> Result<()> {
        self.ensure_loaded(user).await?;
        self.profiles
            .set_presence(
                user.as_str(),
                state.as_str(),
                status_msg.as_deref(),
                now_ms(),
            )
            .await?;
        self.change(user, |p| {
            if state == PresenceState::Online {
                p.last_active_ms = now_ms();
            }
            p.explicit = Some(state);
            p.status_msg = status_msg;
        });
        Ok(())
    }

    /// The visibility setting changed (account data `de.tim.presence`).
    pub async fn visibility_changed(self: &Arc<Self>, user: &UserId, content: &str) {
        if let Err(e) = self.ensure_loaded(user).await {
            tracing::warn!(error = %e, "presence setting not applied");
            return;
        }
        let hide = hidden(Some(content));
        self.change(user, |p| p.hidden = hide);
    }

    /// `m.presence` events for a sync: users sharing a room with `user` (and the user) whose
    /// presence changed after serial `since`.
    pub async fn events_for(&self, user: &UserId, since: Option<i64>) -> Result<Vec<Value>> {
        let changed = self.changed_since(since);
        if changed.is_empty() {
            return Ok(vec![]);
        }
        let sharing: std::collections::HashSet<String> = if changed.iter().any(|(u, ..)| u != user)
        {
            self.events
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

fn hidden(setting: Option<&str>) -> bool {
    setting
        .and_then(|s| serde_json::from_str::<Value>(s).ok())
        .and_then(|v| v.get("visible").and_then(Value::as_bool))
        == Some(false)
}

/// A sync in flight; dropping it ends it.
pub struct SyncGuard {
    presence: Weak<Presence>,
    user: OwnedUserId,
    how: SyncPresence,
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let Some(presence) = self.presence.upgrade() else {
            return;
        };
        if self.how == SyncPresence::Offline {
            return;
        }
        let unavailable = self.how == SyncPresence::Unavailable;
        presence.change(&self.user, |p| {
            p.syncing = p.syncing.saturating_sub(1);
            if unavailable {
                p.syncing_unavailable = p.syncing_unavailable.saturating_sub(1);
            }
            p.last_sync_ms = now_ms();
        });
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
pub async fn run_timers(
    presence: Weak<Presence>,
    mut rx: mpsc::UnboundedReceiver<(i64, OwnedUserId)>,
) {
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
                let Some(presence) = presence.upgrade() else { return };
                while heap.peek().is_some_and(|Reverse((at, _))| *at <= now) {
                    let Reverse((_, user)) = heap.pop().expect("peeked");
                    presence.change(&user, |_| {});
                }
            }
        }
    }
}
