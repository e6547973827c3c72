//! `kith key create|list|revoke`.

use std::process::ExitCode;

use anyhow::bail;
use clap::Subcommand;
use kith_state::{KeyScope, StateStore};

use super::DataDirArg;
use crate::config::FileConfig;

#[derive(Subcommand)]
pub enum KeyAction {
    /// Create a key and print it (only the key, on stdout, so scripts can capture it).
    Create {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// ingest (a Segment write key for one source: sends events), read (queries, profiles,
        /// analyses) or admin (what read keys do, and managing: imports, merges, models,
        /// computed traits; not sending events).
        #[arg(long, value_parser = ["ingest", "read", "admin"])]
        scope: String,
        /// The source an ingest key writes as, e.g. `web` or `ios`.
        #[arg(long)]
        source: Option<String>,
    },
    /// List keys (ids, scopes, sources; never the secrets).
    List {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// `table` for people; `json` for scripts: an array of {id, scope, source, created_at,
        /// revoked_at}.
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
    },
    /// Revoke a key by id; it stops working within a second, even on a running server.
    Revoke {
        #[command(flatten)]
        data_dir: DataDirArg,
        /// The key's id, as `kith key list` shows it, or the whole key
        id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

pub fn run(action: KeyAction, file: FileConfig) -> anyhow::Result<ExitCode> {
    match action {
        KeyAction::Create {
            data_dir,
            scope,
            source,
        } => {
            let Some(scope) = KeyScope::parse(&scope) else {
                bail!("unknown scope `{scope}`; use ingest, read or admin");
            };
            if scope != KeyScope::Ingest && source.is_some() {
                bail!(
                    "--source is for ingest keys (it names the source their events are filed \
                     under); {} key has none: leave --source out",
                    scope.with_article()
                );
            }
            if stdout_is_dev_null() {
                bail!(
                    "standard output is /dev/null (or was closed), so a new key would be lost; \
                     none was created. Capture it, e.g. `KEY=$(kith key create ...)`"
                );
            }
            let data_dir = file.data_dir(data_dir.data_dir);
            // Keys may be made before the server first starts; but a new directory may also
            // mean the command ran from the wrong place, so that is said below.
            let new_data_dir = !super::holds_a_mark(&data_dir);
            let store = StateStore::open(&data_dir)?;
            let created = store.create_key(scope, source.as_deref())?;
            if let Err(unwritten) = outln!("{}", created.secret) {
                // Nobody has the key: it must not stay valid.
                let id = &created.key.id;
                if let Err(e) = store.revoke_key(id) {
                    bail!(
                        "the new key {id} could not be printed ({unwritten}) nor revoked ({e}): \
                         revoke it with `kith key revoke {id}`"
                    );
                }
                bail!("the new key {id} was revoked, since it could not be printed: {unwritten}");
            }
            // On stderr, so `$(kith key create ...)` still captures the key alone: a key works
            // only on a server with this data directory.
            let shown = super::shown_path(&data_dir);
            if new_data_dir {
                eprintln!(
                    "created {} key {} in a new data directory, {shown}: it works only on a \
                     server started on that directory (`kith serve --data-dir {}`); if the \
                     server uses another, create the key there with --data-dir",
                    scope.as_str(),
                    created.key.id,
                    super::shell_word(&shown),
                );
            } else {
                eprintln!(
                    "created {} key {} in {shown}",
                    scope.as_str(),
                    created.key.id
                );
            }
        }
        KeyAction::List { data_dir, format } => {
            let data_dir = existing_data_dir(file.data_dir(data_dir.data_dir))?;
            let store = StateStore::open(&data_dir)?;
            // Keys work only with the server of this data directory: say which one it is (on
            // stderr, so that what scripts read stays the table).
            eprintln!("keys of {}", super::shown_path(&data_dir));
            let keys = store.list_keys()?;
            if let ListFormat::Json = format {
                outln!("{}", serde_json::to_string_pretty(&keys)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            outln!(
                "{:<12} {:<7} {} {:<26} status",
                "id",
                "scope",
                padded("source", 16),
                "created"
            )?;
            if keys.is_empty() {
                // On stderr: what scripts read stays the header alone.
                eprintln!(
                    "no keys yet; make one with `kith key create --data-dir {} --scope \
                     ingest|read|admin`",
                    super::shell_word(&super::shown_path(&data_dir))
                );
            }
            for key in keys {
                outln!(
                    "{:<12} {:<7} {} {:<26} {}",
                    key.id,
                    key.scope.as_str(),
                    padded(key.source.as_deref().unwrap_or("-"), 16),
                    key.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    if key.revoked_at.is_some() {
                        "revoked"
                    } else {
                        "active"
                    }
                )?;
            }
        }
        KeyAction::Revoke { data_dir, id } => {
            let store = StateStore::open(&existing_data_dir(file.data_dir(data_dir.data_dir))?)?;
            let revocation = store.revoke_key(&id)?;
            let key = &revocation.key;
            match key.revoked_at {
                Some(at) if revocation.already => eprintln!(
                    "key {} ({} scope) was already revoked, on {}",
                    key.id,
                    key.scope.as_str(),
                    at.format("%Y-%m-%d %H:%M:%S UTC")
                ),
                _ => eprintln!("revoked key {} ({} scope)", key.id, key.scope.as_str()),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `text` followed by spaces up to `columns` columns of a terminal: a source in Chinese or with
/// accents takes the columns it shows in, not one a character (`{:<16}` counts characters).
fn padded(text: &str, columns: usize) -> String {
    let width = unicode_width::UnicodeWidthStr::width(text);
    format!("{text}{}", " ".repeat(columns.saturating_sub(width)))
}

/// Listing or revoking keys reads a data directory that exists: a mistyped one would otherwise
/// be created, and show no keys or "no such key".
fn existing_data_dir(data_dir: std::path::PathBuf) -> anyhow::Result<std::path::PathBuf> {
    super::existing_data_dir(
        &data_dir,
        "pass the --data-dir the server runs with (keys are created there with `kith key create`)",
    )?;
    Ok(data_dir)
}

/// Whether stdout goes nowhere: to /dev/null, or closed (the standard library then points it
/// at /dev/null, and writes "succeed").
fn stdout_is_dev_null() -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let stdout = std::os::fd::AsFd::as_fd(&std::io::stdout())
            .try_clone_to_owned()
            .and_then(|fd| std::fs::File::from(fd).metadata());
        if let (Ok(out), Ok(null)) = (stdout, std::fs::metadata("/dev/null")) {
            return out.file_type() == null.file_type() && out.rdev() == null.rdev();
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::padded;
    use unicode_width::UnicodeWidthStr;

    /// Columns line up whatever the source's script: padding counts columns, not characters.
    #[test]
    fn sources_are_padded_to_the_columns_they_show_in() {
        for source in ["web", "wéb日本", "tienda móvil", "-"] {
            assert_eq!(padded(source, 16).width(), 16, "{source}");
        }
        assert_eq!(
            padded(&"x".repeat(20), 16),
            "x".repeat(20),
            "longer: as it is"
        );
    }
}
