//! The worker's side: `kith query-worker` answers the server's queries, one after another, until
//! one is refused, its stdin closes, or its memory passes its cap.

use std::collections::HashMap;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use datafusion::execution::cache::cache_manager::CacheManager;
use deltalake::DeltaTable;

use super::protocol::{
    Finished, Reply, Request, read_header, read_stream, write_header, write_stream,
};
use super::{IDLE_EXIT, ORPHANED_EXIT, OUT_OF_MEMORY_EXIT};
use crate::query::{
    ExtraTable, QueryError, QueryLimits, QueryMemory, QueryResult, Source, Sources,
};
use crate::{LakeError, TableView};

/// Memory a worker may take beyond its query's memory and tables, counted from what it holds as
/// the query starts: Parquet buffers being decoded, the Delta log, the allocator's own.
const SLACK_BYTES: u64 = 256 << 20;

/// How often a worker looks at its resident memory while a query runs. Not capping its address
/// space instead (`RLIMIT_AS`) is deliberate: thread stacks (256 MiB each) and the allocator's
/// reservations count there, and a cap loose enough for them under load failed plain counts
/// while events arrived, or was too loose to mean anything.
const RESIDENT_CHECK_INTERVAL: Duration = Duration::from_millis(5);

/// How often a worker looks whether its server is still there.
const ORPHAN_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Ends the worker as soon as its server is gone (killed, crashed): the closing of its stdin
/// is only read between queries, and a worker left in the middle of one would run it on alone,
/// a core busy until its time limit. The server is the worker's parent; once it is gone the
/// worker is another process's child.
fn exit_when_orphaned() {
    let server = std::os::unix::process::parent_id();
    let watching = std::thread::Builder::new()
        .name("kith-worker-orphan-watch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(ORPHAN_CHECK_INTERVAL);
                if std::os::unix::process::parent_id() != server {
                    std::process::exit(ORPHANED_EXIT);
                }
            }
        });
    if let Err(e) = watching {
        eprintln!("kith query-worker: cannot watch for its server's end: {e}");
    }
}

/// Answers queries from stdin on stdout, and exits: with 0 when stdin closes (the server let the
/// worker go, or ended), with 0 after a refusal (its query may have left a thread planning;
/// a fresh worker takes the next), with [`OUT_OF_MEMORY_EXIT`] past its memory cap. Returns the
/// exit code when it cannot start. The `kith query-worker` command is this function.
pub fn serve_queries() -> u8 {
    exit_when_orphaned();
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut request: Request = match read_header(&mut input) {
        Ok(request) => request,
        Err(e) => {
            eprintln!("kith query-worker: no request on stdin ({e}); the server starts workers");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(crate::query::num_cpus_hint())
        .thread_stack_size(crate::query::QUERY_THREAD_STACK_BYTES)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("kith query-worker: no runtime: {e}");
            return 1;
        }
    };
    let watch = match MemoryWatch::start() {
        Ok(watch) => watch,
        Err(e) => {
            eprintln!("kith query-worker: its memory cannot be watched: {e}");
            return 1;
        }
    };
    let mut warm = match WarmTables::new() {
        Ok(warm) => warm,
        Err(e) => {
            eprintln!("kith query-worker: {e}");
            return 1;
        }
    };
    loop {
        // Capped from what the worker holds as the query starts.
        let room = resident_room(request.memory_bytes, request.input_bytes);
        match anonymous_resident_now() {
            Ok(held) => watch.cap(held.saturating_add(room)),
            Err(e) => {
                eprintln!("kith query-worker: its memory cannot be watched: {e}");
                std::process::exit(1);
            }
        }
        let request_idle = request.idle;
        let answer = runtime.block_on(answer(request, &mut input, &mut warm));
        let refused = answer.is_err();
        let written = write_reply(answer);
        watch.idle();
        if let Err(e) = &written {
            eprintln!("kith query-worker: the answer could not be written: {e}");
        }
        // At once, without shutting the runtime down: that would wait for its threads, and
        // one may still be planning the query whose time ran out.
        if refused || written.is_err() {
            std::process::exit(i32::from(written.is_err()));
        }
        if !next_request_within(&input, request_idle) {
            std::process::exit(IDLE_EXIT);
        }
        request = match read_header(&mut input) {
            Ok(request) => request,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => std::process::exit(0),
            Err(e) => {
                eprintln!("kith query-worker: the next request cannot be read: {e}");
                std::process::exit(1);
            }
        };
    }
}

