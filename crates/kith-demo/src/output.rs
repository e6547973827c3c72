//! Writing a world to files: the data a shop would have, and the truth beside it.
//!
//! - `events.jsonl`: every event in Segment's shape, one a line (what SDKs and server integrations
//!   would send; `kith import events` or `--into` loads them);
//! - `contacts.csv`: the CRM export (Spanish headers, old phone prefixes, other mailboxes);
//! - `transactions.csv`: the purchase log (`customer_id,date,quantity,amount`, dates `YYYYMMDD`);
//! - `truth/customers.csv` and `truth/parameters.json`: what generated it all.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::customer::{Simulated, catalogue, simulate};
use crate::{DemoConfig, Parameters};

/// The names a world is written under, in its directory.
pub const EVENTS_FILE: &str = "events.jsonl";
pub const CONTACTS_FILE: &str = "contacts.csv";
pub const TRANSACTIONS_FILE: &str = "transactions.csv";
pub const TRUTH_DIR: &str = "truth";
/// In [`TRUTH_DIR`]: present once a world is whole.
pub const PARAMETERS_FILE: &str = "parameters.json";
/// Every name a world takes at the top of its directory.
pub const WORLD_ENTRIES: [&str; 4] = [EVENTS_FILE, CONTACTS_FILE, TRANSACTIONS_FILE, TRUTH_DIR];

#[derive(Debug, Error)]
pub enum OutputError {
    #[error("cannot write {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Csv {
        path: String,
        #[source]
        source: csv::Error,
    },
}

/// What was written.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WorldSummary {
    pub customers: u64,
    pub signed_up: u64,
    pub buyers: u64,
    pub events: u64,
    pub transactions: u64,
    pub contacts: u64,
    pub revenue_mxn: f64,
}

impl WorldSummary {
    pub fn add(&mut self, simulated: &Simulated) {
        self.customers += 1;
        self.signed_up += u64::from(!simulated.truth.user_id.is_empty());
        self.buyers += u64::from(simulated.truth.purchases > 0);
        self.events += simulated.events.len() as u64;
        self.transactions += simulated.transactions.len() as u64;
        self.contacts += u64::from(simulated.contact.is_some());
        self.revenue_mxn += simulated.truth.revenue_mxn;
    }
}

#[derive(Serialize)]
struct ParametersFile<'a> {
    customers: u64,
    seed: u64,
    start: String,
    end: String,
    parameters: &'a Parameters,
    summary: &'a WorldSummary,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn csv_error(path: &Path) -> impl Fn(csv::Error) -> OutputError + '_ {
    move |source| OutputError::Csv {
        path: path.display().to_string(),
        source,
    }
}

/// Generates the world into `dir`, one customer at a time (memory stays bounded), calling
/// `progress` with the number of customers done.
pub fn write_world(
    config: &DemoConfig,
    dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<WorldSummary, OutputError> {
    let truth_dir = dir.join(TRUTH_DIR);
    std::fs::create_dir_all(&truth_dir).map_err(io(&truth_dir))?;
    let events_path = dir.join(EVENTS_FILE);
    let contacts_path = dir.join(CONTACTS_FILE);
    let transactions_path = dir.join(TRANSACTIONS_FILE);
    let customers_path = truth_dir.join("customers.csv");
    let mut events = BufWriter::new(File::create(&events_path).map_err(io(&events_path))?);
    let mut contacts = csv::Writer::from_path(&contacts_path).map_err(csv_error(&contacts_path))?;
    let mut transactions =
        csv::Writer::from_path(&transactions_path).map_err(csv_error(&transactions_path))?;
    let mut customers =
        csv::Writer::from_path(&customers_path).map_err(csv_error(&customers_path))?;
    let products = catalogue();
    let mut summary = WorldSummary::default();
    for customer in 0..config.customers {
        let simulated = simulate(config, &products, customer);
        for event in &simulated.events {
            serde_json::to_writer(&mut events, event).map_err(|e| io(&events_path)(e.into()))?;
            events.write_all(b"\n").map_err(io(&events_path))?;
        }
        if let Some(contact) = &simulated.contact {
            contacts
                .serialize(contact)
                .map_err(csv_error(&contacts_path))?;
        }
        for transaction in &simulated.transactions {
            transactions
                .serialize(transaction)
                .map_err(csv_error(&transactions_path))?;
        }
        customers
            .serialize(&simulated.truth)
            .map_err(csv_error(&customers_path))?;
        summary.add(&simulated);
        progress(customer + 1);
    }
    events.flush().map_err(io(&events_path))?;
    contacts.flush().map_err(io(&contacts_path))?;
    transactions.flush().map_err(io(&transactions_path))?;
    customers.flush().map_err(io(&customers_path))?;
    summary.revenue_mxn = (summary.revenue_mxn * 100.0).round() / 100.0;
    let parameters_path = truth_dir.join(PARAMETERS_FILE);
    let parameters = ParametersFile {
        customers: config.customers,
        seed: config.seed,
        start: config.start().to_rfc3339(),
        end: config.end.to_rfc3339(),
        parameters: &config.parameters,
        summary: &summary,
    };
    let text = serde_json::to_string_pretty(&parameters).unwrap_or_default();
    std::fs::write(&parameters_path, text).map_err(io(&parameters_path))?;
    Ok(summary)
}
