//! The domain error: what went wrong, in the words of the domain. `api::error` maps it to a
//! Matrix `errcode` and HTTP status in exactly one place; nothing below `api/` knows HTTP.

use ruma::api::client::uiaa::UiaaInfo;

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("bad json: {0}")]
    BadJson(String),
    #[error("not json: {0}")]
    NotJson(String),
    #[error("invalid parameter: {0}")]
    InvalidParam(String),
    #[error("missing parameter: {0}")]
    MissingParam(String),
    #[error("the user id is already taken")]
    UserInUse,
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    #[error("room alias already taken")]
    RoomInUse,
    #[error("unsupported room version")]
    UnsupportedRoomVersion,
    #[error("missing access token")]
    MissingToken,
    #[error("unknown access token")]
    UnknownToken { soft_logout: bool },
    #[error("wrong username or password")]
    WrongCredentials,
    #[error("user is deactivated")]
    UserDeactivated,
    #[error("rate limited")]
    LimitExceeded { retry_after_ms: u64 },
    #[error("request too large")]
    TooLarge,
    #[error("unknown endpoint")]
    Unrecognized,
    #[error("no homeserver is served for this host")]
    UnknownHost,
    #[error("the request did not arrive in time")]
    RequestTimeout,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("user-interactive authentication needed")]
    Uiaa(Box<UiaaInfo>),
    #[error("invalid room state: {0}")]
    InvalidRoomState(String),
    #[error("guest access forbidden")]
    GuestAccessForbidden,
    #[error("this account data type is managed by the server: {0}")]
    ServerManagedAccountData(String),
    #[error("the media has already been uploaded")]
    CannotOverwriteMedia,
    #[error("the media has not been uploaded yet")]
    NotYetUploaded,
    #[error("the backup version is not the current one ({current})")]
    WrongRoomKeysVersion { current: String },
    #[error("{0}")]
    Unknown(String),
    /// A federation request whose signature, origin or destination does not check out.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The room's version is not one the joining server supports.
    #[error("the room's version {0} is not supported by your server")]
    IncompatibleRoomVersion(ruma::RoomVersionId),
    /// Another homeserver could not be reached or gave no usable answer.
    #[error("remote server: {0}")]
    Remote(String),
    #[error("storage error: {0}")]
    Store(#[from] StoreError),
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn forbidden(msg: impl Into<String>) -> Self {
        Self::Forbidden(msg.into())
    }
    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
    pub fn bad_json(msg: impl Into<String>) -> Self {
        Self::BadJson(msg.into())
    }
    pub fn invalid_param(msg: impl Into<String>) -> Self {
        Self::InvalidParam(msg.into())
    }
    /// A key or signature that does not verify (`M_INVALID_PARAM`, as for any bad argument).
    pub fn invalid_signature(msg: impl Into<String>) -> Self {
        Self::InvalidParam(msg.into())
    }
    pub fn internal(msg: impl std::fmt::Display) -> Self {
        Self::Internal(msg.to_string())
    }
}
