//! Persistence. One trait per aggregate; two sqlx implementations (`sqlite`, `postgres`) that
//! share their SQL text (`sql.rs`, compiled once per backend) and differ in schema, connection
//! set-up and the few statements where the dialects differ. Nothing outside `store/` writes SQL.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use async_trait::async_trait;

pub mod lock;
mod postgres;
mod sqlite;

pub use postgres::{drop_tenant_schema, open_postgres};
pub use sqlite::open_sqlite;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unique constraint violated")]
    Conflict,
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("corrupt row: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Unavailable(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// `(event type, state key)` → event id.
pub type StateIds = BTreeMap<(String, String), String>;

/// All stores of one tenant.
#[derive(Clone)]
pub struct Stores {
    pub server_keys: Arc<dyn ServerKeyStore>,
    pub accounts: Arc<dyn AccountStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub filters: Arc<dyn FilterStore>,
    pub account_data: Arc<dyn AccountDataStore>,
    pub events: Arc<dyn EventStore>,
    pub profiles: Arc<dyn ProfileStore>,
    pub receipts: Arc<dyn ReceiptStore>,
    pub media: Arc<dyn MediaStore>,
    pub push: Arc<dyn PushStore>,
    pub reports: Arc<dyn ReportStore>,
    pub notices: Arc<dyn NoticeStore>,
    pub admin: Arc<dyn AdminStore>,
    pub keys: Arc<dyn KeyStore>,
    pub backup: Arc<dyn BackupStore>,
    pub graph: Arc<dyn GraphStore>,
    pub remote_keys: Arc<dyn RemoteKeyStore>,
    pub federation: Arc<dyn FederationStore>,
    /// Closes the pools (tenant removal, shutdown).
    pub closer: Arc<dyn Closer>,
}

#[async_trait]
pub trait Closer: Send + Sync {
    async fn close(&self);
    /// Closes idle connections, so an idle tenant holds none (start-up, tenant added).
    async fn release_idle(&self);
}

#[async_trait]
pub trait ServerKeyStore: Send + Sync {
    /// The signing key `(key id, PKCS#8 document)`; the first call stores `generate()`'s key.
    async fn signing_key(
        &self,
        generate: &(dyn Fn() -> (String, Vec<u8>) + Sync),
    ) -> StoreResult<(String, Vec<u8>)>;
}

#[derive(Clone, Debug)]
pub struct UserRow {
    pub user_id: String,
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
    pub created_ts: i64,
}

#[derive(Clone, Debug)]
pub struct RegistrationTokenRow {
    /// The token's id (a hash of it; the token itself is not stored).
    pub token: String,
    /// The token's first characters, to tell tokens apart in lists.
    pub hint: String,
    pub uses_allowed: Option<i64>,
    pub completed: i64,
    pub expiry_ts: Option<i64>,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Fails with `Conflict` when the user id is taken.
    async fn create_user(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
        is_admin: bool,
        now: i64,
    ) -> StoreResult<()>;
    async fn get_user(&self, user_id: &str) -> StoreResult<Option<UserRow>>;
    async fn count_users(&self) -> StoreResult<i64>;
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> StoreResult<()>;
    /// Marks the user deactivated, removes the password, all devices, their tokens and keys
    /// (a device-list change at `change_pos`). Returns the removed token hashes.
    async fn deactivate(&self, user_id: &str, change_pos: i64) -> StoreResult<Vec<String>>;

    /// `id` is the token's hash, `hint` its first characters.
    async fn create_registration_token(
        &self,
        id: &str,
        hint: &str,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
        now: i64,
    ) -> StoreResult<()>;
    async fn get_registration_token(
        &self,
        token: &str,
    ) -> StoreResult<Option<RegistrationTokenRow>>;
    /// Consumes one use if the token is still valid at `now`; false if not.
    async fn consume_registration_token(&self, token: &str, now: i64) -> StoreResult<bool>;
    async fn list_registration_tokens(&self) -> StoreResult<Vec<RegistrationTokenRow>>;
    async fn delete_registration_token(&self, token: &str) -> StoreResult<bool>;
    /// Replaces tokens stored in plain text (before migration 0012) by their ids and hints.
    async fn hash_plain_registration_tokens(
        &self,
        id_and_hint: for<'a> fn(&'a str) -> (String, String),
    ) -> StoreResult<u64>;

    async fn user_summary(&self, user_id: &str) -> StoreResult<Option<UserSummary>>;
    /// Active users whose id or display name contains `term` (lower case), at most `limit`.
    async fn search_users(&self, term: &str, limit: i64) -> StoreResult<Vec<UserSummary>>;
    /// Users ordered by id after `after`, optionally only those whose id or display name
    /// contains `search` (lower case); deactivated ones included.
    async fn list_users(
        &self,
        search: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<UserSummary>>;
}

#[derive(Clone, Debug)]
pub struct UserSummary {
    pub user_id: String,
    pub displayname: Option<String>,
    pub avatar_url: Option<String>,
    pub is_admin: bool,
    pub deactivated: bool,
    pub created_ts: i64,
}

#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
    pub last_seen_user_agent: Option<String>,
}

#[derive(Clone, Debug)]
pub struct TokenRow {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
    /// Made by a refresh whose old refresh token is still valid until this session is used.
    pub unconfirmed: bool,
}

