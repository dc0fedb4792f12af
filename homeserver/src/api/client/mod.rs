//! Client-Server API handlers, one module per spec section.

mod account;
mod account_data;
mod discovery;
mod room;
mod session;
mod sync;

use axum::Router;

use crate::tenants::Tenants;

pub fn router(r: Router<Tenants>) -> Router<Tenants> {
    let r = discovery::routes(r);
    let r = session::routes(r);
    let r = account::routes(r);
    let r = account_data::routes(r);
    let r = room::routes(r);
    sync::routes(r)
}
