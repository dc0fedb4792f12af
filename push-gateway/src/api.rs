//! The HTTP edge: the Push Gateway API (`POST /_matrix/push/v1/notify`), the VAPID public key
//! for clients, `/health` and `/metrics`. Every error is a Matrix error (`errcode`, `error`).

use std::sync::Arc;

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use ruma::api::{IncomingRequestExt, push_gateway::send_event_notification::v1 as notify};
use serde_json::json;

use crate::Gateway;

/// How long a homeserver should wait before repeating a notification the full queue refused.
const QUEUE_FULL_RETRY_MS: u64 = 1000;

pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/_matrix/push/v1/notify",
            post(notify_handler).fallback(method_not_allowed),
        )
        .route(
            "/_tim/push/v1/vapid_public_key",
            get(vapid_public_key).fallback(method_not_allowed),
        )
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(gateway)
}

fn error(status: StatusCode, errcode: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"errcode": errcode, "error": message.into()})),
    )
        .into_response()
}

async fn notify_handler(State(gateway): State<Arc<Gateway>>, req: Request) -> Response {
    let limit = gateway.config.max_request_bytes;
    let Ok(bytes) = axum::body::to_bytes(req.into_body(), limit).await else {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            format!("the notification is larger than {limit} bytes"),
        );
    };
    let request = match parse(&bytes) {
        Ok(r) => r,
        Err((errcode, message)) => return error(StatusCode::BAD_REQUEST, errcode, message),
    };
    match gateway.notify(request.notification).await {
        Ok(rejected) => Json(json!({"rejected": rejected})).into_response(),
        Err(_) => {
            let mut resp = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({
                    "errcode": "M_LIMIT_EXCEEDED",
                    "error": "the push queue is full; repeat the notification later",
                    "retry_after_ms": QUEUE_FULL_RETRY_MS,
                })),
            )
                .into_response();
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(QUEUE_FULL_RETRY_MS.div_ceil(1000)),
            );
            resp
        }
    }
}

/// The typed notification, or the errcode and message. One parse for what homeservers send; only a body that fails it is
/// looked at again, to tell broken JSON apart and to fill in the devices' `tweaks`, which the
/// spec makes optional and Ruma's type requires.
fn parse(bytes: &[u8]) -> Result<notify::Request, (&'static str, String)> {
    let typed = |body: &[u8]| {
        let post = http::Request::post("/_matrix/push/v1/notify")
            .body(body)
            .expect("static request");
        notify::Request::try_from_http_request(post, &[])
    };
    let first = match typed(bytes) {
        Ok(r) => return Ok(r),
        Err(e) => e,
    };
    let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(bytes) else {
        return Err(("M_NOT_JSON", "the body is not JSON".into()));
    };
    let mut patched = false;
    if let Some(devices) = json
        .pointer_mut("/notification/devices")
        .and_then(serde_json::Value::as_array_mut)
    {
        for device in devices
            .iter_mut()
            .filter_map(serde_json::Value::as_object_mut)
        {
            if !device.contains_key("tweaks") {
                device.insert("tweaks".into(), json!({}));
                patched = true;
            }
        }
    }
    let result = if patched {
        typed(&serde_json::to_vec(&json).expect("JSON value"))
    } else {
        Err(first)
    };
    result.map_err(|e| {
        (
            "M_BAD_JSON",
            format!("not a Push Gateway API notification: {e}"),
        )
    })
}

async fn vapid_public_key(State(gateway): State<Arc<Gateway>>) -> Response {
    Json(json!({
        "vapid_public_key": gateway.vapid_public_key(),
        "app_ids": gateway.config.apps.keys().collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn health(State(gateway): State<Arc<Gateway>>) -> Response {
    let queued = gateway
        .metrics()
        .queued
        .load(std::sync::atomic::Ordering::Relaxed);
    Json(json!({"status": "ok", "queued": queued})).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
        .body(Body::from(gateway.metrics().render()))
        .expect("static response")
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "unknown endpoint")
}

async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "M_UNRECOGNIZED",
        "method not allowed on this endpoint",
    )
}
