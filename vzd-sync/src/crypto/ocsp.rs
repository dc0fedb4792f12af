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
    let name = subject
        .subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_else(|| "certificate".into());
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
