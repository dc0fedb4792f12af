//! Web Push message encryption (RFC 8291 on RFC 8188 `aes128gcm`) and VAPID (RFC 8292): what
//! the gateway needs to hand a browser's push service a payload only that browser can read.

use aes_gcm::{
    Aes128Gcm, KeyInit, Nonce,
    aead::{Aead, Payload},
};
use base64::Engine;
use hkdf::Hkdf;
use p256::{
    PublicKey, SecretKey,
    ecdsa::{Signature, SigningKey, VerifyingKey, signature::Signer, signature::Verifier},
    elliptic_curve::sec1::ToEncodedPoint,
};
use sha2::Sha256;
use std::{collections::HashMap, sync::Mutex};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// The record size announced in the header: one record holds any payload we send.
const RECORD_SIZE: u32 = 4096;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = 16 + 4 + 1 + 65;
/// The largest payload one push carries (RFC 8291: one 4096-byte record with header and tag).
pub const MAX_PAYLOAD: usize = RECORD_SIZE as usize - HEADER_LEN - TAG_LEN - 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WebPushError {
    #[error("the subscription's p256dh is not a P-256 public key")]
    BadPublicKey,
    #[error("the subscription's auth secret must be 16 bytes")]
    BadAuthSecret,
    #[error("the payload is too large for one record")]
    TooLarge,
    #[error("the message does not decrypt")]
    Undecryptable,
    #[error("the VAPID token does not verify")]
    BadToken,
}

/// Uncompressed SEC1 encoding (65 bytes) of a public key.
pub fn public_bytes(key: &PublicKey) -> Vec<u8> {
    key.to_encoded_point(false).as_bytes().to_vec()
}

/// The content-encryption key and nonce for a message (RFC 8291 section 3.4, RFC 8188 2.2).
fn key_and_nonce(
    ecdh_secret: &[u8],
    auth_secret: &[u8],
    ua_public: &[u8],
    as_public: &[u8],
    salt: &[u8],
) -> ([u8; 16], [u8; 12]) {
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    Hkdf::<Sha256>::new(Some(auth_secret), ecdh_secret)
        .expand(&key_info, &mut ikm)
        .expect("32 bytes is a valid HKDF length");
    let prk = Hkdf::<Sha256>::new(Some(salt), &ikm);
    let mut cek = [0u8; 16];
    let mut nonce = [0u8; 12];
    prk.expand(b"Content-Encoding: aes128gcm\0", &mut cek)
        .expect("16 bytes is a valid HKDF length");
    prk.expand(b"Content-Encoding: nonce\0", &mut nonce)
        .expect("12 bytes is a valid HKDF length");
    (cek, nonce)
}

/// Encrypts `plaintext` for a subscription (`p256dh` public key, `auth` secret) with a fresh
/// sender key and salt: the body of the push request (`Content-Encoding: aes128gcm`). The
/// ephemeral key agreement runs on `ring` (assembly P-256, a third of RustCrypto's time per
/// push); the key schedule and record layout below are the ones the RFC example checks.
pub fn encrypt(plaintext: &[u8], p256dh: &[u8], auth: &[u8]) -> Result<Vec<u8>, WebPushError> {
    check_input(plaintext, p256dh, auth)?;
    let rng = ring::rand::SystemRandom::new();
    let sender = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::ECDH_P256, &rng)
        .map_err(|_| WebPushError::BadPublicKey)?;
    let as_public = sender
        .compute_public_key()
        .map_err(|_| WebPushError::BadPublicKey)?
        .as_ref()
        .to_vec();
    let peer = ring::agreement::UnparsedPublicKey::new(&ring::agreement::ECDH_P256, p256dh);
    let ecdh = ring::agreement::agree_ephemeral(sender, &peer, |secret| secret.to_vec())
        .map_err(|_| WebPushError::BadPublicKey)?;
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&rng, &mut salt).map_err(|_| WebPushError::BadPublicKey)?;
    seal(plaintext, p256dh, auth, &as_public, &ecdh, &salt)
}

