//! A real PostgreSQL server for tests: Debian's binaries (`/usr/lib/postgresql/*/bin`),
//! a fresh cluster in a temp folder, on a free loopback port, run as the `postgres`
//! user when the tests run as root (PostgreSQL refuses root). A test can stop, kill
//! and restart it.
//!
//! Without PostgreSQL installed, [`Postgres::available`] prints one "skipped" line per
//! test binary and tests return early; with `IPGATE_REQUIRE_POSTGRES=1` (CI) the skip
//! is a failure. A watchdog shell stops the server if the test process dies first, so
//! no server outlives the tests that started it.

#![allow(dead_code)] // each test file uses its own part of the harness

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

pub const SUPERUSER: &str = "ipgate";
pub const PASSWORD: &str = "test-only-password";
const REQUIRE_ENV: &str = "IPGATE_REQUIRE_POSTGRES";
const START_PATIENCE: Duration = Duration::from_secs(30);

/// The newest installed server's binaries, if any.
pub fn bin_dir() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The `postgres` account's uid and gid, when the tests run as root.
fn run_as() -> Option<(u32, u32)> {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next()?.parse::<u32>().ok())?;
    if uid != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() < 4 || f[0] != "postgres" {
            return None;
        }
        Some((f[2].parse().ok()?, f[3].parse().ok()?))
    })
}

