//! `kith demo generate`: the demo world, written to files (`--out`) or loaded into a data
//! directory through the real ingestion path (`--into`); `kith serve --demo` uses the same loader.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, SubsecRound, TimeZone, Utc};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use kith_demo::{DemoConfig, WorldSummary, output, write_world};
use kith_import::{ContactField, Format, TimeParser};
use kith_profiles::ProfileSettings;

use super::contacts_import::{ContactsJob, run_contacts};
use super::destination::Destination;
use super::events_import::import_segment_lines;
use crate::config::FileConfig;

#[derive(Subcommand)]
pub enum DemoAction {
    /// Generate a realistic customer world (a Mexican online shop over 18 months) with the truth
    /// that generated it.
    Generate(GenerateArgs),
}

/// The largest demo world: ten times the largest measured (bench/README.md, a million
/// customers), so a slip of the keyboard cannot fill the disk.
const MAX_CUSTOMERS: u64 = 10_000_000;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("destination").required(true).args(["out", "into"])))]
pub struct GenerateArgs {
    /// Customers (visitors; about three in four sign up).
    #[arg(long, default_value_t = 5000, allow_negative_numbers = true)]
    customers: u64,
    /// The same seed always gives the same world.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    seed: u64,
    /// When the world ends: a date (its last second, UTC; today's ends it now), an RFC 3339
    /// time, or `now`. Without it, 2026-10-31, so a seed always gives the same dates too.
    #[arg(long, value_name = "WHEN", value_parser = parse_world_end)]
    end: Option<DateTime<Utc>>,
    /// Write the files here: events.jsonl, contacts.csv, transactions.csv, truth/.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Load the world into this data directory (files and truth kept in DATA_DIR/demo/).
    #[arg(long, value_name = "DATA_DIR")]
    into: Option<PathBuf>,
}

pub fn run(action: DemoAction, file: FileConfig) -> anyhow::Result<ExitCode> {
    let DemoAction::Generate(args) = action;
    if args.customers == 0 {
        bail!("--customers must be at least 1");
    }
    if args.customers > MAX_CUSTOMERS {
        bail!(
            "--customers {} is more than the {MAX_CUSTOMERS} a demo world may have (that \
             largest world is about 680 million events and 380 GB of files: a customer is about \
             68 events and 38 KB)",
            args.customers
        );
    }
    let mut config = DemoConfig::new(args.customers, args.seed);
    if let Some(end) = args.end {
        config = config.ending_at(end);
    }
    if let Some(out) = &args.out {
        refuse_to_replace_files(out)?;
        let summary = generate(&config, out)?;
        print_summary(&summary, out)?;
        // The CRM export's dates are written as a Mexican CRM writes them, day first.
        outln!(
            "load the same world with `kith demo generate --into DATA_DIR` and the same \
             --customers, --seed and --end, or its files one by one: kith import events {events}; \
             kith import contacts {contacts} --time-format %d/%m/%Y --timezone \
             America/Mexico_City; kith import transactions {transactions}",
            events = super::shell_word(&out.join(output::EVENTS_FILE).display().to_string()),
            contacts = super::shell_word(&out.join(output::CONTACTS_FILE).display().to_string()),
            transactions =
                super::shell_word(&out.join(output::TRANSACTIONS_FILE).display().to_string()),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(data_dir) = &args.into else {
        bail!("pass --out DIR or --into DATA_DIR");
    };
    let summary = load(&config, data_dir, file.profile_settings()?)?;
    print_summary(&summary, &data_dir.join("demo"))?;
    Ok(ExitCode::SUCCESS)
}

/// Reads `--end`: a date (the world ends at its last second, UTC), an RFC 3339 time or `now`;
/// never in the future (the world would hold events that have not happened) nor so early that it
/// starts (540 days before) before 1970, whose times many tools read as negative.
fn parse_world_end(text: &str) -> Result<DateTime<Utc>, String> {
    let now = Utc::now().trunc_subsecs(0);
    let end = if text.eq_ignore_ascii_case("now") {
        now
    } else if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        // Today's date ends the world now: its last second has not come yet. Later days are
        // refused below.
        if day == now.date_naive() {
            now
        } else {
            day.and_hms_opt(23, 59, 59).unwrap_or_default().and_utc()
        }
    } else {
        DateTime::parse_from_rfc3339(text)
            .map_err(|_| {
                "give a date (2026-10-31), an RFC 3339 time (2026-10-31T18:00:00-06:00) or `now`"
                    .to_string()
            })?
            .with_timezone(&Utc)
    };
    if end > now {
        return Err(format!(
            "{} is in the future; a demo world ends at the latest now (`--end now`)",
            end.to_rfc3339()
        ));
    }
    let earliest = Utc
        .with_ymd_and_hms(1971, 7, 1, 0, 0, 0)
        .single()
        .unwrap_or_default();
    if end < earliest {
        return Err(
            "the world would start before 1970 (it spans the 540 days before its end); give an \
             end from 1971-07-01 on"
                .to_string(),
        );
    }
    Ok(end)
}

/// Refuses to load a world into a data directory that holds another: their people would mix,
/// and the truth of the first would be overwritten by the second's. The same world again
/// changes nothing (every event is stored once).
fn refuse_another_world(config: &DemoConfig, files: &Path) -> anyhow::Result<()> {
    let truth = files.join(output::TRUTH_DIR).join(output::PARAMETERS_FILE);
    let text = match std::fs::read_to_string(&truth) {
        Ok(text) => text,
        // No world finished loading here (the truth is written last).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => bail!(
            "cannot read {} to tell which demo world this data directory holds: {e}",
            truth.display()
        ),
    };
    let loaded: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let end = loaded["end"]
        .as_str()
        .and_then(|text| DateTime::parse_from_rfc3339(text).ok())
        .map(|end| end.with_timezone(&Utc));
    let (Some(customers), Some(seed), Some(end)) =
        (loaded["customers"].as_u64(), loaded["seed"].as_u64(), end)
    else {
        bail!(
            "{} does not say which demo world this data directory holds (no `customers`, \
             `seed` and `end`); load the world into another data directory",
            truth.display()
        );
    };
    if (customers, seed, end) == (config.customers, config.seed, config.end) {
        return Ok(());
    }
    let end = end.to_rfc3339();
    bail!(
        "{} holds the demo world of {customers} customers and seed {seed} ending {end} already \
         ({}); loading another would mix their people and overwrite its truth: load it into \
         another data directory, or load that one again (--customers {customers} --seed {seed} \
         --end {end}), which changes nothing",
        files.parent().unwrap_or(files).display(),
        truth.display(),
    )
}

