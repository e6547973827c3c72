//! `kith import contacts|events|transactions|tickets|surveys FILE`: customer files into Kith,
//! through the same journal and identity rules as tracked events. Every kind streams its file,
//! shows a progress bar, writes rejected rows with their reasons, prints a summary, and continues
//! an interrupted import where it stopped (see [`super::row_import`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kith_import::{
    FirstRowRead, Format, MappingError, MappingFile, RowReader, RowSource, TimeParser,
};
use serde::Serialize;

use super::DataDirArg;
use super::contacts_import::{self, ContactsArgs};
use super::destination::Destination;
use super::events_import::{self, EventsArgs};
use super::import_ledger::LedgerEntry;
use super::log_import::{self, LogArgs, TransactionArgs};
use super::row_import::{RowImport, RowTotals, checkpoint_beside};
use crate::config::FileConfig;
use kith_import::LogKind;

#[derive(Subcommand)]
pub enum ImportKind {
    /// People from a CRM or spreadsheet: creates or updates profiles through the identity rules.
    ///
    /// Fields for --map: user_id, email, phone, timestamp, trait:NAME, external:TYPE. Columns not
    /// mapped are recognised by their usual names (email, correo, phone, teléfono, celular,
    /// user_id, updated_at…); the rest become traits named after them.
    Contacts(ContactsArgs),
    /// Events: Segment-shaped JSON lines as they are (e.g. `kith demo generate`'s events.jsonl),
    /// or flat rows of another tool's export (CSV, Parquet, JSONL with --map), one event a row.
    ///
    /// Fields for --map: type, event, user_id, anonymous_id, email, timestamp, message_id,
    /// property:NAME, trait:NAME. Usual names are recognised (event/action/evento,
    /// user_id/customer_id/cliente, anonymous_id/device_id, timestamp/date/fecha, message_id);
    /// other columns become properties. Rows are validated like `/v1/batch` items.
    Events(EventsArgs),
    /// A transaction log (who bought, when, how much), e.g. CDNOW's master file, as
    /// `Order Completed` events: the input of CLV models.
    ///
    /// Fields for --map: customer, email, date, amount, quantity, order_id, currency,
    /// property:NAME. Columns named customer_id, date, amount/dollar_value/revenue, quantity,
    /// order_id are recognised.
    Transactions(TransactionArgs),
    /// A helpdesk export as `Ticket Created` events: customer id or email and date required;
    /// every other column (subject, body, status…) kept as a property.
    ///
    /// Fields for --map: customer, email, date, property:NAME.
    Tickets(LogArgs),
    /// Survey answers as `Survey Responded` events: customer id or email and date required;
    /// `score`/`nps`/`calificacion` and `comment`/`comentario` recognised.
    ///
    /// Fields for --map: customer, email, date, property:NAME.
    Surveys(LogArgs),
}

