//! `kith serve`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use kith_lake::query::worker::QueryWorker;
use kith_server::caller::{ClientIpPolicy, TrustedProxies};
use kith_server::connections;
use kith_server::starting::Listening;
use kith_server::{Server, ServerConfig};

use super::{DataDirArg, runtime};
use crate::config::{DEFAULT_LISTEN, FileConfig, QueryIsolation};

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Address to listen on [default: 127.0.0.1:8417]
    #[arg(long, env = "KITH_LISTEN")]
    listen: Option<String>,
    /// Write buffered events to Delta at least this often, in milliseconds [default: 2000]
    #[arg(long, env = "KITH_FLUSH_INTERVAL_MS")]
    flush_interval_ms: Option<u64>,
    /// Start with a generated demo world (a Mexican online shop's customers, loaded through the
    /// real ingestion path the first time; kept in the data directory afterwards).
    #[arg(long)]
    demo: bool,
    /// Customers in the demo world.
    #[arg(long, default_value_t = 5000, requires = "demo")]
    demo_customers: u64,
    /// Record the client's IP address in `context.ip` of events that do not carry one: off (no
    /// IP is recorded), truncated (the network only: an IPv4 /24, an IPv6 /32) or full.
    /// Behind a trusted proxy (--trusted-proxies), the client's address as the proxy names it
    /// [default: off]
    #[arg(long, env = "KITH_CLIENT_IP", value_parser = parse_client_ip)]
    client_ip: Option<ClientIpPolicy>,
    /// Proxies whose `Forwarded` / `X-Forwarded-*` headers are believed (the client's address,
    /// and the scheme and host it used): addresses or CIDR networks, comma-separated;
    /// `--trusted-proxies ''` trusts none [default: loopback and private networks]
    #[arg(long, env = "KITH_TRUSTED_PROXIES", value_delimiter = ',')]
    trusted_proxies: Option<Vec<String>>,
    /// Serve POST /internal/noop/batch (parses like /v1/batch, stores nothing) for benchmarks.
    #[arg(long, env = "KITH_ENABLE_NOOP_ENDPOINT")]
    enable_noop_endpoint: bool,
}

pub fn run(args: ServeArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig {
        data_dir: file.data_dir(args.data_dir.data_dir),
        listen: args
            .listen
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string()),
        noop_endpoint: args.enable_noop_endpoint,
        ..ServerConfig::default()
    };
    if let Some(ms) = args.flush_interval_ms.or(file.ingest.flush_interval_ms) {
        config.flush_interval = Duration::from_millis(ms);
    }
    if let Some(policy) = args.client_ip.or(file.ingest.client_ip) {
        config.client_ip = policy;
    }
    if let Some(entries) = args.trusted_proxies.or(file.ingest.trusted_proxies.clone()) {
        let entries: Vec<&str> = entries
            .iter()
            .map(|entry| entry.trim())
            .filter(|entry| !entry.is_empty())
            .collect();
        config.trusted_proxies = TrustedProxies::parse(&entries)
            .map_err(|e| anyhow::anyhow!("trusted proxies (--trusted-proxies, KITH_TRUSTED_PROXIES or [ingest] trusted_proxies): {e}"))?;
    }
    file.apply_ingest_limits(&mut config)?;
    config.profiles = file.profile_settings()?;
    config.models = file.model_schedules()?;
    config.query_limits = file.query_limits()?;
    // A worker watches its memory through /proc: on other systems queries run in the server.
    let linux = cfg!(target_os = "linux");
    let isolation = file.query.isolation.unwrap_or(if linux {
        QueryIsolation::Process
    } else {
        QueryIsolation::InProcess
    });
    if isolation == QueryIsolation::Process {
        if !linux {
            anyhow::bail!(
                "[query] isolation = \"process\" needs Linux (a worker watches its memory through \
                 /proc); set it to \"in-process\""
            );
        }
        let worker = QueryWorker::new(
            this_binary()?,
            kith_server::runtimes::QUERY_THREADS,
            // As long as a query waits for a query thread: the same turn, by another name.
            kith_server::runtimes::QUERY_THREAD_WAIT,
        );
        let worker = match file.query.worker_idle_secs {
            Some(secs) => worker.idle_for(std::time::Duration::from_secs(secs)),
            None => worker,
        };
        config.query_worker = Some(std::sync::Arc::new(worker));
    }
    config.housekeeping = file.housekeeping(config.query_limits.timeout)?;
    file.apply_connection_limits(&mut config.connections)?;
    let open_files = crate::open_files::raise_limit();
    tell_open_file_limit(open_files);
    config.connections.most_connections =
        open_files.map(|(_, limit)| connections::most_connections(limit));
    if let Some(mode) = kith_state::open_to_others(&config.data_dir) {
        let shown = super::shown_path(&config.data_dir);
        tracing::warn!(
            "the data directory {shown} lets other users of this machine in (mode {mode:o}); it \
             holds customers' emails, phones and events. The files Kith writes in it are readable \
             by this user alone, but not files written there before; to close it, run: chmod 700 {}",
            super::shell_word(&shown),
        );
    }
    // Before anything is created or loaded: a wrong or busy address fails at once.
    let listener = kith_server::app::bind(&config.listen)?;
    kith_server::install_metrics();
    runtime()?.block_on(async move {
        // Answering from now on (`/healthz`; `503 starting` elsewhere), while the demo world
        // loads and the journal replays.
        let listening = Listening::begin(listener, config.connections)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        if args.demo {
            // The demo loads through an import, which runs its own runtime: on a thread of
            // its own, outside this one.
            let (data_dir, settings) = (config.data_dir.clone(), config.profiles.clone());
            let customers = args.demo_customers;
            let (done, loaded) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let _ = done.send(load_demo(&data_dir, customers, settings));
            });
            loaded
                .await
                .map_err(|_| anyhow::anyhow!("loading the demo world stopped unexpectedly"))??;
        }
        let data_dir = config.data_dir.clone();
        // Told once, heard both while the journal replays and once the server runs: a stop
        // asked for during the replay ends it there (nothing is lost: every acknowledged event
        // is in the journal, and the next start replays it), where the signal's default
        // action used to kill the process.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        });
        let asked_to_stop = |mut stopped: tokio::sync::watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|asked| *asked).await;
        };
        let server = tokio::select! {
            opened = Server::open(config, listening) => opened?,
            () = asked_to_stop(stopped.clone()) => {
                tell!(
                    "stopped while starting, before the journal was replayed in full; nothing \
                     is lost: the next start replays it"
                );
                return Ok(());
            }
        };
        let addr = server.local_addr();
        let data_dir = super::shown_path(&data_dir);
        tracing::info!(%addr, %data_dir, "kith is listening");
        tell!(
            "kith is listening on http://{addr} (data in {data_dir}); open the address for first steps"
        );
        server.run(asked_to_stop(stopped)).await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Below this many open files a busy server may run out: each client connection takes one.
