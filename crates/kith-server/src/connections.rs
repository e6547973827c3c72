//! Serving the listener: a task per connection, each held to how long it may keep the server
//! waiting.
//!
//! axum's `serve` gives hyper no timer, so a connection that sends half a request, or is kept
//! alive and sends nothing more, is held for as long as its client keeps it open: a client gone
//! from a mobile network without closing, a load balancer's pool, or a thousand stalled
//! connections on purpose. Each one holds a file descriptor, and at the usual limit of 1,024 the
//! server accepts nothing more, ingest included. Here every connection gets hyper's header
//! read timeout, which also closes a kept-alive connection that sends no next request, and
//! every request body the same limit on the wait for each of its parts.
//!
//! Each connection also explains the requests hyper cannot read ([`ExplainedIo`]), and hands
//! its client's address to the routes as axum's `ConnectInfo<SocketAddr>`.

use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

use crate::unreadable_requests::ExplainedIo;

/// How long a connection may keep the server waiting, unless `idle_connection_secs` says
/// otherwise: for the next request's head (or the rest of it), or for the next part of a body.
/// Longer than the idle timeout of the usual load balancers in front (AWS's 60 s): a server
/// that closes a kept-alive connection first can race the balancer's next request on it, which
/// the client then sees as a 502. nginx keeps connections alive as long by default.
pub const DEFAULT_IDLE_CONNECTION: Duration = Duration::from_secs(75);

/// Serves `app` on `listener` until `stop` turns true (or its sender is dropped), then lets the
/// requests in progress finish (kept-alive connections with none are closed) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let (finish, finishing) = watch::channel(false);
    // Each connection's task holds a receiver; all are gone once every connection has ended.
    let (still_open, connection_open) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = turned_true(&mut stop) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let connection =
                    serve_connection(stream, peer, app.clone(), idle, finishing.clone());
                let open = connection_open.clone();
                tokio::spawn(async move {
                    connection.await;
                    drop(open);
                });
            }
            Err(e) => wait_after_failed_accept(e).await,
        }
    }
    drop(listener);
    let _ = finish.send(true);
    drop(connection_open);
    still_open.closed().await;
    Ok(())
}

/// Serves one connection until its client closes it, it waits past `idle` for a request's head,
/// a request cannot be read, or `finishing` turns true and its request in progress is answered.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    idle: Duration,
    mut finishing: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let mut request: Request = request.map(|body| Body::new(TimeoutBody::new(idle, body)));
        request.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(request)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(idle);
    let connection = builder.serve_connection(TokioIo::new(ExplainedIo::new(stream)), service);
    let mut connection = pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = turned_true(&mut finishing) => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match served {
        Ok(()) => {}
        Err(e) if e.is_timeout() => {
            metrics::counter!("kith_http_connections_timed_out_total").increment(1);
            tracing::debug!(%peer, "closed a connection that sent no request for {idle:?}");
        }
        Err(e) => tracing::debug!(%peer, error = %e, "a connection ended with an error"),
    }
}

/// Returns once `flag` is true, or its sender is gone. (Not `wait_for` in a `select!` itself:
/// the value it returns borrows the flag, which would make the task not `Send`.)
async fn turned_true(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|value| *value).await;
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
