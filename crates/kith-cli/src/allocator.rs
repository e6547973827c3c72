//! The process allocator: mimalloc, tuned for how Kith uses memory.
//!
//! Ingest allocates many small, short-lived objects per event (JSON maps, strings); mimalloc
//! handles that pattern markedly better than the system allocator. Each seal of the event buffer
//! then allocates and frees a few hundred MiB of Arrow and Parquet buffers every couple of
//! seconds. With mimalloc's default 1 s purge delay, that memory went back to the OS after every
//! seal and was faulted in and zeroed again for the next one (a sixth of the flush thread's time
//! in the ingest benchmark). Holding freed memory for a few seconds lets the next seal reuse it;
//! peak RSS is unchanged, it is just released later.

use libmimalloc_sys::{mi_option_set, mi_option_t};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (v2 and v3); the Rust bindings leave it unnamed.
const MI_OPTION_PURGE_DELAY: mi_option_t = 15;
/// Longer than the default flush interval (2 s), so one seal's memory is still there for the next.
const PURGE_DELAY_MS: std::ffi::c_long = 5_000;

pub fn tune() {
    // SAFETY: mimalloc documents options as settable at any time from any thread.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
}

/// The purge delay in effect, in milliseconds.
#[cfg(test)]
fn purge_delay_ms() -> std::ffi::c_long {
    // SAFETY: reading an option has no preconditions.
    unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_option_index_is_the_one_mimalloc_documents() {
        // mimalloc v3's default purge delay is 1000 ms (src/options.c): reading it before
        // tuning shows the index names that option.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(super::purge_delay_ms(), 1000);
        }
        super::tune();
        assert_eq!(super::purge_delay_ms(), super::PURGE_DELAY_MS);
    }
}
