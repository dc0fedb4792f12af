//! Server-Server API handlers, one module per spec section. So far only what a third party
//! needs of it: OpenID user info, which the VZD-FHIR-Directory calls although it is no
//! federation member (A-FED-11).

mod openid;

use axum::Router;

use crate::tenants::Tenants;

pub fn router(r: Router<Tenants>) -> Router<Tenants> {
    openid::routes(r)
}
