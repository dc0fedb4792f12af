//! The device-list stream: every change of a user's devices or keys is a row at a stream
//! position, so a sync or `/keys/changes` between two tokens finds exactly the users whose
//! devices changed — across restarts too. Who has to hear of a change follows from sharing an
//! encrypted room, computed when reading, so joining and leaving need no extra writes.
//! Other servers sharing such a room are told each change as EDUs.

use std::{
    collections::{BTreeMap, BTreeSet},
    future::Future,
    sync::Arc,
};

use ruma::{OwnedDeviceId, OwnedServerName, OwnedUserId, UserId, api::client::keys::get_keys};
use serde_json::{Value, json};

use crate::{
    error::Result,
    store::{KeyStore, StoreResult},
    sync::{notifier::Notifier, stream::StreamIds},
};

pub struct DeviceLists {
    server_name: OwnedServerName,
    stream: Arc<StreamIds<OwnedUserId>>,
    notifier: Arc<Notifier>,
    keys: Arc<dyn KeyStore>,
    remote: Arc<dyn RemoteUpdates>,
}

/// Where updates for other servers go (federation's EDU outbox).
#[async_trait::async_trait]
pub trait RemoteUpdates: Send + Sync {
    /// Queues EDUs `(destination, EDU type, content)`.
    async fn queue(&self, edus: Vec<(OwnedServerName, String, Value)>) -> Result<()>;
}

impl DeviceLists {
    pub fn new(
        server_name: OwnedServerName,
        (stream, notifier): (Arc<StreamIds<OwnedUserId>>, Arc<Notifier>),
        keys: Arc<dyn KeyStore>,
        remote: Arc<dyn RemoteUpdates>,
    ) -> Self {
        Self {
            server_name,
            stream,
            notifier,
            keys,
            remote,
        }
    }

    /// Runs `write` with a new stream position at which it records a device-list change of
    /// `user` (in its own transaction), then wakes the syncs of everyone who shares an
    /// encrypted room with the user, and tells the other servers among them what changed
    /// (`m.device_list_update` per changed device, `m.signing_key_update`).
    pub async fn change<T, F, Fut>(&self, user: &UserId, write: F) -> Result<T>
    where
        F: FnOnce(i64) -> Fut,
        Fut: Future<Output = StoreResult<T>>,
    {
        let audience = self.audience(user).await;
        let servers: BTreeSet<OwnedServerName> = audience
            .iter()
            .map(|u| u.server_name())
            .filter(|s| *s != self.server_name)
            .map(ToOwned::to_owned)
            .collect();
        // What other servers knew, to tell them the difference afterwards.
        let before = if servers.is_empty() || user.server_name() != self.server_name {
            None
        } else {
            Some((
                self.published(user).await?,
                self.keys.device_list_position(user.as_str()).await?,
            ))
        };
        let pos = self.stream.next();
        let at = pos.pos();
        let out = write(at).await?;
        let (woken, _) = pos.finish(audience);
        self.notifier.wake(woken.iter().map(|u| u.as_ref()));
        if let Some((before, prev)) = before {
            let updates = async {
                let after = self.published(user).await?;
                let edus = updates(user, &before, &after, (at, prev));
                let edus = servers
                    .iter()
                    .flat_map(|s| edus.iter().map(|(k, c)| (s.clone(), k.clone(), c.clone())))
                    .collect();
                self.remote.queue(edus).await
            };
            // The change itself stands; their next key query finds it.
            if let Err(e) = updates.await {
                tracing::warn!(error = %e, "device-list update for other servers not queued");
            }
        }
        Ok(out)
    }

    /// The user's keys as other servers see them.
    async fn published(&self, user: &UserId) -> Result<get_keys::v3::Response> {
        let wanted = [(user.to_owned(), vec![])].into();
        super::published_keys(self.keys.as_ref(), &self.server_name, None, &wanted).await
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

/// The EDUs telling other servers how the user's published keys changed: one
/// `m.device_list_update` per added, changed or deleted device (at stream position `at`,
/// following `prev`), and `m.signing_key_update` when the cross-signing keys changed.
fn updates(
    user: &UserId,
    before: &get_keys::v3::Response,
    after: &get_keys::v3::Response,
    (at, prev): (i64, i64),
) -> Vec<(String, Value)> {
    let devices =
        |r: &'_ get_keys::v3::Response| r.device_keys.get(user).cloned().unwrap_or_default();
    let (old, new): (BTreeMap<_, _>, BTreeMap<_, _>) = (devices(before), devices(after));
    let mut out = Vec::new();
    let ids: BTreeSet<&OwnedDeviceId> = old.keys().chain(new.keys()).collect();
    for id in ids {
        let (was, is) = (old.get(id), new.get(id));
        if was.map(|k| k.json().get()) == is.map(|k| k.json().get()) {
            continue;
        }
        let mut content = json!({
            "user_id": user,
            "device_id": id,
            "stream_id": at,
            "prev_id": if prev > 0 { vec![prev] } else { vec![] },
        });
        match is {
            Some(keys) => {
                let keys: Value = serde_json::from_str(keys.json().get()).unwrap_or_default();
                if let Some(name) = keys["unsigned"]["device_display_name"].as_str() {
                    content["device_display_name"] = json!(name);
                }
                content["keys"] = keys;
            }
            None => content["deleted"] = json!(true),
        }
        out.push(("m.device_list_update".to_owned(), content));
    }
    let raw = |m: &BTreeMap<OwnedUserId, ruma::serde::Raw<ruma::encryption::CrossSigningKey>>| {
        m.get(user)
            .and_then(|k| serde_json::from_str::<Value>(k.json().get()).ok())
    };
    let (master, self_signing) = (raw(&after.master_keys), raw(&after.self_signing_keys));
    if raw(&before.master_keys) != master || raw(&before.self_signing_keys) != self_signing {
        let mut content = json!({ "user_id": user });
        if let Some(k) = master {
            content["master_key"] = k;
        }
        if let Some(k) = self_signing {
            content["self_signing_key"] = k;
        }
        out.push(("m.signing_key_update".to_owned(), content));
    }
    out
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
