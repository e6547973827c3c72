//! One worker process, as the server holds it: started, asked a query, and kept for the next
//! one or let go (killed, if it has not ended).

use std::io::BufReader;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};
use tokio::io::AsyncReadExt;

use super::protocol::{Replied, Request, Stream, read_reply, write_request};
use super::{GRACE, IDLE_EXIT, KEEP_RESIDENT_BYTES, OUT_OF_MEMORY_EXIT, WORKER_COMMAND};
use crate::query::memory::{QueryShare, crowded_out};
use crate::query::{QueryError, QueryLimits, QueryResult};

/// The most of a worker's stderr kept to explain how it ended (its last words).
const KEPT_STDERR_BYTES: usize = 16 << 10;

/// How asking a worker a query went.
pub(super) enum Asked {
    /// How the query ended, and the worker when it may answer another.
    Ended(Result<QueryResult, QueryError>, Option<Box<Worker>>),
    /// A worker that waited was killed from outside without a word: as it waited, a moment
    /// too late to be passed over (it was asked nothing), or in the query (the kernel's
    /// out-of-memory killer). A fresh worker may be asked.
    WasGone,
}

/// A started worker, waiting for a query.
pub(super) struct Worker {
    /// Killed when dropped: a worker let go mid-query (its caller hung up) stops with it.
    child: tokio::process::Child,
    stdin: std::fs::File,
    /// Read through one buffer from start to end: what it holds past one reply is the next's.
    stdout: BufReader<std::fs::File>,
    stderr: StderrTail,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// Starts `program query-worker`.
    pub(super) fn start(program: &Path) -> Result<Worker, QueryError> {
        let spawn = || {
            tokio::process::Command::new(program)
                .arg(WORKER_COMMAND)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true)
                .spawn()
        };
        // A program file just written (the binary replaced by an upgrade; a test's script) may
        // still be open for writing in a process another thread forked a moment before, until
        // that process runs its own program: "text file busy", gone within milliseconds.
        let mut tries = 0;
        let mut child = loop {
            match spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 10 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                spawned => break spawned,
            }
        }
        .map_err(|e| {
            QueryError::Internal(format!(
                "the query worker {} could not start: {e}",
                program.display()
            ))
        })?;
        let missing = || QueryError::Internal("a query worker pipe is missing".into());
        let stdin = pipe_file(child.stdin.take().ok_or_else(missing)?.into_owned_fd())?;
        let stdout = BufReader::new(pipe_file(
            child.stdout.take().ok_or_else(missing)?.into_owned_fd(),
        )?);
        let stderr = StderrTail::of(child.stderr.take().ok_or_else(missing)?);
        metrics::counter!("kith_query_workers_started_total").increment(1);
        Ok(Worker {
            child,
            stdin,
            stdout,
            stderr,
        })
    }

    /// Whether the worker has ended while it waited (killed from outside, say, or left idle:
    /// that is counted).
    pub(super) fn has_ended(&mut self) -> bool {
        match self.child.try_wait() {
            Ok(None) => false,
            Ok(Some(status)) => {
                if left_idle(status) {
                    metrics::counter!("kith_query_workers_idle_exits_total").increment(1);
                }
                true
            }
            Err(_) => true,
        }
    }

    /// Asks the worker `request`, and gives the worker back when it may answer another query:
    /// it answered, read all it was sent, and holds little memory. A worker that `waited` for
    /// this query and turns out to have gone before it took it is [`Asked::WasGone`].
    ///
    /// The answer counts in the queries' memory (`shared`) until it has been sent, as an answer
    /// computed in the server does, through a share of it, so that one that would fit alone but
    /// not beside the answers being sent is told to retry.
    pub(super) async fn ask(
        self,
        request: Request,
        streams: Vec<Stream>,
        shared: Arc<dyn MemoryPool>,
        limits: &QueryLimits,
        waited: bool,
    ) -> Asked {
        let Worker {
            mut child,
            mut stdin,
            mut stdout,
            stderr,
        } = self;
        stderr.forget_earlier();
        // Each pipe on a thread of its own, so that neither side waits on the other: the worker
        // may fail (and stop reading) before it has its input, or answer more than a pipe holds.
        // A write to a worker that has gone fails and ends its thread; how the worker ended
        // says what happened.
        let writing = tokio::task::spawn_blocking(move || {
            write_request(&mut stdin, &request, &streams).map(|()| stdin)
        });
        let share: Arc<dyn MemoryPool> = Arc::new(QueryShare::new(shared, limits.memory_bytes));
        let memory = MemoryConsumer::new("query answer").register(&share);
        let reply_limits = limits.clone();
        let reading = tokio::task::spawn_blocking(move || {
            let replied = read_reply(&mut stdout, memory, &reply_limits);
            (stdout, replied)
        });
        // The reply, not the worker's exit, is what the query waits for: a worker whose query
        // ran out of time while a thread of its own was still planning answers, then exits.
        let (stdout, replied) = match tokio::time::timeout(limits.timeout + GRACE, reading).await {
            Ok(Ok(read)) => read,
            Ok(Err(e)) => {
                let err = QueryError::Internal(format!("reading the query worker: {e}"));
                return Asked::Ended(Err(err), None);
            }
            Err(_) => {
                let _ = child.kill().await;
                metrics::counter!("kith_query_workers_killed_total").increment(1);
                let stderr = stderr.last_words().await;
                tracing::warn!(%stderr, "a query worker past its time was killed");
                return Asked::Ended(Err(QueryError::Timeout(limits.timeout)), None);
            }
        };
        let replied = match replied {
            Ok(Some(replied)) => replied,
            no_reply => {
                // Its stdout closed without a whole reply: the worker has ended, or is ending.
                // One that waited for this query and said not a word may have gone as it
                // waited: its stdin closed before the query was written, it left idle as the
                // query came, or a signal from outside ended it (the query has not been asked;
                // or, if the kernel's out-of-memory killer took it in its query, asking again
                // is worth one try).
                let said_nothing = waited && matches!(no_reply, Ok(None));
                if said_nothing && matches!(finished_writing(writing).await, Some(Err(_))) {
                    metrics::counter!("kith_query_workers_gone_while_waiting_total").increment(1);
                    return Asked::WasGone;
                }
                let status = match tokio::time::timeout(GRACE, child.wait()).await {
                    Ok(Ok(status)) => Some(status),
                    _ => {
                        let _ = child.kill().await;
                        None
                    }
                };
                if said_nothing && status.is_some_and(|s| killed_from_outside(s) || left_idle(s)) {
                    metrics::counter!("kith_query_workers_gone_while_waiting_total").increment(1);
                    return Asked::WasGone;
                }
                let unreadable = no_reply.err().unwrap_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "its stdout closed before a reply",
                    )
                });
                let stderr = stderr.last_words().await;
                let err = how_it_ended(status, &stderr, &unreadable, limits);
                return Asked::Ended(Err(err), None);
            }
        };
        let (answer, kept) = match replied {
            Replied {
                answer: Ok(answer),
                finished,
            } => {
                // It read all it was sent before it answered, so the write is done or ending.
                let stdin = finished_writing(writing).await.and_then(Result::ok);
                let holds_little =
                    finished.is_some_and(|f| f.resident_bytes <= KEEP_RESIDENT_BYTES);
                let kept = stdin.filter(|_| holds_little).map(|stdin| {
                    Box::new(Worker {
                        child,
                        stdin,
                        stdout,
                        stderr,
                    })
                });
                (Ok(answer), kept)
            }
            // A worker that refused a query exits (and is killed here if it has not yet). The
            // write is not awaited: a worker that refused at once may not have read all it was
            // sent, and the write fails when it has gone.
            Replied {
                answer: Err(err), ..
            } => (Err(crowded_out(err, &share)), None),
        };
        Asked::Ended(answer, kept)
    }
}

