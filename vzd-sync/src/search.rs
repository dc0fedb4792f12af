//! Directory search for the messenger (D-AUTH-01, D-SRCH-01). The web client proves who it is
//! with a Matrix OpenID token of its homeserver; we exchange it at the directory's
//! `/tim-authenticate` for a search token (kept until it ends, per OpenID token), ask
//! `/search/HealthcareService` and `/search/PractitionerRole` with the criteria, and answer
//! with the Matrix IDs found: active TI-M endpoints only, never entries hidden from insured
//! persons when the user's domain is an insurer's (`isInsurance` in the federation list), at
//! most 100. Identical searches within a minute are answered from a cache.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::{
    directory_error::DirectoryError,
    federation_sync::FederationSync,
    fhir::{
        Bundle, Endpoint, EndpointStatus, HealthcareService, Organization, Practitioner,
        PractitionerRole, TELEMATIK_ID_SYSTEM, telematik_id,
    },
    provider::TokenAnswer,
};

/// Most results of one search (D-SRCH-01).
pub const MAX_RESULTS: usize = 100;
const RESULT_TTL: Duration = Duration::from_secs(60);
const CACHE_ENTRIES: usize = 10_000;

/// What the client searches for; criteria are combined (and).
#[derive(Clone, Debug, Default, Deserialize, Hash, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Criteria {
    /// Part of the name of a service or a person.
    pub name: Option<String>,
    /// Part of the organisation's name.
    pub organization: Option<String>,
    /// A specialty code (`[system|]code`).
    pub specialty: Option<String>,
    /// The organisation's city.
    pub city: Option<String>,
    #[serde(rename = "telematikID")]
    pub telematik_id: Option<String>,
    /// Results wanted (at most 100).
    pub limit: Option<usize>,
}

/// One Matrix ID found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Hit {
    pub mxid: String,
    /// The endpoint's name in the directory.
    pub name: String,
    /// `organization` (a service of an organisation) or `practitioner` (a person with eHBA).
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub organization: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub practitioner: Option<String>,
    #[serde(rename = "telematikID", skip_serializing_if = "Option::is_none")]
    pub telematik_id: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub specialties: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub city: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("{0}")]
    Invalid(String),
    #[error("the directory did not accept the OpenID token")]
    Unauthorized,
    #[error("{0} is not in the federation list")]
    NotFederated(String),
    #[error(transparent)]
    Directory(#[from] DirectoryError),
}

type Cache<K, V> = Mutex<HashMap<K, (Instant, V)>>;

fn put_bounded<K: Eq + std::hash::Hash, V>(cache: &Cache<K, V>, key: K, until: Instant, value: V) {
    let mut c = cache.lock().unwrap();
    if c.len() >= CACHE_ENTRIES {
        let now = Instant::now();
        c.retain(|_, (t, _)| *t > now);
        if c.len() >= CACHE_ENTRIES {
            c.clear();
        }
    }
    c.insert(key, (until, value));
}

fn get_fresh<K: Eq + std::hash::Hash, V: Clone>(cache: &Cache<K, V>, key: &K) -> Option<V> {
    let c = cache.lock().unwrap();
    c.get(key)
        .filter(|(t, _)| *t > Instant::now())
        .map(|(_, v)| v.clone())
}

pub struct Search {
    http: reqwest::Client,
    base_url: String,
    timeout: Duration,
    federation: Arc<FederationSync>,
    tokens: Cache<[u8; 32], String>,
    results: Cache<(Criteria, bool), Arc<Vec<Hit>>>,
}

