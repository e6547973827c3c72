//! The memory that requests may hold while they are received, shared by every connection.
//!
//! Each body is read whole before it is parsed (at most 500 KB, see `ingest::read_body`), so
//! without a bound the memory held is the number of connections times the body size: mobile
//! SDKs flushing their queues at once after an outage, or clients that upload slowly on
//! purpose, could make the server run out of memory and be killed. Past the budget a body's
//! reading fails with [`OverBudget`], and its request is answered `429 overloaded` with
//! `Retry-After`: SDKs send the batch again, and nothing acknowledged is at risk.
//!
//! HTTP/2 request heads count too, from the moment hyper hands the request over until it is
//! answered. An HTTP/1 connection holds one head at a time, but an HTTP/2 connection may hold
//! 200 (each up to 16 KiB of decoded headers, more in memory when they are many small ones):
//! streams whose heads promised a body that never came held about 9 MB a connection. A head
//! past the budget is answered `429 overloaded` at once, without running its route
//! ([`stand_in`], [`refuse_heads_over_budget`]), and its memory is freed.

use std::error::Error;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper::body::{Body, Bytes, Frame, SizeHint};

use crate::errors::{ApiError, ErrorCode};

/// What the requests being received may hold at once unless `max_receiving_mb` says otherwise:
/// about five hundred of the largest batches, or thousands of usual ones.
pub const DEFAULT_RECEIVING_BYTES: usize = 256 << 20;

/// The bytes of request bodies received and not yet read to their end, against the limit.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    in_use: AtomicUsize,
}

/// A request's head or a body's part arrived while the requests being received already held
/// the budget.
#[derive(Debug, Clone, thiserror::Error)]
#[error(
    "the requests being received at once (their headers and bodies) hold the most memory the \
     server allows them ({limit_mb} MB, `max_receiving_mb` in kith.toml)"
)]
pub struct OverBudget {
    pub limit_mb: usize,
}

impl From<&OverBudget> for ApiError {
    /// The answer to a request refused for the budget, whether at its head or in its body.
    fn from(over: &OverBudget) -> Self {
        ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{over}; nothing from this request was stored, retry after the Retry-After delay"
            ),
        )
    }
}

