//! The memory queries may use, shared by every query of a lake, and the answers counted in it.
//!
//! DataFusion counts what its operators hold (sorts, aggregates, joins) against a memory pool.
//! Two things it does not count could still take the server's memory: the answer collected
//! for the client, and the fact that each query used to get a pool of its own, so ten queries
//! at once could hold ten times the limit. Here one pool serves every query with the same
//! limit, and each answer is counted in it, batch by batch, while it is collected and until
//! it has been sent. Each query reaches the pool through its own [`QueryShare`], which knows
//! what the query holds, so a query refused memory it would have had alone is told to come
//! back (the server is busy) rather than that it asks too much.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayData, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::error::Result as DataFusionResult;
use datafusion::execution::memory_pool::{
    GreedyMemoryPool, MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
    TrackConsumersPool,
};
use datafusion::prelude::DataFrame;
use futures::StreamExt;

use super::{MemoryPurpose, QueryError, QueryLimits, classify};

/// One memory pool per purpose and limit, so that queries running at once share their limit
/// instead of each having one. A server runs each purpose's queries under one limit, so in
/// practice there is one pool for each purpose.
#[derive(Default)]
pub(crate) struct QueryMemory {
    pools: Mutex<HashMap<(MemoryPurpose, usize), Arc<dyn MemoryPool>>>,
}

impl QueryMemory {
    pub(crate) fn pool(&self, purpose: MemoryPurpose, limit_bytes: usize) -> Arc<dyn MemoryPool> {
        // A poisoned lock only means another query panicked while inserting; the map is whole.
        let mut pools = self
            .pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        pools
            .entry((purpose, limit_bytes))
            .or_insert_with(|| {
                // What `RuntimeEnvBuilder::with_memory_limit` builds (tracking the 5 largest
                // consumers for its messages), made once and shared.
                let five = NonZeroUsize::MIN.saturating_add(4);
                Arc::new(TrackConsumersPool::new(
                    GreedyMemoryPool::new(limit_bytes),
                    five,
                ))
            })
            .clone()
    }
}

/// One query's way into the shared pool: every reservation of the query goes through it, so it
/// knows how much the query holds, and whether the query was refused memory that would have
/// fitted had it run alone.
#[derive(Debug)]
pub(crate) struct QueryShare {
    shared: Arc<dyn MemoryPool>,
    limit_bytes: usize,
    held: AtomicUsize,
    crowded_out: AtomicBool,
}

impl QueryShare {
    pub(crate) fn new(shared: Arc<dyn MemoryPool>, limit_bytes: usize) -> QueryShare {
        QueryShare {
            shared,
            limit_bytes,
            held: AtomicUsize::new(0),
            crowded_out: AtomicBool::new(false),
        }
    }

    /// Whether the query was last refused memory only because other queries held it.
    pub(crate) fn crowded_out(&self) -> bool {
        self.crowded_out.load(Ordering::Relaxed)
    }
}

/// A refusal for memory, as [`QueryError::Crowded`] when the query (reaching the pool through
/// `pool`, its [`QueryShare`]) would have had the memory alone.
pub(crate) fn crowded_out(err: QueryError, pool: &Arc<dyn MemoryPool>) -> QueryError {
    let crowded = pool
        .downcast_ref::<QueryShare>()
        .is_some_and(QueryShare::crowded_out);
    match err {
        QueryError::OutOfMemory(limit)
        | QueryError::AnswerTooLarge(limit)
        | QueryError::TablesTooLarge { limit, .. }
            if crowded =>
        {
            QueryError::Crowded(limit)
        }
        other => other,
    }
}

impl std::fmt::Display for QueryShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "one query's share of {} (it holds {} bytes)",
            self.shared,
            self.held.load(Ordering::Relaxed)
        )
    }
}

impl MemoryPool for QueryShare {
    fn name(&self) -> &str {
        "kith_query_share"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer);
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer);
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.held.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.held.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> DataFusionResult<()> {
        match self.shared.try_grow(reservation, additional) {
            Ok(()) => {
                self.held.fetch_add(additional, Ordering::Relaxed);
                Ok(())
            }
            Err(refused) => {
                // The latest refusal is the one that ended the query (an operator that spills
                // goes on after one).
                let alone = self.held.load(Ordering::Relaxed).saturating_add(additional);
                self.crowded_out
                    .store(alone <= self.limit_bytes, Ordering::Relaxed);
                Err(refused)
            }
        }
    }

    fn reserved(&self) -> usize {
        self.shared.reserved()
    }

    fn memory_limit(&self) -> MemoryLimit {
        self.shared.memory_limit()
    }
}