impl Search {
    pub fn new(
        http: reqwest::Client,
        base_url: &str,
        timeout: Duration,
        federation: Arc<FederationSync>,
    ) -> Self {
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            timeout,
            federation,
            tokens: Mutex::default(),
            results: Mutex::default(),
        }
    }

    /// The search token for an OpenID token of a user on `domain`.
    async fn token(&self, openid: &str, domain: &str, fresh: bool) -> Result<String, SearchError> {
        let key: [u8; 32] = Sha256::digest(format!("{domain}\n{openid}")).into();
        if !fresh && let Some(t) = get_fresh(&self.tokens, &key) {
            return Ok(t);
        }
        let started = Instant::now();
        let r = self
            .http
            .get(format!("{}/tim-authenticate", self.base_url))
            .query(&[("mxId", domain)])
            .header("X-Matrix-OpenID-Token", openid)
            .timeout(self.timeout)
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(SearchError::Unauthorized);
        }
        if !r.status().is_success() {
            return Err(DirectoryError::from_response(r).await.into());
        }
        let answer: TokenAnswer = r.json().await.map_err(DirectoryError::from_reqwest)?;
        // Not longer than the OpenID token it came from lives (an hour): a deactivated
        // account loses directory access with it.
        let lifetime = Duration::from_secs(answer.expires_in.unwrap_or(300).min(3600));
        let until = started + lifetime.saturating_sub(Duration::from_secs(30));
        put_bounded(&self.tokens, key, until, answer.access_token.clone());
        Ok(answer.access_token)
    }

    async fn query(
        &self,
        token: &str,
        rtype: &str,
        params: &[(&str, String)],
    ) -> Result<Bundle, SearchError> {
        let r = self
            .http
            .get(format!("{}/search/{rtype}", self.base_url))
            .query(params)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/fhir+json")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(DirectoryError::from_reqwest)?;
        if r.status() == reqwest::StatusCode::UNAUTHORIZED {
            return Err(SearchError::Unauthorized);
        }
        if !r.status().is_success() {
            return Err(DirectoryError::from_response(r).await.into());
        }
        r.json()
            .await
            .map_err(|e| DirectoryError::from_reqwest(e).into())
    }

    /// Searches for a user of `domain` who holds `openid`.
    pub async fn search(
        &self,
        openid: &str,
        domain: &str,
        criteria: &Criteria,
    ) -> Result<Vec<Hit>, SearchError> {
        criteria.validate()?;
        let domain = crate::federation_list::normalise_domain(domain);
        let list = self
            .federation
            .current()
            .ok_or_else(|| SearchError::NotFederated(domain.clone()))?;
        let insured = list
            .list
            .domain_list
            .iter()
            .find(|d| d.domain == domain)
            .ok_or_else(|| SearchError::NotFederated(domain.clone()))?
            .is_insurance;
        let limit = criteria.limit.unwrap_or(MAX_RESULTS).clamp(1, MAX_RESULTS);
        let mut key = criteria.clone();
        key.limit = None;
        let key = (key, insured);
        // The token first: only authenticated users get cached results too.
        let mut token = self.token(openid, &domain, false).await?;
        let hits = match get_fresh(&self.results, &key) {
            Some(h) => h,
            None => {
                let hits = match self.ask(&token, criteria, insured).await {
                    Err(SearchError::Unauthorized) => {
                        token = self.token(openid, &domain, true).await?;
                        self.ask(&token, criteria, insured).await?
                    }
                    other => other?,
                };
                let hits = Arc::new(hits);
                put_bounded(
                    &self.results,
                    key,
                    Instant::now() + RESULT_TTL,
                    hits.clone(),
                );
                hits
            }
        };
        Ok(hits.iter().take(limit).cloned().collect())
    }

    async fn ask(&self, token: &str, c: &Criteria, insured: bool) -> Result<Vec<Hit>, SearchError> {
        let mut services: Vec<(&str, String)> = vec![
            ("organization.active", "true".into()),
            ("_include", "HealthcareService:endpoint".into()),
            ("_include", "HealthcareService:organization".into()),
            ("_count", MAX_RESULTS.to_string()),
        ];
        let mut roles: Vec<(&str, String)> = vec![
            ("practitioner.active", "true".into()),
            ("_include", "PractitionerRole:endpoint".into()),
            ("_include", "PractitionerRole:practitioner".into()),
            ("_count", MAX_RESULTS.to_string()),
        ];
        if let Some(n) = &c.name {
            services.push(("name:contains", n.clone()));
            roles.push(("practitioner.name:contains", n.clone()));
        }
        if let Some(o) = &c.organization {
            services.push(("organization.name:contains", o.clone()));
        }
        if let Some(s) = &c.specialty {
            services.push(("specialty", s.clone()));
            roles.push(("specialty", s.clone()));
        }
        if let Some(city) = &c.city {
            services.push(("organization.address-city", city.clone()));
        }
        if let Some(t) = &c.telematik_id {
            services.push((
                "organization.identifier",
                format!("{TELEMATIK_ID_SYSTEM}|{t}"),
            ));
            roles.push((
                "practitioner.identifier",
                format!("{TELEMATIK_ID_SYSTEM}|{t}"),
            ));
        }
        // People have no organisation or city in the directory: those criteria exclude them.
        let ask_roles = c.organization.is_none() && c.city.is_none();
        let (services, roles) =
            tokio::join!(self.query(token, "HealthcareService", &services), async {
                match ask_roles {
                    true => self
                        .query(token, "PractitionerRole", &roles)
                        .await
                        .map(Some),
                    false => Ok(None),
                }
            });
        let mut hits = service_hits(&services?, insured);
        if let Some(roles) = roles? {
            hits.extend(practitioner_hits(&roles, insured));
        }
        let mut seen = std::collections::HashSet::new();
        hits.retain(|h| seen.insert((h.mxid.clone(), h.kind, h.service.clone())));
        hits.truncate(MAX_RESULTS);
        Ok(hits)
    }
}

