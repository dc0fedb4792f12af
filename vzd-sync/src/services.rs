//! An organisation's entries in the directory (D-ORG-01..02): departments and services as
//! `HealthcareService` (Origin `owner`, provided by the organisation's `Organization`,
//! contact data, specialties) with a TI-M `Endpoint` per Matrix ID the org admin publishes
//! (`active` or `off`, optionally hidden from insured persons).
//!
//! The reconcile job makes the directory match (`apply`): it finds the organisation, makes or
//! updates each endpoint, then the service referring to them, and deletes the endpoints no
//! longer configured. It touches only resources it made: the service carries our id as an
//! identifier (`urn:uuid:<id>`), endpoint ids are recorded as soon as the directory answers,
//! and an endpoint whose answer got lost is found again by its address (search parameter
//! `address`, gematik `EndpointAddressSP`). An endpoint someone else made for the same Matrix
//! ID (one Endpoint per MXID) is referred to but never changed or deleted.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    domains::{EntryError, domain_of},
    fhir::{
        CodeableConcept, Coding, ContactPoint, Endpoint, HealthcareService, Identifier,
        Organization, Reference, TELEMATIK_ID_SYSTEM,
    },
    owner::{Organisation, OwnerClient},
    reconcile::{ApplyError, now_ms},
    store::{EntryRow, Kind, Store, StoreError},
};

/// FHIR's system for identifiers that are URIs.
pub const URI_SYSTEM: &str = "urn:ietf:rfc:3986";

/// A TI-M endpoint of a service: a Matrix ID the organisation publishes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    pub mxid: String,
    /// Shown in the directory (e.g. "Anmeldung", "Dr. Müller").
    pub name: String,
    /// Findable (`active`) or switched off (`off`).
    #[serde(default = "yes")]
    pub active: bool,
    /// Not shown to insured persons (AF_10376).
    #[serde(rename = "hideFromInsured", default)]
    pub hide_from_insured: bool,
}

fn yes() -> bool {
    true
}

/// A service (department) as the org admin configures it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    /// Phone, fax, e-mail, URL.
    #[serde(default)]
    pub telecom: Vec<ContactPoint>,
    /// Codes of the directory's `HealthcareSpecialtyTypeVS`.
    #[serde(default)]
    pub specialty: Vec<Coding>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
}

const TELECOM_SYSTEMS: [&str; 7] = ["phone", "fax", "email", "pager", "url", "sms", "other"];

impl ServiceSpec {
    /// Checks the spec; `our_domains` are the Matrix domains of the organisation, the only
    /// ones whose users it may publish.
    pub fn validate(&self, our_domains: &[String]) -> Result<(), String> {
        if self.name.trim().is_empty() || self.name.chars().count() > 200 {
            return Err("name must have 1 to 200 characters".into());
        }
        for t in &self.telecom {
            if !TELECOM_SYSTEMS.contains(&t.system.as_str()) {
                return Err(format!(
                    "telecom system {:?} is not one of {TELECOM_SYSTEMS:?}",
                    t.system
                ));
            }
            if t.value.trim().is_empty() || t.value.len() > 256 {
                return Err("telecom value must have 1 to 256 characters".into());
            }
        }
        for s in &self.specialty {
            if s.system.as_deref().is_none_or(str::is_empty)
                || s.code.as_deref().is_none_or(str::is_empty)
            {
                return Err("each specialty needs system and code".into());
            }
        }
        if self.endpoints.len() > 100 {
            return Err("at most 100 endpoints per service".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if crate::fhir::matrix_uri(&e.mxid).is_none() {
                return Err(format!("{:?} is not a Matrix ID", e.mxid));
            }
            let domain = e.mxid.split_once(':').map(|(_, d)| d).unwrap_or_default();
            if !our_domains.iter().any(|d| d == domain) {
                return Err(format!(
                    "{} is not on a messenger domain of this organisation",
                    e.mxid
                ));
            }
            if e.name.trim().is_empty() || e.name.chars().count() > 200 {
                return Err("endpoint name must have 1 to 200 characters".into());
            }
            if self.endpoints[..i].iter().any(|o| o.mxid == e.mxid) {
                return Err(format!("{} is listed twice", e.mxid));
            }
        }
        Ok(())
    }
}

/// What the directory made for a service.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Remote {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    /// Endpoints we made, by Matrix ID.
    #[serde(default)]
    pub endpoints: BTreeMap<String, String>,
    /// Matrix IDs whose endpoint is being made (its answer may have got lost).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub creating: Vec<String>,
}

