//! The per-request decision, at 10, 10,000 and 1,000,000 credentials with 1 and 20
//! addresses each, for an allowed request and for a known key from an address that is
//! not on its list.
//!
//! - `check/…`: the full decision as the hot path runs it: a `HeaderMap` carrying the
//!   key -> `Gatekeeper::check` (header read, SHA-256 of the key, one snapshot load,
//!   the lookup). Target: < 300 ns at 1M credentials.
//! - `lookup/…`: `acl::decide` alone with a precomputed `KeyHash`. Target: < 100 ns at
//!   1M credentials. Beside it `sharded_get` (the snapshot's 256-shard map, as
//!   `decide` uses it) and `baseline_flat_map_get` (one flat map with the same hasher
//!   and entries, the layout before deltas): the cost of sharding on the hot path.
//! - `parts/…`: the pieces of `check`, to show where its time goes.
//! - `access_line/…`: the access line every request writes (plain and JSON, into the
//!   log writer's queue), beside `baseline_tracing_info`: the same fields through
//!   tracing's own formatter; and `request_id_make`, the id of a request that brought
//!   none.
//!
//! Each beside naive baselines (see `Baselines`). Requests take 4,096 probe keys spread
//! over the whole set in turn, so at 1M credentials a lookup is not always served by
//! the same few cache lines; but those 4,096 entries (about 1 MB) stay in the L3, so no
//! row here waits on DRAM as a lookup in a large fleet does. `IPGATE_BENCH_LOOKUP`
//! (below, run by `benches/lookup_cache.sh`) counts that case under cachegrind.
//!
//! Building 1M credentials takes seconds, so every world is built once per size, outside
//! the timed loops. `IPGATE_BENCH_SIZES=10,10000` limits the sizes built (criterion's
//! own filter only skips the timing, not the building).

mod fixture;

use criterion::{criterion_group, BenchmarkId, Criterion};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use ipgate::acl::{
    decide, CredentialState, Decision, DigestHasher, KeyHash, Reason, Snapshot, SnapshotCell,
    SnapshotCredential,
};
use ipgate::config::AuthConfig;
use ipgate::gate::{unix_now, Gatekeeper};
use ipgate::head;
use ipgate::insight::Recorder;
use ipgate::request_id::X_REQUEST_ID;
use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

const SIZES: [u64; 3] = [10, 10_000, 1_000_000];
const IPS_PER_CREDENTIAL: [u64; 2] = [1, 20];
const PROBES: usize = 4096;
/// The linear-scan baseline is only run where it finishes in reasonable time.
const SCAN_MAX: u64 = 10_000;
const KEY_HEADER: &str = "x-bunq-client-authentication";

/// Naive ways to answer the same question, so ipgate's numbers mean something.
struct Baselines {
    /// A gateway that keeps the plain keys in a std `HashMap` (SipHash, the default
    /// hasher) and checks the address with `Vec::contains`: no digest, no snapshot cell,
    /// no expiry or state. What "just look it up" costs; ipgate pays SHA-256 and an
    /// atomic load on top, for never holding a plain key.
    by_plain_key: HashMap<String, Vec<IpAddr>>,
    /// ipgate's own key type, in a std `HashMap` with SipHash instead of the snapshot's
    /// pass-through `DigestHasher`: what that hasher saves.
    by_digest_siphash: HashMap<KeyHash, Vec<IpAddr>>,
    /// The first version anyone writes: a list of (key, addresses as text) scanned in
    /// order, the client address formatted to compare. Only up to `SCAN_MAX`.
    scan: Option<Vec<(String, Vec<String>)>>,
    /// The snapshot's own entries in one flat map with its own hasher: the layout
    /// before the snapshot was split into shards.
    flat: FlatMap,
}

type FlatMap = HashMap<KeyHash, SnapshotCredential, BuildHasherDefault<DigestHasher>>;

/// The same test `decide` makes, on one entry.
fn admits(c: Option<&SnapshotCredential>, ip: &IpAddr) -> bool {
    c.is_some_and(|c| {
        c.state == CredentialState::Active && (c.wildcard || c.active_ips.contains(ip))
    })
}

