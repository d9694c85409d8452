//! One behaviour, two backends: every test here runs against the embedded SQLite store
//! and against a real PostgreSQL server (skipped with one line when none is installed).
//! Two store handles on one database play two processes (a gateway and `ipgate admin`,
//! or two gateways).

mod common;

use common::pg::Postgres;
use ipgate::acl::{CredentialState, KeyHash, Snapshot, SnapshotCell, SnapshotCredential};
use ipgate::config::{Config, StoreConfig};
use ipgate::metrics::Metrics;
use ipgate::refresh::Refresher;
use ipgate::store::insight::REFUSED_KEPT;
use ipgate::store::{
    self, Actor, Change, Committed, CredentialChange, CredentialStatus, Feed, IpStatus, Mode,
    NewConsoleLink, NewCredential, Page, Position, ResyncReason, Sighting, Store, StoreError,
    Target, Timestamp, UsageBatch,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

const MAX_IPS: usize = 3;
/// Versions of history each test store keeps.
const KEEP: u64 = 10;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

enum Backend {
    Sqlite {
        _dir: tempfile::TempDir,
        path: PathBuf,
    },
    Postgres {
        pg: &'static Postgres,
        db: String,
    },
}

/// A store of the test's own, and how to open it again as another process would.
struct TestStore {
    backend: Backend,
    config: StoreConfig,
    store: Arc<dyn Store>,
}

/// The store section for `url`, keeping `keep` versions of history (below the
/// configurable minimum, so that pruning shows after few writes).
fn store_config(url: &str, keep: u64) -> StoreConfig {
    let text = format!("[store]\nurl = \"{url}\"\n");
    let mut config = Config::parse(&text, std::path::Path::new("/"))
        .expect("a valid store config")
        .store;
    match &mut config {
        StoreConfig::Sqlite(c) => c.keep_changes = keep,
        StoreConfig::Postgres(c) => c.keep_changes = keep,
    }
    config
}

impl TestStore {
    fn sqlite(keep: u64) -> TestStore {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipgate.db");
        let config = store_config(&format!("sqlite://{}", path.display()), keep);
        TestStore {
            store: store::open(&config).unwrap(),
            config,
            backend: Backend::Sqlite { _dir: dir, path },
        }
    }

    fn postgres(keep: u64) -> Option<TestStore> {
        let pg = Postgres::shared()?;
        let db = pg.database();
        let config = store_config(&pg.url(&db), keep);
        Some(TestStore {
            store: store::open(&config).unwrap(),
            config,
            backend: Backend::Postgres { pg, db },
        })
    }

    /// Another handle on the same database: another process.
    fn another(&self) -> Arc<dyn Store> {
        store::open(&self.config).unwrap()
    }

    /// Runs SQL on the database behind the store's back (to damage or rewrite it).
    fn sql(&self, sql: &str) {
        match &self.backend {
            Backend::Sqlite { path, .. } => rusqlite::Connection::open(path)
                .unwrap()
                .execute_batch(sql)
                .unwrap(),
            Backend::Postgres { pg, db } => {
                pg.psql(db, sql);
            }
        }
    }
}

/// Instantiates each test for both backends.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::KEEP;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::TestStore::sqlite(KEEP)).await
                }
            )*
        }
        mod postgres {
            use super::KEEP;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(t) = super::TestStore::postgres(KEEP) else { return };
                    super::$name(t).await
                }
            )*
        }
    };
}

conformance!(
    users_credentials_and_keys,
    registration_binds_a_pending_key_once,
    registration_activates_entries_listed_beforehand,
    entry_rules_duplicates_limits_and_immutable_addresses,
    a_change_that_changes_nothing_writes_nothing,
    revocation_and_the_wildcard,
    every_change_is_audited_with_before_and_after,
    lists_page_newest_first,
    usage_counts_active_entries,
    users_are_listed_and_a_lapsed_key_reads_as_expired,
    the_feed_names_exactly_what_changed,
    versions_are_gap_free_under_concurrent_writers,
    concurrent_adds_never_pass_the_limit,
    a_gateway_too_far_behind_resyncs,
    rewritten_history_another_store_or_going_backwards_resyncs,
    a_damaged_row_refuses_only_its_credential,
    concurrent_first_starts_migrate_once,
    a_newer_schema_is_refused_and_untouched,
    a_revocation_by_another_process_is_never_skipped,
    shadow_mode_is_a_change_like_any_other,
    usage_from_every_gateway_adds_up,
    refused_addresses_are_bounded_per_credential,
    concurrent_flushes_past_the_bound_never_fail,
    reports_of_unused_entries_and_suggestions,
    console_links_are_spent_once_in_time_and_audited,
    what_a_write_answers_is_what_is_stored,
    a_new_credential_is_answered_as_stored,
);

// ---- helpers ---------------------------------------------------------------------

fn as_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap()
}

fn admin() -> Actor {
    Actor::admin()
}

async fn user(s: &dyn Store) -> u64 {
    s.add_user(Some("u".into()), &admin())
        .await
        .unwrap()
        .value
        .id
}

/// A new pending credential for `user`, keyed by `n`.
async fn pending(s: &dyn Store, user: u64, n: u64) -> (u64, KeyHash) {
    let key = KeyHash::of(&n.to_le_bytes());
    let c = s
        .create_credential(
            NewCredential {
                user_id: user,
                key,
                description: None,
                expiry: Timestamp::now().plus(Duration::from_secs(3600)),
            },
            &admin(),
        )
        .await
        .unwrap()
        .value;
    (c.id, key)
}

fn register(ips: &[&str]) -> Change {
    Change::Register {
        description: "device".into(),
        ips: ips.iter().map(|s| ip(s)).collect(),
        caller: ip(ips.first().copied().unwrap_or("10.9.9.9")),
    }
}

/// A new ACTIVE credential with `ips`, registered.
async fn active(s: &dyn Store, user: u64, n: u64, ips: &[&str]) -> (u64, KeyHash) {
    let (id, key) = pending(s, user, n).await;
    s.change(Target::Key(key), register(ips), MAX_IPS, &admin())
        .await
        .unwrap();
    (id, key)
}

async fn change(
    s: &dyn Store,
    id: u64,
    c: Change,
) -> Result<Committed<store::Changed>, StoreError> {
    s.change(Target::Id(id), c, MAX_IPS, &admin()).await
}

