//! The subcommands.

mod analyze;
mod contacts_import;
mod demo;
mod destination;
mod events_import;
mod import;
mod import_ledger;
mod key;
mod log_import;
mod models;
mod models_diagnostics;
mod profile;
mod row_import;
mod serve;
mod sql;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::config::FileConfig;

#[derive(Subcommand)]
pub enum Command {
    /// Run the server: collection API, SQL, metrics. Embedded storage, no other service needed.
    Serve(serve::ServeArgs),
    /// Create, list and revoke API keys (works whether or not the server runs).
    Key {
        #[command(subcommand)]
        action: key::KeyAction,
    },
    /// Run a read-only SQL query over `events`, `rejected_events`, `profiles` and
    /// `profile_identities`.
    Sql(sql::SqlArgs),
    /// A realistic demo world: `kith demo generate --customers N --seed S --out DIR|--into DATA_DIR`.
    Demo {
        #[command(subcommand)]
        action: demo::DemoAction,
    },
    /// Import a file: `kith import contacts|events|transactions|tickets|surveys FILE` (CSV,
    /// JSONL, Parquet); an interrupted import continues where it stopped.
    Import {
        #[command(subcommand)]
        kind: import::ImportKind,
    },
    /// Fit models: `kith models clv fit --transactions FILE`.
    Models {
        #[command(subcommand)]
        action: models::ModelsAction,
    },
    /// Analyse behaviour: `kith analyze rfm|cohorts|funnel|paths|preferences|risk|trends` (see docs/analytics.md).
    Analyze(analyze::AnalyzeArgs),
    /// Look at customer profiles.
    Profile {
        #[command(subcommand)]
        action: profile::ProfileAction,
    },
    /// Runs queries for `kith serve`, which starts it and writes them on its stdin (not for people).
    #[command(name = kith_lake::query::worker::WORKER_COMMAND, hide = true)]
    QueryWorker,
}

