//! Token-bucket rate limits per user (authenticated requests) or per IP address.

use std::{collections::HashMap, sync::Mutex, time::Instant};

use crate::config::RateLimitConfig;

pub struct RateLimiter {
    config: RateLimitConfig,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Buckets {
    by_key: HashMap<String, (f64, Instant)>,
    pruned: Option<Instant>,
}

/// Buckets kept before full ones are dropped (at most once a second), and the most kept at
/// all: beyond, an arbitrary half is forgotten, so a flood of new keys costs bounded memory
/// and no request pays for scanning the map.
const PRUNE_ABOVE: usize = 50_000;
const MAX_BUCKETS: usize = 200_000;

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
        if buckets.by_key.len() > PRUNE_ABOVE
            && buckets
                .pruned
                .is_none_or(|p| now.duration_since(p).as_secs() >= 1)
        {
            // Full buckets carry no information: drop them.
            let burst = self.config.burst;
            let rate = self.config.per_second;
            buckets
                .by_key
                .retain(|_, (tokens, at)| *tokens + at.elapsed().as_secs_f64() * rate < burst);
            buckets.pruned = Some(now);
        }
        if buckets.by_key.len() >= MAX_BUCKETS {
            let mut keep = false;
            buckets.by_key.retain(|_, _| {
                keep = !keep;
                keep
            });
        }
        let (tokens, at) = buckets
            .by_key
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
