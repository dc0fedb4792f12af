//! OCSP (RFC 6960) for the certificates of a verified chain (B-FL-04, A_25635): every
//! certificate but the root must be reported `good` by its issuer's responder, in a response
//! signed within the chain and current.

use std::time::{Duration, SystemTime};

use openssl::{
    hash::MessageDigest,
    ocsp::{OcspCertId, OcspCertStatus, OcspFlag, OcspRequest, OcspResponse, OcspResponseStatus},
    stack::Stack,
    x509::X509,
};

use super::TrustStore;

/// Asks the responder about each non-root certificate of `chain` (leaf first, root last).
/// `responder` overrides the certificates' own OCSP address (the TI's OCSP proxy, a test double).
pub async fn check_chain(
    http: &reqwest::Client,
    chain: &[X509],
    trust: &TrustStore,
    responder: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    for pair in chain.windows(2) {
        check_one(http, &pair[0], &pair[1], chain, trust, responder, timeout).await?;
    }
    Ok(())
}

async fn check_one(
    http: &reqwest::Client,
    subject: &X509,
    issuer: &X509,
    chain: &[X509],
    trust: &TrustStore,
    responder: Option<&str>,
    timeout: Duration,
) -> Result<(), String> {
    let name = super::pki::common_name(subject).unwrap_or_else(|| "certificate".into());
    let url = match responder {
        Some(url) => url.to_owned(),
        None => subject
            .ocsp_responders()
            .ok()
            .and_then(|r| r.iter().next().map(|s| s.to_string()))
            .ok_or_else(|| format!("{name}: no OCSP responder named"))?,
    };
    let id = || OcspCertId::from_cert(MessageDigest::sha1(), subject, issuer);
    let request = (|| {
        let mut req = OcspRequest::new()?;
        req.add_id(id()?)?;
        req.to_der()
    })()
    .map_err(|e| e.to_string())?;
    let response = http
        .post(&url)
        .header("content-type", "application/ocsp-request")
        .timeout(timeout)
        .body(request)
        .send()
        .await
        .map_err(|e| format!("{name}: OCSP responder unreachable: {e}"))?;
    if !response.status().is_success() {
        return Err(format!(
            "{name}: OCSP responder answered {}",
            response.status()
        ));
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{name}: OCSP answer broken off: {e}"))?;
    let parsed =
        OcspResponse::from_der(&body).map_err(|_| format!("{name}: not an OCSP response"))?;
    if parsed.status() != OcspResponseStatus::SUCCESSFUL {
        return Err(format!(
            "{name}: OCSP response status {:?}",
            parsed.status()
        ));
    }
    let basic = parsed.basic().map_err(|e| e.to_string())?;
    let store = trust.x509_store(SystemTime::now())?;
    let mut certs = Stack::new().map_err(|e| e.to_string())?;
    for c in chain {
        certs.push(c.clone()).map_err(|e| e.to_string())?;
    }
    basic
        .verify(&certs, &store, OcspFlag::empty())
        .map_err(|_| format!("{name}: OCSP response signature not trusted"))?;
    let id = id().map_err(|e| e.to_string())?;
    let status = basic
        .find_status(&id)
        .ok_or_else(|| format!("{name}: OCSP response does not name it"))?;
    status
        .check_validity(300, Some(7 * 86400))
        .map_err(|_| format!("{name}: OCSP response outdated"))?;
    if status.status == OcspCertStatus::GOOD {
        Ok(())
    } else if status.status == OcspCertStatus::REVOKED {
        Err(format!("{name}: revoked"))
    } else {
        Err(format!("{name}: OCSP status unknown"))
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, process::Command};

    use super::*;
    use crate::crypto::{Alg, testca::TestCa};

    /// An OCSP response of the sub-CA about `leaf`, made by the `openssl ocsp` responder from an
    /// index file (`V` good, `R` revoked).
    fn response(dir: &Path, ca: &TestCa, leaf: &X509, revoked: bool) -> Vec<u8> {
        let serial = leaf
            .serial_number()
            .to_bn()
            .unwrap()
            .to_hex_str()
            .unwrap()
            .to_string();
        let subject: Vec<String> = leaf
            .subject_name()
            .entries()
            .map(|e| {
                format!(
                    "/{}={}",
                    e.object().nid().short_name().unwrap(),
                    e.data().to_string().unwrap()
                )
            })
            .collect();
        let line = match revoked {
            true => format!(
                "R\t351231235959Z\t240101000000Z\t{serial}\tunknown\t{}\n",
                subject.concat()
            ),
            false => format!(
                "V\t351231235959Z\t\t{serial}\tunknown\t{}\n",
                subject.concat()
            ),
        };
        std::fs::write(dir.join("index.txt"), line).unwrap();
        std::fs::write(dir.join("sub.pem"), ca.sub.to_pem().unwrap()).unwrap();
        std::fs::write(
            dir.join("sub.key"),
            ca.sub_key().private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        let mut req = OcspRequest::new().unwrap();
        req.add_id(OcspCertId::from_cert(MessageDigest::sha1(), leaf, &ca.sub).unwrap())
            .unwrap();
        std::fs::write(dir.join("req.der"), req.to_der().unwrap()).unwrap();
        let out = Command::new("openssl")
            .current_dir(dir)
            .args([
                "ocsp",
                "-index",
                "index.txt",
                "-rsigner",
                "sub.pem",
                "-rkey",
                "sub.key",
                "-CA",
                "sub.pem",
                "-reqin",
                "req.der",
                "-respout",
                "resp.der",
                "-ndays",
                "1",
            ])
            .output()
            .expect("the openssl command (Debian package openssl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::read(dir.join("resp.der")).unwrap()
    }

    async fn responder(answer: Vec<u8>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move || {
                let a = answer.clone();
                async move { ([("content-type", "application/ocsp-response")], a) }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        format!("http://{addr}/")
    }

    #[tokio::test]
    async fn good_revoked_and_foreign_responses() {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(Alg::BP256R1);
        let (leaf, _) = ca.issue("signer", Alg::BP256R1);
        let chain = [leaf.clone(), ca.sub.clone()];
        let http = reqwest::Client::new();
        let t = Duration::from_secs(5);

        let good = responder(response(dir.path(), &ca, &leaf, false)).await;
        check_chain(&http, &chain, &ca.trust(), Some(&good), t)
            .await
            .unwrap();

        let revoked = responder(response(dir.path(), &ca, &leaf, true)).await;
        let err = check_chain(&http, &chain, &ca.trust(), Some(&revoked), t)
            .await
            .unwrap_err();
        assert!(err.contains("revoked"), "{err}");

        // Signed by a responder outside the trusted PKI.
        let stranger = TestCa::new(Alg::BP256R1);
        let (other, _) = stranger.issue("signer", Alg::BP256R1);
        let foreign = responder(response(dir.path(), &stranger, &other, false)).await;
        let err = check_chain(&http, &chain, &ca.trust(), Some(&foreign), t)
            .await
            .unwrap_err();
        assert!(
            err.contains("not trusted") || err.contains("does not name"),
            "{err}"
        );

        // No responder at all: a clear error, not a pass.
        let err = check_chain(&http, &chain, &ca.trust(), Some("http://127.0.0.1:9/"), t)
            .await
            .unwrap_err();
        assert!(err.contains("unreachable"), "{err}");
    }
}
