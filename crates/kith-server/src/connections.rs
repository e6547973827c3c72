//! Serving the listener: a task per connection, each held to how long it may keep the server
//! waiting.
//!
//! axum's `serve` gives hyper no timer, so a connection that sends half a request, or is kept
//! alive and sends nothing more, is held for as long as its client keeps it open: a client gone
//! from a mobile network without closing, a load balancer's pool, or a thousand stalled
//! connections on purpose. Each one holds a file descriptor, and at the usual limit of 1,024 the
//! server accepts nothing more, ingest included. Here every connection gets hyper's header
//! read timeout, which also closes a kept-alive HTTP/1 connection that sends no next request;
//! every connection, whatever its protocol or state, is closed once it has gone that time with
//! no request in progress ([`ConnectionActivity`]); and every request body gets the same limit
//! on the wait for each of its parts.
//!
//! Each connection also explains the requests hyper cannot read ([`ExplainedIo`]), and hands
//! its client's address to the routes as axum's `ConnectInfo<SocketAddr>`. HTTP/2 without TLS
//! (prior knowledge, as proxies such as Envoy speak it) is served as `axum::serve` served it,
//! with the same limits.
//!
//! On shutdown, requests in progress get [`SHUTDOWN_GRACE`] to finish: a connection that is
//! still sending half a request would otherwise hold the server's exit for the whole idle time.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::body_budget::{self, BodyBudget, DEFAULT_RECEIVING_BYTES};
use crate::connection_activity::{ConnectionActivity, until_answered};
use crate::small_reads::SmallReads;
use crate::unreadable_requests::{ExplainedIo, MAX_HEAD_BYTES};

/// How long a connection may keep the server waiting, unless `idle_connection_secs` says
/// otherwise: for the next request's head (or the rest of it), or for the next part of a body.
/// Longer than the idle timeout of the usual load balancers in front (AWS's 60 s): a server
/// that closes a kept-alive connection first can race the balancer's next request on it, which
/// the client then sees as a 502. nginx keeps connections alive as long by default.
pub const DEFAULT_IDLE_CONNECTION: Duration = Duration::from_secs(75);

/// The longest idle time a connection is given: hyper adds it to the present instant, which a
/// value near `u64::MAX` seconds would overflow.
pub const MOST_IDLE_CONNECTION: Duration = Duration::from_secs(24 * 60 * 60);

/// How long requests in progress may take to finish once the server is told to stop; then the
/// connections left are closed. Shorter than the grace a container's stop gives (Docker's 10 s),
/// leaving the rest of it to the journal and tables.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What the connections may take of the server: time waiting on their clients, and memory for
/// the bodies they send.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// How long a connection may keep the server waiting for a request (its head, or its
    /// first or next request) or for the next part of a body, before it is closed.
    pub idle: Duration,
    /// The bytes that the requests being received (bodies, and HTTP/2 heads) may hold at once,
    /// over all connections (see [`BodyBudget`]).
    pub receiving_bytes: usize,
    /// How many connections are served at once; the next wait to be accepted. `kith serve`
    /// sets it from its limit on open files ([`most_connections`]); none, no limit.
    pub most_connections: Option<usize>,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            idle: DEFAULT_IDLE_CONNECTION,
            receiving_bytes: DEFAULT_RECEIVING_BYTES,
            most_connections: None,
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true (or its sender is dropped), then lets the
/// requests in progress finish (kept-alive connections with none are closed at once), closes
/// the connections still open after [`SHUTDOWN_GRACE`], and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let idle = limits.idle.min(MOST_IDLE_CONNECTION);
    let bodies = Arc::new(BodyBudget::new(limits.receiving_bytes));
    let (finish, finishing) = watch::channel(false);
    let (abandon, abandoning) = watch::channel(false);
    // Each connection's task holds a receiver; all are gone once every connection has ended.
    let (still_open, connection_open) = watch::channel(());
    let slots = limits
        .most_connections
        .map(|most| Arc::new(Semaphore::new(most.clamp(1, Semaphore::MAX_PERMITS))));
    let mut told_at_limit: Option<Instant> = None;
    loop {
        let slot = match &slots {
            Some(slots) => {
                if slots.available_permits() == 0 {
                    tell_at_limit(&mut told_at_limit, limits.most_connections);
                }
                tokio::select! {
                    slot = slots.clone().acquire_owned() => slot.ok(),
                    () = turned_true(&mut stop) => break,
                }
            }
            None => None,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = turned_true(&mut stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let signals = (finishing.clone(), abandoning.clone());
                let limits = (idle, bodies.clone());
                let connection = serve_connection(stream, peer, app.clone(), limits, signals);
                let open = connection_open.clone();
                tokio::spawn(async move {
                    connection.await;
                    drop(open);
                    drop(slot);
                });
            }
            Err(e) => wait_after_failed_accept(e).await,
        }
    }
    drop(listener);
    let _ = finish.send(true);
    drop(connection_open);
    if tokio::time::timeout(SHUTDOWN_GRACE, still_open.closed())
        .await
        .is_err()
    {
        tracing::info!(
            "closing the connections whose requests did not finish within {SHUTDOWN_GRACE:?} \
             of the stop"
        );
        let _ = abandon.send(true);
        still_open.closed().await;
    }
    Ok(())
}