pub fn spec_of(row: &EntryRow) -> Result<ServiceSpec, StoreError> {
    serde_json::from_value(row.body.clone()).map_err(|e| StoreError::Corrupt(e.to_string()))
}

fn remote_of(row: &EntryRow) -> Remote {
    serde_json::from_value(row.remote.clone()).unwrap_or_default()
}

/// The Matrix domains in the federation list (as configured) of organisation `telematik_id`.
async fn domains_of(store: &dyn Store, telematik_id: &str) -> Result<Vec<String>, StoreError> {
    let mut out = vec![];
    for row in store.entries(Kind::Domain, None).await? {
        let d = domain_of(&row)?;
        if row.wanted && d.telematik_id == telematik_id {
            out.push(d.domain);
        }
    }
    Ok(out)
}

/// The service should be in the directory as `spec` says.
pub async fn put(
    store: &dyn Store,
    telematik_id: &str,
    id: &str,
    spec: &ServiceSpec,
) -> Result<EntryRow, EntryError> {
    if !valid_id(id) {
        return Err(EntryError::Invalid(
            "service ids are 1 to 64 letters, digits, - and _".into(),
        ));
    }
    if store.organization(telematik_id).await?.is_none() {
        return Err(EntryError::Invalid(format!(
            "organisation {telematik_id} is not registered (PUT /_tim/vzd/v1/organizations/{telematik_id} first)"
        )));
    }
    if let Some(existing) = store.entry(Kind::Service, id).await?
        && existing.owner != telematik_id
    {
        return Err(EntryError::NotFound);
    }
    spec.validate(&domains_of(store, telematik_id).await?)
        .map_err(EntryError::Invalid)?;
    let body = serde_json::to_value(spec).map_err(|e| EntryError::Invalid(e.to_string()))?;
    store
        .put_entry(Kind::Service, id, telematik_id, &body, now_ms())
        .await?;
    store
        .entry(Kind::Service, id)
        .await?
        .ok_or(EntryError::NotFound)
}

/// The service should leave the directory.
pub async fn remove(
    store: &dyn Store,
    telematik_id: &str,
    id: &str,
) -> Result<EntryRow, EntryError> {
    match store.entry(Kind::Service, id).await? {
        Some(e) if e.owner == telematik_id => {}
        _ => return Err(EntryError::NotFound),
    }
    if !store.remove_entry(Kind::Service, id, now_ms()).await? {
        return Err(EntryError::NotFound);
    }
    store
        .entry(Kind::Service, id)
        .await?
        .ok_or(EntryError::NotFound)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn our_identifier(key: &str) -> Identifier {
    Identifier {
        system: Some(URI_SYSTEM.into()),
        value: Some(format!("urn:uuid:{key}")),
    }
}

fn same_endpoint(current: &Endpoint, wanted: &Endpoint) -> bool {
    current.status == wanted.status
        && current.name == wanted.name
        && current.address == wanted.address
        && current.is_tim()
        && current.hidden_from_insured() == wanted.hidden_from_insured()
}

fn same_service(current: &HealthcareService, wanted: &HealthcareService) -> bool {
    let refs = |s: &HealthcareService| {
        let mut r: Vec<String> = s.endpoint.iter().map(|r| r.reference.clone()).collect();
        r.sort();
        r
    };
    current.name == wanted.name
        && current.telecom == wanted.telecom
        && current.specialty == wanted.specialty
        && current.provided_by.id_of("Organization") == wanted.provided_by.id_of("Organization")
        && refs(current) == refs(wanted)
        && current.identifier.contains(&wanted.identifier[0])
}

struct Session<'a> {
    owner: &'a OwnerClient,
    store: &'a dyn Store,
    row: &'a EntryRow,
    token: String,
    remote: Remote,
}

