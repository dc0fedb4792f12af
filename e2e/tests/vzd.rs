//! `tim-vzd-sync` against the VZD-FHIR-Directory double, its store on SQLite and PostgreSQL:
//! our domains enter and leave the federation list, the signed list reaches our homeservers
//! through `I_internVerification`, changes made while the directory is down are applied once it
//! is back (none lost, none twice), a tampered list is refused while the last good one stays,
//! and a restart without the directory serves the cached list.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tim_e2e::{STORES, Store, VzdSyncProcess, vzd::VzdDouble};
use tim_vzd_sync::federation_list::SignedList;

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(sync: &VzdSyncProcess) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: sync.base_url(),
            token: sync.token(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// What a homeserver gets: the list, verified with the directory's CA as the homeserver
    /// will, or the status when there is none to hand out.
    async fn handout(&self, directory: &VzdDouble, known: Option<i64>) -> Result<SignedList, u16> {
        let path = match known {
            Some(v) => format!("/_tim/internal/v1/federation-list?version={v}"),
            None => "/_tim/internal/v1/federation-list".into(),
        };
        let (status, body) = self.call(reqwest::Method::GET, &path, None).await;
        if status != 200 {
            return Err(status);
        }
        let list = SignedList::verify(
            body["jws"].as_str().unwrap(),
            &directory.inner.ca.trust(),
            SystemTime::now(),
        )
        .expect("the handed-out list verifies");
        assert_eq!(body["version"], list.version());
        Ok(list)
    }

    async fn metric(&self, name: &str) -> i64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no metric {name}"))
            .parse()
            .unwrap()
    }
}

async fn eventually<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn synced(c: &Client, domain: &str) -> Option<Value> {
    let (status, body) = c
        .call(
            reqwest::Method::GET,
            &format!("/_tim/vzd/v1/domains/{domain}"),
            None,
        )
        .await;
    (status == 200 && body["synced"] == true).then_some(body)
}

async fn gone(c: &Client, domain: &str) -> bool {
    c.call(
        reqwest::Method::GET,
        &format!("/_tim/vzd/v1/domains/{domain}"),
        None,
    )
    .await
    .0 == 404
}

fn count(changes: &[String], what: &str) -> usize {
    changes.iter().filter(|c| *c == what).count()
}

