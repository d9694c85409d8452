//! The control plane's side of the snapshot, at 1,000,000 credentials with 2 addresses
//! each:
//!
//! - `build/…`: `SnapshotBuilder` from rows already read (what the poller does after
//!   its store query). Target: < 1 s. Beside a std `HashMap` built the obvious way.
//! - `drop/…`: freeing a snapshot of that size, which happens once per rebuild
//!   wherever the last reference to the old one goes.
//! - `apply/…`: one changed credential applied to a snapshot of that size (what a
//!   delta from the store costs): `Snapshot::with_changes` copies the one shard of 256
//!   the credential lives in. Target: <= 2 ms p99. Beside a flat map copied whole (the
//!   copy-on-write a single map would need).
//! - `swap/…`: `SnapshotCell::publish` of a prebuilt `Arc` and `load()` beside it, also
//!   while another thread publishes; beside an `RwLock<Arc<Snapshot>>`.
//! - memory: criterion cannot measure it, so before the timings a child process per
//!   measurement builds the snapshot once and prints its resident size per credential
//!   (VmRSS before and after, VmHWM for the peak). Target: < 250 bytes/credential.
//! - `IPGATE_BENCH_STORE=1` also fills a real SQLite store with the same credentials
//!   and times `SqliteStore::load` once (the fill takes tens of seconds).

mod fixture;

use criterion::{criterion_group, BatchSize, BenchmarkId, Criterion, SamplingMode};
use ipgate::acl::{KeyHash, Snapshot, SnapshotCell, SnapshotCredential};
use ipgate::config::SqliteConfig;
use ipgate::store::{SqliteStore, Store};
use std::collections::HashMap;
use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

const CREDENTIALS: u64 = 1_000_000;
const IPS_PER_CREDENTIAL: u64 = 2;
const CHILD_ENV: &str = "IPGATE_BENCH_CHILD";
const DB_ENV: &str = "IPGATE_BENCH_DB";

/// The baseline: what a first version would keep per credential, in a std `HashMap`
/// (SipHash) grown as it goes: (id, user id, addresses in a `Vec`).
type NaiveMap = HashMap<KeyHash, (u64, u64, Vec<IpAddr>)>;

fn naive_build(rows: &[fixture::Row]) -> NaiveMap {
    let mut map = HashMap::new();
    for row in rows {
        map.insert(row.key, (row.id, row.user_id, row.ips.clone()));
    }
    map
}

// ---- memory, in child processes so each starts from a clean heap ----

/// A field of /proc/self/status in bytes (the file says kB).
fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches(" kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"))
}

/// Resets VmHWM to the current VmRSS (Linux >= 4.0), so the peak is the build's own.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Measures `build` and prints one line: `{label} memory: N bytes/credential at …`.
fn measure_memory<T>(label: &str, n: u64, build: impl FnOnce() -> T) -> T {
    let before = status_bytes("VmRSS");
    let peak_reset = reset_peak();
    let started = Instant::now();
    let built = build();
    let took = started.elapsed();
    let after = status_bytes("VmRSS");
    let peak = status_bytes("VmHWM");
    let per = |bytes: u64| bytes.saturating_sub(before) / n;
    println!(
        "{label} memory: {} bytes/credential at {n} credentials \
         ({IPS_PER_CREDENTIAL} addresses each; resident +{} MiB; peak during build {} \
         bytes/credential{}; built in {:.2} s)",
        per(after),
        after.saturating_sub(before) >> 20,
        per(peak),
        if peak_reset { "" } else { ", peak not reset" },
        took.as_secs_f64(),
    );
    built
}

fn memory_child(kind: &str) {
    let rows = fixture::rows(CREDENTIALS, IPS_PER_CREDENTIAL);
    match kind {
        "snapshot" => {
            let s = measure_memory("snapshot", CREDENTIALS, || fixture::build(&rows, 1));
            assert_eq!(s.credential_count() as u64, CREDENTIALS);
            // Where the bytes go: the hash table holds (KeyHash, SnapshotCredential)
            // in a power-of-two number of buckets; each IpSet is a heap slice of u128.
            println!(
                "snapshot layout: table entry {} bytes (KeyHash {} + SnapshotCredential {}), \
                 IpSet of {IPS_PER_CREDENTIAL} addresses {} bytes on the heap",
                std::mem::size_of::<(KeyHash, SnapshotCredential)>(),
                std::mem::size_of::<KeyHash>(),
                std::mem::size_of::<SnapshotCredential>(),
                IPS_PER_CREDENTIAL as usize * std::mem::size_of::<u128>(),
            );
        }
        "baseline" => {
            let m = measure_memory("baseline (std HashMap, SipHash, Vec)", CREDENTIALS, || {
                naive_build(&rows)
            });
            assert_eq!(m.len() as u64, CREDENTIALS);
        }
        other => panic!("unknown {CHILD_ENV}={other}"),
    }
}

