//! Giving memory back to the operating system when heavy work ends.
//!
//! The `kith` binary's allocator keeps freed memory for a while (half a minute, see
//! `kith-cli`'s `allocator.rs`) so that each seal of the event buffer can reuse the last one's.
//! An analysis or a large query frees hundreds of megabytes at once when it ends; kept that
//! long, they count against the server's resident memory, and add to the peak of whatever
//! runs next. So when such work ends on the query runtime, each of its threads, the next time
//! it goes idle, asks the allocator to return what it holds free (a hook the binary installs;
//! without one, nothing happens).

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static RELEASE: OnceLock<fn()> = OnceLock::new();
/// Bumped each time heavy work ends.
static FINISHED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The value of [`FINISHED`] this thread last released memory for.
    static RELEASED_FOR: Cell<u64> = const { Cell::new(0) };
}

/// Installs the allocator's "return free memory now" call. The first installed stays.
pub fn set_release(release: fn()) {
    let _ = RELEASE.set(release);
}

/// Heavy work (a query, an analysis, a model run) has ended.
pub(crate) fn heavy_work_done() {
    FINISHED.fetch_add(1, Ordering::Relaxed);
}

/// A query-runtime thread is going idle: releases free memory once after each end of heavy
/// work, not at every idle moment (idle moments come often while a query waits on files).
pub(crate) fn on_idle() {
    let finished = FINISHED.load(Ordering::Relaxed);
    RELEASED_FOR.with(|released| {
        if released.get() != finished {
            released.set(finished);
            if let Some(release) = RELEASE.get() {
                release();
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    static CALLS: AtomicUsize = AtomicUsize::new(0);

    fn count_call() {
        CALLS.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn an_idle_thread_releases_once_per_end_of_heavy_work() {
        set_release(count_call);
        // Run on a fresh thread: its record of releases starts empty.
        std::thread::spawn(|| {
            on_idle();
            let before = CALLS.load(Ordering::Relaxed);
            on_idle();
            assert_eq!(CALLS.load(Ordering::Relaxed), before, "nothing ended since");
            heavy_work_done();
            on_idle();
            on_idle();
            assert_eq!(CALLS.load(Ordering::Relaxed), before + 1);
        })
        .join()
        .unwrap();
    }
}
