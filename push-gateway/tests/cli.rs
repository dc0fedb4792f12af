//! The `tim-push-gateway` binary's command line: `--help` names its environment variables,
//! `vapid-public-key` makes the key file on first use and prints the same key every time,
//! and a bad configuration is refused with a clear message. (Also makes `cargo test` build the
//! binary, which the end-to-end tests in `e2e/` start.)

use std::process::Command;

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tim-push-gateway"))
}

#[test]
fn help_key_and_bad_config() {
    let help = gateway().arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(
        text.contains("TIM_PUSH_") && text.contains("vapid-public-key"),
        "{text}"
    );

    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("vapid.pem");
    let print_key = || {
        let out = gateway()
            .arg("vapid-public-key")
            .env("TIM_PUSH_VAPID_PRIVATE_KEY_FILE", &key_file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let key = print_key();
    // base64url of an uncompressed P-256 point: 65 bytes, 87 characters.
    assert_eq!(key.len(), 87, "{key}");
    assert!(key_file.exists());
    assert_eq!(print_key(), key, "the key is kept");

    let bad = gateway()
        .arg("vapid-public-key")
        .env("TIM_PUSH_VAPID_PRIVATE_KEY_FILE", &key_file)
        .env("TIM_PUSH_VAPID_SUBJECT", "ops@example.org")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("vapid_subject"));
}
