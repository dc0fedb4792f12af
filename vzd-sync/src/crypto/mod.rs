//! Signatures and certificates of the TI: compact JWS with `x5c` (`BP256R1` = ECDSA on
//! brainpoolP256r1 with SHA-256, or `ES256`), X.509 chains to the pinned TI roots, OCSP.

pub mod jws;
pub mod ocsp;
pub mod pki;
#[cfg(any(test, feature = "test-ca"))]
pub mod testca;

pub use jws::{Alg, JwsError, VerifiedJws};
pub use pki::TrustStore;
