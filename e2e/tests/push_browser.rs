//! The browser side of push, in headless Chromium (Debian's `chromium`, driven by Playwright):
//! the payload `tim-push-gateway` actually produced (decrypted by the push service double) is
//! delivered as a push event to the web app's service worker (`web/push/push-sw.js`), which
//! must show a notification without any of the message; and a browser's subscription JSON must
//! map (`web/push/subscription.js`) to the pusher layout the gateway reads.
//!
//! Needs Node and Chromium (`apt-get install -y chromium`); `playwright-core` is installed into
//! `e2e/browser/node_modules` on first run (`npm ci`).

use std::{path::PathBuf, process::Command, time::Duration};

use serde_json::json;
use tim_e2e::{PushGateway, push_service::PushService};

fn browser_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("browser")
}

fn ensure_playwright() {
    if browser_dir().join("node_modules/playwright-core").exists() {
        return;
    }
    let status = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(browser_dir())
        .status()
        .expect("npm (Node) is needed for the browser tests");
    assert!(status.success(), "npm ci in e2e/browser failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_worker_shows_a_content_free_notification_from_a_gateway_push() {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        std::path::Path::new(&chromium).exists(),
        "Chromium is needed for the browser tests: apt-get install -y chromium (or set CHROMIUM)"
    );
    ensure_playwright();

    let service = PushService::start().await;
    let gateway = PushGateway::start(&[]);
    let sub = service.subscribe();
    // A homeserver that sends everything (no `event_id_only`): the gateway still strips it.
    let notification = json!({"notification": {
        "event_id": "$ev1:klinik.test",
        "room_id": "!station3:klinik.test",
        "type": "m.room.message",
        "sender": "@dr.mueller:klinik.test",
        "sender_display_name": "Müller, Anna",
        "room_name": "Station 3",
        "content": {"msgtype": "m.text", "body": "Laborwert kritisch"},
        "prio": "high",
        "counts": {"unread": 2},
        "devices": [{
            "app_id": "de.tim.web",
            "pushkey": sub.p256dh,
            "data": {"endpoint": sub.endpoint, "auth": sub.auth},
            "tweaks": {"highlight": true}
        }]
    }});
    let resp: serde_json::Value = reqwest::Client::new()
        .post(gateway.notify_url())
        .json(&notification)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(resp, json!({"rejected": []}));
    let got = service.wait_for(1, Duration::from_secs(10)).await;
    let payload = got[0].payload.clone();
    assert_eq!(
        payload,
        json!({"room_id": "!station3:klinik.test", "event_id": "$ev1:klinik.test", "type": "m.room.message", "unread": 2})
    );

    let input = json!({
        "payload": payload,
        // PushSubscription.toJSON() of the browser.
        "subscription": {
            "endpoint": sub.endpoint,
            "expirationTime": null,
            "keys": {"p256dh": sub.p256dh, "auth": sub.auth}
        },
        "gateway_url": gateway.base_url(),
    });
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), input.to_string()).unwrap();
    let out = Command::new("node")
        .arg(browser_dir().join("push-sw.mjs"))
        .arg(file.path())
        .env("CHROMIUM", &chromium)
        .output()
        .expect("node");
    assert!(
        out.status.success(),
        "browser test failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let shown = &result["notifications"][0];
    assert_eq!(shown["title"], "TI-Messenger");
    assert_eq!(shown["body"], "2 ungelesene Nachrichten");
    assert_eq!(shown["tag"], "!station3:klinik.test");
    assert_eq!(shown["data"]["event_id"], "$ev1:klinik.test");
    let text = shown.to_string();
    assert!(!text.contains("Laborwert") && !text.contains("Müller") && !text.contains("Station 3"));

    // The pusher the web app registers is the layout the gateway just delivered with.
    let pusher = &result["pusher"];
    assert_eq!(pusher["kind"], "http");
    assert_eq!(pusher["app_id"], "de.tim.web");
    assert_eq!(pusher["pushkey"], sub.p256dh.as_str());
    assert_eq!(pusher["data"]["endpoint"], sub.endpoint.as_str());
    assert_eq!(pusher["data"]["auth"], sub.auth.as_str());
    assert_eq!(pusher["data"]["format"], "event_id_only");
    assert_eq!(pusher["data"]["url"], gateway.notify_url().as_str());
}
