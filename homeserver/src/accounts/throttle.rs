//! Failed-password throttle per account: after `allowed` wrong passwords each further attempt
//! waits, one second doubling with every failure up to `max`. Guessing one account's password
//! is slowed whichever address, device or endpoint (login, password confirmation) it comes from.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

pub struct LoginThrottle {
    allowed: u32,
    max: Duration,
    /// account → (failures in a row, when the next attempt may come).
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Accounts tracked at most; beyond, those whose wait is over are forgotten first.
const MAX_TRACKED: usize = 100_000;

impl LoginThrottle {
    /// From the config's `login_failures_allowed` and `login_backoff_max_secs`.
    pub fn from_config(limits: &crate::config::RateLimitConfig) -> Self {
        Self::new(
            limits.login_failures_allowed,
            Duration::from_secs(limits.login_backoff_max_secs),
        )
    }

    pub fn new(allowed: u32, max: Duration) -> Self {
        Self {
            allowed,
            max,
            failures: Mutex::default(),
        }
    }

    /// Admits one password attempt for `account`, or says how many milliseconds to wait.
    /// The attempt counts as a failure until `succeeded` (or `forget`) says otherwise, so
    /// guesses sent all at once are throttled like guesses sent one after another.
    pub fn attempt(&self, account: &str, now: Instant) -> Result<(), u64> {
        let mut failures = self.failures.lock().expect("throttle lock");
        if let Some((_, next)) = failures.get(account)
            && *next > now
        {
            return Err((*next - now)
                .as_millis()
                .max(1)
                .try_into()
                .unwrap_or(u64::MAX));
        }
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, next)| *next > now);
            if failures.len() >= MAX_TRACKED / 2 {
                // A flood of accounts: forget an arbitrary half rather than scan at every try.
                let mut keep = false;
                failures.retain(|_, _| {
                    keep = !keep;
                    keep
                });
            }
        }
        let entry = failures.entry(account.to_owned()).or_insert((0, now));
        entry.0 = entry.0.saturating_add(1);
        let over = entry.0.saturating_sub(self.allowed);
        entry.1 = if over == 0 {
            now
        } else {
            let wait = Duration::from_secs(1u64 << (over - 1).min(30));
            now + wait.min(self.max)
        };
        Ok(())
    }

    /// An admitted attempt that checked no password (the server could not): not a failure.
    pub fn forget(&self, account: &str) {
        let mut failures = self.failures.lock().expect("throttle lock");
        if let Some(entry) = failures.get_mut(account) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// A correct password clears the account's record.
    pub fn succeeded(&self, account: &str) {
        self.failures.lock().expect("throttle lock").remove(account);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_after_the_allowed_failures() {
        let t = LoginThrottle::new(3, Duration::from_secs(60));
        let now = Instant::now();
        // Three attempts are free; the fourth is admitted but makes the next wait a second.
        for _ in 0..4 {
            t.attempt("@a:x", now).unwrap();
        }
        assert_eq!(t.attempt("@a:x", now), Err(1000));
        t.attempt("@b:x", now).unwrap();
        let later = now + Duration::from_secs(1);
        t.attempt("@a:x", later).unwrap();
        assert_eq!(t.attempt("@a:x", later), Err(2000));
        for i in 0..20 {
            t.attempt("@a:x", later + Duration::from_secs(3600 * (i + 1)))
                .unwrap();
        }
        let last = later + Duration::from_secs(3600 * 20);
        assert_eq!(t.attempt("@a:x", last), Err(60_000));
        t.succeeded("@a:x");
        t.attempt("@a:x", last).unwrap();
    }

    #[test]
    fn attempts_in_flight_count() {
        // Guesses sent at once: each is admitted only while the free attempts last.
        let t = LoginThrottle::new(2, Duration::from_secs(60));
        let now = Instant::now();
        let admitted = (0..10).filter(|_| t.attempt("@a:x", now).is_ok()).count();
        assert_eq!(admitted, 3);
        t.forget("@a:x");
        assert!(t.attempt("@a:x", now).is_err(), "the wait stands");
    }
}
