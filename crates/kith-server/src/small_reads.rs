//! Reads from a connection a few kilobytes at a time, so that hyper's read buffer stays small.
//!
//! hyper sizes each connection's HTTP/1 read buffer by how much its last reads filled: a read
//! that fills the buffer doubles the next one, up to `max_buf_size` (128 KiB here; it is also
//! the most a request head may take, so it cannot be lowered further without refusing the long
//! URLs of pixel calls). A client sending a large body quickly grows the buffer of its
//! connection to hundreds of kilobytes, which it then keeps for as long as it stays open, and
//! which `max_receiving_mb` does not see: 1,500 connections part-way through 400 KB bodies
//! held about 240 KB each beyond the budget with hyper's default of 408 KiB
//! (`bench/http/receiving_bodies.py`). Reads of at most [`MOST_READ`] bytes keep the buffer
//! near that size, whatever the client sends.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most one read takes from the connection: the size of nginx's request body buffer on
/// 64-bit machines. In `receiving_bodies.py`, reads of 8 KiB held 25 KB a connection less, and
/// reads of 64 KiB about as much as unbounded ones.
pub const MOST_READ: usize = 16 << 10;

/// A connection whose reads take at most [`MOST_READ`] bytes each.
pub struct SmallReads<IO> {
    inner: IO,
}

impl<IO> SmallReads<IO> {
    pub fn new(inner: IO) -> Self {
        Self { inner }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for SmallReads<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if buf.remaining() <= MOST_READ {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let mut part = buf.take(MOST_READ);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut part))?;
        let read = part.filled().len();
        // SAFETY: the inner reader filled (so initialized) `read` bytes of `part`, which are the
        // first unfilled bytes of `buf`.
        unsafe { buf.assume_init(read) };
        buf.advance(read);
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for SmallReads<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_take_at_most_the_bound_and_every_byte_in_order() {
        let sent: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut reader = SmallReads::new(&sent[..]);
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 64 << 10];
        let mut reads = Vec::new();
        loop {
            let read = reader.read(&mut buffer).await.unwrap();
            if read == 0 {
                break;
            }
            reads.push(read);
            received.extend_from_slice(&buffer[..read]);
        }
        assert_eq!(received, sent);
        assert!(reads.iter().all(|&read| read <= MOST_READ), "{reads:?}");
        assert_eq!(reads.len(), sent.len().div_ceil(MOST_READ));

        // A buffer smaller than the bound is filled as the connection allows.
        let mut reader = SmallReads::new(&sent[..]);
        let mut small = [0u8; 100];
        assert_eq!(reader.read(&mut small).await.unwrap(), 100);
        assert_eq!(small[..], sent[..100]);
    }
}
