//! `kith profile show TYPE:VALUE`: the customer 360 from the command line, read straight from the
//! data directory (with or without a running server).

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use kith_identity::Lookup;

use super::{DataDirArg, runtime};
use crate::config::FileConfig;

#[derive(Subcommand)]
pub enum ProfileAction {
    /// Print a profile as JSON: identifiers, traits and their history, computed traits, consent,
    /// merges and refused merges.
    Show(ShowArgs),
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
    let ProfileAction::Show(args) = action;
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
