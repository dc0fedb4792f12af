//! The gateway's counters, rendered in the Prometheus text format at `/metrics`. Plain atomics
//! owned by the gateway value (no process-wide recorder), so several gateways can live in one
//! process and tests read exact figures.

use std::{
    fmt::Write,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default)]
pub struct Metrics {
    /// `/notify` requests accepted.
    pub notifications: AtomicU64,
    /// Devices named in accepted notifications.
    pub devices: AtomicU64,
    /// Pushes the push services accepted.
    pub delivered: AtomicU64,
    /// Attempts to be repeated later (5xx, 429, no answer).
    pub retried: AtomicU64,
    /// Pushes given up after their attempts or TTL.
    pub given_up: AtomicU64,
    /// Pushes refused for good by a push service (other 4xx) or unencryptable.
    pub failed: AtomicU64,
    /// Pushes dropped by policy (host not allowed, internal address).
    pub blocked: AtomicU64,
    /// Duplicate notifications for a pushkey and event already accepted.
    pub duplicates: AtomicU64,
    /// Pushkeys rejected to the homeserver.
    pub rejected: AtomicU64,
    /// `/notify` requests refused because the queue was full.
    pub queue_full: AtomicU64,
    /// Times a push service host's circuit breaker opened.
    pub breaker_opened: AtomicU64,
    /// Pushes held now (queued, in flight, waiting for a retry).
    pub queued: AtomicU64,
    latency: Histogram,
}

/// Accepted-to-delivered latency of pushes.
#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    pub fn observe_latency(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, n) in BUCKETS.iter().zip(&self.latency.buckets) {
            if secs <= *bound {
                n.fetch_add(1, Relaxed);
            }
        }
        self.latency.count.fetch_add(1, Relaxed);
        self.latency
            .sum_micros
            .fetch_add(d.as_micros() as u64, Relaxed);
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 11] = [
            (
                "tim_push_notifications_total",
                "Notifications accepted on /notify.",
                &self.notifications,
            ),
            (
                "tim_push_devices_total",
                "Devices named in accepted notifications.",
                &self.devices,
            ),
            (
                "tim_push_delivered_total",
                "Pushes accepted by push services.",
                &self.delivered,
            ),
            (
                "tim_push_retries_total",
                "Attempts to be repeated (5xx, 429, no answer).",
                &self.retried,
            ),
            (
                "tim_push_given_up_total",
                "Pushes given up after their attempts or TTL.",
                &self.given_up,
            ),
            (
                "tim_push_failed_total",
                "Pushes refused for good by a push service.",
                &self.failed,
            ),
            (
                "tim_push_blocked_total",
                "Pushes dropped by endpoint policy.",
                &self.blocked,
            ),
            (
                "tim_push_duplicates_total",
                "Repeated notifications for an event already accepted.",
                &self.duplicates,
            ),
            (
                "tim_push_rejected_pushkeys_total",
                "Pushkeys rejected to the homeserver.",
                &self.rejected,
            ),
            (
                "tim_push_queue_full_total",
                "Notifications refused because the queue was full.",
                &self.queue_full,
            ),
            (
                "tim_push_breaker_opened_total",
                "Circuit breaker openings of push service hosts.",
                &self.breaker_opened,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tim_push_queued Pushes held now.\n# TYPE tim_push_queued gauge\ntim_push_queued {}",
            self.queued.load(Relaxed)
        );
        let name = "tim_push_delivery_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from notification to push service acceptance.\n# TYPE {name} histogram"
        );
        for (bound, n) in BUCKETS.iter().zip(&self.latency.buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {}", n.load(Relaxed));
        }
        let count = self.latency.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}\n{name}_count {count}",
            self.latency.sum_micros.load(Relaxed) as f64 / 1e6
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let m = Metrics::default();
        m.delivered.fetch_add(3, Relaxed);
        m.observe_latency(Duration::from_micros(1500));
        m.observe_latency(Duration::from_millis(40));
        let text = m.render();
        assert!(text.contains("tim_push_delivered_total 3\n"));
        assert!(text.contains("tim_push_delivery_seconds_bucket{le=\"0.001\"} 0\n"));
        assert!(text.contains("tim_push_delivery_seconds_bucket{le=\"0.002\"} 1\n"));
        assert!(text.contains("tim_push_delivery_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(text.contains("tim_push_delivery_seconds_count 2\n"));
    }
}