const FEW_OPEN_FILES: u64 = 4096;

fn tell_open_file_limit(limit: Option<(u64, u64)>) {
    match limit {
        Some((_, after)) if after < FEW_OPEN_FILES => tracing::warn!(
            limit = after,
            "the process may have {after} files open, and each client connection takes one: \
             raise the hard limit (`ulimit -Hn`, systemd's `LimitNOFILE`) for more clients"
        ),
        Some((before, after)) if after > before => {
            tracing::info!(before, after, "raised the limit on open files")
        }
        Some(_) => {}
        None => tracing::warn!("could not read or raise the limit on open files"),
    }
}

/// The running binary, for its query workers. On Linux `/proc/self/exe`, which stays this very
/// binary when an upgrade replaces the file on disk (a worker of another version would not
/// understand the server), and while the server runs; elsewhere its path.
fn this_binary() -> anyhow::Result<std::path::PathBuf> {
    let proc_exe = std::path::Path::new("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe.to_path_buf());
    }
    std::env::current_exe()
        .context("queries run in worker processes of this binary, whose path is unknown")
}

fn parse_client_ip(text: &str) -> Result<ClientIpPolicy, String> {
    text.parse()
}

/// Loads the demo world into `data_dir` unless it holds one already.
fn load_demo(
    data_dir: &std::path::Path,
    customers: u64,
    settings: kith_profiles::ProfileSettings,
) -> anyhow::Result<()> {
    if data_dir
        .join("demo")
        .join(kith_demo::output::TRUTH_DIR)
        .join(kith_demo::output::PARAMETERS_FILE)
        .exists()
    {
        tell!(
            "the demo world is already in {}; starting on it",
            data_dir.display()
        );
        return Ok(());
    }
    if customers == 0 {
        anyhow::bail!("--demo-customers must be at least 1");
    }
    tell!(
        "generating a demo world of {customers} customers into {} (once; later starts reuse it)",
        data_dir.display()
    );
    // The world ends as it loads, so "now" in every analysis is the shop's today: a world that
    // ended weeks ago would have most of its customers look as if they were leaving.
    let end = chrono::SubsecRound::trunc_subsecs(chrono::Utc::now(), 0);
    let config = kith_demo::DemoConfig::new(customers, 1).ending_at(end);
    let summary = super::demo::load(&config, data_dir, settings)?;
    // A customer who bought something, to look at first.
    let example = std::fs::read_to_string(data_dir.join("demo/truth/customers.csv"))
        .ok()
        .and_then(|text| {
            text.lines()
                .skip(1)
                .map(|line| line.split(',').nth(1).unwrap_or_default().to_string())
                .find(|user| !user.is_empty())
        })
        .unwrap_or_else(|| "u-0".into());
    tell!(
        "loaded {} events of {} customers ({} orders; {} of the events are CRM contacts, \
         imported as identify calls). Try, in another terminal:\n  \
         kith sql --data-dir {dir} \"SELECT event, count(*) AS n FROM events GROUP BY event ORDER BY n DESC\"\n  \
         kith profile show --data-dir {dir} user_id:{example}\n  \
         kith profile duplicates --data-dir {dir}",
        summary.events + summary.contacts,
        summary.customers,
        summary.transactions,
        summary.contacts,
        dir = data_dir.display()
    );
    Ok(())
}

/// Whether the process was started with SIGHUP ignored (by `nohup`, or a supervisor).
#[cfg(unix)]
fn hangup_ignored() -> bool {
    // SAFETY: `sigaction` with no new action only reads the current one into `current`, a
    // zeroed `sigaction` struct this function owns.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut current) == 0
            && current.sa_sigaction == libc::SIG_IGN
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let signal = |kind: tokio::signal::unix::SignalKind| async move {
        match tokio::signal::unix::signal(kind) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(unix)]
    let terminate = signal(tokio::signal::unix::SignalKind::terminate());
    // The terminal the server was started from closing: stopped as cleanly as by Ctrl-C;
    // unless SIGHUP is ignored (`nohup kith serve`), which listening for it would undo.
    #[cfg(unix)]
    let hangup = async move {
        if hangup_ignored() {
            std::future::pending::<()>().await
        } else {
            signal(tokio::signal::unix::SignalKind::hangup()).await
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    #[cfg(not(unix))]
    let hangup = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
        () = hangup => {},
    }
    tracing::info!("asked to stop");
}
