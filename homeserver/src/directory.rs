//! The user directory: this homeserver's active users, found by id or display name, people
//! one shares a room with first; and the rooms this server's aliases name.

use std::collections::HashSet;

use ruma::UserId;

use crate::{
    error::{Error, Result},
    homeserver::Homeserver,
    store::UserSummary,
};

/// Candidates read before ranking; more than any client asks for.
const CANDIDATES: i64 = 200;

impl Homeserver {
    /// `(results, limited)` for `term`, at most `limit`.
    pub async fn search_user_directory(
        &self,
        searcher: &UserId,
        term: &str,
        limit: usize,
    ) -> Result<(Vec<UserSummary>, bool)> {
        let term = term.trim().to_lowercase();
        if term.is_empty() {
            return Ok((vec![], false));
        }
        let system = self.notices_user();
        let mut found: Vec<UserSummary> = self
            .stores
            .accounts
            .search_users(&term, CANDIDATES)
            .await?
            .into_iter()
            .filter(|u| u.user_id != system.as_str())
            .collect();
        let sharing: HashSet<String> = self
            .stores
            .events
            .users_sharing_rooms(searcher.as_str())
            .await?
            .into_iter()
            .collect();
        found.sort_by_key(|u| (rank(u, &term, &sharing), u.user_id.clone()));
        let limited = found.len() > limit;
        found.truncate(limit);
        Ok((found, limited))
    }
}

/// Lower ranks first: shared rooms, then exact, prefix and word-start matches.
fn rank(u: &UserSummary, term: &str, sharing: &HashSet<String>) -> (u8, u8) {
    let localpart = u
        .user_id
        .trim_start_matches('@')
        .split(':')
        .next()
        .unwrap_or("")
        .to_lowercase();
    let name = u.displayname.as_deref().unwrap_or("").to_lowercase();
    let closeness = if localpart == term || name == term {
        0
    } else if localpart.starts_with(term) || name.starts_with(term) {
        1
    } else if name
        .split(|c: char| !c.is_alphanumeric())
        .any(|w| w.starts_with(term))
    {
        2
    } else {
        3
    };
    (u8::from(!sharing.contains(&u.user_id)), closeness)
}

/// A room alias of this server: its room and the servers with members in it (ours first).
pub async fn local_alias(
    hs: &Homeserver,
    alias: &ruma::RoomAliasId,
) -> Result<(ruma::OwnedRoomId, Vec<ruma::OwnedServerName>)> {
    let (room, _) = hs
        .stores
        .events
        .get_alias(alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found("room alias not found"))?;
    let room = ruma::OwnedRoomId::try_from(room).map_err(Error::internal)?;
    let mut servers = vec![hs.server_name.clone()];
    servers.extend(hs.rooms.other_servers(&room).await?);
    Ok((room, servers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, name: &str) -> UserSummary {
        UserSummary {
            user_id: id.into(),
            displayname: Some(name.into()),
            avatar_url: None,
            is_admin: false,
            deactivated: false,
            created_ts: 0,
        }
    }

    #[test]
    fn ranking_prefers_shared_rooms_then_closeness() {
        let sharing: HashSet<String> = ["@b:x".to_owned()].into();
        let exact = user("@mueller:x", "Müller, Anna");
        let word = user("@a:x", "Anna Müller");
        let inner = user("@z:x", "Schmüllerer");
        let shared = user("@b:x", "Bernd Xmüller");
        assert!(rank(&shared, "müller", &sharing) < rank(&exact, "müller", &sharing));
        assert!(rank(&exact, "mueller", &sharing) < rank(&word, "mueller", &sharing));
        assert!(rank(&word, "müller", &sharing) < rank(&inner, "müller", &sharing));
    }
}
