//! The configuration of `tim-vzd-sync`: one TOML file, every key overridable by a
//! `TIM_VZD_`-prefixed environment variable (nested keys joined with `__`, e.g.
//! `TIM_VZD_DIRECTORY__CLIENT_SECRET`). The doc comment of each field is the reference;
//! `tim-vzd-sync.example.toml` shows them all.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use crate::crypto::Alg;

/// A secret string that never prints.
#[derive(Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "Secret()"
        } else {
            "Secret(..)"
        })
    }
}

/// The whole configuration.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the internal API (`I_internVerification` for our homeservers, the domain and
    /// directory-entry management for the registration service and org-admin backend).
    /// Internal: do not expose it to the internet.
    pub listen: SocketAddr,
    /// Address of the directory search the messenger clients call
    /// (`GET /_tim/directory/v1/search`, authenticated with the user's Matrix OpenID token).
    /// Public: put it behind the same TLS front as the homeserver.
    pub search_listen: SocketAddr,
    /// Folder of the federation-list cache (`federation-list.jws`) and the internal token.
    pub data_dir: PathBuf,
    /// `sqlite://FILE` (the embedded default) or `postgres://user@host:port/db`: the domains
    /// and directory entries as configured, and the changes still to be made in the directory.
    pub database_url: String,
    /// PostgreSQL schema of our tables (made when missing).
    pub database_schema: String,
    /// Bearer token of the internal API. Empty: one is made on first start and kept in
    /// `{data_dir}/internal.token`.
    pub internal_token: Secret,
    /// Where our homeservers answer, by Matrix domain (e.g. `"praxis.example.de" =
    /// "http://127.0.0.1:8008"`), to check users' OpenID tokens; domains not listed are found
    /// through `https://<domain>/.well-known/matrix/server`.
    pub homeservers: BTreeMap<String, String>,
    /// The VZD-FHIR-Directory and our provider credentials.
    pub directory: DirectoryConfig,
    /// Fetching, verifying and handing on the federation list.
    pub federation_list: FederationListConfig,
    /// Our RegService identity towards the directory's owner interface.
    pub owner: OwnerConfig,
    /// Retries of changes the directory did not take yet.
    pub reconcile: ReconcileConfig,
    /// `human` or `json` log lines.
    pub log_format: LogFormat,
    /// Log filter in `tracing` syntax.
    pub log_level: String,
}

/// Where the directory is and who we are to it (D-AUTH-03, D-ENV-01).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The directory's base URL: `…/tim-provider-services`, `/ti-provider-authenticate`,
    /// `/owner-authenticate`, `/tim-authenticate`, `/owner` and `/search` hang off it.
    /// RU: `https://fhir-directory-ref.vzd.ti-dienste.de`, PU:
    /// `https://fhir-directory.vzd.ti-dienste.de`.
    pub base_url: String,
    /// The directory's OAuth token endpoint for provider client credentials, e.g.
    /// `https://auth-ref.vzd.ti-dienste.de:9443/auth/realms/TI-Provider/protocol/openid-connect/token`.
    pub token_url: String,
    /// Our TI-Provider client id (requested through TI-ITSM, B-ADM-05).
    pub client_id: String,
    /// Its secret.
    pub client_secret: Secret,
    /// Timeout of one directory request in milliseconds. An answer within 10 s counts as the
    /// directory being healthy (B-FL-01).
    pub request_timeout_ms: u64,
}

/// The federation list (B-FL-01..05).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FederationListConfig {
    /// PEM or DER files of the pinned TI root CAs the list's signer must chain to.
    pub trust_anchors: Vec<PathBuf>,
    /// PEM or DER files of TI sub-CAs (the list carries only its signer certificate).
    pub intermediates: Vec<PathBuf>,
    /// SHA-256 fingerprints (hex) of the directory's list-signing certificates. With these or
    /// `signer_common_names` set, a list signed by any other certificate is refused; with
    /// neither, any certificate chaining to the TI roots is taken (a warning at start).
    pub signer_fingerprints: Vec<String>,
    /// Subject common names of the directory's list-signing certificates.
    pub signer_common_names: Vec<String>,
    /// Signature algorithm asked for: `BP256R1` (the TI default) or `ES256`.
    pub sig_alg: Alg,
    /// Check every certificate of the signer's chain by OCSP before a list is taken (A_25635).
    pub ocsp: bool,
    /// OCSP responder to ask instead of the one the certificates name (the TI's OCSP proxy).
    pub ocsp_responder: Option<String>,
    /// Seconds between regular fetches.
    pub refresh_secs: u64,
    /// Seconds between attempts after a failed fetch.
    pub retry_secs: u64,
    /// Failed fetches in a row that raise an incident (logged at error, metric
    /// `tim_vzd_federation_list_incident` = 1); the last good list stays in force.
    pub incident_after_failures: u32,
    /// Seconds after the last successful check with the directory from which the list counts
    /// as outdated: `I_internVerification` then answers 503 and homeservers stop federating
    /// (A-FED-16, 72 h).
    pub max_age_secs: u64,
}

