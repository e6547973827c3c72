//! Queries in a process of their own.
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
//! buffered since, and the tables built for the query (the profile tables). Over the worker's
//! stdin go a header (a little-endian `u32` length, then JSON) and one Arrow IPC stream per
//! table, in the header's order; over its stdout come a reply header the same way and, after an
//! answer, its rows as one IPC stream.

use std::io::{BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::execution::cache::cache_manager::CacheManager;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use serde::{Deserialize, Serialize};

use super::memory::QueryShare;
use super::{ExtraTable, QueryError, QueryLimits, QueryMemory, QueryResult, Source, Sources};
use crate::{Lake, TableView};

/// The argument that makes the `kith` binary a query worker (a hidden subcommand).
pub const WORKER_COMMAND: &str = "query-worker";

/// How long past its time limit a worker may take to answer on its own (it stops its query at
/// the limit and says so) before the server kills it.
const GRACE: Duration = Duration::from_secs(2);

/// Memory a worker may take beyond its query's memory and tables, once started (its binary and
/// runtime counted then): Parquet buffers being decoded, the Delta log, the allocator's own.
const SLACK_BYTES: u64 = 256 << 20;

/// How often a worker looks at its resident memory. Not capping its address space instead
/// (`RLIMIT_AS`) is deliberate: thread stacks (256 MiB each) and the allocator's reservations
/// count there, and a cap loose enough for them under load failed plain counts while events
/// arrived, or was too loose to mean anything.
const RESIDENT_CHECK_INTERVAL: Duration = Duration::from_millis(5);

/// The exit code of a worker that stopped itself because its resident memory passed its cap.
const OUT_OF_MEMORY_EXIT: i32 = 3;

/// The most of a worker's stderr kept to explain how it ended.
const KEPT_STDERR_BYTES: u64 = 16 << 10;

/// Runs queries in worker processes, a few at a time.
#[derive(Debug)]
pub struct QueryWorker {
    program: PathBuf,
    slots: Arc<tokio::sync::Semaphore>,
    at_once: usize,
    slot_wait: Duration,
}

impl QueryWorker {
    /// Workers are `program query-worker` (the `kith` binary), at most `at_once` running; a
    /// query that finds no slot free within `slot_wait` is turned away as busy.
    pub fn new(program: PathBuf, at_once: usize, slot_wait: Duration) -> QueryWorker {
        let at_once = at_once.max(1);
        QueryWorker {
            program,
            slots: Arc::new(tokio::sync::Semaphore::new(at_once)),
            at_once,
            slot_wait,
        }
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
        let (request, streams) = request_for(&sources, sql, limits, available, extra);
        let mut child = tokio::process::Command::new(&self.program)
            .arg(WORKER_COMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                QueryError::Internal(format!(
                    "the query worker {} could not start: {e}",
                    self.program.display()
                ))
            })?;
        let stdin = pipe_file(child.stdin.take().map(|p| p.into_owned_fd()))?;
        let stdout = pipe_file(child.stdout.take().map(|p| p.into_owned_fd()))?;
        let stderr = pipe_file(child.stderr.take().map(|p| p.into_owned_fd()))?;
        // Each pipe on a thread of its own, so that neither side waits on the other: the worker
        // may fail (and stop reading) before it has its input, or answer more than a pipe holds.
        // A write to a worker that has gone fails and ends its thread; how the worker ended
        // says what happened.
        let writing = tokio::task::spawn_blocking(move || write_request(stdin, &request, &streams));
        // The answer counts in the queries' memory until it has been sent, as an answer computed
        // in the server does, through a share of it, so that one that would fit alone but not
        // beside the answers being sent is told to retry.
        let share: Arc<dyn MemoryPool> =
            Arc::new(QueryShare::new(sources.memory.clone(), limits.memory_bytes));
        let memory = MemoryConsumer::new("query answer").register(&share);
        let reply_limits = limits.clone();
        let reading =
            tokio::task::spawn_blocking(move || read_reply(stdout, memory, &reply_limits));
        let complaints = tokio::task::spawn_blocking(move || kept_stderr(stderr));
        // The reply, not the worker's exit, is what the query waits for: a worker whose query
        // ran out of time while a thread of its own was still planning answers, then exits.
        let reply = match tokio::time::timeout(limits.timeout + GRACE, reading).await {
            Ok(read) => {
                read.map_err(|e| QueryError::Internal(format!("reading the query worker: {e}")))?
            }
            Err(_) => {
                let _ = child.kill().await;
                metrics::counter!("kith_query_workers_killed_total").increment(1);
                let stderr = complaints.await.unwrap_or_default();
                tracing::warn!(%stderr, "a query worker past its time was killed");
                return Err(QueryError::Timeout(limits.timeout));
            }
        };
        // Not awaited: a worker that answered without reading all it was sent (a query it
        // refused at once) has exited or is killed when `child` drops, and the write then fails.
        drop(writing);
        match reply {
            Ok(Ok(answer)) => {
                metrics::histogram!("kith_query_seconds").record(started.elapsed().as_secs_f64());
                Ok(answer)
            }
            Ok(Err(err)) => Err(super::memory::crowded_out(err, &share)),
            Err(unreadable) => {
                // Its stdout closed without a whole reply: the worker has ended, or is ending.
                let status = match tokio::time::timeout(GRACE, child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => {
                        let _ = child.kill().await;
                        None
                    }
                };
                let stderr = complaints.await.unwrap_or_default();
                Err(how_it_ended(status, &stderr, &unreadable, limits))
            }
        }
    }
}

