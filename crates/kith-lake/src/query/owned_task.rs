//! A query's work as a task that ends with the one waiting for it. A dropped `JoinHandle`
//! detaches its task, so a query whose client hung up (or whose caller gave up) would go on
//! holding a core and its memory until its time limit; this handle aborts the task instead.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::task::{JoinError, JoinHandle};

/// A spawned task, aborted (at its next yield point) when this handle is dropped before it ends.
pub struct OwnedTask<T>(JoinHandle<T>);

impl<T> OwnedTask<T> {
    pub fn new(handle: JoinHandle<T>) -> OwnedTask<T> {
        OwnedTask(handle)
    }
}

impl<T> Future for OwnedTask<T> {
    type Output = Result<T, JoinError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for OwnedTask<T> {
    fn drop(&mut self) {
        // Aborting a task that has ended does nothing.
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn dropping_the_handle_stops_the_work_and_awaiting_it_gets_the_answer() {
        let finished = Arc::new(AtomicBool::new(false));
        let seen = finished.clone();
        let task = OwnedTask::new(tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            seen.store(true, Ordering::SeqCst);
        }));
        drop(task);
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        assert!(!finished.load(Ordering::SeqCst), "the dropped task went on");

        let answer = OwnedTask::new(tokio::spawn(async { 42 })).await.unwrap();
        assert_eq!(answer, 42);
    }
}
