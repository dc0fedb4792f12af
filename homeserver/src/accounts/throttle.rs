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

    /// Whether `account` may try a password now; if not, the milliseconds to wait.
    pub fn check(&self, account: &str, now: Instant) -> Result<(), u64> {
        let failures = self.failures.lock().expect("throttle lock");
        match failures.get(account) {
            Some((_, next)) if *next > now => Err((*next - now)
                .as_millis()
                .max(1)
                .try_into()
                .unwrap_or(u64::MAX)),
            _ => Ok(()),
        }
    }

    /// Records a wrong password for `account`.
    pub fn failed(&self, account: &str, now: Instant) {
        let mut failures = self.failures.lock().expect("throttle lock");
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, next)| *next > now);
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
        for _ in 0..3 {
            t.check("@a:x", now).unwrap();
            t.failed("@a:x", now);
        }
        // The third failure was still free; the fourth costs one second, the fifth two.
        t.check("@a:x", now).unwrap();
        t.failed("@a:x", now);
        assert_eq!(t.check("@a:x", now), Err(1000));
        t.check("@b:x", now).unwrap();
        let later = now + Duration::from_secs(1);
        t.check("@a:x", later).unwrap();
        t.failed("@a:x", later);
        assert_eq!(t.check("@a:x", later), Err(2000));
        for _ in 0..20 {
            t.failed("@a:x", later);
        }
        assert_eq!(t.check("@a:x", later), Err(60_000));
        t.succeeded("@a:x");
        t.check("@a:x", later).unwrap();
    }
}
