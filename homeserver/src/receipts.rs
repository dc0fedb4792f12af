//! Read receipts (`m.read`, `m.read.private`, threaded) and the read marker (`m.fully_read`,
//! room account data). Receipts take a stream position, so sync delivers them exactly like
//! events, and they only ever move forward.

use std::sync::Arc;

use ruma::{EventId, MilliSecondsSinceUnixEpoch, RoomId, UserId};

use crate::{
    error::{Error, Result},
    homeserver::{Homeserver, detached},
    store::ReceiptRow,
};

pub const READ: &str = "m.read";
pub const READ_PRIVATE: &str = "m.read.private";
pub const FULLY_READ: &str = "m.fully_read";

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
        let interested = self.rooms.members_if_joined(user, room_id).await?;
        let event = self
            .stores
            .events
            .get_event(event_id.as_str())
            .await?
            .filter(|e| e.room_id == room_id.as_str())
            .ok_or_else(|| Error::not_found("the event is not in this room"))?;
        self.presence.active(self, user);
        if kind == FULLY_READ {
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
            ts: u64::from(MilliSecondsSinceUnixEpoch::now().0) as i64,
            stream_pos: 0,
        };
        let hs = self.clone();
        detached(async move {
            let pos = hs.stream.next();
            row.stream_pos = pos.pos();
            // An older receipt than the stored one is dropped (and its position abandoned).
            if hs
                .stores
                .receipts
                .set_receipt(&row, event.stream_pos)
                .await?
            {
                let (woken, _) = pos.finish(wake);
                hs.notifier.wake(woken.iter().map(|u| u.as_ref()));
            }
            Ok(())
        })
        .await
    }
}