/// A worker's pipe (taken from tokio, made blocking) as a file to read or write on a blocking
/// thread.
fn pipe_file(
    pipe: Option<std::io::Result<std::os::fd::OwnedFd>>,
) -> Result<std::fs::File, QueryError> {
    pipe.ok_or_else(|| QueryError::Internal("a query worker pipe is missing".into()))?
        .map(std::fs::File::from)
        .map_err(|e| QueryError::Internal(format!("a query worker pipe: {e}")))
}

/// What the worker is told, beside the tables' rows.
#[derive(Serialize, Deserialize)]
struct Request {
    sql: String,
    timeout: Duration,
    memory_bytes: usize,
    max_rows: usize,
    /// The bytes of the tables handed over (see [`resident_room`]).
    input_bytes: usize,
    /// What the queries' shared memory has free as the worker starts: the worker's engine may
    /// take that much, so that a query crowded out by the answers being sent (counted there) is
    /// told to retry, as in the server.
    available_bytes: usize,
    /// The event tables; the rows buffered since each one's Delta version follow as streams.
    tables: Vec<EventTableAt>,
    /// The tables built for the query; their rows follow the event tables' as streams.
    extra: Vec<ExtraTableName>,
    tables_on_request: Vec<String>,
}

#[derive(Serialize, Deserialize)]
struct EventTableAt {
    name: String,
    path: PathBuf,
    /// The Delta version the query reads; none while the table has no commit.
    version: Option<u64>,
}

#[derive(Serialize, Deserialize)]
struct ExtraTableName {
    name: String,
    shared: bool,
}

#[derive(Serialize, Deserialize)]
enum Reply {
    /// The rows follow as one stream.
    Answer {
        truncated: bool,
    },
    Refused(QueryError),
}

