//! Compact JWS (RFC 7515) as gematik uses it: header `{alg, typ, x5c}`, the signer's
//! certificate in `x5c[0]` (base64 DER), ECDSA with SHA-256 over brainpoolP256r1 (`BP256R1`) or
//! NIST P-256 (`ES256`), signature as the raw 64-byte `r || s`. Anything else — `alg: none`,
//! HMAC, RSA, a key on the wrong curve, critical header extensions — is refused.

use std::time::SystemTime;

use base64::{
    Engine,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use openssl::{
    bn::BigNum,
    ecdsa::EcdsaSig,
    nid::Nid,
    pkey::{PKey, Private},
    x509::X509,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::pki::TrustStore;

/// The signature algorithms of the TI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Alg {
    /// ECDSA on brainpoolP256r1 with SHA-256 (gematik's name; the TI default).
    BP256R1,
    /// ECDSA on NIST P-256 with SHA-256 (RFC 7518).
    ES256,
}

impl Alg {
    pub fn as_str(self) -> &'static str {
        match self {
            Alg::BP256R1 => "BP256R1",
            Alg::ES256 => "ES256",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "BP256R1" => Some(Alg::BP256R1),
            "ES256" => Some(Alg::ES256),
            _ => None,
        }
    }

    fn curve(self) -> Nid {
        match self {
            Alg::BP256R1 => Nid::BRAINPOOL_P256R1,
            Alg::ES256 => Nid::X9_62_PRIME256V1,
        }
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The protected header of a gematik JWS.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub typ: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub x5c: Vec<String>,
    /// Critical extensions: we understand none, so any is a refusal (RFC 7515 §4.1.11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crit: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwsError {
    #[error("not a compact JWS: {0}")]
    Malformed(&'static str),
    #[error("signature algorithm {0:?} not accepted")]
    Algorithm(String),
    #[error("critical header extensions are not supported")]
    Critical,
    #[error("no signer certificate (x5c)")]
    NoCertificate,
    #[error("signer certificate unreadable")]
    BadCertificate,
    #[error("the signer's key does not fit {0}")]
    KeyMismatch(Alg),
    #[error("signature does not verify")]
    BadSignature,
    #[error("certificate chain not trusted: {0}")]
    Untrusted(String),
}

/// A JWS whose signature and certificate chain checked out.
#[derive(Debug)]
pub struct VerifiedJws {
    pub alg: Alg,
    pub header: Header,
    pub payload: Vec<u8>,
    /// Signer first, then the issuers up to (and including) the trust anchor.
    pub chain: Vec<X509>,
}

/// A compact JWS taken apart: header, payload, signature and the signed input.
struct Parts<'a> {
    header: Header,
    payload: Vec<u8>,
    signature: Vec<u8>,
    signing_input: &'a str,
}

/// Splits and decodes a compact JWS without checking anything.
fn split(compact: &str) -> Result<Parts<'_>, JwsError> {
    let compact = compact.trim();
    let mut parts = compact.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwsError::Malformed("expected three dot-separated parts"));
    };
    let header_bytes = URL_SAFE_NO_PAD
        .decode(h)
        .map_err(|_| JwsError::Malformed("header is not base64url"))?;
    let header: Header = serde_json::from_slice(&header_bytes)
        .map_err(|_| JwsError::Malformed("header is not a JSON object"))?;
    let payload = URL_SAFE_NO_PAD
        .decode(p)
        .map_err(|_| JwsError::Malformed("payload is not base64url"))?;
    let signature = URL_SAFE_NO_PAD
        .decode(s)
        .map_err(|_| JwsError::Malformed("signature is not base64url"))?;
    let signing_input = &compact[..h.len() + 1 + p.len()];
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// Reads the header without verifying anything (to log what was refused, say).
pub fn peek_header(compact: &str) -> Result<Header, JwsError> {
    split(compact).map(|p| p.header)
}