fn add(addr: &str) -> Change {
    Change::AddIp {
        ip: ip(addr),
        status: IpStatus::Active,
    }
}

async fn version(s: &dyn Store) -> u64 {
    s.load().await.unwrap().position.version
}

fn rejected<T: std::fmt::Debug>(r: Result<T, StoreError>) -> String {
    match r {
        Err(StoreError::Rejected(msg)) => msg,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// Everything a snapshot says, comparable.
fn contents(s: &Snapshot) -> BTreeMap<u64, (KeyHash, SnapshotCredential)> {
    s.iter().map(|(k, c)| (c.id, (*k, c.clone()))).collect()
}

// ---- the tests -------------------------------------------------------------------

async fn users_credentials_and_keys(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    assert_eq!(s.user(u).await.unwrap().name.as_deref(), Some("u"));
    assert!(matches!(
        s.user(u + 100).await,
        Err(StoreError::NotFound("user"))
    ));
    let (id, key) = pending(s, u, 1).await;
    let c = s.credential(id).await.unwrap();
    assert_eq!(
        (c.user_id, c.status),
        (u, CredentialStatus::PendingFirstUse)
    );
    assert!(c.expiry_time.is_some());
    let missing = s
        .create_credential(
            NewCredential {
                user_id: u + 100,
                key: KeyHash::of(b"x"),
                description: None,
                expiry: Timestamp::now(),
            },
            &admin(),
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NotFound("user"))));
    let loaded = s.load().await.unwrap();
    let entry = loaded.snapshot.get(&key).unwrap();
    assert_eq!(entry.state, CredentialState::PendingFirstUse);
    assert_eq!(loaded.snapshot.credential_count(), 1);
}

async fn registration_binds_a_pending_key_once(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, key) = pending(s, u, 1).await;
    let done = s
        .change(
            Target::Key(key),
            register(&["10.0.0.1", "::ffff:10.0.0.2"]),
            MAX_IPS,
            &admin(),
        )
        .await
        .unwrap()
        .value
        .credential;
    assert_eq!(done.id, id);
    assert_eq!(done.status, CredentialStatus::Active);
    assert_eq!(done.expiry_time, None);
    assert_eq!(done.permitted_device.unwrap().ip, ip("10.0.0.1"));
    let ips = s.ips(id, Page::all()).await.unwrap();
    assert_eq!(ips.len(), 2);
    assert!(ips.iter().any(|e| e.ip == ip("10.0.0.2")), "stored as IPv4");

    // Once only; an unknown key and an expired window get the same answer.
    let again = rejected(
        s.change(Target::Key(key), register(&["10.0.0.3"]), MAX_IPS, &admin())
            .await,
    );
    let unknown = rejected(
        s.change(
            Target::Key(KeyHash::of(b"nope")),
            register(&["10.0.0.3"]),
            MAX_IPS,
            &admin(),
        )
        .await,
    );
    let expired_key = KeyHash::of(b"late");
    s.create_credential(
        NewCredential {
            user_id: u,
            key: expired_key,
            description: None,
            expiry: Timestamp(Timestamp::now().0 - 1),
        },
        &admin(),
    )
    .await
    .unwrap();
    let expired = rejected(
        s.change(
            Target::Key(expired_key),
            register(&["10.0.0.3"]),
            MAX_IPS,
            &admin(),
        )
        .await,
    );
    assert_eq!(again, unknown);
    assert_eq!(again, expired);
    assert_eq!(
        s.ips(id, Page::all()).await.unwrap().len(),
        2,
        "nothing stored"
    );
    // The audit names the key holder and its address.
    let audit = s.audit(Some(id), Page::all()).await.unwrap();
    assert_eq!(audit[0].action, "device.register");
    assert_eq!(audit[0].actor, format!("credential:{id}"));
    assert_eq!(audit[0].actor_ip.as_deref(), Some("10.0.0.1"));
}

async fn registration_activates_entries_listed_beforehand(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, key) = pending(s, u, 1).await;
    let parked = change(
        s,
        id,
        Change::AddIp {
            ip: ip("10.0.0.2"),
            status: IpStatus::Inactive,
        },
    )
    .await
    .unwrap()
    .value
    .entry
    .unwrap();
    s.change(
        Target::Key(key),
        register(&["10.0.0.1", "10.0.0.2"]),
        MAX_IPS,
        &admin(),
    )
    .await
    .unwrap();
    let ips = s.ips(id, Page::all()).await.unwrap();
    assert_eq!(ips.len(), 2);
    let same = ips.iter().find(|e| e.ip == ip("10.0.0.2")).unwrap();
    assert_eq!((same.id, same.status), (parked.id, IpStatus::Active));
}

async fn entry_rules_duplicates_limits_and_immutable_addresses(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    // A duplicate, in either spelling.
    assert!(rejected(change(s, id, add("10.0.0.1")).await).contains("already"));
    assert!(rejected(change(s, id, add("::ffff:10.0.0.1")).await).contains("already"));
    change(s, id, add("10.0.0.2")).await.unwrap();
    change(s, id, add("10.0.0.3")).await.unwrap();
    assert!(rejected(change(s, id, add("10.0.0.4")).await).contains("At most 3 ACTIVE"));
    // INACTIVE entries do not count against the ACTIVE limit...
    let parked = change(
        s,
        id,
        Change::AddIp {
            ip: ip("10.0.0.4"),
            status: IpStatus::Inactive,
        },
    )
    .await
    .unwrap()
    .value
    .entry
    .unwrap();
    // ...but turning one ACTIVE does.
    let back = change(
        s,
        id,
        Change::SetIpStatus {
            item: parked.id,
            status: IpStatus::Active,
        },
    )
    .await;
    assert!(rejected(back).contains("At most 3 ACTIVE"));
    let missing = change(
        s,
        id,
        Change::SetIpStatus {
            item: 9999,
            status: IpStatus::Active,
        },
    )
    .await;
    assert!(matches!(missing, Err(StoreError::NotFound("permitted IP"))));
    // The total (ACTIVE and INACTIVE) is bounded too: 10 x the limit.
    for i in 0..26 {
        change(
            s,
            id,
            Change::AddIp {
                ip: ip(&format!("10.1.0.{i}")),
                status: IpStatus::Inactive,
            },
        )
        .await
        .unwrap();
    }
    let over = change(
        s,
        id,
        Change::AddIp {
            ip: ip("10.2.0.1"),
            status: IpStatus::Inactive,
        },
    )
    .await;
    assert!(rejected(over).contains("At most 30 permitted IP entries"));
}

