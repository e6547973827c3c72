//! `kith import events FILE`: Segment-shaped JSON lines as they are (what `kith demo generate`
//! writes, or an export from another CDP), or flat rows (CSV, Parquet, or JSONL given a
//! `--map`) through a column mapping. Either way every row is validated like a `/v1/batch` item;
//! rows without a message id get one derived from their content, so a second run stores nothing
//! again.

use std::path::Path;
use std::process::ExitCode;

use clap::Args;
use kith_import::events::plan_events;
use kith_import::transactions::Columns;
use kith_import::{
    EventField, FlatEventImporter, Format, RowOutcome, RowSource, SegmentLineImporter,
};

use super::destination::Destination;
use super::import::{FileArgs, ImportSummary, open_rows, show_plan};
use super::row_import::{RowImport, RowTotals};
use crate::config::FileConfig;

#[derive(Args)]
pub struct EventsArgs {
    #[command(flatten)]
    common: FileArgs,
    /// The event every row is, when the file has no column naming it (flat files only)
    #[arg(long)]
    event: Option<String>,
}

/// How the rows of an events file become events.
enum Reading {
    /// Each JSON line is a Segment event.
    Segment(SegmentLineImporter),
    /// Each row is mapped column by column.
    Flat(FlatEventImporter),
}

impl Reading {
    fn job(&self) -> String {
        match self {
            Reading::Segment(_) => "events segment".into(),
            Reading::Flat(importer) => format!("events flat {}", importer.fingerprint()),
        }
    }

    /// The settings the data directory's import ledger records.
    fn settings(&self) -> std::collections::BTreeMap<String, String> {
        match self {
            Reading::Segment(importer) => importer.settings(),
            Reading::Flat(importer) => importer.settings(),
        }
    }

    fn convert(&self, row: Result<kith_import::Row, kith_import::BadRow>) -> RowOutcome {
        match (self, row) {
            (Reading::Segment(importer), Ok(row)) => importer.row(&row),
            (Reading::Flat(importer), Ok(row)) => importer.row(&row),
            (Reading::Segment(importer), Err(bad)) => RowOutcome {
                event: None,
                problems: vec![importer.unreadable(bad)],
            },
            (Reading::Flat(importer), Err(bad)) => RowOutcome {
                event: None,
                problems: vec![importer.unreadable(bad)],
            },
        }
    }
}

pub fn run(args: EventsArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let common = &args.common;
    let mapping = common.mapping_file()?;
    let format = common.format(mapping.format.as_deref())?;
    let source = common.source(mapping.source.as_deref(), "import")?;
    let delimiter = common.delimiter(mapping.delimiter.as_deref())?;
    let mut reader = open_rows(&common.file, format, delimiter, &common.columns)?;
    let flat = format != Format::Jsonl
        || !common.map.is_empty()
        || common.mapping.is_some()
        || args.event.is_some();
    let only_mapped = common.only_mapped || mapping.only_mapped;
    let reading = if flat {
        let mut explicit = common.assignments(&mapping, EventField::parse)?;
        explicit.extend(
            common
                .ignored(&mapping)
                .into_iter()
                .map(|column| (EventField::Ignore, column)),
        );
        let columns = match reader.headers().map(<[String]>::to_vec) {
            Some(headers) => {
                let plan = plan_events(&headers, &explicit, only_mapped, args.event.is_some())?;
                show_plan(&plan, EventField::describe);
                Columns::Fixed(plan)
            }
            None => Columns::PerRow {
                explicit,
                only_mapped,
            },
        };
        let text_cells = matches!(format, Format::Csv | Format::Whitespace);
        Reading::Flat(
            FlatEventImporter::new(
                columns,
                common.time(mapping.time_format.clone(), mapping.timezone.as_deref())?,
                source,
                args.event.clone(),
                text_cells,
            )
            // Semicolons separate the cells where commas mark decimals (Excel in Spanish).
            .with_decimal_comma(text_cells && reader.delimiter() == Some(b';')),
        )
    } else {
        let importer = SegmentLineImporter::new(source);
        // Times without an offset are UTC, as over HTTP, unless the command says otherwise.
        let told = common.timezone.is_some()
            || common.time_format.is_some()
            || mapping.timezone.is_some()
            || mapping.time_format.is_some();
        Reading::Segment(if told {
            importer
                .with_times(common.time(mapping.time_format.clone(), mapping.timezone.as_deref())?)
        } else {
            importer
        })
    };
    let (destination, made) = common.destination(&file)?;
    let job = reading.job();
    let mut import = common.row_import(&destination, job.clone());
    import.ledger = Some(common.ledger_entry("events", &job, reading.settings()));
    let totals = import.run(reader.as_mut(), |row| reading.convert(row));
    let stored = totals.as_ref().ok().map(|totals| totals.stored);
    common.close(destination, made, stored)?;
    let totals = totals?;
    ImportSummary::new(&common.file, &totals).report(common.json, &totals)
}

/// Loads Segment-shaped JSON lines without a checkpoint (the demo loader).
pub fn import_segment_lines(
    path: &Path,
    source: &str,
    destination: &Destination,
    rejected: &Path,
) -> anyhow::Result<RowTotals> {
    let mut reader: Box<dyn RowSource> = open_rows(path, Format::Jsonl, None, &[])?;
    let reading = Reading::Segment(SegmentLineImporter::new(source.to_string()));
    RowImport {
        destination,
        file: path,
        rejected: rejected.to_path_buf(),
        checkpoint: None,
        restart: false,
        ledger: None,
    }
    .run(reader.as_mut(), |row| reading.convert(row))
}
