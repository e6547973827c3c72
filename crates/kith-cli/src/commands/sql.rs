//! `kith sql`: queries the data directory directly (Delta tables plus the journal's newest
//! events), so it works with or without a running server and sees what the server acknowledged.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use kith_lake::{Lake, output};
use kith_profiles::{ProfileSettings, ProfileStore};

use super::{DataDirArg, runtime};
use crate::config::FileConfig;
use crate::stdout::StdoutError;

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

#[derive(Args)]
pub struct SqlArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// Rows written at most; the rest is cut, and stderr says so (default: `[query] max_rows`
    /// in kith.toml, 100,000). Raise it to export a whole table; the answer is held in memory
    /// first, within `[query] memory_mb`.
    #[arg(long, value_name = "ROWS", value_parser = clap::value_parser!(u64).range(1..=crate::config::MOST_ANSWER_ROWS as u64))]
    max_rows: Option<u64>,
    /// The query, e.g. "SELECT event, count(*) FROM events GROUP BY event".
    sql: String,
}

pub fn run(args: SqlArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let data_dir = file.data_dir(args.data_dir.data_dir);
    super::existing_data_dir(&data_dir, "start `kith serve` first or pass --data-dir")?;
    let mut limits = file.query_limits()?;
    if let Some(rows) = args.max_rows {
        // Within the range clap checked, which fits in a usize.
        limits.max_rows = usize::try_from(rows).unwrap_or(usize::MAX);
    }
    let max_rows = limits.max_rows;
    let settings = file.profile_settings()?;
    let sql = args.sql.clone();
    // On a worker thread, whose stack a long query needs (`block_on` runs on this one).
    let runtime = runtime()?;
    let result = runtime.block_on(runtime.spawn(async move {
        let (lake, profiles) = open_consistent(&data_dir, settings).await?;
        let extra = kith_server::profiles::profile_tables_read_by(&sql, &profiles, &limits)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        lake.query_with(&sql, &limits, extra)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    }));
    // Without waiting for a query stopped at its time limit to reach its next yield point
    // (which may be seconds away inside one operator): the command has its answer.
    runtime.shutdown_background();
    let result = result??;
    match args.format {
        Format::Table => {
            write_table(&result)?;
            eprintln!(
                "{} row(s){}",
                result.num_rows(),
                truncated_note(result.truncated, max_rows)
            );
        }
        Format::Csv => {
            if let Some(why) = output::csv_unwritable(&result.schema, "use `--format json`") {
                anyhow::bail!("{why}");
            }
            // CSV has no place to say the rows were cut; stderr does.
            let (rows, truncated) = (result.num_rows(), result.truncated);
            write_out(result, output::Encoding::Csv)?;
            if truncated {
                eprintln!("{rows} row(s){}", truncated_note(true, max_rows));
            }
        }
        Format::Json => {
            write_out(result, output::Encoding::Json)?;
            outln!()?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes the answer to stdout piece by piece, without holding it twice.
fn write_out(result: kith_lake::QueryResult, encoding: output::Encoding) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for piece in output::Rendering::new(result, encoding) {
        out.write_all(&piece?).map_err(StdoutError)?;
    }
    out.flush().map_err(StdoutError)?;
    Ok(())
}

/// Writes the answer as a table to stdout, a row at a time.
fn write_table(result: &kith_lake::QueryResult) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = output::write_table(result, &mut out)
        .and_then(|()| out.flush().map_err(output::TableError::Write));
    match written {
        Ok(()) => Ok(()),
        Err(output::TableError::Write(e)) => Err(StdoutError(e).into()),
        Err(e) => Err(e.into()),
    }
}

fn truncated_note(truncated: bool, max_rows: usize) -> String {
    if truncated {
        format!(
            " (truncated: more rows matched than the {max_rows} written; pass --max-rows to \
             write more, or add a LIMIT or aggregate)"
        )
    } else {
        String::new()
    }
}

/// Opens the tables and the profiles with every record of the journal they lack, while a
/// server may be writing beside it: every event acknowledged before this began is read. The
/// journal is read first, the tables and profiles opened after: a server retires a journal
/// segment only once the tables and `profiles.db` hold its records, so a record gone from the
/// journal by the time it is read is in them when they are opened. (Opened first, they could
/// miss records the server flushed, and retired from the journal, before it was read.) The
/// tables may hold events written after the journal was read that `profiles.db` does not hold
/// yet: profiles may lag the events by the second the server takes to write them.
pub(crate) async fn open_consistent(
    data_dir: &std::path::Path,
    settings: ProfileSettings,
) -> anyhow::Result<(Lake, ProfileStore)> {
    // All of it: the journal holds little beyond what the tables and profiles lack (segments
    // are retired at each flush), and what they hold already is skipped by both.
    let records = kith_server::read_journal(&kith_server::journal_dir(data_dir), 0)
        .context("cannot read the journal")?;
    let lake = Lake::open(data_dir)
        .await
        .context("cannot open the event tables")?;
    lake.name_tables_built_on_request(&kith_server::profiles::PROFILE_TABLE_NAMES);
    let profiles = match ProfileStore::open_read_only(data_dir, settings) {
        Ok(profiles) => profiles,
        // SQLite's "unable to open database file" says nothing of why.
        Err(e) => match kith_state::why_unwritable(data_dir) {
            Some(why) => bail!(
                "cannot open the profiles: {why}, and reading them writes beside profiles.db \
                 (SQLite's -wal and -shm files); {} ({e})",
                why.remedy()
            ),
            None => return Err(anyhow::Error::new(e).context("cannot open the profiles")),
        },
    };
    kith_server::replay_records(&lake, Some(&profiles), records)
        .context("cannot read the journal")?;
    kith_server::backfill_computed_traits(&lake, &profiles)
        .await
        .context("cannot compute the declared traits")?;
    Ok((lake, profiles))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::Duration;

    use kith_core::parse::parse_batch_request;
    use kith_lake::QueryLimits;
    use kith_server::Pipeline;

    use super::*;

    fn batch(from: u64, n: u64) -> Vec<kith_core::Event> {
        let items: Vec<serde_json::Value> = (from..from + n)
            .map(|i| {
                serde_json::json!({"type": "track", "event": "Viewed", "userId": format!("u-{}", i % 50),
                                   "messageId": format!("m-{i}")})
            })
            .collect();
        let body = serde_json::json!({ "batch": items }).to_string();
        parse_batch_request(&body)
            .unwrap()
            .normalize("web", chrono::Utc::now())
            .events
    }

    /// A server beside the reader acknowledges events, flushes them to Delta and retires the
    /// journal segments that held them, over and over (small segments, profiles written each
    /// time, so segments go at once). Each read must answer, and count at least every event
    /// acknowledged before it began. With the tables opened before the journal was read, a read
    /// could come back short when a flush and a retirement fell between the two (a review
    /// measured 4 short counts in 1,002 `kith sql` runs beside a busy server), and the check
    /// meant to catch it gave up here after five tries ("kept changing while it was read").
    #[test]
    fn a_reader_beside_a_server_that_flushes_and_retires_misses_no_acknowledged_event() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().to_path_buf();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let options = kith_journal::JournalOptions {
            segment_bytes: 8 * 1024,
            ..Default::default()
        };
        let pipeline = Arc::new(
            runtime
                .block_on(Pipeline::open(&data, ProfileSettings::default(), options))
                .unwrap(),
        );
        let acknowledged = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let server = {
            let (pipeline, acknowledged, stop) =
                (pipeline.clone(), acknowledged.clone(), stop.clone());
            runtime.spawn(async move {
                let mut next = 0;
                while !stop.load(Ordering::SeqCst) {
                    let written = pipeline.write(batch(next, 40), None).await.unwrap();
                    next += 40;
                    acknowledged.store(next, Ordering::SeqCst);
                    let last = written.last_seq().unwrap();
                    pipeline.wait_for_profiles(last).await;
                    pipeline.profiles.persist().unwrap();
                    pipeline.flush_due(0, Duration::ZERO).await;
                }
            })
        };
        let limits = QueryLimits::default();
        let mut short = Vec::new();
        for _ in 0..40 {
            let before = acknowledged.load(Ordering::SeqCst);
            let counted = runtime.block_on(async {
                let (lake, _) = open_consistent(&data, ProfileSettings::default())
                    .await
                    .unwrap();
                let result = lake
                    .query("SELECT count(*) AS n FROM events", &limits)
                    .await
                    .unwrap();
                let column = result.batches[0].column(0);
                arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(column).value(0)
                    as u64
            });
            if counted < before {
                short.push((counted, before));
            }
        }
        stop.store(true, Ordering::SeqCst);
        runtime.block_on(server).unwrap();
        assert!(
            acknowledged.load(Ordering::SeqCst) > 1_000,
            "the server kept writing"
        );
        assert_eq!(short, [], "reads that counted fewer than were acknowledged");
    }
}