impl Session<'_> {
    async fn save(&self) -> Result<(), ApplyError> {
        let value =
            serde_json::to_value(&self.remote).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(self
            .store
            .set_remote(Kind::Service, &self.row.key, &value)
            .await?)
    }

    async fn find_endpoint(&self, mxid: &str) -> Result<Option<Endpoint>, ApplyError> {
        let address = crate::fhir::matrix_uri(mxid).unwrap_or_default();
        let found = self
            .owner
            .search(&self.token, "Endpoint", &[("address", &address)])
            .await?;
        Ok(found
            .resources::<Endpoint>("Endpoint")
            .into_iter()
            .find(|e| e.address == address))
    }

    /// The endpoint's id in the directory, made or updated as `spec` says.
    async fn endpoint(&mut self, spec: &EndpointSpec) -> Result<String, ApplyError> {
        let mut wanted = Endpoint::tim(&spec.mxid, &spec.name, spec.active, spec.hide_from_insured)
            .ok_or_else(|| ApplyError::Refused(format!("{} is not a Matrix ID", spec.mxid)))?;
        let mut current = match self.remote.endpoints.get(&spec.mxid) {
            Some(id) => {
                self.owner
                    .read::<Endpoint>(&self.token, "Endpoint", id)
                    .await?
            }
            None => None,
        };
        if current.is_none() {
            match self.find_endpoint(&spec.mxid).await? {
                // Ours: made by an attempt whose answer got lost.
                Some(e)
                    if self.remote.creating.contains(&spec.mxid)
                        || self.remote.endpoints.contains_key(&spec.mxid) =>
                {
                    current = Some(e)
                }
                // Someone else's (e.g. the doctor's own, D-PR-01): refer to it, never change it.
                Some(e) => {
                    return e.id.ok_or_else(|| {
                        ApplyError::Refused("directory endpoint without id".into())
                    });
                }
                None => {}
            }
        }
        let id = match current {
            Some(cur) => {
                let id = cur
                    .id
                    .clone()
                    .ok_or_else(|| ApplyError::Refused("directory endpoint without id".into()))?;
                if !same_endpoint(&cur, &wanted) {
                    wanted.id = Some(id.clone());
                    self.owner
                        .update(&self.token, "Endpoint", &id, &wanted)
                        .await?;
                }
                id
            }
            None => {
                if !self.remote.creating.contains(&spec.mxid) {
                    self.remote.creating.push(spec.mxid.clone());
                    self.save().await?;
                }
                let made = self.owner.create(&self.token, "Endpoint", &wanted).await?;
                made.id.ok_or_else(|| {
                    ApplyError::Refused("directory made an endpoint without id".into())
                })?
            }
        };
        self.remote.creating.retain(|m| *m != spec.mxid);
        self.remote.endpoints.insert(spec.mxid.clone(), id.clone());
        self.save().await?;
        Ok(id)
    }

    async fn organization_id(&self) -> Result<String, ApplyError> {
        let tid = &self.row.owner;
        let found = self
            .owner
            .search(
                &self.token,
                "Organization",
                &[("identifier", &format!("{TELEMATIK_ID_SYSTEM}|{tid}"))],
            )
            .await?;
        found
            .resources::<Organization>("Organization")
            .into_iter()
            .find(|o| o.telematik_id() == Some(tid.as_str()))
            .and_then(|o| o.id)
            .ok_or_else(|| {
                ApplyError::Refused(format!("organisation {tid} is not in the directory"))
            })
    }

    /// Our service in the directory: by the recorded id, or by our identifier.
    async fn current_service(&self) -> Result<Option<HealthcareService>, ApplyError> {
        if let Some(id) = &self.remote.service_id
            && let Some(s) = self
                .owner
                .read::<HealthcareService>(&self.token, "HealthcareService", id)
                .await?
        {
            return Ok(Some(s));
        }
        let ident = our_identifier(&self.row.key);
        let q = format!(
            "{URI_SYSTEM}|{}",
            ident.value.as_deref().unwrap_or_default()
        );
        let found = self
            .owner
            .search(&self.token, "HealthcareService", &[("identifier", &q)])
            .await?;
        Ok(found
            .resources::<HealthcareService>("HealthcareService")
            .into_iter()
            .find(|s| s.identifier.contains(&ident)))
    }

    async fn put_service(&mut self, spec: &ServiceSpec) -> Result<(), ApplyError> {
        let org_id = self.organization_id().await?;
        let mut refs = Vec::with_capacity(spec.endpoints.len());
        for e in &spec.endpoints {
            refs.push(Reference::to("Endpoint", &self.endpoint(e).await?));
        }
        let mut wanted = HealthcareService::owned(&org_id);
        wanted.identifier = vec![our_identifier(&self.row.key)];
        wanted.name = Some(spec.name.clone());
        wanted.telecom = spec.telecom.clone();
        wanted.specialty = spec
            .specialty
            .iter()
            .map(|c| CodeableConcept {
                coding: vec![c.clone()],
                text: None,
            })
            .collect();
        wanted.endpoint = refs;
        match self.current_service().await? {
            Some(cur) => {
                let id = cur
                    .id
                    .clone()
                    .ok_or_else(|| ApplyError::Refused("directory service without id".into()))?;
                if !same_service(&cur, &wanted) {
                    wanted.id = Some(id.clone());
                    self.owner
                        .update(&self.token, "HealthcareService", &id, &wanted)
                        .await?;
                }
                self.remote.service_id = Some(id);
            }
            None => {
                let made = self
                    .owner
                    .create(&self.token, "HealthcareService", &wanted)
                    .await?;
                self.remote.service_id = made.id;
            }
        }
        self.save().await?;
        // Endpoints no longer configured go (also ones whose making was not confirmed).
        let dropped: Vec<String> = self
            .remote
            .creating
            .iter()
            .filter(|m| !spec.endpoints.iter().any(|e| e.mxid == **m))
            .cloned()
            .collect();
        for mxid in dropped {
            if let Some(e) = self.find_endpoint(&mxid).await?
                && let Some(id) = e.id
            {
                self.remote.endpoints.insert(mxid.clone(), id);
            }
            self.remote.creating.retain(|m| *m != mxid);
        }
        let obsolete: Vec<(String, String)> = self
            .remote
            .endpoints
            .iter()
            .filter(|(m, _)| !spec.endpoints.iter().any(|e| e.mxid == **m))
            .map(|(m, id)| (m.clone(), id.clone()))
            .collect();
        for (mxid, id) in obsolete {
            self.delete_endpoint(&id).await?;
            self.remote.endpoints.remove(&mxid);
            self.save().await?;
        }
        Ok(())
    }

    /// Deletes an endpoint we made; one that another entry (a doctor's role, another service)
    /// still refers to is left to them (409) and no longer tracked.
    async fn delete_endpoint(&self, id: &str) -> Result<(), ApplyError> {
        match self.owner.delete(&self.token, "Endpoint", id).await {
            Err(e) if e.status() == Some(409) => {
                tracing::info!(
                    endpoint = id,
                    "endpoint still referred to elsewhere; left in place"
                );
                Ok(())
            }
            other => Ok(other?),
        }
    }

    async fn delete_service(&mut self) -> Result<(), ApplyError> {
        if let Some(cur) = self.current_service().await?
            && let Some(id) = cur.id
        {
            self.owner
                .delete(&self.token, "HealthcareService", &id)
                .await?;
        }
        self.remote.service_id = None;
        self.save().await?;
        for mxid in std::mem::take(&mut self.remote.creating) {
            if let Some(e) = self.find_endpoint(&mxid).await?
                && let Some(id) = e.id
            {
                self.remote.endpoints.insert(mxid, id);
            }
        }
        for (mxid, id) in self.remote.endpoints.clone() {
            self.delete_endpoint(&id).await?;
            self.remote.endpoints.remove(&mxid);
            self.save().await?;
        }
        Ok(())
    }
}

/// Makes the directory hold what `row` says.
pub async fn apply(
    owner: &OwnerClient,
    store: &dyn Store,
    row: &EntryRow,
) -> Result<(), ApplyError> {
    let profession_oid = store.organization(&row.owner).await?.ok_or_else(|| {
        ApplyError::Refused(format!("organisation {} is not registered", row.owner))
    })?;
    let org = Organisation {
        telematik_id: row.owner.clone(),
        profession_oid,
    };
    let token = owner.token(&org).await?;
    let mut session = Session {
        owner,
        store,
        row,
        token,
        remote: remote_of(row),
    };
    let result = match row.wanted {
        true => session.put_service(&spec_of(row)?).await,
        false => session.delete_service().await,
    };
    if let Err(ApplyError::Directory(e)) = &result
        && e.status() == Some(401)
    {
        owner.forget(&org).await;
    }
    result
}
