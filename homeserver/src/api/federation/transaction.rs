//! `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs from another server, one result
//! per PDU.

use axum::Router;
use ruma::api::federation::transactions::send_transaction_message;

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    route(r, send)
}

async fn send(
    ctx: Ctx,
    req: send_transaction_message::v1::Request,
) -> Result<send_transaction_message::v1::Response> {
    let origin = ctx.origin()?;
    if req.origin != origin {
        return Err(Error::forbidden(
            "the transaction's origin is not the server that signed it",
        ));
    }
    let results = ctx
        .hs
        .federation
        .receiver
        .transaction(origin, req.transaction_id.as_str(), &req.pdus, &req.edus)
        .await?;
    Ok(send_transaction_message::v1::Response::new(results))
}
