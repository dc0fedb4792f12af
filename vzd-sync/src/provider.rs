//! The directory's provider interface (`I_VZD_TIM_Provider_Services` 1.4.0): our messenger
//! domains in the federation list (B-PROV-01..03), `federationCheck`, `localization`, and the
//! signed federation list itself (B-FL-02). Authenticated with the provider token (D-AUTH-03):
//! client credentials at the directory's OAuth server, exchanged at `/ti-provider-authenticate`
//! for the provider access token, which is kept and renewed shortly before it expires.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{config::DirectoryConfig, crypto::Alg, directory_error::DirectoryError};

/// A domain entry as the provider interface reads and writes it (schema `Domain`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub domain: String,
    #[serde(rename = "telematikID")]
    pub telematik_id: String,
    #[serde(rename = "isInsurance", default)]
    pub is_insurance: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ik: Vec<String>,
    /// Read-only: the directory fills in the provider's ITSM assignment group.
    #[serde(
        rename = "timAnbieter",
        alias = "timProvider",
        default,
        skip_serializing
    )]
    pub tim_anbieter: Option<String>,
    #[serde(
        rename = "redirectDomains",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub redirect_domains: Vec<String>,
}

impl Domain {
    /// The rules of B-PROV-02/03, checked before anything goes to the directory.
    pub fn validate(&self) -> Result<(), String> {
        crate::ik::validate_domain_name(&self.domain)?;
        if self.telematik_id.trim().is_empty() {
            return Err("telematikID is empty".into());
        }
        crate::ik::validate_iks(self.is_insurance, &self.ik)?;
        for r in &self.redirect_domains {
            crate::ik::validate_domain_name(r)?;
        }
        Ok(())
    }

    /// Same content as far as we write it (`timAnbieter` is the directory's).
    pub fn same_as(&self, other: &Domain) -> bool {
        let mut a = self.clone();
        let mut b = other.clone();
        a.tim_anbieter = None;
        b.tim_anbieter = None;
        a.ik.sort();
        b.ik.sort();
        a.redirect_domains.sort();
        b.redirect_domains.sort();
        a == b
    }
}

/// In which part of the directory an MXID is (`whereIs`, D-LOC-01).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Localization {
    Org,
    Pract,
    OrgPract,
    None,
}

/// A token answer of the directory (`access_token`, `expires_in`).
#[derive(Deserialize)]
pub(crate) struct TokenAnswer {
    pub access_token: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

/// A token held, and when to renew it.
pub(crate) struct Token {
    pub value: String,
    pub renew_at: Instant,
}

/// A client of the provider interface.
pub struct ProviderClient {
    http: reqwest::Client,
    config: DirectoryConfig,
    token: Mutex<Option<Token>>,
}

/// How long before its end a token is renewed: a tenth of its lifetime, at least 30 s.
pub(crate) fn renew_at(obtained: Instant, lifetime: Duration) -> Instant {
    let margin = (lifetime / 10).max(Duration::from_secs(30)).min(lifetime);
    obtained + lifetime - margin
}

impl ProviderClient {
    pub fn new(http: reqwest::Client, config: DirectoryConfig) -> Self {
        Self {
            http,
            config,
            token: Mutex::new(None),
        }
    }

    fn url(&self, path: &str) -> String {
        format!(
            "{}/tim-provider-services{path}",
            self.config.base_url.trim_end_matches('/')
        )
    }

    /// The provider access token, fetched or renewed when needed.
    async fn token(&self) -> Result<String, DirectoryError> {
        let mut held = self.token.lock().await;
        if let Some(t) = held.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(t.value.clone());
        }
        let token = self.authenticate().await?;
        let value = token.value.clone();
        *held = Some(token);
        Ok(value)
    }

    async fn forget_token(&self) {
        *self.token.lock().await = None;
    }

