//! The media repository's HTTP edge: uploads are streamed to storage, downloads streamed back.
//! URL previews are refused (TI-M A-ROOM-12); the legacy unauthenticated download and
//! thumbnail endpoints answer when the config allows (A-ROOM-15).

// The legacy endpoints are deprecated in Ruma; serving them is a TI-M requirement.
#![allow(deprecated)]

use std::time::Duration;

use axum::{
    Router,
    body::Body,
    response::{IntoResponse, Response},
    routing::get,
};
use http::{HeaderMap, HeaderValue, header};
use ruma::{
    OwnedServerName,
    api::{
        Metadata, OutgoingResponseExt,
        client::{
            authenticated_media, media, media::get_content_thumbnail::v3::Method as SpecMethod,
        },
        path_builder::PathBuilder,
    },
};

use crate::{
    api::{Ctx, route, route_streaming},
    error::{Error, Result},
    media::{Download, UploadMeta, storage::ByteStream, thumbnail::Method},
    tenants::Tenants,
};

pub fn routes(r: Router<Tenants>) -> Router<Tenants> {
    let r = route_streaming(r, upload);
    let r = route_streaming(r, upload_reserved);
    let r = route(r, create);
    let r = route(r, config);
    let r = route_streaming(r, download);
    let r = route_streaming(r, download_as);
    let r = route_streaming(r, thumbnail);
    let r = route_streaming(r, legacy_download);
    let r = route_streaming(r, legacy_download_as);
    let r = route_streaming(r, legacy_thumbnail);
    // A-ROOM-12: no URL previews, for anyone.
    let mut r = r;
    for path in authenticated_media::get_media_preview::v1::Request::PATH_BUILDER
        .all_paths()
        .chain(media::get_media_preview::v3::Request::PATH_BUILDER.all_paths())
    {
        r = r.route(
            path,
            get(|| async {
                Error::not_found("URL previews are disabled on this server").into_response()
            }),
        );
    }
    r
}

fn json<T: OutgoingResponseExt>(resp: T) -> Result<Response> {
    let http = resp
        .try_into_http_response::<bytes::BytesMut>()
        .map_err(Error::internal)?;
    Ok(http.map(|b| Body::from(b.freeze())))
}

/// The upload's body. A client that pauses longer than `limits.upload_idle_timeout_secs`
/// between two chunks, or after the first minute sends slower on average than
/// `limits.upload_min_bytes_per_sec`, is cut off: a trickling client must not hold an upload
/// (and a connection) open for hours.
fn body_stream(body: Body, limits: &crate::config::HttpConfig) -> ByteStream {
    use futures::StreamExt;
    let idle = Duration::from_secs(limits.upload_idle_timeout_secs);
    let min_rate = limits.upload_min_bytes_per_sec as f64;
    let started = tokio::time::Instant::now();
    let stalled =
        |why: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("the upload {why}"));
    Box::pin(futures::stream::unfold(
        Some((body.into_data_stream(), 0u64)),
        move |state| async move {
            let (mut chunks, received) = state?;
            match tokio::time::timeout(idle, chunks.next()).await {
                Ok(Some(Ok(chunk))) => {
                    let received = received + chunk.len() as u64;
                    let secs = started.elapsed().as_secs_f64();
                    if secs > 60.0 && (received as f64) / secs < min_rate {
                        return Some((Err(stalled("is too slow")), None));
                    }
                    Some((Ok(chunk), Some((chunks, received))))
                }
                Ok(Some(Err(e))) => Some((Err(std::io::Error::other(e)), None)),
                Ok(None) => None,
                Err(_) => Some((Err(stalled("stalled")), None)),
            }
        },
    ))
}

fn upload_meta(
    headers: &HeaderMap,
    content_type: Option<String>,
    filename: Option<String>,
) -> Result<UploadMeta> {
    let declared_len = match headers.get(header::CONTENT_LENGTH) {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| Error::invalid_param("invalid Content-Length"))?,
        ),
        None => None,
    };
    Ok(UploadMeta {
        content_type,
        filename,
        declared_len,
    })
}

