//! Membership changes of local users: join, invite, leave, kick, ban, unban. Whether a change
//! is allowed is decided by the room version's auth rules in `Rooms::append`.

use std::sync::Arc;

use ruma::{
    OwnedEventId, RoomId, UserId,
    events::{StateEventType, TimelineEventType},
};
use serde_json::{Map, Value, json};

use super::{NewContent, RoomState, Rooms};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Join,
    Invite { is_direct: bool },
    Leave,
    Kick,
    Ban,
    Unban,
}

impl Rooms {
    /// Applies a membership change by `sender` to `target`. Joining a room one is already in
    /// does not create an event.
    pub async fn change_membership(
        self: &Arc<Self>,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        change: Change,
        reason: Option<&str>,
        profile: Map<String, Value>,
    ) -> Result<Option<OwnedEventId>> {
        let this = self.clone();
        let (room_id, sender, target, reason) = (
            room_id.to_owned(),
            sender.to_owned(),
            target.to_owned(),
            reason.map(str::to_owned),
        );
        crate::homeserver::detached(async move {
            this.change_membership_now(
                &room_id,
                &sender,
                &target,
                change,
                reason.as_deref(),
                profile,
            )
            .await
        })
        .await
    }

    async fn change_membership_now(
        &self,
        room_id: &RoomId,
        sender: &UserId,
        target: &UserId,
        change: Change,
        reason: Option<&str>,
        profile: Map<String, Value>,
    ) -> Result<Option<OwnedEventId>> {
        let mut guard = self
            .lock(room_id)
            .await?
            .ok_or_else(|| Error::not_found("room not found"))?;
        let room = guard.as_mut().expect("locked room is loaded");
        let current = room.membership(target);
        let membership = match change {
            Change::Join => {
                if current.as_deref() == Some("join") {
                    return Ok(None);
                }
                "join"
            }
            Change::Invite { .. } => {
                if matches!(current.as_deref(), Some("join")) {
                    return Err(Error::forbidden(format!("{target} is already in the room")));
                }
                "invite"
            }
            Change::Leave | Change::Kick => {
                if sender != target
                    && !matches!(current.as_deref(), Some("join" | "invite" | "knock"))
                {
                    return Err(Error::forbidden(format!("{target} is not in the room")));
                }
                "leave"
            }
            Change::Ban => "ban",
            Change::Unban => {
                if current.as_deref() != Some("ban") {
                    return Err(Error::forbidden(format!("{target} is not banned")));
                }
                "leave"
            }
        };
        let mut content = if matches!(membership, "join" | "invite") {
            profile
        } else {
            Map::new()
        };
        content.insert("membership".into(), json!(membership));
        if let Change::Invite { is_direct: true } = change {
            content.insert("is_direct".into(), json!(true));
        }
        if let Some(reason) = reason {
            content.insert("reason".into(), json!(reason));
        }
        let new = NewContent::state(
            TimelineEventType::RoomMember,
            target.as_str(),
            Value::Object(content),
        );
        if membership == "invite" && target.server_name() != self.server_name {
            // The invitee's server countersigns without the room held: waiting on another
            // server must not stop the room (nor deadlock two servers inviting each other).
            let (pdu, object, auth) = self.build(room, sender, &new)?;
            self.authorize(room, &pdu, &auth)?;
            let invite_state = self.invite_state(room, sender).await?;
            let version = room.version.clone();
            drop(guard);
            let signed = self
                .invites
                .countersign(&version, &pdu, object, invite_state)
                .await?;
            let mut guard = self
                .lock(room_id)
                .await?
                .ok_or_else(|| Error::not_found("room not found"))?;
            let room = guard.as_mut().expect("locked room is loaded");
            // The room may have moved on meanwhile: the invite must still be allowed.
            self.authorize(room, &pdu, &auth)?;
            let prepared = self.prepared(room, pdu, &signed, None).await?;
            return self
                .commit(room, vec![prepared])
                .await
                .map(|mut ids| Some(ids.remove(0)));
        }
        self.append_locked(room, sender, new, None).await.map(Some)
    }

    /// An invite of a user on another server while the room is held (its creation): their
    /// server countersigns it first (and may refuse), then it is stored like any event.
    pub(super) async fn invite_remote(
        &self,
        room: &mut RoomState,
        sender: &UserId,
        new: NewContent,
    ) -> Result<OwnedEventId> {
        let (pdu, object, auth) = self.build(room, sender, &new)?;
        self.authorize(room, &pdu, &auth)?;
        let invite_state = self.invite_state(room, sender).await?;
        let signed = self
            .invites
            .countersign(&room.version, &pdu, object, invite_state)
            .await?;
        let prepared = self.prepared(room, pdu, &signed, None).await?;
        let mut ids = self.commit(room, vec![prepared]).await?;
        Ok(ids.remove(0))
    }

    /// The room's identity sent with an invite (spec: stripped state, as full PDUs since
    /// v1.16): create, join rules, name, avatar, alias, encryption, and the inviter's member
    /// event.
    async fn invite_state(&self, room: &RoomState, inviter: &UserId) -> Result<Vec<String>> {
        let kinds = [
            StateEventType::RoomCreate,
            StateEventType::RoomJoinRules,
            StateEventType::RoomName,
            StateEventType::RoomAvatar,
            StateEventType::RoomCanonicalAlias,
            StateEventType::RoomEncryption,
        ];
        let mut ids: Vec<String> = kinds
            .into_iter()
            .filter_map(|k| room.get(k, ""))
            .map(|p| p.event_id.to_string())
            .collect();
        ids.extend(
            room.get(StateEventType::RoomMember, inviter.as_str())
                .map(|p| p.event_id.to_string()),
        );
        Ok(self
            .graph
            .pdus(&ids)
            .await?
            .into_iter()
            .map(|p| p.json)
            .collect())
    }
}

impl Rooms {
    /// Writes the user's new display name and avatar into their member event, if they are
    /// joined. The rest of the member content (e.g. `is_direct`) stays as it was.
    pub async fn update_member_profile(
        self: &Arc<Self>,
        room_id: &RoomId,
        user: &UserId,
        profile: &Map<String, Value>,
    ) -> Result<Option<OwnedEventId>> {
        let this = self.clone();
        let (room_id, user, profile) = (room_id.to_owned(), user.to_owned(), profile.clone());
        crate::homeserver::detached(async move {
            let Some(mut guard) = this.lock(&room_id).await? else {
                return Ok(None);
            };
            let room = guard.as_mut().expect("locked room is loaded");
            let Some(current) = room
                .get(ruma::events::StateEventType::RoomMember, user.as_str())
                .filter(|p| p.membership().as_deref() == Some("join"))
            else {
                return Ok(None);
            };
            let mut content: Map<String, Value> =
                serde_json::from_str(current.content.get()).unwrap_or_default();
            let before = content.clone();
            for key in [crate::profiles::DISPLAYNAME, crate::profiles::AVATAR_URL] {
                match profile.get(key) {
                    Some(v) => content.insert(key.to_owned(), v.clone()),
                    None => content.remove(key),
                };
            }
            if content == before {
                return Ok(None);
            }
            let new = NewContent::state(
                TimelineEventType::RoomMember,
                user.as_str(),
                Value::Object(content),
            );
            this.append_locked(room, &user, new, None).await.map(Some)
        })
        .await
    }
}