fn as_server_user(cmd: &mut Command) -> &mut Command {
    if let Some((uid, gid)) = run_as() {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL cluster of the test's own.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    server: Mutex<Option<Child>>,
    watchdog: Mutex<Option<Child>>,
    /// `-c name=value` settings beyond the defaults, kept across restarts.
    settings: Vec<String>,
}

static SKIP_NOTICE: Once = Once::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

impl Postgres {
    /// Whether PostgreSQL tests can run here. Prints the skip once per test binary;
    /// fails when CI requires PostgreSQL.
    pub fn available() -> bool {
        if bin_dir().is_some() {
            return true;
        }
        assert!(
            std::env::var_os(REQUIRE_ENV).is_none(),
            "{REQUIRE_ENV} is set but no PostgreSQL server is installed under /usr/lib/postgresql"
        );
        SKIP_NOTICE.call_once(|| {
            // Past the test harness's capture, so it is seen: one line per binary.
            let _ = writeln!(
                std::io::stderr(),
                "skipped: no PostgreSQL (install Debian's postgresql package to run the PostgreSQL tests)"
            );
        });
        false
    }

    /// One server shared by the tests of this binary (each takes a database of its
    /// own with [`Postgres::database`]); `None` when PostgreSQL is not installed.
    pub fn shared() -> Option<&'static Postgres> {
        static SHARED: OnceLock<Option<Postgres>> = OnceLock::new();
        SHARED
            .get_or_init(|| Self::available().then(Postgres::start))
            .as_ref()
    }

    /// A new cluster, started. Panics when PostgreSQL is not installed: check
    /// [`Postgres::available`] first.
    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// The same with extra server settings (`"max_connections=2200"`).
    pub fn start_with(settings: &[&str]) -> Postgres {
        let bin = bin_dir().expect("PostgreSQL binaries");
        let dir = tempfile::Builder::new()
            .prefix("ipgate-pg")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid)).unwrap();
        }
        let out = as_server_user(&mut Command::new(bin.join("initdb")))
            .arg("-D")
            .arg(dir.path().join("data"))
            .args([
                "-U",
                SUPERUSER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pg = Postgres {
            dir,
            bin,
            port: 0,
            server: Mutex::new(None),
            watchdog: Mutex::new(None),
            settings: settings.iter().map(|s| s.to_string()).collect(),
        };
        pg.launch_on_a_free_port()
    }

    fn launch_on_a_free_port(mut self) -> Postgres {
        for _ in 0..5 {
            self.port = free_port();
            if self.launch().is_ok() {
                return self;
            }
        }
        panic!("PostgreSQL did not start: {}", self.log_tail());
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Starts the server on `self.port` and waits until it accepts connections.
    fn launch(&self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(self.log_path(), Some(uid), Some(gid)).unwrap();
        }
        let child = as_server_user(&mut Command::new(self.bin.join("postgres")))
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300"])
            .args(["-c", "shared_buffers=32MB"])
            // A crash of the server process loses nothing committed without fsync (the
            // data is in the kernel's cache); only a crash of the machine would, and
            // tests never do that. It makes creating databases and commits fast.
            .args(["-c", "fsync=off"])
            .args(self.settings.iter().flat_map(|s| ["-c", s.as_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id();
        *self.server.lock().unwrap() = Some(child);
        self.guard(pid);
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-q"])
                .status()
                .unwrap()
                .success();
            if ready {
                return Ok(());
            }
            if let Some(status) = self
                .server
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().unwrap())
            {
                return Err(format!("postgres exited: {status}"));
            }
            if Instant::now() > deadline {
                return Err("postgres did not become ready".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A shell that stops the server (fast shutdown) and removes its folder once this
    /// test process is gone, whatever way it went (a static is never dropped).
    fn guard(&self, server: u32) {
        let me = std::process::id();
        let dir = self.dir.path().display();
        let script = format!(
            "while kill -0 {me} 2>/dev/null && kill -0 {server} 2>/dev/null; do sleep 1; done; \
             kill -0 {me} 2>/dev/null && exit 0; kill -INT {server} 2>/dev/null; \
             while kill -0 {server} 2>/dev/null; do sleep 0.2; done; rm -rf '{dir}'"
        );
        let watchdog = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if let Some(mut old) = self.watchdog.lock().unwrap().replace(watchdog) {
            let _ = old.kill();
            let _ = old.wait();
        }
    }

    fn signal(&self, name: &str) -> Option<Child> {
        let child = self.server.lock().unwrap().take()?;
        Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .unwrap();
        Some(child)
    }

    /// Fast shutdown (SIGINT): open sessions are ended, the server exits.
    pub fn stop(&self) {
        if let Some(mut child) = self.signal("INT") {
            let deadline = Instant::now() + START_PATIENCE;
            while child.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same data.
    pub fn restart(&self) {
        self.stop();
        self.start_again();
    }

    /// Starts a stopped server again on the same port.
    pub fn start_again(&self) {
        let deadline = Instant::now() + START_PATIENCE;
        // The port may linger a moment after the old server exits.
        while let Err(e) = self.launch() {
            assert!(
                Instant::now() < deadline,
                "restart failed: {e}: {}",
                self.log_tail()
            );
            self.stop();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Runs a client program (`psql`, `pg_dump`) as the superuser against this server
    /// with `args`; panics with its stderr on failure, returns its stdout trimmed.
    fn client<I, A>(&self, program: &str, args: I) -> String
    where
        I: IntoIterator<Item = A>,
        A: AsRef<std::ffi::OsStr>,
    {
        let port = self.port.to_string();
        let out = Command::new(self.bin.join(program))
            .args(["-h", "127.0.0.1", "-p", &port, "-U", SUPERUSER])
            .args(args)
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Runs SQL as the superuser on `database`; panics on failure.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        self.client(
            "psql",
            ["-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
        )
    }

    /// A logical backup of `database` into `file` (pg_dump).
    pub fn dump(&self, database: &str, file: &Path) {
        let d = std::ffi::OsStr::new;
        self.client("pg_dump", [d("-d"), d(database), d("-f"), file.as_os_str()]);
    }

    /// Replaces `database` with the backup in `file`, as an operator restoring it would
    /// (open sessions are ended).
    pub fn restore(&self, database: &str, file: &Path) {
        self.psql(
            "postgres",
            &format!("DROP DATABASE {database} WITH (FORCE)"),
        );
        self.psql("postgres", &format!("CREATE DATABASE {database}"));
        let d = std::ffi::OsStr::new;
        self.client(
            "psql",
            [
                d("-d"),
                d(database),
                d("-v"),
                d("ON_ERROR_STOP=1"),
                d("-q"),
                d("-f"),
                file.as_os_str(),
            ],
        );
    }

    /// A new, empty database of the test's own.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        self.psql(
            "postgres",
            &format!("CREATE DATABASE {name} STRATEGY = FILE_COPY"),
        );
        name
    }

    /// The `store.url` for `database`, password in it.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}:{PASSWORD}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// The same without the password (for `store.password_file` or `PGPASSWORD`).
    pub fn url_without_password(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// Writes `n` new credentials (one ACTIVE address each) into an ipgate database
    /// behind every gateway's back, each a version of its own in the change log: what
    /// a gateway that was away while that many changed has to catch up with.
    pub fn many_changes(&self, database: &str, n: u32) {
        self.psql(
            database,
            &format!(
                "INSERT INTO users (name, created) VALUES ('bulk', 0); \
                 WITH c AS ( \
                   INSERT INTO credentials (user_id, key_hash, status, created, updated) \
                   SELECT (SELECT MAX(id) FROM users), sha256(('bulk' || (SELECT MAX(id) FROM users) || '-' || g)::BYTEA), \
                          'ACTIVE', 0, 0 \
                   FROM generate_series(1, {n}) g RETURNING id) \
                 INSERT INTO permitted_ips (credential_id, ip, status, created, updated) \
                 SELECT id, '10.200.0.1', 'ACTIVE', 0, 0 FROM c; \
                 INSERT INTO change_log (version, credential_id, stamp, committed_at) \
                 SELECT v.value + ROW_NUMBER() OVER (ORDER BY c.id), c.id, \
                        2 * (v.value + ROW_NUMBER() OVER (ORDER BY c.id)) + 1, 0 \
                 FROM credentials c, \
                      (SELECT value FROM meta WHERE name = 'change_version') v \
                 WHERE c.user_id = (SELECT MAX(id) FROM users); \
                 UPDATE meta SET value = value + {n} WHERE name = 'change_version';"
            ),
        );
    }

    /// Pids of the server's processes (postmaster and backends), for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        let Some(main) = self.server.lock().unwrap().as_ref().map(Child::id) else {
            return Vec::new();
        };
        let mut pids = vec![main];
        if let Ok(children) = std::fs::read_to_string(format!("/proc/{main}/task/{main}/children"))
        {
            pids.extend(
                children
                    .split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        pids
    }

    /// Gives a file in the cluster's folder to the server's user, with `mode`.
    pub fn own_file(&self, path: &Path, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A streaming replica of this server: `pg_basebackup -R` into a cluster of its
    /// own, started on another free loopback port (hot standby: it answers reads).
    pub fn replica(&self) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("ipgate-pg-replica")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = run_as() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let replica = Postgres {
            dir,
            bin: self.bin.clone(),
            port: 0,
            server: Mutex::new(None),
            watchdog: Mutex::new(None),
            settings: self.settings.clone(),
        };
        self.base_backup_into(&replica.data_dir());
        replica.launch_on_a_free_port()
    }

    /// Makes a replica of this server again from a fresh base backup, as an operator
    /// rebuilding it would: stopped, its data replaced, started on the same port.
    pub fn rebuild_replica(&self, replica: &Postgres) {
        replica.stop();
        let data = replica.data_dir();
        std::fs::remove_dir_all(&data).unwrap();
        self.base_backup_into(&data);
        replica.start_again();
    }

    fn base_backup_into(&self, data: &Path) {
        let out = as_server_user(&mut Command::new(self.bin.join("pg_basebackup")))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .arg("-D")
            .arg(data)
            .args(["-R", "-X", "stream", "--no-sync", "-c", "fast"])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_basebackup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Promotes a replica to a primary of its own (it stops following).
    pub fn promote(&self) {
        self.psql("postgres", "SELECT pg_promote(true, 30)");
    }

    /// Waits until this replica has replayed everything `primary` had committed when
    /// called.
    pub fn wait_replayed(&self, primary: &Postgres) {
        let target = primary.psql("postgres", "SELECT pg_current_wal_lsn()");
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let caught_up = self.psql(
                "postgres",
                &format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn"),
            );
            if caught_up == "t" {
                return;
            }
            assert!(Instant::now() < deadline, "the replica never caught up");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Pauses or resumes this replica's replay: lag on demand.
    pub fn pause_replay(&self, paused: bool) {
        let f = if paused {
            "pg_wal_replay_pause"
        } else {
            "pg_wal_replay_resume"
        };
        self.psql("postgres", &format!("SELECT {f}()"));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
        if let Some(mut watchdog) = self.watchdog.lock().unwrap().take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}
