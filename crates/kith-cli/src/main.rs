//! `kith`: the one binary. Every command calls the same library functions as the HTTP API.

#[cfg(not(feature = "system-allocator"))]
mod allocator;
mod commands;
mod config;
mod report;

use std::process::ExitCode;

use clap::Parser;

use crate::commands::Command;

#[derive(Parser)]
#[command(
    name = "kith",
    version,
    about = "Customer intelligence in one binary: collect events from Segment-compatible SDKs, query them with SQL."
)]
struct Cli {
    /// Configuration file (default: ./kith.toml when present). Precedence: file < KITH_* env < flags.
    #[arg(long, env = "KITH_CONFIG", global = true)]
    config: Option<std::path::PathBuf>,

    #[command(subcommand)]
    command: Command,
}

fn main() -> ExitCode {
    #[cfg(not(feature = "system-allocator"))]
    {
        allocator::tune();
        kith_server::memory::set_release(allocator::release_free_memory);
    }
    let cli = Cli::parse();
    // The server reports what it does; other commands print their own results and log only
    // what went wrong.
    init_logging(if matches!(cli.command, Command::Serve(_)) {
        DEFAULT_LOG_FILTER
    } else {
        QUIET_LOG_FILTER
    });
    let file = match config::FileConfig::load(cli.config.as_deref()) {
        Ok(file) => file,
        Err(e) => {
            eprintln!("error: {}", report::error_text(&e));
            return ExitCode::from(2);
        }
    };
    match commands::run(cli.command, file) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", report::error_text(&e));
            ExitCode::FAILURE
        }
    }
}

/// Kith at info; the storage libraries only when something is wrong (they are chatty at info).
const DEFAULT_LOG_FILTER: &str =
    "info,buoyant_kernel=warn,delta_kernel=warn,deltalake=warn,deltalake_core=warn,datafusion=warn";

const QUIET_LOG_FILTER: &str = "warn";

fn init_logging(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KITH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}
