//! The SQLite schema as numbered migrations, the file's `user_version` saying how many
//! have run. Migrations run under an exclusive lock, so two processes opening a new
//! file at once cannot both apply them; a file newer than this binary is refused.

/// Migration `i` takes the file from version `i` to `i + 1`. `{store_id}` is replaced
/// by the new store's random identity.
pub(super) const MIGRATIONS: &[&str] = &[
    // 1: users, credentials, entries, the audit log and a change counter.
    "
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
    ",
    // 2: the change feed. History from before it is unknown, so it counts as pruned: a
    // gateway that was at an older version loads everything once.
    "
    CREATE TABLE change_log (
        version       INTEGER NOT NULL,
        credential_id INTEGER,
        stamp         INTEGER NOT NULL,
        committed_at  INTEGER NOT NULL
    );
    CREATE INDEX change_log_by_version ON change_log (version);
    INSERT INTO meta (name, value)
        SELECT 'pruned_through', value FROM meta WHERE name = 'change_version';
    INSERT INTO meta (name, value) VALUES ('store_id', {store_id});
    ",
    // 3: shadow mode, and what the gateways saw (usage per address, refused addresses).
    "
    ALTER TABLE credentials ADD COLUMN mode TEXT NOT NULL DEFAULT 'enforce';
    CREATE TABLE ip_usage (
        credential_id INTEGER NOT NULL,
        ip            TEXT NOT NULL,
        requests      INTEGER NOT NULL,
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        PRIMARY KEY (credential_id, ip)
    );
    CREATE TABLE refused_ips (
        credential_id INTEGER NOT NULL,
        ip            TEXT NOT NULL,
        requests      INTEGER NOT NULL,
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        PRIMARY KEY (credential_id, ip)
    );
    CREATE TABLE refused_dropped (
        credential_id INTEGER PRIMARY KEY,
        dropped       INTEGER NOT NULL
    );
    CREATE VIEW entries AS
        SELECT p.id, p.credential_id, p.ip, p.status, p.created, p.updated,
               u.last_seen, COALESCE(u.requests, 0) AS requests
        FROM permitted_ips p
        LEFT JOIN ip_usage u ON u.credential_id = p.credential_id AND u.ip = p.ip;
    ",
    // 4: requests let through by shadow mode, apart from refusals (they were counted as
    // refused before; those counts stay where they are).
    "
    CREATE TABLE shadow_ips (
        credential_id INTEGER NOT NULL,
        ip            TEXT NOT NULL,
        requests      INTEGER NOT NULL,
        first_seen    INTEGER NOT NULL,
        last_seen     INTEGER NOT NULL,
        PRIMARY KEY (credential_id, ip)
    );
    ",
    // 5: console links (`ipgate admin console-link`): only each token's SHA-256.
    "
    CREATE TABLE console_links (
        token_hash    TEXT PRIMARY KEY,
        credential_id INTEGER NOT NULL REFERENCES credentials(id),
        created       INTEGER NOT NULL,
        expires       INTEGER NOT NULL,
        used          INTEGER,
        used_from     TEXT
    );
    ",
];