/// Serves one connection until its client closes it, it goes `idle` without a request in
/// progress, a request cannot be read, or the first of `(finishing, abandoning)` turns true and
/// its request in progress is answered; the second closes it whatever it is doing. Its request
/// bodies count against `bodies` while they are received.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    (idle, bodies): (Duration, Arc<BodyBudget>),
    (mut finishing, mut abandoning): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let activity = ConnectionActivity::new();
    let counted = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let in_progress = counted.begin();
        let (head, mut request): (_, Request) = match bodies.hold_head(&request) {
            Ok(held) => (
                held,
                request.map(|body| Body::new(TimeoutBody::new(idle, bodies.counted(body)))),
            ),
            Err(over) => (None, body_budget::stand_in(request, over)),
        };
        request.extensions_mut().insert(ConnectInfo(peer));
        let answer = app.clone().oneshot(request);
        async move {
            let response = answer.await?;
            drop(head);
            Ok::<_, Infallible>(until_answered(response, in_progress))
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(MAX_HEAD_BYTES)
        .timer(TokioTimer::new())
        .header_read_timeout(idle);
    let connection = builder.serve_connection(
        TokioIo::new(ExplainedIo::new(SmallReads::new(stream))),
        service,
    );
    let mut connection = pin!(connection);
    let went_idle = tokio::select! {
        served = connection.as_mut() => return report_end(served, peer, idle),
        () = activity.idle_for(idle) => true,
        () = turned_true(&mut finishing) => false,
    };
    if went_idle {
        metrics::counter!("kith_http_connections_timed_out_total").increment(1);
        tracing::debug!(%peer, "closing a connection that had no request for {idle:?}");
    }
    // HTTP/2 tells its client to go away, HTTP/1 closes once its request in progress (if any)
    // is answered, a connection whose protocol is not known yet closes at once.
    connection.as_mut().graceful_shutdown();
    tokio::select! {
        // A connection closed for idling is counted once, above, even if hyper's own timer
        // then ends it (a head still trickling in).
        served = connection.as_mut() => if !went_idle {
            report_end(served, peer, idle);
        },
        () = turned_true(&mut abandoning) => {}
        // A client that neither closes nor sends keeps nothing open: an HTTP/2 client that
        // never answers the ping after the notice to go away, or HTTP/1's head still trickling.
        () = activity.idle_for(idle), if went_idle => {}
    }
}

/// Counts and logs how a connection ended, unless its client closed it.
fn report_end(
    served: Result<(), Box<dyn std::error::Error + Send + Sync>>,
    peer: SocketAddr,
    idle: Duration,
) {
    let Err(e) = served else { return };
    let timed_out = e
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if timed_out {
        metrics::counter!("kith_http_connections_timed_out_total").increment(1);
        tracing::debug!(%peer, "closed a connection that sent no request for {idle:?}");
    } else {
        tracing::debug!(%peer, error = %e, "a connection ended with an error");
    }
}

/// Returns once `flag` is true, or its sender is gone. (Not `wait_for` in a `select!` itself:
/// the value it returns borrows the flag, which would make the task not `Send`.)
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|value| *value).await;
}

/// How many connections a process may serve at once when it may open `open_files` files: the
/// rest is kept for the journal, the tables' files and the query workers' pipes (about 35 at
/// rest, a few more while a flush or a query runs), which would otherwise fail with "too many
/// open files" whenever clients held every descriptor.
pub fn most_connections(open_files: u64) -> usize {
    let kept = (open_files / 4).clamp(64, 1024);
    usize::try_from(open_files.saturating_sub(kept))
        .unwrap_or(usize::MAX)
        .max(1)
}

/// Tells, at most once a minute, that the server is serving all the connections it may: the
/// next ones wait to be accepted until others close.
fn tell_at_limit(told_at: &mut Option<Instant>, most: Option<usize>) {
    metrics::counter!("kith_http_connections_at_limit_total").increment(1);
    if told_at.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) {
        return;
    }
    *told_at = Some(Instant::now());
    tracing::warn!(
        most_connections = most,
        "serving as many connections as the limit on open files allows (the rest of the limit \
         is kept for storage); new connections wait until others close. Raise the limit \
         (`ulimit -n`, systemd's `LimitNOFILE`), or lower `idle_connection_secs` so idle \
         connections close sooner"
    );
}

/// After a failed `accept`: a connection its client gave up on is simply passed over; anything
/// else (too many open files, out of memory) is told, and accepting waits a moment, since
/// trying again at once would fail the same way.
async fn wait_after_failed_accept(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    metrics::counter!("kith_http_accept_errors_total").increment(1);
    tracing::warn!(
        error = %e,
        "cannot accept a connection; trying again in a second. \"Too many open files\" means \
         the process's limit on open files (`ulimit -n`, systemd's `LimitNOFILE`) is reached: \
         raise it, or lower `idle_connection_secs` so idle connections close sooner"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::most_connections;

    #[test]
    fn connections_leave_a_quarter_of_the_open_files_between_64_and_1024_for_storage() {
        assert_eq!(most_connections(256), 192);
        assert_eq!(most_connections(1024), 768);
        assert_eq!(most_connections(20_000), 18_976);
        assert_eq!(most_connections(1 << 20), (1 << 20) - 1024);
        // A limit too low to keep anything still serves one connection.
        assert_eq!(most_connections(10), 1);
    }
}
