//! `tim-vzd-sync`: the bridge between our messenger services and the gematik
//! VZD-FHIR-Directory.
//!
//! Data flow: `api` (internal HTTP edge) → `domains` (our federation-list entries) and
//! `services` (organisations' directory entries), both stored in `store` and brought to the
//! directory by `reconcile` (diff-based, retried) through `provider` (the provider interface)
//! and `owner` (the owner interface, authenticated with our `regservice_token`);
//! `federation_sync` fetches the signed list, verifies it (`federation_list`, `crypto`), caches
//! it and hands it to our homeservers. `fhir` holds the directory's resource types.

pub mod api;
pub mod config;
pub mod crypto;
pub mod directory_error;
pub mod domains;
pub mod federation_list;
pub mod federation_sync;
pub mod fhir;
pub mod ik;
pub mod metrics;
pub mod owner;
pub mod practitioner;
pub mod provider;
pub mod reconcile;
pub mod regservice_token;
pub mod search;
pub mod services;
pub mod store;

use std::{path::Path, sync::Arc};

use config::{Config, Secret};
use crypto::TrustStore;
use federation_sync::FederationSync;
use metrics::Metrics;
use owner::OwnerClient;
use provider::ProviderClient;
use reconcile::Reconciler;
use regservice_token::TokenIssuer;
use sha2::{Digest, Sha256};

/// One sync service: configuration, store, directory client and the jobs.
pub struct VzdSync {
    pub config: Config,
    pub provider: Arc<ProviderClient>,
    pub federation: Arc<FederationSync>,
    pub reconciler: Arc<Reconciler>,
    pub search: search::Search,
    pub practitioners: Arc<practitioner::Practitioners>,
    pub metrics: Arc<Metrics>,
    internal_token_hash: [u8; 32],
}

/// The outbound HTTP client: rustls, no proxies from the environment, no redirects (the
/// directory's answers are read as they come).
pub fn http_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(10))
        .user_agent(concat!("tim-vzd-sync/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The configured internal token, or the one in `{data_dir}/internal.token` (made once).
pub fn internal_token(config: &Config) -> Result<Secret, String> {
    if !config.internal_token.is_empty() {
        return Ok(config.internal_token.clone());
    }
    let path = config.data_dir.join("internal.token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => return Ok(Secret::new(t.trim())),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| format!("cannot make {}: {e}", config.data_dir.display()))?;
    let token: String = {
        use rand::Rng;
        let bytes: [u8; 32] = rand::thread_rng().r#gen();
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    };
    write_private(&path, &token)?;
    Ok(Secret::new(token))
}

fn write_private(path: &Path, content: &str) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(content.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

impl VzdSync {
    /// Opens the store, reads the trust anchors and the cached federation list.
    pub async fn open(config: Config) -> Result<Arc<Self>, String> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir)
            .map_err(|e| format!("cannot make {}: {e}", config.data_dir.display()))?;
        let token = internal_token(&config)?;
        let trust = TrustStore::load(
            &config.federation_list.trust_anchors,
            &config.federation_list.intermediates,
        )?;
        let f = &config.federation_list;
        if f.signer_fingerprints.is_empty() && f.signer_common_names.is_empty() {
            tracing::warn!(
                "federation_list.signer_fingerprints and signer_common_names are empty: any certificate under the TI roots may sign the federation list"
            );
        }
        let store = store::open(&config.database_url, &config.database_schema).await?;
        let http = http_client()?;
        let metrics = Arc::new(Metrics::new());
        let provider = Arc::new(ProviderClient::new(http.clone(), config.directory.clone()));
        let federation = FederationSync::new(
            config.federation_list.clone(),
            trust,
            provider.clone(),
            http,
            &config.data_dir,
            metrics.clone(),
        );
        let issuer = match (
            &config.owner.signing_key_file,
            &config.owner.signing_cert_file,
        ) {
            (Some(key), Some(cert)) => Some(TokenIssuer::load(
                key,
                cert,
                config.owner.issuer.clone(),
                std::time::Duration::from_secs(config.owner.token_lifetime_secs),
            )?),
            _ => None,
        };
        let owner = Arc::new(OwnerClient::new(
            http_client()?,
            config.directory.clone(),
            issuer,
        ));
        let search = search::Search::new(
            http_client()?,
            &config.directory.base_url,
            std::time::Duration::from_millis(config.directory.request_timeout_ms),
            federation.clone(),
        );
        let practitioners = practitioner::Practitioners::new(
            owner.clone(),
            store.clone(),
            http_client()?,
            config.homeservers.clone(),
        );
        let reconciler = Reconciler::new(
            store,
            provider.clone(),
            owner,
            config.reconcile.clone(),
            metrics.clone(),
        );
        Ok(Arc::new(Self {
            internal_token_hash: Sha256::digest(token.expose().as_bytes()).into(),
            config,
            provider,
            federation,
            reconciler,
            search,
            practitioners,
            metrics,
        }))
    }
}

/// Runs the jobs, serves the internal API on `internal` and the directory search on `search`
/// until `shutdown` completes. Every change is stored before it is acknowledged, so stopping
/// at any point loses none.
pub async fn serve(
    sync: Arc<VzdSync>,
    internal: tokio::net::TcpListener,
    search: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let jobs = [
        tokio::spawn(sync.federation.clone().run()),
        tokio::spawn(sync.reconciler.clone().run()),
    ];
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let search_server = tokio::spawn(
        axum::serve(search, api::search_router(sync.clone()))
            .with_graceful_shutdown(stopped(stop_rx.clone()))
            .into_future(),
    );
    let result = axum::serve(internal, api::router(sync.clone()))
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await;
    let _ = search_server.await;
    for job in jobs {
        job.abort();
    }
    result
}
