//! Token-bucket rate limits per user (authenticated requests) or per IP address.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::config::RateLimitConfig;

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            config,
            buckets: Mutex::default(),
        }
    }

    /// Takes one token for `key`; on refusal returns how long to wait, in milliseconds.
    pub fn check(&self, key: &str) -> Result<(), u64> {
        if self.config.disabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limit lock");
        if buckets.len() > 50_000 {
            // Full buckets carry no information: drop them.
            let burst = self.config.burst;
            let rate = self.config.per_second;
            buckets.retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
        }
        let (tokens, at) = buckets
            .entry(key.to_owned())
            .or_insert((self.config.burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.config.per_second)
            .min(self.config.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err((((1.0 - *tokens) / self.config.per_second) * 1000.0).ceil() as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse() {
        let rl = RateLimiter::new(RateLimitConfig {
            per_second: 1.0,
            burst: 3.0,
            ..RateLimitConfig::default()
        });
        for _ in 0..3 {
            rl.check("a").unwrap();
        }
        let wait = rl.check("a").unwrap_err();
        assert!(wait > 0 && wait <= 1000);
        rl.check("b").unwrap();
    }
}
