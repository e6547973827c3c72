//! Profile-endpoint benchmark (issue 3's goal: p99 under 10 ms at 2,000 requests/s with 1,000,000
//! profiles and 10,000,000 events stored, while ingestion continues).
//!
//! 1. Load: starts `kith serve` on a fresh data directory (or reuses one with `--reuse DIR`) and
//!    sends `--profiles` customers' events through `/v1/batch`: per customer one identify
//!    (user id, anonymous id, email, phone, name) and `--events-per-profile − 1` page and track
//!    calls, half before sign-up on the anonymous id. It waits until every profile is resolved.
//! 2. Measure: for `--seconds`, an open-loop client asks `GET /v1/profiles/user_id:…` (or
//!    `email:…`) of random customers at `--rate` requests/s, each request's latency counted from
//!    the moment it was due (so a stall counts against every request it delays), while a second
//!    client keeps ingesting `--ingest-rate` events/s of new activity for existing customers.
//!
//! Usage: kith-profile-bench [--kith PATH] [--profiles N] [--events-per-profile N] [--rate R]
//!        [--ingest-rate R] [--seconds S] [--workers N] [--reuse DIR]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

struct Options {
    kith: PathBuf,
    profiles: u64,
    events_per_profile: u64,
    rate: u64,
    ingest_rate: u64,
    seconds: u64,
    workers: usize,
    reuse: Option<PathBuf>,
}

const USAGE: &str = "usage: kith-profile-bench [--kith PATH] [--profiles N] [--events-per-profile N] \
[--rate R] [--ingest-rate R] [--seconds S] [--workers N] [--reuse DIR]";

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        kith: PathBuf::from("target/release/kith"),
        profiles: 1_000_000,
        events_per_profile: 10,
        rate: 2_000,
        ingest_rate: 5_000,
        seconds: 30,
        workers: 32,
        reuse: None,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |flag: &str, value: Option<&String>| -> Result<u64, String> {
        value
            .and_then(|v| v.replace('_', "").parse().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("{flag} needs a positive whole number"))
    };
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1);
        match args[i].as_str() {
            "--kith" => options.kith = PathBuf::from(value.ok_or("--kith needs a path")?),
            "--profiles" => options.profiles = number("--profiles", value)?,
            "--events-per-profile" => {
                options.events_per_profile = number("--events-per-profile", value)?
            }
            "--rate" => options.rate = number("--rate", value)?,
            "--ingest-rate" => options.ingest_rate = number("--ingest-rate", value)?,
            "--seconds" => options.seconds = number("--seconds", value)?,
            "--workers" => options.workers = number("--workers", value)? as usize,
            "--reuse" => options.reuse = Some(PathBuf::from(value.ok_or("--reuse needs a path")?)),
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        i += 2;
    }
    Ok(options)
}

fn agent() -> ureq::Agent {
    // Timeouts per phase, not `timeout_global`: with a global timeout ureq resolves the address
    // on a new thread for every request, load-generator CPU taken from the server it measures.
    let phase = Some(Duration::from_secs(60));
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(phase)
        .timeout_send_request(phase)
        .timeout_send_body(phase)
        .timeout_recv_response(phase)
        .timeout_recv_body(phase)
        .max_idle_connections_per_host(256)
        .build()
        .into()
}

/// A cheap deterministic generator (SplitMix64), so runs are repeatable without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const CITIES: [&str; 6] = [
    "Ciudad de México",
    "Guadalajara",
    "Monterrey",
    "Puebla",
    "Mérida",
    "Querétaro",
];

