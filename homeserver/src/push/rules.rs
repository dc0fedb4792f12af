//! Editing a user's push rules (`/pushrules`): stored as the `m.push_rules` account data (so
//! sync delivers them), evaluated from the cache in `Push`.

use std::sync::Arc;

use ruma::{UserId, push::Ruleset};
use serde_json::json;

use super::PUSH_RULES;
use crate::{
    error::{Error, Result},
    homeserver::Homeserver,
};

impl Homeserver {
    pub async fn push_rules(&self, user: &UserId) -> Result<Ruleset> {
        Ok(self.push.ruleset(user).await?.as_ref().clone())
    }

    /// Applies `edit` to the user's rules and stores the result.
    pub async fn edit_push_rules(
        self: &Arc<Self>,
        user: &UserId,
        edit: impl FnOnce(&mut Ruleset) -> Result<()>,
    ) -> Result<()> {
        let _edit = self.account_data_edits.lock().await;
        let mut ruleset = self.push_rules(user).await?;
        edit(&mut ruleset)?;
        let content = json!({ "global": ruleset }).to_string();
        self.set_account_data(user, "", PUSH_RULES, &content)
            .await?;
        self.push.ruleset_changed(user, ruleset);
        Ok(())
    }
}

/// Push rule errors as Matrix errors: unknown rules are 404, the rest bad requests.
pub fn rule_error(e: impl std::fmt::Display, not_found: bool) -> Error {
    if not_found {
        Error::not_found(format!("push rule: {e}"))
    } else {
        Error::invalid_param(format!("push rule: {e}"))
    }
}