/// One request as the benches replay it.
struct Probe {
    headers: HeaderMap,
    key: String,
    hash: KeyHash,
    /// An address on the probed credential's list (position varies with the probe).
    allowed: IpAddr,
}

struct World {
    name: String,
    gate: Gatekeeper,
    snapshot: Arc<Snapshot>,
    baselines: Baselines,
    probes: Vec<Probe>,
}

fn auth() -> AuthConfig {
    AuthConfig {
        header: HeaderName::from_static(KEY_HEADER),
        bearer: false,
        registration_window: Duration::from_secs(4 * 3600),
        forward_key: false,
        response_signing_key: None,
    }
}

/// Headers as a typical API client sends them, the key among them.
fn request_headers(key: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("api.example.com"));
    h.insert("user-agent", HeaderValue::from_static("bench-client/1.0"));
    h.insert("accept", HeaderValue::from_static("application/json"));
    h.insert(
        KEY_HEADER,
        HeaderValue::from_str(key).expect("key is ASCII"),
    );
    h
}

fn world(n: u64, ips: u64) -> World {
    let rows = fixture::rows(n, ips);
    let snapshot = Arc::new(fixture::build(&rows, 1));
    let cell = Arc::new(SnapshotCell::new());
    assert!(cell.publish(Arc::clone(&snapshot)).is_none());
    let gate = Gatekeeper {
        cell,
        auth: auth(),
        max_staleness: Duration::ZERO,
    };

    let by_digest_siphash = rows.iter().map(|r| (r.key, r.ips.clone())).collect();
    let mut flat =
        FlatMap::with_capacity_and_hasher(snapshot.credential_count(), Default::default());
    flat.extend(snapshot.iter().map(|(k, c)| (*k, c.clone())));
    let scan = (n <= SCAN_MAX).then(|| {
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let ips = r.ips.iter().map(IpAddr::to_string).collect();
                (fixture::key(i as u64), ips)
            })
            .collect()
    });
    let by_plain_key = rows
        .into_iter()
        .enumerate()
        .map(|(i, r)| (fixture::key(i as u64), r.ips))
        .collect();

    let probes = fixture::probes(n, PROBES)
        .into_iter()
        .enumerate()
        .map(|(p, i)| {
            let key = fixture::key(i);
            Probe {
                headers: request_headers(&key),
                hash: KeyHash::of(key.as_bytes()),
                allowed: fixture::address(i, p as u64 % ips),
                key,
            }
        })
        .collect();

    World {
        name: format!("{n}x{ips}"),
        gate,
        snapshot,
        baselines: Baselines {
            by_plain_key,
            by_digest_siphash,
            scan,
            flat,
        },
        probes,
    }
}

fn plain_key_check(map: &HashMap<String, Vec<IpAddr>>, key: &str, ip: IpAddr) -> bool {
    map.get(key).is_some_and(|ips| ips.contains(&ip))
}

fn digest_siphash_check(map: &HashMap<KeyHash, Vec<IpAddr>>, key: &KeyHash, ip: IpAddr) -> bool {
    map.get(key).is_some_and(|ips| ips.contains(&ip))
}

fn scan_check(list: &[(String, Vec<String>)], key: &str, ip: IpAddr) -> bool {
    let ip = ip.to_string();
    list.iter()
        .find(|(k, _)| k == key)
        .is_some_and(|(_, ips)| ips.contains(&ip))
}

/// The key as a naive gateway reads it: the header's value, trimmed.
fn header_key(headers: &HeaderMap) -> &str {
    headers
        .get(KEY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map_or("", str::trim)
}

#[derive(Clone, Copy)]
enum Case {
    Allowed,
    RefusedIp,
}

impl Case {
    const ALL: [Case; 2] = [Case::Allowed, Case::RefusedIp];

    fn name(self) -> &'static str {
        match self {
            Case::Allowed => "allowed",
            Case::RefusedIp => "refused_ip",
        }
    }

    fn ip(self, probe: &Probe) -> IpAddr {
        match self {
            Case::Allowed => probe.allowed,
            Case::RefusedIp => fixture::REFUSED,
        }
    }
}

