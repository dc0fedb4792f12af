//! The device-list stream: every change of a user's devices or keys is a row at a stream
//! position, so a sync or `/keys/changes` between two tokens finds exactly the users whose
//! devices changed — across restarts too. Who has to hear of a change follows from sharing an
//! encrypted room, computed when reading, so joining and leaving need no extra writes.

use std::{collections::BTreeSet, future::Future, sync::Arc};

use ruma::{OwnedUserId, UserId};

use crate::{
    error::Result,
    store::{KeyStore, StoreResult},
    sync::{notifier::Notifier, stream::StreamIds},
};

pub struct DeviceLists {
    stream: Arc<StreamIds<OwnedUserId>>,
    notifier: Arc<Notifier>,
    keys: Arc<dyn KeyStore>,
}

impl DeviceLists {
    pub fn new(
        stream: Arc<StreamIds<OwnedUserId>>,
        notifier: Arc<Notifier>,
        keys: Arc<dyn KeyStore>,
    ) -> Self {
        Self {
            stream,
            notifier,
            keys,
        }
    }

    /// Runs `write` with a new stream position at which it records a device-list change of
    /// `user` (in its own transaction), then wakes the syncs of everyone who shares an
    /// encrypted room with the user.
    pub async fn change<T, F, Fut>(&self, user: &UserId, write: F) -> Result<T>
    where
        F: FnOnce(i64) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let pos = self.stream.next();
        let out = write(pos.pos()).await?;
        let (woken, _) = pos.finish(self.audience(user).await);
        self.notifier.wake(woken.iter().map(|u| u.as_ref()));
        Ok(out)
    }

    /// Records a change of the user's devices that touches no key (a renamed device).
    pub async fn record(&self, user: &UserId) -> Result<()> {
        let keys = self.keys.clone();
        self.change(user, |pos| async move {
            keys.record_device_list_change(user.as_str(), pos).await
        })
        .await
    }

    /// The user and everyone sharing an encrypted room with them.
    pub async fn audience(&self, user: &UserId) -> Vec<OwnedUserId> {
        let mut out = vec![user.to_owned()];
        match self.keys.users_sharing_encrypted_rooms(user.as_str()).await {
            Ok(users) => out.extend(
                users
                    .iter()
                    .filter_map(|u| UserId::parse(u.as_str()).ok())
                    .filter(|u| u != user),
            ),
            // The change itself is stored; their next sync finds it anyway.
            Err(e) => tracing::warn!(error = %e, "device-list change: audience not read"),
        }
        out
    }
}

/// `device_lists` of a sync (or `/keys/changes`) from `from` to `to` for `user`.
#[derive(Default, Debug, PartialEq)]
pub struct Changes {
    pub changed: BTreeSet<String>,
    pub left: BTreeSet<String>,
}

/// Users whose devices `user` must re-fetch between two positions (their keys changed, or they
/// newly share an encrypted room with the user) and users who no longer share one.
/// `rooms`: the rooms the user was in at any point between the positions.
pub async fn changes(
    keys: &dyn KeyStore,
    user: &str,
    rooms: &[String],
    from: i64,
    to: i64,
) -> Result<Changes> {
    // Most syncs see neither: two range reads, and nothing more to do.
    let key_changes = keys.device_list_changes(from, to).await?;
    let sharing_changes = keys.sharing_changes(rooms, from, to).await?;
    let mut out = Changes::default();
    if key_changes.is_empty() && sharing_changes.is_empty() {
        return Ok(out);
    }
    let sharing: BTreeSet<String> = keys
        .users_sharing_encrypted_rooms(user)
        .await?
        .into_iter()
        .collect();
    for u in key_changes {
        if u == user || sharing.contains(&u) {
            out.changed.insert(u);
        }
    }
    let changed_rooms: Vec<String> = sharing_changes
        .iter()
        .map(|c| c.room_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let encrypted: BTreeSet<String> = keys
        .encrypted_rooms(&changed_rooms)
        .await?
        .into_iter()
        .collect();
    let mut newly_shared_rooms = BTreeSet::new();
    let mut maybe_left = BTreeSet::new();
    for c in sharing_changes
        .into_iter()
        .filter(|c| encrypted.contains(&c.room_id))
    {
        let whole_room = c.event_type == "m.room.encryption" || c.state_key == user;
        match c.membership.as_deref() {
            _ if whole_room && c.membership.as_deref().is_none_or(|m| m == "join") => {
                newly_shared_rooms.insert(c.room_id);
            }
            Some("join" | "invite") => {
                out.changed.insert(c.state_key);
            }
            Some("leave" | "ban") if c.state_key == user => {
                // The user left: everyone there may be gone from their encrypted rooms.
                for member in keys.room_members(&c.room_id).await? {
                    maybe_left.insert(member);
                }
            }
            Some("leave" | "ban") => {
                maybe_left.insert(c.state_key);
            }
            _ => {}
        }
    }
    for room in &newly_shared_rooms {
        for member in keys.room_members(room).await? {
            out.changed.insert(member);
        }
    }
    // Only users still sharing an encrypted room count as changed; the others have left.
    out.changed.retain(|u| u == user || sharing.contains(u));
    for u in maybe_left {
        if u != user && !sharing.contains(&u) {
            out.left.insert(u);
        }
    }
    Ok(out)
}
