//! The process's limit on open files, raised for `kith serve`.
//!
//! Every client connection holds a file descriptor, as do the journal, the Delta files being
//! written and read, and the query workers' pipes. Many systems start a process with a soft
//! limit of 1,024 (systemd's default `LimitNOFILE=1024:524288`), low enough for a few hundred
//! SDK clients keeping connections alive to reach, after which the server accepts nothing. The
//! soft limit may be raised to the hard one without privileges, as Go's runtime and many servers
//! do at start-up.

/// The highest number of open files asked for, even where the hard limit is unlimited: Linux
/// refuses more than `fs.nr_open` (1,048,576 by default).
const MOST_OPEN_FILES: u64 = 1 << 20;

/// Raises the soft limit on open files to the hard limit; returns `(before, after)`, or `None`
/// where the limit cannot be read or changed (then it stays as it was).
#[cfg(unix)]
pub fn raise_limit() -> Option<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given, which lives on our stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let before = limit.rlim_cur;
    let wanted = limit.rlim_max.min(MOST_OPEN_FILES);
    if wanted <= before {
        return Some((before, before));
    }
    let raised = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct it is given and changes only this process's limit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        return None;
    }
    Some((before, wanted))
}

#[cfg(not(unix))]
pub fn raise_limit() -> Option<(u64, u64)> {
    None
}