async fn upload(
    ctx: Ctx,
    req: media::create_content::v3::Request,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let meta = upload_meta(&headers, req.content_type, req.filename)?;
    let mut body = body_stream(body, &ctx.hs.config.http);
    let uri = ctx
        .hs
        .media
        .upload(&ctx.session()?.user_id, meta, &mut body)
        .await;
    json(media::create_content::v3::Response::new(
        refused_politely(uri, body).await?,
    ))
}

/// Most clients only read the answer once they sent the whole body: refusing an upload
/// without reading the rest would reset the connection and lose the 413. So the rest is read
/// and dropped — up to a bound, beyond which the connection is simply closed.
async fn refused_politely<T>(result: Result<T>, mut body: ByteStream) -> Result<T> {
    const DRAIN_LIMIT: u64 = 256 * 1024 * 1024;
    const DRAIN_TIME: Duration = Duration::from_secs(30);
    if result.is_err() {
        let drain = async {
            let mut read = 0u64;
            while let Some(Ok(chunk)) = futures::StreamExt::next(&mut body).await {
                read += chunk.len() as u64;
                if read > DRAIN_LIMIT {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
    }
    result
}

async fn create(
    ctx: Ctx,
    _: media::create_mxc_uri::v1::Request,
) -> Result<media::create_mxc_uri::v1::Response> {
    let (uri, expires) = ctx.hs.media.create(&ctx.session()?.user_id).await?;
    let mut resp = media::create_mxc_uri::v1::Response::new(uri);
    resp.unused_expires_at =
        ruma::UInt::new(expires.max(0) as u64).map(ruma::MilliSecondsSinceUnixEpoch);
    Ok(resp)
}

async fn upload_reserved(
    ctx: Ctx,
    req: media::create_content_async::v3::Request,
    headers: HeaderMap,
    body: Body,
) -> Result<Response> {
    let meta = upload_meta(&headers, req.content_type, req.filename)?;
    let mut body = body_stream(body, &ctx.hs.config.http);
    let result = ctx
        .hs
        .media
        .upload_reserved(
            &ctx.session()?.user_id,
            &req.server_name,
            &req.media_id,
            meta,
            &mut body,
        )
        .await;
    refused_politely(result, body).await?;
    // Ruma's response type has no constructor; the body is `{}`.
    Ok(axum::Json(serde_json::json!({})).into_response())
}

async fn config(
    ctx: Ctx,
    _: authenticated_media::get_media_config::v1::Request,
) -> Result<authenticated_media::get_media_config::v1::Response> {
    Ok(authenticated_media::get_media_config::v1::Response::new(
        ruma::UInt::new_saturating(ctx.hs.media.max_upload_bytes()),
    ))
}

/// Types a browser may show inline; everything else is offered as a download.
fn inline_safe(content_type: &str) -> bool {
    const SAFE: [&str; 19] = [
        "text/css",
        "text/plain",
        "text/csv",
        "application/json",
        "application/ld+json",
        "image/jpeg",
        "image/gif",
        "image/png",
        "image/apng",
        "image/webp",
        "image/avif",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "video/quicktime",
        "audio/mp4",
        "audio/webm",
        "audio/aac",
        "audio/mpeg",
    ];
    let base = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    SAFE.contains(&base.as_str())
        || matches!(
            base.as_str(),
            "audio/ogg" | "audio/wav" | "audio/wave" | "audio/x-wav" | "audio/flac"
        )
}

/// The file response: streamed, with headers that keep browsers from running it.
fn file_response(d: Download, filename: Option<&str>) -> Result<Response> {
    let disposition = if inline_safe(&d.content_type) {
        "inline"
    } else {
        "attachment"
    };
    let disposition = match filename.or(d.filename.as_deref()) {
        Some(name) => format!(
            "{disposition}; filename*=utf-8''{}",
            percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC)
        ),
        None => disposition.to_owned(),
    };
    let value = |v: &str| HeaderValue::from_str(v).map_err(Error::internal);
    let mut resp = Response::new(Body::from_stream(d.body));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&d.content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(d.len));
    h.insert(header::CONTENT_DISPOSITION, value(&disposition)?);
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; media-src 'self'; object-src 'self';"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=86400, immutable"),
    );
    Ok(resp)
}

