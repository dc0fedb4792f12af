//! Room tags: the `m.tag` room account data, edited one tag at a time.

use std::sync::Arc;

use ruma::{
    RoomId, UserId,
    events::tag::{TagEventContent, TagInfo, TagName, Tags},
};

use crate::{
    error::{Error, Result},
    homeserver::Homeserver,
};

const TAG: &str = "m.tag";
const MAX_TAG_BYTES: usize = 255;

impl Homeserver {
    pub async fn tags(&self, user: &UserId, room: &RoomId) -> Result<Tags> {
        let stored = self
            .stores
            .account_data
            .get(user.as_str(), room.as_str(), TAG)
            .await?;
        Ok(stored
            .and_then(|s| serde_json::from_str::<TagEventContent>(&s).ok())
            .map(|c| c.tags)
            .unwrap_or_default())
    }

    /// Sets (`Some`) or removes (`None`) one tag of a room for the user.
    pub async fn set_tag(
        self: &Arc<Self>,
        user: &UserId,
        room: &RoomId,
        tag: &str,
        info: Option<TagInfo>,
    ) -> Result<()> {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES {
            return Err(Error::invalid_param("tags are 1 to 255 bytes"));
        }
        // Read-modify-write of one user's tags: serialised so two edits cannot lose one.
        let _edit = self.account_data_edits.lock().await;
        let mut tags = self.tags(user, room).await?;
        let name = TagName::from(tag);
        match info {
            Some(info) => tags.insert(name, info),
            None => tags.remove(&name),
        };
        let content =
            serde_json::to_string(&TagEventContent::new(tags)).map_err(Error::internal)?;
        self.set_account_data(user, room.as_str(), TAG, &content)
            .await
    }
}
