//! `kith import transactions|tickets|surveys FILE`: logs of what customers did, one row per act,
//! as track events (see `kith_import::transactions`).

use std::process::ExitCode;

use clap::Args;
use kith_import::transactions::Columns;
use kith_import::{LogKind, MappingError, TransactionField, TransactionImporter};

use super::import::{FileArgs, ImportSummary, open_rows, show_plan};
use crate::config::FileConfig;

#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    common: FileArgs,
    /// Currency of amounts when the file has no currency column, e.g. MXN
    #[arg(long)]
    currency: Option<String>,
    /// The event each row becomes [default: Order Completed, Ticket Created or Survey Responded]
    #[arg(long)]
    event: Option<String>,
}

/// Parses the `--map FIELD=COLUMN` flags with `parse_field`.
pub fn explicit_fields<F>(
    flags: &[String],
    parse_field: impl Fn(&str) -> Result<F, MappingError>,
) -> Result<Vec<(F, String)>, MappingError> {
    flags
        .iter()
        .map(|text| {
            let (field, column) = text
                .split_once('=')
                .filter(|(_, c)| !c.trim().is_empty())
                .ok_or_else(|| MappingError::NotAnAssignment(text.clone()))?;
            Ok((parse_field(field)?, column.trim().to_string()))
        })
        .collect()
}

/// Transactions, tickets or survey answers: one track event a row.
pub fn run(kind: LogKind, args: LogArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    let format = common.format(None)?;
    let delimiter = common.delimiter(None)?;
    let source = common.source(None, kind.name())?;
    let explicit = explicit_fields(&common.map, TransactionField::parse)?;
    let mut reader = open_rows(&common.file, format, delimiter)?;
    let columns = match reader.headers().map(<[String]>::to_vec) {
        Some(headers) => {
            let plan =
                kith_import::transactions::plan(kind, &headers, &explicit, common.only_mapped)?;
            show_plan(&plan, TransactionField::describe);
            Columns::Fixed(plan)
        }
        // JSON Lines name their keys on every line: each is read with its own.
        None => Columns::PerRow {
            explicit,
            only_mapped: common.only_mapped,
        },
    };
    let importer = TransactionImporter::new(
        kind,
        columns,
        common.time(None, None)?,
        source,
        args.event
            .clone()
            .unwrap_or_else(|| kind.event_name().into()),
        args.currency.clone(),
    );
    let destination = common.destination(&file)?;
    let job = format!("{} {}", kind.name(), importer.fingerprint());
    let totals = common
        .row_import(&destination, job)
        .run(reader.as_mut(), |row| match row {
            Ok(row) => importer.row(&row),
            Err(bad) => kith_import::RowOutcome {
                event: None,
                problems: vec![importer.unreadable(bad)],
            },
        });
    destination.close()?;
    let totals = totals?;
    ImportSummary::new(&common.file, &totals).report(common.json, &totals)
}