impl Criteria {
    fn validate(&self) -> Result<(), SearchError> {
        let fields = [
            &self.name,
            &self.organization,
            &self.specialty,
            &self.city,
            &self.telematik_id,
        ];
        if fields
            .iter()
            .all(|f| f.as_deref().is_none_or(|s| s.trim().is_empty()))
        {
            return Err(SearchError::Invalid(
                "name, organization, specialty, city or telematikID is needed".into(),
            ));
        }
        if fields
            .iter()
            .any(|f| f.as_deref().is_some_and(|s| s.chars().count() > 100))
        {
            return Err(SearchError::Invalid(
                "a criterion has more than 100 characters".into(),
            ));
        }
        Ok(())
    }
}

/// The usable endpoints among `refs`: TI-M, active, and visible to the user.
fn endpoints<'a>(
    refs: &[crate::fhir::Reference],
    all: &'a HashMap<String, Endpoint>,
    insured: bool,
) -> Vec<&'a Endpoint> {
    refs.iter()
        .filter_map(|r| all.get(r.id_of("Endpoint")?))
        .filter(|e| {
            e.is_tim()
                && e.status == EndpointStatus::Active
                && !(insured && e.hidden_from_insured())
        })
        .collect()
}

fn by_id<T>(bundle: &Bundle, rtype: &str, id: impl Fn(&T) -> Option<String>) -> HashMap<String, T>
where
    T: serde::de::DeserializeOwned,
{
    bundle
        .resources::<T>(rtype)
        .into_iter()
        .filter_map(|r| Some((id(&r)?, r)))
        .collect()
}

fn service_hits(bundle: &Bundle, insured: bool) -> Vec<Hit> {
    let eps = by_id::<Endpoint>(bundle, "Endpoint", |e| e.id.clone());
    let orgs = by_id::<Organization>(bundle, "Organization", |o| o.id.clone());
    let mut out = vec![];
    for s in bundle.resources::<HealthcareService>("HealthcareService") {
        let org = s
            .provided_by
            .id_of("Organization")
            .and_then(|id| orgs.get(id));
        if insured && org.is_some_and(|o| o.hidden_from_insured()) {
            continue;
        }
        let specialties: Vec<String> = s
            .specialty
            .iter()
            .flat_map(|c| c.coding.iter())
            .filter_map(|c| c.display.clone().or_else(|| c.code.clone()))
            .collect();
        for e in endpoints(&s.endpoint, &eps, insured) {
            let Some(mxid) = e.mxid() else { continue };
            out.push(Hit {
                mxid,
                name: e.name.clone().unwrap_or_default(),
                kind: "organization",
                organization: org.and_then(|o| o.name.clone()),
                service: s.name.clone(),
                practitioner: None,
                telematik_id: org.and_then(|o| o.telematik_id().map(str::to_owned)),
                specialties: specialties.clone(),
                city: org.and_then(|o| o.address.iter().find_map(|a| a.city.clone())),
            });
        }
    }
    out
}