async fn a_change_that_changes_nothing_writes_nothing(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let entry = s.ips(id, Page::all()).await.unwrap()[0].clone();
    let before = version(s).await;
    let audits = s.audit(None, Page::all()).await.unwrap().len();
    let same = change(
        s,
        id,
        Change::SetIpStatus {
            item: entry.id,
            status: IpStatus::Active,
        },
    )
    .await
    .unwrap();
    assert_eq!(same.version, before);
    assert_eq!(same.value.entry.unwrap().status, IpStatus::Active);
    change(s, id, Change::Revoke).await.unwrap();
    let revoked = version(s).await;
    assert_eq!(
        change(s, id, Change::Revoke).await.unwrap().version,
        revoked
    );
    assert_eq!(
        change(s, id, Change::Wildcard(false))
            .await
            .unwrap()
            .version,
        revoked
    );
    assert_eq!(s.audit(None, Page::all()).await.unwrap().len(), audits + 1);
}

async fn revocation_and_the_wildcard(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (waiting, _) = pending(s, u, 1).await;
    assert!(rejected(change(s, waiting, Change::Wildcard(true)).await).contains("ACTIVE"));
    let (id, key) = active(s, u, 2, &["10.0.0.1"]).await;
    let on = change(s, id, Change::Wildcard(true))
        .await
        .unwrap()
        .value
        .credential;
    assert!(on.wildcard);
    assert!(s.load().await.unwrap().snapshot.get(&key).unwrap().wildcard);
    let off = change(s, id, Change::Revoke)
        .await
        .unwrap()
        .value
        .credential;
    assert_eq!(off.status, CredentialStatus::Revoked);
    assert!(rejected(change(s, id, Change::Wildcard(true)).await).contains("REVOKED"));
    let snap = s.load().await.unwrap().snapshot;
    assert_eq!(snap.get(&key).unwrap().state, CredentialState::Revoked);
    assert!(matches!(
        change(s, 9999, Change::Revoke).await,
        Err(StoreError::NotFound("credential"))
    ));
}

async fn every_change_is_audited_with_before_and_after(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let who = Actor::credential(id, ip("10.0.0.1"));
    let entry = s
        .change(Target::Id(id), add("10.0.0.2"), MAX_IPS, &who)
        .await
        .unwrap()
        .value
        .entry
        .unwrap();
    s.change(
        Target::Id(id),
        Change::SetIpStatus {
            item: entry.id,
            status: IpStatus::Inactive,
        },
        MAX_IPS,
        &who,
    )
    .await
    .unwrap();
    let log = s.audit(Some(id), Page::all()).await.unwrap();
    let actions: Vec<&str> = log.iter().map(|a| a.action.as_str()).collect();
    assert_eq!(
        actions,
        [
            "ip.set_status",
            "ip.add",
            "device.register",
            "credential.create"
        ]
    );
    assert_eq!(log[0].actor, format!("credential:{id}"));
    assert_eq!(log[0].actor_ip.as_deref(), Some("10.0.0.1"));
    assert_eq!(log[0].before.as_ref().unwrap()["status"], "ACTIVE");
    assert_eq!(log[0].after.as_ref().unwrap()["status"], "INACTIVE");
    assert!(log[1].before.is_none());
    assert_eq!(log[1].after.as_ref().unwrap()["ip"], "10.0.0.2");
    let all = s.audit(None, Page::all()).await.unwrap();
    assert_eq!(all.last().unwrap().action, "user.add");
}

async fn lists_page_newest_first(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    for i in 2..=6 {
        change(
            s,
            id,
            Change::AddIp {
                ip: ip(&format!("10.0.0.{i}")),
                status: IpStatus::Inactive,
            },
        )
        .await
        .unwrap();
    }
    let all: Vec<u64> = s
        .ips(id, Page::all())
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(all.len(), 6);
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let first: Vec<u64> = s
        .ips(id, Page::first(2))
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(first, all[..2]);
    let older = Page {
        count: 2,
        older_id: Some(all[1]),
        newer_id: None,
    };
    let page: Vec<u64> = s
        .ips(id, older)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(page, all[2..4]);
    let newer = Page {
        count: 2,
        older_id: None,
        newer_id: Some(all[4]),
    };
    let page: Vec<u64> = s
        .ips(id, newer)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(page, all[2..4]);
    for n in 2..5 {
        pending(s, u, n).await;
    }
    let creds = s.credentials(u, Page::first(3)).await.unwrap();
    assert_eq!(creds.len(), 3);
    assert!(creds[0].id > creds[1].id);
    let audit = s.audit(None, Page::first(2)).await.unwrap();
    assert_eq!(audit.len(), 2);
}

async fn usage_counts_active_entries(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let other = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1", "10.0.0.2"]).await;
    change(
        s,
        id,
        Change::AddIp {
            ip: ip("10.0.0.3"),
            status: IpStatus::Inactive,
        },
    )
    .await
    .unwrap();
    active(s, other, 2, &["10.0.0.1"]).await;
    let mine = s.usage(Some(u)).await.unwrap();
    assert_eq!(mine.len(), 1);
    assert_eq!((mine[0].credential_id, mine[0].active_ips), (id, 2));
    assert_eq!(s.usage(None).await.unwrap().len(), 2);
}