/// The events of customer `c`: `n` of them, the identify in the middle.
fn customer_events(c: u64, n: u64, run: u64) -> Vec<Value> {
    let anonymous = format!("anon-{c:08x}-{run}");
    let user = format!("u-{c}");
    let context = json!({"library": {"name": "analytics.js", "version": "npm:next-1.70.0"},
                         "locale": "es-MX", "page": {"path": "/p/tenis", "url": "https://tienda.mx/p/tenis"}});
    (0..n)
        .map(|k| {
            let id = format!("c{c}-{k}-{run}");
            let day = 1 + (c + k) % 28;
            let timestamp = format!("2025-{:02}-{day:02}T12:{:02}:00Z", 1 + k % 12, k % 60);
            if k == n / 2 {
                return json!({"type": "identify", "userId": user, "anonymousId": anonymous, "messageId": id,
                    "timestamp": timestamp, "context": context,
                    "traits": {"email": format!("cliente{c}@example.com"),
                               "phone": format!("+52 55 {:04} {:04}", 1000 + c / 10_000 % 9000, c % 10_000),
                               "name": format!("Cliente {c}"), "city": CITIES[(c % 6) as usize],
                               "plan": if c.is_multiple_of(3) { "premium" } else { "free" }}});
            }
            let who = if k < n / 2 {
                json!({"anonymousId": anonymous})
            } else {
                json!({"userId": user})
            };
            let mut event = if k % 3 == 0 {
                json!({"type": "page", "name": "Producto", "messageId": id, "timestamp": timestamp,
                       "context": context, "properties": {"path": "/p/tenis", "title": "Tenis"}})
            } else {
                let order = k % 3 == 2;
                json!({"type": "track", "event": if order { "Order Completed" } else { "Product Viewed" },
                       "messageId": id, "timestamp": timestamp, "context": context,
                       "properties": {"product_id": format!("sku-{}", (c + k) % 500), "price": 899.0,
                                      "revenue": if order { 899.0 } else { 0.0 }, "currency": "MXN"}})
            };
            event
                .as_object_mut()
                .expect("an object")
                .extend(who.as_object().expect("an object").clone());
            event
        })
        .collect()
}

fn send_batch(agent: &ureq::Agent, url: &str, auth: &str, events: Vec<Value>) -> bool {
    let body = json!({ "batch": events }).to_string();
    loop {
        match agent
            .post(url)
            .header("Authorization", auth)
            .header("Content-Type", "application/json")
            .send(body.as_bytes())
        {
            Ok(r) if r.status().as_u16() == 200 => return true,
            Ok(r) if r.status().as_u16() == 429 => std::thread::sleep(Duration::from_millis(200)),
            Ok(mut r) => {
                eprintln!(
                    "batch refused: {} {}",
                    r.status(),
                    r.body_mut().read_to_string().unwrap_or_default()
                );
                return false;
            }
            Err(e) => {
                eprintln!("batch failed: {e}");
                return false;
            }
        }
    }
}

/// Sends every customer's events with 8 concurrent clients.
fn load(base: &str, auth: &str, options: &Options) {
    let next = Arc::new(AtomicU64::new(0));
    let per_batch = (500 / options.events_per_profile).max(1);
    let started = Instant::now();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (next, url, auth) = (next.clone(), format!("{base}/v1/batch"), auth.to_string());
            let (profiles, per_profile) = (options.profiles, options.events_per_profile);
            std::thread::spawn(move || {
                let agent = agent();
                loop {
                    let first = next.fetch_add(per_batch, Ordering::Relaxed);
                    if first >= profiles {
                        return;
                    }
                    let events: Vec<Value> = (first..(first + per_batch).min(profiles))
                        .flat_map(|c| customer_events(c, per_profile, 0))
                        .collect();
                    assert!(send_batch(&agent, &url, &auth, events), "loading failed");
                }
            })
        })
        .collect();
    let total = options.profiles * options.events_per_profile;
    loop {
        std::thread::sleep(Duration::from_secs(5));
        let done = next.load(Ordering::Relaxed).min(options.profiles);
        eprintln!(
            "  loaded {} of {} customers ({:.0} events/s)",
            done,
            options.profiles,
            (done * options.events_per_profile) as f64 / started.elapsed().as_secs_f64()
        );
        if done >= options.profiles {
            break;
        }
    }
    for handle in handles {
        handle.join().expect("loader");
    }
    println!(
        "loaded {total} events for {} customers in {:.0} s ({:.0} events/s)",
        options.profiles,
        started.elapsed().as_secs_f64(),
        total as f64 / started.elapsed().as_secs_f64()
    );
}

