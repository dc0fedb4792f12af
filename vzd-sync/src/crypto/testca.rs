//! A PKI of our own for tests and the e2e directory double: a root CA and a sub-CA (as the TI
//! has), issuing end-entity certificates on brainpoolP256r1 or P-256. Compiled only for tests
//! and with the `test-ca` feature; production trusts the TI's roots from configuration.

use std::{
    path::Path,
    time::{Duration, SystemTime},
};

use openssl::{
    asn1::{Asn1Integer, Asn1Time},
    bn::{BigNum, MsbOption},
    ec::{EcGroup, EcKey},
    hash::MessageDigest,
    nid::Nid,
    pkey::{PKey, Private},
    x509::{
        X509, X509Builder, X509NameBuilder,
        extension::{AuthorityKeyIdentifier, BasicConstraints, KeyUsage, SubjectKeyIdentifier},
    },
};

use super::{Alg, TrustStore};

pub struct TestCa {
    pub root: X509,
    pub sub: X509,
    root_key: PKey<Private>,
    sub_key: PKey<Private>,
}

/// A fresh key on `alg`'s curve.
pub fn key(alg: Alg) -> PKey<Private> {
    let nid = match alg {
        Alg::BP256R1 => Nid::BRAINPOOL_P256R1,
        Alg::ES256 => Nid::X9_62_PRIME256V1,
    };
    let group = EcGroup::from_curve_name(nid).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn time(t: SystemTime) -> Asn1Time {
    Asn1Time::from_unix(t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as _).unwrap()
}

fn serial() -> Asn1Integer {
    let mut bn = BigNum::new().unwrap();
    bn.rand(120, MsbOption::MAYBE_ZERO, false).unwrap();
    bn.to_asn1_integer().unwrap()
}

struct Issuer<'a> {
    cert: Option<&'a X509>,
    key: &'a PKey<Private>,
}

fn build(
    cn: &str,
    subject_key: &PKey<Private>,
    issuer: Issuer<'_>,
    ca: bool,
    validity: (SystemTime, SystemTime),
) -> X509 {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("C", "DE").unwrap();
    name.append_entry_by_text("O", "TIM e2e test PKI").unwrap();
    name.append_entry_by_text("CN", cn).unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&serial()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(issuer.cert.map_or(&name, |c| c.subject_name()))
        .unwrap();
    b.set_pubkey(subject_key).unwrap();
    b.set_not_before(&time(validity.0)).unwrap();
    b.set_not_after(&time(validity.1)).unwrap();
    if ca {
        b.append_extension(BasicConstraints::new().critical().ca().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()
                .unwrap(),
        )
        .unwrap();
    } else {
        b.append_extension(BasicConstraints::new().critical().build().unwrap())
            .unwrap();
        b.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .build()
                .unwrap(),
        )
        .unwrap();
    }
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.cert.map(|c| &**c), None))
        .unwrap();
    b.append_extension(ski).unwrap();
    if let Some(issuer_cert) = issuer.cert {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(Some(issuer_cert), None))
            .unwrap();
        b.append_extension(aki).unwrap();
    }
    b.sign(issuer.key, MessageDigest::sha256()).unwrap();
    b.build()
}

impl TestCa {
    /// A root and a sub-CA with keys on `alg`'s curve, valid from a day ago for ten years.
    pub fn new(alg: Alg) -> Self {
        let now = SystemTime::now();
        let validity = (
            now - Duration::from_secs(86400),
            now + Duration::from_secs(3650 * 86400),
        );
        let root_key = key(alg);
        let root = build(
            "TIM TEST ROOT CA",
            &root_key,
            Issuer {
                cert: None,
                key: &root_key,
            },
            true,
            validity,
        );
        let sub_key = key(alg);
        let sub = build(
            "TIM TEST SUB CA",
            &sub_key,
            Issuer {
                cert: Some(&root),
                key: &root_key,
            },
            true,
            validity,
        );
        Self {
            root,
            sub,
            root_key,
            sub_key,
        }
    }

    /// A certificate and key for `cn` from the sub-CA, valid from a day ago for a year.
    pub fn issue(&self, cn: &str, alg: Alg) -> (X509, PKey<Private>) {
        let now = SystemTime::now();
        self.issue_valid(
            cn,
            alg,
            now - Duration::from_secs(86400),
            now + Duration::from_secs(365 * 86400),
        )
    }

    pub fn issue_valid(
        &self,
        cn: &str,
        alg: Alg,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> (X509, PKey<Private>) {
        let k = key(alg);
        let cert = build(
            cn,
            &k,
            Issuer {
                cert: Some(&self.sub),
                key: &self.sub_key,
            },
            false,
            (not_before, not_after),
        );
        (cert, k)
    }

    /// A further certificate for an existing key.
    pub fn issue_cert_only(&self, key: &PKey<Private>, cn: &str) -> X509 {
        let now = SystemTime::now();
        build(
            cn,
            key,
            Issuer {
                cert: Some(&self.sub),
                key: &self.sub_key,
            },
            false,
            (
                now - Duration::from_secs(86400),
                now + Duration::from_secs(365 * 86400),
            ),
        )
    }

    /// The root as anchor and the sub-CA as known intermediate.
    pub fn trust(&self) -> TrustStore {
        TrustStore::new(vec![self.root.clone()], vec![self.sub.clone()])
    }

    /// Writes `root.pem` and `sub.pem` into `dir` (the files a configuration names).
    pub fn write_pems(&self, dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
        let root = dir.join("root.pem");
        let sub = dir.join("sub.pem");
        std::fs::write(&root, self.root.to_pem().unwrap()).unwrap();
        std::fs::write(&sub, self.sub.to_pem().unwrap()).unwrap();
        (root, sub)
    }

    /// The root's key (an OCSP responder of the test PKI signs with the sub-CA's).
    pub fn sub_key(&self) -> &PKey<Private> {
        &self.sub_key
    }

    pub fn root_key(&self) -> &PKey<Private> {
        &self.root_key
    }
}
