//! The command line as SPEC section 7 fixes it: exit codes and `--json` shapes.

mod common;

use common::*;
use std::process::Command;

#[test]
fn check_config_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[server]\nlisten = \"nowhere\"\n[refresh]\ninterval = \"soon\"\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["server.listen", "refresh.interval", "log.format"] {
        assert!(err.contains(key), "{key} not reported in:\n{err}");
    }

    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "[server]\nlisten_on = \"127.0.0.1:1\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&unknown)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml");
    let out = Command::new(BIN)
        .args(["check-config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn admin_commands_speak_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let admin = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["admin", "--config"])
            .arg(&config)
            .args(args)
            .arg("--json")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let user = admin(&["user", "add", "--name", "ops"]);
    let id = user["id"].as_u64().unwrap().to_string();
    let key = admin(&["key", "create", "--user", &id]);
    for field in ["credential_id", "user_id", "key", "expiry_time"] {
        assert!(!key[field].is_null(), "{field} missing: {key}");
    }
    assert!(key["key"].as_str().unwrap().starts_with("ipg_"));
    let cred = key["credential_id"].as_u64().unwrap().to_string();
    let listed = admin(&["credential", "list", "--user", &id]);
    assert_eq!(listed[0]["status"], "PENDING_FIRST_USE");
    let entry = admin(&["ip", "add", &cred, "192.0.2.1", "--status", "INACTIVE"]);
    assert_eq!(entry["status"], "INACTIVE");
    let item = entry["id"].as_u64().unwrap().to_string();
    assert_eq!(
        admin(&["ip", "set-status", &cred, &item, "ACTIVE"])["status"],
        "ACTIVE"
    );
    // Billing: ACTIVE entries per credential.
    let usage = admin(&["usage", "--user", &id]);
    assert_eq!(usage[0]["credential_id"].to_string(), cred);
    assert_eq!(usage[0]["active_ips"], 1);
    admin(&["ip", "add", &cred, "192.0.2.2", "--status", "INACTIVE"]);
    assert_eq!(
        admin(&["usage"])[0]["active_ips"],
        1,
        "INACTIVE entries are not billed"
    );
    // The wildcard is for ACTIVE credentials only: a pending key is refused, unchanged.
    let out = Command::new(BIN)
        .args(["admin", "--config"])
        .arg(&config)
        .args(["wildcard", "set", &cred])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("only be set on an ACTIVE"));
    assert_eq!(admin(&["wildcard", "clear", &cred])["wildcard"], false);
    assert_eq!(admin(&["ip", "list", &cred])["ips"][1]["ip"], "192.0.2.1");
    assert_eq!(admin(&["credential", "revoke", &cred])["status"], "REVOKED");
    let audit = admin(&["audit", "--credential", &cred]);
    assert_eq!(audit[0]["action"], "credential.revoke");
    // The key is never in the audit log.
    assert!(!audit.to_string().contains(key["key"].as_str().unwrap()));

    // Bad input: a clear message, exit 1, nothing stored.
    let out = Command::new(BIN)
        .args(["admin", "--config"])
        .arg(&config)
        .args(["ip", "add", &cred, "10.0.0.0/8"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a single"));
    assert_eq!(
        admin(&["ip", "list", &cred])["ips"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