async fn users_are_listed_and_a_lapsed_key_reads_as_expired(t: TestStore) {
    let s = t.store.as_ref();
    let first = user(s).await;
    let second = user(s).await;
    let listed: Vec<u64> = s
        .users(Page::all())
        .await
        .unwrap()
        .iter()
        .map(|u| u.id)
        .collect();
    assert_eq!(listed, [second, first], "newest first");
    assert_eq!(s.users(Page::first(1)).await.unwrap().len(), 1);

    let lapsed = s
        .create_credential(
            NewCredential {
                user_id: first,
                key: KeyHash::of(b"lapsed"),
                description: None,
                expiry: Timestamp(Timestamp::now().0 - 1_000_000),
            },
            &admin(),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(lapsed.status, CredentialStatus::Expired, "as created");
    let id = lapsed.id;
    assert_eq!(
        s.credential(id).await.unwrap().status,
        CredentialStatus::Expired
    );
    let list = s.credentials(first, Page::all()).await.unwrap();
    assert_eq!(list[0].status, CredentialStatus::Expired);
    let usage = s.usage(Some(first)).await.unwrap();
    assert_eq!(usage[0].status, CredentialStatus::Expired);
    assert!(rejected(change(s, id, Change::Wildcard(true)).await).contains("EXPIRED"));
    let reg = s
        .change(
            Target::Key(KeyHash::of(b"lapsed")),
            register(&["10.0.0.1"]),
            MAX_IPS,
            &admin(),
        )
        .await;
    assert_eq!(rejected(reg), store::rules::REGISTRATION_REFUSED);
    // An entry changed on an expired credential leaves it as stored: still pending.
    change(s, id, add("10.0.0.9")).await.unwrap();
    assert_eq!(
        s.credential(id).await.unwrap().status,
        CredentialStatus::Expired
    );
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.damaged.len(), 0);
    assert_eq!(
        loaded.snapshot.get(&KeyHash::of(b"lapsed")).unwrap().state,
        CredentialState::PendingFirstUse
    );
    // Revoked: no longer billed.
    assert_eq!(
        change(s, id, Change::Revoke)
            .await
            .unwrap()
            .value
            .credential
            .status,
        CredentialStatus::Revoked
    );
    assert!(s.usage(Some(first)).await.unwrap().is_empty());
    assert_eq!(s.usage(None).await.unwrap().len(), 0);
}

