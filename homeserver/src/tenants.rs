//! The homeservers (tenants) this process serves, looked up by the request's Host. Tenants
//! added at runtime are remembered in `{data_dir}/tenants.json` and opened again at start.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::{Component, Path, PathBuf},
    sync::{Arc, RwLock},
};

use ruma::{OwnedServerName, ServerName};

use crate::{
    accounts::hashing::PasswordHashing,
    config::{Config, DatabaseLocation},
    error::{Error, Result},
    federation::transport::HttpsTransport,
    homeserver::{Homeserver, Shared},
    net::TrustedProxies,
    store::lock::{TenantLock, TenantLocks},
};

#[derive(Clone)]
pub struct Tenants(Arc<Inner>);

struct Inner {
    config: Arc<Config>,
    default: OwnedServerName,
    by_name: RwLock<BTreeMap<OwnedServerName, Served>>,
    /// Each served tenant's database is locked to this process: two processes serving one
    /// tenant would hand out the same stream positions and diverge.
    locks: TenantLocks,
    /// Password hashing, federation transport and clock, shared by every tenant.
    shared: Shared,
    /// Serialises add/remove so the registry file and the map agree.
    changes: tokio::sync::Mutex<()>,
    trusted_proxies: TrustedProxies,
}

struct Served {
    hs: Arc<Homeserver>,
    lock: TenantLock,
}

impl Tenants {
    /// Opens the default tenant and every tenant in the registry.
    pub async fn open(config: Arc<Config>) -> Result<Self> {
        let default = tenant_name(&config.server_name).map_err(Error::internal)?;
        let locks = TenantLocks::new(
            &DatabaseLocation::parse(&config.database_url).map_err(Error::internal)?,
        )?;
        let clock = crate::clock::system();
        let tenants = Tenants(Arc::new(Inner {
            shared: Shared {
                hashing: Arc::new(PasswordHashing::new(&config.argon2)?),
                federation_transport: Arc::new(
                    HttpsTransport::new(&config.federation, clock.clone())
                        .map_err(|e| Error::internal(format!("federation: {e}")))?,
                ),
                clock,
            },
            config: config.clone(),
            default: default.clone(),
            by_name: RwLock::default(),
            locks,
            changes: Default::default(),
            trusted_proxies: TrustedProxies::new(
                &config.trusted_proxies,
                &config.trusted_proxy_header,
            ),
        }));
        let mut names = tenants.registry()?;
        names.retain(|n| *n != default);
        names.insert(0, default);
        for name in names {
            let served = tenants.open_tenant(&name).await?;
            tenants
                .0
                .by_name
                .write()
                .expect("tenants lock")
                .insert(name, served);
        }
        Ok(tenants)
    }

    async fn open_tenant(&self, name: &OwnedServerName) -> Result<Served> {
        let lock = self.0.locks.acquire(name.as_str()).await?;
        match Homeserver::open(name.clone(), self.0.config.clone(), &self.0.shared).await {
            Ok(hs) => Ok(Served { hs, lock }),
            Err(e) => {
                self.0.locks.release(lock).await;
                Err(e)
            }
        }
    }

    fn registry_path(&self) -> PathBuf {
        self.0.config.data_dir.join("tenants.json")
    }

