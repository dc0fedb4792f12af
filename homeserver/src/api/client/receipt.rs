//! Receipts and the read marker.

use axum::Router;
use ruma::{
    api::client::{
        read_marker::set_read_marker,
        receipt::create_receipt::{self, v3::ReceiptType},
    },
    events::receipt::ReceiptThread,
};

use crate::{
    api::{Ctx, route},
    error::{Error, Result},
    receipts::{FULLY_READ, READ, READ_PRIVATE},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, create);
    route(r, read_marker)
}

async fn create(
    ctx: Ctx,
    req: create_receipt::v3::Request,
) -> Result<create_receipt::v3::Response> {
    let kind = match req.receipt_type {
        ReceiptType::Read => READ,
        ReceiptType::ReadPrivate => READ_PRIVATE,
        ReceiptType::FullyRead => FULLY_READ,
        _ => return Err(Error::invalid_param("unknown receipt type")),
    };
    let thread = match &req.thread {
        ReceiptThread::Unthreaded => String::new(),
        ReceiptThread::Main => "main".to_owned(),
        ReceiptThread::Thread(root) => root.to_string(),
        _ => {
            return Err(Error::invalid_param(
                "thread_id must be main or an event id",
            ));
        }
    };
    if kind == FULLY_READ && !thread.is_empty() {
        return Err(Error::invalid_param("the read marker has no thread"));
    }
    ctx.hs
        .set_receipt(
            &ctx.session()?.user_id,
            &req.room_id,
            kind,
            &req.event_id,
            &thread,
        )
        .await?;
    Ok(create_receipt::v3::Response::new())
}

async fn read_marker(
    ctx: Ctx,
    req: set_read_marker::v3::Request,
) -> Result<set_read_marker::v3::Response> {
    let user = &ctx.session()?.user_id;
    for (kind, event) in [
        (FULLY_READ, &req.fully_read),
        (READ, &req.read_receipt),
        (READ_PRIVATE, &req.private_read_receipt),
    ] {
        if let Some(event) = event {
            ctx.hs
                .set_receipt(user, &req.room_id, kind, event, "")
                .await?;
        }
    }
    Ok(set_read_marker::v3::Response::new())
}
