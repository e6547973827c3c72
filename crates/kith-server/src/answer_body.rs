//! A query's answer as a response body: written out piece by piece as the client reads it, and
//! given up when the client stops reading.
//!
//! The answer counts in the memory the queries share until it has been sent (see
//! `kith_lake::query`). A client that stops reading without closing its connection (a paused
//! notebook, a hung script) would otherwise hold that memory, and turn every other query away,
//! for as long as the connection lives. A piece the client has not taken within the stall
//! limit ends the response: the answer's memory is given back and the connection is cut, so
//! the client sees a broken body rather than a short answer that looks whole. Pieces are small
//! (at most [`PIECE_BYTES`]), so that a client reading slowly but steadily takes one well within
//! the limit: rendered a batch at a time, a piece of CSV or JSON could be several MiB, which a
//! client reading at 1 MB/s took longer than a 5 s limit to take.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use kith_lake::QueryResult;
use kith_lake::output::{Encoding, Rendering};
use tokio::sync::mpsc;

/// The most a piece of an answer holds: 64 KiB, taken in a moment by any client that reads.
const PIECE_BYTES: usize = 64 << 10;

/// `result` as a body in `encoding`; a piece not taken within `stall_limit` ends it.
pub(crate) fn streamed(result: QueryResult, encoding: Encoding, stall_limit: Duration) -> Body {
    // One piece waits in the channel while the next is written: at most two batches' text
    // beside the answer itself (a batch is about 1 MiB of Arrow data, a few times that as JSON),
    // sent a small piece at a time.
    let (pieces, received) = mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    let complete = Arc::new(AtomicBool::new(false));
    let written = complete.clone();
    tokio::spawn(async move {
        for rendered in Rendering::new(result, encoding) {
            let rendered = rendered.map(Bytes::from).map_err(|e| {
                tracing::error!(error = %e, "could not encode a query answer; it was cut short");
                std::io::Error::other(e)
            });
            let failed = rendered.is_err();
            for piece in pieces_of(rendered) {
                match tokio::time::timeout(stall_limit, pieces.send(piece)).await {
                    Ok(Ok(())) if !failed => {}
                    // The error was handed on, or the client has gone.
                    Ok(_) => return,
                    Err(_) => {
                        tracing::warn!(
                            stall_limit_secs = stall_limit.as_secs_f64(),
                            "a query answer was not read for the stall limit; it was given up"
                        );
                        metrics::counter!("kith_query_answers_abandoned_total").increment(1);
                        return;
                    }
                }
            }
            // Each batch is a moment of work on the HTTP threads: let other requests in.
            tokio::task::yield_now().await;
        }
        written.store(true, Ordering::Release);
    });
    let stream = futures::stream::unfold(
        (received, complete, false),
        |(mut received, complete, ended)| async move {
            if ended {
                return None;
            }
            match received.recv().await {
                Some(piece) => Some((piece, (received, complete, false))),
                // The writer stopped: the answer is whole, or it was given up and the body
                // must end in an error, so the connection is cut instead of closed cleanly.
                None if complete.load(Ordering::Acquire) => None,
                None => Some((
                    Err(std::io::Error::other("the answer was given up")),
                    (received, complete, true),
                )),
            }
        },
    );
    Body::from_stream(stream)
}

/// `rendered` in pieces of at most [`PIECE_BYTES`] (sharing its bytes), or its error.
fn pieces_of(
    rendered: Result<Bytes, std::io::Error>,
) -> impl Iterator<Item = Result<Bytes, std::io::Error>> {
    let (mut text, error) = match rendered {
        Ok(text) => (text, None),
        Err(e) => (Bytes::new(), Some(e)),
    };
    let texts = std::iter::from_fn(move || {
        (!text.is_empty()).then(|| text.split_to(PIECE_BYTES.min(text.len())))
    });
    texts.map(Ok).chain(error.map(Err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use arrow::record_batch::RecordBatch;
    use futures::StreamExt;

    // A batch of wide rows renders as several MiB of CSV; the body hands it out in pieces of at
    // most 64 KiB, which together are the whole answer.
    #[tokio::test]
    async fn an_answer_goes_out_in_small_pieces_that_make_it_whole() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let rows = 2_000;
        let wide = "x".repeat(3_000);
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(0..rows)),
                Arc::new(StringArray::from_iter_values(
                    (0..rows).map(|_| wide.as_str()),
                )),
            ],
        )
        .unwrap();
        let result = QueryResult::new(schema, vec![batch], false);
        let whole: Vec<u8> = Rendering::new(result.uncounted(), Encoding::Csv)
            .map(|piece| piece.unwrap())
            .collect::<Vec<_>>()
            .concat();
        assert!(whole.len() > 5 << 20, "{}", whole.len());
        let mut body = streamed(result, Encoding::Csv, Duration::from_secs(5)).into_data_stream();
        let mut sent = Vec::new();
        let mut pieces = 0;
        while let Some(piece) = body.next().await {
            let piece = piece.unwrap();
            assert!(piece.len() <= PIECE_BYTES, "{}", piece.len());
            sent.extend_from_slice(&piece);
            pieces += 1;
        }
        assert_eq!(sent, whole);
        assert!(pieces >= whole.len() / PIECE_BYTES, "{pieces}");
    }

    #[test]
    fn an_encoding_error_follows_the_pieces_before_it() {
        let ok: Vec<_> = pieces_of(Ok(Bytes::from(vec![b'a'; PIECE_BYTES * 2 + 1]))).collect();
        let sizes: Vec<usize> = ok.iter().map(|p| p.as_ref().unwrap().len()).collect();
        assert_eq!(sizes, vec![PIECE_BYTES, PIECE_BYTES, 1]);
        let failed: Vec<_> = pieces_of(Err(std::io::Error::other("bad value"))).collect();
        assert_eq!(failed.len(), 1);
        assert!(failed[0].is_err());
    }
}
