//! Ingest benchmark. Starts `kith serve` on a fresh data directory, then drives it over loopback
//! HTTP with concurrent clients sending realistic Segment batches (track, page, identify with the
//! context browsers and server SDKs attach), first against the real durable path (`/v1/batch`:
//! journal with fsync group commit, then the Arrow buffer) and then against the no-op endpoint
//! (same parsing and auth, nothing stored) for the ceiling. Reports accepted events/s, request
//! latency p50/p99, the server's CPU time per event on each path and its peak RSS.
//!
//! With `--rounds N` the two runs alternate N times on the same server and the summary gives
//! the medians: on a small shared machine one pair of runs can differ by a tenth from the next,
//! so a single pair is not enough to tell whether the durable path reaches half the ceiling.
//!
//! Usage: kith-ingest-bench [--kith PATH] [--clients N] [--seconds S] [--batch N] [--rounds N]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

struct Options {
    kith: PathBuf,
    clients: usize,
    seconds: u64,
    batch: usize,
    rounds: usize,
}

const USAGE: &str = "usage: kith-ingest-bench [--kith PATH] [--clients N] [--seconds S] [--batch N] [--rounds N (1-5)]";

/// Durable round `r` numbers its messageIds from `r * DURABLE_IDS_PER_ROUND`, so every round's
/// events are new; the no-op runs store nothing and number theirs from `NOOP_IDS_FROM`.
const DURABLE_IDS_PER_ROUND: u64 = 1_000_000_000;
const NOOP_IDS_FROM: u64 = 5_000_000_000;
const MAX_ROUNDS: usize = (NOOP_IDS_FROM / DURABLE_IDS_PER_ROUND) as usize;

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        kith: PathBuf::from("target/release/kith"),
        clients: 8,
        seconds: 10,
        batch: 100,
        rounds: 1,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |flag: &str, value: Option<&String>| -> Result<usize, String> {
        value
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive whole number"))
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1);
        match args[i].as_str() {
            "--kith" => {
                options.kith = PathBuf::from(value.ok_or("--kith needs the path of a kith binary")?)
            }
            "--clients" => options.clients = number("--clients", value)?,
            "--seconds" => options.seconds = number("--seconds", value)? as u64,
            "--batch" => options.batch = number("--batch", value)?,
            "--rounds" => {
                options.rounds = number("--rounds", value)?;
                if options.rounds > MAX_ROUNDS {
                    return Err(format!("--rounds is at most {MAX_ROUNDS}"));
                }
            }
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        i += 2;
    }
    Ok(options)
}

/// Width of the per-request counter patched into every messageId, so bodies are built once.
const COUNTER_WIDTH: usize = 10;
const COUNTER_MARK: &str = "@@@@@@@@@@";

/// A batch body with `COUNTER_MARK` in every messageId, and where the marks are.
struct Template {
    bytes: Vec<u8>,
    marks: Vec<usize>,
}

