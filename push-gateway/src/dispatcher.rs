//! The delivery queue. Every accepted push is a task holding one permit of the queue's capacity
//! until it is done: it waits for its host's circuit breaker, takes one of the host's
//! connection permits, sends, and on 5xx/429/no answer sleeps (exponential backoff with jitter,
//! at least the service's `Retry-After`) and tries again — until delivered, gone, refused, out of
//! attempts or past its TTL. The first attempt's result is reported to whoever submitted it, so
//! `/notify` can reject gone pushkeys in its answer; retries go on in the background. Nothing
//! polls: tasks sleep on timers and wake on the breaker's recovery.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use rand_core::RngCore;
use tokio::sync::{Semaphore, oneshot};

use crate::{
    breaker::{Breakers, Gate},
    config::DeliveryConfig,
    delivery::{self, Outcome, Push, Subscription, Urgency},
    guard,
    metrics::Metrics,
    recent::Recent,
    webpush::Vapid,
};

/// How long gone pushkeys are remembered (rejected on every notify naming them).
const GONE_KEEP: Duration = Duration::from_secs(24 * 3600);
/// How long an accepted (pushkey, event) pair makes repeats duplicates.
const SEEN_KEEP: Duration = Duration::from_secs(3600);
const RECENT_MAX: usize = 200_000;

/// One push to deliver.
pub struct Job {
    pub app_id: String,
    pub pushkey: String,
    /// For recognising a repeated notification (the spec's duplicate detection).
    pub event_id: Option<String>,
    /// The push service host (breaker and concurrency key).
    pub host: String,
    pub subscription: Subscription,
    pub payload: Vec<u8>,
    pub ttl: u32,
    pub urgency: Urgency,
    pub topic: Option<String>,
}

/// What the first attempt of a push came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    Delivered,
    Gone,
    /// Retrying in the background.
    Pending,
    Failed,
    /// Not sent: the same push was accepted before.
    Duplicate,
}

/// The queue is full; the notification should come again later.
#[derive(Debug)]
pub struct QueueFull;

pub struct Dispatcher {
    http: reqwest::Client,
    vapid: Vapid,
    config: DeliveryConfig,
    capacity: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    breakers: Breakers,
    gone: Mutex<Recent<(String, String)>>,
    seen: Mutex<Recent<(String, String, String)>>,
    metrics: Arc<Metrics>,
}

