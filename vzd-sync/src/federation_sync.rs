//! Keeps the federation list current (B-FL-01..05): fetched from the directory hourly, after a
//! failure every 5 minutes, an incident after 3 failures in a row; a list is taken only when
//! its signature, certificate chain (and, where configured, OCSP status) check out and its
//! version is newer; the last good list stays in force and is cached on disk, so that a
//! restart works without the directory. Our homeservers get it through `I_internVerification`
//! (`api.rs`), which fails closed once the directory has not confirmed the list for 72 h.

use std::{
    path::PathBuf,
    sync::{Arc, RwLock, atomic::Ordering::Relaxed},
    time::{Duration, SystemTime},
};

use crate::{
    config::FederationListConfig,
    crypto::{TrustStore, ocsp},
    federation_list::{ListError, SignedList},
    metrics::Metrics,
    provider::ProviderClient,
};

/// What `I_internVerification` hands on.
#[derive(Clone, Debug)]
pub enum Handout {
    /// The caller holds the list in force.
    Current {
        version: i64,
        checked_at: SystemTime,
    },
    /// The list in force, as signed by the directory.
    List {
        list: Arc<SignedList>,
        checked_at: SystemTime,
    },
    /// No list, or not confirmed by the directory for longer than allowed: fail closed.
    Outdated { reason: String },
}

#[derive(Default)]
struct State {
    current: Option<Arc<SignedList>>,
    /// When the directory last confirmed the list (sent it, or said there is none newer).
    checked_at: Option<SystemTime>,
    failures: u32,
    last_error: Option<String>,
}

/// A snapshot for `/health`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Status {
    pub version: Option<i64>,
    pub domains: usize,
    pub age_secs: Option<u64>,
    pub failures: u32,
    pub incident: bool,
    pub last_error: Option<String>,
}

