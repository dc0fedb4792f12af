//! The TI-Messenger federation list (D-FL-01..03, schema `FederationList.json`): which Matrix
//! domains belong to the TI-M federation. Parsed leniently — unknown keys ignored, `ik` or
//! `iks`, IK numbers as strings or integers, `timAnbieter` or `timProvider` (D-FL-02) — and
//! accepted only with a verified signature (B-FL-04) and a version newer than the one held
//! (B-FL-05).

use std::{
    collections::{HashMap, HashSet},
    time::SystemTime,
};

use serde::{Deserialize, Deserializer, Serialize};

use crate::crypto::{Alg, TrustStore, jws};

/// One domain of the federation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationDomain {
    pub domain: String,
    #[serde(rename = "telematikID")]
    pub telematik_id: String,
    #[serde(rename = "isInsurance", default)]
    pub is_insurance: bool,
    #[serde(
        alias = "iks",
        default,
        deserialize_with = "ik_numbers",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub ik: Vec<String>,
    #[serde(
        rename = "timAnbieter",
        alias = "timProvider",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub tim_anbieter: Option<String>,
}

/// API 1.3.8 changed IK numbers from integers to strings; lists of both kinds exist.
fn ik_numbers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Ik {
        Text(String),
        Number(u64),
    }
    let items = Option::<Vec<Ik>>::deserialize(d)?.unwrap_or_default();
    Ok(items
        .into_iter()
        .map(|i| match i {
            Ik::Text(s) => s,
            Ik::Number(n) => n.to_string(),
        })
        .collect())
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationList {
    pub version: i64,
    #[serde(rename = "domainList", default)]
    pub domain_list: Vec<FederationDomain>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ListError {
    #[error("signature: {0}")]
    Signature(#[from] jws::JwsError),
    #[error("payload is not a federation list: {0}")]
    Payload(String),
    #[error("version {offered} is not newer than the list held (version {held})")]
    NotNewer { offered: i64, held: i64 },
}

/// A federation list whose signature checked out, with the JWS it came in (handed on unchanged
/// to the homeservers, which verify it themselves — B-FL-03).
#[derive(Clone, Debug)]
pub struct SignedList {
    pub list: FederationList,
    pub jws: String,
    /// SHA-256 of the signer certificate.
    pub signer: String,
    /// The signer's certificate chain, signer first, trust anchor last.
    pub chain: Vec<openssl::x509::X509>,
    domains: HashSet<String>,
    /// Domains left out for being listed twice with different entries.
    pub conflicting: Vec<String>,
}

impl SignedList {
    /// Verifies `jws` against `trust` at `at` and parses its payload. A domain listed twice
    /// with the same entry is kept once; listed with different entries it is left out (which
    /// one is right cannot be told) and logged — the rest of the list stays usable, since
    /// refusing it whole would in 72 h stop all federation.
    pub fn verify(jws: &str, trust: &TrustStore, at: SystemTime) -> Result<Self, ListError> {
        let verified = jws::verify(jws, &[Alg::BP256R1, Alg::ES256], trust, at)?;
        let mut list: FederationList = serde_json::from_slice(&verified.payload)
            .map_err(|e| ListError::Payload(e.to_string()))?;
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut kept: Vec<FederationDomain> = Vec::with_capacity(list.domain_list.len());
        let mut conflicting = HashSet::new();
        for mut entry in std::mem::take(&mut list.domain_list) {
            entry.domain = normalise_domain(&entry.domain);
            if entry.domain.is_empty() {
                return Err(ListError::Payload("an entry has no domain".into()));
            }
            match seen.get(&entry.domain) {
                Some(&i) if kept[i] == entry => {}
                Some(_) => {
                    conflicting.insert(entry.domain);
                }
                None => {
                    seen.insert(entry.domain.clone(), kept.len());
                    kept.push(entry);
                }
            }
        }
        for d in &conflicting {
            tracing::error!(domain = %d, version = list.version, "federation list names a domain twice with different entries; it is left out");
        }
        kept.retain(|e| !conflicting.contains(&e.domain));
        let domains = kept.iter().map(|e| e.domain.clone()).collect();
        list.domain_list = kept;
        Ok(Self {
            list,
            jws: jws.trim().to_owned(),
            signer: jws::fingerprint(&verified.chain[0]),
            chain: verified.chain,
            domains,
            conflicting: conflicting.into_iter().collect(),
        })
    }

    pub fn version(&self) -> i64 {
        self.list.version
    }

    pub fn contains(&self, domain: &str) -> bool {
        self.domains.contains(&normalise_domain(domain))
    }

    pub fn len(&self) -> usize {
        self.domains.len()
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Whether this list may replace `held`: only a newer version does (an equal one is the
    /// same list, an older one a replay).
    pub fn replaces(&self, held: Option<&SignedList>) -> Result<(), ListError> {
        match held {
            Some(h) if self.version() <= h.version() => Err(ListError::NotNewer {
                offered: self.version(),
                held: h.version(),
            }),
            _ => Ok(()),
        }
    }
}

/// Domains compare case-insensitively and without a trailing dot.
pub fn normalise_domain(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::testca::TestCa;

    fn signed(ca: &TestCa, payload: &serde_json::Value) -> String {
        let (cert, key) = ca.issue("VZD FHIR Directory federation list", Alg::BP256R1);
        jws::sign(
            Alg::BP256R1,
            &key,
            &[cert],
            Some("JWT"),
            payload.to_string().as_bytes(),
        )
        .unwrap()
    }

    #[test]
    fn lenient_parsing_of_both_field_spellings() {
        let ca = TestCa::new(Alg::BP256R1);
        let jws = signed(
            &ca,
            &serde_json::json!({
                "version": 7,
                "domainList": [
                    {"domain": "Praxis.Example.DE.", "telematikID": "1-1", "isInsurance": false,
                     "timAnbieter": "ORG-0058:BT-0158", "unknown": true},
                    {"domain": "kk.example.de", "telematikID": "8-1", "isInsurance": true,
                     "iks": [108433248], "timProvider": "ORG-1"},
                    {"domain": "kk2.example.de", "telematikID": "8-2", "isInsurance": true,
                     "ik": ["104127692"]}
                ]
            }),
        );
        let list = SignedList::verify(&jws, &ca.trust(), SystemTime::now()).unwrap();
        assert_eq!(list.version(), 7);
        assert!(list.contains("praxis.example.de"));
        assert!(list.contains("PRAXIS.example.de"));
        assert!(!list.contains("other.example.de"));
        let kk = &list.list.domain_list[1];
        assert_eq!(kk.ik, vec!["108433248"]);
        assert_eq!(kk.tim_anbieter.as_deref(), Some("ORG-1"));
        assert_eq!(list.list.domain_list[2].ik, vec!["104127692"]);
    }

    #[test]
    fn only_a_newer_version_replaces_the_list() {
        let ca = TestCa::new(Alg::BP256R1);
        let v = |n: i64| {
            SignedList::verify(
                &signed(&ca, &serde_json::json!({"version": n, "domainList": []})),
                &ca.trust(),
                SystemTime::now(),
            )
            .unwrap()
        };
        let (v5, v6) = (v(5), v(6));
        assert!(v5.replaces(None).is_ok());
        assert!(v6.replaces(Some(&v5)).is_ok());
        assert_eq!(
            v5.replaces(Some(&v6)),
            Err(ListError::NotNewer {
                offered: 5,
                held: 6
            })
        );
        assert!(
            v(6).replaces(Some(&v6)).is_err(),
            "equal version is ignored"
        );
    }

    #[test]
    fn a_repeated_domain_is_kept_once_or_left_out_when_entries_differ() {
        let ca = TestCa::new(Alg::BP256R1);
        let same = serde_json::json!({"version": 1, "domainList": [
            {"domain": "a.de", "telematikID": "1", "isInsurance": false},
            {"domain": "A.de", "telematikID": "1", "isInsurance": false}]});
        let list = SignedList::verify(&signed(&ca, &same), &ca.trust(), SystemTime::now()).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list.list.domain_list.len(), 1);
        let differing = serde_json::json!({"version": 1, "domainList": [
            {"domain": "a.de", "telematikID": "1", "isInsurance": false},
            {"domain": "b.de", "telematikID": "3", "isInsurance": false},
            {"domain": "a.de", "telematikID": "2", "isInsurance": false}]});
        let list =
            SignedList::verify(&signed(&ca, &differing), &ca.trust(), SystemTime::now()).unwrap();
        assert!(!list.contains("a.de"), "neither entry is trusted");
        assert!(list.contains("b.de"));
        assert_eq!(list.conflicting, vec!["a.de".to_owned()]);
        assert_eq!(list.list.domain_list.len(), 1);
    }

    #[test]
    fn a_payload_that_is_no_list_is_refused() {
        let ca = TestCa::new(Alg::BP256R1);
        for p in [
            serde_json::json!({"domainList": []}),
            serde_json::json!({"version": 1, "domainList": [{"domain": "a.de"}]}),
            serde_json::json!([1, 2]),
        ] {
            assert!(matches!(
                SignedList::verify(&signed(&ca, &p), &ca.trust(), SystemTime::now()),
                Err(ListError::Payload(_))
            ));
        }
    }
}