/// The rows of one table, as they go to the worker.
struct Stream {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

fn request_for(
    sources: &Sources,
    sql: &str,
    limits: &QueryLimits,
    available_bytes: usize,
    extra: Vec<ExtraTable>,
) -> (Request, Vec<Stream>) {
    let mut streams = Vec::new();
    let tables = sources
        .tables
        .iter()
        .map(|source| {
            streams.push(Stream {
                schema: source.schema.clone(),
                batches: source.view.buffered.clone(),
            });
            EventTableAt {
                name: source.name.clone(),
                path: source.path.clone(),
                version: source.view.delta.as_ref().and_then(|d| d.version()),
            }
        })
        .collect();
    let extra = extra
        .into_iter()
        .map(|table| {
            streams.push(Stream {
                schema: table.schema,
                batches: table.batches,
            });
            ExtraTableName {
                name: table.name,
                shared: table.shared,
            }
        })
        .collect();
    let input_bytes = streams
        .iter()
        .flat_map(|s| &s.batches)
        .map(super::held_bytes)
        .fold(0usize, usize::saturating_add);
    let request = Request {
        sql: sql.to_string(),
        timeout: limits.timeout,
        memory_bytes: limits.memory_bytes,
        max_rows: limits.max_rows,
        input_bytes,
        available_bytes,
        tables,
        extra,
        tables_on_request: sources.tables_on_request.clone(),
    };
    (request, streams)
}

/// The memory a worker may take beyond what it holds once started: its query's memory twice
/// over, since the engine counts most of what it holds but not all (a batch being built, values
/// a function makes; the bounds in the other modules keep those to a fraction of the limit), the
/// tables it is handed, and some slack.
fn resident_room(memory_bytes: usize, input_bytes: usize) -> u64 {
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    SLACK_BYTES
        .saturating_add(as_u64(memory_bytes).saturating_mul(2))
        .saturating_add(as_u64(input_bytes))
}

fn write_header<T: Serialize>(out: &mut impl Write, header: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec(header)?;
    let len = u32::try_from(json.len())
        .map_err(|_| std::io::Error::other("a query worker header over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)
}

fn read_header<T: for<'de> Deserialize<'de>>(input: &mut impl Read) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut json = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

fn write_stream(
    out: &mut impl Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> std::io::Result<()> {
    let mut writer = StreamWriter::try_new(out, schema).map_err(std::io::Error::other)?;
    for batch in batches {
        writer.write(batch).map_err(std::io::Error::other)?;
    }
    writer.finish().map_err(std::io::Error::other)
}

fn read_stream(input: &mut impl Read) -> std::io::Result<(SchemaRef, Vec<RecordBatch>)> {
    let reader = StreamReader::try_new(input, None).map_err(std::io::Error::other)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(std::io::Error::other)?;
    Ok((schema, batches))
}

fn write_request(
    stdin: std::fs::File,
    request: &Request,
    streams: &[Stream],
) -> std::io::Result<()> {
    let mut out = BufWriter::new(stdin);
    write_header(&mut out, request)?;
    for stream in streams {
        write_stream(&mut out, &stream.schema, &stream.batches)?;
    }
    out.flush()
}

/// The worker's reply. An answer's batches are counted in `memory` as they are read, so that the
/// server never holds more of an answer than the queries' memory allows: reading stops at the
/// first batch that does not fit.
fn read_reply(
    stdout: impl Read,
    memory: MemoryReservation,
    limits: &QueryLimits,
) -> std::io::Result<Result<QueryResult, QueryError>> {
    let mut input = BufReader::new(stdout);
    let truncated = match read_header(&mut input)? {
        Reply::Answer { truncated } => truncated,
        Reply::Refused(err) => return Ok(Err(err)),
    };
    let reader = StreamReader::try_new(&mut input, None).map_err(std::io::Error::other)?;
    let schema = reader.schema();
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(std::io::Error::other)?;
        if memory.try_grow(super::held_bytes(&batch)).is_err() {
            return Ok(Err(QueryError::AnswerTooLarge(limits.memory_bytes)));
        }
        batches.push(batch);
    }
    Ok(Ok(QueryResult {
        schema,
        batches,
        truncated,
        _memory: Some(memory),
    }))
}

fn kept_stderr(mut stderr: std::fs::File) -> String {
    let mut kept = Vec::new();
    let _ = (&mut stderr).take(KEPT_STDERR_BYTES).read_to_end(&mut kept);
    // Read on to the end, so the worker is never blocked writing to a full pipe.
    let _ = std::io::copy(&mut stderr, &mut std::io::sink());
    String::from_utf8_lossy(&kept).into_owned()
}

/// Why a worker gave no reply, from how it ended and what it wrote to stderr.
fn how_it_ended(
    status: Option<std::process::ExitStatus>,
    stderr: &str,
    unreadable: &std::io::Error,
    limits: &QueryLimits,
) -> QueryError {
    use std::os::unix::process::ExitStatusExt;
    // The worker's own watch; Rust's words when an allocation fails (it then aborts) and
    // mimalloc's, when the system refuses it memory; SIGKILL is the kernel's out-of-memory
    // killer (the server kills only workers past their time, answered before this).
    let out_of_memory = status.and_then(|s| s.code()) == Some(OUT_OF_MEMORY_EXIT)
        || stderr.contains("memory allocation of")
        || stderr.contains("unable to allocate")
        || status.and_then(|s| s.signal()) == Some(libc::SIGKILL);
    if out_of_memory {
        metrics::counter!("kith_query_workers_out_of_memory_total").increment(1);
        tracing::warn!(%stderr, "a query worker ran out of its memory");
        return QueryError::WorkerOutOfMemory(limits.memory_bytes);
    }
    let said = stderr
        .lines()
        .rev()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("")
        .trim();
    let ended = status.map_or("it was stopped".to_string(), |s| s.to_string());
    tracing::error!(%ended, %said, reply = %unreadable, "a query worker ended without answering");
    QueryError::EngineFault(if said.is_empty() {
        format!("its process ended ({ended}) without answering")
    } else {
        format!("its process ended ({ended}): {said}")
    })
}

/// The worker's side: reads one request from stdin, answers it on stdout, and exits (with 0 once
/// it has answered), or returns the exit code when it cannot start. The `kith query-worker`
/// command is this function.
pub fn serve_one_query() -> u8 {
    let mut input = BufReader::new(std::io::stdin().lock());
    let request: Request = match read_header(&mut input) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("kith query-worker: no request on stdin ({e}); the server starts workers");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(super::num_cpus_hint())
        .thread_stack_size(super::QUERY_THREAD_STACK_BYTES)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kith query-worker: no runtime: {e}");
            return 1;
        }
    };
    // Capped from what the worker holds now, its runtime built.
    let room = resident_room(request.memory_bytes, request.input_bytes);
    let watched =
        anonymous_resident_now().and_then(|held| watch_resident_memory(held.saturating_add(room)));
    if let Err(e) = watched {
        eprintln!("kith query-worker: its memory cannot be limited: {e}");
        return 1;
    }
    let answer = runtime.block_on(answer(request, &mut input));
    let mut out = BufWriter::new(std::io::stdout().lock());
    let written = match answer {
        Ok(result) => write_header(
            &mut out,
            &Reply::Answer {
                truncated: result.truncated,
            },
        )
        .and_then(|()| write_stream(&mut out, &result.schema, &result.batches)),
        Err(err) => write_header(&mut out, &Reply::Refused(err)),
    }
    .and_then(|()| out.flush());
    let code = match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("kith query-worker: the answer could not be written: {e}");
            1
        }
    };
    // At once, without shutting the runtime down: that would wait for its threads, and one may
    // still be planning the query whose time ran out.
    std::process::exit(code)
}