async fn the_feed_names_exactly_what_changed(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (a, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let (b, b_key) = active(s, u, 2, &["10.0.0.1"]).await;
    let start = s.load().await.unwrap().position;
    assert!(matches!(
        s.changes_since(start).await.unwrap(),
        Feed::Unchanged
    ));

    let first = change(s, b, add("10.0.0.2")).await.unwrap().version;
    assert_eq!(first, start.version + 1);
    let second = change(s, b, Change::Revoke).await.unwrap().version;
    assert_eq!(second, first + 1);
    let Feed::Changes(delta) = s.changes_since(start).await.unwrap() else {
        panic!("expected changes");
    };
    assert_eq!(delta.to.version, second);
    assert_eq!(delta.committed.len(), 2, "one commit time per version");
    assert_eq!(
        delta.changed.len(),
        1,
        "b twice is b once, in its latest state"
    );
    let CredentialChange::Readable(key, c) = &delta.changed[0] else {
        panic!("readable");
    };
    assert_eq!((*key, c.id, c.state), (b_key, b, CredentialState::Revoked));
    assert_eq!(c.active_ips.len(), 2);
    assert_ne!(a, b);
    // From the new position nothing is pending; the identity carries over.
    assert!(matches!(
        s.changes_since(delta.to).await.unwrap(),
        Feed::Unchanged
    ));
    assert_eq!(delta.to.store_id, start.store_id);
    // A user alone changes no credential but still takes a version.
    let v = s.add_user(None, &admin()).await.unwrap().version;
    let Feed::Changes(delta2) = s.changes_since(delta.to).await.unwrap() else {
        panic!("expected a change");
    };
    assert_eq!((delta2.to.version, delta2.changed.len()), (v, 0));
}

async fn versions_are_gap_free_under_concurrent_writers(t: TestStore) {
    let u = user(t.store.as_ref()).await;
    let start = t.store.load().await.unwrap().position;
    let handles = [Arc::clone(&t.store), t.another()];
    let mut tasks = Vec::new();
    for (i, s) in handles.iter().cycle().take(24).enumerate() {
        let s = Arc::clone(s);
        tasks.push(tokio::spawn(async move {
            pending(s.as_ref(), u, 100 + i as u64).await;
            version(s.as_ref()).await
        }));
    }
    // While they write, a reader that sees version W must see every version up to W,
    // each with the credential it created: no later commit shows before an earlier one.
    let reader = {
        let s = Arc::clone(&t.store);
        tokio::spawn(async move {
            let mut reads = 0;
            loop {
                if let Feed::Changes(d) = s.changes_since(start).await.unwrap() {
                    let seen = (d.to.version - start.version) as usize;
                    assert_eq!(
                        d.committed.len(),
                        seen,
                        "saw {}, not all before it",
                        d.to.version
                    );
                    assert_eq!(d.changed.len(), seen, "at {}", d.to.version);
                    if seen == 24 {
                        return reads;
                    }
                }
                reads += 1;
                tokio::task::yield_now().await;
            }
        })
    };
    for task in tasks {
        task.await.unwrap();
    }
    assert!(
        reader.await.unwrap() > 0,
        "the reader never read during the writes"
    );
    let Feed::Changes(delta) = t.store.changes_since(start).await.unwrap() else {
        panic!("expected changes");
    };
    // Every version from start+1 to start+24 exists exactly once.
    assert_eq!(delta.to.version, start.version + 24);
    assert_eq!(delta.committed.len(), 24);
    assert_eq!(delta.changed.len(), 24);
}

async fn concurrent_adds_never_pass_the_limit(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let handles = [Arc::clone(&t.store), t.another()];
    let mut tasks = Vec::new();
    for (i, h) in handles.iter().cycle().take(10).enumerate() {
        let h = Arc::clone(h);
        tasks.push(tokio::spawn(async move {
            h.change(
                Target::Id(id),
                add(&format!("10.0.1.{i}")),
                MAX_IPS,
                &admin(),
            )
            .await
            .is_ok()
        }));
    }
    let mut ok = 0;
    for task in tasks {
        ok += usize::from(task.await.unwrap());
    }
    assert_eq!(ok, MAX_IPS - 1);
    let active = s
        .ips(id, Page::all())
        .await
        .unwrap()
        .iter()
        .filter(|e| e.status == IpStatus::Active)
        .count();
    assert_eq!(active, MAX_IPS);
}

async fn a_gateway_too_far_behind_resyncs(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let behind = s.load().await.unwrap().position;
    // Ten versions are kept and pruning runs every 64: 70 more prune past it.
    for i in 0..70 {
        change(s, id, Change::Wildcard(i % 2 == 0)).await.unwrap();
    }
    assert!(matches!(
        s.changes_since(behind).await.unwrap(),
        Feed::Resync(ResyncReason::TooOld)
    ));
    let recent = s.load().await.unwrap().position;
    change(s, id, add("10.0.0.2")).await.unwrap();
    assert!(matches!(
        s.changes_since(recent).await.unwrap(),
        Feed::Changes(_)
    ));
}

async fn rewritten_history_another_store_or_going_backwards_resyncs(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let at = s.load().await.unwrap().position;
    let resync = |f: Feed| match f {
        Feed::Resync(r) => r,
        other => panic!("expected a resync, got {other:?}"),
    };
    let other = Position {
        store_id: at.store_id ^ 1,
        ..at
    };
    assert_eq!(
        resync(s.changes_since(other).await.unwrap()),
        ResyncReason::OtherStore
    );
    let ahead = Position {
        version: at.version + 5,
        ..at
    };
    assert_eq!(
        resync(s.changes_since(ahead).await.unwrap()),
        ResyncReason::WentBackwards
    );
    // A restore or failover reuses the version number with other history.
    change(s, id, add("10.0.0.2")).await.unwrap();
    t.sql(&format!(
        "UPDATE change_log SET stamp = stamp + 2 WHERE version = {}",
        at.version
    ));
    assert_eq!(
        resync(s.changes_since(at).await.unwrap()),
        ResyncReason::HistoryRewritten
    );
}

async fn a_damaged_row_refuses_only_its_credential(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (good, good_key) = active(s, u, 1, &["10.0.0.1"]).await;
    let (bad, bad_key) = active(s, u, 2, &["10.0.0.1"]).await;
    let cell = Arc::new(SnapshotCell::new());
    let refresher = Refresher::new(
        Arc::clone(&t.store),
        Arc::clone(&cell),
        Arc::new(Metrics::new()),
    );
    refresher.refresh().await.unwrap();

    // A newer ipgate in a mixed fleet writes a status this one does not know, as a
    // change in the feed like any other.
    t.sql(&format!(
        "UPDATE credentials SET status = 'SUSPENDED' WHERE id = {bad}"
    ));
    change(s, bad, add("10.0.0.2")).await.unwrap_err();
    t.sql(&format!(
        "INSERT INTO change_log (version, credential_id, stamp, committed_at) \
         SELECT value + 1, {bad}, 7, 0 FROM meta WHERE name = 'change_version'; \
         UPDATE meta SET value = value + 1 WHERE name = 'change_version'"
    ));
    change(s, good, add("10.0.0.2")).await.unwrap();
    refresher.refresh().await.unwrap();
    let snap = cell.load_full().unwrap();
    assert_eq!(snap.get(&bad_key).unwrap().state, CredentialState::Damaged);
    assert_eq!(
        snap.get(&good_key).unwrap().active_ips.len(),
        2,
        "other changes apply"
    );
    assert_eq!(snap.damaged_count(), 1);

    // An unreadable address or key: the same, and a full load agrees.
    t.sql(&format!(
        "UPDATE credentials SET status = 'ACTIVE' WHERE id = {bad}; \
         UPDATE permitted_ips SET ip = 'not-an-address' WHERE credential_id = {bad}"
    ));
    let loaded = s.load().await.unwrap();
    assert_eq!(loaded.damaged.len(), 1);
    assert_eq!(
        loaded.snapshot.get(&bad_key).unwrap().state,
        CredentialState::Damaged
    );
    assert_eq!(
        loaded.snapshot.get(&good_key).unwrap().state,
        CredentialState::Active
    );
}

async fn concurrent_first_starts_migrate_once(t: TestStore) {
    // Four processes meet a new, empty database at once.
    let handles: Vec<Arc<dyn Store>> = (0..4).map(|_| t.another()).collect();
    let mut tasks = Vec::new();
    for h in handles {
        tasks.push(tokio::spawn(
            async move { h.load().await.map(|l| l.position) },
        ));
    }
    let mut positions = Vec::new();
    for task in tasks {
        positions.push(task.await.unwrap().expect("every start succeeds"));
    }
    assert!(
        positions.windows(2).all(|w| w[0] == w[1]),
        "one store identity: {positions:?}"
    );
    user(t.store.as_ref()).await;
}

async fn a_newer_schema_is_refused_and_untouched(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    match &t.backend {
        Backend::Sqlite { .. } => t.sql("PRAGMA user_version = 99"),
        Backend::Postgres { .. } => t.sql("UPDATE ipgate_schema SET version = 99"),
    }
    let newer = t.another();
    assert!(matches!(
        newer.load().await,
        Err(StoreError::Incompatible(_))
    ));
    assert!(matches!(
        newer.add_user(None, &admin()).await,
        Err(StoreError::Incompatible(_))
    ));
    // The running handle migrated before; the refused one wrote nothing.
    assert_eq!(s.usage(None).await.unwrap().len(), 0);
    assert_eq!(s.user(u).await.unwrap().id, u);
    assert!(matches!(s.user(u + 1).await, Err(StoreError::NotFound(_))));
}

/// The sequence that used to skip a revocation for good: an API write through this
/// gateway commits; the poller catches up first; another process revokes Y; the API
/// handler then makes its write enforced. Y's revocation must be in the snapshot.
async fn a_revocation_by_another_process_is_never_skipped(t: TestStore) {
    let ours = Arc::clone(&t.store);
    let other = t.another();
    let u = user(ours.as_ref()).await;
    let (x, _) = active(ours.as_ref(), u, 1, &["10.0.0.1"]).await;
    let (y, y_key) = active(ours.as_ref(), u, 2, &["10.0.0.1"]).await;
    let cell = Arc::new(SnapshotCell::new());
    let r = Refresher::new(
        Arc::clone(&ours),
        Arc::clone(&cell),
        Arc::new(Metrics::new()),
    );
    r.refresh().await.unwrap();

    // 1. An API write through this gateway commits.
    let written = change(ours.as_ref(), x, add("10.0.0.2"))
        .await
        .unwrap()
        .version;
    // 2. The poller gets there first.
    r.refresh().await.unwrap();
    // 3. Another process revokes Y.
    other
        .change(Target::Id(y), Change::Revoke, MAX_IPS, &admin())
        .await
        .unwrap();
    // 4. The API handler makes its write enforced, then (5) polls go on.
    r.catch_up(written).await.unwrap();
    r.refresh().await.unwrap();
    let snap = cell.load_full().unwrap();
    assert_eq!(
        snap.get(&y_key).unwrap().state,
        CredentialState::Revoked,
        "the revocation of Y was skipped"
    );
    assert_eq!(
        contents(&snap),
        contents(&ours.load().await.unwrap().snapshot)
    );
}

async fn shadow_mode_is_a_change_like_any_other(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, key) = active(s, u, 1, &["10.0.0.1"]).await;
    let at = s.load().await.unwrap().position;
    assert_eq!(s.credential(id).await.unwrap().mode, Mode::Enforce);
    let done = change(s, id, Change::Mode(Mode::Shadow)).await.unwrap();
    assert_eq!(done.value.credential.mode, Mode::Shadow);
    assert_eq!(done.version, at.version + 1);
    let Feed::Changes(delta) = s.changes_since(at).await.unwrap() else {
        panic!("a change");
    };
    let CredentialChange::Readable(k, c) = &delta.changed[0] else {
        panic!("readable");
    };
    assert_eq!((*k, c.shadow), (key, true));
    let audit = s.audit(Some(id), Page::first(1)).await.unwrap();
    assert_eq!(audit[0].action, "credential.mode");
    assert_eq!(audit[0].before.as_ref().unwrap()["mode"], "enforce");
    assert_eq!(audit[0].after.as_ref().unwrap()["mode"], "shadow");
    // Twice is nothing new.
    assert_eq!(
        change(s, id, Change::Mode(Mode::Shadow))
            .await
            .unwrap()
            .version,
        done.version
    );
    assert!(s.load().await.unwrap().snapshot.get(&key).unwrap().shadow);
}

