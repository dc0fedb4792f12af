//! The binary: `--help` names the commands, and `serve` without credentials refuses clearly.
//! (Also makes `cargo test` build `tim-vzd-sync`, which the e2e tests start.)

use std::process::Command;

#[test]
fn help_and_a_clear_refusal_without_credentials() {
    let bin = env!("CARGO_BIN_EXE_tim-vzd-sync");
    let help = Command::new(bin).arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(help.status.success());
    assert!(
        text.contains("serve") && text.contains("internal-token"),
        "{text}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin)
        .arg("serve")
        .env("TIM_VZD_DATA_DIR", dir.path())
        .env(
            "TIM_VZD_DATABASE_URL",
            format!("sqlite://{}/v.db", dir.path().display()),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not configured: directory.base_url"), "{err}");
}
