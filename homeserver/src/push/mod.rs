//! Push rules, notification counts and pushers. Each event is evaluated against the push
//! rules of every local member it may concern, under the room lock; the resulting push actions
//! (and the pushes to send) are written in the event's own transaction, so counts and pushes
//! survive a crash exactly like the event.

pub mod rules;
pub mod sender;
pub mod unread;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use async_trait::async_trait;
use ruma::{
    OwnedUserId, UInt, UserId,
    events::StateEventType,
    push::{Action, FlattenedJson, PushConditionPowerLevelsCtx, PushConditionRoomCtx, Ruleset},
    serde::Raw,
};

use crate::{
    rooms::{Notifications, RoomState, pdu::Pdu},
    store::{AccountDataStore, NewPushAction, PushStore},
};

/// Account data type holding a user's push rules (also how sync delivers them).
pub const PUSH_RULES: &str = "m.push_rules";

pub struct Push {
    server_name: ruma::OwnedServerName,
    account_data: Arc<dyn AccountDataStore>,
    store: Arc<dyn PushStore>,
    /// Rule sets of users seen by the evaluator; replaced when a user changes a rule.
    rulesets: Mutex<HashMap<OwnedUserId, Arc<Ruleset>>>,
    /// Whether a user has pushers (so pushes are queued for them).
    has_pushers: Mutex<HashMap<OwnedUserId, bool>>,
    /// Bumped by every change of rules or pushers: a value read from the store before a change
    /// is not cached after it.
    generation: std::sync::atomic::AtomicU64,
    /// Wakes the push sender when pushes were queued.
    pub(crate) queued: Arc<tokio::sync::Notify>,
}

impl Push {
    pub fn new(
        server_name: ruma::OwnedServerName,
        account_data: Arc<dyn AccountDataStore>,
        store: Arc<dyn PushStore>,
    ) -> Self {
        Self {
            server_name,
            account_data,
            store,
            rulesets: Mutex::default(),
            has_pushers: Mutex::default(),
            generation: Default::default(),
            queued: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The user's push rules: what they stored, else the server defaults.
    pub async fn ruleset(&self, user: &UserId) -> crate::error::Result<Arc<Ruleset>> {
        if let Some(r) = self.rulesets.lock().expect("push lock").get(user) {
            return Ok(r.clone());
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let stored = self
            .account_data
            .get(user.as_str(), "", PUSH_RULES)
            .await?
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .and_then(|v| serde_json::from_value::<Ruleset>(v.get("global")?.clone()).ok());
        let ruleset = Arc::new(stored.unwrap_or_else(|| Ruleset::server_default(user)));
        let mut cache = self.rulesets.lock().expect("push lock");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache.insert(user.to_owned(), ruleset.clone());
        }
        Ok(ruleset)
    }

    pub(crate) fn ruleset_changed(&self, user: &UserId, ruleset: Ruleset) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.rulesets
            .lock()
            .expect("push lock")
            .insert(user.to_owned(), Arc::new(ruleset));
    }

    async fn has_pushers(&self, user: &UserId) -> crate::error::Result<bool> {
        if let Some(has) = self.has_pushers.lock().expect("push lock").get(user) {
            return Ok(*has);
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let has = self.store.has_pushers(user.as_str()).await?;
        let mut cache = self.has_pushers.lock().expect("push lock");
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache.insert(user.to_owned(), has);
        }
        Ok(has)
    }

    pub(crate) fn pushers_changed(&self, user: &UserId) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.has_pushers.lock().expect("push lock").remove(user);
    }

    /// The push actions of one member for the event, if it notifies them.
    async fn actions_for(
        &self,
        room: &RoomState,
        member_count: UInt,
        power: &PushConditionPowerLevelsCtx,
        user: &UserId,
        event: &FlattenedJson,
    ) -> crate::error::Result<Option<NewPushAction>> {
        let display_name = room
            .get(StateEventType::RoomMember, user.as_str())
            .and_then(|p| {
                serde_json::from_str::<serde_json::Value>(p.content.get())
                    .ok()?
                    .get("displayname")?
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| user.localpart().to_owned());
        let ctx = PushConditionRoomCtx::new(
            room.room_id.clone(),
            member_count,
            user.to_owned(),
            display_name,
        )
        .with_power_levels(power.clone());
        let ruleset = self.ruleset(user).await?;
        // The first rule that applies decides (the event was flattened once for all members).
        let mut actions: &[Action] = &[];
        for rule in ruleset.iter() {
            if rule.applies(event, &ctx).await {
                actions = rule.actions();
                break;
            }
        }
        if !actions.iter().any(Action::should_notify) {
            return Ok(None);
        }
        Ok(Some(NewPushAction {
            user_id: user.to_string(),
            actions: serde_json::to_string(actions).unwrap_or_else(|_| "[]".into()),
            highlight: actions.iter().any(Action::is_highlight),
            send: self.has_pushers(user).await?,
        }))
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        // Lets the sender task see that its tenant is gone.
        self.queued.notify_one();
    }
}

#[async_trait]
impl Notifications for Push {
    async fn evaluate(&self, room: &RoomState, pdu: &Pdu, json: &str) -> Vec<NewPushAction> {
        let joined = room.joined_members();
        let mut targets: Vec<OwnedUserId> = joined
            .iter()
            .filter(|u| u.server_name() == self.server_name && **u != pdu.sender)
            .cloned()
            .collect();
        // An invite concerns the invited user (`.m.rule.invite_for_me`), who is not joined.
        if let (Some(key), Some("invite")) = (&pdu.state_key, pdu.membership().as_deref())
            && let Ok(invited) = UserId::parse(key.as_str())
            && invited.server_name() == self.server_name
            && !targets.contains(&invited)
        {
            targets.push(invited);
        }
        if targets.is_empty() {
            return vec![];
        }
        let Ok(raw) = serde_json::value::RawValue::from_string(json.to_owned()) else {
            return vec![];
        };
        let event = FlattenedJson::from_raw(&Raw::<serde_json::Value>::from_json(raw));
        let member_count = UInt::new_saturating(joined.len() as u64);
        let power = PushConditionPowerLevelsCtx::from(room.power_levels());
        let mut out = Vec::new();
        for user in targets {
            match self
                .actions_for(room, member_count, &power, &user, &event)
                .await
            {
                Ok(Some(a)) => out.push(a),
                Ok(None) => {}
                // Counts are best effort against a failing read; the event itself goes on.
                Err(e) => tracing::warn!(error = %e, "push rules not evaluated"),
            }
        }
        out
    }

    fn queued(&self) {
        self.queued.notify_one();
    }
}
