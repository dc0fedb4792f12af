//! Directory sync benchmark (`--only vzd`), a release `tim-vzd-sync` against the directory
//! double, a federation list of 10,000 domains:
//! 1. verifying such a list (BP256R1 signature, chain, parsing; in this process);
//! 2. `I_internVerification` with 32 concurrent homeservers asking whether their version is
//!    current (304) and fetching the whole signed list (200);
//! 3. directory search with 32 concurrent users: new criteria each time (through the
//!    directory) and repeated criteria (answered from the cache).

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;
use tim_e2e::{Server, Store, VzdSyncProcess, vzd::VzdDouble};
use tim_vzd_sync::{
    crypto::{Alg, jws, testca::TestCa},
    federation_list::SignedList,
};

use crate::{ms, percentile};

const DOMAINS: usize = 10_000;

fn list_jws(ca: &TestCa) -> String {
    let list = json!({"version": 1, "domainList": (0..DOMAINS).map(|i| json!({
        "domain": format!("tim-{i}.provider.example"), "telematikID": format!("1-SMC-B-{i:06}"),
        "isInsurance": false, "timAnbieter": "ORG-0001:BT-0001"})).collect::<Vec<_>>()});
    let (cert, key) = ca.issue("list signer", Alg::BP256R1);
    jws::sign(
        Alg::BP256R1,
        &key,
        &[cert],
        Some("JWT"),
        list.to_string().as_bytes(),
    )
    .unwrap()
}

/// Runs `requests` from 32 concurrent tasks for `seconds`; requests/s and latency percentiles.
async fn load<F, Fut>(seconds: u64, request: F) -> (f64, Vec<Duration>)
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|t| {
            let request = request.clone();
            tokio::spawn(async move {
                let mut times = vec![];
                let mut n = 0;
                while Instant::now() < deadline {
                    let s = Instant::now();
                    request(t, n).await;
                    times.push(s.elapsed());
                    n += 1;
                }
                times
            })
        })
        .collect();
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let rate = all.len() as f64 / started.elapsed().as_secs_f64();
    all.sort();
    (rate, all)
}

/// `text` with the case of its letters chosen by the bits of `seed`.
fn spelled(text: &str, seed: u64) -> String {
    text.chars()
        .enumerate()
        .map(|(i, ch)| match (seed >> (i % 60)) & 1 {
            1 => ch.to_ascii_uppercase(),
            _ => ch.to_ascii_lowercase(),
        })
        .collect()
}

fn report(what: &str, rate: f64, times: &[Duration]) {
    println!(
        "{what}: {rate:.0}/s, p50 {} p99 {}",
        ms(percentile(times, 0.5)),
        ms(percentile(times, 0.99))
    );
}

