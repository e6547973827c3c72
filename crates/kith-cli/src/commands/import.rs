//! `kith import contacts FILE`: people from a CRM export into profiles, through the same journal
//! and identity rules as tracked events, with a progress bar, a summary and a rejected-rows file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kith_core::Event;
use kith_import::mapping::parse_assignment;
use kith_import::{
    ContactField, ContactImporter, ContactMapping, Format, LogKind, MappingFile, Problem,
    RejectWriter, RowReader, RowSource, TimeParser,
};
use kith_profiles::{ChangeCounts, ProfileSettings};
use serde::Serialize;

use super::DataDirArg;
use super::destination::Destination;
use super::events_import::{default_rejected, import_events};
use super::log_import::{self, LogArgs};
use crate::config::FileConfig;

#[derive(Subcommand)]
pub enum ImportKind {
    /// People from a CRM or spreadsheet (CSV or JSONL): creates or updates profiles through the
    /// identity rules. Re-running the same import changes nothing.
    Contacts(ContactsArgs),
    /// Segment-shaped events, one JSON object a line (e.g. `kith demo generate`'s events.jsonl),
    /// validated like `/v1/batch`. Re-running stores nothing twice.
    Events(EventsArgs),
    /// A transaction log (who bought, when, how much), e.g. CDNOW's master file, as
    /// `Order Completed` events: the input of CLV models. Columns named customer_id, date,
    /// amount/dollar_value/revenue, quantity, order_id are recognised.
    Transactions(LogArgs),
    /// A helpdesk export as `Ticket Created` events: customer id or email and date required;
    /// every other column (subject, body, status…) kept as a property.
    Tickets(LogArgs),
    /// Survey answers as `Survey Responded` events: customer id or email and date required;
    /// `score`/`nps`/`calificacion` and `comment`/`comentario` recognised.
    Surveys(LogArgs),
}

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// The JSON Lines file.
    file: PathBuf,
    /// The source the events are recorded under [default: import]
    #[arg(long)]
    source: Option<String>,
    /// Where rejected lines go [default: FILE_NAME.rejected.csv in the current directory]
    #[arg(long, value_name = "FILE")]
    rejected: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct ContactsArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// The file: CSV with a header line, or JSON Lines (one object a line).
    file: PathBuf,
    /// What a column holds: FIELD=COLUMN, FIELD one of user_id, email, phone, timestamp,
    /// trait:NAME, external:TYPE. Repeat for each. Columns not mapped are recognised by their
    /// usual names (email, correo, phone, teléfono, celular, user_id, updated_at…); the rest become
    /// traits named after them.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
    /// A TOML file with `[map]`, `ignore`, `only_mapped`, `format`, `delimiter`, `time_format`,
    /// `timezone` and `source`; flags win over it.
    #[arg(long, value_name = "FILE")]
    mapping: Option<PathBuf>,
    /// A column to leave out. Repeat for each.
    #[arg(long = "ignore", value_name = "COLUMN")]
    ignore: Vec<String>,
    /// Import only the mapped and recognised columns (no other column becomes a trait).
    #[arg(long)]
    only_mapped: bool,
    /// csv, jsonl or parquet [default: from the file name]
    #[arg(long)]
    format: Option<String>,
    /// CSV field delimiter, e.g. `;` or `tab` [default: `,`, or tab for .tsv]
    #[arg(long)]
    delimiter: Option<String>,
    /// strftime format of the time column, e.g. `%d/%m/%Y %H:%M` [default: RFC 3339, ISO dates,
    /// Unix seconds]
    #[arg(long)]
    time_format: Option<String>,
    /// Time zone of times written without one (IANA name, e.g. America/Mexico_City) [default: UTC]
    #[arg(long)]
    timezone: Option<String>,
    /// The source the events are recorded under [default: crm]
    #[arg(long)]
    source: Option<String>,
    /// Where rejected rows go [default: FILE_NAME.rejected.csv in the current directory]
    #[arg(long, value_name = "FILE")]
    rejected: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The summary of an import.
