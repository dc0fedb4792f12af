//! The reconcile job: brings the directory to what is stored — our federation-list domains
//! (`domains`) and the organisations' entries (`services`) — one pending entry at a time,
//! comparing before writing so that a repeated attempt (after a crash, a timeout, the
//! directory being down) never makes a change twice. Failed attempts are retried with
//! exponential backoff; refusals that will not change by themselves wait the longest delay.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use tokio::sync::Notify;

use crate::{
    config::ReconcileConfig,
    directory_error::DirectoryError,
    domains,
    metrics::Metrics,
    owner::OwnerClient,
    provider::ProviderClient,
    services,
    store::{EntryRow, Kind, Store, StoreError},
};

/// Why an attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cannot succeed as configured (e.g. the organisation is not in the directory).
    #[error("{0}")]
    Refused(String),
}

impl ApplyError {
    fn retryable(&self) -> bool {
        match self {
            ApplyError::Directory(e) => e.retryable(),
            ApplyError::Store(_) => true,
            ApplyError::Refused(_) => false,
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

const BATCH: usize = 50;

pub struct Reconciler {
    pub store: Arc<dyn Store>,
    pub provider: Arc<ProviderClient>,
    pub owner: Arc<OwnerClient>,
    config: ReconcileConfig,
    metrics: Arc<Metrics>,
    wake: Notify,
}

impl Reconciler {
    pub fn new(
        store: Arc<dyn Store>,
        provider: Arc<ProviderClient>,
        owner: Arc<OwnerClient>,
        config: ReconcileConfig,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            provider,
            owner,
            config,
            metrics,
            wake: Notify::new(),
        })
    }

    /// Something new is pending.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn backoff(&self, attempts: i64) -> Duration {
        let factor = 1u64 << attempts.clamp(0, 20);
        Duration::from_millis(
            self.config
                .retry_initial_ms
                .saturating_mul(factor)
                .min(self.config.retry_max_ms),
        )
    }

    async fn apply(&self, row: &EntryRow) -> Result<(), ApplyError> {
        match row.kind {
            Kind::Domain => domains::apply(&self.provider, row).await,
            Kind::Service => services::apply(&self.owner, self.store.as_ref(), row).await,
        }
    }

    /// Works through the due entries; returns how many there were.
    pub async fn run_once(&self) -> Result<usize, StoreError> {
        let due = self.store.due_entries(now_ms(), BATCH as i64).await?;
        for row in &due {
            let (kind, key) = (row.kind.as_str(), row.key.as_str());
            match self.apply(row).await {
                Ok(()) => {
                    self.store
                        .entry_applied(row.kind, &row.key, row.revision, now_ms())
                        .await?;
                    self.metrics.directory_changes_applied.fetch_add(1, Relaxed);
                    tracing::info!(
                        kind,
                        key,
                        wanted = row.wanted,
                        "directory holds the entry as configured"
                    );
                }
                Err(e) => {
                    self.metrics.directory_change_failures.fetch_add(1, Relaxed);
                    let wait = match e.retryable() {
                        true => self.backoff(row.attempts),
                        false => Duration::from_millis(self.config.retry_max_ms),
                    };
                    match e.retryable() {
                        true => {
                            tracing::warn!(kind, key, error = %e, retry_in_ms = wait.as_millis() as u64, "directory did not take a change yet")
                        }
                        false => {
                            tracing::error!(kind, key, error = %e, "directory refused a change")
                        }
                    }
                    self.store
                        .entry_failed(
                            row.kind,
                            &row.key,
                            row.revision,
                            &e.to_string(),
                            now_ms() + wait.as_millis() as i64,
                        )
                        .await?;
                }
            }
        }
        Ok(due.len())
    }

    /// Applies pending changes as they come and when their retry is due.
    pub async fn run(self: Arc<Self>) {
        loop {
            let wait = match self.run_once().await {
                Ok(BATCH) => continue,
                Ok(_) => match self.store.next_due().await {
                    Ok(Some(t)) => Duration::from_millis((t - now_ms()).max(0) as u64),
                    Ok(None) => Duration::from_secs(3600),
                    Err(e) => {
                        tracing::error!(error = %e, "store unavailable");
                        Duration::from_secs(1)
                    }
                },
                Err(e) => {
                    tracing::error!(error = %e, "store unavailable");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.wake.notified() => {}
            }
        }
    }
}
