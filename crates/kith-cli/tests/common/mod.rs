//! Shared harness: the real `kith` binary on loopback, with real files on disk.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod retrying_clients;

pub fn kith_bin() -> &'static str {
    env!("CARGO_BIN_EXE_kith")
}

/// Runs `kith ARGS` to completion; returns (status ok, stdout, stderr).
pub fn kith(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(kith_bin())
        .args(args)
        .env("KITH_LOG", "warn")
        .output()
        .expect("kith runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Runs `command`, which should end by itself (a `kith serve` that refuses to start, say), and
/// returns its output; one still running after 30 s is killed and the test fails, rather than
/// waiting for it forever.
pub fn output_of_one_that_ends(mut command: Command) -> std::process::Output {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kith runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("kith is waited for").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} still ran after 30 s; it should have ended by itself");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("kith's output is read")
}

/// `kith sql` as CSV: the rows, each a list of cells (no quoting; for simple values).
pub fn sql(data: &Path, query: &str) -> Vec<Vec<String>> {
    let (ok, stdout, stderr) = kith(&[
        "sql",
        "--data-dir",
        data.to_str().unwrap(),
        "--format",
        "csv",
        query,
    ]);
    assert!(ok, "{query}: {stderr}");
    stdout
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect()
}

pub fn create_key(data_dir: &Path, scope: &str, source: Option<&str>) -> String {
    let dir = data_dir.to_str().unwrap();
    let mut args = vec!["key", "create", "--data-dir", dir, "--scope", scope];
    if let Some(source) = source {
        args.extend(["--source", source]);
    }
    let (ok, stdout, stderr) = kith(&args);
    assert!(ok, "key create failed: {stderr}");
    stdout.trim().to_string()
}

pub struct KithServer {
    pub child: Child,
    pub base: String,
    pub data_dir: PathBuf,
    pub write_key: String,
    pub read_key: String,
}

impl KithServer {
    /// A fresh data directory with an ingest key (source `web`) and a read key.
    pub fn start(data_dir: &Path) -> KithServer {
        let write_key = create_key(data_dir, "ingest", Some("web"));
        let read_key = create_key(data_dir, "read", None);
        Self::start_with_keys(data_dir, write_key, read_key, &[])
    }

    pub fn start_with_keys(
        data_dir: &Path,
        write_key: String,
        read_key: String,
        extra: &[&str],
    ) -> KithServer {
        Self::start_binary(Path::new(kith_bin()), data_dir, write_key, read_key, extra)
    }

    /// [`KithServer::start_with_keys`] with another copy of the binary.
    pub fn start_binary(
        binary: &Path,
        data_dir: &Path,
        write_key: String,
        read_key: String,
        extra: &[&str],
    ) -> KithServer {
        Self::start_command(Command::new(binary), data_dir, write_key, read_key, extra)
    }

    /// [`KithServer::start_binary`] with `command`: the binary, and whatever else its process
    /// should start with.
    pub fn start_command(
        command: Command,
        data_dir: &Path,
        write_key: String,
        read_key: String,
        extra: &[&str],
    ) -> KithServer {
        Self::launch(command, data_dir, write_key, read_key, extra, true)
    }

    /// [`KithServer::start`] logging at `debug`, whose stderr nobody reads once it has said
    /// where it listens: every later write to it fails (a closed pipe).
    pub fn start_with_stderr_closed(data_dir: &Path) -> KithServer {
        let write_key = create_key(data_dir, "ingest", Some("web"));
        let read_key = create_key(data_dir, "read", None);
        let mut command = Command::new(kith_bin());
        command.env("KITH_LOG", "debug");
        Self::launch(command, data_dir, write_key, read_key, &[], false)
    }

    fn launch(
        mut command: Command,
        data_dir: &Path,
        write_key: String,
        read_key: String,
        extra: &[&str],
        echo_stderr: bool,
    ) -> KithServer {
        if command.get_envs().all(|(name, _)| name != "KITH_LOG") {
            command.env("KITH_LOG", "warn");
        }
        let mut child = command
            .args([
                "serve",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kith serve starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let _ = tx.send(addr);
                    if !echo_stderr {
                        return;
                    }
                    sent = true;
                    continue;
                }
                eprintln!("[kith] {line}");
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("kith serve printed its address");
        KithServer {
            child,
            base: format!("http://{addr}"),
            data_dir: data_dir.to_path_buf(),
            write_key,
            read_key,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(self) {
        let _ = self.stop_with_status();
    }

    /// SIGTERM, and how the process ended.
    pub fn stop_with_status(mut self) -> std::io::Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        self.child.wait()
    }

    /// POST /v1/query as JSON with the read key; panics unless 200.
    pub fn query(&self, sql: &str) -> Value {
        let (status, body) = post_json(
            &self.url("/v1/query"),
            &[("Authorization", &format!("Bearer {}", self.read_key))],
            &serde_json::json!({ "sql": sql }).to_string(),
        );
        assert_eq!(status, 200, "query failed: {body}");
        body
    }

    /// Rows of a query as JSON objects keyed by column name.
    pub fn rows(&self, sql: &str) -> Vec<serde_json::Map<String, Value>> {
        let result = self.query(sql);
        let columns: Vec<String> = result["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        result["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                columns
                    .iter()
                    .cloned()
                    .zip(row.as_array().unwrap().iter().cloned())
                    .collect()
            })
            .collect()
    }
}

impl Drop for KithServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// One series' value in the server's `/metrics` at `base`: `series` is the metric name with its
/// labels as the text shows them (`kith_lake_flushes_total{table="events"}`). `None` until the
/// server has recorded it.
pub fn metric(base: &str, series: &str) -> Option<f64> {
    let mut response = agent().get(format!("{base}/metrics")).call().ok()?;
    let text = response.body_mut().read_to_string().ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// A memory figure of process `pid` from `/proc/PID/status`, in KiB: `VmRSS` for what it holds
/// now, `VmHWM` for the most it has held.
pub fn process_memory_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// Checks a stored event's times against the device time an SDK sent as `timestamp` (with
/// `sentAt` when it flushed): `original_timestamp` is that time, and `timestamp` is it corrected
/// by Segment's rule, `receivedAt − (sentAt − timestamp)`, which on one machine (one clock) is
/// the device time plus the delivery delay.
pub fn assert_sdk_time_corrected(stored: &serde_json::Map<String, Value>, device_time: &str) {
    assert_eq!(stored["original_timestamp"], device_time, "{stored:?}");
    let time = |v: &Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
    };
    let delay = time(&stored["timestamp"]) - time(&Value::from(device_time));
    assert!(
        (0..30_000).contains(&delay.num_milliseconds()),
        "timestamp should be the device time plus the delivery delay, is {delay} later: {stored:?}"
    );
}

/// `send_with_sdk.py`'s track call holding float('nan'), which the Python SDKs write as `NaN`:
/// refused alone, plain and gzipped, with its text as sent, while the rest of its batch is stored.
pub fn assert_nan_events_refused_alone(server: &KithServer, prefix: &str) {
    let refused = server.rows(
        "SELECT message_id, code, raw LIKE '%\"score\": NaN%' AS as_sent FROM rejected_events \
         ORDER BY message_id",
    );
    let expected: Vec<Value> = ["", "-gzip"]
        .iter()
        .map(|suffix| {
            serde_json::json!({"message_id": format!("{prefix}-nan{suffix}"), "code": "invalid_json", "as_sent": true})
        })
        .collect();
    assert_eq!(
        refused.into_iter().map(Value::Object).collect::<Vec<_>>(),
        expected
    );
}

/// A response's whole body as text. ureq stops at 10 MB by default; some answers tests ask
/// for are larger (up to 200 MiB here).
pub fn whole_body(response: &mut ureq::http::Response<ureq::Body>) -> Result<String, ureq::Error> {
    response
        .body_mut()
        .with_config()
        .limit(200 << 20)
        .read_to_string()
}

/// POSTs a body; returns the status and the body parsed as JSON (Null when it is not JSON).
pub fn post(
    url: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Value, ureq::http::HeaderMap) {
    let mut request = agent().post(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.send(body).expect("request completes");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = whole_body(&mut response).unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

pub fn post_json(url: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    let (status, body, _) = post(url, &all, body.as_bytes());
    (status, body)
}

/// The `Authorization` header Segment SDKs send: Basic with the write key and an empty password.
pub fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// GETs a URL with headers; returns the status and the body parsed as JSON.
pub fn get(url: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().expect("request completes");
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// GETs a URL; returns the status, the `Content-Type` and `Cache-Control` headers, and the body.
pub fn get_raw(url: &str, headers: &[(&str, &str)]) -> (u16, String, String, Vec<u8>) {
    let mut request = agent().get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut response = request.call().expect("request completes");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let (content_type, cache_control) = (header("content-type"), header("cache-control"));
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_vec().unwrap_or_default();
    (status, content_type, cache_control, body)
}

/// A body parsed as JSON (Null when it is not JSON).
pub fn json_of(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap_or(Value::Null)
}

impl KithServer {
    /// GET with the read key.
    pub fn get(&self, path: &str) -> (u16, Value) {
        get(
            &self.url(path),
            &[("Authorization", &format!("Bearer {}", self.read_key))],
        )
    }
}

impl KithServer {
    /// A fresh data directory under `dir` (with an ingest key for source `web` and a read key),
    /// served with `DIR/kith.toml` holding `config`. Returns the server and the config's path.
    pub fn start_with_config(dir: &Path, config: &str) -> (KithServer, PathBuf) {
        Self::start_command_with_config(Command::new(kith_bin()), dir, config)
    }

    /// [`KithServer::start_with_config`] with `command`: the binary, and whatever else its
    /// process should start with.
    pub fn start_command_with_config(
        command: Command,
        dir: &Path,
        config: &str,
    ) -> (KithServer, PathBuf) {
        let config_path = dir.join("kith.toml");
        std::fs::write(&config_path, config).unwrap();
        let data_dir = dir.join("data");
        let write_key = create_key(&data_dir, "ingest", Some("web"));
        let read_key = create_key(&data_dir, "read", None);
        let server = KithServer::start_command(
            command,
            &data_dir,
            write_key,
            read_key,
            &["--config", config_path.to_str().unwrap()],
        );
        (server, config_path)
    }

    /// Stops the server and starts it again on the same data, keys and config file.
    pub fn restart_with_config(self, config_path: &Path) -> KithServer {
        let (data_dir, write_key, read_key) = (
            self.data_dir.clone(),
            self.write_key.clone(),
            self.read_key.clone(),
        );
        self.stop();
        KithServer::start_with_keys(
            &data_dir,
            write_key,
            read_key,
            &["--config", config_path.to_str().unwrap()],
        )
    }
}

/// Runs `scripts/SCRIPT`, a setup script (idempotent: what it prepared before is reused), and
/// panics with its output unless it succeeds; `what` says what it installs.
pub fn run_setup(script: &str, what: &str) {
    let setup = repo_root().join("scripts").join(script);
    let output = Command::new("bash")
        .arg(&setup)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{} failed (it installs {what}):\n{}",
        setup.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The test venv's Python (created by scripts/setup-test-env.sh, from PyPI).
pub fn python() -> PathBuf {
    run_setup("setup-test-env.sh", "the test's Python packages");
    std::env::var_os("KITH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/test-venv"))
        .join("bin/python")
}

/// Runs tests/python/SCRIPT with the venv's Python; its stdout as JSON.
pub fn run_python(script: &str, args: &[&str]) -> Value {
    let path = repo_root().join("tests/python").join(script);
    run_script(Command::new(python()).arg(path).args(args), script)
}

/// Runs a test script (`command`); panics with its stderr unless it succeeds and prints JSON,
/// which it returns.
pub fn run_script(command: &mut Command, script: &str) -> Value {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{script} cannot start: {e}"));
    assert!(
        output.status.success(),
        "{script} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The repository's root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Polls until the profile answers (resolution runs just after the ack).
pub fn profile(server: &KithServer, lookup: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = server.get(&format!("/v1/profiles/{lookup}"));
        if status == 200 {
            return body;
        }
        assert!(Instant::now() < deadline, "{lookup}: {status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
