//! Doctors findable personally (D-PR-01, AF_10058): a user with an eHBA adds the Endpoint with
//! their Matrix ID to their own `PractitionerRole` — or removes it — after signing in at the
//! gematik IDP with the card. A browser app cannot receive the directory's answer itself, so
//! this is the server half: the web client starts a session with its Matrix OpenID token (which
//! tells us the MXID, checked at our homeserver), opens the IDP address we hand back, and waits
//! for the session; we follow the directory's decoupled sign-in (`/owner-authenticate-decoupled`,
//! `/owner-authenticate-poll` at the interval it asks for) and, with the doctor's owner token,
//! make the change. Sessions live in memory for the few minutes a sign-in takes; one pending
//! session per user, at most `MAX_SESSIONS` at once.
//!
//! The card must be the user's: the org admin binds each doctor's Matrix ID to the TelematikID
//! of their eHBA (`PUT /_tim/vzd/v1/practitioners/{mxid}`), and a sign-in with any other card
//! changes nothing — else a user could have a doctor sign in on a link of theirs and publish
//! their own Matrix ID on the doctor's entry.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{
    directory_error::DirectoryError,
    fhir::{Endpoint, Practitioner, PractitionerRole, Reference, TELEMATIK_ID_SYSTEM, matrix_uri},
    owner::OwnerClient,
    store::{Kind, Store},
};

/// What the doctor wants.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase", deny_unknown_fields)]
pub enum Action {
    /// Findable: an active TI-M Endpoint on the PractitionerRole.
    Publish {
        /// The endpoint's name in the directory.
        name: String,
        #[serde(rename = "hideFromInsured", default)]
        hide_from_insured: bool,
    },
    /// No longer findable: the Endpoint off the PractitionerRole.
    Withdraw,
}