fn realistic_event(i: usize, client: usize) -> Value {
    let message_id = format!("bench-{client}-{COUNTER_MARK}-{i:04}");
    let anonymous_id = format!(
        "3f9a1c2e-5b7d-4e8f-a0b1-{:012}",
        (client * 1000 + i) % 50_000
    );
    let context = json!({
        "library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
        "page": {"path": "/p/tenis-a-1", "referrer": "https://www.google.com/", "title": "Tenis A-1 | Tienda",
                 "url": "https://tienda.mx/p/tenis-a-1?utm_source=facebook"},
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_3 like Mac OS X) AppleWebKit/605.1.15 Mobile/15E148",
        "locale": "es-MX", "timezone": "America/Mexico_City",
        "campaign": {"source": "facebook", "medium": "paid", "name": "buen-fin"},
        "consent": {"categoryPreferences": {"analytics": true, "marketing": !i.is_multiple_of(3)}}
    });
    match i % 10 {
        0 => {
            json!({"type": "identify", "userId": format!("user-{}", i % 5000), "anonymousId": anonymous_id,
                    "traits": {"email": format!("cliente{i}@example.com"), "phone": "+52 55 1234 5678", "city": "Guadalajara"},
                    "context": context, "messageId": message_id, "timestamp": "2024-11-15T18:20:00.123Z"})
        }
        1..=4 => json!({"type": "page", "anonymousId": anonymous_id, "name": "Producto",
                    "properties": {"path": "/p/tenis-a-1", "url": "https://tienda.mx/p/tenis-a-1", "title": "Tenis A-1"},
                    "context": context, "messageId": message_id, "originalTimestamp": "2024-11-15T18:20:00.123Z", "sentAt": "2024-11-15T18:20:01.000Z"}),
        _ => {
            json!({"type": "track", "anonymousId": anonymous_id, "userId": format!("user-{}", i % 5000),
                    "event": if i % 10 == 9 { "Order Completed" } else { "Product Viewed" },
                    "properties": {"product_id": format!("sku-{}", i % 300), "price": 899.0, "currency": "MXN", "revenue": if i % 10 == 9 { 1798.0 } else { 0.0 }, "quantity": 2, "category": "Calzado"},
                    "context": context, "messageId": message_id, "timestamp": "2024-11-15T18:20:00.123Z"})
        }
    }
}

fn template(client: usize, batch: usize) -> Template {
    let events: Vec<Value> = (0..batch).map(|i| realistic_event(i, client)).collect();
    let body = json!({"batch": events, "sentAt": "2024-11-15T18:20:01.000Z"}).to_string();
    let bytes = body.into_bytes();
    let mark = COUNTER_MARK.as_bytes();
    let marks = bytes
        .windows(mark.len())
        .enumerate()
        .filter(|(_, w)| *w == mark)
        .map(|(at, _)| at)
        .collect();
    Template { bytes, marks }
}

fn patch(template: &Template, body: &mut [u8], counter: u64) {
    let digits = format!("{counter:0width$}", width = COUNTER_WIDTH);
    for &at in &template.marks {
        body[at..at + COUNTER_WIDTH].copy_from_slice(digits.as_bytes());
    }
}

struct RunResult {
    events: u64,
    requests: u64,
    failures: u64,
    elapsed: Duration,
    latencies_us: Vec<u64>,
}

