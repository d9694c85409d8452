//! Fleet mode under load: many gateways on one PostgreSQL, started by this program in
//! a temp folder (Debian's `postgresql` package).
//!
//! ```text
//! cargo bench --bench fleet -- propagation   # 100 and 1,000 simulated pollers, poll-only and notify
//!     # IPGATE_BENCH_POLLERS=1000 IPGATE_BENCH_MODES=notify: one part only;
//!     # IPGATE_BENCH_HINT_SPACING=250: the pollers' refresh.hint_spacing in ms
//! cargo bench --bench fleet -- gateways      # 3 real `ipgate serve`, poll-only and notify
//! cargo bench --bench fleet -- cpu           # PostgreSQL CPU: 100 pollers idle, and under writes
//! cargo bench --bench fleet -- writes        # API writes/s through a gateway, 100 pollers attached
//! cargo bench --bench fleet -- replica       # 100 pollers on a streaming replica, NOTIFY from the primary
//! cargo bench --bench fleet -- million       # 1M credentials: cold start, one change applied
//! cargo bench --bench fleet -- chaos 10      # N minutes of writes, database restarts, gateway kills;
//!                                             # at the end every acknowledged write's content
//!                                             # and every gateway's decisions against the store
//! cargo bench --bench fleet -- chaos 10 replica  # the same, half the gateways on a streaming
//!                                             # replica that is rebuilt every third round
//! cargo bench --bench fleet -- behind        # 100,000 changes behind: delta attempt, full load
//! ```
//!
//! A simulated poller is what a gateway's poller is, in a task: its own store handle
//! (pool and LISTEN connection), its own `Refresher` and snapshot, the same loop as
//! `Refresher::run`. Propagation is measured from a write's acknowledgement to the
//! moment a poller has published a snapshot that includes it. Every figure prints as
//! one line; BENCHMARKS.md has the results and the machine.

#[path = "../tests/common/pg.rs"]
mod pg;

