//! Kith's HTTP layer. Thin: parse, authorize, call the library, map errors.

pub mod app;
pub mod auth;
pub mod errors;
pub mod ingest;
pub mod ops;
pub mod profiles;
pub mod query;
pub mod runtimes;
pub mod unify;

pub use app::{
    Server, ServerConfig, ServerError, backfill_computed_traits, journal_dir, replay_into,
};
pub use ops::install_metrics;
