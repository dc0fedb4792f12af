//! `Homeserver`: one Matrix domain — its config, signing key, stores, stream positions,
//! notifier, room service and accounts. Several live in one process (`Tenants`).

use std::{sync::Arc, time::Duration};

use ruma::{OwnedServerName, OwnedUserId, RoomVersionId, UserId, signatures::Ed25519KeyPair};

use crate::{
    accounts::{Accounts, hashing::PasswordHashing},
    clock::Clock,
    config::{Config, DatabaseLocation},
    e2ee::device_lists::DeviceLists,
    e2ee::to_device::ToDeviceInbox,
    ephemeral::{
        Serial,
        presence::{self, Presence},
        typing::Typing,
    },
    error::{Error, Result},
    federation::{Federation, Outgoing, receiver::Inbound, transport::Transport},
    media::{Media, storage::FsStorage},
    push::{Push, unread::UnreadCounts},
    ratelimit::RateLimiter,
    receipts::Receipts,
    rooms::Rooms,
    store::{self, Stores},
    sync::{notifier::Notifier, stream::StreamIds},
};

/// What every tenant of a process shares: the password hashing queue, the outbound
/// federation transport (one connection pool) and the clock.
#[derive(Clone)]
pub struct Shared {
    pub hashing: Arc<PasswordHashing>,
    pub federation_transport: Arc<dyn Transport>,
    pub clock: Arc<dyn Clock>,
}

pub struct Homeserver {
    pub server_name: OwnedServerName,
    pub config: Arc<Config>,
    pub key: Arc<Ed25519KeyPair>,
    pub stores: Stores,
    pub stream: Arc<StreamIds<OwnedUserId>>,
    pub notifier: Arc<Notifier>,
    pub rooms: Arc<Rooms>,
    pub accounts: Accounts,
    pub rate_limiter: RateLimiter,
    /// Serial of ephemeral changes (typing, presence), carried in sync tokens.
    pub ephemeral: Arc<Serial>,
    pub typing: Arc<Typing>,
    pub presence: Arc<Presence>,
    pub media: Media,
    pub push: Arc<Push>,
    /// Notification counts for sync, carried on from one sync to the next.
    pub unread: UnreadCounts,
    /// Records device-list changes and wakes whoever has to hear of them.
    pub device_lists: Arc<DeviceLists>,
    /// Read receipts, local and from other servers.
    pub receipts: Arc<Receipts>,
    /// The to-device inboxes of this server's devices.
    pub to_device: Arc<ToDeviceInbox>,
    /// Other homeservers: signed client, keys, request authentication.
    pub federation: Arc<Federation>,
    /// Serialises read-modify-writes of account data (`m.tag`, `m.push_rules`).
    pub(crate) account_data_edits: tokio::sync::Mutex<()>,
}

impl Homeserver {
    /// Opens (creating on first use) the tenant's database and signing key.
    /// `server_name` must have passed `tenants::tenant_name`; it becomes a file or schema name.
    pub async fn open(
        server_name: OwnedServerName,
        config: Arc<Config>,
        shared: &Shared,
    ) -> Result<Arc<Self>> {
        let stores = match DatabaseLocation::parse(&config.database_url).map_err(Error::internal)? {
            DatabaseLocation::SqliteDir(dir) => {
                let file = crate::tenants::child_path(&dir, &format!("{server_name}.db"))?;
                store::open_sqlite(&file, config.db_pool_size).await?
            }
            DatabaseLocation::Postgres(url) => {
                store::open_postgres(&url, server_name.as_str(), config.db_pool_size).await?
            }
        };
        Self::with_stores(server_name, config, stores, shared).await
    }

