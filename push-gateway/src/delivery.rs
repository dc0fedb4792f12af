//! One Web Push delivery (RFC 8030): the encrypted payload POSTed to the subscription's push
//! service endpoint with VAPID, TTL, urgency and a topic that collapses pushes per room; the
//! answer classified for the caller (delivered, subscription gone, retry later, failed).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use sha2::Digest;

use crate::webpush::{Vapid, WebPushError, encrypt};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A browser's push subscription (`PushSubscription.toJSON()`).
#[derive(Clone, Debug)]
pub struct Subscription {
    pub endpoint: String,
    /// The browser's P-256 public key, uncompressed.
    pub p256dh: Vec<u8>,
    /// The 16-byte authentication secret.
    pub auth: Vec<u8>,
}

/// How urgently the push service should deliver (RFC 8030 section 5.3).
#[derive(Clone, Copy, Debug)]
pub enum Urgency {
    Normal,
    High,
}

/// One push to send.
pub struct Push<'a> {
    pub subscription: &'a Subscription,
    pub payload: &'a [u8],
    /// Seconds the push service may hold the message for an offline browser.
    pub ttl: u32,
    pub urgency: Urgency,
    /// Pushes with the same topic replace each other while undelivered (e.g. per room).
    pub topic: Option<&'a str>,
}

/// What became of a push.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    Delivered,
    /// The subscription no longer exists (404/410): the pusher should go.
    Gone,
    /// The push service is in trouble (5xx, or no answer): try again later, after
    /// `Retry-After` if the service said so.
    Retry(Option<Duration>),
    /// Too many requests (429) for this subscription or sender: this push waits, at least
    /// `Retry-After`; the service itself is fine.
    Throttled(Option<Duration>),
    /// Not sent: the endpoint's host resolves to an address the gateway must not call.
    Blocked,
    /// Refused for good (another 4xx, or a subscription we cannot encrypt for).
    Failed(String),
}

/// A `Topic` header value: at most 32 URL-safe base64 characters (a digest of `key`).
pub fn topic(key: &str) -> String {
    let digest = sha2::Sha256::digest(key.as_bytes());
    B64.encode(&digest[..24])
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Encrypts and sends one push.
pub async fn send(http: &reqwest::Client, vapid: &Vapid, push: &Push<'_>) -> Outcome {
    let sub = push.subscription;
    let body = match encrypt(push.payload, &sub.p256dh, &sub.auth) {
        Ok(b) => b,
        Err(e @ WebPushError::TooLarge) => return Outcome::Failed(e.to_string()),
        Err(e) => return Outcome::Failed(format!("subscription unusable: {e}")),
    };
    let mut req = http
        .post(&sub.endpoint)
        .header("Authorization", vapid.header_for(&sub.endpoint, now()))
        .header("Content-Encoding", "aes128gcm")
        .header("Content-Type", "application/octet-stream")
        .header("TTL", push.ttl.to_string())
        .header(
            "Urgency",
            match push.urgency {
                Urgency::Normal => "normal",
                Urgency::High => "high",
            },
        )
        .body(body);
    if let Some(t) = push.topic {
        req = req.header("Topic", topic(t));
    }
    match req.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            match status {
                200..=299 => Outcome::Delivered,
                404 | 410 => Outcome::Gone,
                429 => Outcome::Throttled(retry_after),
                500..=599 => Outcome::Retry(retry_after),
                _ => Outcome::Failed(format!("push service answered {status}")),
            }
        }
        Err(e) if crate::guard::is_address_refusal(&e) => Outcome::Blocked,
        Err(_) => Outcome::Retry(None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::{Router, extract::State, http::HeaderMap, routing::post};
    use p256::SecretKey;

    use super::*;
    use crate::webpush::{decrypt, public_bytes, verify_authorization};

    /// Pushes received: headers and decrypted payload.
    type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

    /// A push service double: checks VAPID, decrypts with the browser's keys, records, and
    /// answers with the scripted status.
    #[derive(Clone)]
    struct Service {
        browser: Arc<SecretKey>,
        auth: [u8; 16],
        got: Received,
        status: Arc<Mutex<u16>>,
    }

    async fn receive(
        State(s): State<Service>,
        headers: HeaderMap,
        body: axum::body::Bytes,
    ) -> (axum::http::StatusCode, [(&'static str, &'static str); 1]) {
        let auth = headers["authorization"].to_str().unwrap();
        let claims = verify_authorization(auth).expect("VAPID verifies");
        assert!(
            claims["aud"]
                .as_str()
                .unwrap()
                .starts_with("http://127.0.0.1:")
        );
        let plain = decrypt(&body, &s.browser, &s.auth).expect("payload decrypts");
        s.got.lock().unwrap().push((headers, plain));
        let status = *s.status.lock().unwrap();
        (
            axum::http::StatusCode::from_u16(status).unwrap(),
            [("Retry-After", "7")],
        )
    }

    #[tokio::test]
    async fn a_push_reaches_the_service_encrypted_and_answers_are_classified() {
        let browser = SecretKey::random(&mut rand_core::OsRng);
        let service = Service {
            browser: Arc::new(browser.clone()),
            auth: [3u8; 16],
            got: Arc::default(),
            status: Arc::new(Mutex::new(201)),
        };
        let app = Router::new()
            .route("/push/{id}", post(receive))
            .with_state(service.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let sub = Subscription {
            endpoint: format!("http://{addr}/push/abc"),
            p256dh: public_bytes(&browser.public_key()),
            auth: service.auth.to_vec(),
        };
        let vapid = Vapid::new(
            SecretKey::random(&mut rand_core::OsRng),
            "mailto:ops@example.org".into(),
        );
        let http = reqwest::Client::new();
        let payload = br#"{"room_id":"!r:example.org","event_id":"$e","unread":2}"#;
        let push = Push {
            subscription: &sub,
            payload,
            ttl: 3600,
            urgency: Urgency::High,
            topic: Some("!r:example.org"),
        };
        assert_eq!(send(&http, &vapid, &push).await, Outcome::Delivered);
        {
            let got = service.got.lock().unwrap();
            let (headers, plain) = &got[0];
            assert_eq!(plain, payload);
            assert_eq!(headers["ttl"], "3600");
            assert_eq!(headers["urgency"], "high");
            assert_eq!(headers["content-encoding"], "aes128gcm");
            assert_eq!(headers["topic"].to_str().unwrap(), topic("!r:example.org"));
            assert!(topic("!r:example.org").len() <= 32);
        }
        for (status, outcome) in [
            (410, Outcome::Gone),
            (404, Outcome::Gone),
            (429, Outcome::Throttled(Some(Duration::from_secs(7)))),
            (503, Outcome::Retry(Some(Duration::from_secs(7)))),
            (400, Outcome::Failed("push service answered 400".into())),
        ] {
            *service.status.lock().unwrap() = status;
            assert_eq!(send(&http, &vapid, &push).await, outcome, "status {status}");
        }
        // Nobody listening: try again later.
        let gone = Subscription {
            endpoint: "http://127.0.0.1:9/push".into(),
            ..sub.clone()
        };
        let push = Push {
            subscription: &gone,
            ..push
        };
        assert_eq!(send(&http, &vapid, &push).await, Outcome::Retry(None));
    }
}