/// Fills a real store by writing its tables directly (a million `ipgate admin` calls
/// would take hours). Its own process, so its garbage does not flatter the next one.
fn store_fill_child(path: &Path) {
    block_on(open_store(path).load()).expect("create the store");
    let rows = fixture::rows(CREDENTIALS, IPS_PER_CREDENTIAL);
    let started = Instant::now();
    fill_store(path, &rows).expect("fill the store");
    let addresses: usize = rows.iter().map(|r| distinct(&r.ips).len()).sum();
    println!(
        "store fill: {CREDENTIALS} credentials, {addresses} addresses in {:.1} s \
         (bench setup, not ipgate)",
        started.elapsed().as_secs_f64()
    );
}

/// Times `SqliteStore::load` on the filled store: the poller's real path.
fn store_load_child(path: &Path) {
    let store = open_store(path);
    let loaded = measure_memory("store load", CREDENTIALS, || {
        block_on(store.load()).expect("load snapshot")
    });
    assert_eq!(loaded.snapshot.credential_count() as u64, CREDENTIALS);
}

fn open_store(path: &Path) -> SqliteStore {
    SqliteStore::new(SqliteConfig {
        path: path.to_path_buf(),
        keep_changes: 100_000,
    })
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

/// A credential's addresses as the store keeps them: each once.
fn distinct(ips: &[IpAddr]) -> Vec<IpAddr> {
    let mut ips = ips.to_vec();
    ips.sort_unstable();
    ips.dedup();
    ips
}

fn fill_store(path: &Path, rows: &[fixture::Row]) -> rusqlite::Result<()> {
    let mut conn = rusqlite::Connection::open(path)?;
    // Bulk load: no journal, no fsync. ipgate's own writes use WAL + FULL.
    conn.pragma_update(None, "journal_mode", "DELETE")?;
    conn.pragma_update(None, "synchronous", "OFF")?;
    conn.pragma_update(None, "cache_size", -262_144)?;
    let now = ipgate::store::Timestamp::now().0;
    let tx = conn.transaction()?;
    {
        let users = rows.last().map_or(0, |r| r.user_id);
        let mut user = tx.prepare("INSERT INTO users (id, name, created) VALUES (?1, NULL, ?2)")?;
        for id in 1..=users {
            user.execute(rusqlite::params![id, now])?;
        }
        let mut credential = tx.prepare(
            "INSERT INTO credentials (id, user_id, key_hash, status, created, updated) \
             VALUES (?1, ?2, ?3, 'ACTIVE', ?4, ?4)",
        )?;
        let mut ip = tx.prepare(
            "INSERT INTO permitted_ips (credential_id, ip, status, created, updated) \
             VALUES (?1, ?2, 'ACTIVE', ?3, ?3)",
        )?;
        for row in rows {
            credential.execute(rusqlite::params![row.id, row.user_id, &row.key.0[..], now])?;
            for addr in distinct(&row.ips) {
                ip.execute(rusqlite::params![row.id, addr.to_string(), now])?;
            }
        }
    }
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE name = 'change_version'",
        [],
    )?;
    tx.commit()?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    Ok(())
}

/// Runs the memory (and optionally store) measurements, each in a fresh process.
fn run_children() {
    let exe = std::env::current_exe().expect("current exe");
    let child = |kind: &str, db: Option<&Path>| {
        let mut cmd = Command::new(&exe);
        cmd.env(CHILD_ENV, kind);
        if let Some(db) = db {
            cmd.env(DB_ENV, db);
        }
        let status = cmd.status().expect("start measurement child");
        assert!(status.success(), "{kind} measurement failed: {status}");
    };
    child("snapshot", None);
    child("baseline", None);
    if std::env::var_os("IPGATE_BENCH_STORE").is_some_and(|v| v == "1") {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("ipgate.db");
        child("store-fill", Some(&db));
        child("store-load", Some(&db));
    } else {
        println!("store load: skipped (set IPGATE_BENCH_STORE=1 to run it)");
    }
}

// ---- timings ----

