//! `/notify`: one notification from a homeserver becomes one push per device. Each device is
//! checked (known app, usable Web Push subscription, allowed endpoint), its content-free payload
//! built and the pushes queued; the answer waits briefly for the first attempts so that
//! subscriptions the push service reports gone are rejected at once.

use std::time::Duration;

use base64::Engine;
use ruma::api::push_gateway::send_event_notification::v1::{
    Device, Notification, NotificationPriority,
};
use serde_json::Value;

use crate::{
    Gateway,
    config::AppConfig,
    delivery::{Subscription, Urgency},
    dispatcher::{First, Job, QueueFull},
    guard::{self, Refusal},
    payload,
};

/// The Push Gateway API's limits on device fields.
const MAX_APP_ID: usize = 64;
const MAX_PUSHKEY: usize = 512;

/// Why a device gets no push.
enum Skip {
    /// The pushkey can never work here: the homeserver should delete the pusher.
    Reject(&'static str),
    /// Not this time (policy, or nothing to push), the pusher stays.
    Drop(&'static str),
}

impl Gateway {
    /// Handles a notification; returns the rejected pushkeys, or `QueueFull`.
    pub async fn notify(&self, n: Notification) -> Result<Vec<String>, QueueFull> {
        let metrics = self.metrics();
        let mut rejected = Vec::new();
        let mut jobs = Vec::new();
        for device in &n.devices {
            match self.job_for(&n, device) {
                Ok(job) => jobs.push(job),
                Err(Skip::Reject(why)) => {
                    let app_id: String = device.app_id.chars().take(MAX_APP_ID).collect();
                    tracing::warn!(%app_id, reason = why, "pushkey rejected");
                    if !rejected.contains(&device.pushkey) {
                        rejected.push(device.pushkey.clone());
                    }
                }
                Err(Skip::Drop(why)) => {
                    tracing::debug!(reason = why, "no push for device");
                }
            }
        }
        let pushkeys: Vec<String> = jobs.iter().map(|j| j.pushkey.clone()).collect();
        let firsts = self.dispatcher.submit(jobs)?;
        metrics
            .notifications
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics
            .devices
            .fetch_add(n.devices.len() as u64, std::sync::atomic::Ordering::Relaxed);
        let wait = Duration::from_millis(self.config.delivery.answer_within_ms);
        let results = futures::future::join_all(firsts.into_iter().map(|rx| async move {
            tokio::time::timeout(wait, rx)
                .await
                .ok()
                .and_then(Result::ok)
        }))
        .await;
        for (pushkey, first) in pushkeys.into_iter().zip(results) {
            if first == Some(First::Gone) && !rejected.contains(&pushkey) {
                rejected.push(pushkey);
            }
        }
        metrics
            .rejected
            .fetch_add(rejected.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(rejected)
    }

    fn job_for(&self, n: &Notification, device: &Device) -> Result<Job, Skip> {
        if device.app_id.len() > MAX_APP_ID || device.pushkey.len() > MAX_PUSHKEY {
            return Err(Skip::Reject("app_id or pushkey too long"));
        }
        let Some(app) = self.config.apps.get(&device.app_id) else {
            return Err(Skip::Reject("unknown app_id"));
        };
        if self.dispatcher.is_gone(&device.app_id, &device.pushkey) {
            return Err(Skip::Reject(
                "the push service reported the subscription gone",
            ));
        }
        let data = &device.data.data;
        if n.event_id.is_none() && data.get("events_only") == Some(&Value::Bool(true)) {
            return Err(Skip::Drop(
                "badge-only notification and the pusher wants events only",
            ));
        }
        let (subscription, host) = subscription(device, app, self)?;
        let payload = payload::build(n, data, app.include_content)
            .map_err(|_| Skip::Reject("the pusher's default_payload does not fit into a push"))?;
        Ok(Job {
            app_id: device.app_id.clone(),
            pushkey: device.pushkey.clone(),
            event_id: n.event_id.as_ref().map(ToString::to_string),
            host,
            subscription,
            payload,
            ttl: app.ttl_secs,
            // Mentions and invites (`prio: high`) may wake a sleeping device; everything else
            // comes as normal (RFC 8030 `low` would wait for power and Wi-Fi).
            urgency: match n.prio {
                NotificationPriority::High => Urgency::High,
                _ => Urgency::Normal,
            },
            // Undelivered pushes of a room replace each other: one per room waits, not fifty.
            topic: n.room_id.as_ref().map(ToString::to_string),
        })
    }
}

/// The browser subscription in Sygnal's webpush layout: the pushkey is the `p256dh` key,
/// `data.endpoint` and `data.auth` the rest of `PushSubscription.toJSON()`.
fn subscription(
    device: &Device,
    app: &AppConfig,
    gateway: &Gateway,
) -> Result<(Subscription, String), Skip> {
    let data = &device.data.data;
    let (Some(endpoint), Some(auth)) = (
        data.get("endpoint").and_then(Value::as_str),
        data.get("auth").and_then(Value::as_str),
    ) else {
        return Err(Skip::Reject("data.endpoint or data.auth missing"));
    };
    let p256dh = decode_b64(&device.pushkey)
        .filter(|k| k.len() == 65 && p256::PublicKey::from_sec1_bytes(k).is_ok())
        .ok_or(Skip::Reject(
            "pushkey is not a P-256 public key (base64url, uncompressed)",
        ))?;
    let auth = decode_b64(auth)
        .filter(|a| a.len() == 16)
        .ok_or(Skip::Reject(
            "data.auth is not a 16-byte secret in base64url",
        ))?;
    let url = match guard::check_endpoint(endpoint, app, &gateway.config.delivery) {
        Ok(url) => url,
        Err(Refusal::Invalid(_)) => {
            return Err(Skip::Reject("data.endpoint is not a Web Push endpoint"));
        }
        Err(Refusal::Blocked(why)) => {
            gateway
                .metrics()
                .blocked
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(reason = %why, "push endpoint blocked by policy");
            return Err(Skip::Drop("endpoint blocked by policy"));
        }
    };
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    Ok((
        Subscription {
            endpoint: url.to_string(),
            p256dh,
            auth,
        },
        host,
    ))
}

/// Browsers give keys in base64url without padding; accept the standard alphabet and padding.
fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let normalised: String = s
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(normalised)
        .ok()
}