    fn registry(&self) -> Result<Vec<OwnedServerName>> {
        let names: Vec<String> = match std::fs::read_to_string(self.registry_path()) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| Error::internal(format!("tenants.json unreadable: {e}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
            Err(e) => return Err(Error::internal(e)),
        };
        names
            .iter()
            .map(|n| {
                tenant_name(n).map_err(|e| Error::internal(format!("tenants.json: {n:?}: {e}")))
            })
            .collect()
    }

    /// Writes the registry durably: the new file is on disk before it replaces the old one,
    /// and the rename is on disk before we return.
    fn save_registry(&self, names: &[OwnedServerName]) -> Result<()> {
        use std::io::Write;
        let dir = &self.0.config.data_dir;
        std::fs::create_dir_all(dir).map_err(Error::internal)?;
        let tmp = self.registry_path().with_extension("json.tmp");
        let mut file = std::fs::File::create(&tmp).map_err(Error::internal)?;
        file.write_all(&serde_json::to_vec_pretty(names).map_err(Error::internal)?)
            .map_err(Error::internal)?;
        file.sync_all().map_err(Error::internal)?;
        std::fs::rename(&tmp, self.registry_path()).map_err(Error::internal)?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(Error::internal)
    }

    /// The registered tenants (all but the default one), changed by `edit`.
    fn registered_with(
        &self,
        edit: impl FnOnce(&mut Vec<OwnedServerName>),
    ) -> Vec<OwnedServerName> {
        let mut names: Vec<OwnedServerName> = self
            .0
            .by_name
            .read()
            .expect("tenants lock")
            .keys()
            .filter(|n| **n != self.0.default)
            .cloned()
            .collect();
        edit(&mut names);
        names
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.0.config
    }

    /// The reverse proxies whose forwarded client addresses are believed.
    pub fn trusted_proxies(&self) -> &TrustedProxies {
        &self.0.trusted_proxies
    }

    pub fn default_tenant(&self) -> Arc<Homeserver> {
        self.get(&self.0.default)
            .expect("default tenant is always served")
    }

    pub fn get(&self, name: &ServerName) -> Option<Arc<Homeserver>> {
        self.0
            .by_name
            .read()
            .expect("tenants lock")
            .get(name)
            .map(|s| s.hs.clone())
    }

    pub fn names(&self) -> Vec<OwnedServerName> {
        self.0
            .by_name
            .read()
            .expect("tenants lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The tenant a Host header names: compared without port, letter case or a trailing dot
    /// (A-ARCH-04: an organisation's clients reach only its own homeserver). A Host that names
    /// no tenant gets none — except, where `default_tenant_on_listen_address` is on, the
    /// address the client connected to (`local`), which stands for the default tenant.
    pub fn by_host(&self, host: &str, local: Option<IpAddr>) -> Option<Arc<Homeserver>> {
        let host = normalise_host(host);
        if let Ok(name) = ServerName::parse(&host)
            && let Some(hs) = self.get(&name)
        {
            return Some(hs);
        }
        let dialled = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok();
        if self.0.config.default_tenant_on_listen_address && dialled.is_some() && dialled == local {
            return self.get(&self.0.default);
        }
        None
    }

    /// Starts serving a tenant: its database is opened and locked and the registry saved
    /// before the first request can reach it.
    pub async fn add(&self, name: OwnedServerName) -> Result<bool> {
        let _g = self.0.changes.lock().await;
        if self.get(&name).is_some() {
            return Ok(false);
        }
        let served = self.open_tenant(&name).await?;
        let names = self.registered_with(|n| n.push(name.clone()));
        if let Err(e) = self.save_registry(&names) {
            served.hs.close().await;
            self.0.locks.release(served.lock).await;
            return Err(e);
        }
        self.0
            .by_name
            .write()
            .expect("tenants lock")
            .insert(name.clone(), served);
        tracing::info!(tenant = %name, "tenant added");
        Ok(true)
    }

    /// Stops serving a tenant. With `delete_data`, its database is removed too.
    pub async fn remove(&self, name: &ServerName, delete_data: bool) -> Result<bool> {
        if *name == self.0.default {
            return Err(Error::forbidden("the default tenant cannot be removed"));
        }
        let _g = self.0.changes.lock().await;
        if self.get(name).is_none() {
            return Ok(false);
        }
        let names = self.registered_with(|n| n.retain(|n| n != name));
        self.save_registry(&names)?;
        let Some(served) = self.0.by_name.write().expect("tenants lock").remove(name) else {
            return Ok(false);
        };
        served.hs.close().await;
        if delete_data {
            match DatabaseLocation::parse(&self.0.config.database_url).map_err(Error::internal)? {
                DatabaseLocation::SqliteDir(dir) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let file = child_path(&dir, &format!("{name}.db{suffix}"))?;
                        let _ = std::fs::remove_file(file);
                    }
                }
                DatabaseLocation::Postgres(url) => {
                    crate::store::drop_tenant_schema(&url, name.as_str()).await?
                }
            }
            let media = crate::homeserver::media_dir(&self.0.config, name)?;
            if let Err(e) = std::fs::remove_dir_all(&media)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(tenant = %name, error = %e, "media folder not removed");
            }
        }
        self.0.locks.release(served.lock).await;
        tracing::info!(tenant = %name, delete_data, "tenant removed");
        Ok(true)
    }

