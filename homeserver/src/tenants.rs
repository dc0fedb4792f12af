//! The homeservers (tenants) this process serves, looked up by the request's Host. Tenants
//! added at runtime are remembered in `{data_dir}/tenants.json` and opened again at start.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use ruma::{OwnedServerName, ServerName};

use crate::{
    config::{Config, DatabaseLocation},
    error::{Error, Result},
    homeserver::Homeserver,
};

#[derive(Clone)]
pub struct Tenants(Arc<Inner>);

struct Inner {
    config: Arc<Config>,
    default: OwnedServerName,
    by_name: RwLock<BTreeMap<OwnedServerName, Arc<Homeserver>>>,
    /// Serialises add/remove so the registry file and the map agree.
    changes: tokio::sync::Mutex<()>,
}

impl Tenants {
    /// Opens the default tenant and every tenant in the registry.
    pub async fn open(config: Arc<Config>) -> Result<Self> {
        let default = ServerName::parse(&config.server_name).map_err(Error::internal)?;
        let tenants = Tenants(Arc::new(Inner {
            config: config.clone(),
            default: default.clone(),
            by_name: RwLock::default(),
            changes: Default::default(),
        }));
        let mut names = tenants.registry()?;
        names.retain(|n| *n != default);
        names.insert(0, default);
        for name in names {
            let hs = Homeserver::open(name.clone(), config.clone()).await?;
            tenants
                .0
                .by_name
                .write()
                .expect("tenants lock")
                .insert(name, hs);
        }
        Ok(tenants)
    }

    fn registry_path(&self) -> PathBuf {
        self.0.config.data_dir.join("tenants.json")
    }

    fn registry(&self) -> Result<Vec<OwnedServerName>> {
        match std::fs::read_to_string(self.registry_path()) {
            Ok(s) => serde_json::from_str(&s)
                .map_err(|e| Error::internal(format!("tenants.json unreadable: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
            Err(e) => Err(Error::internal(e)),
        }
    }

    fn save_registry(&self) -> Result<()> {
        let names: Vec<OwnedServerName> = self
            .0
            .by_name
            .read()
            .expect("tenants lock")
            .keys()
            .filter(|n| **n != self.0.default)
            .cloned()
            .collect();
        std::fs::create_dir_all(&self.0.config.data_dir).map_err(Error::internal)?;
        let tmp = self.registry_path().with_extension("json.tmp");
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(&names).map_err(Error::internal)?,
        )
        .map_err(Error::internal)?;
        std::fs::rename(&tmp, self.registry_path()).map_err(Error::internal)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.0.config
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
            .cloned()
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

    /// The tenant for a Host header: the server name itself (port ignored). Hosts that name no
    /// tenant (an IP address, `localhost` while the default tenant has another name) reach the
    /// default tenant, so a single-tenant set-up works behind any address.
    pub fn by_host(&self, host: &str) -> Option<Arc<Homeserver>> {
        let name = strip_port(host);
        let map = self.0.by_name.read().expect("tenants lock");
        if let Ok(server_name) = ServerName::parse(name)
            && let Some(hs) = map.get(&server_name)
        {
            return Some(hs.clone());
        }
        if let Ok(server_name) = ServerName::parse(host)
            && let Some(hs) = map.get(&server_name)
        {
            return Some(hs.clone());
        }
        map.get(&self.0.default).cloned()
    }

    pub async fn add(&self, name: OwnedServerName) -> Result<bool> {
        let _g = self.0.changes.lock().await;
        if self.get(&name).is_some() {
            return Ok(false);
        }
        let hs = Homeserver::open(name.clone(), self.0.config.clone()).await?;
        self.0
            .by_name
            .write()
            .expect("tenants lock")
            .insert(name.clone(), hs);
        self.save_registry()?;
        tracing::info!(tenant = %name, "tenant added");
        Ok(true)
    }

    /// Stops serving a tenant. With `delete_data`, its database is removed too.
    pub async fn remove(&self, name: &ServerName, delete_data: bool) -> Result<bool> {
        if *name == self.0.default {
            return Err(Error::forbidden("the default tenant cannot be removed"));
        }
        let _g = self.0.changes.lock().await;
        let Some(hs) = self.0.by_name.write().expect("tenants lock").remove(name) else {
            return Ok(false);
        };
        self.save_registry()?;
        hs.close().await;
        if delete_data {
            match DatabaseLocation::parse(&self.0.config.database_url).map_err(Error::internal)? {
                DatabaseLocation::SqliteDir(dir) => {
                    for suffix in ["", "-wal", "-shm"] {
                        let _ = std::fs::remove_file(dir.join(format!("{name}.db{suffix}")));
                    }
                }
                DatabaseLocation::Postgres(url) => {
                    crate::store::drop_tenant_schema(&url, name.as_str()).await?
                }
            }
            let media = crate::homeserver::media_dir(&self.0.config, name);
            if let Err(e) = std::fs::remove_dir_all(&media)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(tenant = %name, error = %e, "media folder not removed");
            }
        }
        tracing::info!(tenant = %name, delete_data, "tenant removed");
        Ok(true)
    }

    pub async fn close(&self) {
        let all: Vec<Arc<Homeserver>> = self
            .0
            .by_name
            .read()
            .expect("tenants lock")
            .values()
            .cloned()
            .collect();
        for hs in all {
            hs.close().await;
        }
    }
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
}