pub struct FederationSync {
    config: FederationListConfig,
    trust: TrustStore,
    provider: Arc<ProviderClient>,
    http: reqwest::Client,
    cache: PathBuf,
    state: RwLock<State>,
    metrics: Arc<Metrics>,
    /// Serialises fetches (the loop and on-demand refreshes).
    fetching: tokio::sync::Mutex<Option<std::time::Instant>>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheMeta {
    checked_at_ms: u64,
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl FederationSync {
    /// Loads the cached list from `data_dir` if there is one that still verifies.
    pub fn new(
        config: FederationListConfig,
        trust: TrustStore,
        provider: Arc<ProviderClient>,
        http: reqwest::Client,
        data_dir: &std::path::Path,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let cache = data_dir.join("federation-list.jws");
        let mut state = State::default();
        match std::fs::read_to_string(&cache) {
            Ok(jws) => match SignedList::verify(&jws, &trust, SystemTime::now())
                .map_err(|e| e.to_string())
            {
                Ok(list) => {
                    let meta: Option<CacheMeta> = std::fs::read(cache.with_extension("json"))
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok());
                    state.checked_at = meta
                        .map(|m| SystemTime::UNIX_EPOCH + Duration::from_millis(m.checked_at_ms));
                    tracing::info!(
                        version = list.version(),
                        domains = list.len(),
                        "federation list loaded from the cache"
                    );
                    metrics.list_version.store(list.version(), Relaxed);
                    state.current = Some(Arc::new(list));
                }
                Err(e) => {
                    tracing::error!(error = %e, "cached federation list refused; waiting for the directory")
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!(error = %e, "cannot read the cached federation list"),
        }
        Arc::new(Self {
            config,
            trust,
            provider,
            http,
            cache,
            state: RwLock::new(state),
            metrics,
            fetching: tokio::sync::Mutex::new(None),
        })
    }

    pub fn current(&self) -> Option<Arc<SignedList>> {
        self.state.read().unwrap().current.clone()
    }

    fn age(&self, now: SystemTime) -> Option<Duration> {
        let s = self.state.read().unwrap();
        s.current.as_ref()?;
        s.checked_at
            .map(|t| now.duration_since(t).unwrap_or_default())
    }

    pub fn age_secs(&self) -> i64 {
        self.age(SystemTime::now())
            .map_or(-1, |a| a.as_secs() as i64)
    }

    pub fn status(&self) -> Status {
        let age = self.age(SystemTime::now());
        let s = self.state.read().unwrap();
        Status {
            version: s.current.as_ref().map(|l| l.version()),
            domains: s.current.as_ref().map_or(0, |l| l.len()),
            age_secs: age.map(|a| a.as_secs()),
            failures: s.failures,
            incident: s.failures >= self.config.incident_after_failures,
            last_error: s.last_error.clone(),
        }
    }

    /// `I_internVerification`: `known` is the version the homeserver holds.
    pub fn handout(&self, known: Option<i64>, now: SystemTime) -> Handout {
        let max_age = Duration::from_secs(self.config.max_age_secs);
        let s = self.state.read().unwrap();
        let (Some(list), Some(checked_at)) = (s.current.clone(), s.checked_at) else {
            return Handout::Outdated {
                reason: "no federation list yet".into(),
            };
        };
        let age = now.duration_since(checked_at).unwrap_or_default();
        if age > max_age {
            return Handout::Outdated {
                reason: format!(
                    "the directory has not confirmed the federation list for {} h (limit {} h)",
                    age.as_secs() / 3600,
                    max_age.as_secs() / 3600
                ),
            };
        }
        match known == Some(list.version()) {
            true => Handout::Current {
                version: list.version(),
                checked_at,
            },
            false => Handout::List { list, checked_at },
        }
    }

    /// One fetch from the directory. Ok: the directory answered and what it sent (if anything)
    /// was handled; a list not newer than ours is ignored.
    async fn fetch(&self) -> Result<(), String> {
        let known = self.current().map(|l| l.version());
        let answer = self
            .provider
            .federation_list(known, self.config.sig_alg)
            .await
            .map_err(|e| e.to_string())?;
        let now = SystemTime::now();
        if let Some(jws) = answer {
            let list = SignedList::verify(&jws, &self.trust, now).map_err(|e| e.to_string());
            let list = list.and_then(|l| self.check_signer(&l).map(|_| l));
            let list = match list {
                Ok(l) if self.config.ocsp => ocsp::check_chain(
                    &self.http,
                    &l.chain,
                    &self.trust,
                    self.config.ocsp_responder.as_deref(),
                    Duration::from_secs(10),
                )
                .await
                .map(|_| l)
                .map_err(|e| format!("OCSP: {e}")),
                other => other,
            };
            let list = match list {
                Ok(l) => l,
                Err(e) => {
                    self.metrics.lists_rejected.fetch_add(1, Relaxed);
                    return Err(format!("federation list refused: {e}"));
                }
            };
            match list.replaces(self.current().as_deref()) {
                Ok(()) => {
                    write_atomically(&self.cache, list.jws.as_bytes())
                        .map_err(|e| format!("cannot cache the federation list: {e}"))?;
                    tracing::info!(
                        version = list.version(),
                        domains = list.len(),
                        signer = %list.signer,
                        "federation list taken"
                    );
                    self.metrics.lists_taken.fetch_add(1, Relaxed);
                    self.metrics.list_version.store(list.version(), Relaxed);
                    self.state.write().unwrap().current = Some(Arc::new(list));
                }
                Err(ListError::NotNewer { offered, held }) => {
                    tracing::warn!(
                        offered,
                        held,
                        "directory sent a federation list not newer than ours; ignored"
                    );
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        let _ = write_atomically(
            &self.cache.with_extension("json"),
            &serde_json::to_vec(&CacheMeta {
                checked_at_ms: ms(now),
            })
            .unwrap_or_default(),
        );
        self.state.write().unwrap().checked_at = Some(now);
        Ok(())
    }

    /// The signer must be the directory's: one of the configured certificate fingerprints or
    /// subject common names (any certificate under the TI roots could sign otherwise).
    fn check_signer(&self, list: &SignedList) -> Result<(), String> {
        let (fps, names) = (
            &self.config.signer_fingerprints,
            &self.config.signer_common_names,
        );
        if fps.is_empty() && names.is_empty() {
            return Ok(());
        }
        let cn = crate::crypto::pki::common_name(&list.chain[0]).unwrap_or_default();
        match fps.iter().any(|f| f.eq_ignore_ascii_case(&list.signer)) || names.contains(&cn) {
            true => Ok(()),
            false => Err(format!(
                "signed by {cn:?} ({}), not by the directory's certificate",
                list.signer
            )),
        }
    }

    /// One round with its bookkeeping (failures, incident); returns whether it went well.
    pub async fn refresh(&self) -> bool {
        self.refresh_unless_within(None).await
    }

    /// `refresh`, unless a fetch ended within `min_interval` (decided under the fetch lock, so
    /// concurrent callers make one fetch).
    async fn refresh_unless_within(&self, min_interval: Option<Duration>) -> bool {
        let mut last = self.fetching.lock().await;
        if let (Some(min), Some(t)) = (min_interval, *last)
            && t.elapsed() < min
        {
            return self.state.read().unwrap().failures == 0;
        }
        let result = self.fetch().await;
        *last = Some(std::time::Instant::now());
        let incident_after = self.config.incident_after_failures;
        let mut s = self.state.write().unwrap();
        match result {
            Ok(()) => {
                self.metrics.list_checks.fetch_add(1, Relaxed);
                if s.failures >= incident_after {
                    tracing::info!("federation list incident over: the directory answers again");
                }
                s.failures = 0;
                s.last_error = None;
                self.metrics.incident.store(0, Relaxed);
                true
            }
            Err(e) => {
                self.metrics.list_failures.fetch_add(1, Relaxed);
                s.failures += 1;
                if s.failures == incident_after {
                    self.metrics.incident.store(1, Relaxed);
                    self.metrics.incidents.fetch_add(1, Relaxed);
                    tracing::error!(
                        failures = s.failures,
                        error = %e,
                        version = ?s.current.as_ref().map(|l| l.version()),
                        "INCIDENT: federation list could not be fetched {} times in a row; the last good list stays in force",
                        s.failures
                    );
                } else {
                    tracing::warn!(failures = s.failures, error = %e, "federation list fetch failed");
                }
                s.last_error = Some(e);
                false
            }
        }
    }

    /// A fetch now unless one ran within `min_interval` (a homeserver met an unknown domain,
    /// A-FED-10).
    pub async fn refresh_soon(&self, min_interval: Duration) {
        self.refresh_unless_within(Some(min_interval)).await;
    }

    /// Fetches now, then hourly, or every `retry_secs` while fetches fail.
    pub async fn run(self: Arc<Self>) {
        loop {
            let ok = self.refresh().await;
            let wait = Duration::from_secs(if ok {
                self.config.refresh_secs
            } else {
                self.config.retry_secs
            });
            tokio::time::sleep(wait).await;
        }
    }
}