async fn answer(request: Request, input: &mut impl Read) -> Result<QueryResult, QueryError> {
    let unreadable =
        |e: std::io::Error| QueryError::Internal(format!("the query worker's input: {e}"));
    let limits = QueryLimits {
        timeout: request.timeout,
        memory_bytes: request.memory_bytes,
        max_rows: request.max_rows,
    };
    let mut tables = Vec::with_capacity(request.tables.len());
    for table in request.tables {
        let (schema, buffered) = read_stream(input).map_err(unreadable)?;
        let delta = match table.version {
            Some(version) => Some(
                crate::table::open_version(&table.path, version)
                    .await
                    .map_err(|e| QueryError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        tables.push(Source {
            name: table.name,
            path: table.path,
            schema,
            view: TableView { delta, buffered },
        });
    }
    let mut extra = Vec::with_capacity(request.extra.len());
    for table in request.extra {
        let (schema, batches) = read_stream(input).map_err(unreadable)?;
        extra.push(ExtraTable {
            name: table.name,
            schema,
            batches,
            shared: table.shared,
        });
    }
    let sources = Sources {
        tables,
        caches: CacheManager::try_new(&Default::default())
            .map_err(|e| QueryError::Internal(format!("query caches: {e}")))?,
        memory: QueryMemory::default().pool(request.available_bytes),
        tables_on_request: request.tables_on_request,
    };
    super::run_over(&sources, &request.sql, &limits, extra).await
}

/// The memory this process holds of its own (`/proc/self/statm`: resident pages less those
/// shared with files, such as the binary's code, which the query does not make).
fn anonymous_resident_now() -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let mut fields = statm.split_whitespace().skip(1).map(str::parse::<u64>);
    let (Some(Ok(resident)), Some(Ok(shared))) = (fields.next(), fields.next()) else {
        return Err(std::io::Error::other(format!(
            "/proc/self/statm reads {statm:?}"
        )));
    };
    // SAFETY: sysconf takes a plain integer and reads no memory of ours.
    let page = u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    Ok(resident.saturating_sub(shared).saturating_mul(page))
}

/// Ends this process, with [`OUT_OF_MEMORY_EXIT`], as soon as the memory it holds of its own
/// passes `cap`: looked at every few milliseconds, so a query copying memory as fast as it can
/// passes it by some tens of MiB at most before it stops.
fn watch_resident_memory(cap: u64) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("kith-memory-watch".into())
        .spawn(move || {
            loop {
                if let Ok(held) = anonymous_resident_now()
                    && held > cap
                {
                    eprintln!(
                        "kith query-worker: its memory, {} MiB, passed its cap of {} MiB",
                        held >> 20,
                        cap >> 20
                    );
                    std::process::exit(OUT_OF_MEMORY_EXIT);
                }
                std::thread::sleep(RESIDENT_CHECK_INTERVAL);
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the `kith` binary: a shell script running `body`.
    fn worker_script(dir: &std::path::Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("worker.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn quick(timeout: Duration) -> QueryLimits {
        QueryLimits {
            timeout,
            ..QueryLimits::default()
        }
    }

    // A worker that does not answer (stuck planning, say) is killed once its time and the
    // grace are up, and the query is answered as out of time.
    #[tokio::test]
    async fn a_worker_past_its_time_is_killed_and_the_query_answered_as_out_of_time() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let pid_file = dir.path().join("pid");
        let program = worker_script(
            dir.path(),
            &format!("echo $$ > {}\nexec sleep 60", pid_file.display()),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let started = Instant::now();
        let limits = quick(Duration::from_secs(1));
        let err = worker.query(&lake, "SELECT 1", &limits, vec![]).await;
        assert!(
            matches!(err, Err(QueryError::Timeout(_))),
            "{:?}",
            err.map(|r| r.num_rows())
        );
        let took = started.elapsed();
        assert!(
            took >= Duration::from_secs(3) && took < Duration::from_secs(10),
            "{took:?}"
        );
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
        assert!(!proc.exists(), "the worker {} is gone, reaped", pid.trim());
    }

    // The reply is what the query waits for, not the worker's exit: a worker that answered
    // while one of its threads is still stuck (planning a query out of time) is not waited for.
    #[tokio::test]
    async fn a_worker_that_answered_is_not_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let reply_file = dir.path().join("reply");
        let mut reply = Vec::new();
        let said = QueryError::PlanningTimeout(Duration::from_secs(30));
        write_header(&mut reply, &Reply::Refused(said)).unwrap();
        std::fs::write(&reply_file, reply).unwrap();
        let program = worker_script(
            dir.path(),
            &format!(
                "cat > /dev/null\ncat {}\nexec sleep 60",
                reply_file.display()
            ),
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let started = Instant::now();
        let err = worker
            .query(&lake, "SELECT 1", &quick(Duration::from_secs(30)), vec![])
            .await;
        assert!(
            matches!(err, Err(QueryError::PlanningTimeout(_))),
            "{:?}",
            err.map(|r| r.num_rows())
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    // A worker that ends without an answer is a fault of the engine, in its own words.
    #[tokio::test]
    async fn a_worker_that_broke_is_answered_with_what_it_said() {
        let dir = tempfile::tempdir().unwrap();
        let lake = Lake::open(dir.path()).await.unwrap();
        let program = worker_script(
            dir.path(),
            "cat > /dev/null\necho \"thread 'main' panicked at x.rs:1:1:\" >&2\n\
             echo 'the engine broke' >&2\nexit 101",
        );
        let worker = QueryWorker::new(program, 1, Duration::from_secs(10));
        let err = worker
            .query(&lake, "SELECT 1", &quick(Duration::from_secs(5)), vec![])
            .await;
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
                worker.query(&lake, "SELECT 1", &limits, vec![]).await
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
    }

    // An answer is counted as it is read, and reading stops at the first batch that does not
    // fit: the server never holds more of it than the queries' memory allows.
    #[test]
    fn an_answer_is_counted_as_it_is_read_and_reading_stops_where_it_does_not_fit() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![7; 1000]))],
        )
        .unwrap();
        let mut pipe = Vec::new();
        write_header(&mut pipe, &Reply::Answer { truncated: false }).unwrap();
        write_stream(&mut pipe, &schema, &vec![batch.clone(); 3]).unwrap();
        let bytes = super::super::held_bytes(&batch);
        let limits = QueryLimits::default();
        let read_within = |capacity: usize| {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(capacity));
            let memory = MemoryConsumer::new("answer").register(&pool);
            (read_reply(pipe.as_slice(), memory, &limits).unwrap(), pool)
        };
        let (answer, pool) = read_within(3 * bytes);
        let answer = answer.unwrap();
        assert_eq!(answer.num_rows(), 3000);
        assert_eq!(pool.reserved(), 3 * bytes, "the answer stays counted");
        drop(answer);
        assert_eq!(pool.reserved(), 0, "and is given back with it");
        let (refused, pool) = read_within(bytes * 3 / 2);
        assert!(matches!(refused, Err(QueryError::AnswerTooLarge(_))));
        assert_eq!(pool.reserved(), 0);
    }

    #[test]
    fn headers_and_streams_follow_one_another_on_one_pipe() {
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(vec![1, 2, 3]))],
        )
        .unwrap();
        let mut pipe = Vec::new();
        write_header(&mut pipe, &Reply::Answer { truncated: true }).unwrap();
        write_stream(&mut pipe, &schema, std::slice::from_ref(&batch)).unwrap();
        write_stream(&mut pipe, &schema, &[]).unwrap();
        write_header(
            &mut pipe,
            &Reply::Refused(QueryError::Timeout(Duration::from_secs(3))),
        )
        .unwrap();
        let mut input = pipe.as_slice();
        let first: Reply = read_header(&mut input).unwrap();
        assert!(matches!(first, Reply::Answer { truncated: true }));
        let (read_schema, batches) = read_stream(&mut input).unwrap();
        assert_eq!(read_schema, schema);
        assert_eq!(batches, vec![batch]);
        let (_, none) = read_stream(&mut input).unwrap();
        assert!(none.is_empty());
        let last: Reply = read_header(&mut input).unwrap();
        assert!(
            matches!(last, Reply::Refused(QueryError::Timeout(t)) if t == Duration::from_secs(3))
        );
        assert!(input.is_empty(), "every byte was read, and no more");
    }

    #[test]
    fn the_room_grows_with_the_memory_limit_and_the_tables_handed_over() {
        assert_eq!(resident_room(0, 0), SLACK_BYTES);
        assert_eq!(
            resident_room(1 << 30, 5 << 20),
            SLACK_BYTES + (2 << 30) + (5 << 20)
        );
        assert_eq!(resident_room(usize::MAX, usize::MAX), u64::MAX);
    }

    #[test]
    fn what_the_process_holds_is_read_from_proc() {
        let before = anonymous_resident_now().unwrap();
        // A test binary with its threads holds some MiB of its own, and less than a TiB.
        assert!((1 << 20..1 << 40).contains(&before), "{before}");
        let touched = std::hint::black_box(vec![1u8; 64 << 20]);
        let after = anonymous_resident_now().unwrap();
        assert!(after >= before + (60 << 20), "{before} then {after}");
        drop(touched);
    }

    #[test]
    fn a_worker_that_ran_out_of_memory_is_told_apart_from_one_that_broke() {
        use std::os::unix::process::ExitStatusExt;
        let limits = QueryLimits::default();
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        let aborted = std::process::ExitStatus::from_raw(6); // SIGABRT
        let err = how_it_ended(
            Some(aborted),
            "memory allocation of 1073741824 bytes failed\n",
            &eof,
            &limits,
        );
        assert!(matches!(err, QueryError::WorkerOutOfMemory(_)), "{err}");
        let watched = std::process::ExitStatus::from_raw(OUT_OF_MEMORY_EXIT << 8);
        let err = how_it_ended(Some(watched), "", &eof, &limits);
        assert!(matches!(err, QueryError::WorkerOutOfMemory(_)), "{err}");
        let killed = std::process::ExitStatus::from_raw(9); // SIGKILL
        let err = how_it_ended(Some(killed), "", &eof, &limits);
        assert!(matches!(err, QueryError::WorkerOutOfMemory(_)), "{err}");
        let panicked = std::process::ExitStatus::from_raw(101 << 8);
        let err = how_it_ended(
            Some(panicked),
            "thread 'main' panicked at src/x.rs:1:1:\nindex out of bounds\n\n",
            &eof,
            &limits,
        );
        assert!(
            matches!(&err, QueryError::EngineFault(said) if said.ends_with("index out of bounds")),
            "{err}"
        );
    }
}
