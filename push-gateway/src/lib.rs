//! The TI-Messenger push gateway: the Matrix Push Gateway API in, content-free Web Push out.
//!
//! Data flow: `api` (HTTP edge: `/_matrix/push/v1/notify`, VAPID key, health, metrics) →
//! `notify` (per device: app, subscription, policy, `payload`) → `dispatcher` (bounded queue,
//! per-host concurrency, retries, `breaker`) → `delivery` (one Web Push request, encrypted and
//! signed by `webpush`). `guard` keeps user-supplied endpoints away from internal hosts.

pub mod api;
mod breaker;
pub mod config;
pub mod delivery;
pub mod dispatcher;
pub mod guard;
pub mod keyfile;
pub mod metrics;
mod notify;
pub mod payload;
mod recent;
pub mod webpush;

use std::sync::Arc;

use config::Config;
use dispatcher::Dispatcher;
use metrics::Metrics;
use webpush::Vapid;

/// One push gateway: its configuration, VAPID identity and delivery queue.
pub struct Gateway {
    pub config: Config,
    dispatcher: Arc<Dispatcher>,
    metrics: Arc<Metrics>,
}

impl Gateway {
    pub fn new(config: Config, vapid: Vapid) -> Arc<Self> {
        let metrics = Arc::new(Metrics::default());
        let dispatcher = Dispatcher::new(config.delivery.clone(), vapid, metrics.clone());
        Arc::new(Self {
            config,
            dispatcher,
            metrics,
        })
    }

    /// Loads (or makes) the VAPID key named in the configuration and builds the gateway.
    pub fn from_config(config: Config) -> Result<Arc<Self>, String> {
        let key = keyfile::load_or_create(&config.vapid_private_key_file)?;
        let vapid = Vapid::new(key, config.vapid_subject.clone());
        Ok(Self::new(config, vapid))
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The VAPID public key browsers subscribe with (`applicationServerKey`, base64url).
    pub fn vapid_public_key(&self) -> String {
        self.dispatcher.vapid().public_key()
    }

    /// Waits for accepted pushes to finish (shutdown), at most `limit`.
    pub async fn drain(&self, limit: std::time::Duration) -> bool {
        self.dispatcher.drain(limit).await
    }
}

/// Serves the gateway's HTTP API on `listener` until `shutdown` completes, then lets accepted
/// pushes finish (at most 10 s).
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, api::router(gateway.clone()))
        .with_graceful_shutdown(shutdown)
        .await?;
    if !gateway.drain(std::time::Duration::from_secs(10)).await {
        tracing::warn!("stopped with pushes still queued");
    }
    Ok(())
}
