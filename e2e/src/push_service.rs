//! A local Web Push service double (RFC 8030): hands out browser subscriptions (a P-256 key
//! pair and auth secret per subscription, as a browser makes them), accepts pushes at their
//! endpoints, requires what a real push service requires (`TTL`, `aes128gcm`, a VAPID token
//! whose signature verifies and whose `aud` is this service's origin), and records it; the
//! payload is decrypted with the subscription's private key when the test reads it. Scriptable: a subscription can be gone (410),
//! and the whole service can be down (503 with `Retry-After`) for a number of requests.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
};
use base64::Engine;
use p256::SecretKey;
use tim_push_gateway::webpush::{decrypt, public_bytes, verify_authorization};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// A subscription as `PushSubscription.toJSON()` gives it to the web app.
#[derive(Clone, Debug)]
pub struct BrowserSubscription {
    pub id: String,
    pub endpoint: String,
    /// base64url, uncompressed P-256 point: the pusher's `pushkey`.
    pub p256dh: String,
    /// base64url, 16 bytes: the pusher's `data.auth`.
    pub auth: String,
}

/// One push the service accepted.
#[derive(Clone, Debug)]
pub struct Received {
    pub subscription: String,
    pub payload: serde_json::Value,
    pub ttl: String,
    pub urgency: Option<String>,
    pub topic: Option<String>,
    /// The VAPID key (`k=`) that signed the request.
    pub vapid_key: String,
    pub at: Instant,
}

struct Accepted {
    subscription: String,
    body: Bytes,
    ttl: String,
    urgency: Option<String>,
    topic: Option<String>,
    vapid_key: String,
    at: Instant,
}

struct Browser {
    secret: SecretKey,
    auth: [u8; 16],
    gone: bool,
}

#[derive(Default)]
struct Inner {
    origin: String,
    browsers: Mutex<HashMap<String, Browser>>,
    /// Accepted pushes, still encrypted: like a real push service, the double does not read
    /// payloads while accepting (its CPU stays out of benchmarks); `received` decrypts them.
    accepted: Mutex<Vec<Accepted>>,
    received: Mutex<Vec<Received>>,
    /// Requests still to be answered 503 (the service is down).
    down_for: AtomicU32,
    /// Every request that reached the service, whatever the answer.
    requests: AtomicU64,
    /// VAPID tokens whose signature verified, with their claims (push services verify a
    /// sender's token once, as the sender reuses it for hours).
    tokens: Mutex<HashMap<String, serde_json::Value>>,
    arrived: tokio::sync::Notify,
}

#[derive(Clone)]
pub struct PushService {
    inner: Arc<Inner>,
    pub port: u16,
}

impl PushService {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let inner = Arc::new(Inner {
            origin: format!("http://127.0.0.1:{port}"),
            ..Inner::default()
        });
        let app = Router::new()
            .route("/push/{id}", post(receive))
            .with_state(inner.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { inner, port }
    }

