//! Dedicated runtimes for heavy work, so request handling keeps its own threads: queries and Delta
//! flushes (Parquet encoding) are CPU-bound and would otherwise stall ingestion on the same workers.
//! They are never dropped: a runtime may not be dropped inside async code.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

fn builder(name: &str, threads: usize) -> Builder {
    let mut builder = Builder::new_multi_thread();
    builder
        .worker_threads(threads)
        .thread_name(name)
        .enable_all();
    builder
}

fn build(name: &str, threads: usize) -> Runtime {
    builder(name, threads)
        .build()
        .expect("a background runtime starts")
}

/// Runs SQL queries, analyses and model runs; its threads give free memory back to the system
/// when they go idle after such work (see [`crate::memory`]).
fn queries() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        builder("kith-query", 2)
            .on_thread_park(crate::memory::on_idle)
            .build()
            .expect("a background runtime starts")
    })
}

/// Runs heavy work (a query, an analysis, a model run) on the query runtime.
pub fn spawn_query<F>(work: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    queries().spawn(async move {
        let output = work.await;
        crate::memory::heavy_work_done();
        output
    })
}

/// Runs Delta flushes and journal retirement.
pub fn flushes() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| build("kith-flush", 1))
}

/// Runs compaction of the event tables, apart from flushes so neither waits for the other.
pub fn compactions() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| build("kith-compact", 1))
}
