//! User profiles: display name, avatar and custom fields (MSC4133, needed for the TI-M client
//! capability objects, catalogue E-06). Display name and avatar are copied into the user's
//! member event in every joined room when they change.

use std::{collections::BTreeMap, sync::Arc};

use ruma::UserId;
use serde_json::{Map, Value};

use crate::{
    error::{Error, Result},
    homeserver::{Homeserver, detached},
    policy,
};

/// A profile at most this big (all fields as JSON), as MSC4133 sets it.
const MAX_PROFILE_BYTES: usize = 64 * 1024;
const MAX_FIELD_NAME_BYTES: usize = 255;
const MAX_DISPLAYNAME_CHARS: usize = 256;

pub const DISPLAYNAME: &str = "displayname";
pub const AVATAR_URL: &str = "avatar_url";

/// Who is changing a profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Editor {
    /// The user themself through the Client-Server API (`is_admin`: an org admin).
    User { is_admin: bool },
    /// The organisation's admin through the admin API.
    OrgAdmin,
}

impl Homeserver {
    /// The user's profile fields (a remote user's from their server); `None` when the user
    /// does not exist.
    pub async fn profile(&self, user: &UserId) -> Result<Option<BTreeMap<String, Value>>> {
        if user.server_name() != self.server_name {
            return self.federation.profile(user).await;
        }
        if !self.accounts.user_exists(user).await? {
            return Ok(None);
        }
        let mut out = BTreeMap::new();
        for (field, value) in self.stores.profiles.profile(user.as_str()).await? {
            if let Ok(v) = serde_json::from_str(&value) {
                out.insert(field, v);
            }
        }
        Ok(Some(out))
    }

    /// Display name and avatar as they go into the user's member events.
    pub async fn member_profile(&self, user: &UserId) -> Result<Map<String, Value>> {
        let mut out = Map::new();
        if let Some(profile) = self.profile(user).await? {
            for key in [DISPLAYNAME, AVATAR_URL] {
                if let Some(v) = profile.get(key) {
                    out.insert(key.to_owned(), v.clone());
                }
            }
        }
        Ok(out)
    }

    /// Sets (`Some`) or removes (`None`) one profile field of a local user.
    pub async fn set_profile_field(
        self: &Arc<Self>,
        editor: Editor,
        user: &UserId,
        field: &str,
        value: Option<Value>,
    ) -> Result<()> {
        let mut profile = self
            .profile(user)
            .await?
            .ok_or_else(|| Error::not_found("no such user"))?;
        check_field(field, value.as_ref())?;
        if field == DISPLAYNAME {
            let by_admin = matches!(editor, Editor::OrgAdmin | Editor::User { is_admin: true });
            let admin_only = self.settings().await?.displayname_admin_only;
            if !policy::may_set_displayname(admin_only, by_admin) {
                return Err(Error::forbidden(
                    "display names are set by your organisation's admin",
                ));
            }
        }
        if profile.get(field) == value.as_ref() {
            return Ok(());
        }
        match &value {
            Some(v) => profile.insert(field.to_owned(), v.clone()),
            None => profile.remove(field),
        };
        let size = serde_json::to_vec(&profile).map_err(Error::internal)?.len();
        if size > MAX_PROFILE_BYTES {
            return Err(Error::TooLarge);
        }
        let propagate = field == DISPLAYNAME || field == AVATAR_URL;
        let (hs, user, field) = (self.clone(), user.to_owned(), field.to_owned());
        // Detached: a client that goes away cannot leave some rooms with the old name.
        detached(async move {
            let json = value.as_ref().map(Value::to_string);
            hs.stores
                .profiles
                .set_profile_field(user.as_str(), &field, json.as_deref())
                .await?;
            if propagate {
                let member = hs.member_profile(&user).await?;
                for room in hs.stores.events.rooms_for_user(user.as_str()).await? {
                    if room.membership != "join" {
                        continue;
                    }
                    let Ok(room_id) = ruma::RoomId::parse(&room.room_id) else {
                        continue;
                    };
                    // One room refusing the change (power levels) does not stop the others.
                    if let Err(e) = hs
                        .rooms
                        .update_member_profile(&room_id, &user, &member)
                        .await
                    {
                        tracing::warn!(room = %room_id, error = %e, "profile not propagated");
                    }
                }
            }
            Ok(())
        })
        .await
    }
}

pub fn check_displayname(name: &str) -> Result<()> {
    if name.chars().count() > MAX_DISPLAYNAME_CHARS {
        return Err(Error::invalid_param(
            "display names are at most 256 characters",
        ));
    }
    Ok(())
}

fn check_field(field: &str, value: Option<&Value>) -> Result<()> {
    if field.is_empty() || field.len() > MAX_FIELD_NAME_BYTES {
        return Err(Error::invalid_param(
            "profile field names are 1 to 255 bytes",
        ));
    }
    let Some(value) = value else {
        return Ok(());
    };
    match field {
        DISPLAYNAME => match value.as_str() {
            Some(s) => check_displayname(s),
            None => Err(Error::bad_json("displayname must be a string")),
        },
        AVATAR_URL => match value.as_str() {
            Some(s) if <&ruma::MxcUri>::from(s).is_valid() => Ok(()),
            _ => Err(Error::bad_json("avatar_url must be an mxc:// URI")),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_are_checked() {
        assert!(check_field(DISPLAYNAME, Some(&json!("Müller, Anna"))).is_ok());
        assert!(check_field(DISPLAYNAME, Some(&json!(5))).is_err());
        assert!(check_field(DISPLAYNAME, Some(&json!("x".repeat(257)))).is_err());
        assert!(check_field(AVATAR_URL, Some(&json!("mxc://example.org/abc"))).is_ok());
        assert!(check_field(AVATAR_URL, Some(&json!("https://evil"))).is_err());
        assert!(check_field("de.gematik.client_capability.x", Some(&json!({"a": 1}))).is_ok());
        assert!(check_field("", None).is_err());
    }
}