pub struct NewSession<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
    pub display_name: Option<&'a str>,
    pub token_hash: &'a str,
    pub refresh_hash: Option<&'a str>,
    pub expires_ts: Option<i64>,
    pub ip: Option<&'a str>,
    pub now: i64,
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Creates the device (or reuses it, dropping its old tokens) and its access token. Returns
    /// the hashes of tokens it replaced.
    async fn create_session(&self, s: NewSession<'_>) -> StoreResult<Vec<String>>;
    async fn lookup_token(&self, token_hash: &str) -> StoreResult<Option<TokenRow>>;
    /// Swaps the session behind `refresh_hash` to new tokens. Returns the old access-token hash
    /// and the session, or None if the refresh token is unknown.
    /// Issues new tokens for the session behind `refresh_hash`. The old access token stops
    /// working; the old refresh token keeps working until the new session is used (a client
    /// whose refresh response got lost can retry). Returns the token hashes that stopped
    /// working and the session, or None if the refresh token is unknown.
    async fn refresh(
        &self,
        refresh_hash: &str,
        new_token_hash: &str,
        new_refresh_hash: &str,
        expires_ts: Option<i64>,
        now: i64,
    ) -> StoreResult<Option<(Vec<String>, TokenRow)>>;
    /// The first use of a refreshed session: the refresh token it came from is revoked.
    async fn confirm_refresh(&self, token_hash: &str) -> StoreResult<()>;
    /// Stores an OpenID token (and drops the expired ones).
    async fn create_openid_token(
        &self,
        token_hash: &str,
        user_id: &str,
        expires_ts: i64,
        now: i64,
    ) -> StoreResult<()>;
    /// The user behind an OpenID token that has not expired at `now`.
    async fn openid_token_user(&self, token_hash: &str, now: i64) -> StoreResult<Option<String>>;
    /// Deletes devices, their tokens, keys and to-device inboxes (a device-list change at
    /// `change_pos`); returns the token hashes removed.
    async fn delete_devices(
        &self,
        user_id: &str,
        device_ids: &[String],
        change_pos: i64,
    ) -> StoreResult<Vec<String>>;
    /// `delete_devices` for all devices of the user but `keep`.
    async fn delete_all_devices(
        &self,
        user_id: &str,
        keep: Option<&str>,
        change_pos: i64,
    ) -> StoreResult<Vec<String>>;
    async fn list_devices(&self, user_id: &str) -> StoreResult<Vec<DeviceRow>>;
    async fn get_device(&self, user_id: &str, device_id: &str) -> StoreResult<Option<DeviceRow>>;
    async fn rename_device(
        &self,
        user_id: &str,
        device_id: &str,
        name: Option<&str>,
    ) -> StoreResult<bool>;
    async fn touch_device(
        &self,
        user_id: &str,
        device_id: &str,
        ip: Option<&str>,
        user_agent: Option<&str>,
        now: i64,
    ) -> StoreResult<()>;
}

#[async_trait]
pub trait FilterStore: Send + Sync {
    async fn create_filter(&self, user_id: &str, json: &str) -> StoreResult<i64>;
    async fn get_filter(&self, user_id: &str, filter_id: i64) -> StoreResult<Option<String>>;
}

#[derive(Clone, Debug)]
pub struct AccountDataRow {
    /// Empty for global account data.
    pub room_id: String,
    pub data_type: String,
    pub content: String,
    pub stream_pos: i64,
}

#[async_trait]
pub trait AccountDataStore: Send + Sync {
    async fn set(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
        content: &str,
        stream_pos: i64,
    ) -> StoreResult<()>;
    async fn get(
        &self,
        user_id: &str,
        room_id: &str,
        data_type: &str,
    ) -> StoreResult<Option<String>>;
    /// Entries changed in `(since, upto]`; `since = 0` gives all.
    async fn changed(
        &self,
        user_id: &str,
        since: i64,
        upto: i64,
    ) -> StoreResult<Vec<AccountDataRow>>;
}

