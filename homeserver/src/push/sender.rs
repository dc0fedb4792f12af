//! The push sender: delivers queued pushes to the push gateways of the user's HTTP pushers
//! (Push Gateway API `POST /_matrix/push/v1/notify`). Notifications are content-free (the
//! `event_id_only` format: event and room id, unread count — no sender, type or body), retried
//! with exponential backoff, and pushers whose pushkey the gateway rejects are deleted. One task
//! per tenant, woken when pushes are queued or the next retry is due; nothing polls.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Weak},
    time::Duration,
};

use futures::StreamExt;
use ruma::{
    EventId, RoomId, SecondsSinceUnixEpoch, UInt,
    api::push_gateway::send_event_notification::v1::{
        Device, Notification, NotificationCounts, NotificationPriority, PusherData,
    },
    push::{Action, HttpPusherData, Tweak},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tim_push_gateway::guard::{self, AddressPolicy, GuardedResolver};
use tokio::sync::{Notify, Semaphore, mpsc};

use crate::{
    ephemeral::now_ms,
    error::{Error, Result},
    homeserver::Homeserver,
    store::{PushRetry, PusherRow, QueuedPush},
};

/// Attempts before a push is given up (backoff 1 s doubling up to 5 min: about an hour).
const MAX_ATTEMPTS: i64 = 16;
const MAX_BACKOFF_MS: i64 = 5 * 60_000;
const BATCH: i64 = 500;
/// Unread notifications per room the push badge counts at most (a badge shows "99+" beyond).
const BADGE_PER_ROOM: i64 = 100;

/// What happened to one push.
enum Outcome {
    Delivered,
    RetryLater,
}

/// Runs the tenant's push sender. `first_due`: when the oldest push left from before a restart
/// is due. Idle tenants hold nothing but this waiting task: the HTTP client is made on first use
/// and database connections only while delivering.
pub async fn run(hs: Weak<Homeserver>, wake: Arc<Notify>, first_due: Option<i64>) {
    let mut client: Option<reqwest::Client> = None;
    let mut next = first_due;
    loop {
        let woken = wake.notified();
        match next {
            Some(at) => {
                let wait = Duration::from_millis((at - now_ms()).max(0) as u64);
                let _ = tokio::time::timeout(wait, woken).await;
            }
            None => woken.await,
        }
        let Some(hs) = hs.upgrade() else { return };
        let client = client.get_or_insert_with(|| {
            let allow = hs.config.push.allow_private_addresses;
            reqwest::Client::builder()
                .timeout(Duration::from_secs(hs.config.push.timeout_secs))
                // A redirect could lead the POST anywhere, past the gateway checks; a proxy
                // would resolve the gateway's name itself.
                .redirect(reqwest::redirect::Policy::none())
                .no_proxy()
                // Every address is checked again when connecting (DNS may have changed since
                // the pusher was set).
                .dns_resolver(Arc::new(GuardedResolver {
                    policy: AddressPolicy {
                        allow_loopback: allow,
                        allow_private: allow,
                    },
                }))
                .build()
                .expect("http client")
        });
        next = match deliver_due(&hs, client, &wake).await {
            Ok(()) => hs.stores.push.next_push_due().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "push queue unreadable");
                Some(now_ms() + 5_000)
            }),
            Err(e) => {
                tracing::warn!(error = %e, "push queue unreadable");
                Some(now_ms() + 5_000)
            }
        };
        // Wait without keeping the tenant alive.
        drop(hs);
    }
}