fn check_input(plaintext: &[u8], p256dh: &[u8], auth: &[u8]) -> Result<(), WebPushError> {
    PublicKey::from_sec1_bytes(p256dh).map_err(|_| WebPushError::BadPublicKey)?;
    if p256dh.len() != 65 {
        // Compressed points are valid SEC1 but not what RFC 8291 puts into the key schedule.
        return Err(WebPushError::BadPublicKey);
    }
    if auth.len() != 16 {
        return Err(WebPushError::BadAuthSecret);
    }
    // One record: the plaintext, the last-record delimiter, the tag.
    if plaintext.len() > MAX_PAYLOAD {
        return Err(WebPushError::TooLarge);
    }
    Ok(())
}

/// `encrypt` with a given sender key and salt, all on RustCrypto (the RFC example's inputs).
#[cfg(test)]
fn encrypt_with(
    plaintext: &[u8],
    p256dh: &[u8],
    auth: &[u8],
    sender: &SecretKey,
    salt: &[u8; 16],
) -> Result<Vec<u8>, WebPushError> {
    check_input(plaintext, p256dh, auth)?;
    let ua_public = PublicKey::from_sec1_bytes(p256dh).map_err(|_| WebPushError::BadPublicKey)?;
    let ecdh = p256::ecdh::diffie_hellman(sender.to_nonzero_scalar(), ua_public.as_affine());
    let as_public = public_bytes(&sender.public_key());
    seal(
        plaintext,
        p256dh,
        auth,
        &as_public,
        ecdh.raw_secret_bytes(),
        salt,
    )
}

/// The record: key schedule from the shared secret, AES-128-GCM, and the RFC 8188 header.
fn seal(
    plaintext: &[u8],
    ua_public: &[u8],
    auth: &[u8],
    as_public: &[u8],
    ecdh_secret: &[u8],
    salt: &[u8; 16],
) -> Result<Vec<u8>, WebPushError> {
    let (cek, nonce) = key_and_nonce(ecdh_secret, auth, ua_public, as_public, salt);
    let mut record = Vec::with_capacity(plaintext.len() + 1 + TAG_LEN);
    record.extend_from_slice(plaintext);
    record.push(2);
    let ciphertext = Aes128Gcm::new(&cek.into())
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &record,
                aad: &[],
            },
        )
        .map_err(|_| WebPushError::TooLarge)?;
    let mut out = Vec::with_capacity(HEADER_LEN + ciphertext.len());
    out.extend_from_slice(salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(as_public.len() as u8);
    out.extend_from_slice(as_public);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Decrypts a one-record `aes128gcm` Web Push message as the browser does (for the push
/// service double in the tests, and for checking our own output).
pub fn decrypt(body: &[u8], ua_secret: &SecretKey, auth: &[u8]) -> Result<Vec<u8>, WebPushError> {
    if body.len() < HEADER_LEN + TAG_LEN || body[20] != 65 {
        return Err(WebPushError::Undecryptable);
    }
    let (salt, as_public) = (&body[..16], &body[21..86]);
    let sender = PublicKey::from_sec1_bytes(as_public).map_err(|_| WebPushError::Undecryptable)?;
    let ecdh = p256::ecdh::diffie_hellman(ua_secret.to_nonzero_scalar(), sender.as_affine());
    let ua_public = public_bytes(&ua_secret.public_key());
    let (cek, nonce) = key_and_nonce(ecdh.raw_secret_bytes(), auth, &ua_public, as_public, salt);
    let mut record = Aes128Gcm::new(&cek.into())
        .decrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: &body[HEADER_LEN..],
                aad: &[],
            },
        )
        .map_err(|_| WebPushError::Undecryptable)?;
    // Strip the padding and the last-record delimiter.
    while record.last() == Some(&0) {
        record.pop();
    }
    if record.pop() != Some(2) {
        return Err(WebPushError::Undecryptable);
    }
    Ok(record)
}