impl BodyBudget {
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit: limit_bytes,
            in_use: AtomicUsize::new(0),
        }
    }

    /// The bytes held by bodies being received.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Counts `bytes` in, unless that would pass the limit.
    fn take(&self, bytes: usize) -> bool {
        let before = self.in_use.fetch_add(bytes, Ordering::Relaxed);
        if before.saturating_add(bytes) > self.limit {
            self.in_use.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn give_back(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn over_budget(&self) -> OverBudget {
        OverBudget {
            limit_mb: self.limit >> 20,
        }
    }

    /// Counts an HTTP/2 `request`'s head in until the returned hold is dropped, unless that
    /// would pass the limit. HTTP/1 heads are not counted: a connection holds one at a time, in
    /// hyper's read buffer, and the limit on connections bounds them; refusing one before its
    /// body is read would close its connection while the client may still be sending, so it
    /// could see a reset instead of the answer (bodies past the budget are passed over first).
    pub(crate) fn hold_head<B>(
        self: &Arc<Self>,
        request: &hyper::Request<B>,
    ) -> Result<Option<Held>, OverBudget> {
        if request.version() != hyper::Version::HTTP_2 {
            return Ok(None);
        }
        let bytes = head_bytes(request);
        if self.take(bytes) {
            return Ok(Some(Held {
                budget: self.clone(),
                bytes,
            }));
        }
        metrics::counter!("kith_http_heads_over_budget_total").increment(1);
        Err(self.over_budget())
    }

    /// `body`, each part of it counted against the budget until the body is dropped (read to
    /// its end, or given up).
    pub(crate) fn counted<B>(self: &Arc<Self>, body: B) -> CountedBody<B> {
        CountedBody {
            body,
            budget: self.clone(),
            held: 0,
            passed_over: None,
        }
    }
}

/// The most of a refused body that is read and passed over, so that its client, still sending,
/// gets the answer rather than a connection reset (closing a socket with unread data resets
/// it, and the client's system drops the answer). More than any body the server takes.
const MOST_PASSED_OVER: usize = 1 << 20;

/// A request body whose parts count against a [`BodyBudget`] until it is dropped.
pub(crate) struct CountedBody<B> {
    body: B,
    budget: Arc<BodyBudget>,
    held: usize,
    /// Once over the budget: the bytes passed over since.
    passed_over: Option<usize>,
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

impl<B> CountedBody<B> {
    fn refusal(&self) -> Box<dyn Error + Send + Sync> {
        Box::new(self.budget.over_budget())
    }
}

/// What a header takes in memory besides its name and value: its entry in the request's
/// header map, and the list that links repeated names (about 100 bytes measured).
const HEADER_ENTRY_BYTES: usize = 128;

/// The memory `request`'s head holds, about.
fn head_bytes<B>(request: &hyper::Request<B>) -> usize {
    let headers: usize = request
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + HEADER_ENTRY_BYTES)
        .sum();
    let uri = request.uri();
    let uri_bytes = uri
        .authority()
        .map_or(0, |authority| authority.as_str().len())
        + uri.path_and_query().map_or(0, |path| path.as_str().len());
    uri_bytes + headers
}

/// Bytes of a request's head, counted against a [`BodyBudget`] until dropped.
pub(crate) struct Held {
    budget: Arc<BodyBudget>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give_back(self.bytes);
    }
}

/// Marks a request whose head came while the requests being received held the budget.
#[derive(Debug, Clone)]
struct HeadOverBudget(OverBudget);

/// What is kept of a request whose head is past the budget: its method, URL and `Origin` (for
/// the CORS headers of the refusal), marked for [`refuse_heads_over_budget`]. Its headers and
/// body are dropped now instead of when the refusal is answered: HTTP/2 hands over a
/// connection's requests faster than they are answered.
pub(crate) fn stand_in<B>(request: hyper::Request<B>, over: OverBudget) -> Request {
    let (parts, _body) = request.into_parts();
    let mut stand_in = Request::new(axum::body::Body::empty());
    *stand_in.method_mut() = parts.method;
    *stand_in.uri_mut() = parts.uri;
    *stand_in.version_mut() = parts.version;
    if let Some(origin) = parts.headers.get(hyper::header::ORIGIN) {
        stand_in
            .headers_mut()
            .insert(hyper::header::ORIGIN, origin.clone());
    }
    stand_in.extensions_mut().insert(HeadOverBudget(over));
    stand_in
}

/// Answers a request marked [`HeadOverBudget`] `429 overloaded` without running its route, so
/// that it holds nothing while it would wait for a body; every other request goes on.
pub(crate) async fn refuse_heads_over_budget(request: Request, next: Next) -> Response {
    if let Some(HeadOverBudget(over)) = request.extensions().get::<HeadOverBudget>() {
        return ApiError::from(over).into_response();
    }
    next.run(request).await
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    /// Each part, counted in; the first part past the budget turns the body to passing over
    /// the rest (holding none of it), and then to the refusal.
    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        loop {
            let frame = match Pin::new(&mut this.body).poll_frame(context) {
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) if this.passed_over.is_some() => {
                    return Poll::Ready(Some(Err(this.refusal())));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            let bytes = frame.data_ref().map_or(0, Bytes::len);
            let passed_over = match this.passed_over {
                None if this.budget.take(bytes) => {
                    this.held += bytes;
                    return Poll::Ready(Some(Ok(frame)));
                }
                None => {
                    metrics::counter!("kith_http_bodies_over_budget_total").increment(1);
                    bytes
                }
                Some(before) => before.saturating_add(bytes),
            };
            this.passed_over = Some(passed_over);
            if passed_over > MOST_PASSED_OVER {
                return Poll::Ready(Some(Err(this.refusal())));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        // A refused body still has its refusal to give, even once its parts have all come.
        self.passed_over.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    type Parts = std::vec::IntoIter<Result<Frame<Bytes>, std::io::Error>>;

    /// A body that arrives in parts of `sizes` bytes.
    fn parts(sizes: &[usize]) -> StreamBody<futures::stream::Iter<Parts>> {
        let frames: Vec<_> = sizes
            .iter()
            .map(|&size| Ok(Frame::data(Bytes::from(vec![b'x'; size]))))
            .collect();
        StreamBody::new(futures::stream::iter(frames))
    }

    #[tokio::test]
    async fn bodies_hold_the_budget_while_received_and_give_it_back_when_done() {
        let budget = Arc::new(BodyBudget::new(1000));
        let mut first = budget.counted(parts(&[300, 300]));
        first.frame().await.unwrap().unwrap();
        first.frame().await.unwrap().unwrap();
        assert_eq!(budget.in_use(), 600);

        // A second body may take what is left, and not a byte more: the rest of it is passed
        // over, holding nothing, and then it is refused.
        let mut second = budget.counted(parts(&[400, 1, 5000, 5000]));
        second.frame().await.unwrap().unwrap();
        let refused = second.frame().await.unwrap().unwrap_err();
        assert!(refused.is::<OverBudget>(), "{refused}");
        assert_eq!(budget.in_use(), 1000);
        assert_eq!(second.passed_over, Some(10_001));

        drop(second);
        drop(first);
        assert_eq!(budget.in_use(), 0);
        let whole = budget.counted(Full::new(Bytes::from(vec![b'x'; 1000])));
        assert_eq!(whole.collect().await.unwrap().to_bytes().len(), 1000);
        assert_eq!(budget.in_use(), 0);
    }

    #[test]
    fn heads_hold_the_budget_until_answered_and_past_it_keep_only_what_the_refusal_needs() {
        let head = |padding: usize| {
            hyper::Request::post("/v1/batch?x=1")
                .version(hyper::Version::HTTP_2)
                .header("authorization", "Basic a2V5Og==")
                .header("x-padding", "p".repeat(padding))
                .body(())
                .unwrap()
        };
        let budget = Arc::new(BodyBudget::new(2000));
        // The path and query, and each header's name, value and entry.
        let expected = 13 + (13 + 14 + HEADER_ENTRY_BYTES) + (9 + 1000 + HEADER_ENTRY_BYTES);
        let held = budget.hold_head(&head(1000)).unwrap().expect("counted");
        assert_eq!(budget.in_use(), expected);

        let over = budget
            .hold_head(&head(1000))
            .err()
            .expect("past the budget");
        assert_eq!(budget.in_use(), expected);
        // HTTP/1 heads are not counted (one a connection, in hyper's buffer).
        let mut http1 = head(1000);
        *http1.version_mut() = hyper::Version::HTTP_11;
        assert!(budget.hold_head(&http1).unwrap().is_none());
        assert_eq!(budget.in_use(), expected);

        // The refusal keeps the request's method, URL and origin, and nothing else.
        let mut refused = head(1000);
        refused
            .headers_mut()
            .insert(hyper::header::ORIGIN, "https://tienda.mx".parse().unwrap());
        let stand_in = stand_in(refused, over);
        assert_eq!(
            (stand_in.method(), stand_in.uri().to_string()),
            (&hyper::Method::POST, "/v1/batch?x=1".to_string())
        );
        assert_eq!(
            stand_in.headers().keys().collect::<Vec<_>>(),
            [hyper::header::ORIGIN]
        );
        assert!(stand_in.extensions().get::<HeadOverBudget>().is_some());

        drop(held);
        assert_eq!(budget.in_use(), 0);
        assert!(budget.hold_head(&head(1000)).unwrap().is_some());
    }
}
