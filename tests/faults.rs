//! Faults of the embedded store under a running gateway: kill -9 during writes, the
//! file moved away, unreadable or corrupted, a damaged row, and a full disk. In every
//! case the gateway fails closed, keeps what it last knew to be true, and loses nothing
//! it acknowledged.

mod common;

use common::*;
use http::{Method, StatusCode};
use serde_json::json;
use std::path::{Path, PathBuf};

fn store_file(gw: &Gateway) -> PathBuf {
    gw.dir.path().join("ipgate.db")
}

/// A holder's `POST …/ip` of `addr`.
async fn add(gw: &Gateway, from: &str, paths: &ApiPaths, key: &str, addr: &str) -> Answer {
    gw.send(
        ip(from),
        Method::POST,
        &paths.ips(),
        &[(KEY_HEADER, key), ("content-type", "application/json")],
        Some(json!({"ip": addr})),
    )
    .await
}

/// While the store cannot be used: the last snapshot serves, polls fail and are
/// counted, writes answer 503 in bunq's shape and store nothing.
async fn degraded_but_serving(gw: &Gateway, paths: &ApiPaths, key: &str) {
    let errors = gw.metric("ipgate_refresh_total{result=\"error\"}").await;
    gw.wait_metric("ipgate_refresh_total{result=\"error\"}", errors + 1.0)
        .await;
    assert_eq!(gw.metric("ipgate_store_up").await, 0.0);
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", Some(key)).await.status,
        StatusCode::OK
    );
    let r = add(gw, "127.0.0.2", paths, key, "10.7.7.7").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert!(r.json()["Error"][0]["error_description"].is_string());
    gw.wait_log("store poll failed; keeping the last good snapshot")
        .await;
}

/// Once the store is back: polls succeed, writes work, and the refused one is absent.
async fn recovered(gw: &Gateway, paths: &ApiPaths, key: &str) {
    gw.wait_metric("ipgate_store_up", 1.0).await;
    let r = add(gw, "127.0.0.2", paths, key, "127.0.0.3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(
        gw.get(ip("127.0.0.3"), "/", Some(key)).await.status,
        StatusCode::OK
    );
    let list = gw
        .admin(&["ip", "list", &paths.cred.to_string()])
        .to_string();
    assert!(
        !list.contains("10.7.7.7"),
        "a refused write left something: {list}"
    );
}

async fn holder(gw: &Gateway) -> (ApiPaths, String) {
    let (user, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    (ApiPaths { user, cred }, key)
}

/// Sets `column = value` on credential `id` behind the gateway's back, as a newer
/// version or a hand edit could, and announces it in the change feed like any write.
fn damage(gw: &Gateway, id: u64, set: &str) {
    let db = rusqlite::Connection::open(store_file(gw)).unwrap();
    db.execute_batch(&format!(
        "BEGIN IMMEDIATE; \
         UPDATE credentials SET {set} WHERE id = {id}; \
         UPDATE meta SET value = value + 1 WHERE name = 'change_version'; \
         INSERT INTO change_log (version, credential_id, stamp, committed_at) \
           SELECT value, {id}, value * 2 + 1, 0 FROM meta WHERE name = 'change_version'; \
         COMMIT;"
    ))
    .unwrap();
}

fn start(upstream: &Upstream) -> Gateway {
    Gateway::start(&Settings::new(&upstream.url()).set("refresh.interval", "\"100ms\""))
}

#[tokio::test]
async fn kill_9_during_writes_loses_nothing_acknowledged() {
    let upstream = Upstream::start().await;
    let settings = Settings::new(&upstream.url());
    let mut gw = Gateway::start(&settings);
    gw.wait_ready().await;
    let (paths, key) = holder(&gw).await;

    let writer = {
        let target = gw.target(ip("127.0.0.2"));
        let path = paths.ips();
        let key = key.clone();
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for i in 0..400u32 {
                let addr = format!("10.30.{}.{}", i / 200, i % 200 + 1);
                let body = bytes::Bytes::from(json!({ "ip": addr }).to_string());
                let (path, key) = (path.clone(), key.clone());
                // A request the dying gateway cannot answer panics in its own task.
                let sent = tokio::spawn(async move {
                    let headers = [
                        (KEY_HEADER, key.as_str()),
                        ("content-type", "application/json"),
                    ];
                    send_raw(ip("127.0.0.2"), target, Method::POST, &path, &headers, body).await
                });
                match sent.await {
                    Ok(r) if r.status == StatusCode::OK => acknowledged.push(addr),
                    Ok(_) => {}
                    Err(_) => break, // the gateway died under the request
                }
            }
            acknowledged
        })
    };
    gw.wait_metric("ipgate_changes_applied_total", 15.0).await;
    signal(gw.pid(), "KILL");
    let acknowledged = writer.await.unwrap();
    assert!(
        acknowledged.len() >= 10,
        "{} acknowledged",
        acknowledged.len()
    );

    // The same folder, a new process: the store opens cleanly and holds every write
    // that was acknowledged.
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let check = rusqlite::Connection::open(dir.path().join("ipgate.db")).unwrap();
    let integrity: String = check
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    drop(check);
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    let stored = gw
        .admin(&["ip", "list", &paths.cred.to_string()])
        .to_string();
    for addr in &acknowledged {
        assert!(
            stored.contains(&format!("\"{addr}\"")),
            "{addr} acknowledged, then lost"
        );
    }
    assert!(gw.metric("ipgate_snapshot_active_ips").await >= acknowledged.len() as f64);
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_store_moved_away_and_back() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream);
    gw.wait_ready().await;
    let (paths, key) = holder(&gw).await;
    let moved = gw.dir.path().join("moved.db");
    std::fs::rename(store_file(&gw), &moved).unwrap();
    degraded_but_serving(&gw, &paths, &key).await;
    assert!(
        !store_file(&gw).exists(),
        "a vanished store is never recreated empty"
    );
    std::fs::rename(&moved, store_file(&gw)).unwrap();
    recovered(&gw, &paths, &key).await;
}

