//! The `RegService-OpenID-Token` (B-TOK-01): a JWT signed `BP256R1` with our registration
//! service's TI signature certificate (C.FD.SIG, role `oid_tim`) in `x5c`, naming the
//! organisation (`idNummer` = TelematikID, `professionOID`) for which an org admin acts. The
//! directory exchanges it at `/owner-authenticate` for an owner access token (D-AUTH-02) and
//! checks signature, chain, `exp`, `aud` and that the certificate is the one registered with
//! our provider credentials (B-TOK-02).

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use openssl::{
    pkey::{PKey, Private},
    x509::X509,
};
use serde::{Deserialize, Serialize};

use crate::crypto::{Alg, TrustStore, jws};

/// The claims of a RegService-OpenID-Token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Who acts: the org admin, or our sync acting for the organisation.
    pub sub: String,
    /// The URL of the issuing registration service endpoint.
    pub iss: String,
    /// The directory's `/owner-authenticate` URL.
    pub aud: String,
    #[serde(rename = "professionOID")]
    pub profession_oid: String,
    /// The organisation's TelematikID.
    #[serde(rename = "idNummer")]
    pub id_nummer: String,
    pub iat: u64,
    pub exp: u64,
}

/// Our signing identity for RegService tokens.
pub struct TokenIssuer {
    key: PKey<Private>,
    cert: X509,
    issuer: String,
    lifetime: Duration,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer")
            .field("issuer", &self.issuer)
            .field("certificate", &jws::fingerprint(&self.cert))
            .finish()
    }
}

fn secs(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl TokenIssuer {
    pub fn new(
        key: PKey<Private>,
        cert: X509,
        issuer: String,
        lifetime: Duration,
    ) -> Result<Self, String> {
        let public = cert.public_key().map_err(|e| e.to_string())?;
        if !key.public_eq(&public) {
            return Err("the RegService signing key does not belong to its certificate".into());
        }
        Ok(Self {
            key,
            cert,
            issuer,
            lifetime,
        })
    }

    /// Reads the key (PEM, PKCS#8 or SEC1) and the certificate (PEM or DER).
    pub fn load(
        key_file: &Path,
        cert_file: &Path,
        issuer: String,
        lifetime: Duration,
    ) -> Result<Self, String> {
        let pem = std::fs::read(key_file)
            .map_err(|e| format!("cannot read {}: {e}", key_file.display()))?;
        let key = PKey::private_key_from_pem(&pem)
            .map_err(|_| format!("{}: not a PEM private key", key_file.display()))?;
        let cert = crate::crypto::pki::read_certificates(cert_file)?
            .into_iter()
            .next()
            .ok_or_else(|| format!("{}: no certificate", cert_file.display()))?;
        Self::new(key, cert, issuer, lifetime)
    }

    /// A token for organisation `telematik_id` (`profession_oid`), for the directory at `aud`.
    pub fn issue(
        &self,
        sub: &str,
        telematik_id: &str,
        profession_oid: &str,
        aud: &str,
        now: SystemTime,
    ) -> Result<String, String> {
        let claims = Claims {
            sub: sub.into(),
            iss: self.issuer.clone(),
            aud: aud.into(),
            profession_oid: profession_oid.into(),
            id_nummer: telematik_id.into(),
            iat: secs(now),
            exp: secs(now + self.lifetime),
        };
        let payload = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        jws::sign(
            Alg::BP256R1,
            &self.key,
            std::slice::from_ref(&self.cert),
            Some("JWT"),
            &payload,
        )
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error(transparent)]
    Signature(#[from] jws::JwsError),
    #[error("claims unreadable: {0}")]
    Claims(String),
    #[error("token expired")]
    Expired,
    #[error("token issued in the future")]
    NotYetValid,
    #[error("token is for another audience")]
    Audience,
    #[error("token lacks idNummer")]
    NoIdNummer,
    #[error("signer certificate is not the one registered")]
    UnknownSigner,
}

/// The directory's side of B-TOK-02: signature `BP256R1` by a certificate chaining to the TI
/// roots, `exp`/`iat` (60 s leeway), `aud`, `idNummer`, and — where `registered` names
/// certificate fingerprints — the signer is one of them.
pub fn verify(
    token: &str,
    trust: &TrustStore,
    aud: &str,
    registered: &[String],
    now: SystemTime,
) -> Result<Claims, TokenError> {
    let v = jws::verify(token, &[Alg::BP256R1], trust, now)?;
    let claims: Claims =
        serde_json::from_slice(&v.payload).map_err(|e| TokenError::Claims(e.to_string()))?;
    let now = secs(now);
    if claims.exp + 60 <= now {
        return Err(TokenError::Expired);
    }
    if claims.iat > now + 60 {
        return Err(TokenError::NotYetValid);
    }
    if claims.aud != aud {
        return Err(TokenError::Audience);
    }
    if claims.id_nummer.is_empty() {
        return Err(TokenError::NoIdNummer);
    }
    if !registered.is_empty() && !registered.contains(&jws::fingerprint(&v.chain[0])) {
        return Err(TokenError::UnknownSigner);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::testca::TestCa;

    const AUD: &str = "https://vzd.example/owner-authenticate";

    fn issuer(ca: &TestCa) -> (TokenIssuer, String) {
        let (cert, key) = ca.issue("TIM RegService C.FD.SIG", Alg::BP256R1);
        let fp = jws::fingerprint(&cert);
        (
            TokenIssuer::new(
                key,
                cert,
                "https://reg.example/regservice/openid".into(),
                Duration::from_secs(300),
            )
            .unwrap(),
            fp,
        )
    }

    #[test]
    fn issued_tokens_verify_with_the_b_tok_01_claims() {
        let ca = TestCa::new(Alg::BP256R1);
        let (iss, fp) = issuer(&ca);
        let now = SystemTime::now();
        let token = iss
            .issue("admin@praxis", "1-SMC-B-1", "1.2.276.0.76.4.50", AUD, now)
            .unwrap();
        let header = jws::peek_header(&token).unwrap();
        assert_eq!(
            (header.alg.as_str(), header.typ.as_deref(), header.x5c.len()),
            ("BP256R1", Some("JWT"), 1)
        );
        let claims = verify(&token, &ca.trust(), AUD, std::slice::from_ref(&fp), now).unwrap();
        assert_eq!(claims.id_nummer, "1-SMC-B-1");
        assert_eq!(claims.profession_oid, "1.2.276.0.76.4.50");
        assert_eq!(claims.exp - claims.iat, 300);
        assert_eq!(
            verify(
                &token,
                &ca.trust(),
                "https://other/owner-authenticate",
                &[],
                now
            ),
            Err(TokenError::Audience)
        );
        assert_eq!(
            verify(&token, &ca.trust(), AUD, &["00".into()], now),
            Err(TokenError::UnknownSigner)
        );
        assert_eq!(
            verify(
                &token,
                &ca.trust(),
                AUD,
                &[],
                now + Duration::from_secs(400)
            ),
            Err(TokenError::Expired)
        );
        let stranger = TestCa::new(Alg::BP256R1);
        assert!(matches!(
            verify(&token, &stranger.trust(), AUD, &[], now),
            Err(TokenError::Signature(_))
        ));
    }

    #[test]
    fn key_must_match_certificate() {
        let ca = TestCa::new(Alg::BP256R1);
        let (cert, _) = ca.issue("a", Alg::BP256R1);
        let (_, other) = ca.issue("b", Alg::BP256R1);
        assert!(TokenIssuer::new(other, cert, "x".into(), Duration::from_secs(1)).is_err());
    }
}