impl Dispatcher {
    pub fn new(config: DeliveryConfig, vapid: Vapid, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            http: guard::http_client(&config),
            vapid,
            capacity: Arc::new(Semaphore::new(config.queue_capacity)),
            hosts: Mutex::default(),
            breakers: Breakers::new(
                config.breaker_failures,
                Duration::from_millis(config.breaker_open_ms),
                Duration::from_millis(config.backoff_max_ms),
            ),
            gone: Mutex::new(Recent::new(GONE_KEEP, RECENT_MAX)),
            seen: Mutex::new(Recent::new(SEEN_KEEP, RECENT_MAX)),
            config,
            metrics,
        })
    }

    pub fn vapid(&self) -> &Vapid {
        &self.vapid
    }

    /// Whether a push service reported this pushkey gone recently.
    pub fn is_gone(&self, app_id: &str, pushkey: &str) -> bool {
        self.gone
            .lock()
            .expect("gone lock")
            .contains(&(app_id.to_owned(), pushkey.to_owned()), Instant::now())
    }

    /// Queues the pushes (all or none) and returns, in the jobs' order, a receiver per push for
    /// its first result. Repeats of a push already accepted are answered without sending.
    pub fn submit(
        self: &Arc<Self>,
        jobs: Vec<Job>,
    ) -> Result<Vec<oneshot::Receiver<First>>, QueueFull> {
        let now = Instant::now();
        let mut receivers = Vec::with_capacity(jobs.len());
        let mut fresh = Vec::with_capacity(jobs.len());
        // Under the lock from the look-up to the insert: two notifications racing with the
        // same push cannot both send it, and a refused batch leaves nothing behind.
        let mut seen = self.seen.lock().expect("seen lock");
        for job in jobs {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let key = job
                .event_id
                .as_ref()
                .map(|e| (job.app_id.clone(), job.pushkey.clone(), e.clone()));
            let repeated = key.as_ref().is_some_and(|k| seen.contains(k, now))
                || key.is_some() && fresh.iter().any(|(_, k, _)| k == &key);
            if repeated {
                self.metrics.duplicates.fetch_add(1, Relaxed);
                let _ = tx.send(First::Duplicate);
                continue;
            }
            fresh.push((job, key, tx));
        }
        if fresh.is_empty() {
            return Ok(receivers);
        }
        let Ok(mut permits) = self
            .capacity
            .clone()
            .try_acquire_many_owned(fresh.len() as u32)
        else {
            self.metrics.queue_full.fetch_add(1, Relaxed);
            return Err(QueueFull);
        };
        for key in fresh.iter().filter_map(|(_, k, _)| k.clone()) {
            seen.insert(key, now);
        }
        drop(seen);
        for (job, _, tx) in fresh {
            let permit = permits.split(1).expect("one permit per push");
            self.metrics.queued.fetch_add(1, Relaxed);
            let this = self.clone();
            tokio::spawn(async move {
                this.run(job, tx, now).await;
                this.metrics.queued.fetch_sub(1, Relaxed);
                drop(permit);
            });
        }
        Ok(receivers)
    }

    /// Waits until every accepted push is done, or `limit` has passed (shutdown).
    pub async fn drain(&self, limit: Duration) -> bool {
        let all = self.config.queue_capacity as u32;
        tokio::time::timeout(limit, self.capacity.acquire_many(all))
            .await
            .is_ok()
    }

    fn host_permits(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().expect("hosts lock");
        if hosts.len() > 4096 {
            // Forget idle hosts (nobody holds their semaphore).
            hosts.retain(|_, s| Arc::strong_count(s) > 1);
        }
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.per_host_concurrency)))
            .clone()
    }

    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let base = self
            .config
            .backoff_initial_ms
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(30))
            .min(self.config.backoff_max_ms);
        // ±20 % so that pushes failed together do not come back together.
        let jitter = (rand_core::OsRng.next_u32() % 401) as u64;
        let ms = base * (800 + jitter) / 1000;
        let d = Duration::from_millis(ms.max(1));
        match retry_after {
            Some(after) => d.max(after.min(Duration::from_millis(self.config.backoff_max_ms))),
            None => d,
        }
    }

    async fn run(&self, job: Job, first: oneshot::Sender<First>, accepted: Instant) {
        let mut first = Some(first);
        let mut report = |r: First| {
            if let Some(tx) = first.take() {
                let _ = tx.send(r);
            }
        };
        let expires = accepted + Duration::from_secs(job.ttl as u64);
        let mut push = Push {
            subscription: &job.subscription,
            payload: &job.payload,
            ttl: job.ttl,
            urgency: job.urgency,
            topic: job.topic.as_deref(),
        };
        let host_permits = self.host_permits(&job.host);
        let mut attempt = 0u32;
        loop {
            // Wait while the host's breaker is open (the host recovering wakes us early).
            while let Gate::Wait(until, recovered) = self.breakers.gate(&job.host, Instant::now()) {
                report(First::Pending);
                if until >= expires {
                    self.metrics.given_up.fetch_add(1, Relaxed);
                    tracing::info!(host = %job.host, "push given up: TTL over while its push service is unavailable");
                    return;
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(until.into()) => {}
                    _ = recovered.notified() => {}
                }
            }
            // A retried push may only live for what is left of its TTL.
            if attempt > 0 {
                push.ttl = expires
                    .saturating_duration_since(Instant::now())
                    .as_secs()
                    .min(job.ttl as u64) as u32;
            }
            let outcome = {
                let _conn = host_permits.acquire().await.expect("never closed");
                delivery::send(&self.http, &self.vapid, &push).await
            };
            attempt += 1;
            let now = Instant::now();
            // The breaker hears only what the service said about itself: 5xx or silence is
            // trouble, any other answer health; 429 concerns this push, not the host.
            let health = match &outcome {
                Outcome::Retry(after) => Some((false, *after)),
                Outcome::Blocked => None,
                _ => Some((true, None)),
            };
            if let Some((healthy, retry_after)) = health
                && self.breakers.record(&job.host, healthy, retry_after, now)
            {
                self.metrics.breaker_opened.fetch_add(1, Relaxed);
                tracing::warn!(host = %job.host, "push service unavailable: circuit breaker open");
            }
            match outcome {
                Outcome::Delivered => {
                    self.metrics.delivered.fetch_add(1, Relaxed);
                    self.metrics.observe_latency(now - accepted);
                    report(First::Delivered);
                    return;
                }
                Outcome::Gone => {
                    self.gone
                        .lock()
                        .expect("gone lock")
                        .insert((job.app_id.clone(), job.pushkey.clone()), now);
                    tracing::info!(host = %job.host, "push subscription gone; its pushkey will be rejected");
                    report(First::Gone);
                    return;
                }
                Outcome::Failed(why) => {
                    self.metrics.failed.fetch_add(1, Relaxed);
                    tracing::warn!(host = %job.host, error = %why, "push refused");
                    report(First::Failed);
                    return;
                }
                Outcome::Blocked => {
                    self.metrics.blocked.fetch_add(1, Relaxed);
                    tracing::warn!(host = %job.host, "push endpoint resolves to an internal address: dropped");
                    report(First::Failed);
                    return;
                }
                Outcome::Retry(after) | Outcome::Throttled(after) => {
                    self.metrics.retried.fetch_add(1, Relaxed);
                    let wait = self.backoff(attempt, after);
                    if attempt >= self.config.max_attempts || now + wait >= expires {
                        self.metrics.given_up.fetch_add(1, Relaxed);
                        tracing::warn!(host = %job.host, attempts = attempt, "push given up");
                        report(First::Failed);
                        return;
                    }
                    report(First::Pending);
                    tracing::debug!(host = %job.host, attempt, ?wait, "push to be retried");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
