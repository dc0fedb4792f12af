//! The media repository on both stores: uploads (direct and reserved), downloads with their
//! headers, thumbnails, limits, bad input, deletion, the legacy endpoints and URL previews.

mod common;

use std::io::Cursor;

use common::{STORES, Store, TestServer};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn media_id(uri: &Value) -> String {
    uri.as_str().unwrap().rsplit('/').next().unwrap().to_owned()
}

async fn get(c: &common::Client, path: &str, auth: bool) -> reqwest::Response {
    let mut req = c.http.get(format!("{}{path}", c.base));
    if auth {
        req = req.bearer_auth(c.token.as_ref().unwrap());
    }
    req.send().await.unwrap()
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::new_rgba8(w, h)
        .write_to(&mut out, image::ImageFormat::Png)
        .unwrap();
    out.into_inner()
}

/// Files under the tenant's media folder (temp files included).
fn stored_files(server: &TestServer) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(
        &server.data_dir().join("media").join(&server.server_name),
        &mut out,
    );
    out
}

#[tokio::test]
async fn upload_download_and_headers_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let sn = server.server_name.clone();

        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (status, v) = alice
            .upload(body.clone(), "application/pdf", "Befund%20M%C3%BCller.pdf")
            .await;
        assert_eq!(status, 200, "{v}");
        let uri = v["content_uri"].clone();
        assert!(uri.as_str().unwrap().starts_with(&format!("mxc://{sn}/")));
        let id = media_id(&uri);

        // Authenticated download on another client: same bytes, kept type and name, safe headers.
        let r = get(
            &bob,
            &format!("/_matrix/client/v1/media/download/{sn}/{id}"),
            true,
        )
        .await;
        assert_eq!(r.status(), 200);
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "application/pdf");
        assert_eq!(h["content-length"], "200000");
        let cd = h["content-disposition"].to_str().unwrap();
        assert!(
            cd.starts_with("attachment; filename*=utf-8''Befund%20M%C3%BCller%2Epdf"),
            "{cd}"
        );
        assert!(
            h["content-security-policy"]
                .to_str()
                .unwrap()
                .contains("sandbox")
        );
        assert_eq!(r.bytes().await.unwrap().as_ref(), body.as_slice());
        // A name given in the path wins.
        let r = get(
            &bob,
            &format!("/_matrix/client/v1/media/download/{sn}/{id}/x.pdf"),
            true,
        )
        .await;
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .ends_with("''x%2Epdf")
        );
        // Without a token: 401 on the v1 endpoint, 200 on the legacy one (A-ROOM-15).
        let r = get(
            &bob,
            &format!("/_matrix/client/v1/media/download/{sn}/{id}"),
            false,
        )
        .await;
        assert_eq!(r.status(), 401);
        let r = get(
            &bob,
            &format!("/_matrix/media/v3/download/{sn}/{id}"),
            false,
        )
        .await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.bytes().await.unwrap().len(), body.len());

        // Config, URL previews (A-ROOM-12), unknown and hostile ids.
        let cfg = bob
            .ok(Method::GET, "/_matrix/client/v1/media/config", None)
            .await;
        assert_eq!(cfg["m.upload.size"], 110 * 1024 * 1024);
        for path in [
            "/_matrix/client/v1/media/preview_url?url=https://x",
            "/_matrix/media/v3/preview_url?url=https://x",
        ] {
            bob.err(Method::GET, path, None, 404, "M_NOT_FOUND").await;
            server
                .client()
                .err(Method::GET, path, None, 404, "M_NOT_FOUND")
                .await;
        }
        bob.err(
            Method::GET,
            "/_matrix/media/v3/config",
            None,
            404,
            "M_UNRECOGNIZED",
        )
        .await;
        for bad in ["nope", "..%2F..%2Fetc%2Fpasswd", "a.b", "%2E%2E%2Fx"] {
            bob.err(
                Method::GET,
                &format!("/_matrix/client/v1/media/download/{sn}/{bad}"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        }
        // Another server's media is asked of that server; one that cannot be reached is a
        // 502, not a 404 (the media may well exist).
        let (status, body) = bob
            .raw(
                Method::GET,
                &format!("/_matrix/client/v1/media/download/other.example/{id}"),
                None,
            )
            .await;
        assert_eq!(status, 502, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("could not be reached")
        );
        // A hostile file name is only a name.
        let (status, v) = alice
            .upload(b"x".to_vec(), "text/plain", "..%2F..%2F..%2Fetc%2Fpasswd")
            .await;
        assert_eq!(status, 200, "{v}");
        let r = get(
            &bob,
            &format!(
                "/_matrix/client/v1/media/download/{sn}/{}",
                media_id(&v["content_uri"])
            ),
            true,
        )
        .await;
        assert!(
            r.headers()["content-disposition"]
                .to_str()
                .unwrap()
                .starts_with("inline; filename*=utf-8''%2E%2E%2F")
        );
        assert!(!server.data_dir().join("etc").exists());
        server.stop().await;
    }
}