/// Refuses an `--out` directory holding files of the names a world writes, unless they are an
/// earlier world's (its truth says so): they would be replaced without a word.
fn refuse_to_replace_files(out: &Path) -> anyhow::Result<()> {
    if out
        .join(output::TRUTH_DIR)
        .join(output::PARAMETERS_FILE)
        .exists()
    {
        return Ok(());
    }
    let taken: Vec<&str> = output::WORLD_ENTRIES
        .into_iter()
        .filter(|name| std::fs::symlink_metadata(out.join(name)).is_ok())
        .collect();
    if !taken.is_empty() {
        bail!(
            "{} already holds {}, which a demo world would replace; give --out a new or empty \
             directory",
            out.display(),
            taken.join(", ")
        );
    }
    Ok(())
}

/// Writes the world's files with a progress bar.
pub fn generate(config: &DemoConfig, out: &Path) -> anyhow::Result<WorldSummary> {
    let bar = ProgressBar::with_draw_target(
        Some(config.customers),
        indicatif::ProgressDrawTarget::stderr(),
    );
    bar.set_style(
        ProgressStyle::with_template(
            "generating {bar:30} {pos}/{len} customers {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let summary = write_world(config, out, |done| {
        if done % 256 == 0 {
            bar.set_position(done)
        }
    })?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Generates the world into `DATA_DIR/demo/` and loads its events and CRM contacts into the data
/// directory through the same path as any import (or into the server that holds it).
pub fn load(
    config: &DemoConfig,
    data_dir: &Path,
    settings: ProfileSettings,
) -> anyhow::Result<WorldSummary> {
    let files = data_dir.join("demo");
    // Made here, before the files inside it, so it is the owner's alone like any data directory.
    if data_dir.exists() && !data_dir.is_dir() {
        bail!(
            "{} is a file, not a data directory; give a directory (it is created when \
             missing)",
            data_dir.display()
        );
    }
    kith_state::create_data_dir(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    refuse_another_world(config, &files)?;
    let summary = generate(config, &files)?;
    let destination = Destination::open(data_dir, settings.clone())?;
    let loaded = import_segment_lines(
        &files.join(output::EVENTS_FILE),
        "demo",
        &destination,
        &files.join("events.rejected.csv"),
    )?;
    if loaded.rejected_rows > 0 {
        bail!(
            "{} demo events were rejected (see {}); this is a bug in the generator",
            loaded.rejected_rows,
            files.join("events.rejected.csv").display()
        );
    }
    let contacts = ContactsJob {
        file: files.join(output::CONTACTS_FILE),
        format: Format::Csv,
        delimiter: None,
        columns: Vec::new(),
        assignments: vec![(
            ContactField::External("customer_number".into()),
            "Cliente".into(),
        )],
        ignore: Vec::new(),
        only_mapped: false,
        time: TimeParser::new(Some("%d/%m/%Y".into()), Some("America/Mexico_City"))?,
        source: "crm".into(),
        rejected: files.join("contacts.rejected.csv"),
        checkpoint: None,
        restart: false,
    };
    run_contacts(&contacts, &settings, &destination, false)?;
    destination.close()?;
    Ok(summary)
}

fn print_summary(summary: &WorldSummary, files: &Path) -> Result<(), crate::stdout::StdoutError> {
    outln!(
        "demo world: {} customers ({} signed up, {} bought), {} events, {} orders worth MXN {:.2}, {} CRM contacts",
        summary.customers,
        summary.signed_up,
        summary.buyers,
        summary.events,
        summary.transactions,
        summary.revenue_mxn,
        summary.contacts
    )?;
    outln!("files and the truth behind them: {}", files.display())?;
    Ok(())
}
