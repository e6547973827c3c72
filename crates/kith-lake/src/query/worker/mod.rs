//! Queries in processes of their own.
//!
//! Inside the server a query is held to its limits by the engine's memory pool, a deadline
//! checked between batches, and bounds on the shapes that grow where neither sees (the other
//! modules here). Those bounds model what audits found; memory an operator takes in one step,
//! planning that cannot be interrupted, or a fault deep in the engine would still reach the
//! server. A worker process makes the limits hard: it watches the memory it holds and stops
//! itself past its cap, and the server kills it when its time is up. Whatever a query does, the
//! server loses one child process, and the query's caller is told why.
//!
//! The server hands the worker what the query reads, as of the moment it asks: for each event
//! table the Delta version it reads (the worker opens that version from disk) and the rows
//! buffered since, and the tables built for the query (the profile tables); see [`protocol`].
//!
//! A worker that answered is kept for the next query, warm: started, its runtime built, the
//! tables' Delta snapshots and Parquet metadata read. One that refused a query (out of time or
//! memory, a bad query) exits, and so does one the server lets go; one that holds much memory
//! after answering is let go, and one that no query reaches within its idle time exits. A query
//! finding no worker waiting starts one, and so does a query whose waiting worker turns out to
//! have been killed, or to have left idle, as it waited.

mod process;
mod protocol;
mod serve;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use serve::serve_queries;

use super::{ExtraTable, QueryError, QueryLimits, QueryResult, Sources};
use crate::Lake;
use process::{Asked, Worker};

/// The argument that makes the `kith` binary a query worker (a hidden subcommand).
pub const WORKER_COMMAND: &str = "query-worker";

/// How long past its time limit a worker may take to answer on its own (it stops its query at
/// the limit and says so) before the server kills it.
const GRACE: Duration = Duration::from_secs(2);

/// The exit code of a worker that stopped itself because its resident memory passed its cap.
const OUT_OF_MEMORY_EXIT: i32 = 3;

/// The exit code of a waiting worker that no query reached within its idle time: it read
/// nothing more, so a query written to it as it went is asked again of a fresh worker.
const IDLE_EXIT: i32 = 4;

/// The exit code of a worker whose server is gone (no one reads it).
const ORPHANED_EXIT: i32 = 5;

/// How long a worker that answered waits for the next query before it exits, giving back what
/// it holds (`[query] worker_idle_secs`): a fresh worker costs the next query 15–25 ms.
pub const DEFAULT_WORKER_IDLE: Duration = Duration::from_secs(60);

/// The most memory of its own a worker may hold after answering, once it has let go of the
/// answer, and be kept for the next query. A waiting worker holds from about 8 MiB (its runtime)
/// to some tens (snapshots, caches, what the allocator keeps of earlier queries: under 100 MiB
/// after a thousand aggregations over the demo world); one that holds more keeps what a large
/// query left behind, and two wait at most.
const KEEP_RESIDENT_BYTES: u64 = 128 << 20;

/// Runs queries in worker processes, a few at a time.
#[derive(Debug)]
pub struct QueryWorker {
    program: PathBuf,
    slots: Arc<tokio::sync::Semaphore>,
    at_once: usize,
    slot_wait: Duration,
    /// How long a worker waits for its next query before it exits.
    idle: Duration,
    /// Workers that answered their last query, waiting for the next.
    waiting: Arc<Mutex<Vec<Worker>>>,
    /// Whether the task that reaps waiting workers that have exited runs.
    reaping: std::sync::Once,
}

impl QueryWorker {
    /// Workers are `program query-worker` (the `kith` binary), at most `at_once` running; a
    /// query that finds no slot free within `slot_wait` is turned away as busy. A worker that
    /// answered waits [`DEFAULT_WORKER_IDLE`] for the next query (see [`QueryWorker::idle_for`]).
    pub fn new(program: PathBuf, at_once: usize, slot_wait: Duration) -> QueryWorker {
        let at_once = at_once.max(1);
        QueryWorker {
            program,
            slots: Arc::new(tokio::sync::Semaphore::new(at_once)),
            at_once,
            slot_wait,
            idle: DEFAULT_WORKER_IDLE,
            waiting: Arc::default(),
            reaping: std::sync::Once::new(),
        }
    }

    /// A worker that answered waits `idle` for the next query, then exits (at once when zero).
    pub fn idle_for(self, idle: Duration) -> QueryWorker {
        QueryWorker { idle, ..self }
    }