/// The flags every file import takes.
#[derive(Args)]
pub struct FileArgs {
    #[command(flatten)]
    pub data_dir: DataDirArg,
    /// The file: CSV or TSV with a header line, JSON Lines, Parquet, or whitespace-separated
    /// text (`.txt`) whose first line names the columns (or see `--columns`).
    pub file: PathBuf,
    /// What a column holds: FIELD=COLUMN (the fields are listed above). Repeat for each.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    pub map: Vec<String>,
    /// A TOML file with `[map]` (FIELD = "COLUMN"), `ignore`, `only_mapped`, `format`,
    /// `delimiter`, `time_format`, `timezone` and `source`; flags win over it.
    #[arg(long, value_name = "FILE")]
    pub mapping: Option<PathBuf>,
    /// A column to leave out. Repeat for each.
    #[arg(long = "ignore", value_name = "COLUMN")]
    pub ignore: Vec<String>,
    /// Leave out the columns that are neither mapped nor recognised (instead of keeping them).
    #[arg(long)]
    pub only_mapped: bool,
    /// Names for the columns of a CSV or text file without a header line, comma-separated
    /// (CDNOW's master file: `--columns customer_id,date,number_of_cds,dollar_value`); its first
    /// line is then data.
    #[arg(long, value_delimiter = ',', value_name = "NAME,...")]
    pub columns: Vec<String>,
    /// csv, jsonl, parquet or whitespace [default: from the file name]
    #[arg(long)]
    pub format: Option<String>,
    /// CSV field delimiter, e.g. `;` or `tab` [default: `,`, tab for .tsv]
    #[arg(long)]
    pub delimiter: Option<String>,
    /// strftime format of the time column, e.g. `%d/%m/%Y %H:%M` [default: RFC 3339, ISO dates
    /// and times, YYYYMMDD, Unix seconds]
    #[arg(long)]
    pub time_format: Option<String>,
    /// Time zone of times written without one (IANA name, e.g. America/Mexico_City)
    /// [default: UTC]
    #[arg(long)]
    pub timezone: Option<String>,
    /// The source the events are recorded under [default: crm for contacts, import for events,
    /// and transactions, tickets or surveys for those]
    #[arg(long)]
    pub source: Option<String>,
    /// Where rejected rows go [default: FILE_NAME.rejected.csv in the current directory]
    #[arg(long, value_name = "FILE")]
    pub rejected: Option<PathBuf>,
    /// Read the file from its first row, even where an interrupted import of it left a
    /// checkpoint to continue from (FILE_NAME.import-progress.json, beside the rejected rows).
    #[arg(long)]
    pub restart: bool,
    /// Events, transactions, tickets and surveys: import rows this data directory imported
    /// before with other settings (another time zone, currency, mapping…) anyway, as new
    /// events beside the earlier ones or, where they make the same events, only the rows the
    /// earlier import did not have. Without it, such an import is refused.
    #[arg(long)]
    pub keep_both: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

impl FileArgs {
    /// The `--mapping` file, or an empty one.
    pub fn mapping_file(&self) -> anyhow::Result<MappingFile> {
        Ok(match &self.mapping {
            Some(path) => MappingFile::load(path)?,
            None => MappingFile::default(),
        })
    }

    /// FIELD=COLUMN assignments: the mapping file's, then the flags' (a flag replaces the file's
    /// assignment of the same field or column), each read with `parse_field`.
    pub fn assignments<F: PartialEq>(
        &self,
        file: &MappingFile,
        parse_field: impl Fn(&str) -> Result<F, MappingError>,
    ) -> anyhow::Result<Vec<(F, String)>> {
        let parse = |text: &str| -> Result<(F, String), MappingError> {
            let (field, column) = text
                .split_once('=')
                .filter(|(_, c)| !c.trim().is_empty())
                .ok_or_else(|| MappingError::NotAnAssignment(text.to_string()))?;
            Ok((parse_field(field)?, column.trim().to_string()))
        };
        let mut out: Vec<(F, String)> = Vec::new();
        for (field, column) in &file.map {
            out.push(parse(&format!("{field}={column}"))?);
        }
        for flag in &self.map {
            let (field, column) = parse(flag)?;
            out.retain(|(f, c)| f != &field && c != &column);
            out.push((field, column));
        }
        Ok(out)
    }

    /// Columns to leave out: the mapping file's and the flags'.
    pub fn ignored(&self, file: &MappingFile) -> Vec<String> {
        file.ignore.iter().chain(&self.ignore).cloned().collect()
    }

    /// The file's format: the flag, else a mapping file's, else the file name's.
    pub fn format(&self, configured: Option<&str>) -> anyhow::Result<Format> {
        if self.file.is_dir() {
            bail!(
                "{} is a directory; give the file to import (one file a command)",
                self.file.display()
            );
        }
        match self.format.as_deref().or(configured) {
            Some(name) => Format::from_name(name).with_context(|| {
                format!("`{name}` is not a format kith imports; use csv, jsonl, parquet or whitespace")
            }),
            None => Format::from_path(&self.file).with_context(|| {
                format!(
                    "cannot tell the format of {} from its name; pass --format csv, jsonl, parquet or whitespace",
                    self.file.display()
                )
            }),
        }
    }

    pub fn delimiter(&self, configured: Option<&str>) -> anyhow::Result<Option<u8>> {
        Ok(self
            .delimiter
            .as_deref()
            .or(configured)
            .map(MappingFile::delimiter_byte)
            .transpose()?)
    }

    pub fn time(&self, format: Option<String>, zone: Option<&str>) -> anyhow::Result<TimeParser> {
        Ok(TimeParser::new(
            self.time_format.clone().or(format),
            self.timezone.as_deref().or(zone),
        )?)
    }