/// Delivers pushes until none is due, as a pipeline: newly queued pushes are fetched while
/// others are in flight (at most `push.concurrency` gateway requests at a time), and finished
/// pushes are settled together — one transaction per wave of results. A fetch costs one query
/// for the pushers of its users and one unread count per user (the badge, shared by that
/// user's pushes in the fetch).
async fn deliver_due(hs: &Arc<Homeserver>, client: &reqwest::Client, wake: &Notify) -> Result<()> {
    let requests = Arc::new(Semaphore::new(hs.config.push.concurrency.max(1)));
    let (results, mut finished) = mpsc::unbounded_channel::<(QueuedPush, Outcome)>();
    let mut in_flight: HashSet<(String, i64)> = HashSet::new();
    let mut maybe_due = true;
    // After a store error nothing new is fetched, but what is in flight still finishes and is
    // settled: returning early would send those pushes again on the next round.
    let mut failed: Option<Error> = None;
    loop {
        if failed.is_none() && maybe_due && in_flight.len() < BATCH as usize {
            let limit = in_flight.len() as i64 + BATCH;
            match hs.stores.push.due_pushes(now_ms(), limit).await {
                Ok(due) => {
                    maybe_due = due.len() as i64 == limit;
                    let fresh: Vec<QueuedPush> = due
                        .into_iter()
                        .filter(|p| in_flight.insert((p.user_id.clone(), p.stream_pos)))
                        .collect();
                    let keys: Vec<(String, i64)> = fresh
                        .iter()
                        .map(|p| (p.user_id.clone(), p.stream_pos))
                        .collect();
                    if let Err(e) = start(hs, client, &requests, &results, fresh).await {
                        for key in &keys {
                            in_flight.remove(key);
                        }
                        failed = Some(e);
                    }
                }
                Err(e) => failed = Some(e.into()),
            }
        }
        if in_flight.is_empty() {
            return failed.map_or(Ok(()), Err);
        }
        tokio::select! {
            Some(first) = finished.recv() => {
                let mut wave = vec![first];
                while let Ok(more) = finished.try_recv() {
                    wave.push(more);
                }
                // Until settled, a push stays in flight (not fetched again); a store that
                // keeps failing leaves it queued, to be sent again once it is back.
                let mut tries = 0;
                while let Err(e) = settle(hs, &wave).await {
                    tries += 1;
                    tracing::warn!(error = %e, tries, "pushes not settled");
                    if tries == 5 {
                        failed = Some(e);
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(200 * tries)).await;
                }
                for (item, _) in &wave {
                    in_flight.remove(&(item.user_id.clone(), item.stream_pos));
                }
            }
            _ = wake.notified() => maybe_due = true,
        }
    }
}

/// Starts the deliveries of freshly fetched pushes (each a task waiting for a request permit).
async fn start(
    hs: &Arc<Homeserver>,
    client: &reqwest::Client,
    requests: &Arc<Semaphore>,
    results: &mpsc::UnboundedSender<(QueuedPush, Outcome)>,
    fresh: Vec<QueuedPush>,
) -> Result<()> {
    if fresh.is_empty() {
        return Ok(());
    }
    let mut users: Vec<String> = fresh.iter().map(|p| p.user_id.clone()).collect();
    users.sort();
    users.dedup();
    let mut pushers: HashMap<String, Arc<Vec<PusherRow>>> = HashMap::new();
    for p in hs.stores.push.pushers_of(&users).await? {
        match pushers.get_mut(&p.user_id) {
            Some(list) => Arc::make_mut(list).push(p),
            None => {
                pushers.insert(p.user_id.clone(), Arc::new(vec![p]));
            }
        }
    }
    let with_pushers: Vec<String> = pushers.keys().cloned().collect();
    let unread: HashMap<String, Result<u64>> = futures::stream::iter(with_pushers)
        .map(|user| async move {
            let n = total_unread(hs, &user).await;
            (user, n)
        })
        .buffer_unordered(8)
        .collect()
        .await;
    for item in fresh {
        let Some(targets) = pushers.get(&item.user_id).cloned() else {
            // The pushers are gone since the push was queued: nothing to do.
            let _ = results.send((item, Outcome::Delivered));
            continue;
        };
        let count = match unread.get(&item.user_id) {
            Some(Ok(n)) => Ok(*n),
            Some(Err(e)) => Err(Error::Internal(e.to_string())),
            None => Err(Error::Internal("no unread count".into())),
        };
        let (hs, client, requests, results) = (
            hs.clone(),
            client.clone(),
            requests.clone(),
            results.clone(),
        );
        tokio::spawn(async move {
            let outcome = match count {
                Ok(n) => {
                    let _permit = requests.acquire().await.expect("never closed");
                    deliver(&hs, &client, &item, &targets, n).await
                }
                Err(e) => Err(e),
            };
            let outcome = outcome.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "push not delivered");
                Outcome::RetryLater
            });
            let _ = results.send((item, outcome));
        });
    }
    Ok(())
}