    /// Runs `sql` as [`Lake::query_with`] does, in a worker process.
    pub async fn query(
        &self,
        lake: &Lake,
        sql: &str,
        limits: &QueryLimits,
        extra: Vec<ExtraTable>,
    ) -> Result<QueryResult, QueryError> {
        let started = Instant::now();
        let _slot = tokio::time::timeout(self.slot_wait, self.slots.acquire())
            .await
            .map_err(|_| QueryError::Busy {
                at_once: self.at_once,
                waited: self.slot_wait,
            })?
            .map_err(|e| QueryError::Internal(format!("query worker slots: {e}")))?;
        let sources = Sources::of(lake, limits);
        let available = limits
            .memory_bytes
            .saturating_sub(sources.memory.reserved());
        // A waiting worker if there is one; a fresh one if there is none, or if the one that
        // waited turns out to have gone before it took the query.
        let mut waiting = self.take_waiting();
        loop {
            let waited = waiting.is_some();
            let worker = match waiting.take() {
                Some(worker) => worker,
                None => Worker::start(&self.program)?,
            };
            let (request, streams) =
                protocol::request_for(&sources, sql, limits, available, self.idle, extra.clone());
            let shared = sources.memory.clone();
            match worker.ask(request, streams, shared, limits, waited).await {
                Asked::Ended(answer, kept) => {
                    if let Some(worker) = kept {
                        self.lock_waiting().push(*worker);
                        self.reap_while_waiting();
                    }
                    if answer.is_ok() {
                        let took = started.elapsed().as_secs_f64();
                        metrics::histogram!("kith_query_seconds").record(took);
                    }
                    return answer;
                }
                // Only a worker that waited can be gone; the next is a fresh one.
                Asked::WasGone => continue,
            }
        }
    }

    /// A waiting worker that is still there.
    fn take_waiting(&self) -> Option<Worker> {
        let mut waiting = self.lock_waiting();
        while let Some(mut worker) = waiting.pop() {
            if !worker.has_ended() {
                return Some(worker);
            }
        }
        None
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, Vec<Worker>> {
        lock_list(&self.waiting)
    }

    /// Starts (once, on the runtime of the first query that leaves a worker waiting) a task
    /// that lets go of waiting workers that have exited (left idle, or killed) every half idle
    /// time, so that none stays a zombie until the next query. It ends with the `QueryWorker`.
    fn reap_while_waiting(&self) {
        self.reaping.call_once(|| {
            let waiting = Arc::downgrade(&self.waiting);
            let every = (self.idle / 2).clamp(Duration::from_millis(200), Duration::from_secs(30));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(waiting) = waiting.upgrade() else {
                        return;
                    };
                    lock_list(&waiting).retain_mut(|worker| !worker.has_ended());
                }
            });
        });
    }
}