/// Where a session is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Status {
    /// Waiting for the sign-in with the eHBA.
    Pending,
    Done,
    Failed {
        error: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum PractitionerError {
    #[error("{0}")]
    Invalid(String),
    #[error("the Matrix OpenID token was not accepted")]
    Unauthorized,
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

/// A started session: its id and where the doctor signs in.
#[derive(Debug, Serialize)]
pub struct Started {
    pub session: String,
    pub redirect_uri: String,
    pub expires_in: u64,
}

/// Sign-ins under way at once, over all users.
pub const MAX_SESSIONS: usize = 1000;

pub struct Practitioners {
    owner: Arc<OwnerClient>,
    store: Arc<dyn Store>,
    http: reqwest::Client,
    /// Where our homeservers answer, by domain (else `.well-known/matrix/server`).
    homeservers: BTreeMap<String, String>,
    sessions: Mutex<HashMap<String, Session>>,
}

/// A session: kept until, the user, its status.
type Session = (Instant, String, watch::Receiver<Status>);

impl Practitioners {
    pub fn new(
        owner: Arc<OwnerClient>,
        store: Arc<dyn Store>,
        http: reqwest::Client,
        homeservers: BTreeMap<String, String>,
    ) -> Arc<Self> {
        Arc::new(Self {
            owner,
            store,
            http,
            homeservers,
            sessions: Mutex::default(),
        })
    }

    /// The homeserver of one of our domains.
    async fn homeserver(&self, domain: &str) -> Result<String, PractitionerError> {
        let ours = self
            .store
            .entry(Kind::Domain, domain)
            .await
            .map_err(|e| DirectoryError::BadAnswer(e.to_string()))?
            .is_some_and(|e| e.wanted);
        if !ours {
            return Err(PractitionerError::Invalid(format!(
                "{domain} is not a messenger domain of ours"
            )));
        }
        if let Some(url) = self.homeservers.get(domain) {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        #[derive(Deserialize)]
        struct WellKnown {
            #[serde(rename = "m.server")]
            server: String,
        }
        let wk: WellKnown = self
            .http
            .get(format!("https://{domain}/.well-known/matrix/server"))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(DirectoryError::from_reqwest)?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        let host = match wk.server.rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => wk.server,
            _ => format!("{}:8448", wk.server),
        };
        Ok(format!("https://{host}"))
    }

    /// The Matrix ID behind an OpenID token of a user of our `domain`.
    async fn user(&self, openid: &str, domain: &str) -> Result<String, PractitionerError> {
        let base = self.homeserver(domain).await?;
        let r = self
            .http
            .get(format!("{base}/_matrix/federation/v1/openid/userinfo"))
            // The tenant is chosen by Host (a configured address may be a shared one).
            .header(reqwest::header::HOST, domain)
            .query(&[("access_token", openid)])
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(PractitionerError::Unauthorized);
        }
        #[derive(Deserialize)]
        struct UserInfo {
            sub: String,
        }
        let info: UserInfo = r
            .error_for_status()
            .map_err(DirectoryError::from_reqwest)?
            .json()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        match info.sub.ends_with(&format!(":{domain}")) {
            true => Ok(info.sub),
            false => Err(PractitionerError::Unauthorized),
        }
    }

    /// Starts a session for the holder of `openid` on our `domain`.
    pub async fn start(
        self: &Arc<Self>,
        openid: &str,
        domain: &str,
        action: Action,
    ) -> Result<Started, PractitionerError> {
        if let Action::Publish { name, .. } = &action
            && (name.trim().is_empty() || name.chars().count() > 200)
        {
            return Err(PractitionerError::Invalid(
                "name must have 1 to 200 characters".into(),
            ));
        }
        let mxid = self.user(openid, domain).await?;
        let card = self
            .store
            .practitioner(&mxid)
            .await
            .map_err(|e| DirectoryError::BadAnswer(e.to_string()))?
            .ok_or_else(|| {
                PractitionerError::Invalid(format!(
                    "no eHBA is bound to {mxid}: the org admin binds it first"
                ))
            })?;
        {
            let mut sessions = self.sessions.lock().unwrap();
            let now = Instant::now();
            sessions.retain(|_, (until, ..)| *until > now);
            let pending = |m: &String, rx: &watch::Receiver<Status>| {
                *m == mxid && *rx.borrow() == Status::Pending
            };
            if sessions.values().any(|(_, m, rx)| pending(m, rx)) {
                return Err(PractitionerError::Invalid(
                    "a sign-in of this user is already under way".into(),
                ));
            }
            if sessions.len() >= MAX_SESSIONS {
                return Err(DirectoryError::Status {
                    status: 503,
                    message: "too many sign-ins under way; try again shortly".into(),
                }
                .into());
            }
        }
        let decoupled = self.owner.decoupled().await?;
        let expires_in = decoupled.expires_in.unwrap_or(300).min(900);
        let id = {
            let bytes: [u8; 32] = rand::random();
            URL_SAFE_NO_PAD.encode(bytes)
        };
        let (tx, rx) = watch::channel(Status::Pending);
        self.sessions.lock().unwrap().insert(
            id.clone(),
            (
                Instant::now() + Duration::from_secs(expires_in + 300),
                mxid.clone(),
                rx,
            ),
        );
        let this = self.clone();
        let started = Started {
            session: id,
            redirect_uri: decoupled.redirect_uri.clone(),
            expires_in,
        };
        tokio::spawn(async move {
            let status = match this.follow(&decoupled, expires_in).await {
                Ok(token) => match this.apply(&token, &mxid, &card, &action).await {
                    Ok(()) => Status::Done,
                    Err(e) => Status::Failed {
                        error: e.to_string(),
                    },
                },
                Err(e) => Status::Failed {
                    error: e.to_string(),
                },
            };
            tracing::info!(status = ?status, "eHBA directory session ended");
            let _ = tx.send(status);
        });
        Ok(started)
    }

    /// Polls the directory at the interval it asks for until the sign-in ends.
    async fn follow(
        &self,
        d: &crate::owner::Decoupled,
        expires_in: u64,
    ) -> Result<String, DirectoryError> {
        let deadline = Instant::now() + Duration::from_secs(expires_in);
        let mut interval = Duration::from_secs(d.interval.unwrap_or(5).clamp(1, 60));
        loop {
            tokio::time::sleep(interval).await;
            match self.owner.poll(d).await {
                Ok(Some(token)) => return Ok(token),
                Ok(None) => {}
                // RFC 8628: polled too often, five seconds more between polls.
                Err(e) if e.status() == Some(429) => interval += Duration::from_secs(5),
                Err(e) if e.retryable() => {
                    tracing::warn!(error = %e, "directory poll failed; trying again")
                }
                Err(e) => return Err(e),
            }
            if Instant::now() >= deadline {
                return Err(DirectoryError::Status {
                    status: 400,
                    message: "expired_token: the sign-in was not completed in time".into(),
                });
            }
        }
    }

    /// The session's status; waits up to `wait` for it to leave `Pending`.
    pub async fn status(&self, id: &str, wait: Duration) -> Option<Status> {
        let mut rx = self
            .sessions
            .lock()
            .unwrap()
            .get(id)
            .map(|(.., rx)| rx.clone())?;
        let _ = tokio::time::timeout(wait, rx.wait_for(|s| *s != Status::Pending)).await;
        let status = rx.borrow().clone();
        Some(status)
    }

    /// With the doctor's owner token: the Endpoint for `mxid` on (or off) their PractitionerRoles.
    async fn apply(
        &self,
        token: &str,
        mxid: &str,
        card: &str,
        action: &Action,
    ) -> Result<(), DirectoryError> {
        let telematik_id = id_nummer(token).ok_or_else(|| {
            DirectoryError::BadAnswer("the owner token names no TelematikID".into())
        })?;
        if telematik_id != card {
            return Err(DirectoryError::Status {
                status: 403,
                message: format!("signed in with an eHBA that is not the one bound to {mxid}"),
            });
        }
        let people = self
            .owner
            .search(
                token,
                "Practitioner",
                &[(
                    "identifier",
                    &format!("{TELEMATIK_ID_SYSTEM}|{telematik_id}"),
                )],
            )
            .await?;
        let person = people
            .resources::<Practitioner>("Practitioner")
            .into_iter()
            .find_map(|p| p.id)
            .ok_or_else(|| DirectoryError::Status {
                status: 404,
                message: "no Practitioner entry for this eHBA".into(),
            })?;
        let roles = self
            .owner
            .search(
                token,
                "PractitionerRole",
                &[("practitioner", &format!("Practitioner/{person}"))],
            )
            .await?
            .resources::<PractitionerRole>("PractitionerRole");
        if roles.is_empty() {
            return Err(DirectoryError::Status {
                status: 404,
                message: "no PractitionerRole entry for this eHBA".into(),
            });
        }
        let address = matrix_uri(mxid).unwrap_or_default();
        let existing = self
            .owner
            .search(token, "Endpoint", &[("address", &address)])
            .await?
            .resources::<Endpoint>("Endpoint")
            .into_iter()
            .find(|e| e.address == address);
        match action {
            Action::Publish {
                name,
                hide_from_insured,
            } => {
                let endpoint_id = match existing {
                    Some(mut e) => {
                        let id = e.id.clone().ok_or_else(|| {
                            DirectoryError::BadAnswer("endpoint without id".into())
                        })?;
                        if e.status != crate::fhir::EndpointStatus::Active
                            || e.hidden_from_insured() != *hide_from_insured
                        {
                            // Align it if it is the doctor's; another owner's stays as it is.
                            let name = e.name.clone().unwrap_or_else(|| name.clone());
                            if let Some(w) = Endpoint::tim(mxid, &name, true, *hide_from_insured) {
                                e.status = w.status;
                                e.extension
                                    .retain(|x| x.url != crate::fhir::ENDPOINT_VISIBILITY_URL);
                                e.extension.extend(w.extension);
                                match self.owner.update(token, "Endpoint", &id, &e).await {
                                    Err(err) if err.status() == Some(403) => {}
                                    other => {
                                        other?;
                                    }
                                }
                            }
                        }
                        id
                    }
                    None => {
                        let wanted = Endpoint::tim(mxid, name, true, *hide_from_insured)
                            .ok_or_else(|| {
                                DirectoryError::BadAnswer(format!("{mxid} is not a Matrix ID"))
                            })?;
                        self.owner
                            .create(token, "Endpoint", &wanted)
                            .await?
                            .id
                            .ok_or_else(|| {
                                DirectoryError::BadAnswer("endpoint made without id".into())
                            })?
                    }
                };
                for mut role in roles {
                    if role
                        .endpoint
                        .iter()
                        .any(|r| r.id_of("Endpoint") == Some(endpoint_id.as_str()))
                    {
                        continue;
                    }
                    role.endpoint.push(Reference::to("Endpoint", &endpoint_id));
                    let id = role.id.clone().unwrap_or_default();
                    self.owner
                        .update(token, "PractitionerRole", &id, &role)
                        .await?;
                }
            }
            Action::Withdraw => {
                let Some(endpoint_id) = existing.and_then(|e| e.id) else {
                    return Ok(());
                };
                for mut role in roles {
                    let before = role.endpoint.len();
                    role.endpoint
                        .retain(|r| r.id_of("Endpoint") != Some(endpoint_id.as_str()));
                    if role.endpoint.len() != before {
                        let id = role.id.clone().unwrap_or_default();
                        self.owner
                            .update(token, "PractitionerRole", &id, &role)
                            .await?;
                    }
                }
                // Still in use by the organisation's entry (409) or not the doctor's (403): left.
                match self.owner.delete(token, "Endpoint", &endpoint_id).await {
                    Err(e) if matches!(e.status(), Some(403 | 409)) => {}
                    other => other?,
                }
            }
        }
        Ok(())
    }
}

/// The `idNummer` (TelematikID) claim of the directory's owner token (a JWT).
fn id_nummer(token: &str) -> Option<String> {
    let payload = URL_SAFE_NO_PAD.decode(token.split('.').nth(1)?).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&payload).ok()?;
    claims["idNummer"].as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telematik_id_from_the_owner_token() {
        let claims = URL_SAFE_NO_PAD.encode(r#"{"idNummer":"1-HBA-1","exp":1}"#);
        assert_eq!(
            id_nummer(&format!("h.{claims}.s")).as_deref(),
            Some("1-HBA-1")
        );
        assert_eq!(id_nummer("opaque"), None);
    }

    #[test]
    fn actions_parse() {
        let a: Action =
            serde_json::from_str(r#"{"action":"publish","name":"Dr. A","hideFromInsured":true}"#)
                .unwrap();
        assert_eq!(
            a,
            Action::Publish {
                name: "Dr. A".into(),
                hide_from_insured: true
            }
        );
        let w: Action = serde_json::from_str(r#"{"action":"withdraw"}"#).unwrap();
        assert_eq!(w, Action::Withdraw);
        assert!(serde_json::from_str::<Action>(r#"{"action":"delete"}"#).is_err());
    }
}
