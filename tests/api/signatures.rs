//! `X-Bunq-Server-Signature` (issue 16): with `auth.response_signing_key` set, every
//! successful management API answer is signed as bunq's server signs, RSA PKCS#1 v1.5
//! with SHA-256 over exactly the body's bytes, base64: what bunq's SDKs verify with the
//! server key of their installation (bunq-sdk's `security.is_valid_response_body`).
//! Errors are not signed (the SDKs verify only successful answers), and without the key
//! nothing is. The SDK's own check runs in `tests/bunq_sdk.rs`.

use crate::common::*;
use crate::helpers::*;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::{Method, StatusCode};
use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};

const SIGNATURE: &str = "x-bunq-server-signature";
const RESPONSE_ID: &str = "x-bunq-client-response-id";

/// Writes `server-key.pem` into `dir` with openssl, as the README says, and returns
/// its public key as DER `RSAPublicKey`, the form ring verifies with.
fn signing_key(dir: &Path) -> Vec<u8> {
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("openssl, to make the gateway's signing key");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
        out.stdout
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "server-key.pem",
    ]);
    openssl(&[
        "rsa",
        "-in",
        "server-key.pem",
        "-RSAPublicKey_out",
        "-outform",
        "DER",
    ])
}

/// The one signature of a successful answer, checked against its body; returned.
#[track_caller]
fn verified(r: &Answer, public_key: &[u8]) -> String {
    assert!(r.status.is_success(), "{}: {}", r.status, r.text());
    assert!(r.headers.contains_key(RESPONSE_ID), "{:?}", r.headers);
    let mut sent = r.headers.get_all(SIGNATURE).iter();
    let (Some(signature), None) = (sent.next(), sent.next()) else {
        panic!("{} has no single {SIGNATURE}: {:?}", r.status, r.headers);
    };
    let signature = signature.to_str().unwrap().to_owned();
    let raw = STANDARD.decode(&signature).expect("standard base64");
    let key = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key);
    key.verify(&r.body, &raw)
        .unwrap_or_else(|_| panic!("the signature does not verify over the body: {}", r.text()));
    let mut changed = r.body.to_vec();
    changed[0] ^= 1;
    assert!(
        key.verify(&changed, &raw).is_err(),
        "a changed body verified"
    );
    signature
}

#[tokio::test]
async fn successful_answers_are_signed_over_their_body_and_errors_are_not() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let public_key = signing_key(dir.path());
    let settings =
        Settings::new(&upstream.url()).set("auth.response_signing_key", "\"server-key.pem\"");
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    // The reader of the gateway's stderr may lag its readiness: wait for the line.
    gw.wait_log("ipgate started").await;
    let started = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("ipgate started"))
        .unwrap();
    assert!(started.contains("\"signs_api_answers\":true"), "{started}");
    let private = std::fs::read_to_string(gw.dir.path().join("server-key.pem")).unwrap();
    let piece = private.lines().nth(5).unwrap();
    assert!(
        gw.logs().iter().all(|l| !l.contains(piece)),
        "the key was logged"
    );
    // What an operator hands key holders is what openssl makes of the same key.
    let handed_out = gw.admin(&["server-public-key"]);
    let openssl = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", "server-key.pem"])
        .current_dir(gw.dir.path())
        .output()
        .unwrap();
    assert_eq!(
        handed_out["public_key"],
        String::from_utf8(openssl.stdout).unwrap()
    );

    // The device registration, the one call made before a key is whitelisted.
    let (user, cred, key) = gw.new_key();
    let r = register(
        &gw,
        "127.0.0.2",
        json!({"description": "signed", "secret": key, "permitted_ips": ["127.0.0.2"]}),
    )
    .await;
    assert_eq!(created_id(&r), cred);
    verified(&r, &public_key);
    gw.wait_until_allowed(ip("127.0.0.2"), &key).await;
    let holder = Holder {
        gw: &gw,
        paths: ApiPaths { user, cred },
        key,
        from: ip("127.0.0.2"),
    };

    // Every other operation: reads, a create, an update.
    verified(&holder.get(&holder.credentials()).await, &public_key);
    verified(&holder.get(&holder.credential()).await, &public_key);
    let created = holder
        .call(
            Method::POST,
            &holder.ips(),
            Some(json!({"ip": "127.0.0.5"})),
        )
        .await;
    verified(&created, &public_key);
    let item = created_id(&created);
    verified(&holder.get(&holder.entry(item)).await, &public_key);
    verified(&holder.set_status(item, "INACTIVE").await, &public_key);
    let listed = holder.get(&holder.ips()).await;
    let signature = verified(&listed, &public_key);
    // A HEAD is GET's head: the same body signed, so the same (deterministic) signature.
    let head = holder.call(Method::HEAD, &holder.ips(), None).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    assert_eq!(head.headers[SIGNATURE], signature.as_str());

    // Errors carry their response id but no signature: no SDK verifies one, and a
    // caller without a key must not get an RSA operation per request.
    let stranger = send_raw(
        ip("127.0.0.2"),
        gw.target(ip("127.0.0.2")),
        Method::GET,
        &holder.credentials(),
        &[(KEY_HEADER, &format!("ipg_{}", "0".repeat(40)))],
        Bytes::new(),
    )
    .await;
    let duplicate = holder
        .call(
            Method::POST,
            &holder.ips(),
            Some(json!({"ip": "127.0.0.5"})),
        )
        .await;
    let missing = holder.get(&holder.entry(999_999)).await;
    for (r, status) in [
        (&stranger, StatusCode::FORBIDDEN),
        (&duplicate, StatusCode::BAD_REQUEST),
        (&missing, StatusCode::NOT_FOUND),
    ] {
        assert_eq!(r.status, status, "{}", r.text());
        assert!(r.headers.contains_key(RESPONSE_ID), "{:?}", r.headers);
        assert!(!r.headers.contains_key(SIGNATURE), "{status} was signed");
    }

    // Proxied answers are the upstream's: ipgate signs only its own API's.
    let proxied = gw.get(ip("127.0.0.2"), "/probe", Some(&holder.key)).await;
    assert_eq!(proxied.status, StatusCode::OK);
    assert!(!proxied.headers.contains_key(SIGNATURE));
}

#[tokio::test]
async fn without_a_signing_key_no_answer_is_signed() {
    let (_up, gw) = setup().await;
    // The reader of the gateway's stderr may lag its readiness: wait for the line.
    gw.wait_log("ipgate started").await;
    let started = gw
        .logs()
        .into_iter()
        .find(|l| l.contains("ipgate started"))
        .unwrap();
    assert!(started.contains("\"signs_api_answers\":false"), "{started}");
    let holder = Holder::new(&gw, &["127.0.0.2"]).await;
    let item = holder.add("127.0.0.5", "ACTIVE").await;
    let answers = [
        holder.get(&holder.credentials()).await,
        holder.get(&holder.ips()).await,
        holder.set_status(item, "INACTIVE").await,
        holder.get(&holder.entry(999_999)).await,
    ];
    for r in &answers {
        assert!(r.headers.contains_key(RESPONSE_ID), "{:?}", r.headers);
        assert!(
            !r.headers.contains_key(SIGNATURE),
            "{} was signed",
            r.status
        );
    }
    let out = gw.admin_raw(&["server-public-key"]);
    assert!(!out.status.success());
    let error: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["kind"], "input", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("auth.response_signing_key is not set"),
        "{error}"
    );
}
