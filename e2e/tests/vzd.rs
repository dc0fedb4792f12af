//! `tim-vzd-sync` against the VZD-FHIR-Directory double, its store on SQLite and PostgreSQL:
//! our domains enter and leave the federation list, the signed list reaches our homeservers
//! through `I_internVerification`, changes made while the directory is down are applied once it
//! is back (none lost, none twice), a tampered list is refused while the last good one stays,
//! and a restart without the directory serves the cached list. An org admin's departments with
//! their Matrix endpoints become directory entries and searchable by doctors, whose Matrix
//! OpenID token from our homeserver gets them a search token at the double's
//! `/tim-authenticate`.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tim_e2e::{STORES, Server, Store, VzdSyncProcess, vzd::VzdDouble};
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
    // Signed by a certificate of the same PKI that is not the directory's: refused too.
    let rejected = c.metric("tim_vzd_federation_lists_rejected_total").await;
    directory.sign_lists_with_a_foreign_certificate(true);
    eventually("foreign signer refused", 20, async || {
        (c.metric("tim_vzd_federation_lists_rejected_total").await > rejected).then_some(())
    })
    .await;
    assert_eq!(
        c.handout(&directory, None).await.unwrap().version(),
        good.version()
    );
    assert!(sync.log().contains("not by the directory's certificate"));
    directory.sign_lists_with_a_foreign_certificate(false);
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

