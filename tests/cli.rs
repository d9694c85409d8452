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

/// A config in `dir` whose store `ipgate admin init` has created.
fn initialised(dir: &std::path::Path, settings: &Settings) -> std::path::PathBuf {
    let config = write_config(dir, settings);
    let out = Command::new(BIN)
        .args(["admin", "--config"])
        .arg(&config)
        .arg("init")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    config
}

#[test]
fn admin_commands_speak_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = initialised(dir.path(), &Settings::new("http://127.0.0.1:9"));
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
    assert_eq!(admin(&["ip", "list", &cred])[1]["ip"], "192.0.2.1");
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
    assert_eq!(admin(&["ip", "list", &cred]).as_array().unwrap().len(), 2);
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

/// `ipgate ARGS` with the environment the operator's name is read from set as given.
fn ipgate(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("SUDO_USER").env_remove("USER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn json_of(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not one JSON value ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn config_anywhere_lists_as_arrays_and_errors_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = initialised(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let config = config.to_str().unwrap();
    // --config before the command, after it, or at the end.
    let added = ipgate(
        &["--config", config, "admin", "user", "add", "--name", "a"],
        &[],
    );
    assert!(
        added.status.success(),
        "{}",
        String::from_utf8_lossy(&added.stderr)
    );
    let out = ipgate(&["admin", "user", "add", "--config", config, "--json"], &[]);
    let user = json_of(&out)["id"].as_u64().unwrap().to_string();
    let out = ipgate(
        &["admin", "--json", "user", "list", "--config", config],
        &[],
    );
    let users = json_of(&out);
    assert_eq!(users.as_array().unwrap().len(), 2, "{users}");
    assert_eq!(users[0]["id"].to_string(), user, "newest first");

    let key = json_of(&ipgate(
        &[
            "admin", "--config", config, "--json", "key", "create", "--user", &user,
        ],
        &[],
    ));
    let cred = key["credential_id"].to_string();
    for args in [
        vec!["user", "list"],
        vec!["credential", "list", "--user", &user],
        vec!["ip", "list", &cred],
        vec!["usage"],
        vec!["usage", "--user", &user],
        vec!["audit"],
        vec!["audit", "--credential", &cred],
    ] {
        let mut all = vec!["admin", "--config", config, "--json"];
        all.extend(&args);
        let out = ipgate(&all, &[]);
        assert!(out.status.success(), "{args:?}");
        assert!(json_of(&out).is_array(), "{args:?} is not an array");
    }

    // Unknown ids are errors, as one JSON object on stdout with --json.
    for (args, says) in [
        (vec!["usage", "--user", "999"], "user 999 not found"),
        (
            vec!["audit", "--credential", "999"],
            "credential 999 not found",
        ),
        (
            vec!["credential", "list", "--user", "999"],
            "user 999 not found",
        ),
        (vec!["ip", "list", "999"], "credential 999 not found"),
        (
            vec!["credential", "revoke", "999"],
            "credential 999 not found",
        ),
        (vec!["wildcard", "set", "999"], "credential 999 not found"),
        (
            vec!["ip", "set-status", &cred, "999", "ACTIVE"],
            "permitted IP 999 not found",
        ),
        (vec!["key", "create", "--user", "999"], "user 999 not found"),
    ] {
        let mut plain = vec!["admin", "--config", config];
        plain.extend(&args);
        let out = ipgate(&plain, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");

        plain.push("--json");
        let out = ipgate(&plain, &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let v = json_of(&out);
        assert_eq!(v["error"]["kind"], "not_found", "{args:?}: {v}");
        assert_eq!(v["error"]["message"], says, "{args:?}");
    }
    let out = ipgate(
        &[
            "admin",
            "--config",
            config,
            "--json",
            "ip",
            "add",
            &cred,
            "10.0.0.0/8",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(json_of(&out)["error"]["kind"], "input");

    // A bad configuration with --json: one object naming every problem, exit 64.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[log]\nformat = \"xml\"\nlevel = \"inf\"\n").unwrap();
    let bad = bad.to_str().unwrap();
    for args in [
        vec!["admin", "--config", bad, "--json", "user", "list"],
        vec!["check-config", bad, "--json"],
    ] {
        let out = ipgate(&args, &[]);
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        let v = json_of(&out);
        assert_eq!(v["error"]["kind"], "config");
        let problems = v["error"]["problems"].as_array().unwrap();
        assert_eq!(problems.len(), 2, "{v}");
        assert_eq!(problems[0]["key"], "log.format");
        assert_eq!(problems[0]["line"], 2);
    }
    let ok = ipgate(&["check-config", "--config", config, "--json"], &[]);
    assert_eq!(json_of(&ok)["ok"], true);
}

#[test]
fn statuses_billing_no_op_changes_and_the_operators_name() {
    let dir = tempfile::tempdir().unwrap();
    let config = initialised(
        dir.path(),
        // Keys lapse a millisecond after they are made: long before the next command.
        &Settings::new("http://127.0.0.1:9").set("auth.registration_window", "\"1ms\""),
    );
    let config = config.to_str().unwrap();
    let admin = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["admin", "--config", config, "--json"];
        all.extend(args);
        let out = ipgate(&all, env);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)
    };
    let user = admin(&["user", "add"], &[])["id"].to_string();
    let cred = admin(&["key", "create", "--user", &user], &[])["credential_id"].to_string();

    // Not registered in its window: EXPIRED, as the gateway treats it.
    assert_eq!(
        admin(&["credential", "list", "--user", &user], &[])[0]["status"],
        "EXPIRED"
    );
    assert_eq!(
        admin(&["usage", "--user", &user], &[])[0]["status"],
        "EXPIRED"
    );
    let plain = ipgate(
        &[
            "admin",
            "--config",
            config,
            "credential",
            "list",
            "--user",
            &user,
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&plain.stdout).contains("  EXPIRED  "));

    // The operator is named: --actor, else $SUDO_USER, else $USER.
    let item = admin(&["ip", "add", &cred, "192.0.2.1", "--actor", "alice"], &[])["id"].to_string();
    admin(&["ip", "add", &cred, "192.0.2.2"], &[("USER", "bob")]);
    admin(
        &["ip", "add", &cred, "192.0.2.3"],
        &[("USER", "bob"), ("SUDO_USER", "carol")],
    );
    let audit = admin(&["audit", "--credential", &cred], &[]);
    let actors: Vec<&str> = audit.as_array().unwrap()[..3]
        .iter()
        .map(|a| a["actor"].as_str().unwrap())
        .collect();
    assert_eq!(actors, ["admin:carol", "admin:bob", "admin:alice"]);
    let out = ipgate(
        &["admin", "--config", config, "--actor", "a b", "user", "add"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "an actor name must be safe to log"
    );

    // A change that changes nothing succeeds and leaves no audit row.
    let rows = |a: serde_json::Value| a.as_array().unwrap().len();
    let before = rows(admin(&["audit"], &[]));
    assert_eq!(
        admin(&["ip", "set-status", &cred, &item, "ACTIVE"], &[])["status"],
        "ACTIVE"
    );
    assert_eq!(
        rows(admin(&["audit"], &[])),
        before,
        "set-status to the current status"
    );
    assert_eq!(
        admin(&["credential", "revoke", &cred], &[])["status"],
        "REVOKED"
    );
    assert_eq!(rows(admin(&["audit"], &[])), before + 1);
    let again = ipgate(
        &["admin", "--config", config, "credential", "revoke", &cred],
        &[],
    );
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("is REVOKED"));
    assert_eq!(rows(admin(&["audit"], &[])), before + 1, "revoking twice");

    // REVOKED credentials are not billed; the wildcard is refused on them.
    assert_eq!(
        admin(&["usage", "--user", &user], &[]),
        serde_json::json!([])
    );
    let out = ipgate(
        &["admin", "--config", config, "wildcard", "set", &cred],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is REVOKED"));
}

#[test]
fn completions_and_the_manual_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = ipgate(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("ipgate"), "{shell}");
        assert!(
            text.contains("check-config") && text.contains("set-status"),
            "{shell}"
        );
    }
    let out = ipgate(&["man"], &[]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") || page.contains(".TH ipgate"),
        "{page}"
    );
    assert!(page.contains("check\\-config"), "{page}");
    assert!(!ipgate(&["completions", "tcsh"], &[]).status.success());
}

#[test]
fn stored_text_is_shown_escaped_in_tables() {
    let dir = tempfile::tempdir().unwrap();
    let config = initialised(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let admin = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(["admin", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // A description that would forge a second row and colour the terminal.
    let forged = "laptop\n99\tACTIVE\tenforce\t*\t-\t-\tfake\u{1b}[2J";
    let user = admin(&["user", "add", "--name", "eve\u{1b}]0;owned\u{7}"]);
    let user = user.trim();
    admin(&["key", "create", "--user", user, "--description", forged]);
    let table = admin(&["credential", "list", "--user", user]);
    assert_eq!(table.trim_end().lines().count(), 2, "{table}");
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains("laptop\\n99\\tACTIVE"), "{table}");
    let users = admin(&["user", "list"]);
    assert!(
        !users.contains('\u{1b}') && !users.contains('\u{7}'),
        "{users:?}"
    );
}

#[test]
fn unusable_addresses_and_revoked_lists_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let admin = |args: &[&str]| {
        Command::new(BIN)
            .args(["admin", "--config"])
            .arg(&config)
            .args(args)
            .output()
            .unwrap()
    };
    assert!(admin(&["init"]).status.success());
    let user = String::from_utf8(admin(&["user", "add"]).stdout).unwrap();
    let key = admin(&["--json", "key", "create", "--user", user.trim()]);
    let cred = json_of(&key)["credential_id"].to_string();
    for bad in ["0.0.0.0", "::", "ff02::1", "255.255.255.255"] {
        let out = admin(&["ip", "add", &cred, bad]);
        assert!(!out.status.success(), "{bad} was stored");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("no client connects from it"), "{bad}: {err}");
    }
    assert!(admin(&["ip", "add", &cred, "192.0.2.1"]).status.success());
    assert!(admin(&["credential", "revoke", &cred]).status.success());
    let out = admin(&["ip", "add", &cred, "192.0.2.2"]);
    assert!(
        !out.status.success(),
        "an entry was added to a revoked credential"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("REVOKED"));
    let list = json_of(&admin(&["--json", "ip", "list", &cred]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
}

/// `ipgate admin --config CONFIG ARGS`, as an operator types it.
fn admin_at(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["admin", "--config"])
        .arg(config)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

/// Issue 21, item 2: a `store.url` pointing somewhere unexpected (a typo, the wrong
/// folder) is an error naming the path, never a new empty store; only `serve` and
/// `admin init` create one. Every admin command names the store it opened on stderr.
#[test]
fn admin_never_creates_a_store_but_init_does() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let db = dir.path().join("ipgate.db");
    for args in [
        vec!["user", "list"],
        vec!["user", "add", "--name", "lost"],
        vec!["usage"],
    ] {
        let out = admin_at(&config, &args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&db.display().to_string()) && err.contains("ipgate admin init"),
            "{args:?}: {err}"
        );
        let mut json = args.clone();
        json.push("--json");
        let out = admin_at(&config, &json);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let v = json_of(&out);
        assert_eq!(v["error"]["kind"], "no_store", "{v}");
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("ipgate admin init"));
        assert!(!db.exists(), "{args:?} created {}", db.display());
    }

    // init creates it, says so, and is harmless a second time.
    let out = admin_at(&config, &["init"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), format!("store: sqlite {}", db.display()));
    assert!(String::from_utf8_lossy(&out.stdout).contains("created"));
    assert!(db.exists());
    let again = admin_at(&config, &["init", "--json"]);
    assert!(again.status.success());
    assert_eq!(json_of(&again)["created"], false);

    // Every command names the store on stderr; stdout stays the command's own.
    let out = admin_at(&config, &["user", "add", "--name", "found"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!("store: sqlite {}", db.display())
    );
    let out = admin_at(&config, &["user", "list", "--json"]);
    assert_eq!(json_of(&out).as_array().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("store: sqlite "));

    // A zero-length file (`touch`ed by mistake) is no store either.
    let other = tempfile::tempdir().unwrap();
    let config = write_config(other.path(), &Settings::new("http://127.0.0.1:9"));
    std::fs::write(other.path().join("ipgate.db"), b"").unwrap();
    let out = admin_at(&config, &["user", "list"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ipgate admin init"));
}

/// The same on PostgreSQL: there "missing" means the schema is absent.
#[test]
fn admin_never_creates_a_postgres_schema_but_init_does() {
    let Some(pg) = common::pg::Postgres::shared() else {
        return;
    };
    let db = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Settings::new("http://127.0.0.1:9").set("store.url", &format!("\"{}\"", pg.url(&db))),
    );
    let out = admin_at(&config, &["user", "list", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v = json_of(&out);
    assert_eq!(v["error"]["kind"], "no_store", "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store: postgres ") && !err.contains(common::pg::PASSWORD),
        "{err}"
    );
    let tables = pg.psql(
        &db,
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'",
    );
    assert_eq!(tables.trim(), "0", "the schema was created");

    let out = admin_at(&config, &["init", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json_of(&out)["created"], true);
    let out = admin_at(&config, &["user", "add"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 21, item 8: with `--json` anywhere on the line, even clap's own argument
/// errors (a bad number, an unknown subcommand) are one JSON object, exit 2.
#[test]
fn argument_errors_are_json_under_json() {
    let dir = tempfile::tempdir().unwrap();
    let config = initialised(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let config = config.to_str().unwrap();
    for (args, says) in [
        (
            vec![
                "admin", "--config", config, "--json", "key", "create", "--user", "abc",
            ],
            "--user",
        ),
        (vec!["admin", "--json", "frobnicate"], "frobnicate"),
        (vec!["admin", "--json"], "requires a subcommand"),
        (vec!["admin", "ip", "list", "--json"], "CREDENTIAL_ID"),
        (vec!["check-config", "--json", "--verbose"], "--verbose"),
    ] {
        let out = ipgate(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let v = json_of(&out);
        assert_eq!(v["error"]["kind"], "usage", "{args:?}: {v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{args:?}: {message}");
        assert!(!message.contains('\n'), "one line: {message:?}");
        assert!(
            out.stderr.is_empty(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Without --json, clap's text on stderr as before; --help is no error.
    let out = ipgate(&["admin", "key", "create", "--user", "abc"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid value"));
    let out = ipgate(&["admin", "--json", "--help"], &[]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage"));
}

/// Issue 21, item 9: tables are aligned in columns (no tabs), times say UTC, and the
/// audit table says what changed in a few words; `--json` keeps the whole record.
#[test]
fn tables_are_aligned_in_utc_and_audit_rows_are_summarised() {
    let dir = tempfile::tempdir().unwrap();
    let config = initialised(dir.path(), &Settings::new("http://127.0.0.1:9"));
    let run = |args: &[&str]| {
        let out = admin_at(&config, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    run(&["user", "add", "--name", "a"]);
    let user = run(&["user", "add", "--name", "a much longer name"]);
    let key = run(&["key", "create", "--user", user.trim(), "--json"]);
    let cred: serde_json::Value = serde_json::from_str(&key).unwrap();
    let cred = cred["credential_id"].to_string();
    let item = run(&["ip", "add", &cred, "192.0.2.1"]);
    run(&["ip", "add", &cred, "2001:db8::1"]);
    run(&["ip", "set-status", &cred, item.trim(), "INACTIVE"]);

    // Each column starts where its header does, on every line.
    let aligned = |table: &str, column: &str| {
        assert!(!table.contains('\t'), "{table}");
        let lines: Vec<&str> = table.lines().collect();
        let at = lines[0]
            .find(column)
            .unwrap_or_else(|| panic!("{column}: {table}"));
        for line in &lines[1..] {
            assert_eq!(&line[at - 2..at], "  ", "{column} not aligned in:\n{table}");
            assert_ne!(&line[at..at + 1], " ", "{column} not aligned in:\n{table}");
        }
    };
    let users = run(&["user", "list"]);
    aligned(&users, "CREATED");
    assert!(
        users.lines().skip(1).all(|l| l.ends_with(" UTC")),
        "{users}"
    );
    let ips = run(&["ip", "list", &cred]);
    for column in ["STATUS", "CREATED", "UPDATED", "LAST_SEEN", "REQUESTS"] {
        aligned(&ips, column);
    }
    let credentials = run(&["credential", "list", "--user", user.trim()]);
    aligned(&credentials, "EXPIRY");
    assert!(credentials.contains(" UTC "), "{credentials}");

    let audit = run(&["audit", "--credential", &cred]);
    aligned(&audit, "ACTION");
    aligned(&audit, "CHANGE");
    assert!(!audit.contains('{'), "no JSON in the table: {audit}");
    let changed = audit.lines().find(|l| l.contains("ip.set_status")).unwrap();
    assert!(changed.ends_with("status ACTIVE→INACTIVE"), "{audit}");
    let added = audit.lines().find(|l| l.contains("2001:db8::1")).unwrap();
    assert!(added.contains("ip.add") && added.ends_with("ip 2001:db8::1, status ACTIVE"));
    let full = json_of(&admin_at(
        &config,
        &["audit", "--credential", &cred, "--json"],
    ));
    assert_eq!(full[0]["before"]["status"], "ACTIVE", "{full}");
    assert_eq!(full[0]["after"]["status"], "INACTIVE", "{full}");
}

/// Issue 21, item 10: a page for every command (`man --dir`), the main page with the
/// configuration keys, signals, exit codes and files; completions that offer the
/// values of `credential mode` and `ip set-status`; no `--config` where it does
/// nothing.
#[test]
fn every_command_has_a_page_and_completions_know_the_values() {
    let dir = tempfile::tempdir().unwrap();
    let out = ipgate(&["man", "--dir", dir.path().to_str().unwrap()], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "ipgate.1",
        "ipgate-serve.1",
        "ipgate-check-config.1",
        "ipgate-admin.1",
        "ipgate-admin-init.1",
        "ipgate-admin-key.1",
        "ipgate-admin-key-create.1",
        "ipgate-admin-ip-set-status.1",
        "ipgate-admin-report-suggest.1",
        "ipgate-completions.1",
        "ipgate-man.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let main = ipgate(&["man"], &[]);
    assert!(main.status.success());
    let page = String::from_utf8_lossy(&main.stdout);
    assert_eq!(
        page,
        std::fs::read_to_string(dir.path().join("ipgate.1")).unwrap(),
        "`ipgate man` prints the main page"
    );
    for section in [
        "CONFIGURATION",
        "SIGNALS",
        "EXIT STATUS",
        "FILES",
        "SEE ALSO",
    ] {
        assert!(
            page.contains(&format!(".SH \"{section}\""))
                || page.contains(&format!(".SH {section}")),
            "{section}:\n{page}"
        );
    }
    for word in [
        "SIGHUP",
        "SIGTERM",
        "64",
        "max_ips_per_credential",
        "ipgate\\-admin(1)",
    ] {
        assert!(page.contains(word), "{word} not in the main page:\n{page}");
    }

    for shell in ["bash", "zsh", "fish"] {
        let out = ipgate(&["completions", shell], &[]);
        let text = String::from_utf8_lossy(&out.stdout);
        for value in ["enforce", "shadow", "INACTIVE"] {
            assert!(text.contains(value), "{shell} does not offer {value}");
        }
    }
    // The values are checked as the command line is read.
    let out = ipgate(
        &["admin", "ip", "set-status", "1", "2", "active", "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(json_of(&out)["error"]["message"]
        .as_str()
        .unwrap()
        .contains("INACTIVE"));

    let help = |args: &[&str]| {
        let out = ipgate(args, &[]);
        String::from_utf8(out.stdout).unwrap()
    };
    for args in [
        vec!["completions", "--help"],
        vec!["man", "--help"],
        vec!["check-config", "--help"],
    ] {
        assert!(!help(&args).contains("--config"), "{args:?}");
    }
    assert!(help(&["serve", "--help"]).contains("--config"));
    assert!(help(&["admin", "user", "list", "--help"]).contains("--config"));
    let page = std::fs::read_to_string(dir.path().join("ipgate-completions.1")).unwrap();
    assert!(!page.contains("config"), "{page}");
}

/// Issue 21, item 6: a PostgreSQL error says what the server said, once.
#[test]
fn a_postgres_error_says_what_the_server_said() {
    let Some(pg) = common::pg::Postgres::shared() else {
        return;
    };
    let db = pg.database();
    let wrong = pg
        .url(&db)
        .replace(common::pg::PASSWORD, "not-the-password");
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        &Settings::new("http://127.0.0.1:9").set("store.url", &format!("\"{wrong}\"")),
    );
    let out = admin_at(&config, &["user", "list"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(err.contains("28P01"), "the SQLSTATE: {err}");
    assert!(!err.contains("db error: db error"), "{err}");
    assert!(!err.contains("not-the-password"), "{err}");
}
