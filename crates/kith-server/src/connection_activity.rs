//! Whether a connection has a request in progress, and how long it has had none.
//!
//! hyper's own timer covers one case only: an HTTP/1 connection waiting for a request's head
//! once its protocol is known. It never starts for a connection that sends nothing at all, or
//! only the first bytes of HTTP/2's preface (hyper-util reads those before it picks a
//! protocol): browsers open such connections ahead of need and may never use them. Nor does it
//! cover HTTP/2 connections, which may idle with no stream open. Each would hold a file
//! descriptor for as long as its client kept it. Counting the requests in progress, from the
//! moment a request's head has arrived until its answer's body has been sent or dropped, lets
//! the server close any connection that has gone the idle time without one, whatever its
//! protocol or state, and never one whose answer is being computed or read.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::response::Response;
use hyper::body::{Frame, SizeHint};
use tokio::sync::watch;

/// A connection's count of requests in progress. Cloned into its service; each request holds
/// an [`InProgress`] until its answer is done.
#[derive(Clone)]
pub(crate) struct ConnectionActivity {
    in_progress: Arc<watch::Sender<usize>>,
}

/// Held while one request is in progress; counted out when dropped.
pub(crate) struct InProgress {
    in_progress: Arc<watch::Sender<usize>>,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.in_progress.send_modify(|count| *count -= 1);
    }
}

impl ConnectionActivity {
    pub(crate) fn new() -> Self {
        Self {
            in_progress: Arc::new(watch::Sender::new(0)),
        }
    }

    /// Counts a request in from the moment its head has arrived.
    pub(crate) fn begin(&self) -> InProgress {
        self.in_progress.send_modify(|count| *count += 1);
        InProgress {
            in_progress: self.in_progress.clone(),
        }
    }

    /// Returns once the connection has gone `idle` with no request in progress: from when it
    /// opened, or from when its last request was done. Every request that begins restarts the
    /// wait once it is done.
    pub(crate) async fn idle_for(&self, idle: Duration) {
        let mut in_progress = self.in_progress.subscribe();
        loop {
            let none = *in_progress.borrow_and_update() == 0;
            if none {
                tokio::select! {
                    () = tokio::time::sleep(idle) => return,
                    _ = in_progress.changed() => {}
                }
            } else {
                // The sender lives in `self`, so the count cannot stop changing while this waits.
                let _ = in_progress.changed().await;
            }
        }
    }
}

/// `response` with its body holding `in_progress` until the body is sent or dropped.
pub(crate) fn until_answered(response: Response, in_progress: InProgress) -> Response {
    response.map(|body| {
        Body::new(AnswerInProgress {
            body,
            _in_progress: in_progress,
        })
    })
}

/// A response body that keeps its request counted in progress: an answer is part of the
/// request until the client has read it.
struct AnswerInProgress {
    body: Body,
    _in_progress: InProgress,
}

impl HttpBody for AnswerInProgress {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(context)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    // Real time, in tenths of a second: the bounds allow for a busy machine's late wake-ups.
    #[tokio::test]
    async fn a_connection_is_idle_only_once_its_requests_and_answers_are_done() {
        let idle = Duration::from_millis(200);
        let activity = ConnectionActivity::new();
        let started = Instant::now();
        activity.idle_for(idle).await;
        let waited = started.elapsed();
        assert!(
            waited >= idle && waited < idle * 10,
            "idle after {waited:?}"
        );

        // A request that takes 0.5 s, then an answer read 0.3 s later.
        let request = activity.begin();
        let watching = activity.clone();
        let started = Instant::now();
        let idle_after = tokio::spawn(async move {
            watching.idle_for(idle).await;
            started.elapsed()
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let response = until_answered(Response::new(Body::from("answer")), request);
        tokio::time::sleep(Duration::from_millis(300)).await;
        let body = axum::body::to_bytes(response.into_body(), 100)
            .await
            .unwrap();
        assert_eq!(body, "answer");
        let waited = idle_after.await.unwrap();
        assert!(
            waited >= Duration::from_millis(800) + idle && waited < Duration::from_secs(5),
            "idle after {waited:?}"
        );
    }

    #[test]
    fn the_answer_keeps_its_length() {
        let request = ConnectionActivity::new().begin();
        let response = until_answered(Response::new(Body::from("12345")), request);
        assert_eq!(response.body().size_hint().exact(), Some(5));
    }
}