/// The RegService-OpenID-Token (B-TOK-01) with which organisations' entries are written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OwnerConfig {
    /// PEM private key (brainpoolP256r1) of our registration service's TI signature
    /// certificate (C.FD.SIG, role `oid_tim`). Unset: organisations' entries cannot be written.
    pub signing_key_file: Option<PathBuf>,
    /// That certificate (PEM or DER), sent in the token's `x5c`; its hash is registered with
    /// the directory together with our provider credentials.
    pub signing_cert_file: Option<PathBuf>,
    /// `iss` of our tokens: the URL of our registration service's token endpoint.
    pub issuer: String,
    /// Lifetime of one token in seconds (it is exchanged at once).
    pub token_lifetime_secs: u64,
}

impl Default for OwnerConfig {
    fn default() -> Self {
        Self {
            signing_key_file: None,
            signing_cert_file: None,
            issuer: "https://localhost/regservice/openid".into(),
            token_lifetime_secs: 300,
        }
    }
}

/// Retries of pending directory changes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileConfig {
    /// First retry delay in milliseconds; doubles per failed attempt.
    pub retry_initial_ms: u64,
    /// Longest retry delay in milliseconds.
    pub retry_max_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Human,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8010)),
            search_listen: SocketAddr::from(([127, 0, 0, 1], 8011)),
            data_dir: PathBuf::from("./data/vzd-sync"),
            database_url: "sqlite://./data/vzd-sync/vzd-sync.db".into(),
            database_schema: "tim_vzd_sync".into(),
            internal_token: Secret::default(),
            homeservers: BTreeMap::new(),
            directory: DirectoryConfig::default(),
            federation_list: FederationListConfig::default(),
            owner: OwnerConfig::default(),
            reconcile: ReconcileConfig::default(),
            log_format: LogFormat::Human,
            log_level: "info".into(),
        }
    }
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            token_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            request_timeout_ms: 10_000,
        }
    }
}

impl Default for FederationListConfig {
    fn default() -> Self {
        Self {
            trust_anchors: vec![],
            intermediates: vec![],
            signer_fingerprints: vec![],
            signer_common_names: vec![],
            sig_alg: Alg::BP256R1,
            ocsp: true,
            ocsp_responder: None,
            refresh_secs: 3600,
            retry_secs: 300,
            incident_after_failures: 3,
            max_age_secs: 72 * 3600,
        }
    }
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        Self {
            retry_initial_ms: 1_000,
            retry_max_ms: 5 * 60_000,
        }
    }
}

impl Config {
    /// Defaults, then the file (if any), then `TIM_VZD_*` variables.
    pub fn load(path: Option<&std::path::Path>) -> Result<Self, String> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            if !path.exists() {
                return Err(format!("config file {} does not exist", path.display()));
            }
            figment = figment.merge(Toml::file(path));
        }
        let config: Config = figment
            .merge(Env::prefixed("TIM_VZD_").split("__"))
            .extract()
            .map_err(|e| format!("configuration: {e}"))?;
        Ok(config)
    }

    /// What `serve` needs: the directory and its credentials, and trust anchors for the list.
    pub fn validate(&self) -> Result<(), String> {
        let d = &self.directory;
        let mut missing = vec![];
        if d.base_url.is_empty() {
            missing.push("directory.base_url");
        }
        if d.token_url.is_empty() {
            missing.push("directory.token_url");
        }
        if d.client_id.is_empty() {
            missing.push("directory.client_id");
        }
        if d.client_secret.is_empty() {
            missing.push("directory.client_secret");
        }
        if self.federation_list.trust_anchors.is_empty() {
            missing.push("federation_list.trust_anchors");
        }
        if !missing.is_empty() {
            return Err(format!(
                "not configured: {} (the directory's provider credentials come from gematik through TI-ITSM; see tim-vzd-sync.example.toml)",
                missing.join(", ")
            ));
        }
        for url in [&d.base_url, &d.token_url] {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(format!("{url:?} is not an http(s) URL"));
            }
        }
        if self.owner.signing_key_file.is_some() != self.owner.signing_cert_file.is_some() {
            return Err("owner.signing_key_file and owner.signing_cert_file go together".into());
        }
        let f = &self.federation_list;
        if f.refresh_secs == 0 || f.retry_secs == 0 || f.incident_after_failures == 0 {
            return Err("federation_list: refresh_secs, retry_secs and incident_after_failures must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_is_the_defaults() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tim-vzd-sync.example.toml");
        let loaded = Config::load(Some(&path)).unwrap();
        assert_eq!(format!("{loaded:?}"), format!("{:?}", Config::default()));
    }

    #[test]
    fn serve_needs_credentials_and_anchors() {
        let err = Config::default().validate().unwrap_err();
        for key in [
            "directory.base_url",
            "directory.client_secret",
            "federation_list.trust_anchors",
        ] {
            assert!(err.contains(key), "{err}");
        }
        let mut c = Config::default();
        c.directory.base_url = "https://vzd.example".into();
        c.directory.token_url = "https://auth.vzd.example/token".into();
        c.directory.client_id = "id".into();
        c.directory.client_secret = Secret::new("s");
        c.federation_list.trust_anchors = vec!["root.pem".into()];
        c.validate().unwrap();
        assert_eq!(format!("{:?}", c.directory.client_secret), "Secret(..)");
    }
}