    /// Client credentials → OAuth token → `/ti-provider-authenticate` → provider token.
    async fn authenticate(&self) -> Result<Token, DirectoryError> {
        let timeout = Duration::from_millis(self.config.request_timeout_ms);
        let response = self
            .http
            .post(&self.config.token_url)
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.expose()),
            )
            .form(&[("grant_type", "client_credentials")])
            .timeout(timeout)
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if !response.status().is_success() {
            return Err(DirectoryError::from_response(response).await);
        }
        let oauth: TokenAnswer = response
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        let started = Instant::now();
        let response = self
            .http
            .get(format!(
                "{}/ti-provider-authenticate",
                self.config.base_url.trim_end_matches('/')
            ))
            .bearer_auth(&oauth.access_token)
            .timeout(timeout)
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if !response.status().is_success() {
            return Err(DirectoryError::from_response(response).await);
        }
        let provider: TokenAnswer = response
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        let lifetime = Duration::from_secs(provider.expires_in.unwrap_or(300));
        tracing::info!(
            valid_secs = lifetime.as_secs(),
            "provider token obtained from the directory"
        );
        Ok(Token {
            value: provider.access_token,
            renew_at: renew_at(started, lifetime),
        })
    }

    /// Sends an authenticated request; a 401 drops the token and tries once more with a new one.
    async fn send(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, DirectoryError> {
        for attempt in 0..2 {
            let token = self.token().await?;
            let response = build(&self.http)
                .bearer_auth(token)
                .timeout(Duration::from_millis(self.config.request_timeout_ms))
                .send()
                .await
                .map_err(DirectoryError::from_reqwest)?;
            if response.status() == reqwest::StatusCode::UNAUTHORIZED && attempt == 0 {
                self.forget_token().await;
                continue;
            }
            return Ok(response);
        }
        unreachable!("the loop returns on its second pass")
    }

    async fn ok(response: reqwest::Response) -> Result<reqwest::Response, DirectoryError> {
        match response.status().is_success() {
            true => Ok(response),
            false => Err(DirectoryError::from_response(response).await),
        }
    }

    /// `POST /federation`: adds a domain (409 when it exists).
    pub async fn add_domain(&self, domain: &Domain) -> Result<Domain, DirectoryError> {
        let r = self
            .send(|c| c.post(self.url("/federation")).json(domain))
            .await?;
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `PUT /federation/{domain}`.
    pub async fn update_domain(&self, domain: &Domain) -> Result<Domain, DirectoryError> {
        let url = self.url(&format!("/federation/{}", path_segment(&domain.domain)));
        let r = self.send(|c| c.put(&url).json(domain)).await?;
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `DELETE /federation/{domain}` (204).
    pub async fn delete_domain(&self, domain: &str) -> Result<(), DirectoryError> {
        let url = self.url(&format!("/federation/{}", path_segment(domain)));
        let r = self.send(|c| c.delete(&url)).await?;
        Self::ok(r).await.map(|_| ())
    }

    /// `GET /federation[?domain=]`: our domains, or the one named (None when unknown).
    pub async fn domains(&self, domain: Option<&str>) -> Result<Vec<Domain>, DirectoryError> {
        let r = self
            .send(|c| {
                let b = c.get(self.url("/federation"));
                match domain {
                    Some(d) => b.query(&[("domain", d)]),
                    None => b,
                }
            })
            .await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(vec![]);
        }
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `GET /federationCheck`: our domains whose organisation is no longer active.
    pub async fn federation_check(&self) -> Result<Vec<Domain>, DirectoryError> {
        #[derive(Deserialize)]
        struct Answer {
            #[serde(rename = "inactiveOrganizationDomains", default)]
            inactive: Vec<Domain>,
        }
        let r = self.send(|c| c.get(self.url("/federationCheck"))).await?;
        if r.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(vec![]);
        }
        let a: Answer = Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        Ok(a.inactive)
    }

    /// `GET /localization?mxid=matrix:u/<localpart>:<domain>` (404 = not in the directory).
    pub async fn localization(&self, mxid: &str) -> Result<Localization, DirectoryError> {
        let uri = crate::fhir::matrix_uri(mxid)
            .ok_or_else(|| DirectoryError::BadAnswer(format!("{mxid:?} is not a Matrix ID")))?;
        let r = self
            .send(|c| c.get(self.url("/localization")).query(&[("mxid", &uri)]))
            .await?;
        if r.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Localization::None);
        }
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `GET /FederationList/federationList.jws?version=&sigAlg=`: the signed list if newer
    /// than `known` (200), or None (204).
    pub async fn federation_list(
        &self,
        known: Option<i64>,
        alg: Alg,
    ) -> Result<Option<String>, DirectoryError> {
        let r = self
            .send(|c| {
                let b = c
                    .get(self.url("/FederationList/federationList.jws"))
                    .query(&[("sigAlg", alg.as_str())]);
                match known {
                    Some(v) => b.query(&[("version", v)]),
                    None => b,
                }
            })
            .await?;
        if r.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = Self::ok(r)
            .await?
            .text()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        Ok(Some(body))
    }
}

/// A domain as one URL path segment.
fn path_segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_before_they_end() {
        let t0 = Instant::now();
        assert_eq!(
            renew_at(t0, Duration::from_secs(86400)),
            t0 + Duration::from_secs(86400 - 8640)
        );
        assert_eq!(
            renew_at(t0, Duration::from_secs(300)),
            t0 + Duration::from_secs(270)
        );
        assert_eq!(renew_at(t0, Duration::from_secs(10)), t0);
    }

    #[test]
    fn domain_body_is_the_gematik_schema() {
        let d = Domain {
            domain: "kk.example.de".into(),
            telematik_id: "8-01".into(),
            is_insurance: true,
            ik: vec!["108433248".into()],
            tim_anbieter: Some("ORG-1".into()),
            redirect_domains: vec!["kk-redirect.example.de".into()],
        };
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            serde_json::json!({"domain": "kk.example.de", "telematikID": "8-01",
                "isInsurance": true, "ik": ["108433248"],
                "redirectDomains": ["kk-redirect.example.de"]})
        );
        d.validate().unwrap();
        let mut bad = d.clone();
        bad.ik = vec!["108433249".into()];
        assert!(bad.validate().is_err());
        let parsed: Domain = serde_json::from_value(serde_json::json!({"domain": "a.de",
            "telematikID": "1", "isInsurance": false, "timAnbieter": "ORG-1"}))
        .unwrap();
        assert_eq!(parsed.tim_anbieter.as_deref(), Some("ORG-1"));
    }
}
