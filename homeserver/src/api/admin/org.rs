//! Organisation-wide admin functions: reports, server notices, rooms, settings, audit log.

use axum::{
    Json, Router,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, J, P, Q, local_user, ok, page};
use crate::{
    admin::SettingsUpdate,
    ephemeral::now_ms,
    error::{Error, Result},
    notices::check_body,
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    r.route("/_tim/admin/v1/reports", get(reports))
        .route("/_tim/admin/v1/reports/{id}/handled", post(handled))
        .route("/_tim/admin/v1/server_notices", post(notice))
        .route("/_tim/admin/v1/server_notices/jobs/{id}", get(notice_job))
        .route("/_tim/admin/v1/rooms", get(rooms))
        .route("/_tim/admin/v1/media/{media_id}", delete(delete_media))
        .route(
            "/_tim/admin/v1/settings",
            get(settings).put(update_settings),
        )
        .route("/_tim/admin/v1/audit_log", get(audit_log))
}

#[derive(Deserialize)]
struct ReportQuery {
    handled: Option<bool>,
    room_id: Option<String>,
    from: Option<i64>,
    limit: Option<i64>,
}

async fn reports(admin: Admin, Q(q): Q<ReportQuery>) -> Result<Json<Value>> {
    let limit = page(q.limit)?;
    let rows = admin
        .hs
        .stores
        .reports
        .reports(q.handled, q.room_id.as_deref(), q.from, limit)
        .await?;
    admin.audit("reports.list", None, None).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({
        "reports": rows.iter().map(|r| json!({
            "id": r.id,
            "room_id": r.room_id,
            "event_id": r.event_id,
            "event_sender": r.event_sender,
            "reporter": r.reporter,
            "reason": r.reason,
            "score": r.score,
            "created_ts": r.created_ts,
            "handled_ts": r.handled_ts,
            "handled_by": r.handled_by,
        })).collect::<Vec<_>>(),
        "next_from": next,
    })))
}

async fn handled(admin: Admin, P(id): P<i64>) -> Result<Response> {
    admin
        .audited("reports.handled", Some(&id.to_string()), None, async {
            let marked = admin
                .hs
                .stores
                .reports
                .mark_report_handled(id, &admin.actor, now_ms())
                .await?;
            if !marked {
                return Err(Error::not_found("no such open report"));
            }
            Ok(())
        })
        .await?;
    Ok(ok())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoticeBody {
    /// One user; without it, every user of the organisation.
    user_id: Option<String>,
    body: String,
}

async fn notice(admin: Admin, J(req): J<NoticeBody>) -> Result<Response> {
    check_body(&req.body)?;
    match req.user_id {
        Some(user) => {
            let user = local_user(&admin.hs, &user)?;
            let event_id = admin
                .audited(
                    "server_notices.send",
                    Some(user.as_str()),
                    None,
                    admin.hs.send_server_notice(&user, &req.body),
                )
                .await?;
            Ok(Json(json!({ "event_id": event_id })).into_response())
        }
        None => {
            // The job id is known only once the job exists; the entry says what was started.
            let job = admin
                .audited(
                    "server_notices.send_all",
                    None,
                    None,
                    admin.hs.send_server_notice_to_all(&admin.actor, &req.body),
                )
                .await?;
            Ok((StatusCode::ACCEPTED, Json(json!({ "job_id": job }))).into_response())
        }
    }
}

async fn notice_job(admin: Admin, P(id): P<i64>) -> Result<Json<Value>> {
    let job = admin
        .hs
        .notice_job(id)
        .await?
        .ok_or_else(|| Error::not_found("no such notice job"))?;
    admin
        .audit("server_notices.job", Some(&id.to_string()), None)
        .await?;
    Ok(Json(json!({
        "job_id": job.id,
        "created_ts": job.created_ts,
        "created_by": job.created_by,
        "sent": job.sent,
        "done": job.done_ts.is_some(),
        "done_ts": job.done_ts,
    })))
}

/// Deletes a file with its thumbnails (e.g. a reported attachment).
async fn delete_media(admin: Admin, P(id): P<String>) -> Result<Response> {
    admin
        .audited("media.delete", Some(&id), None, async {
            if !admin.hs.media.delete(&id).await? {
                return Err(Error::not_found("no such media"));
            }
            Ok(())
        })
        .await?;
    Ok(ok())
}

#[derive(Deserialize)]
struct RoomQuery {
    from: Option<String>,
    limit: Option<i64>,
}

async fn rooms(admin: Admin, Q(q): Q<RoomQuery>) -> Result<Json<Value>> {
    let limit = page(q.limit)?;
    let rows = admin
        .hs
        .stores
        .admin
        .rooms(q.from.as_deref(), limit)
        .await?;
    admin.audit("rooms.list", None, None).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.room_id.clone()))
        .flatten();
    Ok(Json(json!({
        "rooms": rows.iter().map(|r| json!({
            "room_id": r.room_id,
            "creator": r.creator,
            "created_ts": r.created_ts,
            "joined_members": r.joined,
            "invited_members": r.invited,
            "encrypted": r.encrypted,
        })).collect::<Vec<_>>(),
        "next_from": next,
    })))
}

async fn settings(admin: Admin) -> Result<Json<Value>> {
    let s = admin.hs.settings().await?;
    admin.audit("settings.get", None, None).await?;
    Ok(Json(serde_json::to_value(s).map_err(Error::internal)?))
}

async fn update_settings(admin: Admin, J(update): J<SettingsUpdate>) -> Result<Json<Value>> {
    let details = json!({ "displayname_admin_only": update.displayname_admin_only });
    let s = admin
        .audited(
            "settings.update",
            None,
            Some(details),
            admin.hs.update_settings(update),
        )
        .await?;
    Ok(Json(serde_json::to_value(s).map_err(Error::internal)?))
}

#[derive(Deserialize)]
struct AuditQuery {
    from: Option<i64>,
    limit: Option<i64>,
}

async fn audit_log(admin: Admin, Q(q): Q<AuditQuery>) -> Result<Json<Value>> {
    let limit = page(q.limit)?;
    let rows = admin.hs.stores.admin.audit_log(q.from, limit).await?;
    // Reading the log is recorded too (after the read, so the page shows what was there).
    admin.audit("audit_log.read", None, None).await?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    Ok(Json(json!({
        "entries": rows.iter().map(|r| json!({
            "id": r.id,
            "actor": r.actor,
            "action": r.action,
            "target": r.target,
            "details": r.details.as_deref().and_then(|d| serde_json::from_str::<Value>(d).ok()),
            "ts": r.ts,
            "outcome": r.outcome,
        })).collect::<Vec<_>>(),
        "next_from": next,
    })))
}
