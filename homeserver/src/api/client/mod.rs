//! Client-Server API handlers, one module per spec section.

mod account;
mod account_data;
mod backup;
mod directory;
mod discovery;
pub(crate) mod keys;
mod media;
mod openid;
mod presence;
mod profile;
mod push;
mod receipt;
mod room;
pub(crate) mod session;
mod sync;
mod tag;
mod typing;

use axum::Router;

use crate::tenants::Tenants;

pub fn router(r: Router<Tenants>) -> Router<Tenants> {
    let r = discovery::routes(r);
    let r = session::routes(r);
    let r = account::routes(r);
    let r = account_data::routes(r);
    let r = room::routes(r);
    let r = profile::routes(r);
    let r = presence::routes(r);
    let r = receipt::routes(r);
    let r = typing::routes(r);
    let r = tag::routes(r);
    let r = media::routes(r);
    let r = push::routes(r);
    let r = directory::routes(r);
    let r = keys::routes(r);
    let r = backup::routes(r);
    let r = openid::routes(r);
    sync::routes(r)
}
