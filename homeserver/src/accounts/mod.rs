//! Accounts and sessions: password hashing (argon2id, off the async threads), registration
//! (closed, single-use registration tokens, or open for test set-ups), login, access and
//! refresh tokens (random, stored as SHA-256 hashes), devices, user-interactive auth.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use rand::{Rng, RngCore, distributions::Alphanumeric};
use ruma::{
    OwnedDeviceId, OwnedServerName, OwnedUserId, UserId,
    api::client::uiaa::{AuthData, AuthFlow, AuthType, UiaaInfo},
};
use sha2::{Digest, Sha256};

pub mod hashing;
pub mod throttle;

use hashing::{PasswordHashing, check_new_password};
use throttle::LoginThrottle;

use crate::{
    e2ee::device_lists::DeviceLists,
    error::{Error, Result},
    rooms::create::now_ms,
    store::{AccountStore, NewSession, SessionStore, StoreError},
};

/// How often a device's last-seen time and address are written.
const LAST_SEEN_INTERVAL_MS: i64 = 5 * 60 * 1000;

#[derive(Clone)]
struct CachedSession {
    session: Session,
    expires_ts: Option<i64>,
    /// When last-seen was last written (ms); 0: not yet by this process.
    last_seen: i64,
}

/// An authenticated request's identity.
/// Where a request came from, remembered as the device's last-seen place.
#[derive(Clone, Copy, Debug, Default)]
pub struct SeenFrom<'a> {
    pub ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
}

#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: OwnedDeviceId,
    pub is_admin: bool,
    pub token_hash: String,
}

pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

pub struct Accounts {
    server_name: OwnedServerName,
    /// Localparts of system accounts nobody may register.
    reserved: Vec<String>,
    accounts: Arc<dyn AccountStore>,
    sessions: Arc<dyn SessionStore>,
    /// Deleting devices is a device-list change.
    device_lists: Arc<DeviceLists>,
    /// The process-wide password hashing.
    hashing: Arc<PasswordHashing>,
    /// Slows down guessing one account's password.
    throttle: LoginThrottle,
    refresh_lifetime: Duration,
    /// token hash → (session, expiry, last-seen write); cleared on logout and device deletion.
    token_cache: Mutex<HashMap<String, CachedSession>>,
    /// Bumped whenever tokens are revoked, so a lookup that raced a revocation is not cached.
    revocations: std::sync::atomic::AtomicU64,
    /// A hash to verify against when the account does not exist (constant-time login failure).
    dummy_hash: tokio::sync::OnceCell<String>,
    /// UIA sessions: id → (user, completed stages, created).
    uia: Mutex<HashMap<String, (OwnedUserId, Instant)>>,
}

/// How long an OpenID token is valid (Synapse and the spec's example use an hour).
const OPENID_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

pub fn hash_token(token: &str) -> String {
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The id a registration token is stored under: URL-safe base64 of its SHA-256, so the
/// database does not hold usable onboarding codes and the id can name the token in a path.
pub fn registration_token_id(token: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()))
}

/// The start of a registration token shown in the org admin's list: four characters of a
/// token of 16 or more, two of a shorter one — never enough to use it.
pub fn registration_token_hint(token: &str) -> String {
    let n = if token.len() >= 16 { 4 } else { 2 };
    token.chars().take(n).collect()
}