/// The gateway's VAPID identity (RFC 8292): a P-256 key pair.
pub struct Vapid {
    key: SigningKey,
    /// `mailto:` or `https:` contact of the operator, sent as `sub`.
    subject: String,
    /// Tokens by audience (push service origin) with their expiry: one signature per push
    /// service and half day, not one per push.
    tokens: Mutex<HashMap<String, (String, u64)>>,
}

/// VAPID tokens live 12 hours (RFC 8292 allows up to 24) and are renewed an hour before.
const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;
const TOKEN_RENEW_SECS: u64 = 3600;

impl Vapid {
    pub fn new(secret: SecretKey, subject: String) -> Self {
        Self {
            key: SigningKey::from(secret),
            subject,
            tokens: Mutex::default(),
        }
    }

    /// The `Authorization` header for a push to `endpoint` at `now` (Unix s), reusing the
    /// audience's token while it has more than an hour left.
    pub fn header_for(&self, endpoint: &str, now: u64) -> String {
        let aud = audience(endpoint);
        let mut tokens = self.tokens.lock().expect("token cache lock");
        if let Some((header, expires)) = tokens.get(&aud)
            && *expires > now + TOKEN_RENEW_SECS
        {
            return header.clone();
        }
        if tokens.len() >= 10_000 {
            // Endpoints name few push services; a flood of origins must not grow this.
            tokens.clear();
        }
        let expires = now + TOKEN_LIFETIME_SECS;
        let header = self.authorization(endpoint, expires);
        tokens.insert(aud, (header.clone(), expires));
        header
    }

    /// The public key as clients pass it to `pushManager.subscribe` (`applicationServerKey`).
    pub fn public_key(&self) -> String {
        B64.encode(
            VerifyingKey::from(&self.key)
                .to_encoded_point(false)
                .as_bytes(),
        )
    }

    /// The `Authorization` header for a push to `endpoint`, valid until `expires` (Unix s).
    pub fn authorization(&self, endpoint: &str, expires: u64) -> String {
        let header = B64.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({
            "aud": audience(endpoint),
            "exp": expires,
            "sub": self.subject,
        });
        let claims = B64.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        let signature: Signature = self.key.sign(signing_input.as_bytes());
        format!(
            "vapid t={signing_input}.{}, k={}",
            B64.encode(signature.to_bytes()),
            self.public_key()
        )
    }
}

