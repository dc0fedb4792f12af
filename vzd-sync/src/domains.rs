//! Our messenger domains in the federation list (B-PROV-01..03). The registration service
//! says which domains should be there; each change is stored before it is acknowledged and
//! brought to the directory by the reconcile job: add what is missing, update what differs,
//! delete what should go.

use crate::{
    provider::{Domain, ProviderClient},
    reconcile::{ApplyError, now_ms},
    store::{EntryRow, Kind, Store, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    #[error("{0}")]
    Invalid(String),
    #[error("not known")]
    NotFound,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A domain row with its entry.
pub fn domain_of(row: &EntryRow) -> Result<Domain, StoreError> {
    serde_json::from_value(row.body.clone()).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// The domain should be in the federation list with this entry.
pub async fn put(store: &dyn Store, mut domain: Domain) -> Result<EntryRow, EntryError> {
    domain.tim_anbieter = None;
    domain.validate().map_err(EntryError::Invalid)?;
    let body = serde_json::to_value(&domain).map_err(|e| EntryError::Invalid(e.to_string()))?;
    store
        .put_entry(Kind::Domain, &domain.domain, "", &body, now_ms())
        .await?
        .ok_or(EntryError::NotFound)?;
    store
        .entry(Kind::Domain, &domain.domain)
        .await?
        .ok_or(EntryError::NotFound)
}

/// The domain should leave the federation list.
pub async fn remove(store: &dyn Store, domain: &str) -> Result<EntryRow, EntryError> {
    if !store.remove_entry(Kind::Domain, domain, now_ms()).await? {
        return Err(EntryError::NotFound);
    }
    store
        .entry(Kind::Domain, domain)
        .await?
        .ok_or(EntryError::NotFound)
}

/// Makes the directory hold what `row` says.
pub async fn apply(provider: &ProviderClient, row: &EntryRow) -> Result<(), ApplyError> {
    let wanted = domain_of(row)?;
    let name = &wanted.domain;
    if !row.wanted {
        return match provider.delete_domain(name).await {
            Err(e) if e.status() == Some(404) => Ok(()),
            other => Ok(other?),
        };
    }
    let held = |list: Vec<Domain>| list.into_iter().find(|d| d.domain == *name);
    match held(provider.domains(Some(name)).await?) {
        Some(d) if d.same_as(&wanted) => Ok(()),
        Some(_) => Ok(provider.update_domain(&wanted).await.map(|_| ())?),
        None => match provider.add_domain(&wanted).await {
            Ok(_) => Ok(()),
            // Added meanwhile (by an attempt whose answer was lost): compare again.
            Err(e) if e.status() == Some(409) => match held(provider.domains(Some(name)).await?) {
                Some(d) if d.same_as(&wanted) => Ok(()),
                Some(_) => Ok(provider.update_domain(&wanted).await.map(|_| ())?),
                None => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        },
    }
}