/// Whether the next request (or the end of stdin) comes within `idle`: a worker no query
/// reached in that time exits, giving back what it holds, and a query that finds it gone starts
/// a fresh one.
fn next_request_within(input: &BufReader<std::io::StdinLock<'_>>, idle: Duration) -> bool {
    if !input.buffer().is_empty() {
        return true;
    }
    // None: so far off that it is never (poll's -1).
    let deadline = std::time::Instant::now().checked_add(idle);
    loop {
        let millis = deadline.map_or(-1, |deadline| {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX)
        });
        let mut stdin = libc::pollfd {
            fd: libc::STDIN_FILENO,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the length of the call.
        match unsafe { libc::poll(&mut stdin, 1, millis) } {
            // Done waiting, unless poll's longest wait (24 days) ended before `idle` did.
            0 if deadline.is_some_and(|d| std::time::Instant::now() >= d) => return false,
            0 => {}
            // Readable, closed or in error: reading says which.
            1.. => return true,
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => {}
            // Waiting is not possible: wait the plain way, on the read.
            _ => return true,
        }
    }
}

/// Writes the reply on stdout. After an answer, once it has let go of the answer's rows, the
/// worker says how much memory it still holds.
fn write_reply(answer: Result<QueryResult, QueryError>) -> std::io::Result<()> {
    let mut out = BufWriter::new(std::io::stdout().lock());
    match answer {
        Ok(result) => {
            write_header(
                &mut out,
                &Reply::Answer {
                    truncated: result.truncated,
                },
            )?;
            write_stream(&mut out, &result.schema, &result.batches)?;
            drop(result);
            let resident_bytes = anonymous_resident_now().unwrap_or(u64::MAX);
            write_header(&mut out, &Finished { resident_bytes })?;
        }
        Err(err) => write_header(&mut out, &Reply::Refused(err))?,
    }
    out.flush()
}

