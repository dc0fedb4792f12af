//! Read receipts (`m.read`, `m.read.private`, threaded) and the read marker (`m.fully_read`,
//! room account data). Receipts take a stream position, so sync delivers them exactly like
//! events, and they only ever move forward. Public receipts cross servers as `m.receipt` EDUs.

use std::sync::Arc;

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedServerName, OwnedUserId, RoomId, ServerName, UserId,
    api::federation::transactions::edu::ReceiptContent,
};

use crate::{
    e2ee::device_lists::RemoteUpdates,
    error::{Error, Result},
    homeserver::{Homeserver, detached},
    rooms::Rooms,
    store::{EventStore, ReceiptRow, ReceiptStore},
    sync::{notifier::Notifier, stream::StreamIds},
};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";
pub const FULLY_READ: &str = "m.fully_read";

/// Stores receipts (local users' and other servers') at stream positions and wakes those who
/// see them; public receipts of local users go to the room's other servers as `m.receipt`.
pub struct Receipts {
    server_name: OwnedServerName,
    store: Arc<dyn ReceiptStore>,
    events: Arc<dyn EventStore>,
    rooms: Arc<Rooms>,
    stream: Arc<StreamIds<OwnedUserId>>,
    notifier: Arc<Notifier>,
    remote: Arc<dyn RemoteUpdates>,
}

impl Receipts {
    pub fn new(
        server_name: OwnedServerName,
        (store, events): (Arc<dyn ReceiptStore>, Arc<dyn EventStore>),
        rooms: Arc<Rooms>,
        (stream, notifier): (Arc<StreamIds<OwnedUserId>>, Arc<Notifier>),
        remote: Arc<dyn RemoteUpdates>,
    ) -> Self {
        Self {
            server_name,
            store,
            events,
            rooms,
            stream,
            notifier,
            remote,
        }
    }

    /// Sets `user`'s receipt of `kind` (`m.read`, `m.read.private`) on an event of a room
    /// they are joined to; older than the stored one: nothing changes.
    pub async fn set(
        self: &Arc<Self>,
        user: &UserId,
        room_id: &RoomId,
        (kind, event_id, thread): (&str, &EventId, &str),
        ts: i64,
    ) -> Result<()> {
        let interested = self.rooms.members_if_joined(user, room_id).await?;
        let event = self
            .events
            .get_event(event_id.as_str())
            .await?
            .filter(|e| e.room_id == room_id.as_str())
            .ok_or_else(|| Error::not_found("the event is not in this room"))?;
        let wake = if kind == READ_PRIVATE {
            vec![user.to_owned()]
        } else {
            interested
        };
        let mut row = ReceiptRow {
            room_id: room_id.to_string(),
            user_id: user.to_string(),
            receipt_type: kind.to_owned(),
            thread_id: thread.to_owned(),
            event_id: event_id.to_string(),
            ts,
            stream_pos: 0,
        };
        let this = self.clone();
        let stored = detached(async move {
            let pos = this.stream.next();
            row.stream_pos = pos.pos();
            // An older receipt than the stored one is dropped (and its position abandoned).
            let stored = this.store.set_receipt(&row, event.stream_pos).await?;
            if stored {
                let (woken, _) = pos.finish(wake);
                this.notifier.wake(woken.iter().map(|u| u.as_ref()));
            }
            Ok::<_, Error>(stored.then_some(row))
        })
        .await?;
        if let Some(row) = stored
            && row.receipt_type == READ
            && user.server_name() == self.server_name
        {
            self.tell_servers(&row).await;
        }
        Ok(())
    }

    /// A local user's public receipt, for the other servers in the room.
    async fn tell_servers(&self, row: &ReceiptRow) {
        let Ok(room_id) = RoomId::parse(&row.room_id) else {
            return;
        };
        let servers = match self.rooms.other_servers(&room_id).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "receipt: the room's servers not read");
                return;
            }
        };
        if servers.is_empty() {
            return;
        }
        let mut data = serde_json::json!({ "ts": row.ts });
        if !row.thread_id.is_empty() {
            data["thread_id"] = serde_json::json!(row.thread_id);
        }
        let content = serde_json::json!({
            row.room_id.clone(): { READ: { row.user_id.clone(): {
                "event_ids": [row.event_id], "data": data,
            }}}
        });
        let edus = servers
            .into_iter()
            .map(|s| (s, "m.receipt".to_owned(), content.clone()))
            .collect();
        // The receipt stands here; the other servers miss one read mark at worst.
        if let Err(e) = self.remote.queue(edus).await {
            tracing::warn!(error = %e, "receipt for other servers not queued");
        }
    }

    /// An `m.receipt` EDU from `origin`: its users' public receipts.
    pub async fn receive(self: &Arc<Self>, origin: &ServerName, edu: ReceiptContent) {
        for (room_id, receipts) in edu.receipts {
            for (kind, users) in [(READ, receipts.read)] {
                for (user, receipt) in users {
                    if user.server_name() != origin {
                        continue;
                    }
                    let thread = match &receipt.data.thread {
                        ruma::events::receipt::ReceiptThread::Thread(t) => t.to_string(),
                        ruma::events::receipt::ReceiptThread::Main => "main".to_owned(),
                        _ => String::new(),
                    };
                    let ts = receipt
                        .data
                        .ts
                        .map(|t| u64::from(t.0) as i64)
                        .unwrap_or_else(|| u64::from(MilliSecondsSinceUnixEpoch::now().0) as i64);
                    for event_id in &receipt.event_ids {
                        if let Err(e) = self
                            .set(&user, &room_id, (kind, event_id, &thread), ts)
                            .await
                        {
                            tracing::info!(%origin, error = %e, "remote receipt not taken");
                        }
                    }
                }
            }
        }
    }
}

impl Homeserver {
    /// Sets the user's receipt of `kind` in a room they are joined to. `thread` is empty for an
    /// unthreaded receipt, `main`, or a thread root's event id.
    pub async fn set_receipt(
        self: &Arc<Self>,
        user: &UserId,
        room_id: &RoomId,
        kind: &str,
        event_id: &EventId,
        thread: &str,
    ) -> Result<()> {
        self.presence.active(user);
        if kind == FULLY_READ {
            self.rooms.members_if_joined(user, room_id).await?;
            let event = self
                .stores
                .events
                .get_event(event_id.as_str())
                .await?
                .filter(|e| e.room_id == room_id.as_str())
                .ok_or_else(|| Error::not_found("the event is not in this room"))?;
            // The read marker only moves forward, like receipts.
            let current = self
                .stores
                .account_data
                .get(user.as_str(), room_id.as_str(), FULLY_READ)
                .await?
                .and_then(|c| serde_json::from_str::<serde_json::Value>(&c).ok())
                .and_then(|c| c.get("event_id")?.as_str().map(str::to_owned));
            if let Some(current) = current
                && let Some(row) = self.stores.events.get_event(&current).await?
                && row.stream_pos >= event.stream_pos
            {
                return Ok(());
            }
            let content = serde_json::json!({ "event_id": event_id }).to_string();
            return self
                .set_account_data(user, room_id.as_str(), FULLY_READ, &content)
                .await;
        }
        let now = u64::from(MilliSecondsSinceUnixEpoch::now().0) as i64;
        self.receipts
            .set(user, room_id, (kind, event_id, thread), now)
            .await
    }
}
