//! The SQLite schema and its version. Every statement is idempotent: migrating an
//! up-to-date file changes nothing.

pub(super) const SCHEMA_VERSION: i64 = 1;
pub(super) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('change_version', 0);
CREATE TABLE IF NOT EXISTS users (
    id      INTEGER PRIMARY KEY,
    name    TEXT,
    created INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS credentials (
    id                 INTEGER PRIMARY KEY,
    user_id            INTEGER NOT NULL REFERENCES users(id),
    key_hash           BLOB NOT NULL UNIQUE,
    status             TEXT NOT NULL,
    wildcard           INTEGER NOT NULL DEFAULT 0,
    description        TEXT,
    created            INTEGER NOT NULL,
    updated            INTEGER NOT NULL,
    expiry             INTEGER,
    device_description TEXT,
    device_ip          TEXT
);
CREATE INDEX IF NOT EXISTS credentials_by_user ON credentials (user_id, id);
CREATE TABLE IF NOT EXISTS permitted_ips (
    id            INTEGER PRIMARY KEY,
    credential_id INTEGER NOT NULL REFERENCES credentials(id),
    ip            TEXT NOT NULL,
    status        TEXT NOT NULL,
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    UNIQUE (credential_id, ip)
);
CREATE TABLE IF NOT EXISTS audit_log (
    id            INTEGER PRIMARY KEY,
    at            INTEGER NOT NULL,
    actor         TEXT NOT NULL,
    actor_ip      TEXT,
    credential_id INTEGER,
    action        TEXT NOT NULL,
    before        TEXT,
    after         TEXT
);
CREATE INDEX IF NOT EXISTS audit_by_credential ON audit_log (credential_id, id);
";