async fn answer(
    request: Request,
    input: &mut impl Read,
    warm: &mut WarmTables,
) -> Result<QueryResult, QueryError> {
    let unreadable =
        |e: std::io::Error| QueryError::Internal(format!("the query worker's input: {e}"));
    let limits = QueryLimits {
        timeout: request.timeout,
        memory_bytes: request.memory_bytes,
        max_rows: request.max_rows,
        // Workers answer the server's interactive queries.
        ..QueryLimits::default()
    };
    // Every table's rows are read before anything can fail, so the next request starts where
    // this one ends.
    let mut tables = Vec::with_capacity(request.tables.len());
    for table in request.tables {
        let (schema, buffered) = read_stream(input).map_err(unreadable)?;
        tables.push((table, schema, buffered));
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
    let mut sources = Vec::with_capacity(tables.len());
    for (table, schema, buffered) in tables {
        let delta = match table.version {
            Some(version) => Some(
                warm.at(&table.path, version)
                    .await
                    .map_err(|e| QueryError::Internal(e.to_string()))?,
            ),
            None => None,
        };
        sources.push(Source {
            name: table.name,
            path: table.path,
            schema,
            view: TableView { delta, buffered },
        });
    }
    let sources = Sources {
        tables: sources,
        caches: warm.caches.clone(),
        memory: QueryMemory::default().pool(limits.purpose, request.available_bytes),
        tables_on_request: request.tables_on_request,
    };
    crate::query::run_over(&sources, &request.sql, &limits, extra).await
}

/// What a worker keeps from one query to the next, as the server does: each event table's
/// newest Delta snapshot it has read (a later version is read from there, commit by commit,
/// not from the log's start) and the Parquet metadata caches.
struct WarmTables {
    tables: HashMap<PathBuf, DeltaTable>,
    caches: Arc<CacheManager>,
}

impl WarmTables {
    fn new() -> Result<WarmTables, QueryError> {
        let caches = CacheManager::try_new(&Default::default())
            .map_err(|e| QueryError::Internal(format!("query caches: {e}")))?;
        Ok(WarmTables {
            tables: HashMap::new(),
            caches,
        })
    }

    /// The table at `path` as of `version`.
    async fn at(&mut self, path: &Path, version: u64) -> Result<DeltaTable, LakeError> {
        if let Some(kept) = self.tables.get(path) {
            let mut table = kept.clone();
            // Forward from the kept snapshot, or from the start for an older version. A log
            // cleaned up since the kept version fails here and is read afresh.
            if table.load_version(version).await.is_ok() && table.version() == Some(version) {
                if kept.version().is_none_or(|kept| kept < version) {
                    self.tables.insert(path.to_path_buf(), table.clone());
                }
                return Ok(table);
            }
        }
        let table = crate::table::open_version(path, version).await?;
        self.tables.insert(path.to_path_buf(), table.clone());
        Ok(table)
    }
}

/// The memory a worker may take beyond what it holds as a query starts: its query's memory
/// twice over, since the engine counts most of what it holds but not all (a batch being built,
/// values a function makes; the bounds in the other modules keep those to a fraction of the
/// limit), the tables it is handed, and some slack.
fn resident_room(memory_bytes: usize, input_bytes: usize) -> u64 {
    let as_u64 = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    SLACK_BYTES
        .saturating_add(as_u64(memory_bytes).saturating_mul(2))
        .saturating_add(as_u64(input_bytes))
}

/// The memory this process holds of its own (`/proc/self/statm`: resident pages less those
/// shared with files, such as the binary's code, which the query does not make).
pub(super) fn anonymous_resident_now() -> std::io::Result<u64> {
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

/// A thread that ends this process, with [`OUT_OF_MEMORY_EXIT`], as soon as the memory it holds
/// of its own passes the cap of the query running: looked at every few milliseconds, so a query
/// copying memory as fast as it can passes it by some tens of MiB at most before it stops.
/// Between queries it sleeps, and a waiting worker takes no CPU.
struct MemoryWatch {
    cap: Arc<(Mutex<Option<u64>>, Condvar)>,
}

impl MemoryWatch {
    fn start() -> std::io::Result<MemoryWatch> {
        let cap = Arc::new((Mutex::new(None), Condvar::new()));
        let watched = cap.clone();
        std::thread::Builder::new()
            .name("kith-memory-watch".into())
            .spawn(move || {
                let (current, set) = &*watched;
                loop {
                    let cap = {
                        let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
                        loop {
                            match *current {
                                Some(cap) => break cap,
                                None => {
                                    current = set.wait(current).unwrap_or_else(|p| p.into_inner())
                                }
                            }
                        }
                    };
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
            })?;
        Ok(MemoryWatch { cap })
    }

    /// Watches the query about to run, held to `cap`.
    fn cap(&self, cap: u64) {
        self.set(Some(cap));
    }

    /// No query runs.
    fn idle(&self) {
        self.set(None);
    }

    fn set(&self, cap: Option<u64>) {
        let (current, set) = &*self.cap;
        *current.lock().unwrap_or_else(|p| p.into_inner()) = cap;
        set.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_room_grows_with_the_memory_limit_and_the_tables_handed_over() {
        assert_eq!(resident_room(0, 0), SLACK_BYTES);
        assert_eq!(
            resident_room(1 << 30, 5 << 20),
            SLACK_BYTES + (2 << 30) + (5 << 20)
        );
        assert_eq!(resident_room(usize::MAX, usize::MAX), u64::MAX);
    }

    // A waiting worker reads a later version of a table forward from the snapshot it kept, and
    // an older one afresh: each as the table was at that version.
    #[tokio::test]
    async fn a_kept_snapshot_is_read_forward_and_an_older_version_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let lake = crate::Lake::open(dir.path()).await.unwrap();
        let path = lake.events.path().to_path_buf();
        let mut seq = 0;
        let mut versions = Vec::new();
        for _ in 0..4 {
            crate::tests::flush_rows(&lake, &mut seq, 2).await;
            let version = lake.events.view().delta.and_then(|d| d.version()).unwrap();
            versions.push(version);
        }
        let files = |table: &DeltaTable| table.get_file_uris().unwrap().count();
        let mut warm = WarmTables::new().unwrap();
        for (at, &version) in [0, 2, 3, 1].iter().map(|&i| (i, &versions[i])) {
            let table = warm.at(&path, version).await.unwrap();
            assert_eq!(table.version(), Some(version));
            assert_eq!(files(&table), at + 1, "version {version}");
        }
        let kept = warm.tables.get(&path).and_then(|t| t.version());
        assert_eq!(kept, Some(versions[3]), "the newest read is kept");
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
}
