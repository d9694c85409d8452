//! A running `ipgate serve`: started on port 0 with JSON logs, its listening addresses
//! read from them, every line kept for the test to check; and `ipgate admin` on its
//! store.

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::client::{send_raw, Answer};
use super::{ip, BIN, KEY_HEADER, PATIENCE};

/// Config sections and keys, rendered to TOML. Values are TOML literals.
#[derive(Clone, Default)]
pub struct Settings(BTreeMap<String, BTreeMap<String, String>>);

impl Settings {
    pub fn new(upstream: &str) -> Self {
        Self::default()
            .set("server.listen", "\"[::]:0\"")
            .set("server.admin_listen", "\"127.0.0.1:0\"")
            .set("server.workers", "1")
            .set("server.shutdown_grace", "\"5s\"")
            .set("upstream.url", &format!("\"{upstream}\""))
            .set("store.url", "\"sqlite://ipgate.db\"")
            .set("refresh.interval", "\"100ms\"")
            .set("log.format", "\"json\"")
    }

    pub fn set(mut self, key: &str, value: &str) -> Self {
        let (section, name) = key.split_once('.').unwrap();
        self.0
            .entry(section.into())
            .or_default()
            .insert(name.into(), value.into());
        self
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.0 {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }
}

/// A running `ipgate serve`.
pub struct Gateway {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Child,
    pub public: SocketAddr,
    pub admin: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

pub fn write_config(dir: &Path, settings: &Settings) -> PathBuf {
    let path = dir.join("config.toml");
    std::fs::write(&path, settings.render()).unwrap();
    path
}

impl Gateway {
    /// Starts the binary and waits for both listeners (not for readiness).
    pub fn start(settings: &Settings) -> Self {
        Self::start_with_env(settings, &[])
    }

    pub fn start_with_env(settings: &Settings, env: &[(&str, &str)]) -> Self {
        Self::start_in(tempfile::tempdir().unwrap(), settings, env)
    }

    /// Starts in a prepared folder (files the config names relative to it).
    pub fn start_in(dir: tempfile::TempDir, settings: &Settings, env: &[(&str, &str)]) -> Self {
        let config = write_config(dir.path(), settings);
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(&config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == "listening" {
                        let addr: SocketAddr = v["addr"].as_str().unwrap().parse().unwrap();
                        let _ = tx.send((v["listener"].as_str().unwrap().to_owned(), addr));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut public = None;
        let mut admin = None;
        while public.is_none() || admin.is_none() {
            match rx.recv_timeout(PATIENCE) {
                Ok((which, addr)) if which == "public" => public = Some(addr),
                Ok((_, addr)) => admin = Some(addr),
                Err(_) => panic!("gateway did not start: {:?}", logs.lock().unwrap()),
            }
        }
        Self {
            dir,
            config,
            child,
            public: public.unwrap(),
            admin: admin.unwrap(),
            logs,
        }
    }

    /// Where a client from `from` connects: the public port on the loopback of the
    /// same family.
    pub fn target(&self, from: IpAddr) -> SocketAddr {
        let host = if from.is_ipv6() {
            ip("::1")
        } else {
            ip("127.0.0.1")
        };
        SocketAddr::new(host, self.public.port())
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Runs `ipgate admin --json ARGS` on this gateway's store and returns its JSON.
    pub fn admin(&self, args: &[&str]) -> Value {
        let out = self.admin_raw(args);
        assert!(
            out.status.success(),
            "ipgate admin {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn admin_raw(&self, args: &[&str]) -> std::process::Output {
        Command::new(BIN)
            .args(["admin", "--config"])
            .arg(&self.config)
            .arg("--json")
            .args(args)
            .output()
            .unwrap()
    }

    /// A new user with a new (pending) key: (user id, credential id, key).
    pub fn new_key(&self) -> (u64, u64, String) {
        let user = self.admin(&["user", "add"])["id"].as_u64().unwrap();
        let (cred, key) = self.key_for(user);
        (user, cred, key)
    }

    pub fn key_for(&self, user: u64) -> (u64, String) {
        let k = self.admin(&["key", "create", "--user", &user.to_string()]);
        (
            k["credential_id"].as_u64().unwrap(),
            k["key"].as_str().unwrap().to_owned(),
        )
    }

    /// A user with an ACTIVE key whose ACTIVE addresses are `ips`, registered through
    /// the device-server endpoint from the first of them.
    pub async fn registered_key(&self, ips: &[&str]) -> (u64, u64, String) {
        let (user, cred, key) = self.new_key();
        let body = json!({"description": "test device", "secret": key, "permitted_ips": ips});
        let r = self.register_device(ip(ips[0]), body).await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "registration failed: {}",
            r.text()
        );
        self.wait_until_allowed(ip(ips[0]), &key).await;
        (user, cred, key)
    }

    pub async fn get(&self, from: IpAddr, path: &str, key: Option<&str>) -> Answer {
        let headers: Vec<(&str, &str)> = key.map(|k| vec![(KEY_HEADER, k)]).unwrap_or_default();
        self.send(from, Method::GET, path, &headers, None).await
    }

    pub async fn send(
        &self,
        from: IpAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> Answer {
        let mut all = headers.to_vec();
        let declared = headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
        if body.is_some() && !declared {
            all.push(("content-type", "application/json"));
        }
        let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        send_raw(from, self.target(from), method, path, &all, body).await
    }

    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if self.admin_get("/readyz").await.0 == StatusCode::OK {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway never became ready: {:?}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls until `key` passes from `from` (a change reached the snapshot).
    pub async fn wait_until_allowed(&self, from: IpAddr, key: &str) {
        self.wait_for_status(from, key, StatusCode::OK).await;
    }

    pub async fn wait_for_status(&self, from: IpAddr, key: &str, want: StatusCode) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let got = self.get(from, "/probe", Some(key)).await.status;
            if got == want {
                return;
            }
            if Instant::now() > deadline {
                let logs = self.logs();
                let tail = &logs[logs.len().saturating_sub(5)..];
                panic!("still {got}, wanted {want}; last log lines: {tail:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn admin_get(&self, path: &str) -> (StatusCode, String) {
        let r = send_raw(
            ip("127.0.0.1"),
            self.admin,
            Method::GET,
            path,
            &[],
            Bytes::new(),
        )
        .await;
        let text = r.text();
        (r.status, text)
    }

    /// Waits until the sample is at least `at_least` (a counter that should move).
    pub async fn wait_metric(&self, sample: &str, at_least: f64) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let now = self.metric(sample).await;
            if now >= at_least {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} stayed at {now}, wanted {at_least}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until a log line contains `needle`.
    pub async fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + PATIENCE;
        while !self.logs().iter().any(|l| l.contains(needle)) {
            assert!(Instant::now() < deadline, "no log line says {needle:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// `POST /v1/device-server` from `from`: how a key gets its first addresses.
    pub async fn register_device(&self, from: IpAddr, body: Value) -> Answer {
        self.send(from, Method::POST, "/v1/device-server", &[], Some(body))
            .await
    }

    /// The value of one sample line in `/metrics`, e.g. `ipgate_refresh_total{result="error"}`.
    /// Every series should exist from the start, but a busy machine may scrape before
    /// the gateway got round to something: a missing sample is waited for (PATIENCE),
    /// not a failure at once.
    pub async fn metric(&self, sample: &str) -> f64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let (_, text) = self.admin_get("/metrics").await;
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix(sample).and_then(|v| v.trim().parse().ok()));
            if let Some(value) = value {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "{sample} not in metrics:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit by itself (after a signal), at most `PATIENCE`.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "gateway did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{name} {pid} failed");
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
