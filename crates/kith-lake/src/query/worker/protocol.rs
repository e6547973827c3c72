//! What the server and a worker say to each other over the worker's stdin and stdout.
//!
//! A request is a header (a little-endian `u32` length, then JSON) and one Arrow IPC stream per
//! table, in the header's order. A reply is a header the same way; after an answer come its rows
//! as one IPC stream and a last header saying how the worker stands ([`Finished`]). A worker
//! reads its next request after that.

use std::io::{BufRead, BufWriter, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use datafusion::execution::memory_pool::MemoryReservation;
use serde::{Deserialize, Serialize};

use super::super::{ExtraTable, QueryError, QueryLimits, QueryResult, Sources, held_bytes};

/// What the worker is told, beside the tables' rows.
#[derive(Serialize, Deserialize)]
pub(super) struct Request {
    pub(super) sql: String,
    pub(super) timeout: Duration,
    pub(super) memory_bytes: usize,
    pub(super) max_rows: usize,
    /// The bytes of the tables handed over (see `serve::resident_room`).
    pub(super) input_bytes: usize,
    /// What the queries' shared memory has free as the worker starts: the worker's engine may
    /// take that much, so that a query crowded out by the answers being sent (counted there) is
    /// told to retry, as in the server.
    pub(super) available_bytes: usize,
    /// The event tables; the rows buffered since each one's Delta version follow as streams.
    pub(super) tables: Vec<EventTableAt>,
    /// The tables built for the query; their rows follow the event tables' as streams.
    pub(super) extra: Vec<ExtraTableName>,
    pub(super) tables_on_request: Vec<String>,
    /// How long the worker waits for the next request after answering this one, then exits
    /// with [`super::IDLE_EXIT`].
    pub(super) idle: Duration,
}

#[derive(Serialize, Deserialize)]
pub(super) struct EventTableAt {
    pub(super) name: String,
    pub(super) path: PathBuf,
    /// The Delta version the query reads; none while the table has no commit.
    pub(super) version: Option<u64>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct ExtraTableName {
    pub(super) name: String,
    pub(super) shared: bool,
}

#[derive(Serialize, Deserialize)]
pub(super) enum Reply {
    /// The rows follow as one stream, then [`Finished`].
    Answer { truncated: bool },
    /// The worker exits after saying so.
    Refused(QueryError),
}

/// The last word of a worker that answered, written once it has let go of the answer.
#[derive(Serialize, Deserialize)]
pub(super) struct Finished {
    /// The memory the worker still holds of its own: one holding much is not kept.
    pub(super) resident_bytes: u64,
}

/// The rows of one table, as they go to the worker.
pub(super) struct Stream {
    pub(super) schema: SchemaRef,
    pub(super) batches: Vec<RecordBatch>,
}

/// The request for `sql` over `sources` and `extra`, and the rows that follow it; the worker
/// waits `idle` for the next request once it has answered.
pub(super) fn request_for(
    sources: &Sources,
    sql: &str,
    limits: &QueryLimits,
    available_bytes: usize,
    idle: Duration,
    extra: Vec<ExtraTable>,
) -> (Request, Vec<Stream>) {
    let mut streams = Vec::new();
    let tables = sources
        .tables
        .iter()
        .map(|source| {
            streams.push(Stream {
                schema: source.schema.clone(),
                batches: source.view.buffered.clone(),
            });
            EventTableAt {
                name: source.name.clone(),
                path: source.path.clone(),
                version: source.view.delta.as_ref().and_then(|d| d.version()),
            }
        })
        .collect();
    let extra = extra
        .into_iter()
        .map(|table| {
            streams.push(Stream {
                schema: table.schema,
                batches: table.batches,
            });
            ExtraTableName {
                name: table.name,
                shared: table.shared,
            }
        })
        .collect();
    let input_bytes = streams
        .iter()
        .flat_map(|s| &s.batches)
        .map(held_bytes)
        .fold(0usize, usize::saturating_add);
    let request = Request {
        sql: sql.to_string(),
        timeout: limits.timeout,
        memory_bytes: limits.memory_bytes,
        max_rows: limits.max_rows,
        input_bytes,
        available_bytes,
        tables,
        extra,
        tables_on_request: sources.tables_on_request.clone(),
        idle,
    };
    (request, streams)
}

pub(super) fn write_header<T: Serialize>(out: &mut impl Write, header: &T) -> std::io::Result<()> {
    let json = serde_json::to_vec(header)?;
    let len = u32::try_from(json.len())
        .map_err(|_| std::io::Error::other("a query worker header over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)
}

pub(super) fn read_header<T: for<'de> Deserialize<'de>>(
    input: &mut impl Read,
) -> std::io::Result<T> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let mut json = vec![0u8; u32::from_le_bytes(len) as usize];
    input.read_exact(&mut json)?;
    Ok(serde_json::from_slice(&json)?)
}

pub(super) fn write_stream(
    out: &mut impl Write,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> std::io::Result<()> {
    let mut writer = StreamWriter::try_new(out, schema).map_err(std::io::Error::other)?;
    for batch in batches {
        writer.write(batch).map_err(std::io::Error::other)?;
    }
    writer.finish().map_err(std::io::Error::other)
}

pub(super) fn read_stream(input: &mut impl Read) -> std::io::Result<(SchemaRef, Vec<RecordBatch>)> {
    let reader = StreamReader::try_new(input, None).map_err(std::io::Error::other)?;
    let schema = reader.schema();
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(std::io::Error::other)?;
    Ok((schema, batches))
}

/// Writes a request and its tables' rows on the worker's stdin.
pub(super) fn write_request(
    stdin: &mut impl Write,
    request: &Request,
    streams: &[Stream],
) -> std::io::Result<()> {
    let mut out = BufWriter::new(stdin);
    write_header(&mut out, request)?;
    for stream in streams {
        write_stream(&mut out, &stream.schema, &stream.batches)?;
    }
    out.flush()
}

/// A worker's reply, as the server reads it.
pub(super) struct Replied {
    pub(super) answer: Result<QueryResult, QueryError>,
    /// How the worker stands after a whole answer; `None` when there was none (a refusal, an
    /// answer not read to its end) or the worker did not say.
    pub(super) finished: Option<Finished>,
}

/// Reads the worker's reply; `None` when its stdout closed before a word of one. An answer's
/// batches are counted in `memory` as they are read, so that the server never holds more of an
/// answer than the queries' memory allows: reading stops at the first batch that does not fit.
pub(super) fn read_reply(
    input: &mut impl BufRead,
    memory: MemoryReservation,
    limits: &QueryLimits,
) -> std::io::Result<Option<Replied>> {
    let refused = |err| {
        Some(Replied {
            answer: Err(err),
            finished: None,
        })
    };
    if input.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let truncated = match read_header(input)? {
        Reply::Answer { truncated } => truncated,
        Reply::Refused(err) => return Ok(refused(err)),
    };
    let reader = StreamReader::try_new(&mut *input, None).map_err(std::io::Error::other)?;
    let schema = reader.schema();
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(std::io::Error::other)?;
        if memory.try_grow(held_bytes(&batch)).is_err() {
            return Ok(refused(QueryError::AnswerTooLarge(limits.memory_bytes)));
        }
        batches.push(batch);
    }
    // The answer is whole: a worker that cannot say more is not kept, but its answer stands.
    let finished = read_header(input).ok();
    Ok(Some(Replied {
        answer: Ok(QueryResult {
            schema,
            batches,
            truncated,
            _memory: Some(memory),
        }),
        finished,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool};

    use super::*;

    fn numbers(values: Vec<i64>) -> (SchemaRef, RecordBatch) {
        let schema: SchemaRef = Arc::new(arrow::datatypes::Schema::new(vec![
            arrow::datatypes::Field::new("n", arrow::datatypes::DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(arrow::array::Int64Array::from(values))],
        )
        .unwrap();
        (schema, batch)
    }

    // An answer is counted as it is read, and reading stops at the first batch that does not
    // fit: the server never holds more of it than the queries' memory allows.
    #[test]
    fn an_answer_is_counted_as_it_is_read_and_reading_stops_where_it_does_not_fit() {
        use datafusion::execution::memory_pool::GreedyMemoryPool;
        let (schema, batch) = numbers(vec![7; 1000]);
        let mut pipe = Vec::new();
        write_header(&mut pipe, &Reply::Answer { truncated: false }).unwrap();
        write_stream(&mut pipe, &schema, &vec![batch.clone(); 3]).unwrap();
        write_header(&mut pipe, &Finished { resident_bytes: 9 }).unwrap();
        let bytes = held_bytes(&batch);
        let limits = QueryLimits::default();
        let read_within = |capacity: usize| {
            let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(capacity));
            let memory = MemoryConsumer::new("answer").register(&pool);
            let replied = read_reply(&mut pipe.as_slice(), memory, &limits).unwrap();
            (replied.unwrap(), pool)
        };
        let (replied, pool) = read_within(3 * bytes);
        let answer = replied.answer.unwrap();
        assert_eq!(answer.num_rows(), 3000);
        assert_eq!(replied.finished.map(|f| f.resident_bytes), Some(9));
        assert_eq!(pool.reserved(), 3 * bytes, "the answer stays counted");
        drop(answer);
        assert_eq!(pool.reserved(), 0, "and is given back with it");
        let (refused, pool) = read_within(bytes * 3 / 2);
        assert!(matches!(refused.answer, Err(QueryError::AnswerTooLarge(_))));
        assert!(refused.finished.is_none(), "the rest was not read");
        assert_eq!(pool.reserved(), 0);
    }

    // A reply read leaves the pipe at the next one: a worker answers many queries over it.
    #[test]
    fn replies_follow_one_another_on_one_pipe() {
        let (schema, batch) = numbers(vec![1, 2, 3]);
        let mut pipe = Vec::new();
        for truncated in [true, false] {
            write_header(&mut pipe, &Reply::Answer { truncated }).unwrap();
            write_stream(&mut pipe, &schema, std::slice::from_ref(&batch)).unwrap();
            write_header(&mut pipe, &Finished { resident_bytes: 1 }).unwrap();
        }
        write_header(
            &mut pipe,
            &Reply::Refused(QueryError::Timeout(Duration::from_secs(3))),
        )
        .unwrap();
        let mut input = pipe.as_slice();
        let pool: Arc<dyn MemoryPool> =
            Arc::new(datafusion::execution::memory_pool::UnboundedMemoryPool::default());
        let limits = QueryLimits::default();
        for truncated in [true, false] {
            let memory = MemoryConsumer::new("answer").register(&pool);
            let replied = read_reply(&mut input, memory, &limits).unwrap().unwrap();
            let answer = replied.answer.unwrap();
            assert_eq!(answer.truncated, truncated);
            assert_eq!(answer.batches, vec![batch.clone()]);
            assert!(replied.finished.is_some());
        }
        let memory = MemoryConsumer::new("answer").register(&pool);
        let last = read_reply(&mut input, memory, &limits).unwrap().unwrap();
        assert!(matches!(last.answer, Err(QueryError::Timeout(t)) if t == Duration::from_secs(3)));
        assert!(input.is_empty(), "every byte was read, and no more");
        // A pipe closed before a word is told apart from one closed within a reply.
        let memory = MemoryConsumer::new("answer").register(&pool);
        assert!(read_reply(&mut input, memory, &limits).unwrap().is_none());
        let memory = MemoryConsumer::new("answer").register(&pool);
        assert!(read_reply(&mut &pipe[..2], memory, &limits).is_err());
    }

    #[test]
    fn a_request_and_its_tables_follow_one_another_on_one_pipe() {
        let (schema, batch) = numbers(vec![4, 5]);
        let request = Request {
            sql: "SELECT 1".into(),
            timeout: Duration::from_secs(2),
            memory_bytes: 10,
            max_rows: 3,
            input_bytes: 0,
            available_bytes: 10,
            tables: vec![],
            extra: vec![],
            tables_on_request: vec!["profiles".into()],
            idle: Duration::from_millis(1500),
        };
        let streams = [
            Stream {
                schema: schema.clone(),
                batches: vec![batch.clone()],
            },
            Stream {
                schema: schema.clone(),
                batches: vec![],
            },
        ];
        let mut pipe = Vec::new();
        write_request(&mut pipe, &request, &streams).unwrap();
        write_request(&mut pipe, &request, &[]).unwrap();
        let mut input = pipe.as_slice();
        let read: Request = read_header(&mut input).unwrap();
        assert_eq!((read.sql.as_str(), read.max_rows), ("SELECT 1", 3));
        assert_eq!(
            read_stream(&mut input).unwrap(),
            (schema.clone(), vec![batch])
        );
        assert_eq!(read_stream(&mut input).unwrap(), (schema, vec![]));
        let again: Request = read_header(&mut input).unwrap();
        assert_eq!(again.tables_on_request, vec!["profiles".to_string()]);
        assert!(input.is_empty(), "every byte was read, and no more");
    }
}
