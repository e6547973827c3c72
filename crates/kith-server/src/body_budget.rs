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
        }
    }
}

/// A request body whose parts count against a [`BodyBudget`] until it is dropped.
pub(crate) struct CountedBody<B> {
    body: B,
    budget: Arc<BodyBudget>,
    held: usize,
}

impl<B> Drop for CountedBody<B> {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

impl<B> Body for CountedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.body).poll_frame(context) {
            Poll::Ready(Some(Ok(frame))) => frame,
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
        };
        let bytes = frame.data_ref().map_or(0, Bytes::len);
        if !this.budget.take(bytes) {
            metrics::counter!("kith_http_bodies_over_budget_total").increment(1);
            let limit_mb = this.budget.limit >> 20;
            return Poll::Ready(Some(Err(Box::new(OverBudget { limit_mb }))));
        }
        this.held += bytes;
        Poll::Ready(Some(Ok(frame)))
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

        // A second body may take what is left, and not a byte more.
        let mut second = budget.counted(parts(&[400, 1]));
        second.frame().await.unwrap().unwrap();
        let refused = second.frame().await.unwrap().unwrap_err();
        assert!(refused.is::<OverBudget>(), "{refused}");
        assert_eq!(budget.in_use(), 1000);

        drop(second);
        drop(first);
        assert_eq!(budget.in_use(), 0);
        let whole = budget.counted(Full::new(Bytes::from(vec![b'x'; 1000])));
        assert_eq!(whole.collect().await.unwrap().to_bytes().len(), 1000);
        assert_eq!(budget.in_use(), 0);
    }
}