async fn scenario(store: Store) {
    let mut directory = VzdDouble::start().await;
    directory.add_provider("tim-provider-e2e", "e2e-secret", "ORG-0001:BT-0001");
    directory.set_organization("1-SMC-B-Praxis-1", true).await;
    directory.set_organization("8-SMC-B-KK-1", true).await;
    let mut sync = VzdSyncProcess::start(store, &directory, &[]);
    let c = Client::new(&sync);

    // Authentication of the internal API.
    let anonymous = reqwest::get(format!("{}/_tim/vzd/v1/domains", sync.base_url()))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // The first list (version 1, empty) arrives and is handed out; the same version → 304.
    let first = eventually("first federation list", 20, async || {
        c.handout(&directory, None).await.ok()
    })
    .await;
    assert_eq!(first.version(), 1);
    assert_eq!(
        c.handout(&directory, Some(first.version()))
            .await
            .unwrap_err(),
        304
    );

    // Bad input: clear 400s, nothing stored.
    for (body, needle) in [
        (
            json!({"telematikID": "1-SMC-B-Praxis-1", "isInsurance": true}),
            "IK",
        ),
        (
            json!({"telematikID": "8-SMC-B-KK-1", "isInsurance": true, "ik": ["108433249"]}),
            "check digit",
        ),
        (json!({"isInsurance": false}), "telematikID"),
    ] {
        let (status, err) = c
            .call(
                reqwest::Method::PUT,
                "/_tim/vzd/v1/domains/kk.e2e.example",
                Some(body),
            )
            .await;
        assert_eq!(status, 400, "{err}");
        assert!(err["error"].as_str().unwrap().contains(needle), "{err}");
    }
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            "/_tim/vzd/v1/domains/Not_A_Domain",
            Some(json!({"telematikID": "1"})),
        )
        .await;
    assert_eq!(status, 400);

    // A new messenger service's domain enters the federation list.
    let (status, body) = c
        .call(
            reqwest::Method::PUT,
            "/_tim/vzd/v1/domains/praxis-1.e2e.example",
            Some(json!({"telematikID": "1-SMC-B-Praxis-1", "isInsurance": false})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually("domain synced", 20, async || {
        synced(&c, "praxis-1.e2e.example").await
    })
    .await;
    let list = eventually("list with the domain", 20, async || {
        c.handout(&directory, Some(first.version()))
            .await
            .ok()
            .filter(|l| l.contains("praxis-1.e2e.example"))
    })
    .await;
    assert_eq!(
        list.list.domain_list[0].tim_anbieter.as_deref(),
        Some("ORG-0001:BT-0001")
    );
    // An insurer's domain with IK numbers.
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            "/_tim/vzd/v1/domains/kk.e2e.example",
            Some(json!({"telematikID": "8-SMC-B-KK-1", "isInsurance": true, "ik": ["108433248"]})),
        )
        .await;
    assert_eq!(status, 202);
    eventually("insurer synced", 20, async || {
        synced(&c, "kk.e2e.example").await
    })
    .await;
    // An update goes out as one PUT.
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            "/_tim/vzd/v1/domains/kk.e2e.example",
            Some(json!({"telematikID": "8-SMC-B-KK-1", "isInsurance": true, "ik": ["108433248", "104127692"]})),
        )
        .await;
    assert_eq!(status, 202);
    eventually("insurer update synced", 20, async || {
        synced(&c, "kk.e2e.example").await
    })
    .await;
    let list = eventually("list with both IKs", 20, async || {
        c.handout(&directory, None).await.ok().filter(|l| {
            l.list
                .domain_list
                .iter()
                .any(|d| d.domain == "kk.e2e.example" && d.ik.len() == 2)
        })
    })
    .await;
    assert!(list.contains("praxis-1.e2e.example"));
    let changes = directory.changes();
    assert_eq!(
        count(&changes, "POST /federation kk.e2e.example"),
        1,
        "{changes:?}"
    );
    assert_eq!(
        count(&changes, "PUT /federation/kk.e2e.example"),
        1,
        "{changes:?}"
    );

    // Removing it removes it from the list.
    let (status, _) = c
        .call(
            reqwest::Method::DELETE,
            "/_tim/vzd/v1/domains/kk.e2e.example",
            None,
        )
        .await;
    assert_eq!(status, 202);
    eventually("insurer removed", 20, async || {
        gone(&c, "kk.e2e.example").await.then_some(())
    })
    .await;
    eventually("list without the insurer", 20, async || {
        c.handout(&directory, None)
            .await
            .ok()
            .filter(|l| !l.contains("kk.e2e.example") && l.contains("praxis-1.e2e.example"))
    })
    .await;
    let (status, _) = c
        .call(
            reqwest::Method::DELETE,
            "/_tim/vzd/v1/domains/kk.e2e.example",
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A lost answer: the directory made the change but we never heard; the retry finds it made.
    directory.lose_answers(1);
    c.call(
        reqwest::Method::PUT,
        "/_tim/vzd/v1/domains/praxis-2.e2e.example",
        Some(json!({"telematikID": "1-SMC-B-Praxis-1"})),
    )
    .await;
    eventually("domain synced after a lost answer", 20, async || {
        synced(&c, "praxis-2.e2e.example").await
    })
    .await;
    assert_eq!(
        count(
            &directory.changes(),
            "POST /federation praxis-2.e2e.example"
        ),
        1
    );

    // The directory down for a while: changes wait, the last good list stays in force, an
    // incident is raised after 3 failed fetches; back up, every change is made exactly once.
    let before = c.handout(&directory, None).await.unwrap();
    directory.stop().await;
    c.call(
        reqwest::Method::PUT,
        "/_tim/vzd/v1/domains/praxis-3.e2e.example",
        Some(json!({"telematikID": "1-SMC-B-Praxis-1"})),
    )
    .await;
    c.call(
        reqwest::Method::DELETE,
        "/_tim/vzd/v1/domains/praxis-2.e2e.example",
        None,
    )
    .await;
    eventually("incident raised", 30, async || {
        (c.metric("tim_vzd_federation_list_incident").await == 1).then_some(())
    })
    .await;
    let (_, pending) = c
        .call(
            reqwest::Method::GET,
            "/_tim/vzd/v1/domains/praxis-3.e2e.example",
            None,
        )
        .await;
    assert_eq!(pending["synced"], false, "{pending}");
    assert!(pending["attempts"].as_i64().unwrap() >= 1, "{pending}");
    assert!(
        pending["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{pending}"
    );
    let during = c.handout(&directory, None).await.unwrap();
    assert_eq!(during.version(), before.version());
    let (health, _) = (
        reqwest::get(format!("{}/health", sync.base_url()))
            .await
            .unwrap()
            .status(),
        (),
    );
    assert_eq!(health, 200, "the last good list is still in force");
    directory.resume().await;
    eventually("pending domain synced", 30, async || {
        synced(&c, "praxis-3.e2e.example").await
    })
    .await;
    eventually("removal synced", 30, async || {
        gone(&c, "praxis-2.e2e.example").await.then_some(())
    })
    .await;
    eventually("incident over", 30, async || {
        (c.metric("tim_vzd_federation_list_incident").await == 0).then_some(())
    })
    .await;
    let changes = directory.changes();
    assert_eq!(
        count(&changes, "POST /federation praxis-3.e2e.example"),
        1,
        "{changes:?}"
    );
    assert_eq!(
        count(&changes, "DELETE /federation/praxis-2.e2e.example"),
        1,
        "{changes:?}"
    );
    assert!(c.metric("tim_vzd_federation_list_incidents_total").await >= 1);

    // A tampered list is refused; the old list stays in force until a good one comes.
    let good = eventually("list with praxis-3", 20, async || {
        c.handout(&directory, None)
            .await
            .ok()
            .filter(|l| l.contains("praxis-3.e2e.example") && !l.contains("praxis-2.e2e.example"))
    })
    .await;
    directory.tamper_lists(true);
    c.call(
        reqwest::Method::PUT,
        "/_tim/vzd/v1/domains/praxis-4.e2e.example",
        Some(json!({"telematikID": "1-SMC-B-Praxis-1"})),
    )
    .await;
    eventually("domain synced", 20, async || {
        synced(&c, "praxis-4.e2e.example").await
    })
    .await;
    eventually("tampered list refused", 20, async || {
        (c.metric("tim_vzd_federation_lists_rejected_total").await >= 1).then_some(())
    })
    .await;
    let held = c.handout(&directory, None).await.unwrap();
    assert_eq!(held.version(), good.version());
    assert!(!held.contains("evil.example") && !held.contains("praxis-4.e2e.example"));
    assert!(sync.log().contains("federation list refused"));
    directory.tamper_lists(false);
    eventually("good list after the tampered one", 20, async || {
        c.handout(&directory, None)
            .await
            .ok()
            .filter(|l| l.contains("praxis-4.e2e.example"))
    })
    .await;

    // A restart while the directory is down serves the cached list.
    let cached = c.handout(&directory, None).await.unwrap();
    directory.stop().await;
    sync.restart();
    let c = Client::new(&sync);
    let after = c.handout(&directory, None).await.unwrap();
    assert_eq!(after.version(), cached.version());
    assert!(after.contains("praxis-4.e2e.example"));
    directory.resume().await;

    // federationCheck: an organisation that is no longer active shows its domains.
    let (status, check) = c
        .call(reqwest::Method::GET, "/_tim/vzd/v1/federation-check", None)
        .await;
    assert_eq!(status, 200, "{check}");
    assert_eq!(check["inactiveOrganizationDomains"], json!([]));
    directory.set_organization("1-SMC-B-Praxis-1", false).await;
    let (_, check) = c
        .call(reqwest::Method::GET, "/_tim/vzd/v1/federation-check", None)
        .await;
    let inactive: Vec<&str> = check["inactiveOrganizationDomains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["domain"].as_str().unwrap())
        .collect();
    assert!(inactive.contains(&"praxis-1.e2e.example"), "{check}");
    // A domain of an inactive organisation is refused by the directory (400) and reported.
    c.call(
        reqwest::Method::PUT,
        "/_tim/vzd/v1/domains/praxis-5.e2e.example",
        Some(json!({"telematikID": "1-SMC-B-Praxis-1"})),
    )
    .await;
    let refused = eventually("refusal recorded", 20, async || {
        let (_, b) = c
            .call(
                reqwest::Method::GET,
                "/_tim/vzd/v1/domains/praxis-5.e2e.example",
                None,
            )
            .await;
        b["last_error"].as_str().map(str::to_owned)
    })
    .await;
    assert!(refused.contains("not active"), "{refused}");

    // No secrets in the log.
    let log = sync.log();
    assert!(
        !log.contains("e2e-secret") && !log.contains(&c.token),
        "secrets in the log"
    );
    sync.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domains_and_the_federation_list_against_the_directory_double() {
    for store in STORES {
        scenario(store).await;
    }
}
