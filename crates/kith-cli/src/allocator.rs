//! The process allocator: mimalloc, tuned for how Kith uses memory.
//!
//! Ingest allocates many small, short-lived objects per event (JSON maps, strings); mimalloc
//! handles that pattern markedly better than the system allocator. Each seal of the event buffer
//! then allocates and frees a few hundred MiB of Arrow and Parquet buffers every couple of
//! seconds. With mimalloc's default 1 s purge delay, that memory went back to the OS after every
//! seal and was faulted in and zeroed again for the next one (a sixth of the flush thread's time
//! in the ingest benchmark). Holding freed memory for half a minute lets the next seals reuse it;
//! peak RSS is unchanged, it is just released later.
//!
//! Events are allocated on the request threads and freed on others (the flush thread frees their
//! encoded records after sealing, the unify thread their identity facts). mimalloc's default lets
//! a thread that frees into an abandoned page take the page over only when it made the page
//! itself. Session 6 let any freeing thread take it over (`page_reclaim_on_free = 1`), which was
//! 4% faster then, with huge pages on; with them off it is the other way round, since every page
//! the flush thread takes over is one the request threads must get anew: five interleaved pairs
//! of the ingest benchmark, durable CPU 11.1 µs an event with the default against 11.9, durable /
//! no-op 0.52 against 0.48 (medians of ten rounds each). So that option is left at its default.
//!
//! Transparent huge pages are off for the process. mimalloc asks for them on its arenas
//! (`madvise(MADV_HUGEPAGE)`), so every 2 MiB of heap the process grows into, or takes back
//! after a purge, is one fault that zeroes the whole 2 MiB (and may compact memory to find it).
//! On the 2-core VM the benchmarks run on, that was a sixth of the durable ingest path's CPU
//! (`clear_page_erms` under `do_huge_pmd_anonymous_page`, from mimalloc extending a page's free
//! list), and worse while the heap grows: with them off, the ingest benchmark's durable path
//! took 11.7–15.4 µs of CPU an event instead of 12.6–21.6 (three interleaved pairs of two
//! rounds), a demo import of 30,000 customers loaded in 38 s instead of 55, and the analyses'
//! first runs took up to half the time. `MIMALLOC_ALLOW_THP` set in the environment (to 1 to
//! keep them) is left to mimalloc.
//!
//! Analyses and large queries are the other way round: they free hundreds of MiB once, at their
//! end, and nothing reuses it soon; the server hands that back at once (`release_free_memory`).
//!
//! The `system-allocator` feature leaves this module out (see `main.rs`), for heap profilers that
//! intercept `malloc`: they see nothing of mimalloc's own heap.

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3); the Rust bindings leave it unnamed.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;
/// Far longer than the default flush interval (2 s), so one seal's memory is still there for the
/// next: with 5 s some of it still went back between seals (a few percent of the flush thread
/// zeroing pages); with 30 s the ingest benchmark's durable path took 9.5–9.7 µs of CPU an event
/// instead of 9.9–10.9 (three interleaved runs each). Memory freed is returned half a minute
/// later, but only once the threads that held it call the allocator again: what request threads
/// freed just before the whole server went idle stays resident until requests come again
/// (1,500 connections part-way through 400 KB bodies left 400 MB resident 45 s after they
/// closed; with one request a second after them, 228 MB 40 s later; `bench/README.md`).
const PURGE_DELAY_MS: std::ffi::c_long = 30_000;

pub fn tune() {
    // SAFETY: mimalloc documents options as settable at any time from any thread; `main` calls
    // this before starting any other thread.
    unsafe {
        mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS);
    }
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        disable_transparent_huge_pages();
    }
}

/// Turns transparent huge pages off for the whole process, including the memory mimalloc
/// reserved before `main` (the kernel checks the flag at each fault, not at `madvise`). Setting
/// mimalloc's `allow_thp` option here would be too late for that first arena: mimalloc reads it
/// once, when it starts. A kernel without the call leaves things as they were, which is only
/// slower.
#[cfg(target_os = "linux")]
fn disable_transparent_huge_pages() {
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

#[cfg(not(target_os = "linux"))]
fn disable_transparent_huge_pages() {}

/// Returns the memory this thread's heap holds free, and everything freed program-wide that
/// waits out the purge delay, to the system now. The server calls it on its query threads when
/// an analysis or query has ended (`kith_server::memory`): what a large one frees would
/// otherwise stay resident for the whole delay.
pub fn release_free_memory() {
    // SAFETY: `mi_collect` may be called at any time from any thread.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// An option's value in effect.
#[cfg(test)]
fn option(index: mi_option_t) -> std::ffi::c_long {
    // SAFETY: reading an option has no preconditions.
    unsafe { libmimalloc_sys::mi_option_get(index) }
}

#[cfg(test)]
mod tests {
    /// One test, not two: `tune` changes process-wide state that the check of the default reads.
    #[test]
    fn tune_sets_the_purge_delay_mimalloc_documents_and_turns_off_huge_pages() {
        use super::{MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS, option};
        // mimalloc v3's default purge delay is 1000 ms (src/options.c): reading it before
        // tuning shows the index names that option.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(option(MI_OPTION_PURGE_DELAY), 1000);
        }
        super::tune();
        assert_eq!(option(MI_OPTION_PURGE_DELAY), PURGE_DELAY_MS);
        #[cfg(target_os = "linux")]
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // SAFETY: PR_GET_THP_DISABLE takes plain integers and returns the flag.
            let disabled = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            assert_eq!(disabled, 1, "tune() turns transparent huge pages off");
        }
    }
}
