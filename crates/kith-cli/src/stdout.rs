//! Writing results to standard output (and messages to standard error) without panicking when
//! it goes away.
//!
//! `println!` panics when stdout cannot be written: a pipe closed early (`kith sql … | head`), a
//! full disk, a closed descriptor. Commands write through [`outln!`] and [`out!`] instead, which
//! hand the failure back as a [`StdoutError`]: `main` ends quietly for a closed pipe (the reader
//! has what it wanted) and reports anything else.

use std::io::Write;

/// Standard output could not be written.
#[derive(Debug, thiserror::Error)]
#[error("could not write to standard output: {0}")]
pub struct StdoutError(#[from] pub std::io::Error);

impl StdoutError {
    /// The reader went away (`| head`): not worth an error message.
    pub fn is_closed_pipe(&self) -> bool {
        self.0.kind() == std::io::ErrorKind::BrokenPipe
    }
}

pub fn write_out(args: std::fmt::Arguments) -> Result<(), StdoutError> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_fmt(args)?;
    // Flushed here so a failure is this call's, not a panic when stdout is dropped at exit.
    stdout.flush()?;
    Ok(())
}

/// `println!` that returns `Err(StdoutError)` instead of panicking.
macro_rules! outln {
    () => {
        $crate::stdout::write_out(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::stdout::write_out(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` that returns `Err(StdoutError)` instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write_out(format_args!($($arg)*))
    };
}

/// `eprintln!` for what a long-running command says: a stderr that can no longer be written (a
/// closed pipe, a full disk under the log file) loses the message instead of panicking, which
/// `eprintln!` does, and which would take the server down.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