fn seen(credential: u64, addr: &str, requests: u64, first: i64, last: i64) -> Sighting {
    Sighting {
        credential_id: credential,
        ip: ip(addr),
        requests,
        first_seen: Timestamp(first),
        last_seen: Timestamp(last),
    }
}

async fn usage_from_every_gateway_adds_up(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1", "10.0.0.2"]).await;
    let before = version(s).await;
    let other = t.another();
    let one = UsageBatch {
        allowed: vec![seen(id, "10.0.0.1", 5, 100, 200)],
        ..UsageBatch::default()
    };
    let two = UsageBatch {
        allowed: vec![
            seen(id, "10.0.0.1", 7, 50, 150),
            seen(id, "10.9.9.9", 1, 60, 60),
        ],
        ..UsageBatch::default()
    };
    s.record_usage(one).await.unwrap();
    other.record_usage(two).await.unwrap();
    assert_eq!(version(s).await, before, "usage is not a change");
    let entries = s.ips(id, Page::all()).await.unwrap();
    let used = entries.iter().find(|e| e.ip == ip("10.0.0.1")).unwrap();
    assert_eq!((used.requests, used.last_seen), (12, Some(Timestamp(200))));
    let idle = entries.iter().find(|e| e.ip == ip("10.0.0.2")).unwrap();
    assert_eq!((idle.requests, idle.last_seen), (0, None));
    assert_eq!(s.ip(id, used.id).await.unwrap().requests, 12);
}