/// Verifies `compact`: the algorithm is one of `accepted`, the signature verifies with the key
/// of `x5c[0]`, and that certificate chains to one of `trust`'s anchors at time `at` (further
/// `x5c` entries and `trust`'s intermediates may complete the chain).
pub fn verify(
    compact: &str,
    accepted: &[Alg],
    trust: &TrustStore,
    at: SystemTime,
) -> Result<VerifiedJws, JwsError> {
    let Parts {
        header,
        payload,
        signature,
        signing_input,
    } = split(compact)?;
    let alg = Alg::parse(&header.alg)
        .filter(|a| accepted.contains(a))
        .ok_or_else(|| JwsError::Algorithm(header.alg.clone()))?;
    if header.crit.is_some() {
        return Err(JwsError::Critical);
    }
    let mut certs = Vec::with_capacity(header.x5c.len());
    for c in &header.x5c {
        let der = STANDARD.decode(c).map_err(|_| JwsError::BadCertificate)?;
        certs.push(X509::from_der(&der).map_err(|_| JwsError::BadCertificate)?);
    }
    let Some(signer) = certs.first() else {
        return Err(JwsError::NoCertificate);
    };
    verify_signature(alg, signer, signing_input.as_bytes(), &signature)?;
    let chain = trust
        .verify_chain(signer, &certs[1..], at)
        .map_err(JwsError::Untrusted)?;
    Ok(VerifiedJws {
        alg,
        header,
        payload,
        chain,
    })
}

fn verify_signature(
    alg: Alg,
    signer: &X509,
    input: &[u8],
    signature: &[u8],
) -> Result<(), JwsError> {
    let key = signer
        .public_key()
        .and_then(|k| k.ec_key())
        .map_err(|_| JwsError::KeyMismatch(alg))?;
    if key.group().curve_name() != Some(alg.curve()) {
        return Err(JwsError::KeyMismatch(alg));
    }
    if signature.len() != 64 {
        return Err(JwsError::BadSignature);
    }
    let sig = (|| {
        let r = BigNum::from_slice(&signature[..32])?;
        let s = BigNum::from_slice(&signature[32..])?;
        EcdsaSig::from_private_components(r, s)
    })()
    .map_err(|_| JwsError::BadSignature)?;
    let digest = Sha256::digest(input);
    match sig.verify(&digest, &key) {
        Ok(true) => Ok(()),
        _ => Err(JwsError::BadSignature),
    }
}

