//! Typing notifications: who is typing in which room, until when. A change wakes the room's
//! members; a timeout ends typing by itself. Other servers hear of our users' typing and tell
//! us of theirs (`m.typing`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{
    OwnedRoomId, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    api::federation::transactions::edu::TypingContent,
};
use tokio::time::Instant;

use super::Serial;
use crate::{
    e2ee::device_lists::RemoteUpdates,
    error::{Error, Result},
    homeserver::Homeserver,
    rooms::Rooms,
    sync::notifier::Notifier,
};

/// Longest typing timeout honoured; clients renew while the user types.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Serial of the last change. The entry stays when nobody types any more, so a sync whose
    /// token predates the change still learns that typing stopped.
    serial: i64,
}

/// Who types where, versioned by the ephemeral serial.
struct TypingState {
    serial: Arc<Serial>,
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

impl TypingState {
    fn new(serial: Arc<Serial>) -> Self {
        Self {
            serial,
            rooms: Mutex::default(),
        }
    }

    /// Marks the user typing until `until`, or not typing. True when the typing set changed.
    fn set(&self, room: &RoomId, user: &UserId, until: Option<Instant>) -> bool {
        let mut rooms = self.rooms.lock().expect("typing lock");
        let entry = rooms.entry(room.to_owned()).or_default();
        let changed = match until {
            Some(t) => entry.users.insert(user.to_owned(), t).is_none(),
            None => entry.users.remove(user).is_some(),
        };
        if changed {
            entry.serial = self.serial.next();
        }
        changed
    }

    /// Ends typing that reached `deadline` (and was not renewed since).
    fn expire(&self, room: &RoomId, user: &UserId, deadline: Instant) -> bool {
        let mut rooms = self.rooms.lock().expect("typing lock");
        let Some(entry) = rooms.get_mut(room) else {
            return false;
        };
        if entry.users.get(user).is_some_and(|t| *t <= deadline) {
            entry.users.remove(user);
            entry.serial = self.serial.next();
            return true;
        }
        false
    }

    /// The users typing in the room, if that changed after serial `since` (`None`: initial
    /// sync, reported only when someone types).
    fn changed_since(&self, room: &str, since: Option<i64>) -> Option<Vec<OwnedUserId>> {
        let rooms = self.rooms.lock().expect("typing lock");
        let entry = rooms.get(<&RoomId>::try_from(room).ok()?)?;
        let report = match since {
            Some(s) => entry.serial > s,
            None => !entry.users.is_empty(),
        };
        report.then(|| {
            let mut users: Vec<OwnedUserId> = entry.users.keys().cloned().collect();
            users.sort();
            users
        })
    }
}

/// Typing notifications of local users and of other servers' users (`m.typing` EDUs both
/// ways; a remote user's typing ends after `REMOTE_TIMEOUT` unless renewed).
pub struct Typing {
    state: TypingState,
    server_name: OwnedServerName,
    rooms: Arc<Rooms>,
    notifier: Arc<Notifier>,
    remote: Arc<dyn RemoteUpdates>,
}

/// How long another server's typing notification lasts (as Synapse sends and expects).
const REMOTE_TIMEOUT: Duration = Duration::from_secs(30);

impl Typing {
    pub fn new(
        serial: Arc<Serial>,
        server_name: OwnedServerName,
        (rooms, notifier): (Arc<Rooms>, Arc<Notifier>),
        remote: Arc<dyn RemoteUpdates>,
    ) -> Self {
        Self {
            state: TypingState::new(serial),
            server_name,
            rooms,
            notifier,
            remote,
        }
    }

    /// The users typing in the room, if that changed after serial `since`.
    pub fn changed_since(&self, room: &str, since: Option<i64>) -> Option<Vec<OwnedUserId>> {
        self.state.changed_since(room, since)
    }

    /// The user types in a room they are joined to for `timeout`, or stopped (`None`); a
    /// local user's change is told to the room's other servers.
    pub async fn set(
        self: &Arc<Self>,
        user: &UserId,
        room_id: &RoomId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let members = self.rooms.members_if_joined(user, room_id).await?;
        let until = timeout.map(|t| Instant::now() + t.min(MAX_TIMEOUT));
        if self.state.set(room_id, user, until) {
            self.notifier.wake(members.iter().map(|u| u.as_ref()));
        }
        if user.server_name() == self.server_name {
            self.tell_servers(user, room_id, timeout.is_some()).await;
        }
        if let Some(deadline) = until {
            let this = Arc::downgrade(self);
            let (room_id, user) = (room_id.to_owned(), user.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                let Some(this) = this.upgrade() else { return };
                if this.state.expire(&room_id, &user, deadline)
                    && let Ok(members) = this.rooms.members_if_joined(&user, &room_id).await
                {
                    this.notifier.wake(members.iter().map(|u| u.as_ref()));
                }
            });
        }
        Ok(())
    }

    async fn tell_servers(&self, user: &UserId, room_id: &RoomId, typing: bool) {
        let servers = match self.rooms.other_servers(room_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "typing: the room's servers not read");
                return;
            }
        };
        if servers.is_empty() {
            return;
        }
        let content = serde_json::json!({ "room_id": room_id, "user_id": user, "typing": typing });
        let edus = servers
            .into_iter()
            .map(|s| (s, "m.typing".to_owned(), content.clone()))
            .collect();
        if let Err(e) = self.remote.queue(edus).await {
            tracing::warn!(error = %e, "typing for other servers not queued");
        }
    }

    /// An `m.typing` EDU from `origin` about one of its users.
    pub async fn receive(self: &Arc<Self>, origin: &ServerName, edu: TypingContent) -> Result<()> {
        if edu.user_id.server_name() != origin {
            return Err(Error::forbidden("the user is not a user of the origin"));
        }
        let timeout = edu.typing.then_some(REMOTE_TIMEOUT);
        self.set(&edu.user_id, &edu.room_id, timeout).await
    }
}

impl Homeserver {
    /// `PUT /rooms/{roomId}/typing/{userId}`: the user types for `timeout`, or stopped (`None`).
    pub async fn set_typing(
        self: &Arc<Self>,
        user: &UserId,
        room_id: &RoomId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        if timeout.is_some() {
            self.presence.active(user);
        }
        self.typing.set(user, room_id, timeout).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_changes_are_versioned() {
        let t = TypingState::new(Arc::new(Serial::default()));
        let room = ruma::room_id!("!r:x");
        let alice = ruma::user_id!("@alice:x");
        let start = t.serial.current();
        assert!(t.changed_since(room.as_str(), None).is_none());
        let deadline = Instant::now() + Duration::from_secs(30);
        assert!(t.set(room, alice, Some(deadline)));
        assert!(!t.set(room, alice, Some(deadline)), "renewal is no change");
        assert_eq!(
            t.changed_since(room.as_str(), Some(start)).unwrap(),
            vec![alice.to_owned()]
        );
        let after = t.serial.current();
        assert!(t.changed_since(room.as_str(), Some(after)).is_none());
        assert!(t.expire(room, alice, deadline));
        assert!(
            t.changed_since(room.as_str(), Some(after))
                .unwrap()
                .is_empty()
        );
    }
}