/// How writing the query ended (the worker's stdin, or why it could not be written), once it
/// has; `None` if it does not end within the grace.
async fn finished_writing(
    writing: tokio::task::JoinHandle<std::io::Result<std::fs::File>>,
) -> Option<std::io::Result<std::fs::File>> {
    tokio::time::timeout(GRACE, writing).await.ok()?.ok()
}

/// Whether a signal from outside ended the worker (an operator's `kill`, the kernel's
/// out-of-memory killer), not one of its own faults (an abort, a bad access).
fn killed_from_outside(status: std::process::ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt;
    status.signal().is_some_and(|signal| {
        [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP].contains(&signal)
    })
}

/// Whether the worker exited because no query reached it within its idle time (it read
/// nothing after its last answer).
fn left_idle(status: std::process::ExitStatus) -> bool {
    status.code() == Some(IDLE_EXIT)
}

/// A worker's pipe (taken from tokio, made blocking) as a file to read or write on a blocking
/// thread.
fn pipe_file(pipe: std::io::Result<std::os::fd::OwnedFd>) -> Result<std::fs::File, QueryError> {
    pipe.map(std::fs::File::from)
        .map_err(|e| QueryError::Internal(format!("a query worker pipe: {e}")))
}

/// The end of what a worker writes on stderr, read as it comes, so that the worker never
/// blocks on a full pipe and its last words are at hand when it ends.
struct StderrTail {
    kept: Arc<Mutex<Vec<u8>>>,
    reading: tokio::task::JoinHandle<()>,
}