use ipgate::acl::{KeyHash, Snapshot, SnapshotCell, SnapshotCredential};
use ipgate::config::{parse_duration, Config, StoreConfig, DEFAULT_HINT_SPACING};
use ipgate::metrics::{Metrics, RefreshResult};
use ipgate::refresh::{Pace, Refresher};
use ipgate::store::{
    self, Actor, Change, Feed, IpStatus, NewCredential, Position, Store, StoreError, Target,
    Timestamp,
};
use pg::Postgres;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const INTERVAL: Duration = Duration::from_secs(1);

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !Postgres::available() {
        eprintln!("fleet bench: PostgreSQL is not installed; nothing measured");
        return;
    }
    let all = args.is_empty();
    let want = |name: &str| all || args.iter().any(|a| a == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!(
        "fleet bench on {} CPUs",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // fsync on: writes/s must pay for durability, as in production.
    let pg = Postgres::start_with(&["max_connections=2300", "fsync=on", "shared_buffers=256MB"]);
    runtime.block_on(async {
        if want("propagation") {
            // IPGATE_BENCH_POLLERS="1000" and IPGATE_BENCH_MODES="notify" pick a part.
            let list = |name: &str, all: &str| std::env::var(name).unwrap_or_else(|_| all.into());
            for pollers in list("IPGATE_BENCH_POLLERS", "100,1000").split(',') {
                for mode in list("IPGATE_BENCH_MODES", "poll,notify").split(',') {
                    propagation(
                        &pg,
                        pollers.trim().parse().unwrap(),
                        mode.trim() == "notify",
                    )
                    .await;
                }
            }
        }
        if want("gateways") {
            for notify in [false, true] {
                real_gateways(&pg, notify).await;
            }
        }
        if want("cpu") {
            cpu(&pg).await;
        }
        if want("writes") {
            writes(&pg).await;
        }
        if want("replica") {
            replica(&pg).await;
        }
        if want("million") {
            million(&pg).await;
        }
        if want("behind") {
            behind(&pg).await;
        }
        if args.iter().any(|a| a == "chaos") {
            let minutes = args
                .iter()
                .find_map(|a| a.parse::<u64>().ok())
                .unwrap_or(10);
            let replica = args.iter().any(|a| a == "replica");
            chaos(&pg, Duration::from_secs(minutes * 60), replica).await;
        }
    });
}

// ---- helpers ---------------------------------------------------------------------

fn store_config(pg: &Postgres, db: &str, pool: usize) -> StoreConfig {
    let text = format!(
        "[store]\nurl = \"{}\"\npool_size = {pool}\ntimeout = \"10s\"\n",
        pg.url(db)
    );
    Config::parse(&text, std::path::Path::new("/"))
        .unwrap()
        .store
}

/// One connection to the primary `url`, the poller's reads from the replica `read_url`.
fn replica_store_config(url: &str, read_url: &str) -> StoreConfig {
    let text = format!(
        "[store]\nurl = \"{url}\"\nread_url = \"{read_url}\"\npool_size = 1\ntimeout = \"10s\"\n"
    );
    Config::parse(&text, std::path::Path::new("/"))
        .unwrap()
        .store
}

fn open(pg: &Postgres, db: &str, pool: usize) -> Arc<dyn Store> {
    store::open(&store_config(pg, db, pool)).unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The key of the `i`th credential [`credentials`] makes.
fn bench_key(i: u64) -> KeyHash {
    KeyHash::of(format!("bench-{i}-{}", std::process::id()).as_bytes())
}

/// `n` ACTIVE credentials (one address each) for the writers to change.
async fn credentials(s: &dyn Store, n: u64) -> Vec<u64> {
    let admin = Actor::admin();
    let user = s.add_user(None, &admin).await.unwrap().value.id;
    let mut ids = Vec::new();
    for i in 0..n {
        let key = bench_key(i);
        let c = s
            .create_credential(
                NewCredential {
                    user_id: user,
                    key,
                    description: None,
                    expiry: Timestamp::now().plus(Duration::from_secs(3600)),
                },
                &admin,
            )
            .await
            .unwrap()
            .value;
        let register = Change::Register {
            description: "bench".into(),
            ips: vec![ip("10.0.0.1")],
            caller: ip("10.0.0.1"),
        };
        s.change(Target::Key(key), register, 100, &admin)
            .await
            .unwrap();
        ids.push(c.id);
    }
    ids
}

/// Versions a poller published, and when.
type Seen = Arc<Mutex<Vec<(u64, Instant)>>>;

/// Polls every simulated poller has made, for the cost of one poll.
static POLLS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Least time between hinted polls, from `IPGATE_BENCH_HINT_SPACING` (ms) when set.
fn hint_spacing() -> Duration {
    std::env::var("IPGATE_BENCH_HINT_SPACING")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
        .unwrap_or_else(|| parse_duration(DEFAULT_HINT_SPACING).unwrap())
}

/// One simulated gateway's poller: `Refresher::run` itself, recording each version it
/// publishes.
async fn poller(
    store: Arc<dyn Store>,
    notify: bool,
    stop: CancellationToken,
    seen: Seen,
    start_after: Duration,
) -> Arc<SnapshotCell> {
    let cell = Arc::new(SnapshotCell::new());
    let refresher = Arc::new(Refresher::new(
        Arc::clone(&store),
        Arc::clone(&cell),
        Arc::new(Metrics::new()),
    ));
    let task_cell = Arc::clone(&cell);
    tokio::spawn(async move {
        // Gateways start at different moments, their LISTEN connections too.
        tokio::time::sleep(start_after).await;
        let hints = store.change_hints(notify, stop.child_token());
        let pace = Pace {
            interval: INTERVAL,
            hint_spacing: hint_spacing(),
        };
        let mut last = None;
        let observe = move || {
            POLLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let v = task_cell.load().as_ref().map(|s| s.version());
            if v > last {
                last = v;
                seen.lock().unwrap().push((v.unwrap_or(0), Instant::now()));
            }
        };
        refresher.run_observed(pace, hints, stop, observe).await;
    });
    cell
}

/// A spread of start times over one interval, as independent gateways would have.
fn offset(i: usize, n: usize) -> Duration {
    INTERVAL.mul_f64(i as f64 / n as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn summary(samples: &mut [f64]) -> String {
    samples.sort_by(f64::total_cmp);
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} samples)",
        percentile(samples, 0.5) * 1e3,
        percentile(samples, 0.99) * 1e3,
        samples.last().copied().unwrap_or(f64::NAN) * 1e3,
        samples.len()
    )
}

/// For each write (version, when acknowledged): how long until each poller had it.
fn propagation_samples(writes: &[(u64, Instant)], seen: &[Seen]) -> (Vec<f64>, usize) {
    let mut samples = Vec::new();
    let mut missing = 0;
    for s in seen {
        let s = s.lock().unwrap();
        for (version, acked) in writes {
            match s.iter().find(|(v, _)| v >= version) {
                Some((_, at)) => samples.push(at.saturating_duration_since(*acked).as_secs_f64()),
                None => missing += 1,
            }
        }
    }
    (samples, missing)
}

/// Clock ticks of user and system time of the server's processes.
fn pg_ticks(pg: &Postgres) -> u64 {
    pg.pids()
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            let after = stat.rsplit_once(") ")?.1;
            let fields: Vec<&str> = after.split_whitespace().collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum()
}

/// PostgreSQL's CPU over `window`, in percent of one core.
async fn pg_cpu_during(pg: &Postgres, window: Duration) -> f64 {
    let ticks = pg_ticks(pg);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let used = pg_ticks(pg).saturating_sub(ticks) as f64 / 100.0; // USER_HZ
    used / started.elapsed().as_secs_f64() * 100.0
}

/// Starts `n` pollers on `db`, waits until each has loaded.
async fn start_pollers(
    pg: &Postgres,
    db: &str,
    n: usize,
    notify: bool,
    stop: &CancellationToken,
) -> (Vec<Seen>, Vec<Arc<SnapshotCell>>) {
    let mut seen = Vec::new();
    let mut cells = Vec::new();
    for i in 0..n {
        let s: Seen = Arc::default();
        cells.push(
            poller(
                open(pg, db, 1),
                notify,
                stop.child_token(),
                Arc::clone(&s),
                offset(i, n),
            )
            .await,
        );
        seen.push(s);
    }
    let started = Instant::now();
    while cells.iter().any(|c| !c.is_loaded()) {
        let loaded = cells.iter().filter(|c| c.is_loaded()).count();
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "only {loaded} of {n} pollers loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "  ({n} pollers loaded in {:.1} s)",
        started.elapsed().as_secs_f64()
    );
    (seen, cells)
}

// ---- scenarios -------------------------------------------------------------------

/// Propagation with `n` simulated pollers: one write every 200 ms for 20 s.
async fn propagation(pg: &Postgres, n: usize, notify: bool) {
    let db = pg.database();
    let writer = open(pg, &db, 2);
    let ids = credentials(writer.as_ref(), 4).await;
    let stop = CancellationToken::new();
    let (seen, _cells) = start_pollers(pg, &db, n, notify, &stop).await;
    tokio::time::sleep(INTERVAL * 2).await;
    let mut writes = Vec::new();
    let cpu_ticks = pg_ticks(pg);
    let polls = POLLS.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    for i in 0..100 {
        let change = Change::Wildcard(i % 8 < 4);
        let done = writer
            .change(Target::Id(ids[i % 4]), change, 100, &Actor::admin())
            .await
            .unwrap();
        writes.push((done.version, Instant::now()));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(INTERVAL * 3).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = (pg_ticks(pg) - cpu_ticks) as f64 / 100.0 / secs * 100.0;
    let polls = POLLS.load(std::sync::atomic::Ordering::Relaxed) - polls;
    stop.cancel();
    let (mut samples, missing) = propagation_samples(&writes, &seen);
    println!(
        "propagation, {n} pollers, {} (hint spacing {:?}): {}; {missing} never arrived; \
         PostgreSQL CPU {cpu:.0}% of a core; {:.1} polls per poller and second, \
         {:.0} µs of PostgreSQL CPU per poll",
        if notify { "notify" } else { "poll only (1 s)" },
        hint_spacing(),
        summary(&mut samples),
        polls as f64 / n as f64 / secs,
        cpu / 100.0 * secs / polls.max(1) as f64 * 1e6,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// 100 pollers reading a streaming replica (`store.read_url`), their notices from the
/// primary as hints: propagation from the primary's acknowledgement, with the
/// replica's own replay lag beside it for comparison.
async fn replica(pg: &Postgres) {
    let db = pg.database();
    let writer = open(pg, &db, 2);
    let ids = credentials(writer.as_ref(), 4).await;
    let standby = tokio::task::block_in_place(|| pg.replica());
    let config = replica_store_config(&pg.url(&db), &standby.url(&db));
    let stop = CancellationToken::new();
    let (mut seen, mut cells) = (Vec::new(), Vec::new());
    for i in 0..100 {
        let s: Seen = Arc::default();
        let store = store::open(&config).unwrap();
        cells.push(
            poller(
                store,
                true,
                stop.child_token(),
                Arc::clone(&s),
                offset(i, 100),
            )
            .await,
        );
        seen.push(s);
    }
    while cells.iter().any(|c| !c.is_loaded()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(INTERVAL * 2).await;
    // Reads the replica (a replica cannot be opened as a store of its own: that would
    // try to make the schema).
    let replica_store = store::open(&config).unwrap();
    let at = replica_store.load().await.unwrap().position;
    let mut writes = Vec::new();
    let mut lag = Vec::new();
    for i in 0..100 {
        let change = Change::Wildcard(i % 8 < 4);
        let done = writer
            .change(Target::Id(ids[i % 4]), change, 100, &Actor::admin())
            .await
            .unwrap();
        let acked = Instant::now();
        writes.push((done.version, acked));
        // The replica's own lag: until it answers with this version.
        let mut probe_at = at;
        loop {
            match replica_store.changes_since(probe_at).await {
                Ok(Feed::Changes(d)) if d.to.version >= done.version => break,
                Ok(Feed::Changes(d)) => probe_at = d.to,
                _ => {}
            }
            if acked.elapsed() > Duration::from_secs(10) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lag.push(acked.elapsed().as_secs_f64());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(INTERVAL * 3).await;
    stop.cancel();
    let (mut samples, missing) = propagation_samples(&writes, &seen);
    let mut out_of_order = 0;
    for s in &seen {
        check_order(s, &mut out_of_order);
    }
    println!(
        "propagation, 100 pollers on a streaming replica, notify from the primary: {}; \
         {missing} never arrived, {out_of_order} out of order; the replica's own lag: {}",
        summary(&mut samples),
        summary(&mut lag)
    );
    drop(standby);
}

/// Three real gateways: a change through the first one's API, the others probed until
/// they enforce it.
async fn real_gateways(pg: &Postgres, notify: bool) {
    let db = pg.database();
    let dir = tempfile::tempdir().unwrap();
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    // The probes need answers from an upstream: a tiny one that always says 200.
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            std::thread::spawn(move || answer_200(stream));
        }
    });
    let mut gateways = Vec::new();
    for i in 0..3 {
        let config = dir.path().join(format!("gw{i}.toml"));
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\nworkers = 1\n\
                 [upstream]\nurl = \"http://{upstream_addr}\"\n\
                 [store]\nurl = \"{}\"\n[refresh]\ninterval = \"1s\"\nnotify = {notify}\n\
                 [log]\nformat = \"json\"\nlevel = \"warn,ipgate=info,ipgate::access=warn\"\n",
                pg.url(&db)
            ),
        )
        .unwrap();
        gateways.push(RealGateway::start(&config));
    }
    let bin = env!("CARGO_BIN_EXE_ipgate");
    let admin = |args: &[&str]| {
        let out = Command::new(bin)
            .args(["admin", "--config"])
            .arg(dir.path().join("gw0.toml"))
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let user = admin(&["user", "add"])["id"].as_u64().unwrap();
    let created = admin(&["key", "create", "--user", &user.to_string()]);
    let key = created["key"].as_str().unwrap().to_owned();
    let cred = created["credential_id"].as_u64().unwrap();
    let body = format!("{{\"description\":\"bench\",\"secret\":\"{key}\",\"permitted_ips\":[\"127.0.0.2\",\"127.0.0.3\"]}}");
    let (status, _) = http(
        gateways[0].public,
        "127.0.0.2",
        "POST",
        "/v1/device-server",
        &[("content-type", "application/json")],
        &body,
    )
    .await;
    assert_eq!(status, 200);
    let listed = admin(&["ip", "list", &cred.to_string()]);
    // `ip list --json` is an array of entries (older versions: an object with "ips").
    let entries = listed.as_array().or(listed["ips"].as_array()).unwrap();
    let entry = entries.iter().find(|e| e["ip"] == "127.0.0.3").unwrap()["id"]
        .as_u64()
        .unwrap();
    let path = format!("/v1/user/{user}/credential-password-ip/{cred}/ip/{entry}");
    let headers = [
        ("x-bunq-client-authentication", key.as_str()),
        ("content-type", "application/json"),
    ];
    let mut samples = Vec::new();
    for round in 0..20 {
        let active = round % 2 == 1;
        let body = format!(
            "{{\"status\":\"{}\"}}",
            if active { "ACTIVE" } else { "INACTIVE" }
        );
        let (status, text) = http(
            gateways[0].public,
            "127.0.0.2",
            "PUT",
            &path,
            &headers,
            &body,
        )
        .await;
        assert_eq!(status, 200, "{text}");
        let acked = Instant::now();
        let want = if active { 200 } else { 403 };
        for gw in &gateways[1..] {
            loop {
                let (got, _) =
                    http(gw.public, "127.0.0.3", "GET", "/probe", &headers[..1], "").await;
                if got == want {
                    samples.push(acked.elapsed().as_secs_f64());
                    break;
                }
                assert!(acked.elapsed() < Duration::from_secs(10), "no propagation");
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    println!(
        "propagation, 3 real gateways, {}: {}",
        if notify { "notify" } else { "poll only (1 s)" },
        summary(&mut samples)
    );
}

fn answer_200(mut stream: std::net::TcpStream) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 4096];
    let mut pending = Vec::new();
    loop {
        let Ok(n) = stream.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            pending.drain(..end + 4);
            if stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                .is_err()
            {
                return;
            }
        }
    }
}

struct RealGateway {
    child: Child,
    public: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl RealGateway {
    fn start(config: &std::path::Path) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipgate"))
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    if v["fields"]["message"] == "listening" || v["message"] == "listening" {
                        let which = v["listener"].as_str().or(v["fields"]["listener"].as_str());
                        let addr = v["addr"].as_str().or(v["fields"]["addr"].as_str());
                        if let (Some(w), Some(a)) = (which, addr) {
                            let _ = tx.send((w.to_owned(), a.parse().unwrap()));
                        }
                    }
                }
            }
        });
        let (mut public, mut admin) = (None, None);
        while public.is_none() || admin.is_none() {
            let (which, addr) = rx
                .recv_timeout(Duration::from_secs(20))
                .expect("gateway started");
            if which == "public" {
                public = Some(addr);
            } else {
                admin = Some(addr);
            }
        }
        let gw = Self {
            child,
            public: public.unwrap(),
            admin: admin.unwrap(),
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(self.admin) {
                use std::io::{Read, Write};
                let _ =
                    s.write_all(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut out = String::new();
                let _ = s.read_to_string(&mut out);
                if out.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "gateway not ready");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RealGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request from `from`; status and body.
async fn http(
    to: std::net::SocketAddr,
    from: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut s = socket.connect(to).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nhost: bench\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let text = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, text)
}

/// PostgreSQL CPU with 100 pollers: idle, then under 20 writes/s.
async fn cpu(pg: &Postgres) {
    let db = pg.database();
    let writer = open(pg, &db, 2);
    let ids = credentials(writer.as_ref(), 4).await;
    // What the server costs with no poller at all (its own background work).
    let baseline = pg_cpu_during(pg, Duration::from_secs(30)).await;
    println!("PostgreSQL CPU with no poller: {baseline:.2}% of a core");
    for notify in [false, true] {
        let stop = CancellationToken::new();
        let _pollers = start_pollers(pg, &db, 100, notify, &stop).await;
        tokio::time::sleep(INTERVAL * 2).await;
        let polls = POLLS.load(std::sync::atomic::Ordering::Relaxed);
        let window = Instant::now();
        let idle = pg_cpu_during(pg, Duration::from_secs(30)).await;
        let polls = POLLS.load(std::sync::atomic::Ordering::Relaxed) - polls;
        let per_poll = (idle - baseline).max(0.0) / 100.0 * window.elapsed().as_secs_f64()
            / polls.max(1) as f64;
        println!(
            "  100 idle pollers ({}): {:.2}% of a core above the baseline; {polls} polls, \
             {:.0} µs of PostgreSQL CPU per unchanged poll",
            if notify { "notify" } else { "poll only" },
            idle - baseline,
            per_poll * 1e6
        );
        let busy_writer = {
            let writer = Arc::clone(&writer);
            let ids = ids.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut i = 0usize;
                while !stop.is_cancelled() {
                    let _ = writer
                        .change(
                            Target::Id(ids[i % 4]),
                            Change::Wildcard(i % 8 < 4),
                            100,
                            &Actor::admin(),
                        )
                        .await;
                    i += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        };
        let polls = POLLS.load(std::sync::atomic::Ordering::Relaxed);
        let window = Instant::now();
        let busy = pg_cpu_during(pg, Duration::from_secs(30)).await;
        let polls = POLLS.load(std::sync::atomic::Ordering::Relaxed) - polls;
        println!(
            "  under 20 writes/s: {polls} polls in {:.0} s ({:.1} per poller and second)",
            window.elapsed().as_secs_f64(),
            polls as f64 / 100.0 / window.elapsed().as_secs_f64()
        );
        stop.cancel();
        let _ = busy_writer.await;
        println!(
            "PostgreSQL CPU, 100 pollers at 1 s, {}: idle {idle:.1}% of a core, under 20 writes/s {busy:.1}%",
            if notify { "notify" } else { "poll only" }
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Writes/s through one real gateway's API, 8 clients, with no other gateway, and with
/// 100 pollers attached polling only and with notify. Each client flips the status of
/// one of its credential's four spare entries per write, so a credential's list keeps
/// its size: adding an entry per write instead grew each list to hundreds of entries,
/// and every write re-reads its credential's whole list, so that measured list length
/// rather than the write path.
async fn writes(pg: &Postgres) {
    for (pollers, notify) in [(0, false), (100, false), (100, true)] {
        writes_with(pg, pollers, notify).await;
    }
}

async fn writes_with(pg: &Postgres, pollers: usize, notify: bool) {
    let db = pg.database();
    let stop = CancellationToken::new();
    // The schema must exist before 100 pollers race to make it: one load first.
    open(pg, &db, 1).load().await.unwrap();
    let _pollers = start_pollers(pg, &db, pollers, notify, &stop).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [upstream]\nurl = \"http://127.0.0.1:9\"\n[store]\nurl = \"{}\"\npool_size = 8\n\
             [log]\nformat = \"json\"\nlevel = \"warn,ipgate=info,ipgate::access=warn\"\n",
            pg.url(&db)
        ),
    )
    .unwrap();
    let gw = RealGateway::start(&config);
    let bin = env!("CARGO_BIN_EXE_ipgate");
    let mut clients = Vec::new();
    for c in 0..8 {
        let run = |args: &[&str]| {
            let out = Command::new(bin)
                .args(["admin", "--config"])
                .arg(&config)
                .arg("--json")
                .args(args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
        };
        let user = run(&["user", "add"])["id"].as_u64().unwrap();
        let created = run(&["key", "create", "--user", &user.to_string()]);
        let key = created["key"].as_str().unwrap().to_owned();
        let cred = created["credential_id"].as_u64().unwrap();
        let body = format!(
            "{{\"description\":\"w{c}\",\"secret\":\"{key}\",\"permitted_ips\":[\"127.0.0.2\",\
             \"10.{c}.0.1\",\"10.{c}.0.2\",\"10.{c}.0.3\",\"10.{c}.0.4\"]}}"
        );
        assert_eq!(
            http(
                gw.public,
                "127.0.0.2",
                "POST",
                "/v1/device-server",
                &[("content-type", "application/json")],
                &body
            )
            .await
            .0,
            200
        );
        // The entries to flip: every one but the address the client calls from.
        let listed = run(&["ip", "list", &cred.to_string()]);
        let spare: Vec<u64> = listed
            .as_array()
            .or(listed["ips"].as_array())
            .unwrap()
            .iter()
            .filter(|e| e["ip"] != "127.0.0.2")
            .map(|e| e["id"].as_u64().unwrap())
            .collect();
        assert_eq!(spare.len(), 4);
        clients.push((
            format!("/v1/user/{user}/credential-password-ip/{cred}/ip"),
            key,
            spare,
        ));
    }
    let window = Duration::from_secs(15);
    let cpu_ticks = pg_ticks(pg);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (path, key, spare) in clients {
        let public = gw.public;
        tasks.push(tokio::spawn(async move {
            let headers = [
                ("x-bunq-client-authentication", key.as_str()),
                ("content-type", "application/json"),
            ];
            let (mut ok, mut failed, mut n) = (0u64, 0u64, 0u64);
            while started.elapsed() < window {
                // Each visit flips the entry (they start ACTIVE), so every write
                // changes something and advances the store's version.
                let entry = spare[n as usize % spare.len()];
                let status = if (n / spare.len() as u64) % 2 == 0 {
                    "INACTIVE"
                } else {
                    "ACTIVE"
                };
                let body = format!("{{\"status\":\"{status}\"}}");
                n += 1;
                let entry_path = format!("{path}/{entry}");
                match http(public, "127.0.0.2", "PUT", &entry_path, &headers, &body)
                    .await
                    .0
                {
                    200 => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let (mut ok, mut failed) = (0, 0);
    for t in tasks {
        let (o, f) = t.await.unwrap();
        ok += o;
        failed += f;
    }
    let secs = started.elapsed().as_secs_f64();
    stop.cancel();
    let cpu = (pg_ticks(pg) - cpu_ticks) as f64 / 100.0 / secs * 100.0;
    println!(
        "API writes through one gateway, 8 clients, {pollers} pollers attached ({}): {:.0} writes/s \
         ({ok} ok, {failed} refused, {secs:.1} s); PostgreSQL CPU {cpu:.0}% of a core",
        if notify { "notify" } else { "poll only" },
        ok as f64 / secs
    );
}

/// 1M credentials in PostgreSQL: a cold start, then single changes applied.
/// A gateway 100,000 changes behind, each change a credential of its own: how long
/// the delta attempt takes before it gives way, and the full load it gives way to;
/// and for scale, a delta of just under half the store (49,000 changes), still read
/// as one.
async fn behind(pg: &Postgres) {
    const N: u32 = 100_000;
    const UNDER: u32 = 49_000;
    let db = pg.database();
    let s = open(pg, &db, 2);
    let start = s.load().await.unwrap().position; // the schema, at version 0
    let started = Instant::now();
    pg.many_changes(&db, N);
    println!(
        "{N} changed credentials written in {:.1} s (bench setup)",
        started.elapsed().as_secs_f64()
    );
    let kind = |feed: &Feed| match feed {
        Feed::Unchanged => "unchanged".to_owned(),
        Feed::Changes(d) => format!("a delta of {} credentials", d.changed.len()),
        Feed::Resync(r) => format!("resync ({})", r.label()),
    };
    for _ in 0..3 {
        let started = Instant::now();
        let feed = s.changes_since(start).await.unwrap();
        let attempt = started.elapsed();
        let started = Instant::now();
        let loaded = s.load().await.unwrap();
        println!(
            "{N} behind: delta attempt {:.1} ms ({}), then full load {:.0} ms ({} credentials)",
            attempt.as_secs_f64() * 1e3,
            kind(&feed),
            started.elapsed().as_secs_f64() * 1e3,
            loaded.snapshot.credential_count()
        );
        // What reading those 100,000 as a delta would have cost: the delta's two
        // statements, run as the feed runs them, rows streamed and counted.
        let (client, connection) = tokio_postgres::connect(&pg.url(&db), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        let started = Instant::now();
        let ids: Vec<i64> = client
            .query(
                "SELECT credential_id FROM change_log WHERE version > $1 ORDER BY version",
                &[&(start.version as i64)],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let rows = client
            .query(
                "SELECT c.id, c.user_id, c.key_hash, c.status, c.wildcard, c.expiry, c.mode, p.ip \
                 FROM credentials c \
                 LEFT JOIN permitted_ips p ON p.credential_id = c.id AND p.status = 'ACTIVE' \
                 WHERE c.id = ANY($1) ORDER BY c.id",
                &[&ids],
            )
            .await
            .unwrap();
        println!(
            "{N} behind: the same as a delta (its two statements) would take {:.0} ms ({} rows)",
            started.elapsed().as_secs_f64() * 1e3,
            rows.len()
        );
        drop(client);
        let version = u64::from(N - UNDER);
        let at = Position {
            version,
            // many_changes stamps version v with 2v + 1.
            stamp: 2 * version as i64 + 1,
            ..start
        };
        let started = Instant::now();
        let feed = s.changes_since(at).await.unwrap();
        println!(
            "{UNDER} behind: {} read in {:.0} ms",
            kind(&feed),
            started.elapsed().as_secs_f64() * 1e3
        );
    }
}

async fn million(pg: &Postgres) {
    const N: u64 = 1_000_000;
    let db = pg.database();
    let s = open(pg, &db, 2);
    s.load().await.unwrap(); // the schema
    let started = Instant::now();
    fill(pg, &db, N);
    println!(
        "1M credentials written with COPY in {:.1} s (bench setup)",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let loaded = s.load().await.unwrap();
    println!(
        "cold start, store load at 1M from PostgreSQL: {:.2} s ({} credentials, {} addresses)",
        started.elapsed().as_secs_f64(),
        loaded.snapshot.credential_count(),
        loaded.snapshot.active_ip_count()
    );
    drop(loaded);

    // The real binary: from exec to /readyz.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [store]\nurl = \"{}\"\n[log]\nformat = \"json\"\n",
            pg.url(&db)
        ),
    )
    .unwrap();
    let started = Instant::now();
    let gw = RealGateway::start(&config);
    println!(
        "cold start of ipgate serve at 1M, exec to ready: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    drop(gw);

    // One change at a time, applied by a poller: the whole step (feed query + apply +
    // publish) and the in-memory apply alone.
    let cell = Arc::new(SnapshotCell::new());
    let refresher = Refresher::new(Arc::clone(&s), Arc::clone(&cell), Arc::new(Metrics::new()));
    refresher.refresh().await.unwrap();
    let (mut steps, mut applies) = (Vec::new(), Vec::new());
    for i in 0..200u64 {
        // 200 different credentials, all filled without the wildcard: setting it is a
        // real change every time (unsetting it would be a no-op and no new version).
        let id = 1 + (i * 4_999) % N;
        s.change(Target::Id(id), Change::Wildcard(true), 100, &Actor::admin())
            .await
            .unwrap();
        let t = Instant::now();
        let result = refresher.refresh().await.unwrap();
        steps.push(t.elapsed().as_secs_f64());
        // A full load here would be timed as if it were one change.
        assert_eq!(result, RefreshResult::Updated, "change {i} was not a delta");
        let snap = cell.load_full().unwrap();
        let key = KeyHash::of(&i.to_le_bytes());
        let c = one_credential(&snap);
        let t = Instant::now();
        let next = snap.with_changes(snap.version() + 1, [(key, c)]);
        applies.push(t.elapsed().as_secs_f64());
        drop(next);
    }
    println!(
        "one change at 1M, poll step (feed read + apply + publish): {}",
        summary(&mut steps)
    );
    println!(
        "one change at 1M, apply to the snapshot alone: {}",
        summary(&mut applies)
    );
}

fn one_credential(s: &Snapshot) -> SnapshotCredential {
    s.iter().next().map(|(_, c)| c.clone()).unwrap()
}

/// Writes `n` ACTIVE credentials with two addresses each straight into the tables.
fn fill(pg: &Postgres, db: &str, n: u64) {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("c.csv");
    let ips = dir.path().join("i.csv");
    let mut c = std::io::BufWriter::new(std::fs::File::create(&creds).unwrap());
    let mut p = std::io::BufWriter::new(std::fs::File::create(&ips).unwrap());
    let now = Timestamp::now().0;
    for i in 1..=n {
        let key = KeyHash::of(&i.to_le_bytes());
        let hex: String = key.0.iter().map(|b| format!("{b:02x}")).collect();
        // bytea in hex: a single backslash, then x (CSV does not escape it).
        writeln!(c, "{i},1,\\x{hex},ACTIVE,f,{now},{now}").unwrap();
        for j in 0..2u64 {
            let a = 0x0a00_0000u32 + ((i * 2 + j) as u32 & 0x00ff_ffff);
            writeln!(p, "{i},{},ACTIVE,{now},{now}", std::net::Ipv4Addr::from(a)).unwrap();
        }
    }
    drop((c, p));
    for f in [&creds, &ips] {
        pg.own_file(f, 0o644);
    }
    pg.psql(
        db,
        &format!("INSERT INTO users (id, created) VALUES (1, {now})"),
    );
    pg.psql(
        db,
        &format!(
            "\\copy credentials (id, user_id, key_hash, status, wildcard, created, updated) FROM '{}' CSV",
            creds.display()
        ),
    );
    pg.psql(
        db,
        &format!(
            "\\copy permitted_ips (credential_id, ip, status, created, updated) FROM '{}' CSV",
            ips.display()
        ),
    );
    // The version moves with its change-log row, as every real write does: a version
    // without its row reads as a rewritten history, and the first poll after the load
    // would be a full resync instead of a delta.
    pg.psql(
        db,
        &format!(
            "SELECT setval('credentials_id_seq', (SELECT max(id) FROM credentials)); \
             UPDATE meta SET value = value + 1 WHERE name = 'change_version'; \
             INSERT INTO change_log (version, credential_id, stamp, committed_at) \
             SELECT value, NULL, 1, {now} FROM meta WHERE name = 'change_version'; ANALYZE"
        ),
    );
}

/// Writes, database restarts and gateway restarts for `length`; at quiet points every
/// gateway's snapshot must equal a full load, and every acknowledged write must be in
/// the store at the end.
async fn chaos(pg: &Postgres, length: Duration, with_replica: bool) {
    const GATEWAYS: usize = 12;
    let db = pg.database();
    let writer = open(pg, &db, 4);
    let ids = credentials(writer.as_ref(), 16).await;
    let standby = with_replica.then(|| tokio::task::block_in_place(|| pg.replica()));
    // Odd gateways read the replica when there is one.
    let gateway_store = |i: usize| match &standby {
        Some(r) if i % 2 == 1 => {
            store::open(&replica_store_config(&pg.url(&db), &r.url(&db))).unwrap()
        }
        _ => open(pg, &db, 1),
    };
    let mut rebuilds = 0;
    let stop = CancellationToken::new();
    let mut gateways: Vec<(CancellationToken, Arc<SnapshotCell>, Seen)> = Vec::new();
    for i in 0..GATEWAYS {
        let seen: Seen = Arc::default();
        let token = stop.child_token();
        let cell = poller(
            gateway_store(i),
            i % 2 == 0,
            token.clone(),
            Arc::clone(&seen),
            offset(i, GATEWAYS),
        )
        .await;
        gateways.push((token, cell, seen));
    }
    // The writers stop first; the gateways keep polling through the final checks.
    let writing = CancellationToken::new();
    let acknowledged: Arc<Mutex<Vec<(u64, u64)>>> = Arc::default();
    // What each acknowledged write set, and what each write with an unknown outcome
    // (the store failed mid-call: it may or may not have committed) aimed at.
    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    let pause = Arc::new(tokio::sync::RwLock::new(()));
    let mut writers = Vec::new();
    for w in 0..2u64 {
        let writer = open(pg, &db, 2);
        let ids = ids.clone();
        let acknowledged = Arc::clone(&acknowledged);
        let outcomes = Arc::clone(&outcomes);
        let pause = Arc::clone(&pause);
        let stop = writing.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.is_cancelled() {
                let _open = pause.read().await;
                n += 1;
                let id = ids[((n * 7 + w) % ids.len() as u64) as usize];
                let change = match n % 3 {
                    0 => Change::Wildcard(n % 2 == 0),
                    1 => Change::AddIp {
                        ip: IpAddr::from([10, 9, w as u8, (n % 250) as u8]),
                        status: if n % 5 == 0 {
                            IpStatus::Active
                        } else {
                            IpStatus::Inactive
                        },
                    },
                    _ => Change::SetIpStatus {
                        item: 1 + n % 40,
                        status: if n % 2 == 0 {
                            IpStatus::Active
                        } else {
                            IpStatus::Inactive
                        },
                    },
                };
                let aim = Aim::of(id, &change);
                match writer
                    .change(Target::Id(id), change, 8, &Actor::admin())
                    .await
                {
                    Ok(done) => {
                        acknowledged.lock().unwrap().push((done.version, id));
                        outcomes
                            .lock()
                            .unwrap()
                            .acknowledged(id, done.version, &done.value);
                    }
                    Err(StoreError::Unavailable(_)) => outcomes.lock().unwrap().unknown.push(aim),
                    // Refused by a rule: nothing written.
                    Err(_) => {}
                }
                drop(_open);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    let started = Instant::now();
    let (mut restarts, mut kills, mut checks, mut mismatches, mut out_of_order) = (0, 0, 0, 0, 0);
    let mut round = 0u64;
    while started.elapsed() < length {
        round += 1;
        tokio::time::sleep(Duration::from_secs(10)).await;
        // A gateway dies and a new one takes its place.
        let victim = (round as usize * 5) % GATEWAYS;
        gateways[victim].0.cancel();
        let seen: Seen = Arc::default();
        let token = stop.child_token();
        let cell = poller(
            gateway_store(victim),
            victim % 2 == 0,
            token.clone(),
            Arc::clone(&seen),
            Duration::ZERO,
        )
        .await;
        check_order(&gateways[victim].2, &mut out_of_order);
        gateways[victim] = (token, cell, seen);
        kills += 1;
        if let (Some(r), 1) = (&standby, round % 3) {
            // The replica is made again from a fresh base backup under the fleet.
            tokio::task::block_in_place(|| pg.rebuild_replica(r));
            rebuilds += 1;
        }
        if round % 3 == 0 {
            // The database goes away for a few seconds.
            tokio::task::block_in_place(|| pg.stop());
            tokio::time::sleep(Duration::from_secs(2 + round % 4)).await;
            tokio::task::block_in_place(|| pg.start_again());
            restarts += 1;
        }
        if round % 2 == 0 {
            // A quiet point: writes pause; every gateway must reach the store's truth.
            let _quiet = pause.write().await;
            let truth = writer_truth(&writer).await;
            let deadline = Instant::now() + Duration::from_secs(30);
            for (_, cell, _) in &gateways {
                while cell.load().as_ref().map(|s| s.version()) != Some(truth.0)
                    && Instant::now() < deadline
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                checks += 1;
                let snap = cell.load_full();
                if snap.as_ref().map(|s| contents(s)) != Some(truth.1.clone()) {
                    mismatches += 1;
                }
            }
        }
    }
    writing.cancel();
    for w in writers {
        let _ = w.await;
    }
    // Every acknowledged write is in the store: its version is in the history.
    let acked = acknowledged.lock().unwrap().clone();
    let final_version = writer_truth(&writer).await.0;
    let lost = acked.iter().filter(|(v, _)| *v > final_version).count();
    let mut versions: Vec<u64> = acked.iter().map(|(v, _)| *v).collect();
    versions.sort_unstable();
    versions.dedup();
    // Every acknowledged write's content is in the store: the last acknowledged value of
    // each thing written (an entry's status, a credential's wildcard) is what the store
    // holds, unless a write with an unknown outcome aimed at it too.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap());
    let keys: BTreeMap<u64, KeyHash> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, bench_key(i as u64)))
        .collect();
    let stored = stored_state(&writer, &ids).await;
    let (content_checked, content_wrong, ambiguous) = outcomes.check(&stored);
    // Every gateway decides as the store's rows say: each credential from each
    // address it has ever had, and from one it never had.
    let truth_version = writer_truth(&writer).await.0;
    let (mut decisions, mut wrong_decisions) = (0, 0);
    for (_, cell, _) in &gateways {
        let deadline = Instant::now() + Duration::from_secs(30);
        while cell.load().as_ref().map(|s| s.version()) != Some(truth_version)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let snap = cell.load_full();
        for (id, (wildcard, entries)) in &stored {
            let mut addresses: Vec<(IpAddr, bool)> = entries
                .values()
                .map(|(ip, status)| (*ip, *wildcard || *status == IpStatus::Active))
                .collect();
            addresses.push((ip("192.0.2.77"), *wildcard));
            for (addr, allowed) in addresses {
                let got =
                    ipgate::acl::decide(snap.as_deref(), false, keys.get(id), Some(addr), || {
                        Timestamp::now().0
                    });
                decisions += 1;
                if matches!(got, ipgate::acl::Decision::Allow(_)) != allowed {
                    wrong_decisions += 1;
                }
            }
        }
    }
    stop.cancel();
    for (_, _, seen) in &gateways {
        check_order(seen, &mut out_of_order);
    }
    println!(
        "chaos, {:.0} min{}: {} acknowledged writes ({} distinct versions), {restarts} database restarts, \
         {kills} gateway restarts, {checks} snapshot checks: {mismatches} differed from the store, \
         {out_of_order} versions out of order, {lost} acknowledged writes lost; content: \
         {content_checked} written values checked, {content_wrong} not in the store \
         ({ambiguous} left unchecked: a write with an unknown outcome aimed at them too); \
         {decisions} gateway decisions checked, {wrong_decisions} differed from the store's rows",
        started.elapsed().as_secs_f64() / 60.0,
        if with_replica {
            format!(", 6 of 12 gateways on a replica rebuilt {rebuilds} times")
        } else {
            String::new()
        },
        acked.len(),
        versions.len(),
    );
}

/// What one write aimed at: a credential's wildcard, or one of its entries (by address
/// for an add, by id for a status change).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Aim {
    Wildcard(u64),
    Address(u64, IpAddr),
    Item(u64, u64),
}

impl Aim {
    fn of(credential: u64, change: &Change) -> Self {
        match change {
            Change::AddIp { ip, .. } => Aim::Address(credential, *ip),
            Change::SetIpStatus { item, .. } => Aim::Item(credential, *item),
            _ => Aim::Wildcard(credential),
        }
    }
}

/// A credential's wildcard and entries (id -> address, status), as stored.
type Stored = BTreeMap<u64, (bool, BTreeMap<u64, (IpAddr, IpStatus)>)>;

/// The last acknowledged value of everything written, by version.
#[derive(Default)]
struct Outcomes {
    /// (credential, entry id or none for the wildcard) -> (version, wildcard or status).
    last: BTreeMap<(u64, Option<u64>), (u64, Written)>,
    unknown: Vec<Aim>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Written {
    Wildcard(bool),
    Entry(IpAddr, IpStatus),
}

impl Outcomes {
    fn acknowledged(&mut self, credential: u64, version: u64, changed: &store::Changed) {
        let (slot, value) = match &changed.entry {
            Some(e) => (Some(e.id), Written::Entry(e.ip, e.status)),
            None => (None, Written::Wildcard(changed.credential.wildcard)),
        };
        let last = self.last.entry((credential, slot)).or_insert((0, value));
        if version >= last.0 {
            *last = (version, value);
        }
    }

    /// (values checked, values not in the store, values left unchecked).
    fn check(&self, stored: &Stored) -> (usize, usize, usize) {
        let (mut checked, mut wrong, mut ambiguous) = (0, 0, 0);
        for ((credential, slot), (_, value)) in &self.last {
            let Some((wildcard, entries)) = stored.get(credential) else {
                wrong += 1;
                continue;
            };
            let aimed_at_too = self.unknown.iter().any(|aim| match (aim, value, slot) {
                (Aim::Wildcard(c), Written::Wildcard(_), _) => c == credential,
                (Aim::Address(c, ip), Written::Entry(addr, _), _) => c == credential && ip == addr,
                (Aim::Item(c, item), Written::Entry(..), Some(id)) => c == credential && item == id,
                _ => false,
            });
            if aimed_at_too {
                ambiguous += 1;
                continue;
            }
            checked += 1;
            let holds = match (value, slot) {
                (Written::Wildcard(w), _) => w == wildcard,
                (Written::Entry(ip, status), Some(id)) => entries.get(id) == Some(&(*ip, *status)),
                (Written::Entry(..), None) => false,
            };
            if !holds {
                wrong += 1;
            }
        }
        (checked, wrong, ambiguous)
    }
}

/// Every credential's wildcard and entries, read through the store's API.
async fn stored_state(s: &Arc<dyn Store>, ids: &[u64]) -> Stored {
    let mut out = BTreeMap::new();
    for id in ids {
        let read = || async {
            let c = s.credential(*id).await?;
            let ips = s.ips(*id, store::Page::all()).await?;
            Ok::<_, StoreError>((c, ips))
        };
        let (c, ips) = loop {
            if let Ok(r) = read().await {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let entries = ips.iter().map(|e| (e.id, (e.ip, e.status))).collect();
        out.insert(*id, (c.wildcard, entries));
    }
    out
}

/// The store's version and contents, read whole.
async fn writer_truth(s: &Arc<dyn Store>) -> (u64, BTreeMap<u64, (KeyHash, SnapshotCredential)>) {
    loop {
        if let Ok(l) = s.load().await {
            return (l.snapshot.version(), contents(&l.snapshot));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn contents(s: &Snapshot) -> BTreeMap<u64, (KeyHash, SnapshotCredential)> {
    s.iter().map(|(k, c)| (c.id, (*k, c.clone()))).collect()
}

/// Versions a gateway published must only ever grow.
fn check_order(seen: &Seen, out_of_order: &mut usize) {
    let seen = seen.lock().unwrap();
    *out_of_order += seen.windows(2).filter(|w| w[1].0 <= w[0].0).count();
}