#[async_trait]
pub trait ProfileStore: Send + Sync {
    /// All fields of a user's profile: `(field, JSON value)`.
    async fn profile(&self, user_id: &str) -> StoreResult<Vec<(String, String)>>;
    /// Sets (`Some`) or removes (`None`) one field.
    async fn set_profile_field(
        &self,
        user_id: &str,
        field: &str,
        value: Option<&str>,
    ) -> StoreResult<()>;
    /// Presence the user set explicitly: `(state, status message)`.
    async fn presence(&self, user_id: &str) -> StoreResult<Option<(String, Option<String>)>>;
    async fn set_presence(
        &self,
        user_id: &str,
        state: &str,
        status_msg: Option<&str>,
        now: i64,
    ) -> StoreResult<()>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceiptRow {
    pub room_id: String,
    pub user_id: String,
    pub receipt_type: String,
    /// Empty for an unthreaded receipt, `main` or a thread root's event id.
    pub thread_id: String,
    pub event_id: String,
    pub ts: i64,
    pub stream_pos: i64,
}

#[async_trait]
pub trait ReceiptStore: Send + Sync {
    /// Stores the receipt unless the user's receipt of that type and thread points at the same
    /// or a later event (`event_pos` orders them). Returns whether it was stored.
    async fn set_receipt(&self, receipt: &ReceiptRow, event_pos: i64) -> StoreResult<bool>;
    /// Receipts of the rooms changed in `(since, upto]`; `since = 0` gives all.
    async fn receipts_changed(
        &self,
        room_ids: &[String],
        since: i64,
        upto: i64,
    ) -> StoreResult<Vec<ReceiptRow>>;
}

#[derive(Clone, Debug)]
pub struct MediaRow {
    pub media_id: String,
    pub uploader: String,
    pub content_type: Option<String>,
    pub filename: Option<String>,
    pub size: Option<i64>,
    pub created_ts: i64,
    /// `None` while reserved and waiting for its upload.
    pub uploaded_ts: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThumbnailRow {
    pub width: i64,
    pub height: i64,
    pub method: String,
    pub content_type: String,
    pub size: i64,
}

#[async_trait]
pub trait MediaStore: Send + Sync {
    /// Inserts a media row (reserved, or complete when `uploaded_ts` is set).
    async fn insert_media(&self, row: &MediaRow) -> StoreResult<()>;
    /// Reserved media of the uploader created after `since_ts` and not uploaded yet.
    async fn count_pending_media(&self, uploader: &str, since_ts: i64) -> StoreResult<i64>;
    /// Records the upload of reserved media; false if it was uploaded already.
    async fn complete_media(
        &self,
        media_id: &str,
        content_type: Option<&str>,
        filename: Option<&str>,
        size: i64,
        now: i64,
    ) -> StoreResult<bool>;
    async fn get_media(&self, media_id: &str) -> StoreResult<Option<MediaRow>>;
    async fn add_thumbnail(&self, media_id: &str, thumb: &ThumbnailRow) -> StoreResult<()>;
    async fn thumbnails(&self, media_id: &str) -> StoreResult<Vec<ThumbnailRow>>;
    /// Removes the media row and its thumbnails' rows; false if there was none.
    async fn delete_media(&self, media_id: &str) -> StoreResult<bool>;
    /// Another server's media (or a thumbnail of it) kept in our storage.
    async fn remote_media(&self, cache_id: &str) -> StoreResult<Option<RemoteMediaRow>>;
    /// Records media of another server now in our storage (again: replaced).
    async fn add_remote_media(&self, row: &RemoteMediaRow) -> StoreResult<()>;
}

/// Another server's media, or a thumbnail of it, kept in our media storage under `cache_id`.
#[derive(Clone, Debug)]
pub struct RemoteMediaRow {
    pub cache_id: String,
    pub server_name: String,
    pub media_id: String,
    /// Empty for the file, `{width}x{height}-{method}` for a thumbnail.
    pub variant: String,
    pub content_type: String,
    pub filename: Option<String>,
    pub size: i64,
    pub fetched_ts: i64,
}

#[derive(Clone, Debug)]
pub struct PusherRow {
    pub user_id: String,
    pub app_id: String,
    pub pushkey: String,
    pub app_display_name: String,
    pub device_display_name: String,
    pub profile_tag: Option<String>,
    pub lang: String,
    /// The pusher's `data` (gateway URL, format, …) as JSON.
    pub data: String,
    pub device_id: String,
    pub created_ts: i64,
}

/// A notification as listed by `/notifications`.
#[derive(Clone, Debug)]
pub struct NotificationRow {
    pub event: EventRow,
    pub actions: String,
    pub ts: i64,
    pub read: bool,
}

/// What notifies a user in one room's stream range: counted after the user's last own write in
/// the range if there is one (whoever writes has read what came before), else all of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnreadSpan {
    pub room_id: String,
    /// The user wrote in the range (and so has read what came before the write).
    pub own_write: bool,
    pub notifications: i64,
    pub highlights: i64,
}

/// A push waiting in the outbox.
#[derive(Clone, Debug)]
pub struct QueuedPush {
    pub user_id: String,
    pub stream_pos: i64,
    pub room_id: String,
    pub event_id: String,
    pub highlight: bool,
    pub attempts: i64,
    /// The push actions (tweaks) as JSON.
    pub actions: String,
}

#[async_trait]
pub trait PushStore: Send + Sync {
    /// Where the user's read receipts (unthreaded or main thread) are, by room; rooms without
    /// one are absent.
    async fn read_receipts(
        &self,
        user_id: &str,
        room_ids: &[String],
    ) -> StoreResult<HashMap<String, i64>>;
    /// What notifies the user in each room's stream range `(after, upto]`, given as
    /// `(room, after)`: rooms with neither a notification nor an own write there are absent.
    async fn unread_between(
        &self,
        user_id: &str,
        ranges: &[(String, i64)],
        upto: i64,
    ) -> StoreResult<Vec<UnreadSpan>>;
    /// The app badge: unread notifications over these rooms, at most `per_room` per room (a
    /// backwards scan per room that stops there, however much is unread; `unread_between` is
    /// exact but reads the whole range).
    async fn unread_badge(
        &self,
        user_id: &str,
        room_ids: &[String],
        per_room: i64,
    ) -> StoreResult<i64>;
    /// The user's notifications in these rooms before position `before`, newest first.
    async fn notifications(
        &self,
        user_id: &str,
        room_ids: &[String],
        before: Option<i64>,
        limit: i64,
        only_highlight: bool,
    ) -> StoreResult<Vec<NotificationRow>>;
    async fn pushers(&self, user_id: &str) -> StoreResult<Vec<PusherRow>>;
    /// Whether the user has any pusher.
    async fn has_pushers(&self, user_id: &str) -> StoreResult<bool>;
    /// Adds or replaces the user's pusher; without `append`, other users' pushers with the
    /// same app id and pushkey go.
    async fn set_pusher(&self, pusher: &PusherRow, append: bool) -> StoreResult<()>;
    async fn delete_pusher(&self, user_id: &str, app_id: &str, pushkey: &str) -> StoreResult<bool>;
    /// Pushes due at `now`, oldest first.
    async fn due_pushes(&self, now: i64, limit: i64) -> StoreResult<Vec<QueuedPush>>;
    /// When the next queued push is due.
    async fn next_push_due(&self) -> StoreResult<Option<i64>>;
    /// The pushers of several users (the push sender's batch), in one query.
    async fn pushers_of(&self, user_ids: &[String]) -> StoreResult<Vec<PusherRow>>;
    /// Settles a batch of pushes in one transaction: `done` (user, position) leave the queue,
    /// `retries` get their new attempt count and due time.
    async fn settle_pushes(&self, done: &[(String, i64)], retries: &[PushRetry])
    -> StoreResult<()>;
}

/// A queued push to be tried again.
#[derive(Clone, Debug)]
pub struct PushRetry {
    pub user_id: String,
    pub stream_pos: i64,
    pub attempts: i64,
    pub next_attempt_ts: i64,
}

/// A one-time or fallback key as uploaded: `algorithm:key_id` split, the key object as JSON.
#[derive(Clone, Debug)]
pub struct OneTimeKeyRow {
    pub algorithm: String,
    pub key_id: String,
    pub json: String,
}

#[derive(Clone, Debug)]
pub struct DeviceKeysRow {
    pub user_id: String,
    pub device_id: String,
    pub json: String,
    pub display_name: Option<String>,
}

/// A key handed out by `/keys/claim`.
#[derive(Clone, Debug)]
pub struct ClaimedKey {
    pub user_id: String,
    pub device_id: String,
    pub algorithm: String,
    pub key_id: String,
    pub json: String,
}

/// A to-device message for one device of a local user, or (`device_id` None) all of them.
#[derive(Clone, Debug)]
pub struct ToDeviceTarget {
    pub user_id: String,
    pub device_id: Option<String>,
    /// The whole event (`sender`, `type`, `content`) as JSON.
    pub json: String,
}

/// A membership or encryption state event, for device-list tracking.
#[derive(Clone, Debug)]
pub struct SharingChange {
    pub room_id: String,
    pub event_type: String,
    pub state_key: String,
    pub membership: Option<String>,
}

/// A signature on a device key or cross-signing key, uploaded apart from the key.
#[derive(Clone, Debug)]
pub struct SignatureRow {
    pub target_user: String,
    /// A device id, or the public key of a cross-signing key.
    pub target_key: String,
    pub signer: String,
    pub signer_key_id: String,
    pub signature: String,
}

/// A key backup version.
#[derive(Clone, Debug)]
pub struct BackupVersionRow {
    pub version: i64,
    pub algorithm: String,
    pub auth_data: String,
    pub etag: i64,
    pub count: i64,
}

/// One backed-up room key.
#[derive(Clone, Debug)]
pub struct BackupKeyRow {
    pub room_id: String,
    pub session_id: String,
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    pub session_data: String,
}

/// The outcome of writing backup keys.
#[derive(Clone, Debug)]
pub enum BackupWrite {
    /// The version's etag and key count after the write.
    Done { etag: i64, count: i64 },
    /// The version is not the current one; the current one, if any.
    WrongVersion { current: Option<i64> },
}

/// Server-side key backup: versions and the room keys in them.
#[async_trait]
pub trait BackupStore: Send + Sync {
    /// Creates the user's next backup version, which becomes the current one.
    async fn create_backup_version(
        &self,
        user_id: &str,
        algorithm: &str,
        auth_data: &str,
    ) -> StoreResult<i64>;
    /// A version (None: the current one, the newest not deleted), with its key count.
    async fn backup_version(
        &self,
        user_id: &str,
        version: Option<i64>,
    ) -> StoreResult<Option<BackupVersionRow>>;
    /// Replaces a version's auth data; false if there is no such version.
    async fn update_backup_version(
        &self,
        user_id: &str,
        version: i64,
        auth_data: &str,
    ) -> StoreResult<bool>;
    /// Deletes a version and its keys; false if there is no such version.
    async fn delete_backup_version(&self, user_id: &str, version: i64) -> StoreResult<bool>;
    /// Stores keys in the current version `version`: a key replaces the one stored for its
    /// session only if it is better (verified over unverified, then the lower first message
    /// index, then the lower forwarded count).
    async fn put_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        keys: &[BackupKeyRow],
    ) -> StoreResult<BackupWrite>;
    /// Keys of a version, all or of one room or one session.
    async fn backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StoreResult<Vec<BackupKeyRow>>;
    /// Deletes keys of a version, all or of one room or one session.
    async fn delete_backup_keys(
        &self,
        user_id: &str,
        version: i64,
        room_id: Option<&str>,
        session_id: Option<&str>,
    ) -> StoreResult<BackupWrite>;
}