#[tokio::test]
async fn limits_and_broken_uploads_on_both_stores() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| c.media.max_upload_bytes = 100_000).await;
        let alice = server.register("alice").await;
        // Announced too large: refused before reading; streamed too large (no length): refused.
        let (status, v) = alice
            .upload(vec![0; 100_001], "application/octet-stream", "big")
            .await;
        assert_eq!(
            (status.as_u16(), v["errcode"].as_str()),
            (413, Some("M_TOO_LARGE"))
        );
        let chunks =
            futures::stream::iter((0..20).map(|_| Ok::<_, std::io::Error>(vec![0u8; 10_000])));
        let resp = alice
            .http
            .post(format!("{}/_matrix/media/v3/upload", alice.base))
            .bearer_auth(alice.token.as_ref().unwrap())
            .body(reqwest::Body::wrap_stream(chunks))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        assert_eq!(
            resp.json::<Value>().await.unwrap()["errcode"],
            "M_TOO_LARGE"
        );
        // Exactly the limit is fine.
        let (status, _) = alice
            .upload(vec![1; 100_000], "application/octet-stream", "ok")
            .await;
        assert_eq!(status, 200);
        let before = stored_files(&server).len();

        // A truncated upload (connection closed mid-body) leaves nothing behind.
        let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nContent-Type: image/png\r\nContent-Length: 50000\r\n\r\n",
            server.server_name,
            alice.token.as_ref().unwrap()
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        tcp.write_all(&[7u8; 20_000]).await.unwrap();
        tcp.shutdown().await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_end(&mut rest),
        )
        .await;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert_eq!(
            stored_files(&server).len(),
            before,
            "{:?}",
            stored_files(&server)
        );
        // Bad metadata.
        let (status, v) = alice.upload(b"x".to_vec(), "nonsense", "f").await;
        assert_eq!(
            (status.as_u16(), v["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM"))
        );
        let (status, v) = alice
            .upload(b"x".to_vec(), "text/plain", &"n".repeat(300))
            .await;
        assert_eq!(
            (status.as_u16(), v["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM"))
        );
        // The server is fine afterwards.
        let (status, _) = alice
            .upload(b"still fine".to_vec(), "text/plain", "f")
            .await;
        assert_eq!(status, 200);
        server.stop().await;
    }
}

#[tokio::test]
async fn reserved_uploads_on_both_stores() {
    for store in STORES {
        let server = TestServer::start(store).await;
        let alice = server.register("alice").await;
        let bob = server.register("bob").await;
        let sn = server.server_name.clone();
        let v = alice
            .ok(Method::POST, "/_matrix/media/v1/create", Some(json!({})))
            .await;
        let id = media_id(&v["content_uri"]);
        assert!(v["unused_expires_at"].is_u64());
        // Not there yet: 504 after the timeout.
        bob.err(
            Method::GET,
            &format!("/_matrix/client/v1/media/download/{sn}/{id}?timeout_ms=100"),
            None,
            504,
            "M_NOT_YET_UPLOADED",
        )
        .await;
        // A waiting download gets the file as soon as it arrives.
        let waiter = {
            let bob = bob.clone();
            let path = format!("/_matrix/client/v1/media/download/{sn}/{id}?timeout_ms=10000");
            tokio::spawn(async move { get(&bob, &path, true).await.bytes().await.unwrap() })
        };
        let put = |c: &common::Client, body: &'static [u8]| {
            c.http
                .put(format!(
                    "{}/_matrix/media/v3/upload/{sn}/{id}?filename=a.txt",
                    c.base
                ))
                .bearer_auth(c.token.clone().unwrap())
                .header("content-type", "text/plain")
                .body(body)
                .send()
        };
        let r = put(&bob, b"not yours").await.unwrap();
        assert_eq!(r.status(), 403);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let r = put(&alice, b"hello later").await.unwrap();
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert_eq!(waiter.await.unwrap().as_ref(), b"hello later");
        let r = put(&alice, b"again").await.unwrap();
        assert_eq!(r.status(), 409);
        assert_eq!(
            r.json::<Value>().await.unwrap()["errcode"],
            "M_CANNOT_OVERWRITE_MEDIA"
        );
        // Unknown reserved ids.
        let r = alice
            .http
            .put(format!(
                "{}/_matrix/media/v3/upload/{sn}/doesnotexist",
                alice.base
            ))
            .bearer_auth(alice.token.clone().unwrap())
            .body("x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        server.stop().await;
    }
}