/// Signs `payload` as a compact JWS with `key` (which must be on `alg`'s curve), naming `x5c`
/// (signer first) and `typ` in the header.
pub fn sign(
    alg: Alg,
    key: &PKey<Private>,
    x5c: &[X509],
    typ: Option<&str>,
    payload: &[u8],
) -> Result<String, String> {
    let ec = key.ec_key().map_err(|_| "signing key is not an EC key")?;
    if ec.group().curve_name() != Some(alg.curve()) {
        return Err(format!("signing key is not on the curve of {alg}"));
    }
    let mut chain = Vec::with_capacity(x5c.len());
    for c in x5c {
        chain.push(STANDARD.encode(c.to_der().map_err(|e| e.to_string())?));
    }
    let header = Header {
        alg: alg.as_str().to_owned(),
        typ: typ.map(str::to_owned),
        x5c: chain,
        crit: None,
    };
    let header = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = EcdsaSig::sign(&Sha256::digest(input.as_bytes()), &ec).map_err(|e| e.to_string())?;
    let mut raw = sig.r().to_vec_padded(32).map_err(|e| e.to_string())?;
    raw.extend(sig.s().to_vec_padded(32).map_err(|e| e.to_string())?);
    Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// The SHA-256 fingerprint of a certificate (hex), how certificates are named in logs and pinned.
pub fn fingerprint(cert: &X509) -> String {
    let der = cert.to_der().unwrap_or_default();
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::crypto::testca::TestCa;

    fn now() -> SystemTime {
        SystemTime::now()
    }

    #[test]
    fn good_signatures_verify_with_both_algorithms() {
        for alg in [Alg::BP256R1, Alg::ES256] {
            let ca = TestCa::new(alg);
            let (cert, key) = ca.issue("fedlist-signer", alg);
            let jws = sign(alg, &key, &[cert], Some("JWT"), b"{\"version\":1}").unwrap();
            let v = verify(&jws, &[alg], &ca.trust(), now()).unwrap();
            assert_eq!(v.payload, b"{\"version\":1}");
            assert_eq!(v.alg, alg);
            assert_eq!(v.chain.len(), 3, "signer, sub-CA, root");
        }
    }

    #[test]
    fn wrong_key_is_refused() {
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, _) = ca.issue("signer", Alg::BP256R1);
        let (_, other_key) = ca.issue("other", Alg::BP256R1);
        let jws = sign(Alg::BP256R1, &other_key, &[cert], Some("JWT"), b"{}").unwrap();
        assert_eq!(
            verify(&jws, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err(),
            JwsError::BadSignature
        );
    }

    #[test]
    fn tampered_payload_is_refused() {
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, key) = ca.issue("signer", Alg::BP256R1);
        let jws = sign(Alg::BP256R1, &key, &[cert], None, b"{\"version\":1}").unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            URL_SAFE_NO_PAD.encode(b"{\"version\":9}"),
            parts[2]
        );
        assert_eq!(
            verify(&forged, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err(),
            JwsError::BadSignature
        );
    }

    #[test]
    fn certificate_of_another_ca_is_refused() {
        let ca = TestCa::new(Alg::BP256R1);
        let stranger = TestCa::new(Alg::BP256R1);
        let (cert, key) = stranger.issue("signer", Alg::BP256R1);
        let jws = sign(Alg::BP256R1, &key, &[cert], None, b"{}").unwrap();
        assert!(matches!(
            verify(&jws, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err(),
            JwsError::Untrusted(_)
        ));
    }

    #[test]
    fn broken_chain_is_refused() {
        // The signer's sub-CA is neither in x5c nor among the known intermediates.
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, key) = ca.issue("signer", Alg::BP256R1);
        let jws = sign(Alg::BP256R1, &key, &[cert], None, b"{}").unwrap();
        let roots_only = TrustStore::new(vec![ca.root.clone()], vec![]);
        assert!(matches!(
            verify(&jws, &[Alg::BP256R1], &roots_only, now()).unwrap_err(),
            JwsError::Untrusted(_)
        ));
        // With the sub-CA in x5c the chain is complete again.
        let jws = sign(
            Alg::BP256R1,
            &key,
            &[ca.issue_cert_only(&key, "signer"), ca.sub.clone()],
            None,
            b"{}",
        )
        .unwrap();
        verify(&jws, &[Alg::BP256R1], &roots_only, now()).unwrap();
    }

    #[test]
    fn expired_certificate_is_refused() {
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, key) = ca.issue_valid(
            "signer",
            Alg::BP256R1,
            now() - Duration::from_secs(10 * 86400),
            now() - Duration::from_secs(86400),
        );
        let jws = sign(Alg::BP256R1, &key, &[cert], None, b"{}").unwrap();
        let err = verify(&jws, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err();
        assert!(
            matches!(&err, JwsError::Untrusted(m) if m.contains("expired")),
            "{err}"
        );
    }

    #[test]
    fn alg_none_and_unlisted_algorithms_are_refused() {
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, key) = ca.issue("signer", Alg::BP256R1);
        let good = sign(Alg::BP256R1, &key, &[cert], None, b"{}").unwrap();
        let parts: Vec<&str> = good.split('.').collect();
        let mut header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        header["alg"] = "none".into();
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts[1]
        );
        assert_eq!(
            verify(&none, &[Alg::BP256R1, Alg::ES256], &ca.trust(), now()).unwrap_err(),
            JwsError::Algorithm("none".into())
        );
        header["alg"] = "HS256".into();
        let hs = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts[1],
            parts[2]
        );
        assert!(matches!(
            verify(&hs, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err(),
            JwsError::Algorithm(_)
        ));
        // A good BP256R1 signature when only ES256 is accepted.
        assert!(matches!(
            verify(&good, &[Alg::ES256], &ca.trust(), now()).unwrap_err(),
            JwsError::Algorithm(_)
        ));
    }

    #[test]
    fn key_on_the_wrong_curve_is_refused() {
        // A P-256 certificate under a header claiming BP256R1.
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, key) = ca.issue("signer", Alg::ES256);
        let jws = sign(Alg::ES256, &key, &[cert], None, b"{}").unwrap();
        let parts: Vec<&str> = jws.split('.').collect();
        let mut header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        header["alg"] = "BP256R1".into();
        let relabelled = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            parts[1],
            parts[2]
        );
        assert_eq!(
            verify(&relabelled, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err(),
            JwsError::KeyMismatch(Alg::BP256R1)
        );
    }

    #[test]
    fn malformed_input_is_a_clear_error() {
        let ca = TestCa::new(Alg::BP256R1);
        for bad in ["", "a.b", "a.b.c.d", "!!.e30.AA", "e30.e30.AA"] {
            assert!(
                verify(bad, &[Alg::BP256R1], &ca.trust(), now()).is_err(),
                "{bad}"
            );
        }
        let no_x5c = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"BP256R1"}"#),
            URL_SAFE_NO_PAD.encode("{}"),
            URL_SAFE_NO_PAD.encode([0u8; 64])
        );
        assert_eq!(
            verify(&no_x5c, &[Alg::BP256R1], &ca.trust(), now()).unwrap_err(),
            JwsError::NoCertificate
        );
    }
}