/// End-to-end encryption material the server carries: device keys, one-time and fallback
/// keys, the device-list stream and to-device inboxes.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores the device's keys (`device_keys` None: unchanged) and adds one-time keys (a key id
    /// already present keeps its first upload) and fallback keys (replacing the algorithm's
    /// previous one); with `change_pos`, records a device-list change of the user there.
    async fn upload_keys(
        &self,
        user_id: &str,
        device_id: &str,
        device_keys: Option<&str>,
        one_time: &[OneTimeKeyRow],
        fallback: &[OneTimeKeyRow],
        change_pos: Option<i64>,
    ) -> StoreResult<()>;
    /// The device's uploaded keys, if any.
    async fn device_keys_of(&self, user_id: &str, device_id: &str) -> StoreResult<Option<String>>;
    /// Unclaimed one-time keys per algorithm, and the algorithms with an unused fallback key.
    async fn key_counts(
        &self,
        user_id: &str,
        device_id: &str,
    ) -> StoreResult<(Vec<(String, i64)>, Vec<String>)>;
    /// Device keys of all devices of these users, with the devices' display names.
    async fn device_keys(&self, user_ids: &[String]) -> StoreResult<Vec<DeviceKeysRow>>;
    /// Claims one key per `(user, device, algorithm)`: a one-time key (each handed out once,
    /// also under concurrent claims), else the fallback key (marked used). Devices without
    /// either are left out.
    async fn claim_keys(&self, wanted: &[(String, String, String)])
    -> StoreResult<Vec<ClaimedKey>>;
    /// Users whose device lists changed at positions in `(from, to]`.
    async fn device_list_changes(&self, from: i64, to: i64) -> StoreResult<Vec<String>>;
    /// Records a device-list change of the user at `pos` (a renamed device, say).
    async fn record_device_list_change(&self, user_id: &str, pos: i64) -> StoreResult<()>;
    /// The position of the user's latest device-list change (0: none).
    async fn device_list_position(&self, user_id: &str) -> StoreResult<i64>;
    /// Users joined to or invited into an encrypted room the user is joined to (the user included).
    async fn users_sharing_encrypted_rooms(&self, user_id: &str) -> StoreResult<Vec<String>>;
    /// Users joined to or invited into the room.
    async fn room_members(&self, room_id: &str) -> StoreResult<Vec<String>>;
    /// The encrypted ones among `room_ids`.
    async fn encrypted_rooms(&self, room_ids: &[String]) -> StoreResult<Vec<String>>;
    /// Membership and `m.room.encryption` events of these rooms in `(from, to]`, oldest first.
    async fn sharing_changes(
        &self,
        room_ids: &[String],
        from: i64,
        to: i64,
    ) -> StoreResult<Vec<SharingChange>>;
    /// Queues to-device messages at `pos`; false (nothing queued) if the sender's device used
    /// `txn_id` before.
    async fn send_to_device(
        &self,
        sender: &str,
        sender_device: &str,
        txn_id: &str,
        messages: &[ToDeviceTarget],
        pos: i64,
        now: i64,
    ) -> StoreResult<bool>;
    /// The device's to-device messages in `(after, upto]`, oldest first, at most `limit`.
    async fn to_device_messages(
        &self,
        user_id: &str,
        device_id: &str,
        after: i64,
        upto: i64,
        limit: i64,
    ) -> StoreResult<Vec<(i64, String)>>;
    /// Deletes the device's to-device messages at or below `upto` (acknowledged by a sync).
    async fn ack_to_device(&self, user_id: &str, device_id: &str, upto: i64) -> StoreResult<()>;
    /// Cross-signing keys of these users: `(user, usage, json)`.
    async fn cross_signing_keys(
        &self,
        user_ids: &[String],
    ) -> StoreResult<Vec<(String, String, String)>>;
    /// Stores cross-signing keys `(usage, json)` of the user, a device-list change at `change_pos`.
    async fn set_cross_signing_keys(
        &self,
        user_id: &str,
        keys: &[(String, String)],
        change_pos: i64,
    ) -> StoreResult<()>;
    /// Signatures on keys of these users.
    async fn signatures(&self, user_ids: &[String]) -> StoreResult<Vec<SignatureRow>>;
    /// Stores signatures, a device-list change of `changed` at `change_pos`.
    async fn add_signatures(
        &self,
        rows: &[SignatureRow],
        changed: &str,
        change_pos: i64,
    ) -> StoreResult<()>;
}

