//! `createRoom`: the creation events in the order the spec lists them, all under the new room's
//! lock, so nobody sees a half-made room.

use std::sync::Arc;

use rand::{Rng, distributions::Alphanumeric};
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomVersionId, events::TimelineEventType};
use serde_json::{Map, Value, json};

use super::{NewContent, RoomState, Rooms};
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    PrivateChat,
    TrustedPrivateChat,
    PublicChat,
}

pub struct CreateRoom {
    pub creator: OwnedUserId,
    pub preset: Preset,
    pub room_version: Option<RoomVersionId>,
    pub creation_content: Map<String, Value>,
    pub initial_state: Vec<(String, String, Value)>,
    pub name: Option<String>,
    pub topic: Option<String>,
    /// Already checked to be existing users.
    pub invite: Vec<OwnedUserId>,
    pub is_direct: bool,
    pub power_level_content_override: Option<Map<String, Value>>,
    pub alias: Option<OwnedRoomAliasId>,
    /// The creator's member event content additions (display name, avatar).
    pub creator_profile: Map<String, Value>,
}

impl Rooms {
    /// Creates a room (detached from the request, like every write).
    pub async fn create_room(self: &Arc<Self>, req: CreateRoom) -> Result<OwnedRoomId> {
        let this = self.clone();
        crate::homeserver::detached(async move { this.create_room_now(req).await }).await
    }

    async fn create_room_now(&self, req: CreateRoom) -> Result<OwnedRoomId> {
        let version = req
            .room_version
            .clone()
            .unwrap_or_else(|| self.default_version.clone());
        if !self.supported_versions.contains(&version) {
            return Err(Error::UnsupportedRoomVersion);
        }
        let rules = version.rules().ok_or(Error::UnsupportedRoomVersion)?;
        let localpart: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(18)
            .map(char::from)
            .collect();
        let room_id = OwnedRoomId::try_from(format!("!{localpart}:{}", self.server_name()))
            .map_err(Error::internal)?;
        let creator = req.creator.clone();

        if let Some(alias) = &req.alias {
            self.store
                .set_alias(alias.as_str(), room_id.as_str(), creator.as_str())
                .await
                .map_err(|e| match e {
                    crate::store::StoreError::Conflict => Error::RoomInUse,
                    e => e.into(),
                })?;
        }
        self.store
            .create_room(
                room_id.as_str(),
                version.as_str(),
                creator.as_str(),
                now_ms(),
            )
            .await?;

        let slot = self.slot(&room_id);
        let mut guard = slot.state.clone().lock_owned().await;
        *guard = Some(RoomState::new(room_id.clone(), version.clone(), rules));
        let room = guard.as_mut().expect("just set");
        let result = self.creation_events(room, &req, &version).await;
        if result.is_err() {
            // Leave no half-made room behind in memory; the stored events stay as the audit trail.
            *guard = None;
            if let Some(alias) = &req.alias {
                let _ = self.store.delete_alias(alias.as_str()).await;
            }
        }
        result.map(|_| room_id)
    }

    async fn creation_events(
        &self,
        room: &mut RoomState,
        req: &CreateRoom,
        version: &RoomVersionId,
    ) -> Result<()> {
        let creator = req.creator.as_ref();
        let mut create = req.creation_content.clone();
        create.insert("room_version".into(), json!(version.as_str()));
        if !room.rules.authorization.use_room_create_sender {
            create.insert("creator".into(), json!(creator));
        }
        self.append_locked(
            room,
            creator,
            NewContent::state(TimelineEventType::RoomCreate, "", Value::Object(create)),
            None,
        )
        .await?;

        let mut join = req.creator_profile.clone();
        join.insert("membership".into(), json!("join"));
        self.append_locked(
            room,
            creator,
            NewContent::state(
                TimelineEventType::RoomMember,
                creator.as_str(),
                Value::Object(join),
            ),
            None,
        )
        .await?;

        let mut users = Map::new();
        users.insert(creator.to_string(), json!(100));
        if req.preset == Preset::TrustedPrivateChat {
            for user in &req.invite {
                users.insert(user.to_string(), json!(100));
            }
        }
        let mut power = serde_json::to_value(
            ruma::events::room::power_levels::RoomPowerLevelsEventContent::new(
                &room.rules.authorization,
            ),
        )
        .map_err(Error::internal)?;
        power["users"] = Value::Object(users);
        if let Some(overrides) = &req.power_level_content_override {
            for (k, v) in overrides {
                power[k] = v.clone();
            }
        }
        self.append_locked(
            room,
            creator,
            NewContent::state(TimelineEventType::RoomPowerLevels, "", power),
            None,
        )
        .await?;

        if let Some(alias) = &req.alias {
            self.append_locked(
                room,
                creator,
                NewContent::state(
                    TimelineEventType::RoomCanonicalAlias,
                    "",
                    json!({ "alias": alias }),
                ),
                None,
            )
            .await?;
        }

        let (join_rule, guest) = match req.preset {
            Preset::PublicChat => ("public", "forbidden"),
            _ => ("invite", "can_join"),
        };
        let mut preset_state: Vec<(String, String, Value)> = vec![
            (
                "m.room.join_rules".into(),
                String::new(),
                json!({ "join_rule": join_rule }),
            ),
            (
                "m.room.history_visibility".into(),
                String::new(),
                json!({ "history_visibility": "shared" }),
            ),
            (
                "m.room.guest_access".into(),
                String::new(),
                json!({ "guest_access": guest }),
            ),
        ];
        // initial_state overrides what the preset set.
        preset_state.retain(|(t, k, _)| {
            !req.initial_state
                .iter()
                .any(|(t2, k2, _)| t == t2 && k == k2)
        });
        for (kind, key, content) in preset_state
            .into_iter()
            .chain(req.initial_state.iter().cloned())
        {
            self.append_locked(
                room,
                creator,
                NewContent::state(kind.as_str(), key, content),
                None,
            )
            .await?;
        }
        if let Some(name) = &req.name {
            self.append_locked(
                room,
                creator,
                NewContent::state(TimelineEventType::RoomName, "", json!({ "name": name })),
                None,
            )
            .await?;
        }
        if let Some(topic) = &req.topic {
            self.append_locked(
                room,
                creator,
                NewContent::state(TimelineEventType::RoomTopic, "", json!({ "topic": topic })),
                None,
            )
            .await?;
        }
        for user in &req.invite {
            let mut content = json!({ "membership": "invite" });
            if req.is_direct {
                content["is_direct"] = json!(true);
            }
            let new = NewContent::state(TimelineEventType::RoomMember, user.as_str(), content);
            if user.server_name() == self.server_name {
                self.append_locked(room, creator, new, None).await?;
            } else {
                self.invite_remote(room, creator, new).await?;
            }
        }
        Ok(())
    }
}

pub fn now_ms() -> i64 {
    ruma::MilliSecondsSinceUnixEpoch::now().0.into()
}