pub async fn bench(store: Store, seconds: u64) {
    // 1. Verification of a list of 10,000 domains.
    let ca = TestCa::new(Alg::BP256R1);
    let jws_text = list_jws(&ca);
    let trust = ca.trust();
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(2) {
        let l = SignedList::verify(&jws_text, &trust, SystemTime::now()).unwrap();
        assert_eq!(l.len(), DOMAINS);
        n += 1;
    }
    println!(
        "federation list of {DOMAINS} domains ({} KiB): verified and parsed in {} (mean of {n})",
        jws_text.len() / 1024,
        ms(started.elapsed() / n)
    );

    // 2. I_internVerification.
    let hs = Server::start_with(store, &[("TIM_LOG_LEVEL", "warn")]);
    let domain = hs.server_name.clone();
    let directory = VzdDouble::start().await;
    directory.add_provider("tim-provider-e2e", "e2e-secret", "ORG-0001:BT-0001");
    directory
        .set_organization_entry("5-SMC-B-Klinik", "Klinik am See", "Potsdam", true)
        .await;
    directory.set_homeserver(&domain, &hs.base_url());
    directory.add_other_domains(DOMAINS).await;
    let sync = VzdSyncProcess::start(store, &directory, &[("TIM_VZD_LOG_LEVEL", "warn")]);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    let base = sync.base_url();
    let token = sync.token();
    let put = |path: String, body: serde_json::Value| {
        http.put(format!("{base}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    put(
        format!("/_tim/vzd/v1/domains/{domain}"),
        json!({"telematikID": "5-SMC-B-Klinik"}),
    )
    .await
    .unwrap();
    put(
        "/_tim/vzd/v1/organizations/5-SMC-B-Klinik".into(),
        json!({"professionOID": "1.2.276.0.76.4.53"}),
    )
    .await
    .unwrap();
    let endpoints: Vec<_> = (0..20)
        .map(|i| json!({"mxid": format!("@station{i}:{domain}"), "name": format!("Station {i}")}))
        .collect();
    for (i, name) in [
        "Kardiologie",
        "Neurologie",
        "Chirurgie",
        "Radiologie",
        "Notaufnahme",
    ]
    .iter()
    .enumerate()
    {
        put(
            format!("/_tim/vzd/v1/organizations/5-SMC-B-Klinik/services/s{i}"),
            json!({"name": name, "endpoints": endpoints[i * 4..i * 4 + 4]}),
        )
        .await
        .unwrap();
    }
    // Wait for the list with our domain and for the entries.
    let version = loop {
        let r = http
            .get(format!("{base}/_tim/internal/v1/federation-list"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            let v: serde_json::Value = r.json().await.unwrap();
            if v["jws"].as_str().is_some_and(|j| {
                SignedList::verify(j, &directory.inner.ca.trust(), SystemTime::now())
                    .is_ok_and(|l| l.contains(&domain))
            }) {
                break v["version"].as_i64().unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    while directory.resources("HealthcareService").await.len() < 5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let url = format!("{base}/_tim/internal/v1/federation-list?version={version}");
    let (c, t) = (http.clone(), token.clone());
    let (rate, times) = load(seconds, move |_, _| {
        let (c, t, url) = (c.clone(), t.clone(), url.clone());
        async move {
            let r = c.get(&url).bearer_auth(&t).send().await.unwrap();
            assert_eq!(r.status(), 304);
        }
    })
    .await;
    report(
        "I_internVerification, version current (304), 32 concurrent",
        rate,
        &times,
    );
    let url = format!("{base}/_tim/internal/v1/federation-list");
    let (c, t) = (http.clone(), token.clone());
    let (rate, times) = load(seconds, move |_, _| {
        let (c, t, url) = (c.clone(), t.clone(), url.clone());
        async move {
            let r = c.get(&url).bearer_auth(&t).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
        }
    })
    .await;
    report(
        &format!("I_internVerification, whole list of {DOMAINS} domains (200), 32 concurrent"),
        rate,
        &times,
    );

    // 3. Search: 32 users, each with an OpenID token of the homeserver.
    let mut openids = vec![];
    for i in 0..32 {
        let reg: serde_json::Value = http
            .post(format!("{}/_matrix/client/v3/register", hs.base_url()))
            .json(&json!({"username": format!("bench{i}"), "password": "bench-pw-1", "auth": {"type": "m.login.dummy"}}))
            .send().await.unwrap().json().await.unwrap();
        let user = reg["user_id"].as_str().unwrap();
        let o: serde_json::Value = http
            .post(format!(
                "{}/_matrix/client/v3/user/{user}/openid/request_token",
                hs.base_url()
            ))
            .bearer_auth(reg["access_token"].as_str().unwrap())
            .json(&json!({}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        openids.push(o["access_token"].as_str().unwrap().to_owned());
    }
    let openids = Arc::new(openids);
    let search_url = sync.search_url();
    for (label, fresh) in [
        ("new criteria each time (through the directory)", true),
        ("repeated criteria (cached)", false),
    ] {
        let (c, o, u, d) = (
            http.clone(),
            openids.clone(),
            search_url.clone(),
            domain.clone(),
        );
        let (rate, times) = load(seconds, move |t, n| {
            let (c, u, d) = (c.clone(), u.clone(), d.clone());
            let openid = o[t].clone();
            // Fresh: the same search in another spelling (upper/lower case), which the
            // directory matches alike but the cache does not know.
            let seed = (t * 1_000_003 + n) as u64;
            let (org, city) = match fresh {
                true => (
                    spelled("Klinik am See", seed),
                    spelled("Potsdam", seed >> 11),
                ),
                false => ("Klinik am See".to_owned(), "Potsdam".to_owned()),
            };
            async move {
                let q = [("mxId", d), ("organization", org), ("city", city)];
                let r = c
                    .get(&u)
                    .query(&q)
                    .header("X-Matrix-OpenID-Token", openid)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 200);
                r.bytes().await.unwrap();
            }
        })
        .await;
        report(
            &format!("directory search, 32 users, {label}"),
            rate,
            &times,
        );
    }
    sync.cleanup().await;
    hs.cleanup().await;
}