#[derive(Clone, Debug, Default)]
pub struct ReportRow {
    pub id: i64,
    pub room_id: String,
    /// `None` for a report of the whole room.
    pub event_id: Option<String>,
    pub event_sender: Option<String>,
    pub reporter: String,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub created_ts: i64,
    pub handled_ts: Option<i64>,
    pub handled_by: Option<String>,
}

#[async_trait]
pub trait ReportStore: Send + Sync {
    /// Stores a report; its id.
    async fn add_report(&self, report: &ReportRow) -> StoreResult<i64>;
    /// Reports by id (newest first) before `before`, filtered by handled state and room.
    async fn reports(
        &self,
        handled: Option<bool>,
        room_id: Option<&str>,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<ReportRow>>;
    async fn mark_report_handled(&self, id: i64, by: &str, now: i64) -> StoreResult<bool>;
}

#[derive(Clone, Debug)]
pub struct NoticeJob {
    pub id: i64,
    pub content: String,
    pub created_by: String,
    pub created_ts: i64,
    /// The last user id the notice was sent to.
    pub cursor: String,
    pub sent: i64,
    pub done_ts: Option<i64>,
}

#[async_trait]
pub trait NoticeStore: Send + Sync {
    async fn notice_room(&self, user_id: &str) -> StoreResult<Option<String>>;
    async fn set_notice_room(&self, user_id: &str, room_id: &str) -> StoreResult<()>;
    async fn create_notice_job(&self, content: &str, by: &str, now: i64) -> StoreResult<i64>;
    async fn notice_job(&self, id: i64) -> StoreResult<Option<NoticeJob>>;
    async fn unfinished_notice_jobs(&self) -> StoreResult<Vec<NoticeJob>>;
    async fn advance_notice_job(
        &self,
        id: i64,
        cursor: &str,
        sent: i64,
        done_ts: Option<i64>,
    ) -> StoreResult<()>;
    /// Active users with ids after `after`, in order.
    async fn active_users_after(&self, after: &str, limit: i64) -> StoreResult<Vec<String>>;
}

#[derive(Clone, Debug)]
pub struct AuditRow {
    pub id: i64,
    pub actor: String,
    pub action: String,
    pub target: Option<String>,
    pub details: Option<String>,
    pub ts: i64,
    /// `ok`, `failed: <errcode>`, or none when the request ended before it was recorded.
    pub outcome: Option<String>,
}

/// A room as the admin sees it: no names, topics or messages.
#[derive(Clone, Debug)]
pub struct RoomSummaryRow {
    pub room_id: String,
    pub creator: String,
    pub created_ts: i64,
    pub joined: i64,
    pub invited: i64,
    pub encrypted: bool,
}

#[async_trait]
pub trait AdminStore: Send + Sync {
    /// Makes `token_hash` the tenant's only admin API token.
    async fn replace_admin_token(&self, token_hash: &str, now: i64) -> StoreResult<()>;
    async fn admin_token_exists(&self, token_hash: &str) -> StoreResult<bool>;
    async fn audit(
        &self,
        actor: &str,
        action: &str,
        target: Option<&str>,
        details: Option<&str>,
        now: i64,
    ) -> StoreResult<i64>;
    /// Records the outcome of audit entry `id`.
    async fn audit_outcome(&self, id: i64, outcome: &str) -> StoreResult<()>;
    /// Audit entries before id `before`, newest first.
    async fn audit_log(&self, before: Option<i64>, limit: i64) -> StoreResult<Vec<AuditRow>>;
    async fn setting(&self, key: &str) -> StoreResult<Option<String>>;
    async fn set_setting(&self, key: &str, value: &str) -> StoreResult<()>;
    /// Rooms by id after `after`.
    async fn rooms(&self, after: Option<&str>, limit: i64) -> StoreResult<Vec<RoomSummaryRow>>;
}

/// An event as stored.
#[derive(Clone, Debug)]
pub struct EventRow {
    pub stream_pos: i64,
    pub event_id: String,
    pub room_id: String,
    /// The PDU (pruned if redacted), canonical JSON.
    pub json: String,
    pub state_group: i64,
    pub replaces_state: Option<String>,
    pub redacted_by: Option<String>,
    /// `(device id, txn id)` of the sending device, for `unsigned.transaction_id`.
    pub txn: Option<(String, String)>,
    /// Its place in the topological order (with `stream_pos`).
    pub depth: i64,
}

/// A new event and everything that changes with it, written in one transaction.
pub struct NewEvent<'a> {
    pub stream_pos: i64,
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub sender: &'a str,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub membership: Option<&'a str>,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub json: &'a str,
    /// State group of the state *before* the event.
    pub state_group: i64,
    /// For a state event: the group of the state after it (a new one, delta to `state_group`).
    pub new_state_group: Option<NewStateGroup>,
    pub replaces_state: Option<&'a str>,
    pub relates_to: Option<(&'a str, &'a str, Option<&'a str>)>,
    pub txn: Option<(&'a str, &'a str)>,
    /// The events this one replaces as forward extremities (its `prev_events`).
    pub prev_events: &'a [String],
    /// Its `auth_events` (written as graph edges).
    pub auth_events: &'a [String],
    /// For a redaction: the redacted event and its pruned JSON.
    pub redacts: Option<(&'a str, &'a str)>,
    /// Members this event notifies, with their push actions.
    pub push: &'a [NewPushAction],
    /// The sender has read the room up to this event.
    pub marks_read: bool,
    /// Known as an outlier until now: no longer one.
    pub was_outlier: bool,
    /// Servers the event is sent to (written to the federation outbox with it).
    pub destinations: &'a [String],
    /// A remote event on a fork: the group of the state before it, when it is new, and the
    /// room's resolved state after it, when it changed (a full group that replaces the
    /// current state).
    pub resolution: Option<(Option<&'a NewStateGroup>, Option<&'a NewStateGroup>)>,
}

/// A member's push actions for a new event.
#[derive(Clone, Debug)]
pub struct NewPushAction {
    pub user_id: String,
    /// The actions as JSON.
    pub actions: String,
    pub highlight: bool,
    /// The member has pushers: queue a push.
    pub send: bool,
}

#[derive(Clone, Debug)]
pub struct NewStateGroup {
    pub id: i64,
    /// None: `entries` is a full snapshot.
    pub prev_group: Option<i64>,
    pub chain_len: i64,
    pub entries: Vec<(String, String, String)>,
}

#[derive(Clone, Debug)]
pub struct MembershipRow {
    pub room_id: String,
    pub membership: String,
    pub stream_pos: i64,
    pub event_id: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// The event types/senders filter applied in SQL for `/messages` and sync timelines.
#[derive(Clone, Debug, Default)]
pub struct EventFilter {
    pub types: Option<Vec<String>>,
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    pub not_senders: Vec<String>,
}

#[async_trait]
#[allow(clippy::too_many_arguments)]
pub trait EventStore: Send + Sync {
    /// The highest stream position used by any stream (events, account data, receipts).
    async fn max_stream_pos(&self) -> StoreResult<i64>;
    async fn max_state_group(&self) -> StoreResult<i64>;