async fn refused_addresses_are_bounded_per_credential(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let (quiet, _) = active(s, u, 2, &["10.0.0.1"]).await;
    let first = UsageBatch {
        refused: vec![seen(id, "203.0.113.1", 3, 10, 20)],
        ..UsageBatch::default()
    };
    s.record_usage(first).await.unwrap();
    // An attacker rotating through addresses, in two flushes.
    for round in 0..2i64 {
        let refused = (0..200u32)
            .map(|i| {
                seen(
                    id,
                    &format!("198.51.{}.{}", round, i),
                    1,
                    1000 + round,
                    1000 + round,
                )
            })
            .collect();
        t.another()
            .record_usage(UsageBatch {
                refused,
                ..UsageBatch::default()
            })
            .await
            .unwrap();
    }
    let report = s.refused(Some(id)).await.unwrap();
    assert_eq!(report.addresses.len(), REFUSED_KEPT);
    assert_eq!(report.truncated.len(), 1);
    assert_eq!(report.truncated[0].dropped, 401 - REFUSED_KEPT as u64);
    // The most recent are kept: the first address and the oldest round went first.
    assert!(report
        .addresses
        .iter()
        .all(|a| a.last_seen == Timestamp(1001) || a.last_seen == Timestamp(1000)));
    assert!(!report.addresses.iter().any(|a| a.ip == ip("203.0.113.1")));
    assert!(s.refused(Some(quiet)).await.unwrap().addresses.is_empty());
    assert!(matches!(
        s.refused(Some(9999)).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(s.refused(None).await.unwrap().addresses.len(), REFUSED_KEPT);
}

/// Two gateways flushing at once, both over the refused-address bound of one
/// credential: each flush trims rows the other may be updating. Neither may fail.
async fn concurrent_flushes_past_the_bound_never_fail(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let addr = |i: u32| format!("10.1.{}.{}", i / 256, i % 256);
    let kept = REFUSED_KEPT as u32;
    let start = UsageBatch {
        allowed: vec![],
        refused: (0..kept)
            .map(|i| seen(id, &addr(i), 1, 1000, 1000 + i as i64))
            .collect(),
        shadow: vec![],
    };
    s.record_usage(start).await.unwrap();
    let (one, two) = (t.another(), t.another());
    for round in 0..12u32 {
        // One flush sees the newer half and new addresses, the other the older half:
        // they overlap in the middle, and each trim removes the oldest.
        let newer = UsageBatch {
            allowed: vec![],
            refused: (kept / 2..kept + 40 + round)
                .map(|i| seen(id, &addr(i + round * 40), 1, 2000, 2000 + i as i64))
                .collect(),
            shadow: vec![],
        };
        let older = UsageBatch {
            allowed: vec![],
            refused: (0..kept / 2 + 20)
                .map(|i| seen(id, &addr(i + round * 40), 1, 10, 10))
                .collect(),
            shadow: vec![],
        };
        let (a, b) = tokio::join!(one.record_usage(newer), two.record_usage(older));
        a.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        b.unwrap_or_else(|e| panic!("round {round}: {e:?}"));
    }
    let report = s.refused(Some(id)).await.unwrap();
    assert_eq!(report.addresses.len(), REFUSED_KEPT);
}

async fn reports_of_unused_entries_and_suggestions(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let other = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1", "10.0.0.2"]).await;
    let (idle, _) = active(s, u, 2, &["10.0.0.1"]).await;
    let (theirs, _) = active(s, other, 3, &["10.0.0.1"]).await;
    let now = Timestamp::now();
    s.record_usage(UsageBatch {
        allowed: vec![
            seen(id, "10.0.0.1", 9, now.0, now.0),
            seen(theirs, "10.0.0.1", 1, now.0, now.0),
        ],
        refused: vec![
            seen(id, "192.0.2.7", 4, now.0 - 10, now.0 - 5),
            seen(id, "10.0.0.2", 1, now.0 - 10, now.0 - 10),
        ],
        // Let through by shadow mode: neither allowed nor refused.
        shadow: vec![seen(id, "192.0.2.8", 2, now.0 - 10, now.0 - 5)],
    })
    .await
    .unwrap();
    // Nothing is unused yet: everything was created or used after a day ago.
    let day_ago = Timestamp(now.0 - 86_400_000_000);
    let r = s.unused(day_ago, None).await.unwrap();
    assert!(r.entries.is_empty() && r.credentials.is_empty(), "{r:?}");
    // From a second in the future, what has not been used since.
    let later = Timestamp(now.0 + 1_000_000);
    let r = s.unused(later, Some(u)).await.unwrap();
    let ips: Vec<(u64, IpAddr)> = r.entries.iter().map(|e| (e.credential_id, e.ip)).collect();
    assert!(ips.contains(&(id, ip("10.0.0.1"))) && ips.contains(&(id, ip("10.0.0.2"))));
    assert!(ips.contains(&(idle, ip("10.0.0.1"))));
    assert!(!ips.iter().any(|(c, _)| *c == theirs), "another user's");
    let never = r.entries.iter().find(|e| e.ip == ip("10.0.0.2")).unwrap();
    // Refused (before it was listed, say) is no use of the entry.
    assert_eq!((never.last_seen, never.requests), (None, 0));
    let creds: Vec<u64> = r.credentials.iter().map(|c| c.credential_id).collect();
    assert_eq!(creds, [id, idle]);
    assert!(matches!(
        s.unused(later, Some(999)).await,
        Err(StoreError::NotFound("user"))
    ));

    let suggested = s.suggest(id).await.unwrap();
    let rows: Vec<_> = suggested
        .iter()
        .map(|s| (s.ip, s.allowed, s.shadow, s.refused, s.listed))
        .collect();
    assert_eq!(
        rows,
        [
            (ip("10.0.0.1"), 9, 0, 0, Some(IpStatus::Active)),
            (ip("192.0.2.7"), 0, 0, 4, None),
            (ip("192.0.2.8"), 0, 2, 0, None),
            (ip("10.0.0.2"), 0, 0, 1, Some(IpStatus::Active)),
        ]
    );
    // The refused report: refusals only, each saying whether it is listed now.
    let refused: Vec<_> = s
        .refused(Some(id))
        .await
        .unwrap()
        .addresses
        .iter()
        .map(|a| (a.ip, a.requests, a.listed))
        .collect();
    assert_eq!(
        refused,
        [
            (ip("192.0.2.7"), 4, None),
            (ip("10.0.0.2"), 1, Some(IpStatus::Active)),
        ]
    );
    assert!(matches!(
        s.suggest(9999).await,
        Err(StoreError::NotFound(_))
    ));
}

// ---- random interleavings --------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// A write through this gateway's API: committed, then caught up to.
    Api(usize, u8),
    /// A write by another process: the snapshot learns of it by polling.
    Other(usize, u8),
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, 0..7u8).prop_map(|(c, k)| Op::Api(c, k)),
        (0..4usize, 0..7u8).prop_map(|(c, k)| Op::Other(c, k)),
        Just(Op::Poll),
    ]
}

/// A change of kind `k` to a credential (some are refused; that must change nothing).
fn random_change(k: u8, n: usize) -> Change {
    match k {
        0 => add(&format!("10.3.{n}.{}", n % 7)),
        1 => Change::AddIp {
            ip: ip(&format!("10.4.{n}.1")),
            status: IpStatus::Inactive,
        },
        2 => Change::SetIpStatus {
            item: (n % 9) as u64 + 1,
            status: if n % 2 == 0 {
                IpStatus::Active
            } else {
                IpStatus::Inactive
            },
        },
        3 => Change::Wildcard(n % 2 == 0),
        4 => Change::Revoke,
        5 => Change::Mode(if n % 2 == 0 {
            Mode::Shadow
        } else {
            Mode::Enforce
        }),
        _ => add("10.0.0.1"),
    }
}

/// Runs `ops` and checks that after every step this gateway has caught up to, its
/// snapshot equals a fresh full load, and that it ends equal to the store.
async fn interleave(t: &TestStore, ops: &[Op]) {
    let ours = Arc::clone(&t.store);
    let other = t.another();
    let u = user(ours.as_ref()).await;
    let mut ids = Vec::new();
    for n in 0..4 {
        ids.push(active(ours.as_ref(), u, 10 + n, &["10.0.0.1"]).await.0);
    }
    let cell = Arc::new(SnapshotCell::new());
    let r = Refresher::new(
        Arc::clone(&ours),
        Arc::clone(&cell),
        Arc::new(Metrics::new()),
    );
    r.refresh().await.unwrap();
    // The writes between two polls run at once, beside a poll of their own: API writes
    // and their catch-ups, other processes' writes and polling race as they do in a
    // gateway. Each checked poll then runs alone, with nothing in flight.
    let mut batch: Vec<(usize, &Op)> = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        if !matches!(op, Op::Poll) {
            batch.push((n, op));
            if n + 1 < ops.len() {
                continue;
            }
        }
        let writes = batch.drain(..).map(|(n, op)| {
            let (ours, other, r, cell) = (&ours, &other, &r, &cell);
            let ids = &ids;
            async move {
                match op {
                    Op::Api(c, k) => {
                        if let Ok(done) = change(ours.as_ref(), ids[*c], random_change(*k, n)).await
                        {
                            r.catch_up(done.version).await.unwrap();
                            assert!(cell.load_full().unwrap().version() >= done.version);
                        }
                    }
                    Op::Other(c, k) => {
                        let _ = other
                            .change(Target::Id(ids[*c]), random_change(*k, n), MAX_IPS, &admin())
                            .await;
                    }
                    Op::Poll => {}
                }
            }
        });
        let racing_poll = async {
            r.refresh().await.unwrap();
        };
        futures_util::future::join(futures_util::future::join_all(writes), racing_poll).await;
        if matches!(op, Op::Poll) {
            r.refresh().await.unwrap();
            let fresh = ours.load().await.unwrap().snapshot;
            let snap = cell.load_full().unwrap();
            assert_eq!(snap.version(), fresh.version());
            assert_eq!(contents(&snap), contents(&fresh), "after step {n}: {op:?}");
        }
    }
    r.refresh().await.unwrap();
    let fresh = ours.load().await.unwrap().snapshot;
    let snap = cell.load_full().unwrap();
    assert_eq!(contents(&snap), contents(&fresh));
    assert_eq!(snap.active_ip_count(), fresh.active_ip_count());
    assert_eq!(snap.credential_count(), fresh.credential_count());
}