fn practitioner_hits(bundle: &Bundle, insured: bool) -> Vec<Hit> {
    let eps = by_id::<Endpoint>(bundle, "Endpoint", |e| e.id.clone());
    let people = by_id::<Practitioner>(bundle, "Practitioner", |p| p.id.clone());
    let mut out = vec![];
    for role in bundle.resources::<PractitionerRole>("PractitionerRole") {
        let person = role
            .practitioner
            .id_of("Practitioner")
            .and_then(|id| people.get(id));
        for e in endpoints(&role.endpoint, &eps, insured) {
            let Some(mxid) = e.mxid() else { continue };
            out.push(Hit {
                mxid,
                name: e.name.clone().unwrap_or_default(),
                kind: "practitioner",
                organization: None,
                service: None,
                practitioner: person.and_then(|p| p.name.first().map(|n| n.display())),
                telematik_id: person.and_then(|p| telematik_id(&p.identifier).map(str::to_owned)),
                specialties: vec![],
                city: None,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn bundle() -> Bundle {
        let ep = |id: &str, mxid: &str, status: &str, hidden: bool| {
            let mut e =
                serde_json::to_value(Endpoint::tim(mxid, id, status == "active", hidden).unwrap())
                    .unwrap();
            e["id"] = id.into();
            (e, "include")
        };
        Bundle::searchset(vec![
            (
                json!({"resourceType": "HealthcareService", "id": "s1", "name": "Kardiologie",
                    "providedBy": {"reference": "Organization/o1"},
                    "specialty": [{"coding": [{"system": "x", "code": "CARD", "display": "Kardiologie"}]}],
                    "endpoint": [{"reference": "Endpoint/e1"}, {"reference": "Endpoint/e2"}, {"reference": "Endpoint/e3"}]}),
                "match",
            ),
            ep("e1", "@anmeldung:klinik.de", "active", false),
            ep("e2", "@intern:klinik.de", "active", true),
            ep("e3", "@alt:klinik.de", "off", false),
            (
                json!({"resourceType": "Organization", "id": "o1", "name": "Klinik",
                    "identifier": [{"system": TELEMATIK_ID_SYSTEM, "value": "5-1"}],
                    "address": [{"city": "Berlin"}]}),
                "include",
            ),
        ])
    }

    #[test]
    fn only_active_and_visible_endpoints() {
        let pro = service_hits(&bundle(), false);
        assert_eq!(
            pro.iter().map(|h| h.mxid.as_str()).collect::<Vec<_>>(),
            ["@anmeldung:klinik.de", "@intern:klinik.de"]
        );
        assert_eq!(pro[0].organization.as_deref(), Some("Klinik"));
        assert_eq!(pro[0].telematik_id.as_deref(), Some("5-1"));
        assert_eq!(pro[0].city.as_deref(), Some("Berlin"));
        assert_eq!(pro[0].specialties, ["Kardiologie"]);
        let insured = service_hits(&bundle(), true);
        assert_eq!(
            insured.iter().map(|h| h.mxid.as_str()).collect::<Vec<_>>(),
            ["@anmeldung:klinik.de"]
        );
    }

    #[test]
    fn criteria_are_checked() {
        assert!(Criteria::default().validate().is_err());
        assert!(
            Criteria {
                name: Some("  ".into()),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            Criteria {
                name: Some("x".repeat(101)),
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        Criteria {
            city: Some("Berlin".into()),
            ..Default::default()
        }
        .validate()
        .unwrap();
    }
}
