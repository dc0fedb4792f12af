//! To-device messages: queued per device at a stream position, delivered by sync in order,
//! deleted once a later sync token acknowledges them.

use std::collections::BTreeMap;

use ruma::{
    OneTimeKeyAlgorithm, OwnedUserId, UInt, api::client::sync::sync_events::DeviceLists,
    api::client::to_device::send_event_to_device, serde::Raw, to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value, json};

use crate::{
    accounts::Session,
    error::{Error, Result},
    homeserver::{Homeserver, detached},
    store::ToDeviceTarget,
};

/// To-device messages one sync delivers at most; the rest follow in the next.
pub const SYNC_BATCH: i64 = 100;
/// Recipients (devices) one `/sendToDevice` may address.
const MAX_TARGETS: usize = 10_000;

/// What a sync adds for end-to-end encryption.
pub struct SyncE2ee {
    pub to_device: Vec<Raw<ruma::events::AnyToDeviceEvent>>,
    /// The position the delivered to-device messages reach, when more are waiting.
    pub to_device_cursor: Option<i64>,
    pub device_lists: DeviceLists,
    pub one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    pub unused_fallback_key_types: Vec<OneTimeKeyAlgorithm>,
}

impl Homeserver {
    /// `/sendToDevice`: queues the messages for local devices (`*`: all of a user's devices)
    /// and wakes their syncs. A repeated transaction id is answered without queueing again.
    pub async fn send_to_device(
        self: &std::sync::Arc<Self>,
        session: &Session,
        req: send_event_to_device::v3::Request,
    ) -> Result<()> {
        let targets: usize = req.messages.values().map(|d| d.len()).sum();
        if targets > MAX_TARGETS {
            return Err(Error::invalid_param(format!(
                "at most {MAX_TARGETS} recipients per request"
            )));
        }
        let sender = session.user_id.to_string();
        let mut messages = Vec::new();
        let mut recipients: Vec<OwnedUserId> = Vec::new();
        let mut remote = 0usize;
        for (user, devices) in &req.messages {
            if user.server_name() != self.server_name {
                // Federation is not there yet: nobody can carry it to the other server.
                remote += 1;
                continue;
            }
            for (device, content) in devices {
                let content: Value = serde_json::from_str(content.json().get())
                    .map_err(|e| Error::bad_json(format!("message content: {e}")))?;
                if !content.is_object() {
                    return Err(Error::bad_json("message content must be an object"));
                }
                let event = json!({
                    "sender": sender,
                    "type": req.event_type.to_string(),
                    "content": content,
                });
                messages.push(ToDeviceTarget {
                    user_id: user.to_string(),
                    device_id: match device {
                        DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
                        DeviceIdOrAllDevices::AllDevices => None,
                    },
                    json: event.to_string(),
                });
            }
            recipients.push(user.clone());
        }
        if remote > 0 {
            // One line per request, not per recipient (a request may name thousands).
            tracing::warn!(
                users = remote,
                "to-device messages for other servers dropped"
            );
        }
        let (hs, device, txn_id) = (
            self.clone(),
            session.device_id.to_string(),
            req.txn_id.to_string(),
        );
        // Detached: a client that goes away cannot leave the position unfinished.
        detached(async move {
            let pos = hs.stream.next();
            let now = crate::ephemeral::now_ms();
            hs.stores
                .keys
                .send_to_device(&sender, &device, &txn_id, &messages, pos.pos(), now)
                .await?;
            let (woken, _) = pos.finish(recipients);
            hs.notifier.wake(woken.iter().map(|u| u.as_ref()));
            Ok(())
        })
        .await
    }

    /// The encryption part of a sync for `session` from `since` (None: initial) to `upto`.
    /// `to_device_since`: where the previous sync's to-device messages ended, if not at
    /// `since`. `rooms`: the rooms the user was in at any point up to `upto`.
    pub async fn sync_e2ee(
        &self,
        session: &Session,
        since: Option<i64>,
        to_device_since: Option<i64>,
        upto: i64,
        rooms: &[String],
    ) -> Result<SyncE2ee> {
        let (user, device) = (session.user_id.as_str(), session.device_id.as_str());
        let keys = &self.stores.keys;
        // What the client acknowledged with its token is gone for good.
        let acked = to_device_since.or(since);
        if let Some(acked) = acked {
            keys.ack_to_device(user, device, acked).await?;
        }
        let rows = keys
            .to_device_messages(user, device, acked.unwrap_or(0), upto, SYNC_BATCH)
            .await?;
        let to_device_cursor = match rows.last() {
            Some((pos, _)) if rows.len() as i64 == SYNC_BATCH && *pos < upto => Some(*pos),
            _ => None,
        };
        let to_device = rows
            .into_iter()
            .filter_map(|(_, json)| serde_json::value::RawValue::from_string(json).ok())
            .map(Raw::from_json)
            .collect();
        let mut device_lists = DeviceLists::new();
        if let Some(since) = since {
            let changes =
                super::device_lists::changes(keys.as_ref(), user, rooms, since, upto).await?;
            device_lists.changed = parse_users(changes.changed);
            device_lists.left = parse_users(changes.left);
        }
        let (one_time_keys_count, unused_fallback_key_types) =
            self.key_counts(&session.user_id, device).await?;
        Ok(SyncE2ee {
            to_device,
            to_device_cursor,
            device_lists,
            one_time_keys_count,
            unused_fallback_key_types,
        })
    }

    /// `/keys/changes`: users whose devices changed between two sync tokens.
    pub async fn key_changes(&self, session: &Session, from: i64, to: i64) -> Result<DeviceLists> {
        let to = to.min(self.stream.visible());
        let user = session.user_id.as_str();
        let rooms: Vec<String> = self
            .stores
            .events
            .membership_changes(user, 0, to)
            .await?
            .into_iter()
            .map(|m| m.room_id)
            .collect();
        let changes =
            super::device_lists::changes(self.stores.keys.as_ref(), user, &rooms, from, to).await?;
        let mut out = DeviceLists::new();
        out.changed = parse_users(changes.changed);
        out.left = parse_users(changes.left);
        Ok(out)
    }
}

fn parse_users(users: impl IntoIterator<Item = String>) -> Vec<OwnedUserId> {
    users
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u.as_str()).ok())
        .collect()
}
