//! The one place where domain errors become Matrix error responses (errcode, message, status).

use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use http::StatusCode;
use ruma::api::{
    OutgoingResponseExt,
    client::uiaa::UiaaResponse,
    error::{ErrorBody, ErrorKind, LimitExceededErrorData, RetryAfter, StandardErrorBody},
};

use crate::error::Error;

fn matrix_error(status: StatusCode, kind: ErrorKind, message: String) -> ruma::api::error::Error {
    ErrorBody::Standard(StandardErrorBody::new(kind, message)).into_error(status)
}

/// The HTTP status and errcode of a domain error; `None` for a user-interactive auth challenge.
fn classify(err: &Error) -> Option<(StatusCode, ErrorKind)> {
    use Error::*;
    Some(match err {
        Forbidden(_) => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
        NotFound(_) => (StatusCode::NOT_FOUND, ErrorKind::NotFound),
        BadJson(_) => (StatusCode::BAD_REQUEST, ErrorKind::BadJson),
        NotJson(_) => (StatusCode::BAD_REQUEST, ErrorKind::NotJson),
        InvalidParam(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidParam),
        MissingParam(_) => (StatusCode::BAD_REQUEST, ErrorKind::MissingParam),
        UserInUse => (StatusCode::BAD_REQUEST, ErrorKind::UserInUse),
        InvalidUsername(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidUsername),
        RoomInUse => (StatusCode::BAD_REQUEST, ErrorKind::RoomInUse),
        UnsupportedRoomVersion => (StatusCode::BAD_REQUEST, ErrorKind::UnsupportedRoomVersion),
        MissingToken => (StatusCode::UNAUTHORIZED, ErrorKind::MissingToken),
        UnknownToken { soft_logout } => (
            StatusCode::UNAUTHORIZED,
            ErrorKind::UnknownToken({
                let mut d = ruma::api::error::UnknownTokenErrorData::new();
                d.soft_logout = *soft_logout;
                d
            }),
        ),
        WrongCredentials => (StatusCode::FORBIDDEN, ErrorKind::Forbidden),
        UserDeactivated => (StatusCode::FORBIDDEN, ErrorKind::UserDeactivated),
        LimitExceeded { retry_after_ms } => (
            StatusCode::TOO_MANY_REQUESTS,
            ErrorKind::LimitExceeded({
                let mut d = LimitExceededErrorData::new();
                d.retry_after = Some(RetryAfter::Delay(std::time::Duration::from_millis(
                    *retry_after_ms,
                )));
                d
            }),
        ),
        TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorKind::TooLarge),
        Unrecognized | UnknownHost => (StatusCode::NOT_FOUND, ErrorKind::Unrecognized),
        RequestTimeout => (StatusCode::REQUEST_TIMEOUT, ErrorKind::Unknown),
        MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, ErrorKind::Unrecognized),
        InvalidRoomState(_) => (StatusCode::BAD_REQUEST, ErrorKind::InvalidRoomState),
        GuestAccessForbidden => (StatusCode::FORBIDDEN, ErrorKind::GuestAccessForbidden),
        ServerManagedAccountData(_) => (StatusCode::METHOD_NOT_ALLOWED, ErrorKind::BadJson),
        CannotOverwriteMedia => (StatusCode::CONFLICT, ErrorKind::CannotOverwriteMedia),
        NotYetUploaded => (StatusCode::GATEWAY_TIMEOUT, ErrorKind::NotYetUploaded),
        WrongRoomKeysVersion { current } => (
            StatusCode::FORBIDDEN,
            ErrorKind::WrongRoomKeysVersion(ruma::api::error::WrongRoomKeysVersionErrorData::new(
                current.clone(),
            )),
        ),
        Unknown(_) => (StatusCode::BAD_REQUEST, ErrorKind::Unknown),
        Unauthorized(_) => (StatusCode::UNAUTHORIZED, ErrorKind::Unauthorized),
        Remote(_) => (StatusCode::BAD_GATEWAY, ErrorKind::Unknown),
        IncompatibleRoomVersion(version) => (
            StatusCode::BAD_REQUEST,
            ErrorKind::IncompatibleRoomVersion(
                ruma::api::error::IncompatibleRoomVersionErrorData::new(version.clone()),
            ),
        ),
        Uiaa(_) => return None,
        Store(_) | Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown),
    })
}

/// The `errcode` a domain error is answered with (a user-interactive auth challenge: 401
/// without errcode, recorded as `M_FORBIDDEN`).
pub fn errcode(err: &Error) -> String {
    classify(err)
        .map(|(_, kind)| kind.errcode().to_string())
        .unwrap_or_else(|| "M_FORBIDDEN".into())
}

/// The errcode, HTTP status and message of a domain error.
pub fn to_matrix(
    err: Error,
) -> Result<ruma::api::error::Error, Box<ruma::api::client::uiaa::UiaaInfo>> {
    if let Error::Uiaa(info) = err {
        return Err(info);
    }
    let (status, kind) =
        classify(&err).unwrap_or((StatusCode::INTERNAL_SERVER_ERROR, ErrorKind::Unknown));
    let message = match err {
        Error::Store(e) => {
            tracing::error!(error = %e, "storage failure");
            "internal server error".into()
        }
        Error::Internal(e) => {
            tracing::error!(error = %e, "internal failure");
            "internal server error".into()
        }
        e => e.to_string(),
    };
    Ok(matrix_error(status, kind, message))
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let http = match to_matrix(self) {
            Ok(err) => err.try_into_http_response::<BytesMut>(),
            Err(info) => UiaaResponse::AuthResponse(*info).try_into_http_response::<BytesMut>(),
        };
        match http {
            Ok(resp) => resp.map(|b| axum::body::Body::from(b.freeze())),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    }
}