pub fn random_string(n: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

fn new_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

impl Accounts {
    pub fn new(
        server_name: OwnedServerName,
        accounts: Arc<dyn AccountStore>,
        sessions: Arc<dyn SessionStore>,
        device_lists: Arc<DeviceLists>,
        (hashing, throttle): (Arc<PasswordHashing>, LoginThrottle),
        refresh_lifetime: Duration,
        reserved: Vec<String>,
    ) -> Self {
        Self {
            device_lists,
            reserved,
            server_name,
            accounts,
            sessions,
            hashing,
            throttle,
            refresh_lifetime,
            revocations: Default::default(),
            dummy_hash: tokio::sync::OnceCell::new(),
            token_cache: Mutex::default(),
            uia: Mutex::default(),
        }
    }

    /// A hash of a password someone sets (1 to 512 bytes).
    pub async fn hash_password(&self, password: &str) -> Result<String> {
        check_new_password(password)?;
        self.hashing.hash(password).await
    }

    /// Parses a localpart or full user id into a user id of this server.
    pub fn user_id(&self, name: &str) -> Result<OwnedUserId> {
        let full = if name.starts_with('@') {
            name.to_owned()
        } else {
            format!("@{}:{}", name.to_lowercase(), self.server_name)
        };
        let id = UserId::parse(full).map_err(|e| Error::InvalidUsername(e.to_string()))?;
        if id.server_name() != self.server_name {
            return Err(Error::forbidden("the user is not on this server"));
        }
        Ok(id)
    }

    /// A new account. `localpart` must satisfy the spec's user id grammar (lower-case).
    /// The user id a new account with this localpart would get, if the localpart is allowed.
    pub fn new_user_id(&self, localpart: &str) -> Result<OwnedUserId> {
        if localpart.is_empty()
            || !localpart
                .chars()
                .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            return Err(Error::InvalidUsername(
                "user names may contain only a-z, 0-9, and ._=-/+".into(),
            ));
        }
        let user_id = UserId::parse(format!("@{localpart}:{}", self.server_name))
            .map_err(|e| Error::InvalidUsername(e.to_string()))?;
        if user_id.as_str().len() > 255 {
            return Err(Error::InvalidUsername("user id too long".into()));
        }
        Ok(user_id)
    }

    pub async fn create_user(
        &self,
        localpart: &str,
        password: Option<&str>,
        is_admin: bool,
    ) -> Result<OwnedUserId> {
        if self.reserved.iter().any(|r| r == localpart) {
            // System accounts (server notices) are the server's own.
            return Err(Error::UserInUse);
        }
        self.create_account(localpart, password, is_admin).await
    }

    /// Creates a system account with a reserved localpart, without a password.
    pub async fn create_system_user(&self, localpart: &str) -> Result<OwnedUserId> {
        self.create_account(localpart, None, false).await
    }

    async fn create_account(
        &self,
        localpart: &str,
        password: Option<&str>,
        is_admin: bool,
    ) -> Result<OwnedUserId> {
        let user_id = self.new_user_id(localpart)?;
        let hash = match password {
            Some(p) => Some(self.hash_password(p).await?),
            None => None,
        };
        self.accounts
            .create_user(user_id.as_str(), hash.as_deref(), is_admin, now_ms())
            .await
            .map_err(|e| match e {
                StoreError::Conflict => Error::UserInUse,
                e => e.into(),
            })?;
        Ok(user_id)
    }

    pub async fn username_available(&self, localpart: &str) -> Result<bool> {
        if self.reserved.iter().any(|r| r == localpart) {
            return Ok(false);
        }
        let user_id = self.user_id(localpart)?;
        Ok(self.accounts.get_user(user_id.as_str()).await?.is_none())
    }

    pub async fn user_exists(&self, user_id: &UserId) -> Result<bool> {
        Ok(self
            .accounts
            .get_user(user_id.as_str())
            .await?
            .is_some_and(|u| !u.deactivated))
    }

    pub async fn registration_token_valid(&self, token: &str) -> Result<bool> {
        Ok(self
            .accounts
            .get_registration_token(&registration_token_id(token))
            .await?
            .is_some_and(|t| {
                t.uses_allowed.is_none_or(|n| t.completed < n)
                    && t.expiry_ts.is_none_or(|e| e > now_ms())
            }))
    }

    pub async fn consume_registration_token(&self, token: &str) -> Result<bool> {
        Ok(self
            .accounts
            .consume_registration_token(&registration_token_id(token), now_ms())
            .await?)
    }

    pub async fn create_registration_token(
        &self,
        token: Option<String>,
        uses_allowed: Option<i64>,
        expiry_ts: Option<i64>,
    ) -> Result<String> {
        let token = token.unwrap_or_else(|| random_string(16));
        // Long enough not to be guessed through the open validity endpoint.
        if token.len() < 8
            || token.len() > 64
            || !token
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._~-".contains(c))
        {
            return Err(Error::invalid_param(
                "registration tokens use [A-Za-z0-9._~-], 8 to 64 characters",
            ));
        }
        self.accounts
            .create_registration_token(
                &registration_token_id(&token),
                &registration_token_hint(&token),
                uses_allowed,
                expiry_ts,
                now_ms(),
            )
            .await
            .map_err(|e| match e {
                StoreError::Conflict => Error::invalid_param("token exists"),
                e => e.into(),
            })?;
        Ok(token)
    }

    /// Revokes a registration token, named by itself or by its id.
    pub async fn revoke_registration_token(&self, token_or_id: &str) -> Result<bool> {
        if self.accounts.delete_registration_token(token_or_id).await? {
            return Ok(true);
        }
        Ok(self
            .accounts
            .delete_registration_token(&registration_token_id(token_or_id))
            .await?)
    }

    /// Checks a user's password. Unknown user and wrong password are the same error. After
    /// repeated wrong passwords the account is throttled (429 with `retry_after_ms`), whatever
    /// the endpoint.
    pub async fn check_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        self.throttle
            .attempt(user_id.as_str(), Instant::now())
            .map_err(|retry_after_ms| Error::LimitExceeded { retry_after_ms })?;
        let result = self.verify_user_password(user_id, password).await;
        match &result {
            Ok(()) => self.throttle.succeeded(user_id.as_str()),
            // A wrong password stays counted; other errors checked nothing.
            Err(Error::WrongCredentials | Error::UserDeactivated) => {}
            Err(_) => self.throttle.forget(user_id.as_str()),
        }
        result
    }

    async fn verify_user_password(&self, user_id: &UserId, password: &str) -> Result<()> {
        let user = self.accounts.get_user(user_id.as_str()).await?;
        let Some(hash) = user.as_ref().and_then(|u| u.password_hash.clone()) else {
            // Unknown users (and users without a password) cost a hash too, so response times
            // do not tell which accounts exist.
            let dummy = self
                .dummy_hash
                .get_or_try_init(|| self.hashing.hash("no account has this password"))
                .await?;
            self.hashing.verify(dummy, password).await?;
            return Err(if user.is_some_and(|u| u.deactivated) {
                Error::UserDeactivated
            } else {
                Error::WrongCredentials
            });
        };
        if !self.hashing.verify(&hash, password).await? {
            return Err(Error::WrongCredentials);
        }
        Ok(())
    }

    /// A new session for a device (created or reused).
    pub async fn new_session(
        &self,
        user_id: &UserId,
        device_id: Option<OwnedDeviceId>,
        display_name: Option<&str>,
        refresh: bool,
        ip: Option<&str>,
    ) -> Result<(OwnedDeviceId, Tokens)> {
        let device_id =
            device_id.unwrap_or_else(|| OwnedDeviceId::from(random_string(10).to_uppercase()));
        let access_token = new_token("tima");
        let refresh_token = refresh.then(|| new_token("timr"));
        let expires_in = refresh.then_some(self.refresh_lifetime);
        let now = now_ms();
        let replaced = self
            .sessions
            .create_session(NewSession {
                user_id: user_id.as_str(),
                device_id: device_id.as_str(),
                display_name,
                token_hash: &hash_token(&access_token),
                refresh_hash: refresh_token.as_deref().map(hash_token).as_deref(),
                expires_ts: expires_in.map(|d| now + d.as_millis() as i64),
                ip,
                now,
            })
            .await?;
        self.forget_tokens(&replaced);
        Ok((
            device_id,
            Tokens {
                access_token,
                refresh_token,
                expires_in,
            },
        ))
    }

    /// An OpenID token for `user_id`, valid for an hour, to prove the user's identity to a
    /// third party (the VZD-FHIR-Directory's `/tim-authenticate`, D-AUTH-01).
    pub async fn request_openid_token(&self, user_id: &UserId) -> Result<(String, Duration)> {
        let token = new_token("timo");
        let now = now_ms();
        self.sessions
            .create_openid_token(
                &hash_token(&token),
                user_id.as_str(),
                now + OPENID_TOKEN_LIFETIME.as_millis() as i64,
                now,
            )
            .await?;
        Ok((token, OPENID_TOKEN_LIFETIME))
    }

    /// The user an OpenID token was issued to (`/_matrix/federation/v1/openid/userinfo`);
    /// an unknown or expired token is `M_UNKNOWN_TOKEN`.
    pub async fn openid_user(&self, token: &str) -> Result<OwnedUserId> {
        let user = self
            .sessions
            .openid_token_user(&hash_token(token), now_ms())
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        OwnedUserId::try_from(user).map_err(Error::internal)
    }

    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens> {
        let access_token = new_token("tima");
        let new_refresh = new_token("timr");
        let now = now_ms();
        let (old, _) = self
            .sessions
            .refresh(
                &hash_token(refresh_token),
                &hash_token(&access_token),
                &hash_token(&new_refresh),
                Some(now + self.refresh_lifetime.as_millis() as i64),
                now,
            )
            .await?
            .ok_or(Error::UnknownToken { soft_logout: false })?;
        self.forget_tokens(&old);
        Ok(Tokens {
            access_token,
            refresh_token: Some(new_refresh),
            expires_in: Some(self.refresh_lifetime),
        })
    }

    /// The session behind an access token. `client` (IP address, user agent) is recorded as
    /// where the device was last seen (at most every five minutes per device).
    pub async fn authenticate(&self, token: &str, client: SeenFrom<'_>) -> Result<Session> {
        let hash = hash_token(token);
        let cached = self
            .token_cache
            .lock()
            .expect("token cache")
            .get(&hash)
            .cloned();
        let CachedSession {
            session,
            expires_ts: expires,
            last_seen,
        } = match cached {
            Some(c) => c,
            None => self.load_session(&hash).await?,
        };
        let now = now_ms();
        if expires.is_some_and(|e| e <= now) {
            return Err(Error::UnknownToken { soft_logout: true });
        }
        if now - last_seen > LAST_SEEN_INTERVAL_MS {
            if let Some(entry) = self
                .token_cache
                .lock()
                .expect("token cache")
                .get_mut(&session.token_hash)
            {
                entry.last_seen = now;
            }
            // Off the request path: a lost last-seen update costs nothing.
            let (sessions, user, device, ip, agent) = (
                self.sessions.clone(),
                session.user_id.to_string(),
                session.device_id.to_string(),
                client.ip.map(str::to_owned),
                client
                    .user_agent
                    .map(|a| a.chars().take(512).collect::<String>()),
            );
            tokio::spawn(async move {
                if let Err(e) = sessions
                    .touch_device(&user, &device, ip.as_deref(), agent.as_deref(), now)
                    .await
                {
                    tracing::debug!(error = %e, "last-seen update failed");
                }
            });
        }
        Ok(session)
    }

    /// A session from the database, cached unless a revocation happened while it was read.
    async fn load_session(&self, hash: &str) -> Result<CachedSession> {
        use std::sync::atomic::Ordering;
        loop {
            let generation = self.revocations.load(Ordering::SeqCst);
            let row = self
                .sessions
                .lookup_token(hash)
                .await?
                .ok_or(Error::UnknownToken { soft_logout: false })?;
            let user = self
                .accounts
                .get_user(&row.user_id)
                .await?
                .ok_or(Error::UnknownToken { soft_logout: false })?;
            if user.deactivated {
                return Err(Error::UnknownToken { soft_logout: false });
            }
            if row.unconfirmed {
                // First use of a refreshed session: the refresh token it came from expires.
                self.sessions.confirm_refresh(hash).await?;
            }
            let session = Session {
                user_id: UserId::parse(&row.user_id).map_err(Error::internal)?,
                device_id: row.device_id.into(),
                is_admin: user.is_admin,
                token_hash: hash.to_owned(),
            };
            let entry = CachedSession {
                session,
                expires_ts: row.expires_ts,
                last_seen: 0,
            };
            let mut cache = self.token_cache.lock().expect("token cache");
            if self.revocations.load(Ordering::SeqCst) != generation {
                // Revoked meanwhile, perhaps this very token: read it again.
                continue;
            }
            if cache.len() > 100_000 {
                cache.clear();
            }
            cache.insert(hash.to_owned(), entry.clone());
            return Ok(entry);
        }
    }

    fn forget_tokens(&self, hashes: &[String]) {
        self.revocations
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut cache = self.token_cache.lock().expect("token cache");
        for h in hashes {
            cache.remove(h);
        }
    }

    pub async fn logout(&self, session: &Session) -> Result<()> {
        let removed = self
            .delete_device_rows(&session.user_id, &[session.device_id.to_string()])
            .await?;
        self.forget_tokens(&removed);
        self.forget_tokens(std::slice::from_ref(&session.token_hash));
        Ok(())
    }

    pub async fn logout_all(&self, user_id: &UserId) -> Result<()> {
        let sessions = &self.sessions;
        let removed = self
            .device_lists
            .change(user_id, |pos| {
                sessions.delete_all_devices(user_id.as_str(), None, pos)
            })
            .await?;
        self.forget_tokens(&removed);
        Ok(())
    }

    /// Renames a device; false if there is no such device. Others see the name in the
    /// device's keys, so it is a device-list change.
    pub async fn rename_device(
        &self,
        user_id: &UserId,
        device: &str,
        name: Option<&str>,
    ) -> Result<bool> {
        let found = self
            .sessions
            .rename_device(user_id.as_str(), device, name)
            .await?;
        if found {
            self.device_lists.record(user_id).await?;
        }
        Ok(found)
    }

    pub async fn delete_devices(&self, user_id: &UserId, devices: &[String]) -> Result<()> {
        let removed = self.delete_device_rows(user_id, devices).await?;
        self.forget_tokens(&removed);
        Ok(())
    }

    /// Deletes devices with their tokens, keys and to-device inboxes: a device-list change.
    async fn delete_device_rows(
        &self,
        user_id: &UserId,
        devices: &[String],
    ) -> Result<Vec<String>> {
        let sessions = &self.sessions;
        self.device_lists
            .change(user_id, |pos| {
                sessions.delete_devices(user_id.as_str(), devices, pos)
            })
            .await
    }

    pub async fn change_password(
        &self,
        session: &Session,
        new_password: &str,
        logout_devices: bool,
    ) -> Result<()> {
        let hash = self.hash_password(new_password).await?;
        self.accounts
            .set_password_hash(session.user_id.as_str(), &hash)
            .await?;
        if logout_devices {
            let sessions = &self.sessions;
            let removed = self
                .device_lists
                .change(&session.user_id, |pos| {
                    sessions.delete_all_devices(
                        session.user_id.as_str(),
                        Some(session.device_id.as_str()),
                        pos,
                    )
                })
                .await?;
            self.forget_tokens(&removed);
        }
        Ok(())
    }

    pub async fn deactivate(&self, user_id: &UserId) -> Result<()> {
        let accounts = &self.accounts;
        let removed = self
            .device_lists
            .change(user_id, |pos| accounts.deactivate(user_id.as_str(), pos))
            .await?;
        self.forget_tokens(&removed);
        Ok(())
    }

    pub fn sessions(&self) -> &dyn SessionStore {
        self.sessions.as_ref()
    }

    /// User-interactive auth with `m.login.password` for a sensitive action by `user`.
    /// Returns Ok when `auth` completes the password stage, else the 401 challenge.
    pub async fn uia_password(&self, user: &UserId, auth: Option<&AuthData>) -> Result<()> {
        let challenge = |session: String, error: Option<Error>| {
            let mut info = UiaaInfo::new(vec![AuthFlow::new(vec![AuthType::Password])]);
            info.session = Some(session);
            if let Some(err) = error
                && let Ok(e) = crate::api::error::to_matrix(err)
                && let ruma::api::error::ErrorBody::Standard(body) = e.body
            {
                info.auth_error = Some(Box::new(body));
            }
            Error::Uiaa(Box::new(info))
        };
        let new_session = || {
            let id = random_string(24);
            let mut uia = self.uia.lock().expect("uia lock");
            uia.retain(|_, (_, t)| t.elapsed() < Duration::from_secs(600));
            uia.insert(id.clone(), (user.to_owned(), Instant::now()));
            id
        };
        let Some(auth) = auth else {
            return Err(challenge(new_session(), None));
        };
        let AuthData::Password(p) = auth else {
            return Err(challenge(
                auth.session()
                    .map(str::to_owned)
                    .unwrap_or_else(new_session),
                None,
            ));
        };
        let claimed = match &p.identifier {
            ruma::api::client::uiaa::UserIdentifier::Matrix(m) => self.user_id(&m.user)?,
            _ => return Err(Error::bad_json("only m.id.user identifiers are supported")),
        };
        let session = p.session.clone().unwrap_or_else(new_session);
        if claimed != user {
            return Err(challenge(
                session,
                Some(Error::forbidden("the identifier is not the logged-in user")),
            ));
        }
        match self.check_password(user, &p.password).await {
            Ok(()) => {
                self.uia.lock().expect("uia lock").remove(&session);
                Ok(())
            }
            Err(Error::WrongCredentials) => Err(challenge(
                session,
                Some(Error::forbidden("invalid password")),
            )),
            Err(e) => Err(e),
        }
    }
}
