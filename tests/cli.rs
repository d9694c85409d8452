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

/// Runs the binary with `args`, killing it if it has not exited within `PATIENCE` (a
/// `serve` that should have refused its configuration would otherwise run forever).
fn run_bounded(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + PATIENCE;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} did not exit: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn check_config_lists_every_problem_with_its_line_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.toml");
    std::fs::write(
        &file,
        "[server]\n\
         listen_on = \"127.0.0.1:1\"\n\
         workers = \"two\"\n\
         [client_ip]\n\
         trusted_proxies = [\"10.0.0.0/33\"]\n\
         [refresh]\n\
         interval = \"abc\"\n\
         max_staleness = \"-5s\"\n",
    )
    .unwrap();
    let out = run_bounded(&["check-config".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    let shown = file.display();
    for line in [
        format!("ipgate: 5 problems in {shown}:"),
        format!("{shown}:2: server.listen_on: unknown key"),
        format!("{shown}:3: server.workers: expected a whole number, found a string"),
        format!("{shown}:5: client_ip.trusted_proxies[0]: \"10.0.0.0/33\" is not an address"),
        format!("{shown}:7: refresh.interval: \"abc\" is not a duration"),
        format!("{shown}:8: refresh.max_staleness: \"-5s\" is negative"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&line)),
            "no line starts with {line:?}:\n{err}"
        );
    }
    assert!(!err.contains("expected number at"), "{err}");

    // A syntax error keeps TOML's context on its own lines, and the rest is checked too.
    std::fs::write(
        &file,
        "[server]\nlisten = nowhere\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = run_bounded(&["check-config".as_ref(), file.as_os_str()]);
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{shown}:2: TOML parse error at line 2")),
        "{err}"
    );
    assert!(err.contains("\n    2 | listen = nowhere\n"), "{err}");
    assert!(err.contains(&format!("{shown}:4: log.format")), "{err}");
}

#[test]
fn check_config_reads_config_toml_here_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.toml"), "[log]\nformat = \"xml\"\n").unwrap();
    let out = Command::new(BIN)
        .arg("check-config")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("config.toml:2: log.format"));
}

#[test]
fn serve_refuses_at_start_what_it_cannot_use_as_check_config_does() {
    let upstream = "http://127.0.0.1:9";
    let cases: &[(&str, Settings, &str)] = &[
        (
            "both listeners on one address",
            Settings::new(upstream)
                .set("server.listen", "\"127.0.0.1:18080\"")
                .set("server.admin_listen", "\"127.0.0.1:18080\""),
            "server.admin_listen: 127.0.0.1:18080 is also server.listen",
        ),
        (
            "an SQLite folder that does not exist",
            Settings::new(upstream).set("store.url", "\"sqlite://missing/ipgate.db\""),
            "does not exist",
        ),
        (
            "a log level that is no level",
            Settings::new(upstream).set("log.level", "\"inf\""),
            "log.level: \"inf\" is not a level",
        ),
        (
            "TLS files that cannot be read",
            Settings::new(upstream).set("server.tls", "{ cert = \"cert.pem\", key = \"key.pem\" }"),
            "server.tls.cert:",
        ),
        (
            "an upstream scheme it cannot speak",
            Settings::new("unix:///run/app.sock"),
            "upstream.url: the scheme \"unix\" is not supported",
        ),
        (
            "a negative duration",
            Settings::new(upstream).set("server.shutdown_grace", "\"-5s\""),
            "server.shutdown_grace: \"-5s\" is negative",
        ),
        (
            "a duration that is no duration",
            Settings::new(upstream).set("upstream.timeout", "\"abc\""),
            "upstream.timeout: \"abc\" is not a duration",
        ),
    ];
    for (what, settings, says) in cases {
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), settings);
        let check = run_bounded(&["check-config".as_ref(), config.as_os_str()]);
        let serve = run_bounded(&["serve".as_ref(), "--config".as_ref(), config.as_os_str()]);
        let err = String::from_utf8_lossy(&serve.stderr);
        assert_eq!(serve.status.code(), Some(64), "{what}: {err}");
        assert!(err.contains(says), "{what}: {says:?} not in\n{err}");
        assert_eq!(check.status.code(), Some(64), "{what}");
        assert_eq!(
            String::from_utf8_lossy(&check.stderr),
            err,
            "{what}: check-config and serve say the same"
        );
    }
}
