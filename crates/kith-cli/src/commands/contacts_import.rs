//! `kith import contacts FILE`: people from a CRM export into profiles, through the same journal
//! and identity rules as tracked events.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::Args;
use kith_import::{ContactField, ContactImporter, ContactMapping, Format, RowSource, TimeParser};
use kith_profiles::ProfileSettings;

use super::destination::Destination;
use super::import::{FileArgs, ImportSummary, check_source, open_rows, show_plan};
use super::row_import::{RowImport, RowTotals, checkpoint_beside};
use crate::config::FileConfig;

#[derive(Args)]
pub struct ContactsArgs {
    #[command(flatten)]
    common: FileArgs,
}

/// A contacts import, settled from flags, a mapping file or code (the demo loader).
pub struct ContactsJob {
    pub file: PathBuf,
    pub format: Format,
    pub delimiter: Option<u8>,
    /// Names for the columns of a file without a header line; empty: its first line names them.
    pub columns: Vec<String>,
    pub assignments: Vec<(ContactField, String)>,
    pub ignore: Vec<String>,
    pub only_mapped: bool,
    pub time: TimeParser,
    pub source: String,
    pub rejected: PathBuf,
    /// Where progress is recorded for resuming; `None` keeps none.
    pub checkpoint: Option<PathBuf>,
    pub restart: bool,
}

impl ContactsJob {
    fn from_args(args: &ContactsArgs) -> anyhow::Result<ContactsJob> {
        let common = &args.common;
        let mapping_file = common.mapping_file()?;
        Ok(ContactsJob {
            file: common.file.clone(),
            format: common.format(mapping_file.format.as_deref())?,
            delimiter: common.delimiter(mapping_file.delimiter.as_deref())?,
            columns: common.columns.clone(),
            assignments: common.assignments(&mapping_file, ContactField::parse)?,
            ignore: common.ignored(&mapping_file),
            only_mapped: common.only_mapped || mapping_file.only_mapped,
            time: common.time(
                mapping_file.time_format.clone(),
                mapping_file.timezone.as_deref(),
            )?,
            source: common.source(mapping_file.source.as_deref(), "crm")?,
            rejected: common.rejected(),
            checkpoint: Some(checkpoint_beside(&common.rejected(), &common.file)),
            restart: common.restart,
        })
    }
}

pub fn run(args: ContactsArgs, file: FileConfig) -> anyhow::Result<ExitCode> {
    if args.common.keep_both {
        anyhow::bail!(
            "--keep-both is for events, transactions, tickets and surveys: contacts imported \
             again with other settings update the same profiles"
        );
    }
    let job = ContactsJob::from_args(&args)?;
    let settings = file.profile_settings()?;
    // The file is read and its columns planned before the data directory is made: a file that
    // is not there, holds no rows or names no identity leaves nothing behind.
    let prepared = PreparedContacts::new(&job, &settings, true)?;
    let (destination, made) = args.common.destination(&file)?;
    let result = prepared.run(&job, &destination);
    let stored = result.as_ref().ok().map(|(summary, _)| summary.stored);
    args.common.close(destination, made, stored)?;
    let (summary, totals) = result?;
    summary.report(args.common.json, &totals)
}

/// Runs a contacts import into `destination`.
pub fn run_contacts(
    job: &ContactsJob,
    settings: &ProfileSettings,
    destination: &Destination,
    show_columns: bool,
) -> anyhow::Result<(ImportSummary, RowTotals)> {
    PreparedContacts::new(job, settings, show_columns)?.run(job, destination)
}

/// A contacts file opened, and its columns planned: what can be checked before anything is
/// written.
struct PreparedContacts {
    reader: Box<dyn RowSource>,
    importer: ContactImporter,
}

impl PreparedContacts {
    fn new(
        job: &ContactsJob,
        settings: &ProfileSettings,
        show_columns: bool,
    ) -> anyhow::Result<PreparedContacts> {
        check_source(&job.source)?;
        let reader = open_rows(&job.file, job.format, job.delimiter, &job.columns)?;
        let headers = reader.headers().map(<[String]>::to_vec);
        let mapping = ContactMapping::new(
            job.assignments.clone(),
            job.ignore.clone(),
            job.only_mapped,
            headers.as_deref(),
        )?;
        if let Some(headers) = &headers {
            let plan = mapping.plan(headers);
            if show_columns {
                show_plan(&plan, ContactField::describe);
            }
            let identifying = plan.iter().any(|(_, f)| {
                matches!(
                    f,
                    ContactField::UserId
                        | ContactField::Email
                        | ContactField::Phone
                        | ContactField::External(_)
                )
            });
            if !identifying {
                bail!(
                    "no column of {} identifies a person; map one with --map email=COLUMN (or user_id, phone, external:TYPE)",
                    job.file.display()
                );
            }
        }
        let importer = ContactImporter::new(
            mapping,
            headers.as_deref(),
            settings.normalizer.clone(),
            job.time.clone(),
            job.source.clone(),
            chrono::Utc::now(),
        );
        Ok(PreparedContacts { reader, importer })
    }

    fn run(
        mut self,
        job: &ContactsJob,
        destination: &Destination,
    ) -> anyhow::Result<(ImportSummary, RowTotals)> {
        let importer = &self.importer;
        let import = RowImport {
            destination,
            file: &job.file,
            rejected: job.rejected.clone(),
            checkpoint: job
                .checkpoint
                .clone()
                .map(|path| (path, format!("contacts {}", importer.fingerprint()))),
            restart: job.restart,
            // Contacts imported again with other settings update the same profiles, which is
            // what a corrected contacts import is for.
            ledger: None,
        };
        let totals = import.run(self.reader.as_mut(), |row| match row {
            Ok(row) => importer.row(&row),
            Err(bad) => kith_import::RowOutcome {
                event: None,
                problems: vec![importer.unreadable(bad)],
            },
        })?;
        let mut summary = ImportSummary::new(&job.file, &totals);
        summary.duplicate_candidates = Some(destination.duplicate_count()?);
        Ok((summary, totals))
    }
}