fn run_interleavings(make: impl Fn() -> Option<TestStore>, cases: u32) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in prop::collection::vec(op(), 1..40))| {
        let Some(t) = make() else { return Ok(()) };
        runtime.block_on(interleave(&t, &ops));
    });
}

#[test]
fn sqlite_random_interleavings_end_equal_to_the_store() {
    run_interleavings(|| Some(TestStore::sqlite(KEEP)), 16);
}

#[test]
fn postgres_random_interleavings_end_equal_to_the_store() {
    if Postgres::shared().is_none() {
        return;
    }
    run_interleavings(|| TestStore::postgres(KEEP), 16);
}

async fn console_links_are_spent_once_in_time_and_audited(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, _) = active(s, u, 1, &["10.0.0.1"]).await;
    let link = |hash: &str, ttl: Duration, credential_id: u64| NewConsoleLink {
        credential_id,
        token_hash: hash.into(),
        expires: Timestamp::now().plus(ttl),
    };
    let hour = Duration::from_secs(3600);
    assert!(matches!(
        s.mint_console_link(link("x", hour, 9999), &admin()).await,
        Err(StoreError::NotFound("credential"))
    ));
    let before = version(s).await;
    s.mint_console_link(link("a", hour, id), &admin())
        .await
        .unwrap();
    assert_eq!(version(s).await, before, "no list changed: no new version");
    // Two processes spend the same link at once: exactly one gets it.
    let other = t.another();
    let from = ip("192.0.2.7");
    let (one, two) = tokio::join!(
        s.use_console_link("a".into(), from),
        other.use_console_link("a".into(), from)
    );
    let spent: Vec<_> = [one.unwrap(), two.unwrap()].into_iter().flatten().collect();
    assert_eq!(spent.len(), 1, "{spent:?}");
    assert_eq!(spent[0].credential_id, id);
    assert_eq!(spent[0].user_id, u);
    assert!(s
        .use_console_link("a".into(), from)
        .await
        .unwrap()
        .is_none());
    assert!(s
        .use_console_link("never".into(), from)
        .await
        .unwrap()
        .is_none());
    // Expired.
    s.mint_console_link(link("b", Duration::ZERO, id), &admin())
        .await
        .unwrap();
    assert!(s
        .use_console_link("b".into(), from)
        .await
        .unwrap()
        .is_none());
    // Its credential revoked since it was minted.
    s.mint_console_link(link("c", hour, id), &admin())
        .await
        .unwrap();
    change(s, id, Change::Revoke).await.unwrap();
    assert!(s
        .use_console_link("c".into(), from)
        .await
        .unwrap()
        .is_none());

    let audit = s.audit(Some(id), Page::all()).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| **a == "console_link.mint")
            .count(),
        3
    );
    let used: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "console_link.use")
        .collect();
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].actor, "console-link");
    assert_eq!(used[0].actor_ip.as_deref(), Some("192.0.2.7"));
}

/// A write answers with the record it built from what it wrote (not read back): it must
/// be exactly what a read finds afterwards, for every kind of change.
async fn what_a_write_answers_is_what_is_stored(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let (id, key) = pending(s, u, 1).await;
    // Each answer against a read right after it.
    let check = |what: &'static str, answer: store::Changed| async move {
        if let Some(e) = &answer.entry {
            let stored = s.ip(id, e.id).await.unwrap();
            assert_eq!(as_json(e), as_json(&stored), "{what}: entry");
        }
        let stored = s.credential(id).await.unwrap();
        assert_eq!(as_json(&answer.credential), as_json(&stored), "{what}");
        answer
    };
    let registered = s
        .change(
            Target::Key(key),
            register(&["10.0.0.1", "10.0.0.2"]),
            MAX_IPS,
            &admin(),
        )
        .await
        .unwrap();
    check("register", registered.value).await;
    let added = check("add", change(s, id, add("10.0.0.3")).await.unwrap().value).await;
    let mapped = Change::AddIp {
        ip: ip("::ffff:10.0.0.4"),
        status: IpStatus::Inactive,
    };
    check("add mapped", change(s, id, mapped).await.unwrap().value).await;
    let item = added.entry.unwrap().id;
    let set = Change::SetIpStatus {
        item,
        status: IpStatus::Inactive,
    };
    check("set status", change(s, id, set).await.unwrap().value).await;
    for (what, c) in [
        ("wildcard", Change::Wildcard(true)),
        ("mode", Change::Mode(store::Mode::Shadow)),
        ("revoke", Change::Revoke),
    ] {
        check(what, change(s, id, c).await.unwrap().value).await;
    }
}

async fn a_new_credential_is_answered_as_stored(t: TestStore) {
    let s = t.store.as_ref();
    let u = user(s).await;
    let created = s
        .create_credential(
            NewCredential {
                user_id: u,
                key: KeyHash::of(b"answered-as-stored"),
                description: Some("d".into()),
                expiry: Timestamp::now().plus(std::time::Duration::from_secs(60)),
            },
            &admin(),
        )
        .await
        .unwrap()
        .value;
    assert_eq!(
        as_json(&created),
        as_json(&s.credential(created.id).await.unwrap())
    );
}
