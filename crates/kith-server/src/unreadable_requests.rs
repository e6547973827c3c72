//! Answers, in the API's error shape, the requests hyper cannot read.
//!
//! A request whose request line or headers are not valid HTTP/1.1, whose URI is over 65,534
//! bytes, or whose headers are too many or too large never reaches a route: hyper answers it
//! itself (`on_parse_error`) with a 400, 414 or 431 and an empty body, and closes the connection.
//! hyper offers no hook to give that answer a body, and every other error Kith answers is
//! `{message, code, type, link}`, so each accepted connection is wrapped in [`ExplainedIo`],
//! which recognizes that answer as it is written and writes an explained one in its place.
//!
//! hyper's automatic answer is one head, written alone and flushed before the connection
//! closes: `HTTP/1.1 <status>`, `connection: close`, `content-length: 0` and `date`. No route
//! answers such a head: every 400 Kith's routes give carries a JSON body, and they give no 414
//! or 431 at all.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::errors::{ApiError, ErrorCode};

/// hyper's limits on a request's head: the URI's length and the number of header lines (its
/// defaults, which Kith keeps), and the bytes of the whole head (which Kith sets). Named in the
/// answers. A whole head may take 128 KiB rather than hyper's 408 KiB: room for a pixel URL as
/// long as it may be and 60 KB of headers, while a head still arriving holds that much of the
/// connection's buffer (and its doubling), unseen by `max_receiving_mb`; 1,500 connections part-way
/// through 390 KB heads held 440 KB each (`bench/http/unfinished_heads.py`).
const MAX_URI_BYTES: usize = 65_534;
const MAX_HEADER_LINES: usize = 100;
pub(crate) const MAX_HEAD_BYTES: usize = 128 << 10;

/// hyper's automatic answer is a status line and three short headers: well under this.
const HYPER_HEAD_BYTES: usize = 256;

/// A connection that writes an explained answer in place of hyper's empty one.
pub struct ExplainedIo<IO> {
    inner: IO,
    replacing: Option<Replacement>,
}

/// An explained answer being written in place of hyper's head.
struct Replacement {
    bytes: Vec<u8>,
    written: usize,
    /// How many of hyper's bytes it stands for: reported written once it is all written.
    stands_for: usize,
}

impl<IO> ExplainedIo<IO> {
    pub fn new(inner: IO) -> ExplainedIo<IO> {
        ExplainedIo {
            inner,
            replacing: None,
        }
    }
}