/// A user on `hs` (open registration) and an OpenID token of theirs.
async fn openid_token(hs: &Server, name: &str) -> (String, Value) {
    let http = reqwest::Client::new();
    let reg: Value = http
        .post(format!("{}/_matrix/client/v3/register", hs.base_url()))
        .json(&json!({"username": name, "password": "Passwort-1234", "auth": {"type": "m.login.dummy"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user = reg["user_id"].as_str().unwrap().to_owned();
    let token = reg["access_token"].as_str().unwrap();
    // Only for oneself.
    let other = http
        .post(format!(
            "{}/_matrix/client/v3/user/@someone:{}/openid/request_token",
            hs.base_url(),
            hs.server_name
        ))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    let openid: Value = http
        .post(format!(
            "{}/_matrix/client/v3/user/{user}/openid/request_token",
            hs.base_url()
        ))
        .bearer_auth(token)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (user, openid)
}

async fn search(sync: &VzdSyncProcess, openid: &Value, query: &[(&str, &str)]) -> (u16, Value) {
    let mut q: Vec<(&str, &str)> = vec![("mxId", openid["matrix_server_name"].as_str().unwrap())];
    q.extend_from_slice(query);
    let r = reqwest::Client::new()
        .get(sync.search_url())
        .query(&q)
        .header(
            "X-Matrix-OpenID-Token",
            openid["access_token"].as_str().unwrap(),
        )
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

fn mxids(results: &Value) -> Vec<String> {
    let mut v: Vec<String> = results["results"]
        .as_array()
        .unwrap_or(&vec![])
        .iter()
        .map(|r| r["mxid"].as_str().unwrap().to_owned())
        .collect();
    v.sort();
    v
}

async fn entries_scenario(store: Store) {
    let hs = Server::start(store);
    let domain = hs.server_name.clone();
    let mut directory = VzdDouble::start().await;
    directory.add_provider("tim-provider-e2e", "e2e-secret", "ORG-0001:BT-0001");
    directory
        .set_organization_entry("5-SMC-B-Klinik", "Klinik am See", "Potsdam", true)
        .await;
    directory.set_homeserver(&domain, &hs.base_url());
    let homeservers = format!("{{\"{domain}\" = \"{}\"}}", hs.base_url());
    let sync = VzdSyncProcess::start(store, &directory, &[("TIM_VZD_HOMESERVERS", &homeservers)]);
    let c = Client::new(&sync);
    let org = "/_tim/vzd/v1/organizations/5-SMC-B-Klinik";

    // The homeserver's domain is the organisation's messenger service.
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            &format!("/_tim/vzd/v1/domains/{domain}"),
            Some(json!({"telematikID": "5-SMC-B-Klinik"})),
        )
        .await;
    assert_eq!(status, 202);
    eventually("domain in the list", 20, async || {
        c.handout(&directory, None)
            .await
            .ok()
            .filter(|l| l.contains(&domain))
    })
    .await;

    // Entries need the organisation registered, and Matrix IDs of its own domains.
    let kardio = json!({
        "name": "Kardiologie",
        "telecom": [{"system": "phone", "value": "0331 123456", "use": "work"}],
        "specialty": [{"system": "urn:oid:1.2.276.0.76.5.114", "code": "010", "display": "Kardiologie"}],
        "endpoints": [
            {"mxid": format!("@kardio:{domain}"), "name": "Kardiologie Anmeldung"},
            {"mxid": format!("@chefarzt:{domain}"), "name": "Chefarzt Kardiologie", "hideFromInsured": true},
            {"mxid": format!("@pflege:{domain}"), "name": "Pflege"}
        ]
    });
    let (status, err) = c
        .call(
            reqwest::Method::PUT,
            &format!("{org}/services/kardio"),
            Some(kardio.clone()),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("not registered"),
        "{err}"
    );
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            org,
            Some(json!({"professionOID": "1.2.276.0.76.4.53"})),
        )
        .await;
    assert_eq!(status, 204);
    let mut foreign = kardio.clone();
    foreign["endpoints"][0]["mxid"] = "@kardio:elsewhere.example".into();
    let (status, err) = c
        .call(
            reqwest::Method::PUT,
            &format!("{org}/services/kardio"),
            Some(foreign),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("messenger domain"),
        "{err}"
    );
    let (status, err) = c
        .call(
            reqwest::Method::PUT,
            &format!("{org}/services/kardio"),
            Some(json!({"name": ""})),
        )
        .await;
    assert_eq!(status, 400, "{err}");

    // Someone else already made an Endpoint for @pflege (one Endpoint per MXID): it is referred
    // to, never changed or deleted.
    let pflege = directory
        .add_foreign_endpoint(
            "1-other-owner",
            &format!("@pflege:{domain}"),
            "Pflege (eigener Eintrag)",
        )
        .await;

    let (status, body) = c
        .call(
            reqwest::Method::PUT,
            &format!("{org}/services/kardio"),
            Some(kardio.clone()),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["synced"], false);
    eventually("service synced", 20, async || {
        let (_, b) = c
            .call(
                reqwest::Method::GET,
                &format!("{org}/services/kardio"),
                None,
            )
            .await;
        (b["synced"] == true).then_some(())
    })
    .await;
    let services = directory.resources("HealthcareService").await;
    assert_eq!(services.len(), 1);
    let hs_entry = &services[0];
    assert_eq!(hs_entry["name"], "Kardiologie");
    assert_eq!(hs_entry["meta"]["tag"][0]["code"], "owner");
    assert_eq!(hs_entry["endpoint"].as_array().unwrap().len(), 3);
    let endpoints = directory.resources("Endpoint").await;
    assert_eq!(endpoints.len(), 3);
    let chef = endpoints
        .iter()
        .find(|e| e["address"] == format!("matrix:u/chefarzt:{domain}"))
        .unwrap();
    assert_eq!(
        chef["extension"][0]["valueCoding"]["code"],
        "hide-versicherte"
    );
    assert_eq!(chef["connectionType"]["code"], "tim");
    assert_eq!(chef["payloadType"][0]["coding"][0]["code"], "tim-chat");
    let changes = directory.changes();
    assert_eq!(count(&changes, "POST Endpoint"), 2, "{changes:?}");
    assert_eq!(count(&changes, "POST HealthcareService"), 1, "{changes:?}");

    // A doctor of the clinic searches the directory with an OpenID token of our homeserver.
    let (user, openid) = openid_token(&hs, "doktor").await;
    assert_eq!(openid["matrix_server_name"], domain.as_str());
    let userinfo = reqwest::get(format!(
        "{}/_matrix/federation/v1/openid/userinfo?access_token={}",
        hs.base_url(),
        openid["access_token"].as_str().unwrap()
    ))
    .await
    .unwrap();
    assert_eq!(userinfo.status(), 200);
    assert_eq!(
        userinfo.json::<Value>().await.unwrap()["sub"],
        user.as_str()
    );
    let bad = reqwest::get(format!(
        "{}/_matrix/federation/v1/openid/userinfo?access_token=nope",
        hs.base_url()
    ))
    .await
    .unwrap();
    assert_eq!(bad.status(), 401);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["errcode"],
        "M_UNKNOWN_TOKEN"
    );

    let (status, found) = search(&sync, &openid, &[("name", "kardio")]).await;
    assert_eq!(status, 200, "{found}");
    assert_eq!(
        mxids(&found),
        [
            format!("@chefarzt:{domain}"),
            format!("@kardio:{domain}"),
            format!("@pflege:{domain}")
        ]
    );
    let hit = found["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["mxid"] == format!("@kardio:{domain}"))
        .unwrap();
    assert_eq!(hit["organization"], "Klinik am See");
    assert_eq!(hit["service"], "Kardiologie");
    assert_eq!(hit["telematikID"], "5-SMC-B-Klinik");
    assert_eq!(hit["city"], "Potsdam");
    assert_eq!(hit["kind"], "organization");
    let (_, by_city) = search(&sync, &openid, &[("city", "Potsdam"), ("limit", "1")]).await;
    assert_eq!(by_city["results"].as_array().unwrap().len(), 1);
    let (_, nothing) = search(&sync, &openid, &[("organization", "Praxis Nirgendwo")]).await;
    assert!(mxids(&nothing).is_empty());
    let (status, _) = search(&sync, &openid, &[]).await;
    assert_eq!(status, 400);
    let mut forged = openid.clone();
    forged["access_token"] = "forged".into();
    let (status, _) = search(&sync, &forged, &[("name", "kardio")]).await;
    assert_eq!(status, 401);
    let mut stranger = openid.clone();
    stranger["matrix_server_name"] = "not-federated.example".into();
    let (status, _) = search(&sync, &stranger, &[("name", "kardio")]).await;
    assert_eq!(status, 403);

    // The org admin switches @kardio off and drops @chefarzt: only those change.
    let mut changed = kardio.clone();
    changed["endpoints"][0]["active"] = false.into();
    changed["endpoints"].as_array_mut().unwrap().remove(1);
    c.call(
        reqwest::Method::PUT,
        &format!("{org}/services/kardio"),
        Some(changed),
    )
    .await;
    eventually("change synced", 20, async || {
        let (_, b) = c
            .call(
                reqwest::Method::GET,
                &format!("{org}/services/kardio"),
                None,
            )
            .await;
        (b["synced"] == true).then_some(())
    })
    .await;
    let endpoints = directory.resources("Endpoint").await;
    assert_eq!(endpoints.len(), 2, "chefarzt's endpoint is gone");
    let off = endpoints
        .iter()
        .find(|e| e["address"] == format!("matrix:u/kardio:{domain}"))
        .unwrap();
    assert_eq!(off["status"], "off");
    let (_, found) = search(&sync, &openid, &[("organization", "Klinik am")]).await;
    assert_eq!(
        mxids(&found),
        [format!("@pflege:{domain}")],
        "off endpoints are not found"
    );

    // The directory down for a while: a new department waits and is made once when it is back.
    directory.stop().await;
    let (status, _) = c
        .call(
            reqwest::Method::PUT,
            &format!("{org}/services/notaufnahme"),
            Some(json!({"name": "Notaufnahme", "endpoints": [{"mxid": format!("@notaufnahme:{domain}"), "name": "Notaufnahme"}]})),
        )
        .await;
    assert_eq!(status, 202);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_, pending) = c
        .call(
            reqwest::Method::GET,
            &format!("{org}/services/notaufnahme"),
            None,
        )
        .await;
    assert_eq!(pending["synced"], false);
    assert!(
        pending["last_error"]
            .as_str()
            .unwrap()
            .contains("unreachable"),
        "{pending}"
    );
    directory.resume().await;
    // An answer lost on the way: the endpoint was made, the retry finds it by its address.
    directory.lose_answers(1);
    eventually("department synced", 30, async || {
        let (_, b) = c
            .call(
                reqwest::Method::GET,
                &format!("{org}/services/notaufnahme"),
                None,
            )
            .await;
        (b["synced"] == true).then_some(())
    })
    .await;
    let changes = directory.changes();
    assert_eq!(count(&changes, "POST Endpoint"), 3, "{changes:?}");
    assert_eq!(count(&changes, "POST HealthcareService"), 2, "{changes:?}");
    assert_eq!(directory.resources("HealthcareService").await.len(), 2);

    // Removing a department removes what we made for it and nothing else.
    let (status, _) = c
        .call(
            reqwest::Method::DELETE,
            &format!("{org}/services/kardio"),
            None,
        )
        .await;
    assert_eq!(status, 202);
    eventually("department removed", 20, async || {
        let (s, _) = c
            .call(
                reqwest::Method::GET,
                &format!("{org}/services/kardio"),
                None,
            )
            .await;
        (s == 404).then_some(())
    })
    .await;
    let left: Vec<String> = directory
        .resources("Endpoint")
        .await
        .iter()
        .map(|e| e["address"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&format!("matrix:u/pflege:{domain}")));
    assert!(left.contains(&format!("matrix:u/notaufnahme:{domain}")));
    let kept = directory.resource("Endpoint", &pflege).await.unwrap();
    assert_eq!(kept["name"], "Pflege (eigener Eintrag)");
    assert_eq!(
        kept["meta"]["versionId"], "1",
        "the foreign endpoint was never written"
    );
    assert_eq!(directory.resources("Organization").await.len(), 1);
    assert_eq!(directory.resources("HealthcareService").await.len(), 1);

    // A doctor with an eHBA makes themselves findable, and withdraws again (D-PR-01).
    let role = directory
        .add_practitioner("1-HBA-Dr-Weber", "Anna", "Weber")
        .await;
    let (weber, openid) = openid_token(&hs, "weber").await;
    let sessions = format!(
        "http://127.0.0.1:{}/_tim/directory/v1/practitioner/sessions",
        sync.search_port
    );
    let http = reqwest::Client::new();
    let start = async |body: Value, token: &str| {
        let r = http
            .post(&sessions)
            .header("X-Matrix-OpenID-Token", token)
            .json(&body)
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let token = openid["access_token"].as_str().unwrap();
    let (status, _) = start(
        json!({"mxId": domain, "action": "publish", "name": "Dr. Anna Weber"}),
        "forged",
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = start(
        json!({"mxId": "elsewhere.example", "action": "publish", "name": "x"}),
        token,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = start(json!({"mxId": domain, "action": "delete"}), token).await;
    assert_eq!(status, 400);
    let sign_in = async |action: Value| {
        let (status, started) = start(action, token).await;
        assert_eq!(status, 201, "{started}");
        // The browser: the IDP with the eHBA, then back to the directory.
        let idp = http
            .get(format!(
                "{}&card=1-HBA-Dr-Weber",
                started["redirect_uri"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap();
        assert_eq!(idp.status(), 200);
        let done: Value = http
            .get(format!(
                "{sessions}/{}?wait_ms=15000",
                started["session"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(done["status"], "done", "{done}");
    };
    // Until the org admin binds the eHBA to the user, nothing starts.
    let (status, err) = start(
        json!({"mxId": domain, "action": "publish", "name": "Dr. Anna Weber"}),
        token,
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"].as_str().unwrap().contains("no eHBA is bound"),
        "{err}"
    );
    let (status, body) = c
        .call(
            reqwest::Method::PUT,
            &format!("/_tim/vzd/v1/practitioners/{weber}"),
            Some(json!({"telematikID": "1-HBA-Dr-Weber"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // Another doctor's card signing in on Weber's link changes nothing.
    directory
        .add_practitioner("1-HBA-Dr-Mallory", "Max", "Mallory")
        .await;
    let (status, started) = start(
        json!({"mxId": domain, "action": "publish", "name": "Dr. Anna Weber"}),
        token,
    )
    .await;
    assert_eq!(status, 201, "{started}");
    let (again, _) = start(
        json!({"mxId": domain, "action": "publish", "name": "x"}),
        token,
    )
    .await;
    assert_eq!(again, 400, "one sign-in at a time");
    http.get(format!(
        "{}&card=1-HBA-Dr-Mallory",
        started["redirect_uri"].as_str().unwrap()
    ))
    .send()
    .await
    .unwrap();
    let failed: Value = http
        .get(format!(
            "{sessions}/{}?wait_ms=15000",
            started["session"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("not the one bound"),
        "{failed}"
    );
    assert!(
        directory
            .resources("Endpoint")
            .await
            .iter()
            .all(|e| e["address"] != format!("matrix:u/weber:{domain}"))
    );

    sign_in(json!({"mxId": domain, "action": "publish", "name": "Dr. Anna Weber"})).await;
    let r = directory.resource("PractitionerRole", &role).await.unwrap();
    let endpoint_id = r["endpoint"][0]["reference"]
        .as_str()
        .unwrap()
        .strip_prefix("Endpoint/")
        .unwrap()
        .to_owned();
    let e = directory.resource("Endpoint", &endpoint_id).await.unwrap();
    assert_eq!(e["address"], format!("matrix:u/weber:{domain}"));
    assert_eq!(e["status"], "active");
    let (_, found) = search(&sync, &openid, &[("name", "Weber")]).await;
    assert_eq!(mxids(&found), std::slice::from_ref(&weber));
    assert_eq!(found["results"][0]["kind"], "practitioner");
    assert_eq!(found["results"][0]["practitioner"], "Anna Weber");
    // whereIs: the doctor in the practitioner part, the clinic's MXIDs in the organisation part.
    let whereis = async |mxid: &str| {
        let (status, b) = c
            .call(
                reqwest::Method::GET,
                &format!(
                    "/_tim/vzd/v1/localization?mxid={}",
                    mxid.replace('@', "%40")
                ),
                None,
            )
            .await;
        assert_eq!(status, 200, "{b}");
        b["localization"].as_str().unwrap().to_owned()
    };
    assert_eq!(whereis(&weber).await, "pract");
    assert_eq!(whereis(&format!("@notaufnahme:{domain}")).await, "org");
    assert_eq!(whereis(&format!("@niemand:{domain}")).await, "none");
    sign_in(json!({"mxId": domain, "action": "withdraw"})).await;
    let r = directory.resource("PractitionerRole", &role).await.unwrap();
    assert!(r["endpoint"].as_array().is_none_or(|e| e.is_empty()), "{r}");
    assert!(directory.resource("Endpoint", &endpoint_id).await.is_none());
    let (_, found) = search(&sync, &openid, &[("telematikID", "1-HBA-Dr-Weber")]).await;
    assert!(mxids(&found).is_empty());
    let unknown = http.get(format!("{sessions}/nope")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);

    sync.cleanup().await;
    hs.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_entries_and_search_against_the_directory_double() {
    for store in STORES {
        entries_scenario(store).await;
    }
}
