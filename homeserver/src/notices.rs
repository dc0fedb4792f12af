//! Server notices ("Systemnachrichten", TI-M A-SN-01): messages from the organisation to its
//! users, each in the user's own notices room owned by a system user, tagged
//! `m.server_notice`, in which users cannot write. A notice to all users is a durable job that
//! runs in the background and resumes after a restart, so one admin call never blocks the
//! server however many users there are.

use std::sync::{Arc, Weak};

use ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId, events::TimelineEventType};
use serde_json::{Map, Value, json};

use crate::{
    ephemeral::now_ms,
    error::{Error, Result},
    homeserver::Homeserver,
    rooms::{CreateRoom, NewContent, create::Preset},
    store::NoticeJob,
};

/// Users handled per step of a notice job (the cursor is saved after each step).
const JOB_PAGE: i64 = 100;
pub const NOTICE_TAG: &str = "m.server_notice";

impl Homeserver {
    /// The system user that owns notices rooms.
    pub fn notices_user(&self) -> OwnedUserId {
        OwnedUserId::try_from(format!(
            "@{}:{}",
            self.config.server_notices.localpart, self.server_name
        ))
        .expect("validated localpart")
    }

    async fn ensure_notices_user(self: &Arc<Self>) -> Result<OwnedUserId> {
        let user = self.notices_user();
        if !self.accounts.user_exists(&user).await? {
            // The localpart is reserved: only the server creates this account.
            match self.accounts.create_system_user(user.localpart()).await {
                Ok(_) | Err(Error::UserInUse) => {}
                Err(e) => return Err(e),
            }
            self.set_profile_field(
                crate::profiles::Editor::OrgAdmin,
                &user,
                crate::profiles::DISPLAYNAME,
                Some(Value::String(
                    self.config.server_notices.display_name.clone(),
                )),
            )
            .await?;
        }
        Ok(user)
    }

    /// The user's notices room, made (and the user invited) when there is none they are in.
    async fn notices_room(self: &Arc<Self>, system: &UserId, user: &UserId) -> Result<OwnedRoomId> {
        if let Some(room) = self.stores.notices.notice_room(user.as_str()).await?
            && let Ok(room_id) = RoomId::parse(&room)
        {
            let memberships = self
                .rooms
                .with_state(&room_id, |r| (r.membership(system), r.membership(user)))
                .await?;
            if let Some((Some(s), Some(u))) = memberships
                && s == "join"
                && matches!(u.as_str(), "join" | "invite")
            {
                return Ok(room_id);
            }
        }
        let mut power = Map::new();
        // Only the system user writes here.
        power.insert("events_default".into(), json!(100));
        power.insert("invite".into(), json!(100));
        power.insert("state_default".into(), json!(100));
        let room_id = self
            .rooms
            .create_room(CreateRoom {
                creator: system.to_owned(),
                preset: Preset::PrivateChat,
                room_version: None,
                creation_content: Map::new(),
                initial_state: vec![],
                name: Some(self.config.server_notices.room_name.clone()),
                topic: None,
                invite: vec![user.to_owned()],
                is_direct: false,
                power_level_content_override: Some(power),
                alias: None,
                creator_profile: self.member_profile(system).await?,
            })
            .await?;
        self.stores
            .notices
            .set_notice_room(user.as_str(), room_id.as_str())
            .await?;
        let mut info = ruma::events::tag::TagInfo::new();
        info.order = Some(0.0);
        self.set_tag(user, &room_id, NOTICE_TAG, Some(info)).await?;
        Ok(room_id)
    }

    /// Sends a notice to one user; the event id.
    pub async fn send_server_notice(
        self: &Arc<Self>,
        user: &UserId,
        body: &str,
    ) -> Result<OwnedEventId> {
        if user.server_name() != self.server_name || !self.accounts.user_exists(user).await? {
            return Err(Error::not_found("no such user"));
        }
        let system = self.ensure_notices_user().await?;
        if user == system {
            return Err(Error::invalid_param("the system user gets no notices"));
        }
        let room = self.notices_room(&system, user).await?;
        let content = json!({ "msgtype": "m.server_notice", "body": body });
        self.rooms
            .append(
                &room,
                &system,
                NewContent::message(TimelineEventType::RoomMessage, content),
                None,
            )
            .await
    }

    /// Starts sending a notice to every active user; the job id. Runs in the background.
    pub async fn send_server_notice_to_all(self: &Arc<Self>, by: &str, body: &str) -> Result<i64> {
        check_body(body)?;
        self.ensure_notices_user().await?;
        let content = json!({ "body": body }).to_string();
        let id = self
            .stores
            .notices
            .create_notice_job(&content, by, now_ms())
            .await?;
        tokio::spawn(run_job(Arc::downgrade(self), id));
        Ok(id)
    }

    pub async fn notice_job(&self, id: i64) -> Result<Option<NoticeJob>> {
        Ok(self.stores.notices.notice_job(id).await?)
    }

    /// Resumes notice jobs a restart interrupted.
    pub(crate) fn resume_notice_jobs(self: &Arc<Self>, jobs: Vec<NoticeJob>) {
        for job in jobs {
            tokio::spawn(run_job(Arc::downgrade(self), job.id));
        }
    }
}

pub fn check_body(body: &str) -> Result<()> {
    if body.trim().is_empty() || body.chars().count() > 4000 {
        return Err(Error::invalid_param("a notice has 1 to 4000 characters"));
    }
    Ok(())
}

/// Sends a job's notice to the users after its cursor, page by page, saving the cursor.
async fn run_job(hs: Weak<Homeserver>, id: i64) {
    loop {
        let Some(hs) = hs.upgrade() else { return };
        match step(&hs, id).await {
            Ok(true) => continue,
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(job = id, error = %e, "notice job paused; retrying in 10 s");
                drop(hs);
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
            }
        }
    }
}

/// One page of a job; false when the job is done.
async fn step(hs: &Arc<Homeserver>, id: i64) -> Result<bool> {
    let Some(job) = hs.stores.notices.notice_job(id).await? else {
        return Ok(false);
    };
    if job.done_ts.is_some() {
        return Ok(false);
    }
    let body = serde_json::from_str::<Value>(&job.content)
        .ok()
        .and_then(|v| v.get("body")?.as_str().map(str::to_owned))
        .unwrap_or_default();
    let users = hs
        .stores
        .notices
        .active_users_after(&job.cursor, JOB_PAGE)
        .await?;
    let system = hs.notices_user();
    let mut sent = job.sent;
    let mut cursor = job.cursor.clone();
    for user in &users {
        cursor = user.clone();
        let Ok(user) = UserId::parse(user.as_str()) else {
            continue;
        };
        if user == system {
            continue;
        }
        match hs.send_server_notice(&user, &body).await {
            Ok(_) => sent += 1,
            // One user's failure (e.g. deactivated meanwhile) does not stop the job.
            Err(e) => tracing::warn!(job = id, error = %e, "notice not delivered to a user"),
        }
    }
    let done = (users.len() as i64) < JOB_PAGE;
    hs.stores
        .notices
        .advance_notice_job(id, &cursor, sent, done.then(now_ms))
        .await?;
    if done {
        tracing::info!(job = id, sent, "notice sent to all users");
    }
    Ok(!done)
}