/// The origin of a push endpoint (`aud` of the VAPID token).
pub fn audience(endpoint: &str) -> String {
    let after_scheme = endpoint.find("://").map(|i| i + 3).unwrap_or(0);
    let end = endpoint[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(endpoint.len());
    endpoint[..end].to_owned()
}

/// Checks a VAPID `Authorization` header as a push service does: the token's signature
/// verifies with the key `k`; returns the token's claims.
pub fn verify_authorization(header: &str) -> Result<serde_json::Value, WebPushError> {
    let rest = header
        .strip_prefix("vapid ")
        .ok_or(WebPushError::BadToken)?;
    let mut token = None;
    let mut key = None;
    for part in rest.split(',').map(str::trim) {
        if let Some(t) = part.strip_prefix("t=") {
            token = Some(t);
        } else if let Some(k) = part.strip_prefix("k=") {
            key = Some(k);
        }
    }
    let (token, key) = (
        token.ok_or(WebPushError::BadToken)?,
        key.ok_or(WebPushError::BadToken)?,
    );
    let key = B64.decode(key).map_err(|_| WebPushError::BadToken)?;
    let key = VerifyingKey::from_sec1_bytes(&key).map_err(|_| WebPushError::BadToken)?;
    let (signing_input, signature) = token.rsplit_once('.').ok_or(WebPushError::BadToken)?;
    let signature = B64.decode(signature).map_err(|_| WebPushError::BadToken)?;
    let signature = Signature::from_slice(&signature).map_err(|_| WebPushError::BadToken)?;
    key.verify(signing_input.as_bytes(), &signature)
        .map_err(|_| WebPushError::BadToken)?;
    let claims = signing_input
        .split('.')
        .nth(1)
        .ok_or(WebPushError::BadToken)?;
    let claims = B64.decode(claims).map_err(|_| WebPushError::BadToken)?;
    serde_json::from_slice(&claims).map_err(|_| WebPushError::BadToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> Vec<u8> {
        B64.decode(s).unwrap()
    }

    /// RFC 8291 Appendix A: the example message, byte for byte.
    #[test]
    fn rfc8291_example() {
        let plaintext = b"When I grow up, I want to be a watermelon";
        let sender =
            SecretKey::from_slice(&b64("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw")).unwrap();
        assert_eq!(
            B64.encode(public_bytes(&sender.public_key())),
            "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
        );
        let ua =
            SecretKey::from_slice(&b64("q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94")).unwrap();
        let ua_public = b64(
            "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
        );
        assert_eq!(public_bytes(&ua.public_key()), ua_public);
        let auth = b64("BTBZMqHH6r4Tts7J_aSIgg");
        let salt: [u8; 16] = b64("DGv6ra1nlYgDCS1FRnbzlw").try_into().unwrap();
        let message = encrypt_with(plaintext, &ua_public, &auth, &sender, &salt).unwrap();
        assert_eq!(
            B64.encode(&message),
            "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN"
        );
        assert_eq!(decrypt(&message, &ua, &auth).unwrap(), plaintext);
    }

    #[test]
    fn fresh_messages_decrypt_only_with_the_subscription_keys() {
        let ua = SecretKey::random(&mut rand_core::OsRng);
        let auth = [7u8; 16];
        let body = encrypt(
            b"{\"room_id\":\"!r:x\"}",
            &public_bytes(&ua.public_key()),
            &auth,
        )
        .unwrap();
        assert_eq!(
            decrypt(&body, &ua, &auth).unwrap(),
            b"{\"room_id\":\"!r:x\"}"
        );
        assert_eq!(
            decrypt(&body, &ua, &[8u8; 16]),
            Err(WebPushError::Undecryptable)
        );
        let other = SecretKey::random(&mut rand_core::OsRng);
        assert_eq!(
            decrypt(&body, &other, &auth),
            Err(WebPushError::Undecryptable)
        );
        assert_eq!(
            encrypt(&[0u8; 5000], &public_bytes(&ua.public_key()), &auth),
            Err(WebPushError::TooLarge)
        );
        assert_eq!(
            encrypt(b"x", &[4u8; 10], &auth),
            Err(WebPushError::BadPublicKey)
        );
    }

    #[test]
    fn vapid_token_verifies_with_its_public_key() {
        let vapid = Vapid::new(
            SecretKey::random(&mut rand_core::OsRng),
            "mailto:betrieb@example.org".into(),
        );
        // Cached per push service origin until an hour before expiry.
        let now = 1_900_000_000;
        let first = vapid.header_for("https://push.example.net/wpush/v2/abc", now);
        assert_eq!(
            first,
            vapid.header_for("https://push.example.net/other", now + 3600)
        );
        assert_ne!(
            first,
            vapid.header_for("https://push.example.net/x", now + 11 * 3600 + 1)
        );
        assert_ne!(first, vapid.header_for("https://fcm.example.com/x", now));
        let header = vapid.authorization("https://push.example.net/wpush/v2/abc", 1_900_000_000);
        let claims = verify_authorization(&header).unwrap();
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["exp"], 1_900_000_000);
        assert_eq!(claims["sub"], "mailto:betrieb@example.org");
        assert!(header.ends_with(&format!("k={}", vapid.public_key())));
        // A token altered after signing does not verify.
        let tampered = header.replacen("t=ey", "t=eX", 1);
        assert_eq!(verify_authorization(&tampered), Err(WebPushError::BadToken));
        let other = Vapid::new(
            SecretKey::random(&mut rand_core::OsRng),
            "mailto:x@y".into(),
        );
        let mixed = format!(
            "{}, k={}",
            header.split(", k=").next().unwrap(),
            other.public_key()
        );
        assert_eq!(verify_authorization(&mixed), Err(WebPushError::BadToken));
    }
}