#[tokio::test]
async fn the_store_unreadable_and_readable_again() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream);
    gw.wait_ready().await;
    let (paths, key) = holder(&gw).await;
    let file = store_file(&gw);
    // Root reads through file permissions, so a directory takes the file's place: a
    // path that exists and cannot be read as a database either way.
    let aside = gw.dir.path().join("aside.db");
    std::fs::rename(&file, &aside).unwrap();
    std::fs::create_dir(&file).unwrap();
    degraded_but_serving(&gw, &paths, &key).await;
    std::fs::remove_dir(&file).unwrap();
    std::fs::rename(&aside, &file).unwrap();
    recovered(&gw, &paths, &key).await;
}

#[tokio::test]
async fn the_store_corrupted_while_serving_and_repaired() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream);
    gw.wait_ready().await;
    let (paths, key) = holder(&gw).await;
    // Everything in the main file, then its header overwritten.
    checkpoint(&store_file(&gw));
    let original = std::fs::read(store_file(&gw)).unwrap();
    let mut broken = original.clone();
    broken[..16].copy_from_slice(b"not a database!!");
    std::fs::write(store_file(&gw), &broken).unwrap();
    degraded_but_serving(&gw, &paths, &key).await;
    gw.wait_log("file is not a database").await;
    std::fs::write(store_file(&gw), &original).unwrap();
    recovered(&gw, &paths, &key).await;
}

fn checkpoint(path: &Path) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

