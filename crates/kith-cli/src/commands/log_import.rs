//! `kith import transactions|tickets|surveys FILE`: logs of what customers did, one row per act,
//! as track events (see `kith_import::transactions`).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;

use anyhow::{Context, bail};
use clap::Args;
use kith_core::Event;
use kith_import::transactions::Columns;
use kith_import::{
    Format, LogKind, MappingFile, RejectWriter, TimeParser, TransactionField, TransactionImporter,
};
use serde::Serialize;

use super::DataDirArg;
use super::destination::Destination;
use super::events_import::default_rejected;
use super::import::{open_rows, progress_bar};
use crate::config::FileConfig;

#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// CSV, JSONL, Parquet, or whitespace-separated text (`.txt`) whose first line names the
    /// columns.
    file: PathBuf,
    /// What a column holds: FIELD=COLUMN, FIELD one of customer, email, date, amount, quantity,
    /// order_id, currency, property:NAME. Repeat for each.
    #[arg(long = "map", value_name = "FIELD=COLUMN")]
    map: Vec<String>,
    /// Leave out the columns that are neither mapped nor recognised (instead of keeping them as
    /// properties).
    #[arg(long)]
    only_mapped: bool,
    /// csv, jsonl, parquet or whitespace [default: from the file name]
    #[arg(long)]
    format: Option<String>,
    /// CSV field delimiter [default: `,`]
    #[arg(long)]
    delimiter: Option<String>,
    /// strftime format of the dates [default: ISO dates and times, YYYYMMDD, Unix seconds]
    #[arg(long)]
    time_format: Option<String>,
    /// Time zone of dates written without one [default: UTC]
    #[arg(long)]
    timezone: Option<String>,
    /// Currency of amounts when the file has no currency column, e.g. MXN
    #[arg(long)]
    currency: Option<String>,
    /// The event each row becomes [default: Order Completed, Ticket Created or Survey Responded]
    #[arg(long)]
    event: Option<String>,
    /// The source the events are recorded under [default: transactions, tickets or surveys]
    #[arg(long)]
    source: Option<String>,
    /// Where rejected rows go [default: FILE_NAME.rejected.csv in the current directory]
    #[arg(long, value_name = "FILE")]
    rejected: Option<PathBuf>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The summary of a log import.
#[derive(Debug, Serialize)]
pub struct LogSummary {
    pub file: String,
    pub rows: u64,
    pub stored: u64,
    pub already_imported: u64,
    pub rejected_rows: u64,
    pub customers_created: u64,
    pub rejected_file: Option<String>,
}

/// Transactions, tickets or survey answers: one track event a row.
pub fn run(kind: LogKind, args: LogArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let format = match &args.format {
        Some(name) => Format::from_name(name).with_context(|| {
            format!("`{name}` is not a format kith imports; use csv, jsonl or whitespace")
        })?,
        None => Format::from_path(&args.file).with_context(|| {
            format!(
                "cannot tell the format of {} from its name; pass --format csv, jsonl or whitespace",
                args.file.display()
            )
        })?,
    };
    let delimiter = args
        .delimiter
        .as_deref()
        .map(MappingFile::delimiter_byte)
        .transpose()?;
    let source = args.source.clone().unwrap_or_else(|| kind.name().into());
    if source.eq_ignore_ascii_case(kith_profiles::KITH_SOURCE) {
        bail!(
            "the source name `{source}` is reserved for events Kith writes itself; pass another --source"
        );
    }
    let explicit = args
        .map
        .iter()
        .map(|text| {
            let (field, column) = text
                .split_once('=')
                .filter(|(_, c)| !c.trim().is_empty())
                .ok_or_else(|| kith_import::MappingError::NotAnAssignment(text.clone()))?;
            Ok((TransactionField::parse(field)?, column.trim().to_string()))
        })
        .collect::<Result<Vec<_>, kith_import::MappingError>>()?;
    let mut reader = open_rows(&args.file, format, delimiter)?;
    let columns = match reader.headers().map(<[String]>::to_vec) {
        Some(headers) => {
            let plan =
                kith_import::transactions::plan(kind, &headers, &explicit, args.only_mapped)?;
            let described: Vec<String> = plan
                .iter()
                .map(|(column, field)| format!("{column} → {}", field.describe()))
                .collect();
            eprintln!("columns: {}", described.join(", "));
            Columns::Fixed(plan)
        }
        // JSON Lines name their keys on every line: each is read with its own.
        None => Columns::PerRow {
            explicit,
            only_mapped: args.only_mapped,
        },
    };
    let importer = TransactionImporter::new(
        kind,
        columns,
        TimeParser::new(args.time_format.clone(), args.timezone.as_deref())?,
        source,
        args.event
            .clone()
            .unwrap_or_else(|| kind.event_name().into()),
        args.currency.clone(),
    );
    let rejected_path = args
        .rejected
        .clone()
        .unwrap_or_else(|| default_rejected(&args.file));
    let mut rejects = RejectWriter::new(&rejected_path);
    let data_dir = file.data_dir(args.data_dir.data_dir.clone());
    let destination = Destination::open(&data_dir, file.profile_settings()?)?;
    eprintln!(
        "importing {} into {}",
        args.file.display(),
        destination.describe()
    );
    let progress = progress_bar(reader.total_bytes());
    let bytes_read = reader.bytes_read();
    let mut summary = LogSummary {
        file: args.file.display().to_string(),
        rows: 0,
        stored: 0,
        already_imported: 0,
        rejected_rows: 0,
        customers_created: 0,
        rejected_file: None,
    };
    let mut batch: Vec<Event> = Vec::with_capacity(destination.batch_rows());
    let send = |batch: &mut Vec<Event>, summary: &mut LogSummary| -> anyhow::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let result = destination.write(std::mem::take(batch))?;
        summary.stored += result.stored as u64;
        summary.already_imported += result.duplicates as u64;
        summary.customers_created += result.changes.created;
        Ok(())
    };
    while let Some(next) = reader.next_row()? {
        summary.rows += 1;
        let outcome = match next {
            Ok(row) => importer.row(&row),
            Err(bad) => kith_import::transactions::TransactionOutcome {
                event: None,
                problem: Some(importer.unreadable(bad)),
            },
        };
        if let Some(problem) = outcome.problem {
            summary.rejected_rows += 1;
            rejects.record(problem)?;
        }
        if let Some(event) = outcome.event {
            batch.push(event);
        }
        if batch.len() >= destination.batch_rows() {
            send(&mut batch, &mut summary)?;
            progress.set_position(bytes_read.load(Ordering::Relaxed));
            progress.set_message(format!("{} rows", summary.rows));
        }
    }
    send(&mut batch, &mut summary)?;
    progress.finish_and_clear();
    rejects.finish()?;
    summary.customers_created += destination.settle().created;
    destination.close()?;
    summary.rejected_file = rejects
        .written()
        .then(|| rejected_path.display().to_string());
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!(
            "{} rows read from {}: {} events stored ({} new customers), {} already imported, {} rejected",
            summary.rows,
            summary.file,
            summary.stored,
            summary.customers_created,
            summary.already_imported,
            summary.rejected_rows
        );
        if let Some(path) = &summary.rejected_file {
            println!("rejected rows, with reasons: {path}");
        }
    }
    if summary.rows == 0 || summary.rejected_rows == summary.rows {
        eprintln!("error: no row of {} could be imported", summary.file);
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
