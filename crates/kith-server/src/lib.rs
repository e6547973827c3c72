//! Kith's HTTP layer. Thin: parse, authorize, call the library, map errors.

pub mod analytics;
mod answer_body;
mod api_conventions;
mod api_metrics;
pub mod app;
pub mod auth;
pub mod body_budget;
pub mod caller;
mod connection_activity;
pub mod connections;
pub mod errors;
pub mod imports;
pub mod ingest;
pub mod local;
pub mod memory;
pub mod merge;
mod metric_catalog;
pub mod models;
pub mod ops;
pub mod params;
pub mod pipeline;
pub mod pixel;
pub mod profiles;
pub mod query;
pub mod rudderstack;
pub mod runtimes;
mod small_reads;
pub mod starting;
pub mod traits;
pub mod unify;
pub mod unreadable_requests;
pub mod welcome;

pub use app::{Server, ServerConfig, ServerError};
pub use ops::install_metrics;
pub use pipeline::{
    Pipeline, Written, backfill_computed_traits, journal_dir, read_journal, replay_into,
    replay_records,
};