#[derive(Debug, Serialize)]
pub struct ImportSummary {
    pub file: String,
    pub rows: u64,
    pub created: u64,
    pub updated: u64,
    pub merged: u64,
    /// Rows whose merge the identity guards refused.
    pub conflicts: u64,
    /// Rows that joined a profile without changing it.
    pub unchanged: u64,
    /// Rows imported before (same content, same mapping).
    pub already_imported: u64,
    pub rejected_rows: u64,
    pub dropped_values: u64,
    pub rejected_file: Option<String>,
    /// Likely duplicates among all profiles after the import (`kith profile duplicates`).
    pub duplicate_candidates: usize,
}

pub fn run(kind: ImportKind, file: FileConfig) -> anyhow::Result<ExitCode> {
    match kind {
        ImportKind::Contacts(args) => contacts(args, file),
        ImportKind::Events(args) => events(args, file),
        ImportKind::Transactions(args) => log_import::run(LogKind::Transactions, args, file),
        ImportKind::Tickets(args) => log_import::run(LogKind::Tickets, args, file),
        ImportKind::Surveys(args) => log_import::run(LogKind::Surveys, args, file),
    }
}

fn events(args: EventsArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let source = args.source.clone().unwrap_or_else(|| "import".to_string());
    if source.eq_ignore_ascii_case(kith_profiles::KITH_SOURCE) {
        bail!(
            "the source name `{source}` is reserved for events Kith writes itself; pass another --source"
        );
    }
    let data_dir = file.data_dir(args.data_dir.data_dir.clone());
    let destination = Destination::open(&data_dir, file.profile_settings()?)?;
    eprintln!(
        "importing {} into {}",
        args.file.display(),
        destination.describe()
    );
    let total = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let progress = progress_bar(total);
    let rejected = args
        .rejected
        .clone()
        .unwrap_or_else(|| default_rejected(&args.file));
    let summary = import_events(&args.file, &source, &destination, &rejected, |bytes| {
        progress.set_position(bytes)
    });
    progress.finish_and_clear();
    destination.close()?;
    let summary = summary?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} lines read from {}: {} events stored, {} already imported, {} rejected",
            summary.lines, summary.file, summary.stored, summary.already_imported, summary.rejected
        );
        if let Some(path) = &summary.rejected_file {
            println!("rejected lines, with reasons: {path}");
        }
    }
    if summary.lines > 0 && summary.rejected == summary.lines {
        eprintln!("error: no event of {} could be imported", summary.file);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A contacts import, settled from flags, a mapping file or code (the demo loader).
pub struct ContactsJob {
    pub file: PathBuf,
    pub format: Format,
    pub delimiter: Option<u8>,
    pub assignments: Vec<(ContactField, String)>,
    pub ignore: Vec<String>,
    pub only_mapped: bool,
    pub time: TimeParser,
    pub source: String,
    pub rejected: PathBuf,
}

impl ContactsJob {
    fn from_args(args: &ContactsArgs) -> anyhow::Result<ContactsJob> {
        let mapping_file = match &args.mapping {
            Some(path) => MappingFile::load(path)?,
            None => MappingFile::default(),
        };
        let format_name = args.format.clone().or(mapping_file.format.clone());
        let format = match format_name {
            Some(name) => Format::from_name(&name).with_context(|| {
                format!("`{name}` is not a format kith imports; use csv or jsonl")
            })?,
            None => Format::from_path(&args.file).with_context(|| {
                format!(
                    "cannot tell the format of {} from its name; pass --format csv or --format jsonl",
                    args.file.display()
                )
            })?,
        };
        let delimiter = args
            .delimiter
            .as_deref()
            .or(mapping_file.delimiter.as_deref())
            .map(MappingFile::delimiter_byte)
            .transpose()?;
        let time = TimeParser::new(
            args.time_format
                .clone()
                .or(mapping_file.time_format.clone()),
            args.timezone
                .as_deref()
                .or(mapping_file.timezone.as_deref()),
        )?;
        let source = args
            .source
            .clone()
            .or(mapping_file.source.clone())
            .unwrap_or_else(|| "crm".to_string());
        Ok(ContactsJob {
            file: args.file.clone(),
            format,
            delimiter,
            assignments: assignments(&mapping_file, &args.map)?,
            ignore: mapping_file
                .ignore
                .iter()
                .chain(&args.ignore)
                .cloned()
                .collect(),
            only_mapped: args.only_mapped || mapping_file.only_mapped,
            time,
            source,
            rejected: args
                .rejected
                .clone()
                .unwrap_or_else(|| default_rejected(&args.file)),
        })
    }
}

fn contacts(args: ContactsArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let job = ContactsJob::from_args(&args)?;
    let settings = file.profile_settings()?;
    let data_dir = file.data_dir(args.data_dir.data_dir.clone());
    let destination = Destination::open(&data_dir, settings.clone())?;
    eprintln!(
        "importing {} into {}",
        job.file.display(),
        destination.describe()
    );
    let (summary, examples) = run_contacts(&job, &settings, &destination, true)?;
    destination.close()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary, &examples);
    }
    if summary.rows == 0 {
        eprintln!("error: {} holds no rows", job.file.display());
        return Ok(ExitCode::FAILURE);
    }
    if summary.rejected_rows == summary.rows {
        eprintln!(
            "error: no row of {} could be imported; the reasons are in {}",
            job.file.display(),
            job.rejected.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs a contacts import into `destination`; returns the summary and the first few problems.
pub fn run_contacts(
    job: &ContactsJob,
    settings: &ProfileSettings,
    destination: &Destination,
    show_plan: bool,
) -> anyhow::Result<(ImportSummary, Vec<Problem>)> {
    if job.source.eq_ignore_ascii_case(kith_profiles::KITH_SOURCE) {
        bail!(
            "the source name `{}` is reserved for events Kith writes itself; pass another --source",
            job.source
        );
    }
    let mut reader = open_rows(&job.file, job.format, job.delimiter)?;
    let headers = reader.headers().map(<[String]>::to_vec);
    let mapping = ContactMapping::new(
        job.assignments.clone(),
        job.ignore.clone(),
        job.only_mapped,
        headers.as_deref(),
    )?;
    if let Some(headers) = &headers {
        let plan = mapping.plan(headers);
        if show_plan {
            let described: Vec<String> = plan
                .iter()
                .map(|(column, field)| format!("{column} → {}", field.describe()))
                .collect();
            eprintln!("columns: {}", described.join(", "));
        }
        let identifying = plan.iter().any(|(_, f)| {
            matches!(
                f,
                ContactField::UserId
                    | ContactField::Email
                    | ContactField::Phone
                    | ContactField::External(_)
            )
        });
        if !identifying {
            bail!(
                "no column of {} identifies a person; map one with --map email=COLUMN (or user_id, phone, external:TYPE)",
                job.file.display()
            );
        }
    }
    let importer = ContactImporter::new(
        mapping,
        headers.as_deref(),
        settings.normalizer.clone(),
        job.time.clone(),
        job.source.clone(),
        chrono::Utc::now(),
    );
    let mut rejects = RejectWriter::new(&job.rejected);
    let progress = progress_bar(reader.total_bytes());
    let bytes_read = reader.bytes_read();
    let mut totals = ChangeCounts::default();
    let mut already_imported = 0u64;
    let mut rows = 0u64;
    let mut batch: Vec<Event> = Vec::new();
    let mut send = |batch: &mut Vec<Event>| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = destination.write(std::mem::take(batch))?;
        already_imported += result.duplicates as u64;
        totals += result.changes;
        Ok(())
    };
    while let Some(next) = reader.next_row()? {
        rows += 1;
        let outcome = match next {
            Ok(row) => importer.row(&row),
            Err(bad) => kith_import::RowOutcome {
                event: None,
                problems: vec![importer.unreadable(bad)],
            },
        };
        for problem in outcome.problems {
            rejects.record(problem)?;
        }
        if let Some(event) = outcome.event {
            batch.push(event);
        }
        if batch.len() >= destination.batch_rows() {
            send(&mut batch)?;
            progress.set_position(bytes_read.load(Ordering::Relaxed));
            progress.set_message(format!("{rows} rows"));
        }
    }
    send(&mut batch)?;
    progress.finish_and_clear();
    rejects.finish()?;
    totals += destination.settle();
    let duplicate_candidates = destination.duplicate_count()?;
    let summary = ImportSummary {
        file: job.file.display().to_string(),
        rows,
        created: totals.created,
        updated: totals.updated,
        merged: totals.merged,
        conflicts: totals.conflict,
        unchanged: totals.unchanged,
        already_imported,
        rejected_rows: rejects.rows_skipped(),
        dropped_values: rejects.values_dropped(),
        rejected_file: rejects
            .written()
            .then(|| job.rejected.display().to_string()),
        duplicate_candidates,
    };
    Ok((summary, rejects.examples.clone()))
}

/// A file's rows, whatever its format.
pub fn open_rows(
    path: &std::path::Path,
    format: Format,
    delimiter: Option<u8>,
) -> anyhow::Result<Box<dyn RowSource>> {
    Ok(match format {
        Format::Parquet => Box::new(kith_lake::parquet_rows::ParquetRows::open(path)?),
        _ => Box::new(RowReader::open(path, format, delimiter)?),
    })
}

/// The mapping file's assignments, then the flags' (a flag replaces the file's assignment of the
/// same field or column).
fn assignments(
    file: &MappingFile,
    flags: &[String],
) -> anyhow::Result<Vec<(ContactField, String)>> {
    let mut out: Vec<(ContactField, String)> = Vec::new();
    for (field, column) in &file.map {
        out.push(parse_assignment(&format!("{field}={column}"))?);
    }
    for flag in flags {
        let (field, column) = parse_assignment(flag)?;
        out.retain(|(f, c)| f != &field && c != &column);
        out.push((field, column));
    }
    Ok(out)
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

fn print_summary(summary: &ImportSummary, examples: &[Problem]) {
    println!("{} rows read from {}", summary.rows, summary.file);
    println!("  created          {:>9}", summary.created);
    println!("  updated          {:>9}", summary.updated);
    println!("  merged           {:>9}", summary.merged);
    if summary.conflicts > 0 {
        println!(
            "  conflicts        {:>9}  (merges the identity guards refused; see each profile's `conflicts`)",
            summary.conflicts
        );
    }
    println!("  unchanged        {:>9}", summary.unchanged);
    println!("  already imported {:>9}", summary.already_imported);
    println!("  rejected rows    {:>9}", summary.rejected_rows);
    if summary.dropped_values > 0 {
        println!(
            "  dropped values   {:>9}  (the rows were imported without them)",
            summary.dropped_values
        );
    }
    if summary.duplicate_candidates > 0 {
        println!(
            "{} likely duplicates the identity rules did not merge: review them with `kith profile duplicates`",
            summary.duplicate_candidates
        );
    }
    if let Some(path) = &summary.rejected_file {
        println!("rejected rows and dropped values, with reasons: {path}");
        for problem in examples {
            println!(
                "  row {}{}: {} ({})",
                problem.row,
                problem
                    .column
                    .as_deref()
                    .map(|c| format!(", column `{c}`"))
                    .unwrap_or_default(),
                problem.reason,
                problem.action.as_str()
            );
        }
    }
}