fn bench_build(c: &mut Criterion) {
    let rows = fixture::rows(CREDENTIALS, IPS_PER_CREDENTIAL);
    let name = format!("{CREDENTIALS}x{IPS_PER_CREDENTIAL}");
    let mut group = c.benchmark_group("build");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function(BenchmarkId::new("snapshot_builder", &name), |b| {
        b.iter_with_large_drop(|| fixture::build(&rows, 1))
    });
    group.bench_function(BenchmarkId::new("baseline_std_hashmap", &name), |b| {
        b.iter_with_large_drop(|| naive_build(&rows))
    });
    group.finish();

    let snapshot = fixture::build(&rows, 1);
    let changed = rows[rows.len() / 2].key;
    let credential = snapshot.get(&changed).expect("in the snapshot").clone();
    let mut group = c.benchmark_group("apply");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group.bench_function(BenchmarkId::new("one_change_sharded", &name), |b| {
        b.iter_with_large_drop(|| snapshot.with_changes(2, [(changed, credential.clone())]))
    });
    let flat: HashMap<KeyHash, SnapshotCredential> =
        snapshot.iter().map(|(k, c)| (*k, c.clone())).collect();
    group.bench_function(BenchmarkId::new("baseline_flat_map_copy", &name), |b| {
        b.iter_with_large_drop(|| {
            let mut next = flat.clone();
            next.insert(changed, credential.clone());
            next
        })
    });
    group.finish();
    drop((snapshot, flat));

    let mut group = c.benchmark_group("drop");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        // Warm-up and measurement count only the timed drop, while every iteration
        // also pays an untimed build: keep both tiny so it is one build per sample.
        .warm_up_time(Duration::from_millis(1))
        .measurement_time(Duration::from_millis(10));
    group.bench_function(BenchmarkId::new("snapshot", &name), |b| {
        b.iter_batched(|| fixture::build(&rows, 1), drop, BatchSize::PerIteration)
    });
    group.finish();
}

fn bench_swap(c: &mut Criterion) {
    // The swap does not depend on the snapshot's size as long as the old one stays
    // referenced (both do here); freeing it is `drop` above.
    let small = fixture::rows(10, IPS_PER_CREDENTIAL);
    let a = Arc::new(fixture::build(&small, 1));
    let b = Arc::new(fixture::build(&small, 2));
    let cell = SnapshotCell::new();
    assert!(cell.publish(Arc::clone(&a)).is_none());
    let lock = RwLock::new(Arc::clone(&a));

    let mut group = c.benchmark_group("swap");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    let mut flip = false;
    let mut next = move || {
        flip = !flip;
        Arc::clone(if flip { &b } else { &a })
    };
    group.bench_function("cell_publish", |bench| {
        bench.iter(|| cell.publish(black_box(next())))
    });
    group.bench_function("cell_load", |bench| {
        bench.iter(|| cell.load().as_ref().map(|s| s.version()))
    });
    group.bench_function("cell_load_full", |bench| {
        bench.iter(|| cell.load_full().map(|s| s.version()))
    });
    group.bench_function("baseline_rwlock_publish", |bench| {
        bench.iter(|| *lock.write().expect("lock") = black_box(next()))
    });
    group.bench_function("baseline_rwlock_load", |bench| {
        bench.iter(|| lock.read().expect("lock").version())
    });

    // A reader while another thread publishes as fast as it can: the worst case for
    // both designs (a real poller publishes at most once per interval).
    while_publishing(
        || drop(cell.publish(current(&cell))),
        || {
            group.bench_function("cell_load_while_publishing", |bench| {
                bench.iter(|| cell.load().as_ref().map(|s| s.version()))
            });
        },
    );
    while_publishing(
        || {
            let s = Arc::clone(&lock.read().expect("lock"));
            *lock.write().expect("lock") = s;
        },
        || {
            group.bench_function("baseline_rwlock_load_while_publishing", |bench| {
                bench.iter(|| lock.read().expect("lock").version())
            });
        },
    );
    group.finish();
}

/// Runs `bench` while another thread calls `publish` in a loop.
fn while_publishing(publish: impl Fn() + Sync, bench: impl FnOnce()) {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                publish();
            }
        });
        bench();
        stop.store(true, Ordering::Relaxed);
    });
}

/// The snapshot currently in `cell`, for the publishing thread to publish again.
fn current(cell: &SnapshotCell) -> Arc<Snapshot> {
    cell.load_full().expect("published")
}

criterion_group!(benches, bench_build, bench_swap);

fn main() {
    if let Ok(kind) = std::env::var(CHILD_ENV) {
        let db = || std::path::PathBuf::from(std::env::var_os(DB_ENV).expect(DB_ENV));
        match kind.as_str() {
            "store-fill" => store_fill_child(&db()),
            "store-load" => store_load_child(&db()),
            other => memory_child(other),
        }
        return;
    }
    // Only when benchmarking for real: `cargo test --benches` runs this without
    // `--bench` (criterion then only checks each bench once), `--list` only lists.
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| a == "--list") {
        run_children();
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