fn drive(url: &str, write_key: &str, options: &Options, unique_from: u64) -> RunResult {
    let stop = Arc::new(AtomicBool::new(false));
    let counter = Arc::new(AtomicU64::new(unique_from));
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"))
    );
    let started = Instant::now();
    let handles: Vec<_> = (0..options.clients)
        .map(|client| {
            let (stop, counter, auth, url) =
                (stop.clone(), counter.clone(), auth.clone(), url.to_string());
            let template = template(client, options.batch);
            let batch = options.batch as u64;
            std::thread::spawn(move || {
                // Timeouts per phase, not `timeout_global`: with a global timeout ureq resolves
                // the address on a new thread for every request (even over a pooled
                // connection), which cost the client about a third of its CPU.
                let phase = Some(Duration::from_secs(30));
                let agent: ureq::Agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_connect(phase)
                    .timeout_send_request(phase)
                    .timeout_send_body(phase)
                    .timeout_recv_response(phase)
                    .timeout_recv_body(phase)
                    .build()
                    .into();
                let mut body = template.bytes.clone();
                let (mut events, mut requests, mut failures) = (0u64, 0u64, 0u64);
                let mut latencies = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    patch(
                        &template,
                        &mut body,
                        counter.fetch_add(1, Ordering::Relaxed),
                    );
                    let sent = Instant::now();
                    let response = agent
                        .post(&url)
                        .header("Authorization", &auth)
                        .header("Content-Type", "application/json")
                        .send(&body[..]);
                    let ok = match response {
                        Ok(mut r) if r.status().as_u16() == 200 => {
                            let answer: Value = r.body_mut().read_json().unwrap_or(Value::Null);
                            answer["accepted"].as_u64() == Some(batch)
                        }
                        Ok(mut r) => {
                            let _ = r.body_mut().read_to_string();
                            false
                        }
                        Err(_) => false,
                    };
                    latencies.push(sent.elapsed().as_micros() as u64);
                    requests += 1;
                    if ok {
                        events += batch;
                    } else {
                        failures += 1;
                    }
                }
                (events, requests, failures, latencies)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(options.seconds));
    stop.store(true, Ordering::Relaxed);
    let mut result = RunResult {
        events: 0,
        requests: 0,
        failures: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::new(),
    };
    for handle in handles {
        let (events, requests, failures, latencies) = handle.join().expect("client thread");
        result.events += events;
        result.requests += requests;
        result.failures += failures;
        result.latencies_us.extend(latencies);
    }
    result.elapsed = started.elapsed();
    result.latencies_us.sort_unstable();
    result
}

/// One path's run with the server CPU it cost.
struct Measured {
    run: RunResult,
    /// Server CPU seconds from an idle server to idle again, so the run's last flush counts.
    cpu_seconds: f64,
    /// Share of the machine's CPU time left idle while the clients were sending: what the run
    /// did not turn into work (waiting on fsync, for instance), where the load generator's own
    /// share is already counted as busy.
    machine_idle: f64,
    /// Journal group commits (one fsync each) during the run, from the server's `/metrics`.
    journal_commits: Option<f64>,
    /// Server CPU seconds of each of `THREAD_GROUPS` over the same span as `cpu_seconds`
    /// (threads that ended in between are in `cpu_seconds` only).
    cpu_by_group: [f64; THREAD_GROUPS.len()],
    /// CPU seconds the load generator (this process) used while the clients were sending.
    client_cpu_seconds: f64,
}

impl Measured {
    fn events_per_second(&self) -> f64 {
        self.run.events as f64 / self.run.elapsed.as_secs_f64()
    }

    /// Server CPU per accepted event: the cost of the path, free of the load generator's share
    /// of the cores.
    fn cpu_per_event_us(&self) -> f64 {
        self.cpu_seconds * 1e6 / self.run.events.max(1) as f64
    }

    /// Server CPU per accepted event spent by the threads of `THREAD_GROUPS[group]`; with
    /// `None`, by every other thread (and any that ended during the run).
    fn thread_cpu_per_event_us(&self, group: Option<usize>) -> f64 {
        let seconds = match group {
            Some(group) => self.cpu_by_group[group],
            // Process and thread times are counted in whole ticks each, so the difference can
            // come out a tick below zero.
            None => (self.cpu_seconds - self.cpu_by_group.iter().sum::<f64>()).max(0.0),
        };
        seconds * 1e6 / self.run.events.max(1) as f64
    }

    /// The load generator's CPU per event: on a machine it shares with the server, what it
    /// takes is not available to the server.
    fn client_cpu_per_event_us(&self) -> f64 {
        self.client_cpu_seconds * 1e6 / self.run.events.max(1) as f64
    }

    /// Events acknowledged per journal fsync, when the run wrote the journal.
    fn events_per_commit(&self) -> Option<f64> {
        self.journal_commits
            .filter(|commits| *commits > 0.0)
            .map(|commits| self.run.events as f64 / commits)
    }
}

struct Round {
    durable: Measured,
    noop: Measured,
}

impl Round {
    /// Durable throughput as a fraction of the no-op ceiling's, the measure.
    fn ratio(&self) -> f64 {
        self.durable.events_per_second() / self.noop.events_per_second().max(1.0)
    }
}

/// Runs `drive` once the server is idle and counts the server's CPU until it is idle again.
fn measured(pid: u32, server: &Server, drive: impl FnOnce() -> RunResult) -> Measured {
    wait_until_idle(pid);
    let before = cpu_seconds(pid).unwrap_or(f64::NAN);
    let threads_before = cpu_seconds_by_thread(pid);
    let commits_before = server.metric("kith_journal_fsyncs_total");
    let ticks_before = machine_cpu_ticks();
    let client_before = cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let run = drive();
    let client_after = cpu_seconds(std::process::id()).unwrap_or(f64::NAN);
    let ticks_after = machine_cpu_ticks();
    let commits_after = server.metric("kith_journal_fsyncs_total");
    wait_until_idle(pid);
    let threads_after = cpu_seconds_by_thread(pid);
    let mut cpu_by_group = [0.0; THREAD_GROUPS.len()];
    for (tid, (name, seconds)) in &threads_after {
        if let Some(group) = thread_group(name) {
            cpu_by_group[group] += seconds - threads_before.get(tid).map_or(0.0, |(_, s)| *s);
        }
    }
    let machine_idle = match (ticks_before, ticks_after) {
        (Some((idle0, total0)), Some((idle1, total1))) if total1 > total0 => {
            (idle1 - idle0) as f64 / (total1 - total0) as f64
        }
        _ => f64::NAN,
    };
    Measured {
        run,
        cpu_seconds: cpu_seconds(pid).unwrap_or(f64::NAN) - before,
        machine_idle,
        journal_commits: commits_before
            .zip(commits_after)
            .map(|(before, after)| after - before),
        cpu_by_group,
        client_cpu_seconds: client_after - client_before,
    }
}

/// The server under test, as far as reading its metrics goes.
struct Server {
    agent: ureq::Agent,
    base: String,
}

impl Server {
    /// One unlabelled counter from the server's Prometheus `/metrics` (0 until it first counts).
    fn metric(&self, name: &str) -> Option<f64> {
        let text = self
            .agent
            .get(format!("{}/metrics", self.base))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        match text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        {
            Some(value) => value.trim().parse().ok(),
            None => Some(0.0),
        }
    }
}

/// Machine-wide CPU ticks from /proc/stat (Linux): (idle including I/O wait, all).
fn machine_cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    let total = ticks.iter().take(8).sum();
    Some((idle, total))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// CPU time (user + system) a process has used so far, from /proc (Linux). Ticks are taken as
/// 1/100 s, the value of `CLK_TCK` on every Linux architecture the project builds for.
fn cpu_seconds(pid: u32) -> Option<f64> {
    stat_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// User + system CPU seconds from the text of a /proc `stat` file (a process's or a thread's).
fn stat_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// The server's threads as the breakdown groups them: name prefix (Linux keeps 15 bytes of a
/// thread's name; a thread counts in the first group it matches), and what the group does.
const THREAD_GROUPS: [(&str, &str); 5] = [
    (
        "tokio-rt-worker",
        "request threads (parse, judge, encode; the no-op path's whole work)",
    ),
    (
        "kith-journal-sy",
        "journal sync (fdatasync, hand-over, answers)",
    ),
    ("kith-journal", "journal writer (dedup, records, write)"),
    (
        "kith-flush",
        "flush (records to Arrow, Parquet, Delta commits)",
    ),
    ("kith-unify", "identity resolution, profiles.db"),
];

/// The first group of `THREAD_GROUPS` whose prefix the thread's name has.
fn thread_group(name: &str) -> Option<usize> {
    THREAD_GROUPS
        .iter()
        .position(|(prefix, _)| name.starts_with(prefix))
}

/// CPU seconds of each of a process's live threads, by thread id: (name, seconds).
fn cpu_seconds_by_thread(pid: u32) -> std::collections::HashMap<u32, (String, f64)> {
    let mut threads = std::collections::HashMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some(tid) = task
            .file_name()
            .to_str()
            .and_then(|t| t.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let (Some(name), Some(seconds)) = (
            stat.split_once('(')
                .and_then(|(_, rest)| rest.rsplit_once(')'))
                .map(|(name, _)| name.to_string()),
            stat_cpu_seconds(&stat),
        ) else {
            continue;
        };
        threads.insert(tid, (name, seconds));
    }
    threads
}

/// Waits until the server has finished what a run left it (sealing and flushing the last
/// events): its CPU use over 2.5 s (longer than the 2 s flush interval, so a flush still to come
/// is not missed) stays below 5% of a core, or 60 s pass. So each run's CPU count holds all its
/// own work and none of the other run's.
fn wait_until_idle(pid: u32) {
    const WINDOW: Duration = Duration::from_millis(2_500);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = cpu_seconds(pid).unwrap_or(0.0);
    while Instant::now() < deadline {
        std::thread::sleep(WINDOW);
        let now = cpu_seconds(pid).unwrap_or(0.0);
        if now - last < 0.05 * WINDOW.as_secs_f64() {
            return;
        }
        last = now;
    }
}

/// Bytes of the Parquet files a Delta table holds (compacted files' replaced inputs included,
/// if any are still on disk).
fn parquet_bytes(table: &std::path::Path) -> u64 {
    std::fs::read_dir(table)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// Peak resident set of a process, from /proc (Linux).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    assert!(
        options.kith.exists(),
        "{} not found; build it with `cargo build --release -p kith-cli`",
        options.kith.display()
    );
    let data_dir = std::env::temp_dir().join(format!("kith-ingest-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let key = Command::new(&options.kith)
        .args([
            "key",
            "create",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--scope",
            "ingest",
            "--source",
            "bench",
        ])
        .output()
        .expect("kith key create");
    let write_key = String::from_utf8_lossy(&key.stdout).trim().to_string();
    let port = 18_000 + (std::process::id() % 2000) as u16;
    let mut server = Command::new(&options.kith)
        .args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--enable-noop-endpoint",
        ])
        .env("KITH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kith serve");
    let base = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let ready = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        agent.get(format!("{base}/readyz")).call().is_ok()
    });
    assert!(ready, "kith serve did not become ready");

    let body_bytes = template(0, options.batch).bytes.len();
    println!(
        "ingest benchmark: {} clients, {} events/batch ({} KiB/request), {} s per run, loopback, {} cores",
        options.clients,
        options.batch,
        body_bytes / 1024,
        options.seconds,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let pid = server.id();
    let metrics = Server {
        agent: agent.clone(),
        base: base.clone(),
    };
    let mut rounds = Vec::with_capacity(options.rounds);
    for round in 0..options.rounds {
        let durable_ids_from = round as u64 * DURABLE_IDS_PER_ROUND;
        rounds.push(Round {
            durable: measured(pid, &metrics, || {
                drive(
                    &format!("{base}/v1/batch"),
                    &write_key,
                    &options,
                    durable_ids_from,
                )
            }),
            noop: measured(pid, &metrics, || {
                drive(
                    &format!("{base}/internal/noop/batch"),
                    &write_key,
                    &options,
                    NOOP_IDS_FROM,
                )
            }),
        });
    }
    let rss = peak_rss_mib(server.id());

    let stored: Result<Value, String> = {
        let read_key = Command::new(&options.kith)
            .args([
                "key",
                "create",
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--scope",
                "read",
            ])
            .output()
            .expect("kith key create");
        let read_key = String::from_utf8_lossy(&read_key.stdout).trim().to_string();
        agent
            .post(format!("{base}/v1/query"))
            .header("Authorization", &format!("Bearer {read_key}"))
            .send(
                // Rows and distinct ids through a GROUP BY: COUNT(DISTINCT) beside count(*)
                // holds every id at once and went over the 1 GiB query limit at 12M events.
                json!({"sql": "SELECT sum(copies) AS n, count(*) AS d FROM \
                               (SELECT message_id, count(*) AS copies FROM events GROUP BY message_id)"})
                .to_string(),
            )
            .map_err(|e| e.to_string())
            .and_then(|mut r| {
                r.body_mut()
                    .read_to_string()
                    .map_err(|e| format!("reading the answer: {e}"))
            })
            .and_then(|text| {
                serde_json::from_str::<Value>(&text).map_err(|e| format!("{e}: {text}"))
            })
    };
    let _ = server.kill();
    let _ = server.wait();
    let table_bytes = parquet_bytes(&data_dir.join("tables").join("events"));
    let _ = std::fs::remove_dir_all(&data_dir);
    // A failed count is reported with the server's answer, not as zero rows stored.
    let stored = stored.and_then(|answer| match answer["rows"][0][0].as_u64() {
        Some(rows) => Ok((rows, answer["rows"][0][1].clone())),
        None => Err(format!("the server answered {answer}")),
    });

    let acknowledged: u64 = rounds.iter().map(|r| r.durable.run.events).sum();
    println!(
        "| round | run | events/s | requests | failed | p50 ms | p99 ms | server CPU µs/event | machine idle | events/fsync |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (number, round) in rounds.iter().enumerate() {
        for (name, path) in [
            ("durable /v1/batch", &round.durable),
            ("no-op ceiling", &round.noop),
        ] {
            println!(
                "| {} | {name} | {:.0} | {} | {} | {:.2} | {:.2} | {:.2} | {:.0}% | {} |",
                number + 1,
                path.events_per_second(),
                path.run.requests,
                path.run.failures,
                percentile(&path.run.latencies_us, 0.50),
                percentile(&path.run.latencies_us, 0.99),
                path.cpu_per_event_us(),
                path.machine_idle * 100.0,
                path.events_per_commit()
                    .map_or("–".to_string(), |n| format!("{n:.0}")),
            );
        }
    }
    let median_of = |value: &dyn Fn(&Round) -> f64| median(rounds.iter().map(value).collect());
    println!(
        "medians over {} round(s): durable {:.0} events/s, no-op {:.0} events/s; server CPU µs/event durable {:.2}, no-op {:.2}",
        rounds.len(),
        median_of(&|r| r.durable.events_per_second()),
        median_of(&|r| r.noop.events_per_second()),
        median_of(&|r| r.durable.cpu_per_event_us()),
        median_of(&|r| r.noop.cpu_per_event_us()),
    );
    println!(
        "durable / no-op = {:.2} (median of the rounds' ratios: {}); server CPU per event, no-op / durable = {:.2}",
        median_of(&Round::ratio),
        rounds
            .iter()
            .map(|r| format!("{:.2}", r.ratio()))
            .collect::<Vec<_>>()
            .join(", "),
        median_of(&|r| r.noop.cpu_per_event_us() / r.durable.cpu_per_event_us()),
    );
    println!(
        "server CPU µs/event by thread (medians of the rounds), and the load generator's own:"
    );
    println!("| threads | durable | no-op | durable − no-op |");
    println!("|---|---:|---:|---:|");
    let groups = THREAD_GROUPS
        .iter()
        .enumerate()
        .map(|(group, (prefix, what))| (Some(group), format!("`{prefix}`: {what}")))
        .chain([(None, "other server threads".to_string())]);
    for (group, label) in groups {
        let durable = median_of(&|r| r.durable.thread_cpu_per_event_us(group));
        let noop = median_of(&|r| r.noop.thread_cpu_per_event_us(group));
        println!(
            "| {label} | {durable:.2} | {noop:.2} | {:+.2} |",
            durable - noop
        );
    }
    let durable = median_of(&|r| r.durable.client_cpu_per_event_us());
    let noop = median_of(&|r| r.noop.client_cpu_per_event_us());
    println!(
        "| load generator (not the server) | {durable:.2} | {noop:.2} | {:+.2} |",
        durable - noop
    );
    let stored_rows = match &stored {
        Ok((rows, distinct)) => {
            println!(
                "server peak RSS {:.0} MiB; stored rows {rows} (distinct ids {distinct}), acknowledged {acknowledged}",
                rss.unwrap_or(f64::NAN),
            );
            *rows
        }
        Err(err) => {
            println!(
                "server peak RSS {:.0} MiB; acknowledged {acknowledged}",
                rss.unwrap_or(f64::NAN)
            );
            eprintln!("error: counting the stored events failed: {err}");
            std::process::exit(1);
        }
    };
    println!(
        "events table on disk: {:.1} MiB of Parquet, {:.0} bytes per stored event",
        table_bytes as f64 / (1024.0 * 1024.0),
        table_bytes as f64 / stored_rows.max(1) as f64
    );
    if stored_rows < acknowledged {
        eprintln!("error: {stored_rows} rows stored but {acknowledged} acknowledged");
        std::process::exit(1);
    }
}