async fn get_file(
    ctx: &Ctx,
    server: &OwnedServerName,
    id: &str,
    timeout: Duration,
    filename: Option<&str>,
) -> Result<Response> {
    let d = ctx.hs.media.download(server, id, timeout).await?;
    file_response(d, filename)
}

async fn get_thumbnail(
    ctx: &Ctx,
    server: &OwnedServerName,
    id: &str,
    (width, height): (ruma::UInt, ruma::UInt),
    method: Option<SpecMethod>,
    timeout: Duration,
) -> Result<Response> {
    let method = match method {
        Some(SpecMethod::Crop) => Method::Crop,
        None | Some(SpecMethod::Scale) => Method::Scale,
        Some(_) => return Err(Error::invalid_param("method must be crop or scale")),
    };
    let dim = |v: ruma::UInt| u32::try_from(u64::from(v)).unwrap_or(u32::MAX);
    let d = ctx
        .hs
        .media
        .thumbnail(server, id, dim(width), dim(height), method, timeout)
        .await?;
    file_response(d, None)
}

async fn download(
    ctx: Ctx,
    req: authenticated_media::get_content::v1::Request,
    _: HeaderMap,
    _: Body,
) -> Result<Response> {
    get_file(&ctx, &req.server_name, &req.media_id, req.timeout_ms, None).await
}

async fn download_as(
    ctx: Ctx,
    req: authenticated_media::get_content_as_filename::v1::Request,
    _: HeaderMap,
    _: Body,
) -> Result<Response> {
    get_file(
        &ctx,
        &req.server_name,
        &req.media_id,
        req.timeout_ms,
        Some(&req.filename),
    )
    .await
}

async fn thumbnail(
    ctx: Ctx,
    req: authenticated_media::get_content_thumbnail::v1::Request,
    _: HeaderMap,
    _: Body,
) -> Result<Response> {
    get_thumbnail(
        &ctx,
        &req.server_name,
        &req.media_id,
        (req.width, req.height),
        req.method,
        req.timeout_ms,
    )
    .await
}

fn legacy_allowed(ctx: &Ctx) -> Result<()> {
    if !ctx.hs.media.legacy_unauthenticated() {
        return Err(Error::Unrecognized);
    }
    Ok(())
}

async fn legacy_download(
    ctx: Ctx,
    req: media::get_content::v3::Request,
    _: HeaderMap,
    _: Body,
) -> Result<Response> {
    legacy_allowed(&ctx)?;
    get_file(&ctx, &req.server_name, &req.media_id, req.timeout_ms, None).await
}

async fn legacy_download_as(
    ctx: Ctx,
    req: media::get_content_as_filename::v3::Request,
    _: HeaderMap,
    _: Body,
) -> Result<Response> {
    legacy_allowed(&ctx)?;
    get_file(
        &ctx,
        &req.server_name,
        &req.media_id,
        req.timeout_ms,
        Some(&req.filename),
    )
    .await
}

async fn legacy_thumbnail(
    ctx: Ctx,
    req: media::get_content_thumbnail::v3::Request,
    _: HeaderMap,
    _: Body,
) -> Result<Response> {
    legacy_allowed(&ctx)?;
    get_thumbnail(
        &ctx,
        &req.server_name,
        &req.media_id,
        (req.width, req.height),
        req.method,
        req.timeout_ms,
    )
    .await
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    /// A client that trickles one byte every 20 s passes the idle timeout but is cut off once
    /// its first minute is over.
    #[tokio::test(start_paused = true)]
    async fn trickling_uploads_are_cut_off() {
        let trickle = futures::stream::unfold(0u32, |n| async move {
            tokio::time::sleep(std::time::Duration::from_secs(20)).await;
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x")),
                n + 1,
            ))
        });
        let limits = crate::config::HttpConfig::default();
        let mut body = super::body_stream(axum::body::Body::from_stream(trickle), &limits);
        let mut received = 0;
        let err = loop {
            match body.next().await {
                Some(Ok(chunk)) => received += chunk.len(),
                Some(Err(e)) => break e,
                None => panic!("the trickle ended"),
            }
        };
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        // Chunks at 20, 40 and 60 s pass; the one at 80 s, after the first minute, does not.
        assert_eq!(received, 3);
    }
}
