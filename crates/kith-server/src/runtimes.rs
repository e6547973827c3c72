//! Dedicated runtimes for heavy work, so request handling keeps its own threads: queries and Delta
//! flushes (Parquet encoding) are CPU-bound and would otherwise stall ingestion on the same workers.
//! They are never dropped: a runtime may not be dropped inside async code.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio::task::JoinHandle;

use crate::errors::{ApiError, ErrorCode};

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

/// Threads that run queries and analyses, and so the most queries that run at once.
pub const QUERY_THREADS: usize = 2;

/// Runs SQL queries, analyses and model runs; its threads give free memory back to the system
/// when they go idle after such work (see [`crate::memory`]).
fn queries() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        builder("kith-query", QUERY_THREADS)
            // A long query is planned by deep recursion (see `kith_lake::query`).
            .thread_stack_size(kith_lake::query::QUERY_THREAD_STACK_BYTES)
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
    spawn_releasing(queries(), work)
}

/// How long a request waits for a query thread to start its work. Queries share the threads,
/// taking turns at their yield points, so a new one starts within moments; when it does not,
/// every thread is held by work that does not yield (planning a large query, one long call of a
/// function), and the request is better answered "busy" than left waiting for minutes.
pub const QUERY_THREAD_WAIT: Duration = Duration::from_secs(10);

/// Runs a request's heavy work (a query, an analysis, a timeline; `what` names it in errors) on
/// the query runtime, for as long as the request waits for it: when the client hangs up, the
/// request's future is dropped, and with it the work, instead of running on to its time limit.
/// A request whose work no query thread starts within [`QUERY_THREAD_WAIT`] is turned away with
/// a 429.
pub async fn run_query_for_request<F>(what: &str, work: F) -> Result<F::Output, ApiError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    run_query_within(QUERY_THREAD_WAIT, what, work).await
}

async fn run_query_within<F>(wait: Duration, what: &str, work: F) -> Result<F::Output, ApiError>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (started, has_started) = tokio::sync::oneshot::channel();
    let task = kith_lake::query::OwnedTask::new(spawn_query(async move {
        let _ = started.send(());
        work.await
    }));
    if tokio::time::timeout(wait, has_started).await.is_err() {
        // Dropping the task aborts it before it starts.
        metrics::counter!("kith_queries_turned_away_total").increment(1);
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "no query thread was free to start this {what} within {wait:?}: the queries \
                 running now hold them all; retry after `Retry-After` seconds"
            ),
        ));
    }
    task.await.map_err(|e| {
        tracing::error!(error = %e, "{what} task failed");
        ApiError::new(
            ErrorCode::Internal,
            format!("the {what} failed; see the server log"),
        )
    })
}

/// Runs `work` on `runtime` and, once it ends, has the runtime's threads give the memory it
/// freed back to the system (see [`crate::memory`]).
fn spawn_releasing<F>(runtime: &Runtime, work: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.spawn(async move {
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
///
/// Its thread runs at a lower priority: compaction can wait, ingestion cannot (rows pile up
/// in memory until clients are turned away). Under full load it gets the CPU that is left and
/// finishes later; on a machine with time to spare it runs as fast as before. It gives back
/// the memory a compaction used once it is done, like the query runtime.
fn compactions() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        builder("kith-compact", 1)
            .on_thread_start(lower_this_threads_priority)
            .on_thread_park(crate::memory::on_idle)
            .build()
            .expect("a background runtime starts")
    })
}

/// Runs compaction on the compaction runtime, giving its memory back when it ends.
pub fn spawn_compaction<F>(work: F) -> JoinHandle<()>
where
    F: Future<Output = ()> + Send + 'static,
{
    spawn_releasing(compactions(), work)
}

/// Nice value of background housekeeping threads (0 is normal, 19 the lowest).
#[cfg(target_os = "linux")]
const HOUSEKEEPING_NICE: libc::c_int = 10;

/// Only on Linux, where the nice value belongs to the thread (`who` 0 is the calling thread);
/// elsewhere the same call would lower the whole process, so the thread keeps its priority.
fn lower_this_threads_priority() {
    #[cfg(target_os = "linux")]
    lower_linux_threads_priority();
}

#[cfg(target_os = "linux")]
fn lower_linux_threads_priority() {
    // SAFETY: setpriority only reads its integer arguments.
    let failed = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HOUSEKEEPING_NICE) } != 0;
    if failed {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "could not lower the compaction thread's priority; it competes with ingestion"
        );
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    /// Compaction runs on a thread of its own at the housekeeping priority, and the caller's
    /// thread keeps its own.
    #[tokio::test]
    async fn compaction_runs_at_a_lower_priority_on_its_own_thread() {
        // SAFETY (here and below): getpriority only reads its integer arguments.
        let callers = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        super::spawn_compaction(async move {
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            let name = std::thread::current().name().map(str::to_string);
            let _ = sender.send((nice, name));
        })
        .await
        .unwrap();
        let (nice, name) = receiver.await.unwrap();
        // At least the housekeeping value: a process started at a lower priority stays there.
        assert!(nice >= super::HOUSEKEEPING_NICE, "nice {nice}");
        assert!(
            nice > callers || callers >= super::HOUSEKEEPING_NICE,
            "nice {nice}, the caller's {callers}"
        );
        assert_eq!(name.as_deref(), Some("kith-compact"));
        let after = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        assert_eq!(after, callers, "the caller's thread keeps its priority");
    }
}

#[cfg(test)]
mod waiting_tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use crate::errors::ErrorCode;

    /// With every query thread held by work that does not yield, a request is turned away
    /// after the wait instead of queueing behind it; once a thread is free, work runs again.
    #[tokio::test]
    async fn a_request_no_query_thread_starts_is_turned_away() {
        let (running, is_running) = mpsc::channel();
        let mut releases = Vec::new();
        let mut holders = Vec::new();
        for _ in 0..2 {
            let (release, released) = mpsc::channel::<()>();
            let running = running.clone();
            holders.push(super::spawn_query(async move {
                running.send(()).unwrap();
                // Blocks its thread, as planning a large query does.
                let _ = released.recv_timeout(Duration::from_secs(30));
            }));
            releases.push(release);
        }
        for _ in 0..2 {
            is_running.recv_timeout(Duration::from_secs(10)).unwrap();
        }
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ran_in_work = ran.clone();
        let turned_away =
            super::run_query_within(Duration::from_millis(300), "query", async move {
                ran_in_work.store(true, std::sync::atomic::Ordering::SeqCst);
            })
            .await
            .unwrap_err();
        assert_eq!(turned_away.code, ErrorCode::Overloaded);
        assert!(
            turned_away
                .message
                .starts_with("no query thread was free to start this query within 300ms"),
            "{}",
            turned_away.message
        );
        for release in releases {
            release.send(()).unwrap();
        }
        for holder in holders {
            holder.await.unwrap();
        }
        // The work turned away never runs, even once the threads are free.
        let answer = super::run_query_within(Duration::from_secs(10), "query", async { 42 })
            .await
            .unwrap();
        assert_eq!(answer, 42);
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}
