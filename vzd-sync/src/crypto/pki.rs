//! The pinned TI trust anchors and certificate chains to them.
//!
//! The TI's root CAs are pinned in configuration (the TSL download service publishes them; in
//! tests a CA of our own stands in); sub-CAs may come with the signed object (`x5c`) or from
//! configuration (gematik delivers only the signer certificate in a federation list's `x5c`).

use std::{path::Path, time::SystemTime};

use openssl::{
    stack::Stack,
    x509::{
        X509, X509StoreContext,
        store::{X509Store, X509StoreBuilder},
        verify::X509VerifyParam,
    },
};

/// Trust anchors (roots) and known intermediate certificates.
#[derive(Clone, Default)]
pub struct TrustStore {
    roots: Vec<X509>,
    intermediates: Vec<X509>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("roots", &self.roots.len())
            .field("intermediates", &self.intermediates.len())
            .finish()
    }
}

impl TrustStore {
    pub fn new(roots: Vec<X509>, intermediates: Vec<X509>) -> Self {
        Self {
            roots,
            intermediates,
        }
    }

    /// Reads roots and intermediates from files, each PEM (one or more certificates) or DER.
    pub fn load(
        roots: &[impl AsRef<Path>],
        intermediates: &[impl AsRef<Path>],
    ) -> Result<Self, String> {
        let mut store = Self::default();
        for path in roots {
            store.roots.extend(read_certificates(path.as_ref())?);
        }
        for path in intermediates {
            store
                .intermediates
                .extend(read_certificates(path.as_ref())?);
        }
        Ok(store)
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// An OpenSSL store of the roots, checking validity at `at`.
    pub(crate) fn x509_store(&self, at: SystemTime) -> Result<X509Store, String> {
        let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        for root in &self.roots {
            builder.add_cert(root.clone()).map_err(|e| e.to_string())?;
        }
        let mut param = X509VerifyParam::new().map_err(|e| e.to_string())?;
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        param.set_time(secs as _);
        builder.set_param(&param).map_err(|e| e.to_string())?;
        Ok(builder.build())
    }

    /// Checks that `leaf` chains to a root at time `at` through `extra` and the known
    /// intermediates; returns the chain, leaf first and root last.
    pub fn verify_chain(
        &self,
        leaf: &X509,
        extra: &[X509],
        at: SystemTime,
    ) -> Result<Vec<X509>, String> {
        if self.roots.is_empty() {
            return Err("no trust anchors configured".into());
        }
        let store = self.x509_store(at)?;
        let mut untrusted = Stack::new().map_err(|e| e.to_string())?;
        for c in extra.iter().chain(&self.intermediates) {
            untrusted.push(c.clone()).map_err(|e| e.to_string())?;
        }
        let mut ctx = X509StoreContext::new().map_err(|e| e.to_string())?;
        ctx.init(&store, leaf, &untrusted, |ctx| {
            Ok(match ctx.verify_cert()? {
                true => Ok(ctx
                    .chain()
                    .map(|c| c.iter().map(|c| c.to_owned()).collect())
                    .unwrap_or_default()),
                false => Err(ctx.error().error_string().to_owned()),
            })
        })
        .map_err(|e| e.to_string())?
    }
}

/// The certificates in a PEM file (any number) or a DER file (one).
pub fn read_certificates(path: &Path) -> Result<Vec<X509>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        X509::stack_from_pem(&bytes)
    } else {
        X509::from_der(&bytes).map(|c| vec![c])
    }
    .map_err(|e| format!("{}: not a certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

/// The subject's common name.
pub fn common_name(cert: &X509) -> Option<String> {
    cert.subject_name()
        .entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
}
