//! What the organisation's admin API does beyond the user-facing domain: its per-tenant API
//! token (random, stored hashed, rotated by the operator), the audit log, tenant settings,
//! and admin-only account actions.

use std::sync::Arc;

use ruma::UserId;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::{
    accounts::{hash_token, random_string},
    ephemeral::now_ms,
    error::{Error, Result},
    homeserver::Homeserver,
    rooms::membership::Change,
};

const TOKEN_PREFIX: &str = "timadm_";

/// How an admin API token relates to this tenant.
#[derive(Debug, PartialEq, Eq)]
pub enum TokenCheck {
    Valid,
    /// A token of another tenant: refused with 403.
    OtherTenant,
    Unknown,
    /// Not an admin API token (maybe a user's access token).
    NotAdminToken,
}

/// Tenant settings the org admin controls.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct TenantSettings {
    /// B-ADM-02: only admins change display names.
    pub displayname_admin_only: bool,
}

/// A partial update of the settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsUpdate {
    pub displayname_admin_only: Option<bool>,
}

const DISPLAYNAME_ADMIN_ONLY: &str = "displayname_admin_only";

impl Homeserver {
    /// The tag that names this tenant in its admin tokens.
    fn admin_token_tag(&self) -> String {
        let digest = sha2::Sha256::digest(self.server_name.as_bytes());
        digest[..6].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Issues a new admin API token; the previous one stops working. Shown once.
    pub async fn rotate_admin_token(&self) -> Result<String> {
        let token = format!(
            "{TOKEN_PREFIX}{}_{}",
            self.admin_token_tag(),
            random_string(40)
        );
        self.stores
            .admin
            .replace_admin_token(&hash_token(&token), now_ms())
            .await?;
        Ok(token)
    }

    pub async fn check_admin_token(&self, token: &str) -> Result<TokenCheck> {
        let Some(rest) = token.strip_prefix(TOKEN_PREFIX) else {
            return Ok(TokenCheck::NotAdminToken);
        };
        let tag = rest.split('_').next().unwrap_or("");
        if tag != self.admin_token_tag() {
            return Ok(TokenCheck::OtherTenant);
        }
        Ok(
            if self
                .stores
                .admin
                .admin_token_exists(&hash_token(token))
                .await?
            {
                TokenCheck::Valid
            } else {
                TokenCheck::Unknown
            },
        )
    }

    pub async fn settings(&self) -> Result<TenantSettings> {
        let stored = self.stores.admin.setting(DISPLAYNAME_ADMIN_ONLY).await?;
        Ok(TenantSettings {
            displayname_admin_only: stored
                .and_then(|v| v.parse().ok())
                .unwrap_or(self.config.displayname_admin_only),
        })
    }

    pub async fn update_settings(&self, update: SettingsUpdate) -> Result<TenantSettings> {
        if let Some(v) = update.displayname_admin_only {
            self.stores
                .admin
                .set_setting(DISPLAYNAME_ADMIN_ONLY, &v.to_string())
                .await?;
        }
        self.settings().await
    }

    /// Deactivates a user: no more logins, all sessions gone, out of every room. Runs to the
    /// end even if the request that started it goes away (a user left in half their rooms).
    pub async fn deactivate_user(self: &Arc<Self>, user: &UserId) -> Result<()> {
        let (hs, user) = (self.clone(), user.to_owned());
        crate::homeserver::detached(async move { hs.deactivate_now(&user).await }).await
    }

    async fn deactivate_now(self: &Arc<Self>, user: &UserId) -> Result<()> {
        if !self.accounts.user_exists(user).await? {
            return Err(Error::not_found("no such user"));
        }
        self.accounts.deactivate(user).await?;
        for room in self.stores.events.rooms_for_user(user.as_str()).await? {
            if !matches!(room.membership.as_str(), "join" | "invite" | "knock") {
                continue;
            }
            let Ok(room_id) = ruma::RoomId::parse(&room.room_id) else {
                continue;
            };
            if let Err(e) = self
                .rooms
                .change_membership(
                    &room_id,
                    user,
                    user,
                    Change::Leave,
                    None,
                    Default::default(),
                )
                .await
            {
                tracing::warn!(room = %room_id, error = %e, "deactivated user could not leave");
            }
        }
        tracing::info!(user = %user, "deactivated");
        Ok(())
    }

    /// Sets a user's password (admin reset), optionally ending all their sessions.
    pub async fn reset_password(&self, user: &UserId, password: &str, logout: bool) -> Result<()> {
        let row = self
            .stores
            .accounts
            .get_user(user.as_str())
            .await?
            .ok_or_else(|| Error::not_found("no such user"))?;
        if row.deactivated {
            return Err(Error::UserDeactivated);
        }
        crate::accounts::hashing::check_new_password(password)?;
        let hash = self.accounts.hash_password(password).await?;
        self.stores
            .accounts
            .set_password_hash(user.as_str(), &hash)
            .await?;
        if logout {
            self.accounts.logout_all(user).await?;
        }
        Ok(())
    }
}
