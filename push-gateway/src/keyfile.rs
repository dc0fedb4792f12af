//! The VAPID private key file: read as PEM (PKCS#8, or SEC1 as `openssl ecparam -genkey`
//! writes it), or made on first start and written as PKCS#8 PEM, readable by the owner only.

use std::path::Path;

use p256::{
    SecretKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
};

pub fn load_or_create(path: &Path) -> Result<SecretKey, String> {
    match std::fs::read_to_string(path) {
        Ok(pem) => SecretKey::from_pkcs8_pem(&pem)
            .or_else(|_| SecretKey::from_sec1_pem(&pem))
            .map_err(|_| {
                format!(
                    "{} is not a P-256 private key in PEM (PKCS#8 or SEC1)",
                    path.display()
                )
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SecretKey::random(&mut rand_core::OsRng);
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| format!("cannot encode the VAPID key: {e}"))?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            write_private(path, pem.as_bytes())
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            tracing::info!(path = %path.display(), "made a new VAPID key");
            Ok(key)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_once_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/vapid.pem");
        let made = load_or_create(&path).unwrap();
        let read = load_or_create(&path).unwrap();
        assert_eq!(made.to_bytes(), read.to_bytes());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::write(dir.path().join("bad.pem"), "not a key").unwrap();
        assert!(load_or_create(&dir.path().join("bad.pem")).is_err());
    }
}
