//! `kith import transactions|tickets|surveys FILE`: logs of what customers did, one row per act,
//! as track events (see `kith_import::transactions`).

use std::process::ExitCode;

use clap::Args;
use kith_import::transactions::Columns;
use kith_import::{LogKind, TransactionField, TransactionImporter};

use super::import::{FileArgs, ImportSummary, open_rows, show_plan};
use crate::config::FileConfig;

/// The flags of a tickets or surveys import.
#[derive(Args)]
pub struct LogArgs {
    #[command(flatten)]
    common: FileArgs,
    /// The event each row becomes [default: Ticket Created for tickets, Survey Responded for
    /// surveys, Order Completed for transactions]
    #[arg(long)]
    event: Option<String>,
}

/// The flags of a transactions import: a log's, and the currency of its amounts.
#[derive(Args)]
pub struct TransactionArgs {
    #[command(flatten)]
    log: LogArgs,
    /// Currency of amounts when the file has no currency column, e.g. MXN
    #[arg(long)]
    currency: Option<String>,
}

impl TransactionArgs {
    /// The log's flags, and the currency.
    pub fn split(self) -> (LogArgs, Option<String>) {
        (self.log, self.currency)
    }
}

/// Transactions, tickets or survey answers: one track event a row.
pub fn run(
    kind: LogKind,
    args: LogArgs,
    currency: Option<String>,
    file: FileConfig,
) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    // `pesos` and `mxn` are MXN, as in a currency column; anything else must be a code.
    let currency = currency
        .map(|text| {
            let code = kith_import::transactions::currency_code(&text);
            if code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase()) {
                Ok(code)
            } else {
                Err(anyhow::anyhow!(
                    "--currency `{text}` is not a currency code; give the ISO 4217 code of the \
                     amounts, e.g. MXN or USD"
                ))
            }
        })
        .transpose()?;
    let mapping = common.mapping_file()?;
    let format = common.format(mapping.format.as_deref())?;
    let delimiter = common.delimiter(mapping.delimiter.as_deref())?;
    let source = common.source(mapping.source.as_deref(), kind.name())?;
    let mut explicit = common.assignments(&mapping, TransactionField::parse)?;
    explicit.extend(
        common
            .ignored(&mapping)
            .into_iter()
            .map(|column| (TransactionField::Ignore, column)),
    );
    let only_mapped = common.only_mapped || mapping.only_mapped;
    let mut reader = open_rows(&common.file, format, delimiter, &common.columns)?;
    let columns = match reader.headers().map(<[String]>::to_vec) {
        Some(headers) => {
            let plan = kith_import::transactions::plan(kind, &headers, &explicit, only_mapped)?;
            show_plan(&plan, TransactionField::describe);
            // Answers without a score or a comment count in no NPS and say nothing: most likely
            // the wrong file, or a column to map.
            let answers = |name: &str| {
                plan.iter()
                    .any(|(_, f)| matches!(f, TransactionField::Property(p) if p == name))
            };
            if kind == LogKind::Surveys && !answers("score") && !answers("comment") {
                eprintln!(
                    "warning: no column of {} holds a score or a comment, so the answers say \
                     nothing; map one with --map property:score=COLUMN or \
                     --map property:comment=COLUMN",
                    common.file.display()
                );
            }
            Columns::Fixed(plan)
        }
        // JSON Lines name their keys on every line: each is read with its own.
        None => Columns::PerRow {
            explicit,
            only_mapped,
        },
    };
    let importer = TransactionImporter::new(
        kind,
        columns,
        common.time(mapping.time_format.clone(), mapping.timezone.as_deref())?,
        source,
        args.event
            .clone()
            .unwrap_or_else(|| kind.event_name().into()),
        currency,
    )
    // Semicolons separate the cells where commas mark decimals (Excel in Spanish, Portuguese).
    .with_decimal_comma(reader.delimiter() == Some(b';'));
    let (destination, made) = common.destination(&file)?;
    let job = format!("{} {}", kind.name(), importer.fingerprint());
    let mut import = common.row_import(&destination, job.clone());
    import.ledger = Some(common.ledger_entry(kind.name(), &job, importer.settings()));
    let totals = import.run(reader.as_mut(), |row| match row {
        Ok(row) => importer.row(&row),
        Err(bad) => kith_import::RowOutcome {
            event: None,
            problems: vec![importer.unreadable(bad)],
        },
    });
    let stored = totals.as_ref().ok().map(|totals| totals.stored);
    common.close(destination, made, stored)?;
    let totals = totals?;
    ImportSummary::new(&common.file, &totals).report(common.json, &totals)
}