/// Records a wave of finished pushes in one transaction: delivered (or given up) ones leave the
/// queue, the others are due again after their backoff.
async fn settle(hs: &Homeserver, wave: &[(QueuedPush, Outcome)]) -> Result<()> {
    let (mut done, mut retries) = (Vec::new(), Vec::new());
    for (item, outcome) in wave {
        match outcome {
            Outcome::RetryLater if item.attempts + 1 < MAX_ATTEMPTS => {
                let backoff = (1000i64 << item.attempts.min(20)).min(MAX_BACKOFF_MS);
                retries.push(PushRetry {
                    user_id: item.user_id.clone(),
                    stream_pos: item.stream_pos,
                    attempts: item.attempts + 1,
                    next_attempt_ts: now_ms() + backoff,
                });
            }
            Outcome::RetryLater => {
                tracing::warn!(attempts = item.attempts + 1, "push given up");
                done.push((item.user_id.clone(), item.stream_pos));
            }
            Outcome::Delivered => done.push((item.user_id.clone(), item.stream_pos)),
        }
    }
    metrics::counter!("tim_pushes_total", "server_name" => hs.server_name.to_string())
        .increment((done.len() + retries.len()) as u64);
    hs.stores.push.settle_pushes(&done, &retries).await?;
    Ok(())
}

/// The tweaks among push actions (`set_tweak` entries).
fn tweaks(actions: &str) -> Vec<Tweak> {
    serde_json::from_str::<Vec<Action>>(actions)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| match a {
            Action::SetTweak(t) => Some(t),
            _ => None,
        })
        .collect()
}

/// The Push Gateway API request body.
#[derive(Serialize)]
struct NotifyBody<'a> {
    notification: &'a Notification,
}

/// The Push Gateway API answer.
#[derive(Deserialize)]
struct NotifyAnswer {
    #[serde(default)]
    rejected: Vec<String>,
}

/// Sends one queued push to the gateways of the user's pushers (one request per gateway).
async fn deliver(
    hs: &Arc<Homeserver>,
    client: &reqwest::Client,
    item: &QueuedPush,
    pushers: &[PusherRow],
    unread: u64,
) -> Result<Outcome> {
    let tweaks = tweaks(&item.actions);
    let mut by_url: BTreeMap<String, Vec<(&PusherRow, Device)>> = BTreeMap::new();
    for p in pushers {
        let Ok(data) = serde_json::from_str::<HttpPusherData>(&p.data) else {
            continue;
        };
        let url = data.url.clone();
        let mut device = Device::new(p.app_id.clone(), p.pushkey.clone());
        device.pushkey_ts = Some(SecondsSinceUnixEpoch(UInt::new_saturating(
            (p.created_ts / 1000).max(0) as u64,
        )));
        device.data = PusherData::from(data);
        device.tweaks = tweaks.clone();
        by_url.entry(url).or_default().push((p, device));
    }
    let mut outcome = Outcome::Delivered;
    for (url, targets) in by_url {
        let (pushers, devices): (Vec<&PusherRow>, Vec<Device>) = targets.into_iter().unzip();
        // `event_id_only`: nothing of the message leaves the server (TI-M C-03).
        let mut notification = Notification::new(devices);
        notification.event_id = EventId::parse(&item.event_id).ok();
        notification.room_id = RoomId::parse(&item.room_id).ok();
        notification.prio = if item.highlight {
            NotificationPriority::High
        } else {
            NotificationPriority::Low
        };
        notification.counts = NotificationCounts::new(UInt::new_saturating(unread), UInt::MIN);
        if let Err(e) = hs.gateway_url_allowed(&url) {
            // The gateway became unacceptable (config): this push is dropped.
            tracing::warn!(error = %e, "push gateway refused by policy");
            continue;
        }
        let body = NotifyBody {
            notification: &notification,
        };
        let resp = match client.post(&url).json(&body).send().await {
            Ok(r) => r,
            // Its name now resolves to an internal address: dropped, like a refused URL.
            Err(e) if guard::is_address_refusal(&e) => {
                tracing::warn!("push gateway refused by policy: internal address");
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "push gateway unreachable");
                outcome = Outcome::RetryLater;
                continue;
            }
        };
        let status = resp.status();
        if status.is_success() {
            let rejected = read_limited(resp, 64 * 1024)
                .await
                .and_then(|b| serde_json::from_slice::<NotifyAnswer>(&b).ok())
                .map(|a| a.rejected)
                .unwrap_or_default();
            for pushkey in rejected {
                if let Some(p) = pushers.iter().find(|p| p.pushkey == pushkey) {
                    hs.delete_pusher(&item.user_id, &p.app_id, &p.pushkey)
                        .await?;
                    tracing::info!("pusher removed: the gateway rejected its pushkey");
                }
            }
        } else if status.is_server_error() || status.as_u16() == 429 {
            outcome = Outcome::RetryLater;
        } else {
            // 4xx: this push will never be accepted; retrying would not help.
            tracing::warn!(
                status = status.as_u16(),
                "push gateway refused the notification"
            );
        }
    }
    Ok(outcome)
}

