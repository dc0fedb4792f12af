//! Typing notifications: who is typing in which room, until when. A change wakes the room's
//! members; a timeout ends typing by itself.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use ruma::{OwnedRoomId, OwnedUserId, RoomId, UserId};
use tokio::time::Instant;

use super::Serial;
use crate::{error::Result, homeserver::Homeserver};

/// Longest typing timeout honoured; clients renew while the user types.
const MAX_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Default)]
struct RoomTyping {
    users: HashMap<OwnedUserId, Instant>,
    /// Serial of the last change. The entry stays when nobody types any more, so a sync whose
    /// token predates the change still learns that typing stopped.
    serial: i64,
}

pub struct Typing {
    serial: Arc<Serial>,
    rooms: Mutex<HashMap<OwnedRoomId, RoomTyping>>,
}

impl Typing {
    pub fn new(serial: Arc<Serial>) -> Self {
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
    pub fn changed_since(&self, room: &str, since: Option<i64>) -> Option<Vec<OwnedUserId>> {
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

impl Homeserver {
    /// `PUT /rooms/{roomId}/typing/{userId}`: the user types for `timeout`, or stopped (`None`).
    pub async fn set_typing(
        self: &Arc<Self>,
        user: &UserId,
        room_id: &RoomId,
        timeout: Option<Duration>,
    ) -> Result<()> {
        let members = self.rooms.members_if_joined(user, room_id).await?;
        if timeout.is_some() {
            self.presence.active(self, user);
        }
        let until = timeout.map(|t| Instant::now() + t.min(MAX_TIMEOUT));
        if self.typing.set(room_id, user, until) {
            self.notifier.wake(members.iter().map(|u| u.as_ref()));
        }
        if let Some(deadline) = until {
            let hs = Arc::downgrade(self);
            let (room_id, user) = (room_id.to_owned(), user.to_owned());
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline).await;
                let Some(hs) = hs.upgrade() else { return };
                if hs.typing.expire(&room_id, &user, deadline)
                    && let Ok(members) = hs.rooms.members_if_joined(&user, &room_id).await
                {
                    hs.notifier.wake(members.iter().map(|u| u.as_ref()));
                }
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typing_changes_are_versioned() {
        let t = Typing::new(Arc::new(Serial::default()));
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