#[tokio::test]
async fn a_corrupted_store_at_start_is_not_ready_and_lets_nobody_in() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ipgate.db"), vec![0x5a; 8192]).unwrap();
    let gw = Gateway::start_in(dir, &Settings::new(&upstream.url()), &[]);
    gw.wait_metric("ipgate_refresh_total{result=\"error\"}", 1.0)
        .await;
    assert_eq!(
        gw.admin_get("/readyz").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = gw.get(ip("127.0.0.2"), "/", Some("ipg_anything")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(upstream.received(), 0);
    let file = store_file(&gw).display().to_string();
    gw.wait_log("no snapshot yet, so not ready").await;
    let named = gw
        .logs()
        .iter()
        .any(|l| l.contains(&file) && l.contains("file is not a database"));
    assert!(named, "no log line names {file}");
}

#[tokio::test]
async fn a_damaged_row_refuses_its_credential_and_blocks_nothing_else() {
    let upstream = Upstream::start().await;
    let settings = Settings::new(&upstream.url());
    let mut gw = Gateway::start(&settings);
    gw.wait_ready().await;
    let (_, bad, bad_key) = gw.registered_key(&["127.0.0.2"]).await;
    let (good_paths, good_key) = holder(&gw).await;

    // A row this ipgate cannot read (as a newer version's status would be), announced
    // in the change feed like any write.
    damage(&gw, bad, "status = 'SUSPENDED'");
    gw.wait_for_status(ip("127.0.0.2"), &bad_key, StatusCode::FORBIDDEN)
        .await;
    gw.wait_metric("ipgate_store_damaged_credentials", 1.0)
        .await;
    gw.wait_log("a credential's stored record is damaged").await;
    gw.wait_log("damaged_credential").await;
    // Every other change still applies.
    let r = add(&gw, "127.0.0.2", &good_paths, &good_key, "127.0.0.4").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    gw.admin(&["ip", "add", &good_paths.cred.to_string(), "127.0.0.5"]);
    gw.wait_until_allowed(ip("127.0.0.5"), &good_key).await;

    // A restart meets the damaged row in a full load: ready, the rest served.
    let dir = std::mem::replace(&mut gw.dir, tempfile::tempdir().unwrap());
    drop(gw);
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    assert_eq!(gw.metric("ipgate_store_damaged_credentials").await, 1.0);
    assert_eq!(
        gw.get(ip("127.0.0.4"), "/", Some(&good_key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", Some(&bad_key)).await.status,
        StatusCode::FORBIDDEN
    );
}

/// A small tmpfs, unmounted when the test ends.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> Option<SmallDisk> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| SmallDisk(at.to_owned()))
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn a_full_disk_fails_the_write_whole_and_nothing_else() {
    let upstream = Upstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let Some(disk) = SmallDisk::mount(&dir.path().join("disk"), "4m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root in a sandbox that allows it)");
        return;
    };
    let settings = Settings::new(&upstream.url()).set("store.url", "\"sqlite://disk/ipgate.db\"");
    let gw = Gateway::start_in(dir, &settings, &[]);
    gw.wait_ready().await;
    let (paths, key) = holder(&gw).await;
    let before = gw
        .admin(&["ip", "list", &paths.cred.to_string()])
        .to_string();
    let audit_before = gw.admin(&["audit"]).as_array().unwrap().len();

    // Fill the disk to the last byte.
    let filler = disk.0.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 4096];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    let _ = f.sync_all();
    drop(f);

    let r = add(&gw, "127.0.0.2", &paths, &key, "127.0.0.3").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    // Serving goes on from the snapshot; nothing of the write is anywhere.
    assert_eq!(
        gw.get(ip("127.0.0.2"), "/", Some(&key)).await.status,
        StatusCode::OK
    );
    assert_eq!(
        gw.get(ip("127.0.0.3"), "/", Some(&key)).await.status,
        StatusCode::FORBIDDEN
    );
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(
        gw.admin(&["ip", "list", &paths.cred.to_string()])
            .to_string(),
        before
    );
    assert_eq!(gw.admin(&["audit"]).as_array().unwrap().len(), audit_before);

    // Space again: the same write succeeds.
    let r = add(&gw, "127.0.0.2", &paths, &key, "127.0.0.3").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    drop(gw);
    drop(disk);
}

#[tokio::test]
async fn registrations_while_the_store_is_down_are_503_never_refused() {
    let upstream = Upstream::start().await;
    let gw = Gateway::start(&Settings::new(&upstream.url()).set("refresh.interval", "\"1h\""));
    gw.wait_ready().await;
    // A key made by another process after the one load: this gateway cannot know it
    // without reading the store, and the store is gone.
    let (_, _, fresh) = gw.new_key();
    std::fs::rename(store_file(&gw), gw.dir.path().join("moved.db")).unwrap();
    // Registrations that crowd in share one look at the store; when that look fails,
    // none of them may read "this key does not exist" into it.
    let body = json!({"description": "d", "secret": fresh});
    let tries = (0..8).map(|_| gw.register_device(ip("127.0.0.2"), body.clone()));
    for r in futures_util::future::join_all(tries).await {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    }
}

#[tokio::test]
async fn an_expiry_that_is_no_number_refuses_its_credential() {
    let upstream = Upstream::start().await;
    let gw = start(&upstream);
    gw.wait_ready().await;
    let (_, cred, key) = gw.registered_key(&["127.0.0.2"]).await;
    // SQLite keeps whatever it is given: a text where the expiry belongs (as a hand edit
    // or another tool could leave it) was read as "never expires", and let the key in.
    damage(&gw, cred, "expiry = 'tomorrow'");
    gw.wait_for_status(ip("127.0.0.2"), &key, StatusCode::FORBIDDEN)
        .await;
    gw.wait_metric("ipgate_store_damaged_credentials", 1.0)
        .await;
}
