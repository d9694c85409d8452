//! bunq's official Python SDK (`bunq-sdk` on PyPI) as a client of the management API
//! (issue 16): the real gateway, a key registered from 127.0.0.1, and
//! `tests/bunq_sdk/sdk_client.py` listing and getting credentials, listing, getting,
//! creating and updating entries, paging with the SDK's own cursors and catching
//! ipgate's errors as the SDK's exceptions.
//!
//! The SDK expects bunq's installation, device-server and session handshake; ipgate
//! has none of that (a key is used as it is, from an address on its whitelist). The
//! script hands the SDK the context that handshake would leave behind, with the ipgate
//! key as its session token and, as bunq's server public key, the public half of the
//! gateway's `auth.response_signing_key` (made with openssl and handed out with
//! `ipgate admin server-public-key`, as the README says); its docstring says exactly
//! what it sets. The SDK itself runs unmodified, verifying
//! every answer's `X-Bunq-Server-Signature`, and the script shows that answers signed
//! by another key, changed on the way or unsigned make it raise.
//!
//! Without the SDK installed the test prints one "skipped" line and passes; with
//! `IPGATE_REQUIRE_BUNQ_SDK=1` (CI) the skip is a failure.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const REQUIRE_ENV: &str = "IPGATE_REQUIRE_BUNQ_SDK";
/// The version `.ci/run` installs and the script was written against.
const SDK: &str = "bunq-sdk==1.28.0";
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/bunq_sdk/sdk_client.py");

/// Whether `python3` can import the SDK; says why not when it cannot.
fn sdk_missing() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import bunq.sdk.context.api_context"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => Some(format!("no python3 ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "python3 cannot import bunq-sdk ({})",
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
        Ok(_) => None,
    }
}

#[tokio::test]
async fn bunq_python_sdk_manages_a_whitelist_through_ipgate() {
    if let Some(why) = sdk_missing() {
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "{REQUIRE_ENV} is set but {why}"
        );
        // Past the test harness's capture, so it is seen.
        let _ = writeln!(
            std::io::stderr(),
            "skipped: {why}; `python3 -m pip install {SDK}` to run the bunq SDK test"
        );
        return;
    }
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    signing_key(dir.path());
    let settings =
        Settings::new(&upstream.url()).set("auth.response_signing_key", "\"server-key.pem\"");
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    // What the operator hands key holders, as the README says.
    let public_key = gw.dir.path().join("server-public.pem");
    let pem = gw.admin(&["server-public-key"])["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    std::fs::write(&public_key, pem).unwrap();
    let (user, cred, key) = gw.registered_key(&["127.0.0.1"]).await;
    let base = format!("http://{}/v1/", gw.target(ip("127.0.0.1")));

    // The script blocks; the upstream runs on this runtime, so it waits elsewhere.
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new("python3")
            .arg(SCRIPT)
            .args([base, user.to_string(), cred.to_string()])
            .arg(public_key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The key goes on stdin, never in argv where any process list shows it.
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{key}").unwrap();
        drop(stdin);
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the SDK script failed ({}):\n{stdout}\n{stderr}\ngateway: {:#?}",
        out.status,
        gw.logs()
    );
    println!("{stdout}{stderr}");
    let last = stdout.lines().last().unwrap_or("");
    assert!(
        last.starts_with("bunq-sdk: all ") && last.contains("checks passed"),
        "{stdout}\n{stderr}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        18,
        "every check ran:\n{stdout}"
    );
}

/// Makes the gateway's signing key, `server-key.pem` in `dir` (the config's folder),
/// with openssl as the README tells an operator to.
fn signing_key(dir: &Path) {
    let out = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "server-key.pem",
        ])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("openssl, to make the gateway's signing key");
    assert!(out.status.success(), "openssl genpkey: {out:?}");
}
