//! Ephemeral state: typing notifications and presence. Kept in memory (a tenant is served by
//! one process) and versioned by one serial per tenant that sync tokens carry next to the
//! stream position (`s{position}_{serial}`). The serial starts at the wall clock in
//! milliseconds and never falls behind it, so serials handed out before a restart stay below
//! those after it and a client's old token still sees every later change.

pub mod presence;
pub mod typing;

use std::sync::atomic::{AtomicI64, Ordering};

use ruma::MilliSecondsSinceUnixEpoch;

pub fn now_ms() -> i64 {
    u64::from(MilliSecondsSinceUnixEpoch::now().0) as i64
}

pub struct Serial(AtomicI64);

impl Default for Serial {
    fn default() -> Self {
        Self(AtomicI64::new(now_ms()))
    }
}

impl Serial {
    pub fn current(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }

    /// The next serial: above the last one and not below the clock.
    pub fn next(&self) -> i64 {
        let floor = now_ms();
        let prev = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                Some((cur + 1).max(floor))
            })
            .expect("update always succeeds");
        (prev + 1).max(floor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_increase_and_follow_the_clock() {
        let s = Serial::default();
        let a = s.next();
        let b = s.next();
        assert!(b > a);
        assert!(a >= now_ms() - 1000);
        assert_eq!(s.current(), b);
    }
}
