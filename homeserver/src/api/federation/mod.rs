//! Server-Server API handlers, one module per spec section. Every endpoint but the key and
//! version look-ups and OpenID user info (which the VZD-FHIR-Directory calls although it is no
//! federation member, A-FED-11) is signed with `X-Matrix`, verified before the handler runs.

mod e2ee;
mod events;
mod keys;
mod media;
mod membership;
mod openid;
mod query;
mod transaction;

use axum::Router;

use crate::tenants::Tenants;

pub fn router(r: Router<Tenants>) -> Router<Tenants> {
    let r = keys::routes(r);
    let r = query::routes(r);
    let r = membership::routes(r);
    let r = transaction::routes(r);
    let r = e2ee::routes(r);
    let r = events::routes(r);
    let r = media::routes(r);
    openid::routes(r)
}