    pub async fn with_stores(
        server_name: OwnedServerName,
        config: Arc<Config>,
        stores: Stores,
        shared: &Shared,
    ) -> Result<Arc<Self>> {
        let media_dir = media_dir(&config, &server_name)?;
        let (key_id, doc) = stores
            .server_keys
            .signing_key(&|| {
                let doc = Ed25519KeyPair::generate();
                (
                    format!("ed25519:{}", crate::accounts::random_string(6)),
                    doc.to_vec(),
                )
            })
            .await?;
        let version = key_id
            .strip_prefix("ed25519:")
            .unwrap_or(&key_id)
            .to_owned();
        let key = Arc::new(Ed25519KeyPair::from_der(&doc, version).map_err(Error::internal)?);
        let notifier = Arc::new(Notifier::default());
        let waker = notifier.clone();
        let stream = Arc::new(StreamIds::new(
            stores.events.max_stream_pos().await?,
            move |users: Vec<OwnedUserId>| waker.wake(users.iter().map(|u| u.as_ref())),
        ));
        let push = Arc::new(Push::new(
            server_name.clone(),
            stores.account_data.clone(),
            stores.push.clone(),
        ));
        let outgoing = Outgoing::new(
            &server_name,
            key.clone(),
            &config.federation,
            shared.federation_transport.clone(),
            &stores,
            shared.clock.clone(),
        );
        let parse_version = |v: &str| RoomVersionId::try_from(v).map_err(Error::internal);
        let rooms = Arc::new(Rooms::new(
            server_name.clone(),
            key.clone(),
            (stores.events.clone(), stores.graph.clone()),
            stream.clone(),
            notifier.clone(),
            (
                push.clone(),
                outgoing.sender.clone(),
                outgoing.inviter.clone(),
            ),
            (
                stores.events.max_state_group().await?,
                stores.graph.min_stream_pos().await?,
            ),
            parse_version(&config.default_room_version)?,
            config
                .supported_room_versions
                .iter()
                .map(|v| parse_version(v))
                .collect::<Result<_>>()?,
        ));
        // EDUs for other servers go to the federation sender's outbox.
        let remote_updates: Arc<dyn crate::e2ee::device_lists::RemoteUpdates> =
            outgoing.sender.clone();
        let device_lists = Arc::new(DeviceLists::new(
            server_name.clone(),
            (stream.clone(), notifier.clone()),
            stores.keys.clone(),
            remote_updates.clone(),
        ));
        let accounts = Accounts::new(
            server_name.clone(),
            stores.accounts.clone(),
            stores.sessions.clone(),
            device_lists.clone(),
            (
                shared.hashing.clone(),
                crate::accounts::throttle::LoginThrottle::from_config(&config.rate_limit),
            ),
            Duration::from_secs(config.refreshable_access_token_lifetime_secs),
            vec![config.server_notices.localpart.clone()],
        );
        let rate_limiter = RateLimiter::new(config.rate_limit.clone());
        let hashed = stores
            .accounts
            .hash_plain_registration_tokens(|t| {
                (
                    crate::accounts::registration_token_id(t),
                    crate::accounts::registration_token_hint(t),
                )
            })
            .await?;
        if hashed > 0 {
            tracing::info!(tenant = %server_name, hashed, "registration tokens now stored hashed");
        }
        // Work left from before a restart, read before the pools are emptied below.
        let first_push_due = stores.push.next_push_due().await?;
        let notice_jobs = stores.notices.unfinished_notice_jobs().await?;
        stores.closer.release_idle().await;
        ruma::OwnedUserId::try_from(format!(
            "@{}:{server_name}",
            config.server_notices.localpart
        ))
        .map_err(|e| Error::internal(format!("server_notices.localpart: {e}")))?;
        let ephemeral = Arc::new(Serial::default());
        let (presence, presence_timers) = Presence::new(
            server_name.clone(),
            ephemeral.clone(),
            (
                stores.profiles.clone(),
                stores.account_data.clone(),
                stores.events.clone(),
            ),
            notifier.clone(),
            remote_updates.clone(),
        );
        let presence = Arc::new(presence);
        let media = Media::new(
            server_name.clone(),
            config.media.clone(),
            stores.media.clone(),
            Arc::new(FsStorage::new(media_dir)),
            outgoing.media.clone(),
        );
        let receipts = Arc::new(Receipts::new(
            server_name.clone(),
            (stores.receipts.clone(), stores.events.clone()),
            rooms.clone(),
            (stream.clone(), notifier.clone()),
            remote_updates.clone(),
        ));
        let typing = Arc::new(Typing::new(
            ephemeral.clone(),
            server_name.clone(),
            (rooms.clone(), notifier.clone()),
            remote_updates.clone(),
        ));
        let to_device = Arc::new(ToDeviceInbox::new(
            stores.keys.clone(),
            stream.clone(),
            notifier.clone(),
        ));
        let federation = Arc::new(Federation::new(
            server_name.clone(),
            key.clone(),
            &config.federation,
            outgoing,
            Inbound {
                rooms: rooms.clone(),
                to_device: to_device.clone(),
                device_lists: device_lists.clone(),
                receipts: receipts.clone(),
                typing: typing.clone(),
                presence: presence.clone(),
            },
            &stores,
            shared.clock.clone(),
        ));
        let unread = UnreadCounts::new(stores.push.clone());
        let hs = Arc::new(Self {
            federation,
            to_device,
            receipts,
            server_name,
            config,
            key,
            stores,
            stream,
            notifier,
            rooms,
            accounts,
            rate_limiter,
            typing,
            ephemeral,
            presence,
            media,
            push: push.clone(),
            unread,
            device_lists,
            account_data_edits: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(presence::run_timers(
            Arc::downgrade(&hs.presence),
            presence_timers,
        ));
        tokio::spawn(crate::push::sender::run(
            Arc::downgrade(&hs),
            push.queued.clone(),
            first_push_due,
        ));
        hs.resume_notice_jobs(notice_jobs);
        {
            let sender = hs.federation.sender.clone();
            tokio::spawn(async move { sender.resume().await });
        }
        Ok(hs)
    }

    /// Stores account data (global when `room_id` is empty) at a new stream position and wakes
    /// the user's syncs. Runs detached from the request, so a client that disconnects cannot
    /// leave the position unfinished.
    pub async fn set_account_data(
        self: &Arc<Self>,
        user: &UserId,
        room_id: &str,
        kind: &str,
        content: &str,
    ) -> Result<()> {
        let (hs, user, room_id, kind, content) = (
            self.clone(),
            user.to_owned(),
            room_id.to_owned(),
            kind.to_owned(),
            content.to_owned(),
        );
        detached(async move {
            let pos = hs.stream.next();
            hs.stores
                .account_data
                .set(user.as_str(), &room_id, &kind, &content, pos.pos())
                .await?;
            let (woken, _) = pos.finish(vec![user.clone()]);
            hs.notifier.wake(woken.iter().map(|u| u.as_ref()));
            if room_id.is_empty() && kind == presence::VISIBILITY_SETTING {
                hs.presence.visibility_changed(&user, &content).await;
            }
            Ok(())
        })
        .await
    }

    pub async fn close(&self) {
        self.stores.closer.close().await;
    }
}

/// The tenant's media folder, inside `{data_dir}/media`.
pub fn media_dir(config: &Config, server_name: &ruma::ServerName) -> Result<std::path::PathBuf> {
    crate::tenants::child_path(&config.data_dir.join("media"), server_name.as_str())
}

/// Runs a write to completion even if the request that started it goes away.
pub async fn detached<T: Send + 'static>(
    work: impl Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(work).await.map_err(Error::internal)?
}