impl StderrTail {
    fn of(mut stderr: tokio::process::ChildStderr) -> StderrTail {
        let kept = Arc::new(Mutex::new(Vec::new()));
        let reading = tokio::spawn({
            let kept = kept.clone();
            async move {
                let mut chunk = vec![0u8; 4096];
                while let Ok(n @ 1..) = stderr.read(&mut chunk).await {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    kept.extend_from_slice(&chunk[..n]);
                    let over = kept.len().saturating_sub(KEPT_STDERR_BYTES);
                    kept.drain(..over);
                }
            }
        });
        StderrTail { kept, reading }
    }

    /// What an earlier query made the worker say is not this query's business.
    fn forget_earlier(&self) {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// All the worker said, once it has ended (its stderr closed), or what it had said a little
    /// after that, if something it started holds its stderr open.
    async fn last_words(mut self) -> String {
        if tokio::time::timeout(GRACE, &mut self.reading)
            .await
            .is_err()
        {
            self.reading.abort();
        }
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&kept).into_owned()
    }
}

/// Why a worker gave no reply, from how it ended and what it wrote to stderr.
pub(super) fn how_it_ended(
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

#[cfg(test)]
mod tests {
    use super::*;

    // A program file still open for writing somewhere ("text file busy") a moment after it
    // was written starts once it is let go: parallel tests write worker scripts while other
    // threads fork, and a binary may be replaced by an upgrade.
    #[tokio::test]
    async fn a_program_busy_being_written_for_a_moment_still_starts() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("worker.sh");
        std::fs::write(&program, "#!/bin/sh\nexec sleep 5\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let writing = std::fs::OpenOptions::new()
            .append(true)
            .open(&program)
            .unwrap();
        let let_go = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(15));
            drop(writing);
        });
        let worker = Worker::start(&program);
        let_go.join().unwrap();
        assert!(worker.is_ok(), "{:?}", worker.err());
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

    #[test]
    fn a_worker_killed_from_outside_is_told_apart_from_one_that_faulted() {
        use std::os::unix::process::ExitStatusExt;
        let signalled = |signal: i32| std::process::ExitStatus::from_raw(signal);
        for signal in [libc::SIGKILL, libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            assert!(killed_from_outside(signalled(signal)), "{signal}");
        }
        for signal in [libc::SIGABRT, libc::SIGSEGV, libc::SIGBUS] {
            assert!(!killed_from_outside(signalled(signal)), "{signal}");
        }
        let exited = |code: i32| std::process::ExitStatus::from_raw(code << 8);
        assert!(!killed_from_outside(exited(OUT_OF_MEMORY_EXIT)));
        assert!(!killed_from_outside(exited(101)));
    }

    // A worker's stderr is read as it comes, whatever its length, and its end is kept.
    #[tokio::test]
    async fn the_end_of_what_a_worker_says_is_kept() {
        let mut child = tokio::process::Command::new("sh")
            .args([
                "-c",
                "yes 'an earlier line' | head -c 1000000 >&2; echo 'the last words' >&2",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let tail = StderrTail::of(child.stderr.take().unwrap());
        assert!(child.wait().await.unwrap().success());
        let said = tail.last_words().await;
        assert_eq!(said.len(), KEPT_STDERR_BYTES);
        assert!(said.ends_with("the last words\n"), "{said}");
    }
}