#[tokio::test]
async fn thumbnails_and_deletion_on_both_stores() {
    for store in STORES {
        let server = TestServer::start_with(store, |c| {
            if matches!(store, Store::Postgres) {
                // The legacy endpoints switched off: unknown to clients.
                c.media.legacy_unauthenticated_media = false;
            }
        })
        .await;
        let alice = server.register("alice").await;
        let sn = server.server_name.clone();
        let (_, v) = alice.upload(png(1000, 500), "image/png", "photo.png").await;
        let id = media_id(&v["content_uri"]);
        for (w, h, method, expect) in [
            (32, 32, "crop", (32, 32)),
            (300, 200, "scale", (320, 160)),
            (5000, 5000, "scale", (800, 400)),
        ] {
            let r = get(&alice, &format!("/_matrix/client/v1/media/thumbnail/{sn}/{id}?width={w}&height={h}&method={method}"), true).await;
            assert_eq!(r.status(), 200);
            assert_eq!(r.headers()["content-type"], "image/png");
            let img = image::load_from_memory(&r.bytes().await.unwrap()).unwrap();
            assert_eq!((img.width(), img.height()), expect);
        }
        // Cached: the second request is served from storage.
        let r = get(
            &alice,
            &format!("/_matrix/client/v1/media/thumbnail/{sn}/{id}?width=32&height=32&method=crop"),
            true,
        )
        .await;
        assert_eq!(r.status(), 200);
        let legacy = get(
            &alice,
            &format!("/_matrix/media/v3/thumbnail/{sn}/{id}?width=32&height=32"),
            false,
        )
        .await;
        match store {
            Store::Sqlite => assert_eq!(legacy.status(), 200),
            Store::Postgres => {
                assert_eq!(legacy.status(), 404);
                assert_eq!(
                    legacy.json::<Value>().await.unwrap()["errcode"],
                    "M_UNRECOGNIZED"
                );
            }
        }
        // Not an image / not decodable / bad sizes.
        let (_, v) = alice
            .upload(b"%PDF-1.4".to_vec(), "application/pdf", "x.pdf")
            .await;
        let pdf = media_id(&v["content_uri"]);
        alice
            .err(
                Method::GET,
                &format!("/_matrix/client/v1/media/thumbnail/{sn}/{pdf}?width=32&height=32"),
                None,
                400,
                "M_UNKNOWN",
            )
            .await;
        let (_, v) = alice
            .upload(b"garbage".to_vec(), "image/png", "x.png")
            .await;
        let broken = media_id(&v["content_uri"]);
        alice
            .err(
                Method::GET,
                &format!("/_matrix/client/v1/media/thumbnail/{sn}/{broken}?width=32&height=32"),
                None,
                400,
                "M_UNKNOWN",
            )
            .await;
        alice
            .err(
                Method::GET,
                &format!("/_matrix/client/v1/media/thumbnail/{sn}/{id}?width=0&height=32"),
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;
        alice
            .err(
                Method::GET,
                &format!("/_matrix/client/v1/media/thumbnail/{sn}/{id}?width=abc&height=32"),
                None,
                400,
                "M_INVALID_PARAM",
            )
            .await;

        // Deleting removes the file and its thumbnails.
        let files_of = |id: &str| {
            stored_files(&server)
                .into_iter()
                .filter(|p| p.to_string_lossy().contains(id))
                .count()
        };
        assert_eq!(files_of(&id), 4, "the file and three cached thumbnails");
        // Through the admin API (TI-M: the org admin removes a reported attachment).
        let op = server.operator();
        let token = op
            .ok(
                Method::POST,
                &format!("/_tim/operator/v1/tenants/{sn}/admin_token"),
                Some(json!({})),
            )
            .await["token"]
            .as_str()
            .unwrap()
            .to_owned();
        let mut admin = server.client();
        admin.token = Some(token);
        admin
            .ok(Method::DELETE, &format!("/_tim/admin/v1/media/{id}"), None)
            .await;
        assert_eq!(files_of(&id), 0);
        alice
            .err(
                Method::GET,
                &format!("/_matrix/client/v1/media/download/{sn}/{id}"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        admin
            .err(
                Method::DELETE,
                &format!("/_tim/admin/v1/media/{id}"),
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        admin
            .err(
                Method::DELETE,
                "/_tim/admin/v1/media/..%2F..%2Fetc",
                None,
                404,
                "M_NOT_FOUND",
            )
            .await;
        assert!(!server.hs().media.delete("../../etc").await.unwrap());
        server.stop().await;
    }
}
