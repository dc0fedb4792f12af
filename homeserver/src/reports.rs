//! Reports of events and rooms by users, kept for the organisation's admin. The reported
//! event's content is not copied: it is end-to-end encrypted anyway, and the admin should see
//! who reported what and why, not the conversation.

use ruma::{EventId, RoomId, UserId};

use crate::{
    ephemeral::now_ms,
    error::{Error, Result},
    homeserver::Homeserver,
    store::ReportRow,
};

const MAX_REASON_CHARS: usize = 2000;

impl Homeserver {
    /// Reports an event (`Some`) or the room. The reporter must be in the room; a report of an
    /// event needs the event to be in the room.
    pub async fn report(
        &self,
        reporter: &UserId,
        room_id: &RoomId,
        event_id: Option<&EventId>,
        reason: Option<String>,
        score: Option<i64>,
    ) -> Result<i64> {
        if reason
            .as_ref()
            .is_some_and(|r| r.chars().count() > MAX_REASON_CHARS)
        {
            return Err(Error::invalid_param("reason: at most 2000 characters"));
        }
        if score.is_some_and(|s| !(-100..=0).contains(&s)) {
            return Err(Error::invalid_param("score must be between -100 and 0"));
        }
        let membership = self
            .rooms
            .with_state(room_id, |room| room.membership(reporter))
            .await?
            .ok_or_else(|| Error::not_found("room not found"))?;
        // Not telling outsiders whether the room or event exists.
        if !matches!(
            membership.as_deref(),
            Some("join" | "leave" | "ban" | "invite")
        ) {
            return Err(Error::not_found("room not found"));
        }
        let event_sender = match event_id {
            Some(id) => {
                let row = self
                    .stores
                    .events
                    .get_event(id.as_str())
                    .await?
                    .filter(|e| e.room_id == room_id.as_str())
                    .ok_or_else(|| Error::not_found("event not found"))?;
                let v: serde_json::Value =
                    serde_json::from_str(&row.json).map_err(Error::internal)?;
                v.get("sender").and_then(|s| s.as_str()).map(str::to_owned)
            }
            None => None,
        };
        let id = self
            .stores
            .reports
            .add_report(&ReportRow {
                room_id: room_id.to_string(),
                event_id: event_id.map(|e| e.to_string()),
                event_sender,
                reporter: reporter.to_string(),
                reason,
                score,
                created_ts: now_ms(),
                ..Default::default()
            })
            .await?;
        tracing::info!(report = id, "report stored");
        Ok(id)
    }
}
