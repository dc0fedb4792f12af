//! The directory's owner interface (`I_VZD_Owner`, D-AUTH-02, D-ORG-01): an organisation's
//! RegService-OpenID-Token exchanged at `/owner-authenticate` for an owner access token (kept
//! per organisation until shortly before it ends), and FHIR create/read/update/delete/search
//! under `/owner/{Type}` with it.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use serde::{Serialize, de::DeserializeOwned};
use tokio::sync::Mutex;

use crate::{
    config::DirectoryConfig,
    directory_error::DirectoryError,
    fhir::Bundle,
    provider::{Token, TokenAnswer},
    regservice_token::TokenIssuer,
};

const FHIR_JSON: &str = "application/fhir+json";
const DECOUPLED_GRANT: &str = "urn:telematik:params:grant-type:decoupled";

/// A started decoupled sign-in (`DecoupledAuthorizationResponse`).
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Decoupled {
    pub auth_req_id: String,
    #[serde(default)]
    pub poll_uri: Option<String>,
    /// Where the person signs in (the IDP with the eHBA).
    pub redirect_uri: String,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub interval: Option<u64>,
}

/// An organisation as its RegService token names it.
#[derive(Clone, Debug)]
pub struct Organisation {
    pub telematik_id: String,
    pub profession_oid: String,
}

pub struct OwnerClient {
    http: reqwest::Client,
    config: DirectoryConfig,
    issuer: Option<TokenIssuer>,
    tokens: Mutex<HashMap<String, Token>>,
}

impl OwnerClient {
    pub fn new(
        http: reqwest::Client,
        config: DirectoryConfig,
        issuer: Option<TokenIssuer>,
    ) -> Self {
        Self {
            http,
            config,
            issuer,
            tokens: Mutex::default(),
        }
    }

