//! `kith import events FILE`: Segment-shaped events, one JSON object a line (what `kith demo
//! generate` writes, or an export from another CDP), through the same parser and validation as
//! `/v1/batch`. Events without a `messageId` get one derived from the line, so a second run
//! stores nothing again.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;
use kith_import::rejects::Action;
use kith_import::{Problem, RejectWriter};
use serde_json::Value;

use super::destination::Destination;

/// Totals of an events import.
#[derive(Debug, Default, serde::Serialize)]
pub struct EventsSummary {
    pub file: String,
    pub lines: u64,
    pub stored: u64,
    pub already_imported: u64,
    pub rejected: u64,
    pub rejected_file: Option<String>,
}

/// Reads `path` and writes its events to `destination` under `source`; `progress` gets the
/// bytes read so far.
pub fn import_events(
    path: &Path,
    source: &str,
    destination: &Destination,
    rejected_path: &Path,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<EventsSummary> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut rejects = RejectWriter::new(rejected_path);
    let mut summary = EventsSummary {
        file: path.display().to_string(),
        ..EventsSummary::default()
    };
    // Lines are validated as one Segment batch, which holds at most 2,500 events.
    let batch_lines = destination
        .batch_rows()
        .min(kith_core::limits::MAX_BATCH_EVENTS);
    let mut batch: Vec<(u64, Value)> = Vec::with_capacity(batch_lines);
    let (mut line, mut number, mut bytes) = (String::new(), 0u64, 0u64);
    loop {
        line.clear();
        let read = reader
            .read_line(&mut line)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if read > 0 {
            number += 1;
            bytes += read as u64;
            let text = line.trim();
            if !text.is_empty() {
                summary.lines += 1;
                match serde_json::from_str::<Value>(text) {
                    Ok(Value::Object(mut object)) => {
                        if !object.contains_key("messageId") {
                            let id = format!(
                                "import-events-{:032x}",
                                xxhash_rust::xxh3::xxh3_128(text.as_bytes())
                            );
                            object.insert("messageId".into(), Value::String(id));
                        }
                        batch.push((number, Value::Object(object)));
                    }
                    Ok(_) | Err(_) => {
                        summary.rejected += 1;
                        rejects.record(Problem {
                            row: number,
                            column: None,
                            value: None,
                            reason: "the line is not a JSON object".into(),
                            action: Action::RowSkipped,
                        })?;
                    }
                }
            }
        }
        if batch.len() >= batch_lines || (read == 0 && !batch.is_empty()) {
            send(&mut batch, source, destination, &mut rejects, &mut summary)?;
            progress(bytes);
        }
        if read == 0 {
            break;
        }
    }
    rejects.finish()?;
    summary.rejected_file = rejects
        .written()
        .then(|| rejected_path.display().to_string());
    Ok(summary)
}

fn send(
    batch: &mut Vec<(u64, Value)>,
    source: &str,
    destination: &Destination,
    rejects: &mut RejectWriter,
    summary: &mut EventsSummary,
) -> anyhow::Result<()> {
    let lines: Vec<u64> = batch.iter().map(|(n, _)| *n).collect();
    let items: Vec<Value> = batch.drain(..).map(|(_, v)| v).collect();
    let body = serde_json::json!({ "batch": items }).to_string();
    let request = kith_core::parse::parse_batch_request(&body)
        .map_err(|e| anyhow::anyhow!("the events could not be read as a batch: {e}"))?;
    let parsed = request.normalize(source, Utc::now());
    for rejection in &parsed.rejections {
        summary.rejected += 1;
        rejects.record(Problem {
            row: lines.get(rejection.index).copied().unwrap_or(0),
            column: rejection.field.clone(),
            value: None,
            reason: format!("{}: {}", rejection.code, rejection.message),
            action: Action::RowSkipped,
        })?;
    }
    let result = destination.write(parsed.events)?;
    summary.stored += result.stored as u64;
    summary.already_imported += result.duplicates as u64;
    Ok(())
}

/// `FILE.rejected.csv` in the current directory.
pub fn default_rejected(file: &Path) -> PathBuf {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "import".into());
    PathBuf::from(format!("{name}.rejected.csv"))
}