impl<IO: AsyncWrite + Unpin> ExplainedIo<IO> {
    /// Writes the explained answer in place of `head` when `head` is hyper's answer to an
    /// unreadable request, or goes on with one under way, and reports `head` written once the
    /// answer is; `None` when there is nothing to replace and `head` is to be written as it is.
    fn poll_explained(
        &mut self,
        cx: &mut Context<'_>,
        head: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        if self.replacing.is_none() {
            self.replacing = Some(Replacement {
                bytes: explained(head)?,
                written: 0,
                stands_for: head.len(),
            });
        }
        let replacement = self.replacing.as_mut()?;
        while replacement.written < replacement.bytes.len() {
            let rest = &replacement.bytes[replacement.written..];
            match Pin::new(&mut self.inner).poll_write(cx, rest) {
                Poll::Pending => return Some(Poll::Pending),
                Poll::Ready(Err(e)) => return Some(Poll::Ready(Err(e))),
                Poll::Ready(Ok(0)) => {
                    return Some(Poll::Ready(Err(io::ErrorKind::WriteZero.into())));
                }
                Poll::Ready(Ok(wrote)) => replacement.written += wrote,
            }
        }
        let stands_for = replacement.stands_for.min(head.len());
        self.replacing = None;
        Some(Poll::Ready(Ok(stands_for)))
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for ExplainedIo<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for ExplainedIo<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(explaining) = this.poll_explained(cx, buf) {
            return explaining;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        // hyper queues a head as a slice of its own, first of what it writes.
        if let Some(first) = bufs.iter().find(|slice| !slice.is_empty())
            && let Some(explaining) = this.poll_explained(cx, first)
        {
            return explaining;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
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

/// The statuses [`explained`] answers: each starts at 0 (see `metric_catalog::describe_all`).
pub(crate) const UNREADABLE_STATUSES: [&str; 3] = ["400", "414", "431"];

/// The explained answer for `head`, when `head` is hyper's answer to an unreadable request:
/// the same status line and headers, with a JSON body.
fn explained(head: &[u8]) -> Option<Vec<u8>> {
    // Every write passes here, answers and bodies of megabytes included: most are told apart
    // by their first bytes, before anything is parsed.
    let client_error = head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.0 4");
    if !client_error || head.len() > HYPER_HEAD_BYTES {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let lines = text.strip_suffix("\r\n\r\n")?;
    let mut lines = lines.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))?
        .get(..3)?;
    let error = match status {
        "400" => ApiError::new(
            ErrorCode::MalformedRequest,
            "the request cannot be read as HTTP/1.1: its request line (which reads like `POST \
             /v1/batch HTTP/1.1`) or a header line is malformed (a method or header name with a character \
             not allowed in it, a path with a space or control character, a header line without \
             `:`), or the length of its body cannot be told (a `Content-Length` that is not a \
             number or is sent twice with different values, a `Transfer-Encoding` that does not \
             end in `chunked`). Kith did not act on it, and closes the connection",
        ),
        "414" => ApiError::new(
            ErrorCode::UriTooLong,
            format!(
                "the request's path and query string are over {MAX_URI_BYTES} bytes: send the \
                 data in the body of a POST instead (an event may be up to 32 KB, a batch up to \
                 500 KB)"
            ),
        ),
        "431" => ApiError::new(
            ErrorCode::HeadersTooLarge,
            format!(
                "the request has more than {MAX_HEADER_LINES} header lines, or its request line \
                 and headers are over {} KiB together: send fewer or smaller headers (a large \
                 cookie is the usual cause)",
                MAX_HEAD_BYTES / 1024
            ),
        ),
        _ => return None,
    };
    let mut closes = false;
    let mut empty = false;
    let mut kept = Vec::new();
    for line in lines {
        match line {
            "connection: close" => closes = true,
            "content-length: 0" => {
                empty = true;
                continue;
            }
            // Only the headers hyper writes on such an answer.
            _ if line.starts_with("date: ") => {}
            _ => return None,
        }
        kept.push(line);
    }
    if !(closes && empty) {
        return None;
    }
    metrics::counter!("kith_http_unreadable_requests_total", "status" => status.to_string())
        .increment(1);
    tracing::debug!(status, "answered a request hyper could not read");
    let body = error.body().to_string();
    let mut answer = String::with_capacity(head.len() + body.len() + 64);
    answer.push_str(status_line);
    answer.push_str("\r\n");
    for line in kept {
        answer.push_str(line);
        answer.push_str("\r\n");
    }
    // As the routes answer any origin, so that a browser's SDK can read what went wrong.
    answer.push_str("access-control-allow-origin: *\r\n");
    answer.push_str("content-type: application/json\r\n");
    answer.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    answer.push_str(&body);
    Some(answer.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_of(head: &str) -> Option<(String, serde_json::Value)> {
        let answer = String::from_utf8(explained(head.as_bytes())?).unwrap();
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .unwrap();
        assert_eq!(length.parse::<usize>().unwrap(), body.len(), "{answer}");
        Some((head.to_string(), serde_json::from_str(body).unwrap()))
    }

    const DATE: &str = "date: Sun, 06 Dec 2026 21:35:55 GMT";

    #[test]
    fn hyper_s_empty_answers_get_a_body_naming_the_problem() {
        for (status, code, names) in [
            ("400 Bad Request", "malformed_request", "request line"),
            ("414 URI Too Long", "uri_too_long", "65534 bytes"),
            (
                "431 Request Header Fields Too Large",
                "headers_too_large",
                "100 header lines",
            ),
        ] {
            let head = format!(
                "HTTP/1.1 {status}\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
            );
            let (head, body) = answer_of(&head).unwrap();
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}\r\n")),
                "{head}"
            );
            assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
            assert!(head.contains(&format!("\r\n{DATE}\r\n")), "{head}");
            assert!(head.contains("content-type: application/json"), "{head}");
            assert_eq!(body["code"], code);
            assert_eq!(body["link"], format!("/docs/errors#{code}"));
            assert!(body["message"].as_str().unwrap().contains(names), "{body}");
        }
    }

    #[test]
    fn other_answers_pass_unchanged() {
        for head in [
            // A route's answers: with a body, kept alive, or another status.
            "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 80\r\nconnection: close\r\n\r\n",
            "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 404 Not Found\r\nconnection: close\r\ncontent-length: 0\r\n\r\n",
            // A head with a body after it, or a body alone.
            "HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\n\r\nx",
            "{\"message\":\"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n\"}",
            "",
        ] {
            assert!(explained(head.as_bytes()).is_none(), "{head:?}");
        }
    }

    /// A writer that takes at most `step` bytes a call, and is not ready every other call.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
        ready: bool,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.ready = !self.ready;
            if !self.ready {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_explained_answer_is_written_whole_through_short_writes() {
        use tokio::io::AsyncWriteExt;
        let head = format!(
            "HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\n{DATE}\r\n\r\n"
        );
        let mut io = ExplainedIo::new(Trickle {
            out: Vec::new(),
            step: 7,
            ready: false,
        });
        io.write_all(head.as_bytes()).await.unwrap();
        // What follows the replaced head passes as it is.
        io.write_all(b"after").await.unwrap();
        let written = String::from_utf8(io.inner.out).unwrap();
        let expected = String::from_utf8(explained(head.as_bytes()).unwrap()).unwrap();
        assert_eq!(written, format!("{expected}after"));
        assert!(
            written.contains("\"code\":\"headers_too_large\""),
            "{written}"
        );
    }
}
