//! The memory that request bodies may hold while they are received, shared by every connection.
//!
//! Each body is read whole before it is parsed (at most 500 KB, see `ingest::read_body`), so
//! without a bound the memory held is the number of connections times the body size: mobile
//! SDKs flushing their queues at once after an outage, or clients that upload slowly on
//! purpose, could make the server run out of memory and be killed. Past the budget a body's
//! reading fails with [`OverBudget`], and its request is answered `429 overloaded` with
//! `Retry-After`: SDKs send the batch again, and nothing acknowledged is at risk.

use std::error::Error;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use hyper::body::{Body, Bytes, Frame, SizeHint};

/// What the bodies being received may hold at once unless `max_receiving_mb` says otherwise:
/// about five hundred of the largest batches, or thousands of usual ones.
pub const DEFAULT_RECEIVING_BYTES: usize = 256 << 20;

/// The bytes of request bodies received and not yet read to their end, against the limit.
#[derive(Debug)]
pub struct BodyBudget {
    limit: usize,
    in_use: AtomicUsize,
}

/// A body's part arrived while the bodies being received already held the budget.
#[derive(Debug, thiserror::Error)]
#[error(
    "the request bodies being received at once hold the most memory the server allows them \
     ({limit_mb} MB, `max_receiving_mb` in kith.toml)"
)]
pub struct OverBudget {
    pub limit_mb: usize,
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
        Box::new(OverBudget {
            limit_mb: self.budget.limit >> 20,
        })
    }
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
}