    /// A new browser subscription at this service.
    pub fn subscribe(&self) -> BrowserSubscription {
        let secret = SecretKey::random(&mut rand_core::OsRng);
        let mut auth = [0u8; 16];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut auth);
        let id = B64.encode(&auth[..9]);
        let sub = BrowserSubscription {
            endpoint: format!("{}/push/{id}", self.inner.origin),
            p256dh: B64.encode(public_bytes(&secret.public_key())),
            auth: B64.encode(auth),
            id: id.clone(),
        };
        self.inner.browsers.lock().unwrap().insert(
            id,
            Browser {
                secret,
                auth,
                gone: false,
            },
        );
        sub
    }

    /// The subscription was removed (the user revoked the permission): 410 from now on.
    pub fn set_gone(&self, sub: &BrowserSubscription) {
        self.inner
            .browsers
            .lock()
            .unwrap()
            .get_mut(&sub.id)
            .unwrap()
            .gone = true;
    }

    /// The next `n` requests are answered 503 with `Retry-After: 1`.
    pub fn go_down_for(&self, n: u32) {
        self.inner.down_for.store(n, Ordering::SeqCst);
    }

    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    /// The pushes accepted so far, decrypted with their subscriptions' keys (a payload that
    /// does not decrypt to JSON fails the test here).
    pub fn received(&self) -> Vec<Received> {
        let mut received = self.inner.received.lock().unwrap();
        let fresh: Vec<Accepted> = {
            let mut accepted = self.inner.accepted.lock().unwrap();
            accepted.drain(..).collect()
        };
        let browsers = self.inner.browsers.lock().unwrap();
        for a in fresh {
            let browser = &browsers[&a.subscription];
            let plain = decrypt(&a.body, &browser.secret, &browser.auth)
                .expect("the push decrypts with the subscription's keys");
            received.push(Received {
                payload: serde_json::from_slice(&plain).expect("the payload is JSON"),
                subscription: a.subscription,
                ttl: a.ttl,
                urgency: a.urgency,
                topic: a.topic,
                vapid_key: a.vapid_key,
                at: a.at,
            });
        }
        received.clone()
    }

    /// How many pushes were accepted (without decrypting them).
    pub fn count(&self) -> usize {
        self.inner.received.lock().unwrap().len() + self.inner.accepted.lock().unwrap().len()
    }

    /// Waits until at least `n` pushes have been accepted (or `limit` passed).
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = Instant::now() + limit;
        loop {
            let arrived = self.inner.arrived.notified();
            if self.count() >= n || Instant::now() >= deadline {
                return self.received();
            }
            let _ = tokio::time::timeout_at(deadline.into(), arrived).await;
        }
    }
}

fn refuse(status: StatusCode, why: &str) -> Response {
    (status, why.to_owned()).into_response()
}

async fn receive(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let down = inner
        .down_for
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if down {
        return (StatusCode::SERVICE_UNAVAILABLE, [("Retry-After", "1")]).into_response();
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    // RFC 8030 section 5.2: TTL is required.
    let Some(ttl) = header("ttl").filter(|t| t.parse::<u32>().is_ok()) else {
        return refuse(StatusCode::BAD_REQUEST, "TTL header missing");
    };
    if header("content-encoding") != Some("aes128gcm") {
        return refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Encoding must be aes128gcm",
        );
    }
    // RFC 8292: a signed token for this service's origin, not expired.
    let Some(authorization) = header("authorization") else {
        return refuse(StatusCode::UNAUTHORIZED, "VAPID authorization missing");
    };
    let known = inner.tokens.lock().unwrap().get(authorization).cloned();
    let claims = match known {
        Some(claims) => claims,
        None => match verify_authorization(authorization) {
            Ok(claims) => {
                inner
                    .tokens
                    .lock()
                    .unwrap()
                    .insert(authorization.to_owned(), claims.clone());
                claims
            }
            Err(_) => return refuse(StatusCode::FORBIDDEN, "VAPID token does not verify"),
        },
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if claims["aud"] != inner.origin.as_str()
        || claims["exp"]
            .as_u64()
            .is_none_or(|e| e <= now || e > now + 24 * 3600)
        || claims["sub"].as_str().is_none()
    {
        return refuse(StatusCode::FORBIDDEN, "VAPID claims wrong");
    }
    let vapid_key = authorization
        .split("k=")
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    {
        let browsers = inner.browsers.lock().unwrap();
        let Some(browser) = browsers.get(&id) else {
            return refuse(StatusCode::NOT_FOUND, "no such subscription");
        };
        if browser.gone {
            return refuse(StatusCode::GONE, "subscription expired");
        }
    }
    inner.accepted.lock().unwrap().push(Accepted {
        subscription: id,
        body,
        ttl: ttl.to_owned(),
        urgency: header("urgency").map(str::to_owned),
        topic: header("topic").map(str::to_owned),
        vapid_key,
        at: Instant::now(),
    });
    inner.arrived.notify_waiters();
    StatusCode::CREATED.into_response()
}