    pub fn base(&self) -> &str {
        self.config.base_url.trim_end_matches('/')
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.config.request_timeout_ms)
    }

    /// The owner token of `org`: RegService-OpenID-Token → `GET /owner-authenticate`.
    pub async fn token(&self, org: &Organisation) -> Result<String, DirectoryError> {
        let mut tokens = self.tokens.lock().await;
        if let Some(t) = tokens
            .get(&org.telematik_id)
            .filter(|t| Instant::now() < t.renew_at)
        {
            return Ok(t.value.clone());
        }
        let issuer = self.issuer.as_ref().ok_or_else(|| DirectoryError::Status {
            status: 401,
            message: "no RegService signing certificate configured (owner.signing_key_file, owner.signing_cert_file)".into(),
        })?;
        let aud = format!("{}/owner-authenticate", self.base());
        let regservice = issuer
            .issue(
                &format!("tim-vzd-sync:{}", org.telematik_id),
                &org.telematik_id,
                &org.profession_oid,
                &aud,
                SystemTime::now(),
            )
            .map_err(DirectoryError::BadAnswer)?;
        let started = Instant::now();
        let response = self
            .http
            .get(&aud)
            .bearer_auth(regservice)
            .timeout(self.timeout())
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if !response.status().is_success() {
            return Err(DirectoryError::from_response(response).await);
        }
        let answer: TokenAnswer = response
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300));
        tokens.insert(
            org.telematik_id.clone(),
            Token {
                value: answer.access_token.clone(),
                renew_at: crate::provider::renew_at(started, lifetime),
            },
        );
        Ok(answer.access_token)
    }

    /// Starts the decoupled IDP sign-in of a person with an eHBA (`/owner-authenticate-decoupled`).
    pub async fn decoupled(&self) -> Result<Decoupled, DirectoryError> {
        let r = self
            .http
            .post(format!("{}/owner-authenticate-decoupled", self.base()))
            .form(&[("grant_type", DECOUPLED_GRANT)])
            .timeout(self.timeout())
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// Asks whether the sign-in of `d` is done (`/owner-authenticate-poll`): the owner token,
    /// None while pending, an error when it was refused or expired.
    pub async fn poll(&self, d: &Decoupled) -> Result<Option<String>, DirectoryError> {
        let uri = d.poll_uri.as_deref().unwrap_or("/owner-authenticate-poll");
        let url = match uri.starts_with("http") {
            true => uri.to_owned(),
            false => format!("{}{uri}", self.base()),
        };
        let r = self
            .http
            .post(url)
            .form(&[
                ("grant_type", DECOUPLED_GRANT),
                ("auth_req_id", d.auth_req_id.as_str()),
            ])
            .timeout(self.timeout())
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if r.status() == reqwest::StatusCode::BAD_REQUEST {
            let body: serde_json::Value = r.json().await.map_err(DirectoryError::from_reqwest)?;
            return match body["error"].as_str() {
                Some("authorization_pending") => Ok(None),
                Some("slow_down") => Err(DirectoryError::Status {
                    status: 429,
                    message: "slow_down".into(),
                }),
                other => Err(DirectoryError::Status {
                    status: 400,
                    message: other.unwrap_or("sign-in failed").to_owned(),
                }),
            };
        }
        let answer: TokenAnswer = Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        Ok(Some(answer.access_token))
    }

    /// Drops a token the directory no longer takes (a 401).
    pub async fn forget(&self, org: &Organisation) {
        self.tokens.lock().await.remove(&org.telematik_id);
    }

    fn url(&self, path: &str) -> String {
        format!("{}/owner/{path}", self.base())
    }

    async fn ok(response: reqwest::Response) -> Result<reqwest::Response, DirectoryError> {
        match response.status().is_success() {
            true => Ok(response),
            false => Err(DirectoryError::from_response(response).await),
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
        token: &str,
    ) -> Result<reqwest::Response, DirectoryError> {
        request
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, FHIR_JSON)
            .timeout(self.timeout())
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `GET /owner/{type}?…` → a searchset.
    pub async fn search(
        &self,
        token: &str,
        resource_type: &str,
        query: &[(&str, &str)],
    ) -> Result<Bundle, DirectoryError> {
        let r = self
            .send(self.http.get(self.url(resource_type)).query(query), token)
            .await?;
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `GET /owner/{type}/{id}`; None when it is gone (404, 410).
    pub async fn read<T: DeserializeOwned>(
        &self,
        token: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<Option<T>, DirectoryError> {
        let r = self
            .send(
                self.http.get(self.url(&format!("{resource_type}/{id}"))),
                token,
            )
            .await?;
        if matches!(r.status().as_u16(), 404 | 410) {
            return Ok(None);
        }
        Self::ok(r)
            .await?
            .json()
            .await
            .map(Some)
            .map_err(DirectoryError::from_reqwest)
    }

    /// `POST /owner/{type}` → the resource as made (with its id).
    pub async fn create<T: Serialize + DeserializeOwned>(
        &self,
        token: &str,
        resource_type: &str,
        resource: &T,
    ) -> Result<T, DirectoryError> {
        let body =
            serde_json::to_vec(resource).map_err(|e| DirectoryError::BadAnswer(e.to_string()))?;
        let r = self
            .send(
                self.http
                    .post(self.url(resource_type))
                    .header(reqwest::header::CONTENT_TYPE, FHIR_JSON)
                    .body(body),
                token,
            )
            .await?;
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `PUT /owner/{type}/{id}`.
    pub async fn update<T: Serialize + DeserializeOwned>(
        &self,
        token: &str,
        resource_type: &str,
        id: &str,
        resource: &T,
    ) -> Result<T, DirectoryError> {
        let body =
            serde_json::to_vec(resource).map_err(|e| DirectoryError::BadAnswer(e.to_string()))?;
        let r = self
            .send(
                self.http
                    .put(self.url(&format!("{resource_type}/{id}")))
                    .header(reqwest::header::CONTENT_TYPE, FHIR_JSON)
                    .body(body),
                token,
            )
            .await?;
        Self::ok(r)
            .await?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)
    }

    /// `DELETE /owner/{type}/{id}`; gone already (404, 410) is fine.
    pub async fn delete(
        &self,
        token: &str,
        resource_type: &str,
        id: &str,
    ) -> Result<(), DirectoryError> {
        let r = self
            .send(
                self.http.delete(self.url(&format!("{resource_type}/{id}"))),
                token,
            )
            .await?;
        if matches!(r.status().as_u16(), 404 | 410) {
            return Ok(());
        }
        Self::ok(r).await.map(|_| ())
    }
}
