//! Counters of the sync, rendered in the Prometheus text format at `/metrics`. Plain atomics
//! owned by the `VzdSync` value (no process-wide recorder).

use std::{
    fmt::Write,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
};

#[derive(Default)]
pub struct Metrics {
    /// Federation list fetches that reached the directory and ended well (200 or 204).
    pub list_checks: AtomicU64,
    /// Fetches that failed (directory unreachable or refusing, list not verifiable).
    pub list_failures: AtomicU64,
    /// Lists refused for their signature, certificate chain, OCSP status or content.
    pub lists_rejected: AtomicU64,
    /// Newer lists taken.
    pub lists_taken: AtomicU64,
    /// Version of the list in force (-1: none).
    pub list_version: AtomicI64,
    /// 1 while an incident is raised (too many failed fetches in a row).
    pub incident: AtomicU64,
    /// Incidents raised since start.
    pub incidents: AtomicU64,
    /// Entry changes (domains, directory entries) the directory took.
    pub directory_changes_applied: AtomicU64,
    /// Attempts at entry changes that failed.
    pub directory_change_failures: AtomicU64,
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::default();
        m.list_version.store(-1, Relaxed);
        m
    }

    /// The text format; `list_age_secs` is the age of the list in force (-1: none).
    pub fn render(&self, list_age_secs: i64) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, &AtomicU64); 7] = [
            (
                "tim_vzd_federation_list_incidents_total",
                "Incidents raised since start.",
                &self.incidents,
            ),
            (
                "tim_vzd_federation_list_checks_total",
                "Federation list fetches that succeeded (200 or 204).",
                &self.list_checks,
            ),
            (
                "tim_vzd_federation_list_failures_total",
                "Federation list fetches that failed.",
                &self.list_failures,
            ),
            (
                "tim_vzd_federation_lists_rejected_total",
                "Federation lists refused (signature, chain, OCSP, content).",
                &self.lists_rejected,
            ),
            (
                "tim_vzd_federation_lists_taken_total",
                "Newer federation lists taken.",
                &self.lists_taken,
            ),
            (
                "tim_vzd_directory_changes_applied_total",
                "Changes of domains and directory entries the directory took.",
                &self.directory_changes_applied,
            ),
            (
                "tim_vzd_directory_change_failures_total",
                "Failed attempts at changes of domains and directory entries.",
                &self.directory_change_failures,
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Relaxed)
            );
        }
        let gauges: [(&str, &str, i64); 3] = [
            (
                "tim_vzd_federation_list_version",
                "Version of the federation list in force (-1: none).",
                self.list_version.load(Relaxed),
            ),
            (
                "tim_vzd_federation_list_age_seconds",
                "Seconds since the directory last confirmed the list (-1: none).",
                list_age_secs,
            ),
            (
                "tim_vzd_federation_list_incident",
                "1 while an incident is raised for failed fetches.",
                self.incident.load(Relaxed) as i64,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}
