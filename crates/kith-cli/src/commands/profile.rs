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
    }
}

fn merge(args: MergeArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let data_dir = file.data_dir(args.data_dir.data_dir);
    if !data_dir.exists() {
        bail!(
            "no data directory at {}; start `kith serve` first or pass --data-dir",
            data_dir.display()
        );
    }
    let destination = Destination::open(&data_dir, file.profile_settings()?)?;
    let answer = match &destination {
        Destination::Offline { pipeline, runtime } => {
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
    println!("{}", serde_json::to_string_pretty(&answer["profile"])?);
    Ok(ExitCode::SUCCESS)
}

fn show(args: ShowArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    let data_dir = file.data_dir(args.data_dir.data_dir);
    if !data_dir.exists() {
        bail!(
            "no data directory at {}; start `kith serve` first or pass --data-dir",
            data_dir.display()
        );
    }
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
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(ExitCode::SUCCESS)
}
