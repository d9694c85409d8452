//! The PostgreSQL schema as numbered migrations. The version lives in
//! `ipgate_schema`; whoever comes first (a gateway or `ipgate admin`) migrates, under a
//! transaction-scoped advisory lock, so concurrent starts apply each migration once. A
//! database newer than this binary is refused and never touched.

use super::super::{Result, StoreError};
use super::rows::col;
use deadpool_postgres::Object;

/// Any fixed number: every ipgate agrees on it, nothing else uses it.
pub(super) const MIGRATION_LOCK: i64 = 0x6970_6761_7465; // "ipgate"

/// Migration `i` takes the database from version `i` to `i + 1`. `{store_id}` is
/// replaced by the new store's random identity.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: everything, the change feed included.
    "
    CREATE TABLE meta (
        name  TEXT PRIMARY KEY,
        value BIGINT NOT NULL
    );
    INSERT INTO meta (name, value) VALUES
        ('change_version', 0), ('pruned_through', 0), ('store_id', {store_id});
    CREATE TABLE users (
        id      BIGSERIAL PRIMARY KEY,
        name    TEXT,
        created BIGINT NOT NULL
    );
    CREATE TABLE credentials (
        id                 BIGSERIAL PRIMARY KEY,
        user_id            BIGINT NOT NULL REFERENCES users(id),
        key_hash           BYTEA NOT NULL UNIQUE,
        status             TEXT NOT NULL,
        wildcard           BOOLEAN NOT NULL DEFAULT FALSE,
        description        TEXT,
        created            BIGINT NOT NULL,
        updated            BIGINT NOT NULL,
        expiry             BIGINT,
        device_description TEXT,
        device_ip          TEXT
    );
    CREATE INDEX credentials_by_user ON credentials (user_id, id);
    CREATE TABLE permitted_ips (
        id            BIGSERIAL PRIMARY KEY,
        credential_id BIGINT NOT NULL REFERENCES credentials(id),
        ip            TEXT NOT NULL,
        status        TEXT NOT NULL,
        created       BIGINT NOT NULL,
        updated       BIGINT NOT NULL,
        UNIQUE (credential_id, ip)
    );
    CREATE TABLE audit_log (
        id            BIGSERIAL PRIMARY KEY,
        at            BIGINT NOT NULL,
        actor         TEXT NOT NULL,
        actor_ip      TEXT,
        credential_id BIGINT,
        action        TEXT NOT NULL,
        before        TEXT,
        after         TEXT
    );
    CREATE INDEX audit_by_credential ON audit_log (credential_id, id);
    CREATE TABLE change_log (
        version       BIGINT NOT NULL,
        credential_id BIGINT,
        stamp         BIGINT NOT NULL,
        committed_at  BIGINT NOT NULL
    );
    CREATE INDEX change_log_by_version ON change_log (version);
    ",
    // 2: shadow mode, and what the gateways saw (usage per address, refused addresses).
    "
    ALTER TABLE credentials ADD COLUMN mode TEXT NOT NULL DEFAULT 'enforce';
    CREATE TABLE ip_usage (
        credential_id BIGINT NOT NULL,
        ip            TEXT NOT NULL,
        requests      BIGINT NOT NULL,
        first_seen    BIGINT NOT NULL,
        last_seen     BIGINT NOT NULL,
        PRIMARY KEY (credential_id, ip)
    );
    CREATE TABLE refused_ips (
        credential_id BIGINT NOT NULL,
        ip            TEXT NOT NULL,
        requests      BIGINT NOT NULL,
        first_seen    BIGINT NOT NULL,
        last_seen     BIGINT NOT NULL,
        PRIMARY KEY (credential_id, ip)
    );
    CREATE TABLE refused_dropped (
        credential_id BIGINT PRIMARY KEY,
        dropped       BIGINT NOT NULL
    );
    CREATE VIEW entries AS
        SELECT p.id, p.credential_id, p.ip, p.status, p.created, p.updated,
               u.last_seen, COALESCE(u.requests, 0) AS requests
        FROM permitted_ips p
        LEFT JOIN ip_usage u ON u.credential_id = p.credential_id AND u.ip = p.ip;
    ",
    // 3: requests let through by shadow mode, apart from refusals (they were counted as
    // refused before; those counts stay where they are).
    "
    CREATE TABLE shadow_ips (
        credential_id BIGINT NOT NULL,
        ip            TEXT NOT NULL,
        requests      BIGINT NOT NULL,
        first_seen    BIGINT NOT NULL,
        last_seen     BIGINT NOT NULL,
        PRIMARY KEY (credential_id, ip)
    );
    ",
    // 4: console links (`ipgate admin console-link`): only each token's SHA-256.
    "
    CREATE TABLE console_links (
        token_hash    TEXT PRIMARY KEY,
        credential_id BIGINT NOT NULL REFERENCES credentials(id),
        created       BIGINT NOT NULL,
        expires       BIGINT NOT NULL,
        used          BIGINT,
        used_from     TEXT
    );
    ",
];

/// Brings the schema up to date under a transaction-scoped advisory lock, or refuses a
/// database newer than this binary without touching it.
/// `missing`: `Some(where)` when a database without the schema is
/// [`StoreError::Missing`] rather than given one.
pub(super) async fn migrate(client: &mut Object, missing: Option<&str>) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let no_store = |at: &str| StoreError::Missing(format!("postgres {at}"));
    if let Some(at) = missing {
        let exists: bool = col(
            &tx.query_one("SELECT to_regclass('ipgate_schema') IS NOT NULL", &[])
                .await?,
            0,
        )?;
        if !exists {
            return Err(no_store(at));
        }
    }
    tx.batch_execute("CREATE TABLE IF NOT EXISTS ipgate_schema (version INTEGER NOT NULL)")
        .await?;
    let found: i32 = match tx
        .query_opt("SELECT version FROM ipgate_schema", &[])
        .await?
    {
        Some(row) => col(&row, 0)?,
        None => {
            tx.execute("INSERT INTO ipgate_schema (version) VALUES (0)", &[])
                .await?;
            0
        }
    };
    if let (0, Some(at)) = (found, missing) {
        return Err(no_store(at));
    }
    let known = MIGRATIONS.len() as i32;
    if found > known {
        return Err(StoreError::Incompatible(format!(
            "the PostgreSQL database has ipgate schema version {found}, newer than this \
             ipgate ({known}); it is not touched"
        )));
    }
    for migration in &MIGRATIONS[found as usize..] {
        let store_id = super::super::random_stamp()?;
        tx.batch_execute(&migration.replace("{store_id}", &store_id.to_string()))
            .await?;
    }
    if found < known {
        tx.execute("UPDATE ipgate_schema SET version = $1", &[&known])
            .await?;
        tracing::info!(from = found, to = known, "PostgreSQL schema migrated");
    }
    tx.commit().await?;
    Ok(())
}