fn get_status(agent: &ureq::Agent, url: &str, auth: &str) -> u16 {
    match agent.get(url).header("Authorization", auth).call() {
        Ok(mut r) => {
            let _ = r.body_mut().read_to_vec();
            r.status().as_u16()
        }
        Err(_) => 0,
    }
}

/// Waits until the last customer's profile answers and holds all its events.
fn wait_resolved(base: &str, read_auth: &str, options: &Options) {
    let agent = agent();
    let last = options.profiles - 1;
    let started = Instant::now();
    loop {
        let url = format!("{base}/v1/profiles/user_id:u-{last}");
        let resolved = agent
            .get(&url)
            .header("Authorization", read_auth)
            .call()
            .ok()
            .and_then(|mut r| r.body_mut().read_json::<Value>().ok())
            .is_some_and(|p| {
                p["computed_traits"]["event_count"].as_u64() >= Some(options.events_per_profile)
            });
        if resolved {
            println!(
                "profiles resolved {:.1} s after the last ack",
                started.elapsed().as_secs_f64()
            );
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "profiles not resolved after 10 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Measured {
    latencies_us: Vec<u64>,
    failures: u64,
    elapsed: Duration,
    ingested: u64,
}

fn measure(base: &str, write_auth: &str, read_auth: &str, options: &Options) -> Measured {
    let stop = Arc::new(AtomicBool::new(false));
    let ingested = Arc::new(AtomicU64::new(0));
    // Ingestion that continues: batches of 100 events for random existing customers, paced.
    let ingester = {
        let (stop, ingested) = (stop.clone(), ingested.clone());
        let (url, auth) = (format!("{base}/v1/batch"), write_auth.to_string());
        let (profiles, rate) = (options.profiles, options.ingest_rate);
        std::thread::spawn(move || {
            let agent = agent();
            let mut rng = Rng(7);
            let started = Instant::now();
            let mut run = 1u64;
            while !stop.load(Ordering::Relaxed) {
                let due =
                    Duration::from_secs_f64(ingested.load(Ordering::Relaxed) as f64 / rate as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
                let events: Vec<Value> = (0..10)
                    .flat_map(|_| customer_events(rng.below(profiles), 10, run))
                    .collect();
                run += 1;
                if send_batch(&agent, &url, &auth, events) {
                    ingested.fetch_add(100, Ordering::Relaxed);
                }
            }
        })
    };
    // Open loop: request k is due at start + k / rate, whoever sends it.
    let due = Arc::new(AtomicU64::new(0));
    let total = options.rate * options.seconds;
    let started = Instant::now();
    let readers: Vec<_> = (0..options.workers)
        .map(|w| {
            let (due, base, auth) = (due.clone(), base.to_string(), read_auth.to_string());
            let (rate, profiles) = (options.rate, options.profiles);
            std::thread::spawn(move || {
                let agent = agent();
                let mut rng = Rng(1000 + w as u64);
                let (mut latencies, mut failures) = (Vec::new(), 0u64);
                loop {
                    let k = due.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        return (latencies, failures);
                    }
                    let at = Duration::from_secs_f64(k as f64 / rate as f64);
                    if let Some(wait) = at.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let c = rng.below(profiles);
                    let lookup = if k % 4 == 0 {
                        format!("email:cliente{c}@example.com")
                    } else {
                        format!("user_id:u-{c}")
                    };
                    let status = get_status(&agent, &format!("{base}/v1/profiles/{lookup}"), &auth);
                    latencies.push(started.elapsed().saturating_sub(at).as_micros() as u64);
                    if status != 200 {
                        failures += 1;
                    }
                }
            })
        })
        .collect();
    let mut measured = Measured {
        latencies_us: Vec::new(),
        failures: 0,
        elapsed: Duration::ZERO,
        ingested: 0,
    };
    for reader in readers {
        let (latencies, failures) = reader.join().expect("reader");
        measured.latencies_us.extend(latencies);
        measured.failures += failures;
    }
    measured.elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    ingester.join().expect("ingester");
    measured.ingested = ingested.load(Ordering::Relaxed);
    measured.latencies_us.sort_unstable();
    measured
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize] as f64 / 1000.0
}

fn rss_mib(pid: u32, field: &str) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn key(kith: &PathBuf, data_dir: &std::path::Path, scope: &str) -> String {
    let mut args = vec![
        "key",
        "create",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--scope",
        scope,
    ];
    if scope == "ingest" {
        args.extend(["--source", "bench"]);
    }
    let output = Command::new(kith)
        .args(&args)
        .output()
        .expect("kith key create");
    assert!(output.status.success(), "kith key create failed");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn start(kith: &PathBuf, data_dir: &std::path::Path, port: u16) -> Child {
    let server = Command::new(kith)
        .args([
            "serve",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .env("KITH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("kith serve");
    let agent = agent();
    let ready = (0..2400).any(|_| {
        std::thread::sleep(Duration::from_millis(250));
        agent
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)
    });
    assert!(ready, "kith serve did not become ready");
    server
}

fn main() {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    if !options.kith.exists() {
        eprintln!(
            "{} not found; build it with `cargo build --release -p kith-cli`",
            options.kith.display()
        );
        std::process::exit(2);
    }
    let (data_dir, fresh) = match &options.reuse {
        Some(dir) => (dir.clone(), !dir.join("profiles.db").exists()),
        None => (
            std::env::temp_dir().join(format!("kith-profile-bench-{}", std::process::id())),
            true,
        ),
    };
    if fresh {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    let basic = |k: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{k}:"))
        )
    };
    let write_auth = basic(&key(&options.kith, &data_dir, "ingest"));
    let read_auth = format!("Bearer {}", key(&options.kith, &data_dir, "read"));
    let port = 19_000 + (std::process::id() % 2000) as u16;
    let base = format!("http://127.0.0.1:{port}");
    println!(
        "profile benchmark: {} profiles × {} events, {} lookups/s for {} s with {} events/s ingested alongside, {} cores",
        options.profiles,
        options.events_per_profile,
        options.rate,
        options.seconds,
        options.ingest_rate,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut server = start(&options.kith, &data_dir, port);
    if fresh {
        load(&base, &write_auth, &options);
        wait_resolved(&base, &read_auth, &options);
        // Start again: the measurement is of a server holding the data, not of one just loaded.
        let pid = server.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let _ = server.wait();
        let restarted = Instant::now();
        server = start(&options.kith, &data_dir, port);
        println!(
            "restarted on the loaded data in {:.1} s",
            restarted.elapsed().as_secs_f64()
        );
    }
    let resident_before = rss_mib(server.id(), "VmRSS:");
    let measured = measure(&base, &write_auth, &read_auth, &options);
    let peak = rss_mib(server.id(), "VmHWM:");
    let pid = server.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let _ = server.wait();
    if options.reuse.is_none() {
        let _ = std::fs::remove_dir_all(&data_dir);
    }

    let lat = &measured.latencies_us;
    println!(
        "| lookups | achieved/s | failed | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | ingested alongside (events/s) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {} | {:.0} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
        lat.len(),
        lat.len() as f64 / measured.elapsed.as_secs_f64(),
        measured.failures,
        percentile(lat, 0.50),
        percentile(lat, 0.90),
        percentile(lat, 0.99),
        percentile(lat, 0.999),
        percentile(lat, 1.0),
        measured.ingested as f64 / measured.elapsed.as_secs_f64()
    );
    println!(
        "server resident {:.0} MiB at the start of the measurement, peak {:.0} MiB",
        resident_before.unwrap_or(f64::NAN),
        peak.unwrap_or(f64::NAN)
    );
    let p99 = percentile(lat, 0.99);
    println!(
        "goal p99 < 10 ms at {} lookups/s: {}",
        options.rate,
        if p99 < 10.0 && measured.failures == 0 {
            "met"
        } else {
            "NOT met"
        }
    );
}
