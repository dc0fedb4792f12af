//! A circuit breaker per push service host: after repeated failures (or a `Retry-After` from
//! the service) no request goes to that host until the breaker's time is over; then one probe
//! goes, and its success lets the waiting pushes through at once. Only hosts that failed have
//! an entry (a healthy answer removes it); at `MAX_HOSTS` entries the closed ones are dropped,
//! since endpoint hosts come from users.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::Notify;

const MAX_HOSTS: usize = 10_000;

/// Whether a request may go to a host now.
pub enum Gate {
    Pass,
    /// Wait until then, or until the host recovers (the `Notify` fires).
    Wait(Instant, Arc<Notify>),
}

struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    recovered: Arc<Notify>,
}

pub struct Breakers {
    hosts: Mutex<HashMap<String, Breaker>>,
    threshold: u32,
    open_for: Duration,
    max_open: Duration,
}

impl Breakers {
    pub fn new(threshold: u32, open_for: Duration, max_open: Duration) -> Self {
        Self {
            hosts: Mutex::default(),
            threshold,
            open_for,
            max_open,
        }
    }

    pub fn gate(&self, host: &str, now: Instant) -> Gate {
        let mut hosts = self.hosts.lock().expect("breaker lock");
        let Some(b) = hosts.get_mut(host) else {
            return Gate::Pass;
        };
        match b.open_until {
            Some(until) if now < until => Gate::Wait(until, b.recovered.clone()),
            Some(_) => {
                // Half-open: this request is the probe; the others wait for its result (or
                // for another period, should the probe hang until its timeout).
                b.open_until = Some(now + self.open_for);
                Gate::Pass
            }
            None => Gate::Pass,
        }
    }

    /// Records an answer from the host (any answer but 5xx/429 counts as healthy). Returns
    /// whether the breaker opened.
    pub fn record(
        &self,
        host: &str,
        healthy: bool,
        retry_after: Option<Duration>,
        now: Instant,
    ) -> bool {
        let mut hosts = self.hosts.lock().expect("breaker lock");
        if healthy {
            if let Some(b) = hosts.remove(host) {
                b.recovered.notify_waiters();
            }
            return false;
        }
        if hosts.len() >= MAX_HOSTS && !hosts.contains_key(host) {
            // Endpoint hosts come from users: keep only breakers that are still open.
            hosts.retain(|_, b| b.open_until.is_some_and(|u| u > now));
            if hosts.len() >= MAX_HOSTS {
                return false;
            }
        }
        let b = hosts.entry(host.to_owned()).or_insert_with(|| Breaker {
            failures: 0,
            open_until: None,
            recovered: Arc::new(Notify::new()),
        });
        b.failures += 1;
        let open_for = match retry_after {
            // The service said when to come back: nobody asks before (RFC 8030 section 8.4).
            Some(after) => Some(after.min(self.max_open)),
            None if b.failures >= self.threshold => Some(self.open_for),
            None => None,
        };
        match open_for {
            Some(d) => {
                let was_open = b.open_until.is_some_and(|u| u > now);
                b.open_until = Some(now + d);
                !was_open
            }
            None => false,
        }
    }

    #[cfg(test)]
    fn is_open(&self, host: &str, now: Instant) -> bool {
        matches!(self.gate(host, now), Gate::Wait(..))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_and_closes_on_success() {
        let b = Breakers::new(3, Duration::from_secs(30), Duration::from_secs(300));
        let t0 = Instant::now();
        assert!(!b.record("push.example", false, None, t0));
        assert!(!b.record("push.example", false, None, t0));
        assert!(!b.is_open("push.example", t0));
        assert!(b.record("push.example", false, None, t0));
        assert!(b.is_open("push.example", t0 + Duration::from_secs(29)));
        assert!(!b.is_open("other.example", t0));
        // After the period one probe passes; the next request waits for its result.
        let later = t0 + Duration::from_secs(31);
        assert!(matches!(b.gate("push.example", later), Gate::Pass));
        assert!(b.is_open("push.example", later));
        // A healthy answer closes the breaker and forgets the host.
        b.record("push.example", true, None, later);
        assert!(!b.is_open("push.example", later));
        assert!(b.hosts.lock().unwrap().is_empty());
    }

    #[test]
    fn retry_after_opens_at_once_capped() {
        let b = Breakers::new(10, Duration::from_secs(30), Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(b.record("push.example", false, Some(Duration::from_secs(5)), t0));
        assert!(b.is_open("push.example", t0 + Duration::from_secs(4)));
        assert!(!b.is_open("push.example", t0 + Duration::from_secs(6)));
        b.record("push.example", true, None, t0);
        b.record("push.example", false, Some(Duration::from_secs(3600)), t0);
        assert!(!b.is_open("push.example", t0 + Duration::from_secs(61)));
    }
}
