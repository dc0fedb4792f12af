//! The user directory and reports.

use axum::{Router, body::Body, response::Response};
use http::HeaderMap;
use ruma::api::client::{
    room::{report_content, report_room},
    user_directory::search_users,
};
use serde::Deserialize;

use crate::{
    api::{Ctx, json_body, route, route_streaming},
    error::Result,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route(r, search);
    let r = route_streaming(r, report_event);
    route(r, report_whole_room)
}

async fn search(ctx: Ctx, req: search_users::v3::Request) -> Result<search_users::v3::Response> {
    let limit = u64::from(req.limit).clamp(1, 100) as usize;
    let (found, limited) = ctx
        .hs
        .search_user_directory(&ctx.session()?.user_id, &req.search_term, limit)
        .await?;
    let results = found
        .into_iter()
        .filter_map(|u| {
            let mut user = search_users::v3::User::new(u.user_id.try_into().ok()?);
            user.display_name = u.displayname;
            user.avatar_url = u.avatar_url.map(Into::into);
            Some(user)
        })
        .collect();
    Ok(search_users::v3::Response::new(results, limited))
}

/// The body of an event report. Matrix 1.11 still has `score`, which Ruma's request type no
/// longer carries, so the body is read here.
#[derive(Deserialize)]
struct ReportBody {
    reason: Option<String>,
    score: Option<i64>,
}

async fn report_event(
    ctx: Ctx,
    req: report_content::v3::Request,
    _: HeaderMap,
    body: Body,
) -> Result<Response> {
    let timeout = std::time::Duration::from_secs(ctx.hs.config.http.body_read_timeout_secs);
    let bytes = crate::api::read_body(body, 64 * 1024, timeout).await?;
    let parsed: ReportBody = if bytes.is_empty() {
        ReportBody {
            reason: None,
            score: None,
        }
    } else {
        json_body(&bytes)?
    };
    ctx.hs
        .report(
            &ctx.session()?.user_id,
            &req.room_id,
            Some(&req.event_id),
            parsed.reason,
            parsed.score,
        )
        .await?;
    Ok(axum::response::IntoResponse::into_response(axum::Json(
        serde_json::json!({}),
    )))
}

async fn report_whole_room(
    ctx: Ctx,
    req: report_room::v3::Request,
) -> Result<report_room::v3::Response> {
    ctx.hs
        .report(
            &ctx.session()?.user_id,
            &req.room_id,
            None,
            Some(req.reason),
            None,
        )
        .await?;
    Ok(report_room::v3::Response::new())
}