/// Where the data lives; shared by every command that touches it.
#[derive(Args, Debug, Clone)]
pub struct DataDirArg {
    /// Data directory [default: ./kith-data]
    #[arg(long, env = "KITH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

/// `path` as a person should read it in a message: absolute, so that "which data directory?"
/// has one answer whatever directory the command ran in.
pub(crate) fn shown_path(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// `text` as one word of a shell command a person may paste: as it is when it holds only
/// characters no shell treats specially, else in single quotes.
pub(crate) fn shell_word(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:,=@".contains(c));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// What a data directory holds from its first use: the keys (`state.db`, made by `kith key
/// create`), the journal (made by `kith serve`) or the tables (made by an import).
const DATA_DIR_MARKS: [&str; 3] = ["state.db", "journal", "tables"];

/// Refuses a `data_dir` that a command reading one (`kith sql`, `kith profile`, `kith analyze`,
/// `kith key list` …) cannot use: missing, a file, or a directory Kith never wrote to. Opening one
/// of the last would quietly answer "nothing" and leave Kith's files among someone else's. `hint`
/// says where a right one comes from.
pub(crate) fn existing_data_dir(data_dir: &std::path::Path, hint: &str) -> anyhow::Result<()> {
    let shown = shown_path(data_dir);
    if !data_dir.exists() {
        anyhow::bail!("no data directory at {shown}; {hint}");
    }
    if !data_dir.is_dir() {
        anyhow::bail!("{shown} is a file, not a data directory; {hint}");
    }
    if !holds_a_mark(data_dir) {
        // Kith's files are opened by name: a directory this user may not list but may enter
        // still works, so only one whose marks could not be found is refused for it.
        if let Err(e) = std::fs::read_dir(data_dir)
            && e.kind() == std::io::ErrorKind::PermissionDenied
        {
            let unreadable = kith_state::Unwritable::NotReadable(shown);
            anyhow::bail!("{unreadable}; {}", unreadable.remedy());
        }
        // A name Kith uses that holds something else: say so, rather than that it is not there.
        if let Some(name) = DATA_DIR_MARKS
            .iter()
            .find(|name| data_dir.join(name).symlink_metadata().is_ok())
        {
            anyhow::bail!(
                "{shown} holds `{name}`, but not as Kith writes it (`state.db` is a SQLite \
                 database, `journal` and `tables` are directories): it may be damaged, or \
                 another program's; {hint}"
            );
        }
        anyhow::bail!(
            "{shown} is not a Kith data directory (it holds none of {}); {hint}",
            DATA_DIR_MARKS.join(", ")
        );
    }
    Ok(())
}

/// Whether `data_dir` holds one of [`DATA_DIR_MARKS`] as Kith writes it, not just something of
/// that name: `state.db` a SQLite database, `journal` a directory, `tables` a directory holding
/// a Delta table.
fn holds_a_mark(data_dir: &std::path::Path) -> bool {
    let is_sqlite = |path: std::path::PathBuf| {
        let mut header = [0u8; 16];
        std::fs::File::open(path)
            .and_then(|mut file| std::io::Read::read_exact(&mut file, &mut header))
            .is_ok_and(|()| &header == b"SQLite format 3\0")
    };
    let holds_a_delta_table = |path: std::path::PathBuf| {
        std::fs::read_dir(path).is_ok_and(|mut tables| {
            tables.any(|table| table.is_ok_and(|table| table.path().join("_delta_log").is_dir()))
        })
    };
    is_sqlite(data_dir.join(DATA_DIR_MARKS[0]))
        || data_dir.join(DATA_DIR_MARKS[1]).is_dir()
        || holds_a_delta_table(data_dir.join(DATA_DIR_MARKS[2]))
}

pub fn run(command: Command, file: FileConfig) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => serve::run(args, file),
        Command::Key { action } => key::run(action, file),
        Command::Sql(args) => sql::run(args, file),
        Command::Profile { action } => profile::run(action, file),
        Command::Analyze(args) => analyze::run(args, file),
        Command::Import { kind } => import::run(kind, file),
        Command::Demo { action } => demo::run(action, file),
        Command::Models { action } => models::run(action, file),
        // `main` answers it before reading any configuration; here for completeness.
        Command::QueryWorker => Ok(query_worker()),
    }
}

/// Answers the queries the server writes on stdin (see `kith_lake::query::worker`).
pub fn query_worker() -> ExitCode {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        eprintln!(
            "kith query-worker runs queries for `kith serve`, which starts it and writes the \
             queries on its stdin; to query, use `kith sql` or POST /v1/query"
        );
        return ExitCode::from(2);
    }
    ExitCode::from(kith_lake::query::worker::serve_queries())
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    Ok(tokio::runtime::Builder::new_multi_thread()
        // One thread more than a query has partitions (one per core): with every other thread
        // inside an operator that works long between two yields, this one parks and drives
        // the timer, so a query's time limit is answered when it is up.
        .worker_threads(cores + 1)
        // Queries are planned by deep recursion (see `kith_lake::query`).
        .thread_stack_size(kith_lake::query::QUERY_THREAD_STACK_BYTES)
        .enable_all()
        .build()?)
}

#[cfg(test)]
mod shell_word_tests {
    use super::shell_word;

    // A path pasted from a message must stay one word, whatever it holds.
    #[test]
    fn a_word_with_spaces_or_quotes_is_quoted_and_a_plain_one_left_as_it_is() {
        assert_eq!(shell_word("/srv/kith-data"), "/srv/kith-data");
        assert_eq!(shell_word("/home/ana/my data"), "'/home/ana/my data'");
        assert_eq!(shell_word("/tmp/it's"), r"'/tmp/it'\''s'");
        assert_eq!(shell_word("/tmp/$HOME"), "'/tmp/$HOME'");
        assert_eq!(shell_word(""), "''");
    }
}