    /// The source named by the flag (else `default`), refusing the one Kith keeps for itself.
    pub fn source(&self, default: Option<&str>, fallback: &str) -> anyhow::Result<String> {
        let source = self
            .source
            .clone()
            .or(default.map(str::to_string))
            .unwrap_or_else(|| fallback.to_string());
        check_source(&source)?;
        Ok(source)
    }

    pub fn rejected(&self) -> PathBuf {
        self.rejected
            .clone()
            .unwrap_or_else(|| default_rejected(&self.file))
    }

    /// Where the import goes, and the outermost directory this import is about to make for it
    /// (the data directory, or a parent of it that is not there either; see
    /// [`FileArgs::close`]).
    pub fn destination(&self, file: &FileConfig) -> anyhow::Result<(Destination, Option<PathBuf>)> {
        check_rejected_path(&self.file, &self.rejected())?;
        let data_dir = file.data_dir(self.data_dir.data_dir.clone());
        let new = !data_dir.exists();
        let outermost_new = data_dir
            .ancestors()
            .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
            .last()
            .map(Path::to_path_buf);
        let destination = Destination::open(&data_dir, file.profile_settings()?)?;
        // Named in full, and said when it is new: a mistyped --data-dir (or a command run from
        // another directory) then shows at once.
        let place = match &destination {
            Destination::Offline { .. } if new => {
                format!("a new data directory, {}", super::shown_path(&data_dir))
            }
            Destination::Offline { .. } => {
                format!("the data directory {}", super::shown_path(&data_dir))
            }
            Destination::Server { .. } => destination.describe(),
        };
        eprintln!("importing {} into {place}", self.file.display());
        let made = outermost_new.filter(|_| matches!(destination, Destination::Offline { .. }));
        Ok((destination, made))
    }

    /// Closes the destination. What this import made for a data directory (`made`: the data
    /// directory, or its outermost new parent), when the import finished having stored nothing
    /// (`stored`: `None` when it failed, having perhaps written some), is removed: a first
    /// import whose every row was refused leaves nothing behind to be taken for data.
    pub fn close(
        &self,
        destination: Destination,
        made: Option<PathBuf>,
        stored: Option<u64>,
    ) -> anyhow::Result<()> {
        destination.close()?;
        if let Some(made) = made.filter(|_| stored == Some(0)) {
            std::fs::remove_dir_all(&made).with_context(|| {
                format!(
                    "cannot remove {}, which this import made and stored nothing in",
                    made.display()
                )
            })?;
        }
        Ok(())
    }

    /// The import of this file, checkpointed under `job` (what tells this import from another
    /// of the same file: the command and its mapping).
    pub fn row_import<'a>(&'a self, destination: &'a Destination, job: String) -> RowImport<'a> {
        RowImport {
            destination,
            file: &self.file,
            rejected: self.rejected(),
            checkpoint: Some((checkpoint_beside(&self.rejected(), &self.file), job)),
            restart: self.restart,
            ledger: None,
        }
    }

    /// What the data directory's import ledger is told of an import by `command` whose
    /// message ids follow `job`.
    pub fn ledger_entry(
        &self,
        command: &str,
        job: &str,
        settings: BTreeMap<String, String>,
    ) -> LedgerEntry {
        LedgerEntry {
            command: command.to_string(),
            ids_from: job.to_string(),
            settings,
            keep_both: self.keep_both,
        }
    }
}

pub fn check_source(source: &str) -> anyhow::Result<()> {
    if source.trim().is_empty() {
        bail!("--source is empty; name where the file's events come from, e.g. `--source crm`");
    }
    kith_state::check_source_name(source).context("--source")?;
    Ok(())
}

pub fn run(kind: ImportKind, file: FileConfig) -> anyhow::Result<ExitCode> {
    match kind {
        ImportKind::Contacts(args) => contacts_import::run(args, file),
        ImportKind::Events(args) => events_import::run(args, file),
        ImportKind::Transactions(args) => {
            let (args, currency) = args.split();
            log_import::run(LogKind::Transactions, args, currency, file)
        }
        ImportKind::Tickets(args) => log_import::run(LogKind::Tickets, args, None, file),
        ImportKind::Surveys(args) => log_import::run(LogKind::Surveys, args, None, file),
    }
}

/// The summary every import prints.
#[derive(Debug, Serialize)]
pub struct ImportSummary {
    pub file: String,
    pub rows: u64,
    /// Events stored by this import.
    pub stored: u64,
    /// Rows imported before (same content, same mapping): stored once, not again.
    pub already_imported: u64,
    /// Profiles the import created, updated or merged, and rows that joined one unchanged.
    pub created: u64,
    pub updated: u64,
    pub merged: u64,
    /// Rows whose merge the identity guards refused.
    pub conflicts: u64,
    pub unchanged: u64,
    pub rejected_rows: u64,
    /// Values left out of rows that were imported.
    pub dropped_values: u64,
    pub rejected_file: Option<String>,
    /// Rows an interrupted run had handled; this run continued after them.
    pub resumed_after: u64,
    /// Likely duplicates among all profiles after the import (`kith profile duplicates`);
    /// counted after contact imports.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_candidates: Option<usize>,
}

impl ImportSummary {
    pub fn new(file: &Path, totals: &RowTotals) -> ImportSummary {
        ImportSummary {
            file: file.display().to_string(),
            rows: totals.rows,
            stored: totals.stored,
            already_imported: totals.already_imported,
            created: totals.changes.created,
            updated: totals.changes.updated,
            merged: totals.changes.merged,
            conflicts: totals.changes.conflict,
            unchanged: totals.changes.unchanged,
            rejected_rows: totals.rejected_rows,
            dropped_values: totals.dropped_values,
            rejected_file: totals.rejected_file.clone(),
            resumed_after: totals.resumed_after,
            duplicate_candidates: None,
        }
    }

