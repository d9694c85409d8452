//! What usage recording costs the store (SPEC section 9): one gateway's flush at
//! 10,000 ACTIVE entries that were all used in the last minute, written to SQLite and
//! to PostgreSQL (started by this program in a temp folder, when installed), and the
//! worst flush an attacker can cause: a full worker tally of refused addresses for one
//! stolen key.
//!
//! ```text
//! cargo bench --bench usage
//! ```
//!
//! A gateway writes at most one row per used entry per `insight.flush_interval` (a
//! minute by default), so at 10,000 used entries that is 10,000 rows a minute per
//! gateway, in one transaction; the figure that matters is how long that transaction
//! takes and holds the store. The hot-path side is in `benches/decision.rs`
//! (`gatekeeper_recording` beside `gatekeeper_recording_off`).

#[path = "../tests/common/pg.rs"]
mod pg;

use ipgate::acl::{Decision, Identity};
use ipgate::config::Config;
use ipgate::insight::{Recorder, MAX_PER_WORKER};
use ipgate::store::{self, Sighting, Store, Timestamp, UsageBatch};
use pg::Postgres;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ENTRIES: u64 = 10_000;
const ROUNDS: usize = 5;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "usage bench on {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    drain();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = open(&format!(
        "[store]\nurl = \"sqlite://{}\"\n",
        dir.path().join("ipgate.db").display()
    ));
    runtime.block_on(flushes("sqlite", sqlite.as_ref()));
    if !Postgres::available() {
        println!("postgres: not installed; only SQLite measured");
        return;
    }
    let pg = Postgres::start_with(&["fsync=on"]);
    let db = pg.database();
    let postgres = open(&format!(
        "[store]\nurl = \"{}\"\npool_size = 2\ntimeout = \"30s\"\n",
        pg.url(&db)
    ));
    runtime.block_on(flushes("postgres", postgres.as_ref()));
}

fn open(config: &str) -> Arc<dyn Store> {
    let config = Config::parse(config, std::path::Path::new("/")).unwrap();
    store::open(&config.store).unwrap()
}

fn address(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i as u32))
}

/// One flush's batch: `n` credentials, one address each, used `requests` times.
fn batch(n: u64, requests: u64) -> Vec<Sighting> {
    let now = Timestamp::now();
    (1..=n)
        .map(|i| Sighting {
            credential_id: i,
            ip: address(i),
            requests,
            first_seen: now,
            last_seen: now,
        })
        .collect()
}

/// The in-memory side of a flush: counting 10,000 addresses and draining them.
fn drain() {
    let recorder = Recorder::new(true);
    let who = |i: u64| Identity {
        credential_id: i,
        user_id: 1,
    };
    for round in 0..ROUNDS {
        let started = Instant::now();
        for i in 1..=ENTRIES {
            recorder.note(Decision::Allow(who(i)), Some(address(i)));
        }
        let counted = started.elapsed();
        let started = Instant::now();
        let drained = recorder.drain();
        let took = started.elapsed();
        assert_eq!(drained.allowed.len() as u64, ENTRIES);
        println!(
            "memory  round {round}: {ENTRIES} new addresses counted in {counted:?} \
             ({:.0} ns each), drained in {took:?}",
            counted.as_nanos() as f64 / ENTRIES as f64
        );
    }
}

async fn flushes(name: &str, store: &dyn Store) {
    for round in 0..ROUNDS {
        let allowed = batch(ENTRIES, 60);
        let started = Instant::now();
        store
            .record_usage(UsageBatch {
                allowed,
                ..UsageBatch::default()
            })
            .await
            .unwrap();
        let took = started.elapsed();
        println!(
            "{name:8} round {round}: {ENTRIES} usage rows ({}) in {took:?}: {:.1}% of a \
             one-minute flush interval",
            if round == 0 { "inserted" } else { "updated" },
            100.0 * took.as_secs_f64() / Duration::from_secs(60).as_secs_f64()
        );
    }
    // An attacker rotating through addresses with one stolen key fills a worker's
    // tally: one flush then carries MAX_PER_WORKER refused addresses of one credential,
    // and the store keeps the most recent 256.
    let now = Timestamp::now();
    let refused: Vec<Sighting> = (0..MAX_PER_WORKER as u64)
        .map(|i| Sighting {
            credential_id: ENTRIES + 1,
            ip: address(1_000_000 + i),
            requests: 1,
            first_seen: now,
            last_seen: now,
        })
        .collect();
    let started = Instant::now();
    store
        .record_usage(UsageBatch {
            refused,
            ..UsageBatch::default()
        })
        .await
        .unwrap();
    let took = started.elapsed();
    println!(
        "{name:8} worst flush: {} refused addresses of one credential in {took:?}",
        MAX_PER_WORKER
    );
}