    async fn create_room(
        &self,
        room_id: &str,
        version: &str,
        creator: &str,
        now: i64,
    ) -> StoreResult<()>;
    async fn room_version(&self, room_id: &str) -> StoreResult<Option<String>>;
    /// Persists events of one room, in order, in one transaction (a batch of a room's queue).
    async fn persist_events(&self, events: &[NewEvent<'_>]) -> StoreResult<()>;

    async fn get_event(&self, event_id: &str) -> StoreResult<Option<EventRow>>;
    async fn get_events(&self, event_ids: &[String]) -> StoreResult<Vec<EventRow>>;
    async fn txn_event(
        &self,
        user_id: &str,
        device_id: &str,
        txn_id: &str,
    ) -> StoreResult<Option<String>>;

    /// Current state of a room with each event's JSON; the room's forward extremities; the max
    /// depth and the current state group.
    async fn load_room(&self, room_id: &str) -> StoreResult<Option<LoadedRoom>>;
    async fn state_at_group(&self, group: i64) -> StoreResult<StateIds>;
    /// Current state event ids of a room (type filter optional).
    async fn current_state_ids(&self, room_id: &str) -> StoreResult<StateIds>;

    /// Current state of several rooms: `(room id, type, state key, event)`, one query.
    async fn current_state_events(
        &self,
        room_ids: &[String],
    ) -> StoreResult<Vec<(String, String, String, EventRow)>>;
    /// Rooms with the user's current membership (all memberships but forgotten leaves).
    async fn rooms_for_user(&self, user_id: &str) -> StoreResult<Vec<MembershipRow>>;
    /// The user's membership events with position in `(since, upto]`.
    async fn membership_changes(
        &self,
        user_id: &str,
        since: i64,
        upto: i64,
    ) -> StoreResult<Vec<MembershipRow>>;
    /// The user's membership changes in one room `(position, membership)`, oldest first.
    async fn membership_history(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> StoreResult<Vec<(i64, String)>>;
    /// Users joined to at least one room the user is joined to (the user included).
    async fn users_sharing_rooms(&self, user_id: &str) -> StoreResult<Vec<String>>;
    /// Current joined (or `membership`) members of a room.
    async fn members(
        &self,
        room_id: &str,
        membership: Option<&str>,
    ) -> StoreResult<Vec<(String, String)>>;

    /// Events of a room between positions, ordered by the direction, at most `limit`.
    /// Forward: `(from, to]`; backward: `(to, from]` newest first.
    async fn room_events(
        &self,
        room_id: &str,
        from: i64,
        to: i64,
        dir: Direction,
        limit: i64,
        filter: &EventFilter,
    ) -> StoreResult<Vec<EventRow>>;
    /// Events of a room between two points of the topological order, `(depth, stream
    /// position)`: forward `(from, to]` oldest first; backward `(to, from]` newest first.
    async fn room_events_topological(
        &self,
        room_id: &str,
        from: (i64, i64),
        to: (i64, i64),
        dir: Direction,
        limit: i64,
        filter: &EventFilter,
    ) -> StoreResult<Vec<EventRow>>;
    /// Depth of the room's newest event (in stream order) at or before `stream_pos`.
    async fn depth_at(&self, room_id: &str, stream_pos: i64) -> StoreResult<Option<i64>>;
    /// For each room, its newest `limit` events at or below `upto` passing `filter` (newest
    /// first) — one query per 100 rooms, each room read through its index.
    async fn latest_events(
        &self,
        room_ids: &[String],
        upto: i64,
        limit: i64,
        filter: &EventFilter,
    ) -> StoreResult<Vec<EventRow>>;
    /// `m.room.history_visibility` settings of rooms: `(room id, position, setting)`, oldest first.
    async fn history_visibility_changes(
        &self,
        room_ids: &[String],
    ) -> StoreResult<Vec<(String, i64, String)>>;
    /// Rooms among `room_ids` with events in `(since, upto]`.
    async fn rooms_with_events(
        &self,
        room_ids: &[String],
        since: i64,
        upto: i64,
    ) -> StoreResult<Vec<String>>;
    /// State events of a room with position in `(since, upto]`, oldest first.
    async fn state_events_between(
        &self,
        room_id: &str,
        since: i64,
        upto: i64,
    ) -> StoreResult<Vec<EventRow>>;
    /// Events relating to `event_id`, by position, newest first unless forward.
    async fn relations(
        &self,
        room_id: &str,
        event_id: &str,
        rel_type: Option<&str>,
        event_type: Option<&str>,
        from: i64,
        to: i64,
        dir: Direction,
        limit: i64,
    ) -> StoreResult<Vec<EventRow>>;

    async fn set_alias(&self, alias: &str, room_id: &str, creator: &str) -> StoreResult<()>;
    async fn get_alias(&self, alias: &str) -> StoreResult<Option<(String, String)>>;
    async fn delete_alias(&self, alias: &str) -> StoreResult<bool>;
    async fn room_aliases(&self, room_id: &str) -> StoreResult<Vec<String>>;

    async fn forget_room(&self, user_id: &str, room_id: &str) -> StoreResult<()>;
    async fn unforget_room(&self, user_id: &str, room_id: &str) -> StoreResult<()>;
}

/// A remote server's signing key, as verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteKeyRow {
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub valid_until_ts: i64,
    pub expired_ts: Option<i64>,
}

/// Other servers' signing keys.
#[async_trait]
pub trait RemoteKeyStore: Send + Sync {
    async fn remote_keys(&self, server_name: &str) -> StoreResult<Vec<RemoteKeyRow>>;
    /// Saves keys fetched at `now` and the key document that listed them (it replaces the
    /// one before): a key seen again gets the newer validity; a retired key stays retired.
    async fn save_remote_keys(
        &self,
        server_name: &str,
        keys: &[RemoteKeyRow],
        document: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// The server's latest key document, as it signed it.
    async fn key_document(&self, server_name: &str) -> StoreResult<Option<String>>;
}

/// An EDU waiting in the outbox.
#[derive(Clone, Debug)]
pub struct QueuedEdu {
    pub id: i64,
    pub kind: String,
    /// The content as JSON.
    pub content: String,
    /// When it was queued (0: before this was recorded).
    pub queued_ts: i64,
}

/// Federation bookkeeping: transactions received.
#[async_trait]
pub trait FederationStore: Send + Sync {
    /// Our answer to a transaction `origin` sent before, if any.
    async fn inbound_txn(&self, origin: &str, txn_id: &str) -> StoreResult<Option<String>>;
    /// Records our answer to a transaction (a repeat keeps the first answer).
    async fn save_inbound_txn(
        &self,
        origin: &str,
        txn_id: &str,
        response: &str,
        now: i64,
    ) -> StoreResult<()>;
    /// The oldest events waiting for `destination`: `(position, event id)`.
    async fn outbox(&self, destination: &str, limit: i64) -> StoreResult<Vec<(i64, String)>>;
    /// `destination` has the events at these positions.
    async fn outbox_sent(&self, destination: &str, positions: &[i64]) -> StoreResult<()>;
    /// Destinations with events or EDUs waiting.
    async fn outbox_destinations(&self) -> StoreResult<Vec<String>>;
    /// Queues EDUs: `(destination, EDU type, content)`, queued at `now_ms`.
    async fn queue_edus(&self, edus: &[(String, String, String)], now_ms: i64) -> StoreResult<()>;
    /// The oldest EDUs waiting for `destination`.
    async fn edu_outbox(&self, destination: &str, limit: i64) -> StoreResult<Vec<QueuedEdu>>;
    /// `destination` has the EDUs with these ids.
    async fn edu_outbox_sent(&self, destination: &str, ids: &[i64]) -> StoreResult<()>;
}

/// Why an event is known but not part of the room's timeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// Known without the state before it (an invite's room, an auth event of another event).
    Outlier,
    /// Failed the authorization rules (against its auth events or the state before it).
    Rejected,
    /// Passed those, but not against the room's current state: kept, never shown.
    SoftFailed,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Outlier => "outlier",
            Self::Rejected => "rejected",
            Self::SoftFailed => "soft_failed",
        }
    }