/// Runs `frame` and collects its batches, counting each in `pool` as it arrives. The
/// reservation is handed back with the batches: the answer stays counted until it is dropped,
/// which for the API is once the response body has been sent. `planned` is set when the plan
/// is ready to run (optimized and made physical).
pub(crate) async fn collect_counted(
    frame: DataFrame,
    pool: &Arc<dyn MemoryPool>,
    limits: &QueryLimits,
    planned: &std::sync::OnceLock<std::time::Instant>,
) -> Result<(Vec<RecordBatch>, MemoryReservation), QueryError> {
    let reservation = MemoryConsumer::new("query answer").register(pool);
    let mut stream = frame
        .execute_stream()
        .await
        .map_err(|e| classify(e, limits))?;
    let _ = planned.set(std::time::Instant::now());
    let schema = answered_schema(&stream.schema());
    let mut batches = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = answered(batch.map_err(|e| classify(e, limits))?, &schema)?;
        reservation
            .try_grow(held_bytes(&batch))
            .map_err(|_| QueryError::AnswerTooLarge(limits.memory_bytes))?;
        batches.push(batch);
    }
    Ok((batches, reservation))
}

/// The type an answer's column is given: text and binary views as plain text and binary, also
/// inside lists, structs and maps. A view array the engine sorted, filtered, limited or
/// aggregated keeps the data buffers of the pages its values came from, whole: 20,000 rows
/// taken from 600,000 held hundreds of MB that the answer's count never saw, Arrow IPC (which
/// writes a view array's buffers as they are) sent them to the server once for each batch
/// sharing them (816 MB for an answer of 5.7 MB as JSON), and an `array_agg` of five rows was
/// counted at the size of every page behind it. Cast to plain types, an answer holds the
/// values its rows show and no more, and Arrow clients that read no views can read it.
pub(crate) fn answered_type(data_type: &DataType) -> DataType {
    let field = |field: &arrow::datatypes::FieldRef| Arc::new(answered_field(field));
    match data_type {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        DataType::List(item) => DataType::List(field(item)),
        DataType::LargeList(item) => DataType::LargeList(field(item)),
        DataType::FixedSizeList(item, size) => DataType::FixedSizeList(field(item), *size),
        DataType::Struct(fields) => DataType::Struct(fields.iter().map(field).collect()),
        DataType::Map(entries, sorted) => DataType::Map(field(entries), *sorted),
        other => other.clone(),
    }
}

/// `field` in its [`answered_type`].
fn answered_field(field: &arrow::datatypes::Field) -> arrow::datatypes::Field {
    field
        .clone()
        .with_data_type(answered_type(field.data_type()))
}

/// `schema` with each column in its [`answered_type`].
pub(crate) fn answered_schema(schema: &arrow::datatypes::Schema) -> SchemaRef {
    let fields: Vec<arrow::datatypes::Field> =
        schema.fields().iter().map(|f| answered_field(f)).collect();
    Arc::new(arrow::datatypes::Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    ))
}

/// `batch` in the answer's `schema` (see [`answered_type`]): columns of another type are cast,
/// which copies the values their rows show; the others are kept as they are.
pub(crate) fn answered(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch, QueryError> {
    if batch.schema().fields() == schema.fields() {
        return Ok(batch);
    }
    super::conform(&batch, schema).map_err(|e| {
        QueryError::Internal(format!("an answer could not be cast to plain types: {e}"))
    })
}

/// The first row of `batches` (counted from 1) that holds more than `limit` bytes, and its
/// size. Rows are measured one by one only in a batch larger than `limit` as a whole; a null
/// counts as nothing (a null list may still span values it does not show).
pub(crate) fn row_larger_than(batches: &[RecordBatch], limit: usize) -> Option<(usize, usize)> {
    let row_bytes = |batch: &RecordBatch, row: usize| {
        batch
            .columns()
            .iter()
            .filter(|column| column.is_valid(row))
            .map(|column| array_bytes(&column.slice(row, 1).to_data()))
            .fold(0usize, usize::saturating_add)
    };
    let mut rows_before = 0;
    for batch in batches {
        if held_bytes(batch) > limit {
            let found = (0..batch.num_rows())
                .map(|row| (row, row_bytes(batch, row)))
                .find(|(_, bytes)| *bytes > limit);
            if let Some((row, bytes)) = found {
                return Some((rows_before + row + 1, bytes));
            }
        }
        rows_before += batch.num_rows();
    }
    None
}

/// The bytes `batch`'s rows take. A batch may be a slice of a larger one (the freshest events
/// are buffered in large batches, and `LIMIT` cuts them), so this counts the rows it covers
/// rather than the buffers it shares.
pub(crate) fn held_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| array_bytes(&column.to_data()))
        .fold(0usize, usize::saturating_add)
}