/// The body of a response, if it is at most `max` bytes.
async fn read_limited(mut resp: reqwest::Response, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if out.len() + chunk.len() > max {
            return None;
        }
        out.extend_from_slice(&chunk);
    }
    Some(out)
}

/// Unread notifications of the user in all joined rooms (the app badge), at most
/// `BADGE_PER_ROOM` per room: exact for what a badge shows ("99+" beyond), and cheap for a
/// doctor who has been offline for a while.
async fn total_unread(hs: &Homeserver, user: &str) -> Result<u64> {
    let rooms: Vec<String> = hs
        .stores
        .events
        .rooms_for_user(user)
        .await?
        .into_iter()
        .filter(|m| m.membership == "join")
        .map(|m| m.room_id)
        .collect();
    let n = hs
        .stores
        .push
        .unread_badge(user, &rooms, BADGE_PER_ROOM)
        .await?;
    Ok(n.max(0) as u64)
}

impl Homeserver {
    /// A pusher's gateway URL: `http(s)`, the spec's notify path, one of the configured gateways
    /// if any are configured, and no internal address unless allowed (SSRF).
    pub async fn check_gateway(&self, url: &str) -> Result<()> {
        let parsed = self.gateway_url_allowed(url)?;
        if !self.config.push.allow_private_addresses {
            let host = parsed
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']']);
            let port = parsed.port_or_known_default().unwrap_or(443);
            let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
                .await
                .map_err(|e| Error::invalid_param(format!("data.url: cannot resolve: {e}")))?
                .collect();
            if addrs.is_empty() || addrs.iter().any(|a| guard::internal(a.ip())) {
                return Err(Error::invalid_param(
                    "data.url points to an internal address",
                ));
            }
        }
        Ok(())
    }

    /// The checks that need no DNS (scheme, path, configured gateways, IP literals), also made
    /// before every push; host names are checked when connecting, by the guarded resolver.
    fn gateway_url_allowed(&self, url: &str) -> Result<reqwest::Url> {
        let parsed =
            reqwest::Url::parse(url).map_err(|e| Error::invalid_param(format!("data.url: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https")
            || parsed.path() != "/_matrix/push/v1/notify"
        {
            return Err(Error::invalid_param(
                "data.url must be an http(s) URL ending in /_matrix/push/v1/notify",
            ));
        }
        let prefixes = &self.config.push.gateway_url_prefixes;
        let allowed = |p: &String| {
            reqwest::Url::parse(p).is_ok_and(|p| {
                p.scheme() == parsed.scheme()
                    && p.host_str() == parsed.host_str()
                    && p.port_or_known_default() == parsed.port_or_known_default()
                    && parsed.path().starts_with(p.path())
            })
        };
        if !prefixes.is_empty() && !prefixes.iter().any(allowed) {
            return Err(Error::invalid_param(
                "this push gateway is not allowed here",
            ));
        }
        let literal: Option<std::net::IpAddr> = parsed
            .host_str()
            .and_then(|h| h.trim_matches(['[', ']']).parse().ok());
        if !self.config.push.allow_private_addresses && literal.is_some_and(guard::internal) {
            return Err(Error::invalid_param(
                "data.url points to an internal address",
            ));
        }
        Ok(parsed)
    }

    pub async fn delete_pusher(&self, user: &str, app_id: &str, pushkey: &str) -> Result<bool> {
        let done = self
            .stores
            .push
            .delete_pusher(user, app_id, pushkey)
            .await?;
        if let Ok(user) = ruma::UserId::parse(user) {
            self.push.pushers_changed(&user);
        }
        Ok(done)
    }

    /// `/pushers/set` with a kind: checks the gateway URL and stores the pusher.
    pub async fn set_pusher(&self, pusher: PusherRow, append: bool) -> Result<()> {
        let data: Value =
            serde_json::from_str(&pusher.data).map_err(|e| Error::bad_json(e.to_string()))?;
        let url = data
            .get("url")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::MissingParam("data.url is required for http pushers".into()))?;
        self.check_gateway(url).await?;
        self.stores.push.set_pusher(&pusher, append).await?;
        if let Ok(user) = ruma::UserId::parse(pusher.user_id.as_str()) {
            self.push.pushers_changed(&user);
        }
        Ok(())
    }
}
