//! A query's answer as a response body: written out piece by piece as the client reads it, and
//! given up when the client stops reading.
//!
//! The answer counts in the memory the queries share until it has been sent (see
//! `kith_lake::query`). A client that stops reading without closing its connection (a paused
//! notebook, a hung script) would otherwise hold that memory, and turn every other query away,
//! for as long as the connection lives. A piece the client has not taken within the stall
//! limit ends the response: the answer's memory is given back and the connection is cut, so
//! the client sees a broken body rather than a short answer that looks whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use kith_lake::QueryResult;
use kith_lake::output::{Encoding, Rendering};
use tokio::sync::mpsc;

/// `result` as a body in `encoding`; a piece not taken within `stall_limit` ends it.
pub(crate) fn streamed(result: QueryResult, encoding: Encoding, stall_limit: Duration) -> Body {
    // One piece waits in the channel while the next is written: at most two pieces of text
    // beside the answer itself (a piece is about 1 MiB of Arrow data, a few times that as JSON).
    let (pieces, received) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let complete = Arc::new(AtomicBool::new(false));
    let written = complete.clone();
    tokio::spawn(async move {
        for piece in Rendering::new(result, encoding) {
            let piece = piece.map(Bytes::from).map_err(|e| {
                tracing::error!(error = %e, "could not encode a query answer; it was cut short");
                std::io::Error::other(e)
            });
            let failed = piece.is_err();
            match tokio::time::timeout(stall_limit, pieces.send(piece)).await {
                // Each piece is a moment of work on the HTTP threads: let other requests in.
                Ok(Ok(())) if !failed => tokio::task::yield_now().await,
                // The error was handed on, or the client has gone.
                Ok(_) => return,
                Err(_) => {
                    tracing::warn!(
                        stall_limit_secs = stall_limit.as_secs_f64(),
                        "a query answer was not read for the stall limit; it was given up"
                    );
                    metrics::counter!("kith_query_answers_abandoned_total").increment(1);
                    return;
                }
            }
        }
        written.store(true, Ordering::Release);
    });
    let stream = futures::stream::unfold(
        (received, complete, false),
        |(mut received, complete, ended)| async move {
            if ended {
                return None;
            }
            match received.recv().await {
                Some(piece) => Some((piece, (received, complete, false))),
                // The writer stopped: the answer is whole, or it was given up and the body
                // must end in an error, so the connection is cut instead of closed cleanly.
                None if complete.load(Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::other("the answer was given up")),
                    (received, complete, true),
                )),
            }
        },
    );
    Body::from_stream(stream)
}
