//! `tim-push-gateway` as a black box: bad input gets Matrix errors (never a crash), pushkeys
//! that can never work are rejected, policy-blocked endpoints are not called, repeats are not
//! pushed twice, and a full queue pushes back with 429 so the homeserver keeps the notification.

use std::time::Duration;

use serde_json::{Value, json};
use tim_e2e::{PushGateway, push_service::PushService};

async fn post(gateway: &PushGateway, body: impl Into<reqwest::Body>) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(gateway.notify_url())
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn notification(event: &str, devices: Value) -> String {
    json!({"notification": {
        "event_id": event,
        "room_id": "!r:klinik.test",
        "counts": {"unread": 1},
        "devices": devices,
    }})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_clear_answers_and_nothing_is_pushed_twice() {
    let service = PushService::start().await;
    let gateway = PushGateway::start(&[]);
    let sub = service.subscribe();
    let device = |app: &str, pushkey: &str, data: Value| json!({"app_id": app, "pushkey": pushkey, "data": data, "tweaks": {}});
    let good_data = json!({"endpoint": sub.endpoint, "auth": sub.auth});

    for (body, status, errcode) in [
        ("not json".to_owned(), 400, "M_NOT_JSON"),
        ("{}".to_owned(), 400, "M_BAD_JSON"),
        (
            json!({"notification": {"devices": "x"}}).to_string(),
            400,
            "M_BAD_JSON",
        ),
        (
            json!({"notification": {"room_id": "no room id", "devices": []}}).to_string(),
            400,
            "M_BAD_JSON",
        ),
        (
            notification(
                "$e",
                json!([{"app_id": "de.tim.web", "pushkey": "k", "data": {"default_payload": "x".repeat(70_000)}}]),
            ),
            413,
            "M_TOO_LARGE",
        ),
    ] {
        let (got, v) = post(&gateway, body).await;
        assert_eq!((got, v["errcode"].as_str()), (status, Some(errcode)), "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let http = reqwest::Client::new();
    let resp = http.get(gateway.notify_url()).send().await.unwrap();
    assert_eq!(resp.status(), 405);
    let resp = http
        .get(format!("{}/_matrix/push/v2/notify", gateway.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        resp.json::<Value>().await.unwrap()["errcode"],
        "M_UNRECOGNIZED"
    );

    // Pushkeys that can never work here are rejected; the good one is pushed.
    let (no_auth, plain_http, too_big) = (
        service.subscribe(),
        service.subscribe(),
        service.subscribe(),
    );
    let devices = json!([
        device("org.other.app", "other-key", good_data.clone()),
        device("de.tim.web", "not-a-key", good_data.clone()),
        device(
            "de.tim.web",
            &no_auth.p256dh,
            json!({"endpoint": no_auth.endpoint})
        ),
        device(
            "de.tim.web",
            &plain_http.p256dh,
            json!({"endpoint": "http://push.example.org/x", "auth": plain_http.auth})
        ),
        device(
            "de.tim.web",
            &too_big.p256dh,
            json!({"endpoint": too_big.endpoint, "auth": too_big.auth, "default_payload": {"pad": "z".repeat(5000)}})
        ),
        device("de.tim.web", &sub.p256dh, good_data.clone()),
    ]);
    let (status, v) = post(&gateway, notification("$first:klinik.test", devices)).await;
    assert_eq!(status, 200, "{v}");
    let rejected: Vec<&str> = v["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        rejected,
        [
            "other-key",
            "not-a-key",
            no_auth.p256dh.as_str(),
            plain_http.p256dh.as_str(),
            too_big.p256dh.as_str()
        ],
        "unknown app, bad key, no auth secret, not https, default_payload too big"
    );
    assert_eq!(service.wait_for(1, Duration::from_secs(5)).await.len(), 1);

    // An internal endpoint is not called (and not rejected: configuration may allow it).
    let (status, v) = post(
        &gateway,
        notification(
            "$second:klinik.test",
            json!([device(
                "de.tim.web",
                &sub.p256dh,
                json!({"endpoint": "https://10.0.0.1/push", "auth": sub.auth})
            )]),
        ),
    )
    .await;
    assert_eq!((status, &v), (200, &json!({"rejected": []})));

    // The same notification again (the homeserver retried after a timeout): no second push.
    // Without `tweaks` (optional in the spec) it is accepted all the same.
    let again = json!([{"app_id": "de.tim.web", "pushkey": sub.p256dh, "data": good_data}]);
    let (status, v) = post(&gateway, notification("$first:klinik.test", again)).await;
    assert_eq!((status, &v), (200, &json!({"rejected": []})));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(service.received().len(), 1);

    let metrics = http
        .get(format!("{}/metrics", gateway.base_url()))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "tim_push_notifications_total 3\n",
        "tim_push_delivered_total 1\n",
        "tim_push_blocked_total 1\n",
        "tim_push_duplicates_total 1\n",
        "tim_push_rejected_pushkeys_total 5\n",
    ] {
        assert!(metrics.contains(line), "{line}{metrics}");
    }
    let health: Value = http
        .get(format!("{}/health", gateway.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_429_and_the_homeserver_keeps_the_notification() {
    let service = PushService::start().await;
    let gateway = PushGateway::start(&[
        ("TIM_PUSH_DELIVERY__QUEUE_CAPACITY", "1"),
        ("TIM_PUSH_DELIVERY__ANSWER_WITHIN_MS", "50"),
    ]);
    let sub = service.subscribe();
    let devices = json!([{"app_id": "de.tim.web", "pushkey": sub.p256dh, "data": {"endpoint": sub.endpoint, "auth": sub.auth}, "tweaks": {}}]);
    // The push service is down: the first push waits for its retry and fills the queue.
    service.go_down_for(2);
    let (status, _) = post(&gateway, notification("$a:klinik.test", devices.clone())).await;
    assert_eq!(status, 200);
    let resp = reqwest::Client::new()
        .post(gateway.notify_url())
        .body(notification("$b:klinik.test", devices.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["errcode"], "M_LIMIT_EXCEEDED");
    assert_eq!(v["retry_after_ms"], 1000);
    // Once the first push is through, the repeated notification is accepted and pushed.
    let got = service.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].payload["event_id"], "$a:klinik.test");
    let mut status = 0;
    for _ in 0..100 {
        status = post(&gateway, notification("$b:klinik.test", devices.clone()))
            .await
            .0;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, 200);
    let got = service.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].payload["event_id"], "$b:klinik.test");
}
