//! `kith profile show TYPE:VALUE`: the customer 360 from the command line, read straight from the
//! data directory (with or without a running server).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kith_identity::Lookup;

use super::destination::Destination;
use super::{DataDirArg, runtime};
use crate::config::FileConfig;
use kith_server::merge::merge_profiles;

#[derive(Subcommand)]
pub enum ProfileAction {
    /// Print a profile as JSON: identifiers, traits and their history, computed traits, consent,
    /// merges and refused merges.
    Show(ShowArgs),
    /// Merge the profiles holding two identifiers, as a person confirmed (e.g. a duplicate
    /// candidate). Recorded as a `manual` merge; the identity guards still apply.
    Merge(MergeArgs),
    /// List likely duplicates the identity rules do not merge, with a score and the evidence,
    /// for a person to confirm with `kith profile merge`.
    Duplicates(DuplicatesArgs),
}

#[derive(Args)]
pub struct DuplicatesArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// Lowest score listed, 0–1.
    #[arg(long, default_value_t = 0.5)]
    min_score: f64,
    /// Most candidates listed.
    #[arg(long, default_value_t = 50)]
    limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct MergeArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// One profile, as `type:value` (e.g. `email:ana@example.com` or `profile_id:p_...`).
    first: String,
    /// The other.
    second: String,
}

#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    data_dir: DataDirArg,
    /// `type:value`, e.g. `email:ana@example.com`, `user_id:u-100`, `phone:+52 55 1234 5678`,
    /// `profile_id:p_...`.
    lookup: String,
}

pub fn run(action: ProfileAction, file: FileConfig) -> anyhow::Result<ExitCode> {
    match action {
        ProfileAction::Show(args) => show(args, file),
        ProfileAction::Merge(args) => merge(args, file),
        ProfileAction::Duplicates(args) => duplicates(args, file),
    }
}

fn duplicates(args: DuplicatesArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    if !(0.0..=1.0).contains(&args.min_score) {
        bail!(
            "--min-score must be between 0 and 1, got {}",
            args.min_score
        );
    }
    let data_dir = existing_data_dir(&file, args.data_dir)?;
    let settings = file.profile_settings()?;
    // Two accounts (two user ids) merge only where the configured limit allows two.
    let user_ids_merge = settings.rules.limit(&kith_identity::IdType::UserId) >= 2;
    let (_, profiles) = runtime()?.block_on(super::sql::open_consistent(&data_dir, settings))?;
    let found = profiles.find_duplicates(args.min_score, args.limit)?;
    let (candidates, total) = (found.candidates, found.total);
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"candidates": candidates, "total": total})
            )?
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    if candidates.is_empty() {
        outln!("no likely duplicates scoring {} or more", args.min_score)?;
        return Ok(ExitCode::SUCCESS);
    }
    for candidate in &candidates {
        let side = |p: &kith_profiles::duplicates::CandidateProfile| {
            format!(
                "{} {} [{}]",
                p.profile_id,
                p.name.as_deref().unwrap_or("(no name)"),
                p.identifiers.join(", ")
            )
        };
        // Scores are rounded to thousandths: 0.407, not 0.41.
        outln!("{:<5}  {}", candidate.score, side(&candidate.first))?;
        outln!("       {}", side(&candidate.second))?;
        for evidence in &candidate.evidence {
            outln!("       - {evidence}")?;
        }
        // Two user ids are two accounts the guards keep apart (at the default limit of one): a
        // merge command would only be refused (the evidence says which limit decides it).
        let has_user_id = |p: &kith_profiles::duplicates::CandidateProfile| {
            p.identifiers.iter().any(|i| i.starts_with("user_id:"))
        };
        if user_ids_merge || !(has_user_id(&candidate.first) && has_user_id(&candidate.second)) {
            outln!(
                "       confirm: kith profile merge profile_id:{} profile_id:{}",
                candidate.first.profile_id,
                candidate.second.profile_id
            )?;
        }
    }
    if total > candidates.len() {
        outln!(
            "({} more; raise --limit to list them, or --min-score to list fewer)",
            total - candidates.len()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn existing_data_dir(file: &FileConfig, arg: DataDirArg) -> anyhow::Result<std::path::PathBuf> {
    let data_dir = file.data_dir(arg.data_dir);
    super::existing_data_dir(&data_dir, "start `kith serve` first or pass --data-dir")?;
    Ok(data_dir)
}

fn merge(args: MergeArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let data_dir = existing_data_dir(&file, args.data_dir)?;
    let destination = Destination::open(&data_dir, file.profile_settings()?)?;
    let answer = match &destination {
        Destination::Offline {
            pipeline, runtime, ..
        } => {
            let merged = runtime.block_on(merge_profiles(pipeline, &args.first, &args.second));
            match merged {
                Ok(merged) => Ok(serde_json::json!({
                    "merged": merged.changed,
                    "profile": kith_server::profiles::profile_json(&pipeline.profiles, &merged.profile),
                })),
                Err(e) => Err(anyhow::Error::from(e)),
            }
        }
        Destination::Server { .. } => destination.post(
            "/v1/profiles/merge",
            serde_json::to_vec(&serde_json::json!({"profiles": [args.first, args.second]}))?,
        ),
    };
    destination.close()?;
    let answer = answer?;
    let profile_id = answer["profile"]["profile_id"].as_str().unwrap_or("?");
    if answer["merged"].as_bool() == Some(true) {
        eprintln!("merged into {profile_id}");
    } else {
        eprintln!(
            "{} and {} are already one profile, {profile_id}",
            args.first, args.second
        );
    }
    outln!("{}", serde_json::to_string_pretty(&answer["profile"])?)?;
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let data_dir = existing_data_dir(&file, args.data_dir)?;
    let lookup = Lookup::parse(&args.lookup)?;
    let settings = file.profile_settings()?;
    let (_, profiles) = runtime()?.block_on(super::sql::open_consistent(&data_dir, settings))?;
    let view = profiles
        .find(&lookup)
        .with_context(|| format!("cannot look up `{}`", args.lookup))?;
    let Some(view) = view else {
        eprintln!("no profile holds {}", args.lookup);
        return Ok(ExitCode::from(4));
    };
    let body = kith_server::profiles::profile_json(&profiles, &view);
    outln!("{}", serde_json::to_string_pretty(&body)?)?;
    Ok(ExitCode::SUCCESS)
}
