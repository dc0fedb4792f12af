//! To-device messages: queued per device at a stream position, delivered by sync in order,
//! deleted once a later sync token acknowledges them.

use std::collections::BTreeMap;

use std::sync::Arc;

use ruma::{
    OneTimeKeyAlgorithm, OwnedServerName, OwnedUserId, UInt, UserId,
    api::client::sync::sync_events::DeviceLists, api::client::to_device::send_event_to_device,
    api::federation::transactions::edu::DirectDeviceContent, serde::Raw,
    to_device::DeviceIdOrAllDevices,
};
use serde_json::{Value, json};

use crate::{
    accounts::Session,
    error::{Error, Result},
    homeserver::{Homeserver, detached},
    store::{KeyStore, ToDeviceTarget},
    sync::{notifier::Notifier, stream::StreamIds},
};

/// To-device messages one sync delivers at most; the rest follow in the next.
pub const SYNC_BATCH: i64 = 100;
/// Recipients (devices) one `/sendToDevice` may address.
const MAX_TARGETS: usize = 10_000;

/// The `message_id` of a to-device request sent to other servers: stable across retries of
/// the same transaction, unguessable from outside.
fn message_id(sender: &str, device: &str, txn_id: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(format!("{sender}\n{device}\n{txn_id}").as_bytes());
    hash[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// What a sync adds for end-to-end encryption.
pub struct SyncE2ee {
    pub to_device: Vec<Raw<ruma::events::AnyToDeviceEvent>>,
    /// The position the delivered to-device messages reach, when more are waiting.
    pub to_device_cursor: Option<i64>,
    pub device_lists: DeviceLists,
    pub one_time_keys_count: BTreeMap<OneTimeKeyAlgorithm, UInt>,
    pub unused_fallback_key_types: Vec<OneTimeKeyAlgorithm>,
}

/// The to-device inboxes of this server's devices: messages from local and remote senders
/// are queued at a stream position and the recipients' syncs woken.
pub struct ToDeviceInbox {
    keys: Arc<dyn KeyStore>,
    stream: Arc<StreamIds<OwnedUserId>>,
    notifier: Arc<Notifier>,
}

impl ToDeviceInbox {
    pub fn new(
        keys: Arc<dyn KeyStore>,
        stream: Arc<StreamIds<OwnedUserId>>,
        notifier: Arc<Notifier>,
    ) -> Self {
        Self {
            keys,
            stream,
            notifier,
        }
    }

    /// Queues `messages` from `sender` (`sender_device`: "" for a remote sender) once per
    /// `txn_id` and wakes the recipients. Runs detached: a client that goes away cannot
    /// leave the position unfinished.
    pub async fn deliver(
        self: &Arc<Self>,
        (sender, sender_device, txn_id): (String, String, String),
        messages: Vec<ToDeviceTarget>,
        recipients: Vec<OwnedUserId>,
    ) -> Result<()> {
        let this = self.clone();
        detached(async move {
            let pos = this.stream.next();
            let now = crate::ephemeral::now_ms();
            this.keys
                .send_to_device(&sender, &sender_device, &txn_id, &messages, pos.pos(), now)
                .await?;
            let (woken, _) = pos.finish(recipients);
            this.notifier.wake(woken.iter().map(|u| u.as_ref()));
            Ok(())
        })
        .await
    }

    /// An `m.direct_to_device` EDU from `origin`: its messages for our users' devices.
    pub async fn receive(
        self: &Arc<Self>,
        origin: &ruma::ServerName,
        server_name: &ruma::ServerName,
        edu: DirectDeviceContent,
    ) -> Result<()> {
        if edu.sender.server_name() != origin {
            return Err(Error::forbidden("the sender is not a user of the origin"));
        }
        let mut messages = Vec::new();
        let mut recipients = Vec::new();
        for (user, devices) in edu.messages {
            if user.server_name() != server_name {
                continue;
            }
            for (device, content) in devices {
                let Ok(content) = serde_json::from_str::<Value>(content.json().get()) else {
                    continue;
                };
                if !content.is_object() {
                    continue;
                }
                messages.push(target(
                    &user,
                    &device,
                    edu.sender.as_str(),
                    &edu.ev_type.to_string(),
                    content,
                ));
            }
            recipients.push(user);
        }
        if messages.is_empty() {
            return Ok(());
        }
        self.deliver(
            (
                edu.sender.to_string(),
                String::new(),
                edu.message_id.to_string(),
            ),
            messages,
            recipients,
        )
        .await
    }
}

/// One queued message for `device` of `user` (`*`: all their devices).
fn target(
    user: &UserId,
    device: &DeviceIdOrAllDevices,
    sender: &str,
    event_type: &str,
    content: Value,
) -> ToDeviceTarget {
    ToDeviceTarget {
        user_id: user.to_string(),
        device_id: match device {
            DeviceIdOrAllDevices::DeviceId(d) => Some(d.to_string()),
            DeviceIdOrAllDevices::AllDevices => None,
        },
        json: json!({ "sender": sender, "type": event_type, "content": content }).to_string(),
    }
}

impl Homeserver {
    /// `/sendToDevice`: queues the messages for local devices (`*`: all of a user's devices)
    /// and wakes their syncs; messages for users of other servers go to their servers as
    /// `m.direct_to_device` EDUs. A repeated transaction id is answered without queueing
    /// again (and other servers drop a repeated message id).
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
        let event_type = req.event_type.to_string();
        let mut messages = Vec::new();
        let mut recipients: Vec<OwnedUserId> = Vec::new();
        let mut remote: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, Value>> = BTreeMap::new();
        for (user, devices) in &req.messages {
            for (device, content) in devices {
                let content: Value = serde_json::from_str(content.json().get())
                    .map_err(|e| Error::bad_json(format!("message content: {e}")))?;
                if !content.is_object() {
                    return Err(Error::bad_json("message content must be an object"));
                }
                if user.server_name() != self.server_name {
                    let device = match device {
                        DeviceIdOrAllDevices::DeviceId(d) => d.to_string(),
                        DeviceIdOrAllDevices::AllDevices => "*".to_owned(),
                    };
                    let by_user = remote.entry(user.server_name().to_owned()).or_default();
                    let devices = by_user.entry(user.clone()).or_insert_with(|| json!({}));
                    devices[device] = content;
                    continue;
                }
                messages.push(target(user, device, &sender, &event_type, content));
            }
            if user.server_name() == self.server_name {
                recipients.push(user.clone());
            }
        }
        if !remote.is_empty() && self.federation.check_enabled().is_err() {
            // One line per request, not per recipient (a request may name thousands).
            tracing::warn!(
                servers = remote.len(),
                "federation is off: to-device messages for other servers dropped"
            );
            remote.clear();
        }
        if !remote.is_empty() {
            // The same request again makes the same message id, which the other server drops.
            let message_id = message_id(&sender, session.device_id.as_str(), req.txn_id.as_str());
            let edus = remote
                .into_iter()
                .map(|(server, messages)| {
                    let content = json!({
                        "sender": sender,
                        "type": event_type,
                        "message_id": message_id,
                        "messages": messages,
                    });
                    (server, "m.direct_to_device".to_owned(), content)
                })
                .collect();
            self.federation.sender.queue_edus(edus).await?;
        }
        if messages.is_empty() {
            return Ok(());
        }
        self.to_device
            .deliver(
                (
                    sender,
                    session.device_id.to_string(),
                    req.txn_id.to_string(),
                ),
                messages,
                recipients,
            )
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