fn lock_list(waiting: &Mutex<Vec<Worker>>) -> std::sync::MutexGuard<'_, Vec<Worker>> {
    // A poisoned lock only means a query panicked while it held it; the list is whole.
    waiting
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use arrow::array::RecordBatch;
    use arrow::datatypes::SchemaRef;

    use super::protocol::{Finished, Reply, write_header, write_request, write_stream};
    use super::*;

    /// A stand-in for the `kith` binary: a shell script running `body`, which notes its process
    /// id in `pids` as it starts.
    fn worker_script(dir: &std::path::Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("worker.sh");
        let pids = dir.join("pids");
        let script = format!("#!/bin/sh\necho $$ >> {}\n{body}\n", pids.display());
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// The workers the script started, in order.
    fn started(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_to_string(dir.join("pids"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn quick(timeout: Duration) -> QueryLimits {
        QueryLimits {
            timeout,
            ..QueryLimits::default()
        }
    }

    /// The length of the request the server writes for `sql` over `lake` as it is now, so that
    /// a script can read exactly one (`dd bs=1 count=N`).
    fn request_len(lake: &Lake, sql: &str, limits: &QueryLimits) -> usize {
        let sources = Sources::of(lake, limits);
        let available = limits
            .memory_bytes
            .saturating_sub(sources.memory.reserved());
        let (request, streams) = protocol::request_for(
            &sources,
            sql,
            limits,
            available,
            DEFAULT_WORKER_IDLE,
            vec![],
        );
        let mut bytes = Vec::new();
        write_request(&mut bytes, &request, &streams).unwrap();
        bytes.len()
    }

    /// A reply file answering one row, `n`, from a worker holding `resident_bytes`.
    fn answer_file(dir: &std::path::Path, n: i64, resident_bytes: u64) -> PathBuf {
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![n]))],
        )
        .unwrap();
        let mut reply = Vec::new();
        write_header(&mut reply, &Reply::Answer { truncated: false }).unwrap();
        write_stream(&mut reply, &schema, &[batch]).unwrap();
        write_header(&mut reply, &Finished { resident_bytes }).unwrap();
        let path = dir.join(format!("answer-{n}-{resident_bytes}"));
        std::fs::write(&path, reply).unwrap();
        path
    }

    /// A worker script whose n-th start (of two) reads one request of `len` bytes, answers n,
    /// then runs `then`.
    fn numbered_worker(dir: &std::path::Path, len: usize, then: &str) -> PathBuf {
        for n in [1, 2] {
            answer_file(dir, n, 0);
        }
        worker_script(
            dir,
            &format!(
                "n=$(wc -l < {pids})
dd bs=1 count={len} status=none of=/dev/null
cat {dir}/answer-$n-0
{then}",
                pids = dir.join("pids").display(),
                dir = dir.display(),
            ),
        )
    }

    /// `SELECT 1`, asked of `worker` over `lake`.
    async fn select_one(
        worker: &QueryWorker,
        lake: &Lake,
        limits: &QueryLimits,
    ) -> Result<QueryResult, QueryError> {
        worker.query(lake, "SELECT 1", limits, vec![]).await
    }

    fn first_value(answer: &QueryResult) -> i64 {
        use arrow::array::AsArray;
        answer.batches[0]
            .column(0)
            .as_primitive::<arrow::datatypes::Int64Type>()
            .value(0)
    }

    // A worker that answered waits for the next query, and answers it: one process, two
    // answers.
    #[tokio::test]
    async fn a_worker_that_answered_answers_the_next_query_too() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let limits = quick(Duration::from_secs(5));
        let len = request_len(&lake, "SELECT 1", &limits);
        let (first, second) = (answer_file(dir.path(), 1, 0), answer_file(dir.path(), 2, 0));
        let read_one = format!("dd bs=1 count={len} status=none of=/dev/null");
        let program = worker_script(
            dir.path(),
            &format!(
                "{read_one}\ncat {}\n{read_one}\ncat {}\nexec sleep 60",
                first.display(),
                second.display()
            ),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        for expected in [1, 2] {
            let answer = select_one(&worker, &lake, &limits).await.unwrap();
            assert_eq!(first_value(&answer), expected);
        }
        assert_eq!(started(dir.path()).len(), 1, "{:?}", started(dir.path()));
    }

    // A worker that holds much memory after answering is let go (killed), and one that ended
    // while it waited is passed over: the next query starts a fresh one.
    #[tokio::test]
    async fn a_worker_holding_much_or_gone_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let limits = quick(Duration::from_secs(5));
        let len = request_len(&lake, "SELECT 1", &limits);
        let read_one = format!("dd bs=1 count={len} status=none of=/dev/null");
        let holding_much = answer_file(dir.path(), 1, KEEP_RESIDENT_BYTES + 1);
        let program = worker_script(
            dir.path(),
            &format!("{read_one}\ncat {}\nexec sleep 60", holding_much.display()),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        select_one(&worker, &lake, &limits).await.unwrap();
        assert!(worker.lock_waiting().is_empty(), "not kept");
        let pids = started(dir.path());
        let proc = PathBuf::from(format!("/proc/{}", pids[0]));
        let killed = Instant::now();
        while proc.exists() && killed.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!proc.exists(), "the worker let go is gone, reaped");

        let light = answer_file(dir.path(), 2, 0);
        let program = worker_script(
            dir.path(),
            &format!("{read_one}\ncat {}\nexit 0", light.display()),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        select_one(&worker, &lake, &limits).await.unwrap();
        assert_eq!(worker.lock_waiting().len(), 1, "kept");
        // It exits while it waits; the next query starts another, and is answered.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let answer = select_one(&worker, &lake, &limits).await.unwrap();
        assert_eq!(first_value(&answer), 2);
        assert_eq!(started(dir.path()).len(), 3, "{:?}", started(dir.path()));
    }

    // A waiting worker that had gone, a moment too late to be passed over, before the query
    // reached it (its pipes closed here; killed from outside, in life) was asked nothing: the
    // query goes to a fresh worker, at once.
    #[tokio::test]
    async fn a_waiting_worker_gone_before_the_query_reached_it_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let limits = quick(Duration::from_secs(5));
        let len = request_len(&lake, "SELECT 1", &limits);
        // The n-th worker started answers n, then closes its pipes and lives on.
        let program = numbered_worker(dir.path(), len, "exec 0<&- 1>&-\nexec sleep 60");
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let answer = select_one(&worker, &lake, &limits).await.unwrap();
        assert_eq!(first_value(&answer), 1);
        drop(answer);
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(worker.lock_waiting().len(), 1, "it still runs, and waits");
        let asked = Instant::now();
        let answer = select_one(&worker, &lake, &limits).await.unwrap();
        assert_eq!(first_value(&answer), 2, "answered by a fresh worker");
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(started(dir.path()).len(), 2);
    }

    // A waiting worker whose idle time ends just as a query is written to it exits without
    // reading it (here: once the query's first byte is there): the query goes to a fresh
    // worker, and the idle exit is not taken for a fault.
    #[tokio::test]
    async fn a_query_reaching_a_worker_as_it_leaves_idle_goes_to_a_fresh_one() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let limits = quick(Duration::from_secs(5));
        let len = request_len(&lake, "SELECT 1", &limits);
        // The n-th worker started answers n, then leaves idle as the next query comes.
        let program = numbered_worker(
            dir.path(),
            len,
            &format!("dd bs=1 count=1 status=none of=/dev/null\nexit {IDLE_EXIT}"),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        for expected in [1, 2] {
            let answer = select_one(&worker, &lake, &limits).await.unwrap();
            assert_eq!(first_value(&answer), expected);
        }
        assert_eq!(started(dir.path()).len(), 2);
    }

    // A worker that does not answer (stuck planning, say) is killed once its time and the
    // grace are up, and the query is answered as out of time.
    #[tokio::test]
    async fn a_worker_past_its_time_is_killed_and_the_query_answered_as_out_of_time() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let program = worker_script(dir.path(), "exec sleep 60");
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let started_at = Instant::now();
        let limits = quick(Duration::from_secs(1));
        let err = select_one(&worker, &lake, &limits).await;
        assert!(
            matches!(err, Err(QueryError::Timeout(_))),
            "{:?}",
            err.map(|r| r.num_rows())
        );
        let took = started_at.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(10),
            "{took:?}"
        );
        let pid = started(dir.path()).remove(0);
        let proc = PathBuf::from(format!("/proc/{pid}"));
        assert!(!proc.exists(), "the worker {pid} is gone, reaped");
        assert!(worker.lock_waiting().is_empty());
    }

    // The reply is what the query waits for, not the worker's exit: a worker that answered
    // while one of its threads is still stuck (planning a query out of time) is not waited for.
    #[tokio::test]
    async fn a_worker_that_replied_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let reply_file = dir.path().join("reply");
        let mut reply = Vec::new();
        let said = QueryError::PlanningTimeout(Duration::from_secs(30));
        write_header(&mut reply, &Reply::Refused(said)).unwrap();
        std::fs::write(&reply_file, reply).unwrap();
        let limits = quick(Duration::from_secs(30));
        let len = request_len(&lake, "SELECT 1", &limits);
        let program = worker_script(
            dir.path(),
            &format!(
                "dd bs=1 count={len} status=none of=/dev/null\ncat {}\nexec sleep 60",
                reply_file.display()
            ),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let started_at = Instant::now();
        let err = select_one(&worker, &lake, &limits).await;
        assert!(
            matches!(err, Err(QueryError::PlanningTimeout(_))),
            "{:?}",
            err.map(|r| r.num_rows())
        );
        assert!(
            started_at.elapsed() < Duration::from_secs(5),
            "{:?}",
            started_at.elapsed()
        );
        assert!(
            worker.lock_waiting().is_empty(),
            "one that refused is not kept"
        );
    }

    // A worker that ends without an answer is a fault of the engine, in its own words.
    #[tokio::test]
    async fn a_worker_that_broke_is_answered_with_what_it_said() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let limits = quick(Duration::from_secs(5));
        let len = request_len(&lake, "SELECT 1", &limits);
        let program = worker_script(
            dir.path(),
            &format!(
                "dd bs=1 count={len} status=none of=/dev/null\n\
                 echo \"thread 'main' panicked at x.rs:1:1:\" >&2\n\
                 echo 'the engine broke' >&2\nexit 101"
            ),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let started_at = Instant::now();
        let err = select_one(&worker, &lake, &limits).await;
        assert!(started_at.elapsed() < Duration::from_secs(2));
        let Err(QueryError::EngineFault(said)) = err else {
            panic!("{:?}", err.map(|r| r.num_rows()));
        };
        assert!(said.ends_with("the engine broke"), "{said}");
    }

    // With every slot held, a query waits its turn for a while, then is told the server is
    // busy; the slot it would have had was never taken.
    #[tokio::test]
    async fn queries_past_the_workers_at_once_wait_then_are_told_the_server_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Arc::new(Lake::open(dir.path()).await.unwrap());
        let program = worker_script(dir.path(), "exec sleep 60");
        let worker = Arc::new(QueryWorker::new(program, 1, Duration::from_millis(300)));
        let holding = {
            let (worker, lake) = (worker.clone(), lake.clone());
            tokio::spawn(async move {
                let limits = quick(Duration::from_secs(30));
                select_one(&worker, &lake, &limits).await
            })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        let err = worker
            .query(&lake, "SELECT 1", &quick(Duration::from_secs(5)), vec![])
            .await;
        assert!(
            matches!(err, Err(QueryError::Busy { at_once: 1, .. })),
            "{:?}",
            err.map(|r| r.num_rows())
        );
        // Dropping the holding query kills its worker and frees the slot.
        holding.abort();
        let _ = holding.await;
        assert_eq!(worker.slots.available_permits(), 1);
        assert!(worker.lock_waiting().is_empty());
    }
}