/// Makes sure every bench measures the answer it claims to, before timing anything.
fn verify(w: &World, now: i64) {
    for probe in w.probes.iter().take(64) {
        for case in Case::ALL {
            let ip = case.ip(probe);
            let allowed = matches!(case, Case::Allowed);
            let want = if allowed {
                "allow"
            } else {
                Reason::IpNotActive.label()
            };
            let got = |d: Decision| match d {
                Decision::Allow(_) => "allow",
                Decision::Deny(r, _) | Decision::Shadow(_, r) => r.label(),
            };
            assert_eq!(got(w.gate.check(&probe.headers, Some(ip))), want);
            let lookup = decide(
                Some(&w.snapshot),
                false,
                Some(&probe.hash),
                Some(ip),
                || now,
            );
            assert_eq!(got(lookup), want);
            let b = &w.baselines;
            assert_eq!(plain_key_check(&b.by_plain_key, &probe.key, ip), allowed);
            assert_eq!(
                digest_siphash_check(&b.by_digest_siphash, &probe.hash, ip),
                allowed
            );
            if let Some(scan) = &b.scan {
                assert_eq!(scan_check(scan, &probe.key, ip), allowed);
            }
            assert_eq!(admits(w.snapshot.get(&probe.hash), &ip), allowed);
            assert_eq!(admits(b.flat.get(&probe.hash), &ip), allowed);
        }
    }
}

/// Runs `f` on the probes in turn, one per iteration.
fn rotate<'a, T: 'a, F: FnMut(&'a Probe) -> T + 'a>(
    probes: &'a [Probe],
    mut f: F,
) -> impl FnMut() -> T + 'a {
    let mut next = 0;
    move || {
        next = (next + 1) % probes.len();
        f(&probes[next])
    }
}

fn bench_world(c: &mut Criterion, w: &World) {
    let now = unix_now();
    verify(w, now);
    let b = &w.baselines;

    let mut group = c.benchmark_group(format!("check/{}", w.name));
    for case in Case::ALL {
        let id = |f: &str| BenchmarkId::new(f, case.name());
        group.bench_function(id("gatekeeper"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                w.gate
                    .check(black_box(&p.headers), black_box(Some(case.ip(p))))
            }))
        });
        // What usage recording adds to a request (SPEC section 9: within 3%), on and
        // off in the same run: the off recorder is what `insight.record_usage = false`
        // runs.
        for (name, recorder) in [
            ("gatekeeper_recording", Recorder::new(true)),
            ("gatekeeper_recording_off", Recorder::new(false)),
        ] {
            group.bench_function(id(name), |bench| {
                bench.iter(rotate(&w.probes, |p| {
                    let ip = Some(case.ip(p));
                    let d = w.gate.check(black_box(&p.headers), black_box(ip));
                    recorder.note(d, ip);
                    d
                }))
            });
        }
        group.bench_function(id("baseline_plain_key_siphash"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                let key = header_key(black_box(&p.headers));
                plain_key_check(&b.by_plain_key, key, black_box(case.ip(p)))
            }))
        });
        if let Some(scan) = &b.scan {
            group.bench_function(id("baseline_vec_scan"), |bench| {
                bench.iter(rotate(&w.probes, |p| {
                    let key = header_key(black_box(&p.headers));
                    scan_check(scan, key, black_box(case.ip(p)))
                }))
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group(format!("lookup/{}", w.name));
    for case in Case::ALL {
        let id = |f: &str| BenchmarkId::new(f, case.name());
        group.bench_function(id("decide"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                decide(
                    Some(&w.snapshot),
                    false,
                    Some(black_box(&p.hash)),
                    Some(black_box(case.ip(p))),
                    || now,
                )
            }))
        });
        group.bench_function(id("sharded_get"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                admits(w.snapshot.get(black_box(&p.hash)), &black_box(case.ip(p)))
            }))
        });
        group.bench_function(id("baseline_flat_map_get"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                admits(b.flat.get(black_box(&p.hash)), &black_box(case.ip(p)))
            }))
        });
        group.bench_function(id("baseline_plain_key_siphash"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                plain_key_check(&b.by_plain_key, black_box(&p.key), black_box(case.ip(p)))
            }))
        });
        group.bench_function(id("baseline_digest_siphash"), |bench| {
            bench.iter(rotate(&w.probes, |p| {
                digest_siphash_check(
                    &b.by_digest_siphash,
                    black_box(&p.hash),
                    black_box(case.ip(p)),
                )
            }))
        });
        if let Some(scan) = &b.scan {
            group.bench_function(id("baseline_vec_scan"), |bench| {
                bench.iter(rotate(&w.probes, |p| {
                    scan_check(scan, black_box(&p.key), black_box(case.ip(p)))
                }))
            });
        }
    }
    group.finish();
}

