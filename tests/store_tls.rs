//! TLS to PostgreSQL with rustls, per `sslmode`, against a real server that accepts
//! TCP connections over TLS only (`hostssl`), with certificates from a test CA.

mod common;

use common::ca::TestCa;
use common::pg::Postgres;
use ipgate::config::Config;
use ipgate::store::{self, StoreError};
use std::path::Path;

/// A store handle for `url` (relative `sslrootcert` paths are taken from `dir`).
async fn reaches(url: &str, dir: &Path) -> Result<(), StoreError> {
    let config = Config::parse(
        &format!("[store]\nurl = \"{url}\"\ntimeout = \"3s\"\n"),
        dir,
    )
    .expect("valid config");
    let store = store::open(&config.store)?;
    store.load().await.map(drop)
}

#[tokio::test]
async fn every_sslmode_does_what_libpq_says() {
    if !Postgres::available() {
        return;
    }
    let pg = Postgres::start();
    let db = pg.database();
    let ca = TestCa::new();
    // The server's certificate names 127.0.0.1 and localhost; a second one names
    // only another host.
    let data = pg.data_dir();
    let install = |leaf: &common::ca::Leaf| {
        std::fs::write(data.join("server.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(data.join("server.key"), &leaf.key_pem).unwrap();
        pg.own_file(&data.join("server.crt"), 0o600);
        pg.own_file(&data.join("server.key"), 0o600);
    };
    install(&ca.leaf("db"));
    let hba = std::fs::read_to_string(data.join("pg_hba.conf")).unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        hba.replace("\nhost ", "\nhostssl "),
    )
    .unwrap();
    pg.psql("postgres", "ALTER SYSTEM SET ssl = on");
    pg.restart();

    let dir = tempfile::tempdir().unwrap();
    ca.write_pem(&dir.path().join("ca.pem"));
    TestCa::new().write_pem(&dir.path().join("other-ca.pem"));
    let base = pg.url(&db).replace("?sslmode=disable", "");
    let url = |query: &str| format!("{base}?{query}");

    // Plain TCP is refused by the server; every TLS mode gets in.
    let plain = reaches(&url("sslmode=disable"), dir.path()).await;
    assert!(plain.is_err(), "hostssl only");
    for ok in [
        "sslmode=prefer",
        "sslmode=require",
        "sslmode=verify-ca&sslrootcert=ca.pem",
        "sslmode=verify-full&sslrootcert=ca.pem",
    ] {
        reaches(&url(ok), dir.path())
            .await
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    // A certificate from another CA is refused where it is checked.
    for refused in [
        "sslmode=require&sslrootcert=other-ca.pem",
        "sslmode=verify-ca&sslrootcert=other-ca.pem",
        "sslmode=verify-full&sslrootcert=other-ca.pem",
    ] {
        assert!(
            reaches(&url(refused), dir.path()).await.is_err(),
            "{refused}"
        );
    }

    // A certificate for another name: verify-ca takes it, verify-full does not.
    install(&ca.leaf_for("db", &["db.example"], &[]));
    pg.restart();
    reaches(&url("sslmode=verify-ca&sslrootcert=ca.pem"), dir.path())
        .await
        .unwrap();
    assert!(
        reaches(&url("sslmode=verify-full&sslrootcert=ca.pem"), dir.path())
            .await
            .is_err()
    );
}