    pub fn parse(s: &str) -> StoreResult<Self> {
        match s {
            "outlier" => Ok(Self::Outlier),
            "rejected" => Ok(Self::Rejected),
            "soft_failed" => Ok(Self::SoftFailed),
            other => Err(StoreError::Corrupt(format!("unknown event status {other}"))),
        }
    }
}

/// An event stored outside the timeline.
pub struct OutsideEvent<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub depth: i64,
    pub json: &'a str,
    pub prev_events: &'a [String],
    pub auth_events: &'a [String],
    pub status: EventStatus,
    pub reason: Option<&'a str>,
    pub received_ts: i64,
}

/// An event of a room from another server placed behind the room's known history: the state
/// given at a join, or history fetched by backfill.
pub struct ImportedEvent<'a> {
    /// Below every position in use: never shown by sync as new.
    pub stream_pos: i64,
    pub event_id: &'a str,
    pub sender: &'a str,
    pub event_type: &'a str,
    /// `Some` for state events (all of a join's state).
    pub state_key: Option<&'a str>,
    pub membership: Option<&'a str>,
    pub depth: i64,
    pub origin_server_ts: i64,
    pub json: &'a str,
    pub prev_events: &'a [String],
    pub auth_events: &'a [String],
    /// `(event id, rel_type, key)` of `m.relates_to` (or a reply's `m.in_reply_to`).
    pub relates_to: Option<(&'a str, &'a str, Option<&'a str>)>,
}

/// The room state a resident server gave us when we joined its room.
pub struct ImportedRoom<'a> {
    pub room_id: &'a str,
    pub version: &'a str,
    pub creator: &'a str,
    pub now: i64,
    pub state: &'a [ImportedEvent<'a>],
    /// The state as a full snapshot (the state before our join).
    pub group: &'a NewStateGroup,
    /// Auth chain events that are not part of the state.
    pub outliers: &'a [OutsideEvent<'a>],
}