/// The pieces `Gatekeeper::check` is made of, measured apart (they do not depend on
/// the number of credentials, except the load's cache behaviour, which `lookup` shows).
fn bench_parts(c: &mut Criterion, w: &World) {
    let auth = auth();
    let mut group = c.benchmark_group("parts");
    // What the front door reads by name: the key's and the request id's lines, in one
    // pass over the head.
    group.bench_function("key_and_id_lines_from_headers", |bench| {
        bench.iter(rotate(&w.probes, |p| {
            head::two(black_box(&p.headers), &auth.header, &X_REQUEST_ID)
        }))
    });
    // The configured header is a custom name, which `HeaderMap` hashes byte by byte;
    // a standard name such as `Authorization` is hashed by its index. Same map for both.
    let mut headers = w.probes[0].headers.clone();
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer ipg_x"),
    );
    group.bench_function("header_map_get_custom_name", |bench| {
        bench.iter(|| black_box(&headers).get(&auth.header).is_some())
    });
    group.bench_function("header_map_get_authorization", |bench| {
        bench.iter(|| {
            black_box(&headers)
                .get(http::header::AUTHORIZATION)
                .is_some()
        })
    });
    group.bench_function("sha256_of_key", |bench| {
        bench.iter(rotate(&w.probes, |p| {
            KeyHash::of(black_box(p.key.as_bytes()))
        }))
    });
    // Keys are `ipg_` + 64 hex digits = 68 bytes: two SHA-256 blocks. Input of at most
    // 55 bytes fits one block; this shows what a shorter key encoding would save.
    group.bench_function("sha256_of_55_bytes", |bench| {
        bench.iter(rotate(&w.probes, |p| {
            KeyHash::of(black_box(&p.key.as_bytes()[..55]))
        }))
    });
    group.bench_function("snapshot_cell_load", |bench| {
        bench.iter(|| w.gate.cell.load().as_ref().map(|s| s.version()))
    });
    group.bench_function("is_stale_off", |bench| {
        bench.iter(|| w.gate.cell.is_stale(black_box(Duration::ZERO)))
    });
    group.bench_function("unix_now", |bench| bench.iter(unix_now));
    group.finish();
}