    /// Prints the summary (as JSON with `json`) and says whether the import failed: nothing in
    /// the file, or no row of it importable.
    pub fn report(&self, json: bool, totals: &RowTotals) -> anyhow::Result<ExitCode> {
        if json {
            outln!("{}", serde_json::to_string_pretty(self)?)?;
        } else {
            self.print(totals)?;
        }
        if self.rows == 0 {
            eprintln!("error: {} holds no rows", self.file);
            return Ok(ExitCode::FAILURE);
        }
        if self.rejected_rows == self.rows {
            eprintln!(
                "error: no row of {} could be imported; the reasons are in {}",
                self.file,
                self.rejected_file
                    .as_deref()
                    .unwrap_or("the rejected-rows file")
            );
            return Ok(ExitCode::FAILURE);
        }
        Ok(ExitCode::SUCCESS)
    }

    fn print(&self, totals: &RowTotals) -> Result<(), crate::stdout::StdoutError> {
        outln!("{} rows read from {}", self.rows, self.file)?;
        if self.resumed_after > 0 {
            outln!(
                "  (continued after row {}, where an interrupted run stopped)",
                self.resumed_after
            )?;
        }
        outln!("  events stored    {:>9}", self.stored)?;
        outln!("  already imported {:>9}", self.already_imported)?;
        outln!("  profiles created {:>9}", self.created)?;
        outln!("  updated          {:>9}", self.updated)?;
        outln!("  merged           {:>9}", self.merged)?;
        if self.conflicts > 0 {
            outln!(
                "  conflicts        {:>9}  (merges the identity guards refused; see each profile's `conflicts`)",
                self.conflicts
            )?;
        }
        outln!("  unchanged        {:>9}", self.unchanged)?;
        outln!("  rejected rows    {:>9}", self.rejected_rows)?;
        if self.dropped_values > 0 {
            outln!(
                "  dropped values   {:>9}  (the rows were imported without them)",
                self.dropped_values
            )?;
        }
        if let Some(candidates) = self.duplicate_candidates.filter(|n| *n > 0) {
            outln!(
                "{candidates} likely duplicates the identity rules did not merge: review them with `kith profile duplicates`"
            )?;
        }
        if let Some(path) = &self.rejected_file {
            outln!("rejected rows and dropped values, with reasons: {path}")?;
            for problem in &totals.examples {
                outln!(
                    "  row {}{}: {} ({})",
                    problem.row,
                    problem
                        .column
                        .as_deref()
                        .map(|c| format!(", column `{c}`"))
                        .unwrap_or_default(),
                    problem.reason,
                    problem.action.as_str()
                )?;
            }
            // The first few are shown; the file has them all.
            let problems = self.rejected_rows + self.dropped_values;
            let shown = totals.examples.len() as u64;
            if problems > shown {
                outln!("  … and {} more in {path}", problems - shown)?;
            }
        }
        Ok(())
    }
}

/// A file's rows, whatever its format; `columns` names those of a CSV or text file without a
/// header line (none: the file's first line names them). A file without rows is refused here,
/// before an import makes anything for it.
pub fn open_rows(
    path: &Path,
    format: Format,
    delimiter: Option<u8>,
    columns: &[String],
) -> anyhow::Result<Box<dyn RowSource>> {
    let columns = (!columns.is_empty())
        .then(|| columns_named(columns, format))
        .transpose()?;
    let own_header_line = columns.is_none() && matches!(format, Format::Csv | Format::Whitespace);
    let source: Box<dyn RowSource> = match format {
        Format::Parquet => Box::new(kith_lake::parquet_rows::ParquetRows::open(path)?),
        _ => {
            let reader = RowReader::open_with_columns(path, format, delimiter, columns)?;
            if let Some(encoding) = reader.read_as() {
                eprintln!(
                    "{} is not UTF-8; reading it as {encoding} (save it as UTF-8 if its accents \
                     come out wrong)",
                    path.display()
                );
            }
            Box::new(reader)
        }
    };
    let header_line = own_header_line && source.headers().is_some_and(|names| !names.is_empty());
    match FirstRowRead::new(source)? {
        Some(rows) => Ok(Box::new(rows)),
        None if header_line => bail!(
            "{} holds no rows: it has a header line and nothing under it",
            path.display()
        ),
        None => bail!("{} holds no rows", path.display()),
    }
}

/// The names `--columns` gave, checked: each once, none empty, and only for files whose lines
/// are bare values.
fn columns_named(columns: &[String], format: Format) -> anyhow::Result<Vec<String>> {
    if matches!(format, Format::Jsonl | Format::Parquet) {
        bail!(
            "--columns names the columns of a CSV or text file without a header line; a {} file \
             names its own",
            format.name()
        );
    }
    let names: Vec<String> = columns.iter().map(|c| c.trim().to_string()).collect();
    if let Some(at) = names.iter().position(String::is_empty) {
        bail!(
            "--columns: name {} of {} is empty; give one name for each column, comma-separated",
            at + 1,
            names.len()
        );
    }
    for (at, name) in names.iter().enumerate() {
        if names[..at].contains(name) {
            bail!("--columns names `{name}` twice; each column needs a name of its own");
        }
    }
    Ok(names)
}

/// `FILE_NAME.rejected.csv` in the current directory.
pub fn default_rejected(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    PathBuf::from(format!("{name}.rejected.csv"))
}

/// Prints how each column will be read.
pub fn show_plan<F>(plan: &[(String, F)], describe: impl Fn(&F) -> String) {
    let described: Vec<String> = plan
        .iter()
        .map(|(column, field)| format!("{column} → {}", describe(field)))
        .collect();
    eprintln!("columns: {}", described.join(", "));
}

pub fn progress_bar(total_bytes: u64) -> ProgressBar {
    let bar =
        ProgressBar::with_draw_target(Some(total_bytes), indicatif::ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:30} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Refuses a `--rejected` path the rejected rows cannot be written to as a file of their own:
/// the file is put in place by renaming, which would replace the file being imported (losing
/// it), a symlink (its target never written) or a FIFO or device.
fn check_rejected_path(imported: &Path, rejected: &Path) -> anyhow::Result<()> {
    let Ok(found) = std::fs::symlink_metadata(rejected) else {
        return Ok(());
    };
    let same_file = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(imported)
            .is_ok_and(|source| source.dev() == found.dev() && source.ino() == found.ino())
    };
    let what = if same_file {
        "the file being imported"
    } else if found.file_type().is_symlink() {
        "a symbolic link"
    } else if found.is_dir() {
        "a directory"
    } else if !found.is_file() {
        "not a regular file (a FIFO or a device)"
    } else {
        return Ok(());
    };
    anyhow::bail!(
        "--rejected {} is {what}: the rejected rows go to a file of their own, which replaces \
         whatever the path names; name another file (by default FILE.rejected.csv beside the \
         import)",
        rejected.display()
    )
}

#[cfg(test)]
mod tests {
    use super::check_source;

    #[test]
    fn a_source_must_be_named_and_not_kiths_own() {
        assert!(check_source("crm").is_ok());
        for refused in ["", "  ", "kith", "Kith"] {
            assert!(check_source(refused).is_err(), "{refused:?}");
        }
    }
}