/// A PDU wherever it is stored: in the timeline (`status` None) or outside it.
#[derive(Clone, Debug)]
pub struct StoredPdu {
    pub event_id: String,
    pub room_id: String,
    pub depth: i64,
    pub json: String,
    pub status: Option<EventStatus>,
    pub reason: Option<String>,
}

/// The room's event graph: its edges walked in SQL (backfill, missing events, auth chains) and
/// the events known outside the timeline.
#[async_trait]
pub trait GraphStore: Send + Sync {
    /// Stores events outside the timeline with their edges; an event already known (in the
    /// timeline or outside it) keeps its place.
    async fn store_outside_timeline(&self, events: &[OutsideEvent<'_>]) -> StoreResult<()>;
    /// PDUs by id, from the timeline and from outside it.
    async fn pdus(&self, event_ids: &[String]) -> StoreResult<Vec<StoredPdu>>;
    /// Every event reachable from `event_ids` through auth edges (those events excluded).
    async fn auth_chain(&self, event_ids: &[String]) -> StoreResult<Vec<String>>;
    /// Timeline events of the room before `from`, walking prev edges backwards, newest
    /// (topologically) first: the walk does not pass `stop` events nor go below `min_depth`,
    /// and looks at most `limit` levels of depth back. `include_from` adds the `from` events
    /// themselves (`/backfill` does, `/get_missing_events` does not).
    async fn walk_back(
        &self,
        room_id: &str,
        from: &[String],
        stop: &[String],
        min_depth: i64,
        limit: i64,
        include_from: bool,
    ) -> StoreResult<Vec<StoredPdu>>;
    /// Prev events named in the room's timeline that this server does not have (nor holds as
    /// rejected): where the known history ends and backfill continues. Each with the depth of
    /// the deepest timeline event naming it (where the gap is), deepest first.
    async fn backward_extremities(&self, room_id: &str) -> StoreResult<Vec<(String, i64)>>;
    /// Edges of an event: `(prev events, auth events)`, as stored.
    async fn edges(&self, event_id: &str) -> StoreResult<(Vec<String>, Vec<String>)>;
    /// Creates a room joined over federation with the state its resident server gave, in one
    /// transaction; the join itself is written afterwards like any event.
    async fn import_room(&self, room: &ImportedRoom<'_>) -> StoreResult<()>;
    /// Stores history fetched from other servers (backfill) in the room's timeline with
    /// state group `state_group`, in one transaction; events known outside the timeline (auth
    /// chain outliers) move into it, events already in it stay as they are.
    async fn insert_history(
        &self,
        room_id: &str,
        events: &[ImportedEvent<'_>],
        state_group: i64,
    ) -> StoreResult<()>;
    /// The state group of the room's topologically first timeline event: the earliest state
    /// this server knows of the room.
    async fn earliest_state_group(&self, room_id: &str) -> StoreResult<Option<i64>>;
    /// The lowest stream position in use (0 if none is below 0): backfilled history takes
    /// positions below it, so it never shows up in sync as new.
    async fn min_stream_pos(&self) -> StoreResult<i64>;
    /// Records a local user's membership in a room this server does not have (an invite
    /// from another server, its rejection).
    async fn insert_remote_membership(&self, m: &RemoteMembership) -> StoreResult<()>;
    /// The user's latest membership of that kind in the room.
    async fn remote_membership(
        &self,
        user_id: &str,
        room_id: &str,
    ) -> StoreResult<Option<RemoteMembership>>;
}

/// A local user's membership in a room only another server has.
#[derive(Clone, Debug)]
pub struct RemoteMembership {
    pub stream_pos: i64,
    pub user_id: String,
    pub room_id: String,
    pub membership: String,
    pub event_id: String,
    pub sender: String,
    pub room_version: String,
    /// The membership event (for an invite: signed by both servers).
    pub json: String,
    /// Stripped state events (a JSON array) shown with an invite.
    pub invite_state: String,
}

pub struct LoadedRoom {
    pub version: String,
    pub state: Vec<EventRow>,
    pub state_types: Vec<(String, String)>,
    pub extremities: Vec<String>,
    pub max_depth: i64,
    pub state_group: i64,
    /// Length of the delta chain behind `state_group`.
    pub chain_len: i64,
}