/// The access line and the request id: per request, whatever the number of credentials.
fn bench_access_line(c: &mut Criterion) {
    use ipgate::access_log::{AccessLog, Entry};
    use ipgate::config::LogFormat;
    // A subscriber that enables INFO, as the gateway's does, writing nowhere.
    let (writer, _guard) = tracing_appender::non_blocking(std::io::sink());
    let installed = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(writer.clone())
        .with_max_level(tracing::Level::INFO)
        .try_init();
    assert!(installed.is_ok(), "no other subscriber in this bench");
    let entry = Entry {
        status: 200,
        allowed: true,
        shadow: false,
        reason: "ok",
        route: "proxy",
        method: "GET",
        path: "/v1/user/42/monetary-account/7/payment",
        request_id: b"5f0c6c2e9a1b4d1e",
        credential_id: Some(123_456),
        client_ip: Some("203.0.113.7".parse().unwrap()),
        peer: "203.0.113.7".parse().unwrap(),
        bytes_in: Some(0),
        bytes_out: Some(512),
        latency_us: 734,
        cut: None,
    };
    let mut group = c.benchmark_group("access_line");
    for (name, format) in [("plain", LogFormat::Plain), ("json", LogFormat::Json)] {
        let log = AccessLog::new(format, writer.clone());
        group.bench_function(name, |bench| bench.iter(|| log.record(black_box(&entry))));
    }
    group.bench_function("baseline_tracing_info", |bench| {
        bench.iter(|| {
            let e = black_box(&entry);
            tracing::info!(
                target: "ipgate::access",
                status = e.status,
                method = e.method,
                path = e.path,
                route = e.route,
                decision = "allow",
                reason = e.reason,
                credential_id = e.credential_id,
                client_ip = e.client_ip.map(tracing::field::display),
                bytes_in = e.bytes_in,
                bytes_out = e.bytes_out,
                latency_us = e.latency_us,
                request_id = "5f0c6c2e9a1b4d1e",
            )
        })
    });
    let ids = ipgate::request_id::RequestIds::new();
    group.bench_function("request_id_make", |bench| bench.iter(|| ids.make()));
    group.finish();
}

fn sizes() -> Vec<u64> {
    match std::env::var("IPGATE_BENCH_SIZES") {
        Ok(list) => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse()
                    .expect("IPGATE_BENCH_SIZES: comma-separated counts")
            })
            .collect(),
        Err(_) => SIZES.to_vec(),
    }
}

fn benches(c: &mut Criterion) {
    bench_access_line(c);
    let mut parts_done = false;
    for n in sizes() {
        for ips in IPS_PER_CREDENTIAL {
            // One world at a time: 1M credentials with 20 addresses and its baselines
            // take over a gigabyte.
            let w = world(n, ips);
            bench_world(c, &w);
            if !parts_done {
                bench_parts(c, &w);
                parts_done = true;
            }
        }
    }
}

criterion_group! {
    name = decision;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = benches
}
/// `IPGATE_BENCH_LOOP=VARIANT:CASE:N`: runs one variant N times at 10 credentials and
/// exits, for counting instructions under callgrind (timings on a shared machine
/// drift; instruction counts repeat). VARIANT is `gatekeeper`, `recording` or
/// `recording_off`; CASE `allowed` or `refused_ip`. The cost per check is the
/// difference between two counts divided by the difference in N:
///
/// ```text
/// cargo bench --bench decision --no-run
/// for n in 10000 110000; do IPGATE_BENCH_LOOP=recording:allowed:$n valgrind --tool=callgrind \
///   --callgrind-out-file=/dev/null target/release/deps/decision-* 2>&1 | grep refs; done
/// ```
fn instruction_loop(spec: &str) {
    let mut parts = spec.split(':');
    let (variant, case, n) = (parts.next(), parts.next(), parts.next());
    let n: u64 = n
        .and_then(|n| n.parse().ok())
        .expect("IPGATE_BENCH_LOOP=VARIANT:CASE:N");
    let case = Case::ALL
        .into_iter()
        .find(|c| Some(c.name()) == case)
        .expect("CASE: allowed or refused_ip");
    let w = world(10, 1);
    let recorder = match variant {
        Some("gatekeeper") => None,
        Some("recording") => Some(Recorder::new(true)),
        Some("recording_off") => Some(Recorder::new(false)),
        other => panic!("unknown variant {other:?}"),
    };
    let mut check = rotate(&w.probes, |p| {
        let ip = Some(case.ip(p));
        let d = w.gate.check(black_box(&p.headers), black_box(ip));
        if let Some(r) = &recorder {
            r.note(d, ip);
        }
        d
    });
    for _ in 0..n {
        black_box(check());
    }
}

