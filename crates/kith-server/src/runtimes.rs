//! Dedicated runtimes for heavy work, so request handling keeps its own threads: queries and Delta
//! flushes (Parquet encoding) are CPU-bound and would otherwise stall ingestion on the same workers.
//! They are never dropped: a runtime may not be dropped inside async code.

use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};

fn build(name: &str, threads: usize) -> Runtime {
    Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a background runtime starts")
}

/// Runs SQL queries.
pub fn queries() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| build("kith-query", 2))
}

/// Runs Delta flushes, journal retirement and compaction.
pub fn flushes() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| build("kith-flush", 1))
}