    pub async fn close(&self) {
        let all: Vec<OwnedServerName> = self.names();
        for name in all {
            let served = self.0.by_name.write().expect("tenants lock").remove(&name);
            if let Some(served) = served {
                served.hs.close().await;
                self.0.locks.release(served.lock).await;
            }
        }
    }
}

/// A tenant's name checked as a DNS host name: dot-separated labels of 1 to 63 characters
/// `a-z 0-9 -` (no hyphen at either end), 253 characters at most, lower case, no port, not an
/// IP address. Names become database files, schemas and media folders, so nothing else passes.
pub fn tenant_name(name: &str) -> std::result::Result<OwnedServerName, String> {
    if name.is_empty() || name.len() > 253 {
        return Err("a tenant name has 1 to 253 characters".into());
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err("a tenant name is a DNS name, not an IP address".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each label of a tenant name has 1 to 63 characters".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err("tenant names use lower-case a-z, 0-9, '-' and '.' only".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label of a tenant name cannot start or end with '-'".into());
        }
    }
    ServerName::parse(name).map_err(|e| e.to_string())
}

/// `parent/name` where `name` is one plain path component, so the result stays inside `parent`.
pub fn child_path(parent: &Path, name: &str) -> Result<PathBuf> {
    let mut components = Path::new(name).components();
    match (components.next(), components.next()) {
        (Some(Component::Normal(c)), None) if c == name => Ok(parent.join(c)),
        _ => Err(Error::internal(format!(
            "{name:?} is not a plain file name"
        ))),
    }
}

/// A Host header as a name: lower case, without port and trailing dot.
fn normalise_host(host: &str) -> String {
    let host = strip_port(host.trim());
    host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase()
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .split(']')
            .next()
            .map(|h| &host[..h.len() + 1])
            .unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_stripped() {
        assert_eq!(super::strip_port("a.example:8008"), "a.example");
        assert_eq!(super::strip_port("a.example"), "a.example");
        assert_eq!(super::strip_port("[::1]:80"), "[::1]");
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(super::normalise_host("A.Example.:8448"), "a.example");
        assert_eq!(super::normalise_host("a.example."), "a.example");
    }

    #[test]
    fn tenant_names_are_dns_names() {
        for good in [
            "localhost",
            "a.example",
            "praxis-1.tim.example.org",
            "x1.test",
        ] {
            super::tenant_name(good).unwrap();
        }
        for bad in [
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "A.example",
            "a.example:8448",
            "127.0.0.1",
            "[::1]",
            "-a.example",
            "a-.example",
            "a_b.example",
            "a/b",
            "a\\b",
            &"a".repeat(64),
            &format!("{}.x", "a.".repeat(130)),
        ] {
            assert!(super::tenant_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn child_paths_stay_inside() {
        let p = std::path::Path::new("/data");
        assert!(super::child_path(p, "a.example").is_ok());
        for bad in ["..", ".", "", "a/b", "/etc", "../x"] {
            assert!(super::child_path(p, bad).is_err(), "{bad:?}");
        }
    }
}