/// `IPGATE_BENCH_LOOKUP=VARIANT:KEYS:SIZE:N`: N lookups in a snapshot of SIZE
/// credentials with one address each (allowed requests), then exit, for counting
/// instructions and cache misses under cachegrind (`benches/lookup_cache.sh` runs it
/// and takes differences). VARIANT is `decide`, `sharded_get` (the snapshot's map as
/// `decide` uses it), `flat_get` (the same entries in one flat map: the layout before
/// sharding), `unknown_key` (`decide` for a key no credential has: the refusal that
/// reads no entry) or `probe` (only reading the next probe: what the others pay beside
/// the lookup). KEYS is `spread`, every credential once per SIZE lookups in a shuffled
/// order, as a large fleet hits the table; `hot`, one key every time; or a count K,
/// K credentials taken in turn (4096: what the criterion benches above rotate through).
///
/// Digests are stand-ins (`fixture::rows_unhashed`): a million SHA-256 in software
/// would make most of the run. Set-up is the same whatever N, so it cancels in the
/// difference of two runs.
fn lookup_loop(spec: &str) {
    let parts: Vec<&str> = spec.split(':').collect();
    let [variant, keys, size, n] = parts[..] else {
        panic!("IPGATE_BENCH_LOOKUP=VARIANT:KEYS:SIZE:N");
    };
    let size: u64 = size.parse().expect("SIZE: a count");
    let n: u64 = n.parse().expect("N: a count");
    let (step, take) = match keys {
        "spread" => (1, size),
        "hot" => (0, 1),
        k => (1, k.parse().expect("KEYS: spread, hot or a count")),
    };
    let rows = fixture::rows_unhashed(size, 1);
    let snapshot = fixture::build(&rows, 1);
    let mut probes: Vec<(KeyHash, IpAddr)> = rows.iter().map(|r| (r.key, r.ips[0])).collect();
    drop(rows);
    // Fisher-Yates with the fixture's mixer: the same order in every run.
    for i in (1..probes.len()).rev() {
        probes.swap(i, (fixture::mix(i as u64) % (i as u64 + 1)) as usize);
    }
    probes.truncate(take as usize);
    fn run(
        probes: &[(KeyHash, IpAddr)],
        step: usize,
        n: u64,
        lookup: impl Fn(&KeyHash, IpAddr) -> bool,
    ) {
        assert!(probes.iter().take(64).all(|(k, ip)| lookup(k, *ip)));
        let mut next = 0;
        for _ in 0..n {
            let (key, ip) = &probes[next];
            black_box(lookup(black_box(key), black_box(*ip)));
            next += step;
            if next == probes.len() {
                next = 0;
            }
        }
    }
    if variant == "unknown_key" {
        // Another place in the same shard, and a key no credential has.
        for (key, _) in &mut probes {
            key.0[0] ^= 0x5a;
        }
    }
    let now = unix_now();
    match variant {
        "probe" => run(&probes, step, n, |key, ip| {
            black_box(*key) != KeyHash([0; 32]) && !ip.is_unspecified()
        }),
        "decide" => run(&probes, step, n, |key, ip| {
            matches!(
                decide(Some(&snapshot), false, Some(key), Some(ip), || now),
                Decision::Allow(_)
            )
        }),
        "unknown_key" => run(&probes, step, n, |key, ip| {
            matches!(
                decide(Some(&snapshot), false, Some(key), Some(ip), || now),
                Decision::Deny(Reason::UnknownKey, None)
            )
        }),
        "sharded_get" => run(&probes, step, n, |key, ip| admits(snapshot.get(key), &ip)),
        "flat_get" => {
            let mut flat = FlatMap::with_capacity_and_hasher(size as usize, Default::default());
            flat.extend(snapshot.iter().map(|(k, c)| (*k, c.clone())));
            drop(snapshot);
            run(&probes, step, n, |key, ip| admits(flat.get(key), &ip))
        }
        other => {
            panic!("VARIANT: decide, unknown_key, sharded_get, flat_get or probe, not {other}")
        }
    }
}

fn main() {
    if let Ok(spec) = std::env::var("IPGATE_BENCH_LOOP") {
        instruction_loop(&spec);
        return;
    }
    if let Ok(spec) = std::env::var("IPGATE_BENCH_LOOKUP") {
        lookup_loop(&spec);
        return;
    }
    decision();
    Criterion::default().configure_from_args().final_summary();
}
