//! `kith`: the one binary. Every command calls the same library functions as the HTTP API.

#[cfg(not(feature = "system-allocator"))]
mod allocator;
#[macro_use]
mod stdout;
mod commands;
mod config;
mod open_files;
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
    // What Kith writes (a data directory's databases, tables and journal, rejected rows, demo
    // worlds) holds customers' emails, phones and events: readable by this user alone, whatever
    // the shell's umask, as a data directory Kith creates is (0700). Without it, files made in a
    // directory the user created beforehand were readable by everyone (0644).
    #[cfg(unix)]
    // SAFETY: umask only sets this process's file creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => exit_for(err),
    };
    // A query worker reads no configuration and logs nothing: its stdout is the server's pipe.
    if matches!(cli.command, Command::QueryWorker) {
        return commands::query_worker();
    }
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
        // The reader of the output went away (`kith sql … | head`): it has what it wanted.
        Err(e)
            if e.downcast_ref::<stdout::StdoutError>()
                .is_some_and(stdout::StdoutError::is_closed_pipe) =>
        {
            ExitCode::SUCCESS
        }
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

/// Exits for a command line clap refused. Clap names the flag of a bad value even when the value
/// came from a `KITH_*` environment variable, which is then where to look: this says so.
fn exit_for(err: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue};
    let flag_and_value = match (
        err.get(ContextKind::InvalidArg),
        err.get(ContextKind::InvalidValue),
    ) {
        (Some(ContextValue::String(flag)), Some(ContextValue::String(value))) => {
            Some((flag.clone(), value.clone()))
        }
        _ => None,
    };
    let _ = err.print();
    if let Some((flag, value)) = flag_and_value
        && let Some(variable) = env_variable_of(&flag)
        && std::env::var_os(&variable).is_some_and(|set| set.to_string_lossy() == value)
    {
        eprintln!("\nnote: the value came from the environment variable {variable}");
    }
    std::process::exit(err.exit_code())
}

/// The environment variable behind the flag clap names as `--name <NAME>`, in any subcommand.
fn env_variable_of(flag: &str) -> Option<String> {
    use clap::CommandFactory;
    let long = flag.split_whitespace().next()?.strip_prefix("--")?;
    fn find(command: &clap::Command, long: &str) -> Option<String> {
        command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(long))
            .and_then(|arg| arg.get_env())
            .map(|env| env.to_string_lossy().into_owned())
            .or_else(|| command.get_subcommands().find_map(|sub| find(sub, long)))
    }
    find(&Cli::command(), long)
}

/// The level a `KITH_LOG` written as another tool's level word (`verbose`, `warning`) means. A
/// filter takes a bare word for a module name, so such a value would log nothing at all.
fn level_meant(text: &str) -> Option<&'static str> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "verbose" | "debugging" | "dbg" => "debug",
        "all" | "everything" | "trc" => "trace",
        "warning" | "wrn" => "warn",
        "err" | "fatal" | "critical" | "crit" => "error",
        "information" | "informational" | "notice" | "normal" | "default" => "info",
        "quiet" | "silent" | "none" | "no" | "false" => "off",
        _ => return None,
    })
}

fn init_logging(default_filter: &str) {
    use std::io::IsTerminal;
    let filter = match std::env::var("KITH_LOG") {
        Ok(text) if let Some(level) = level_meant(&text) => {
            eprintln!(
                "warning: KITH_LOG=`{text}` would be read as the name of a module (logging \
                 nothing else); logging at the default level. Levels are off, error, warn, info, \
                 debug and trace: KITH_LOG={level}?"
            );
            tracing_subscriber::EnvFilter::new(default_filter)
        }
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).unwrap_or_else(|e| {
            eprintln!(
                "warning: KITH_LOG=`{text}` is not a log filter ({e}); logging at the default \
                 level. Examples: KITH_LOG=debug, KITH_LOG=info,kith_server=debug"
            );
            tracing_subscriber::EnvFilter::new(default_filter)
        }),
        Err(_) => tracing_subscriber::EnvFilter::new(default_filter),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or a pipe gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        // A log line that cannot be written is lost. Told about, the failure would go to the
        // same stderr with `eprintln!`, whose panic kills whichever thread logged: the
        // journal's, identity resolution's.
        .log_internal_errors(false)
        .init();
}