fn array_bytes(data: &ArrayData) -> usize {
    let nulls = data.nulls().map_or(0, |_| data.len().div_ceil(8));
    match data.data_type() {
        // A view is 16 bytes; a value longer than 12 bytes lives in a data buffer, which the
        // slice size Arrow computes leaves out.
        DataType::Utf8View | DataType::BinaryView => {
            let views = data.buffer::<u128>(0);
            let outside: usize = views
                .iter()
                .take(data.len())
                .map(|view| *view as u32 as usize)
                .filter(|&length| length > 12)
                .sum();
            (16 * data.len())
                .saturating_add(outside)
                .saturating_add(nulls)
        }
        // Without views inside, Arrow's own slice size is right; nested types are rare in an
        // answer and are counted whole, as an upper bound.
        data_type if !data_type.is_nested() => data
            .get_slice_memory_size()
            .unwrap_or_else(|_| data.get_array_memory_size()),
        _ => data.get_array_memory_size(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int64Array, StringArray, StringViewArray};
    use arrow::datatypes::{Field, Schema};

    fn batch(column: Arc<dyn Array>) -> RecordBatch {
        let schema = Schema::new(vec![Field::new("c", column.data_type().clone(), true)]);
        RecordBatch::try_new(Arc::new(schema), vec![column]).unwrap()
    }

    /// Three rows taken from 10,000 of 100 bytes each, alone or inside a list, a struct and a
    /// map: as the engine leaves them they carry the whole megabyte into Arrow IPC (and into
    /// the answer's count); in the answer's types, only their own 300 bytes.
    #[test]
    fn answers_carry_only_the_text_their_rows_show() {
        use arrow::array::{BinaryViewArray, ListArray, MapArray, StructArray};
        use arrow::buffer::OffsetBuffer;
        let ipc_bytes = |batch: &RecordBatch| {
            let mut writer =
                arrow::ipc::writer::StreamWriter::try_new(Vec::new(), &batch.schema()).unwrap();
            writer.write(batch).unwrap();
            writer.into_inner().unwrap().len()
        };
        let values: Vec<String> = (0..10_000).map(|i| format!("{i:0>100}")).collect();
        let rows = arrow::array::UInt32Array::from(vec![5, 5_000, 9_999]);
        let taken = |column: ArrayRef| arrow::compute::take(&column, &rows, None).unwrap();
        let text: ArrayRef = Arc::new(StringViewArray::from_iter_values(values.iter()));
        let picked_text = taken(text.clone());
        let item = Arc::new(Field::new("item", DataType::Utf8View, true));
        let keys = Arc::new(Field::new("keys", DataType::Utf8View, false));
        let entries = Arc::new(Field::new(
            "entries",
            DataType::Struct(
                vec![
                    keys.clone(),
                    Arc::new(Field::new("values", DataType::Utf8View, true)),
                ]
                .into(),
            ),
            false,
        ));
        let one_each = OffsetBuffer::from_lengths([1, 1, 1]);
        let columns: Vec<ArrayRef> = vec![
            picked_text.clone(),
            taken(Arc::new(BinaryViewArray::from_iter_values(values.iter()))),
            Arc::new(ListArray::new(
                item,
                one_each.clone(),
                picked_text.clone(),
                None,
            )),
            Arc::new(StructArray::new(
                vec![keys.clone()].into(),
                vec![picked_text.clone()],
                None,
            )),
            Arc::new(MapArray::new(
                entries.clone(),
                one_each,
                StructArray::new(
                    match entries.data_type() {
                        DataType::Struct(fields) => fields.clone(),
                        _ => unreachable!(),
                    },
                    vec![picked_text.clone(), picked_text.clone()],
                    None,
                ),
                None,
                false,
            )),
        ];
        for column in columns {
            let as_left = batch(column);
            assert!(ipc_bytes(&as_left) > 1_000_000, "{}", ipc_bytes(&as_left));
            let schema = answered_schema(&as_left.schema());
            let answer = answered(as_left.clone(), &schema).unwrap();
            assert!(
                ipc_bytes(&answer) < 3_000,
                "{}: {}",
                as_left.column(0).data_type(),
                ipc_bytes(&answer)
            );
            assert!(held_bytes(&answer) < 10_000, "{}", held_bytes(&answer));
            // The same values, in plain types.
            let text = |batch: &RecordBatch| {
                arrow::util::pretty::pretty_format_batches(std::slice::from_ref(batch))
                    .unwrap()
                    .to_string()
            };
            assert_eq!(text(&answer), text(&as_left));
            assert!(
                !format!("{:?}", answer.schema()).contains("View"),
                "{:?}",
                answer.schema()
            );
        }
        // Batches without views are handed back as they are.
        let numbers = batch(Arc::new(Int64Array::from(vec![1, 2])));
        let schema = answered_schema(&numbers.schema());
        assert_eq!(answered(numbers.clone(), &schema).unwrap(), numbers);
    }

    #[test]
    fn a_slice_counts_its_own_rows_not_the_buffers_it_shares() {
        let long = "x".repeat(1000);
        let text: Arc<dyn Array> = Arc::new(StringArray::from(vec![long.as_str(); 1000]));
        let whole = held_bytes(&batch(text.clone()));
        let slice = held_bytes(&batch(text.slice(0, 10)));
        assert!(whole >= 1_000_000, "{whole}");
        assert!((10_000..11_000).contains(&slice), "{slice}");
    }

    #[test]
    fn views_count_the_text_they_point_to() {
        let long = "y".repeat(100);
        let views: Arc<dyn Array> = Arc::new(StringViewArray::from(vec![
            long.as_str(),
            "short",
            long.as_str(),
        ]));
        // Three views, and two 100-byte values outside them; "short" is inside its view.
        assert_eq!(held_bytes(&batch(views.clone())), 3 * 16 + 200);
        assert_eq!(held_bytes(&batch(views.slice(1, 1))), 16);
    }

    #[test]
    fn numbers_count_their_width() {
        let numbers: Arc<dyn Array> = Arc::new(Int64Array::from_iter_values(0..1000));
        assert_eq!(held_bytes(&batch(numbers.slice(100, 10))), 80);
    }

    #[test]
    fn a_query_refused_memory_it_would_have_had_alone_knows_it_was_crowded_out() {
        let memory = QueryMemory::default();
        let pool = || memory.pool(MemoryPurpose::Queries, 1 << 20);
        let first = Arc::new(QueryShare::new(pool(), 1 << 20));
        let second = Arc::new(QueryShare::new(pool(), 1 << 20));
        let (first_pool, second_pool): (Arc<dyn MemoryPool>, Arc<dyn MemoryPool>) =
            (first.clone(), second.clone());
        let held = MemoryConsumer::new("a").register(&first_pool);
        held.try_grow(900 << 10).unwrap();
        // More than the limit even alone: not crowded out, too large.
        let other = MemoryConsumer::new("b").register(&second_pool);
        assert!(other.try_grow(2 << 20).is_err());
        assert!(!second.crowded_out());
        // Would fit alone: crowded out.
        assert!(other.try_grow(200 << 10).is_err());
        assert!(second.crowded_out());
        // What each holds is its own, and given back when dropped.
        assert_eq!(first.held.load(Ordering::Relaxed), 900 << 10);
        drop(held);
        assert_eq!(first.held.load(Ordering::Relaxed), 0);
        other.try_grow(200 << 10).unwrap();
        assert_eq!(second.held.load(Ordering::Relaxed), 200 << 10);
        assert!(!first.crowded_out());
    }

    #[test]
    fn queries_with_one_purpose_and_limit_share_one_pool() {
        let memory = QueryMemory::default();
        let first = memory.pool(MemoryPurpose::Queries, 1 << 20);
        let second = memory.pool(MemoryPurpose::Queries, 1 << 20);
        assert!(Arc::ptr_eq(&first, &second));
        assert!(!Arc::ptr_eq(
            &first,
            &memory.pool(MemoryPurpose::Queries, 2 << 20)
        ));
        // Model runs with the same amount have their own: they cannot crowd queries out.
        assert!(!Arc::ptr_eq(
            &first,
            &memory.pool(MemoryPurpose::ModelRuns, 1 << 20)
        ));
        let held = MemoryConsumer::new("a").register(&first);
        held.try_grow(900 << 10).unwrap();
        let other = MemoryConsumer::new("b").register(&second);
        assert!(other.try_grow(200 << 10).is_err());
        drop(held);
        other.try_grow(200 << 10).unwrap();
    }
}
