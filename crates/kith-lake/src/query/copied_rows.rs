//! How large a row may be where the engine copies rows: into a join's output, once for each row
//! it is joined with, and into an unnest's output, once for each element unnested. A join
//! builds each output batch (8,192 rows) in one step that the memory limit does not see, so one
//! large row joined with many others is copied thousands of times at once: a list of 5 million
//! values cross joined with a thousand rows took 17 GB before Arrow's offsets overflowed and the
//! engine panicked. Windows copy values onto the rows of a frame (`first_value`, `max(…) OVER
//! ()`), and a scalar subquery's value is copied onto every row of each batch that uses it.
//! Rows entering a cross join, an unnest or a window are held to [`MAX_COPIED_ROW_BYTES`],
//! which keeps such a batch to half a GiB at worst, and rows of ordinary data (an event is at
//! most 32 KB) below it; rows entering a join on equal keys, which copies a row only as often
//! as its key repeats, to [`MAX_EQUI_JOINED_ROW_BYTES`]; a scalar subquery's value to what a
//! constant may hold.

use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::replace_children_if_necessary;
use futures::{Stream, StreamExt};

use super::pass_through::{PassThroughExec, Watch};

/// The most bytes of text, binary and list values one row entering a cross join, an unnest or
/// a window may hold: each copies a row onto many others as a rule. An event is at most 32 KB,
/// and a batch of 8,192 copies of such a row is half a GiB.
pub(crate) const MAX_COPIED_ROW_BYTES: usize = 64 << 10;

/// The same for a join on equal keys, which copies a row as often as its key repeats on the
/// other side: usually a few times (a user's aggregated history joined to their profile), so
/// rows twice as large pass; a key that repeats thousands of times still copies a whole batch.
pub(crate) const MAX_EQUI_JOINED_ROW_BYTES: usize = 128 << 10;

/// What copies the rows entering an operator, by the operator's name, as the refusal says it,
/// and how large those rows may be.
fn copier(operator: &str) -> Option<(&'static str, usize)> {
    const JOIN: &str = "a join, which copies it once for each row it is joined with";
    Some(match operator {
        "HashJoinExec" | "SortMergeJoinExec" | "SymmetricHashJoinExec" => {
            (JOIN, MAX_EQUI_JOINED_ROW_BYTES)
        }
        "NestedLoopJoinExec" | "CrossJoinExec" | "PiecewiseMergeJoinExec" => {
            (JOIN, MAX_COPIED_ROW_BYTES)
        }
        "UnnestExec" => (
            "an unnest, which copies it once for each element it unnests",
            MAX_COPIED_ROW_BYTES,
        ),
        "BoundedWindowAggExec" | "WindowAggExec" => (
            "a window function, which can copy its values onto each row of a frame \
             (first_value, max …)",
            MAX_COPIED_ROW_BYTES,
        ),
        "ScalarSubqueryExec" => (
            "the query as the value of a scalar subquery, which is copied onto each row of every \
             batch it is used in",
            0,
        ),
        _ => return None,
    })
}

/// Puts a [`BoundCopiedRowsExec`] below each operator that copies rows, on every input that it
/// copies: a scalar subquery's value is held to `broadcast_bytes` (what a constant may hold, as
/// it is copied onto every row of a batch as a constant is), every other input to its
/// operator's bound a row (see [`copier`]).
#[derive(Debug)]
pub(crate) struct BoundCopiedRows {
    pub broadcast_bytes: usize,
}

impl PhysicalOptimizerRule for BoundCopiedRows {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some((copier, bound)) = copier(node.name()) else {
                return Ok(Transformed::no(node));
            };
            // The first input of a scalar subquery's operator is the query that uses the
            // values; the others are the subqueries.
            let (passed, bound) = if node.name() == "ScalarSubqueryExec" {
                (1, self.broadcast_bytes)
            } else {
                (0, bound)
            };
            let mut changed = false;
            let inputs = node
                .children()
                .into_iter()
                .enumerate()
                .map(|(index, child)| {
                    if index < passed || child.is::<BoundCopiedRowsExec>() {
                        return Arc::clone(child);
                    }
                    changed = true;
                    let bounded: Arc<dyn ExecutionPlan> = Arc::new(BoundCopiedRowsExec::new(
                        Arc::clone(child),
                        Arc::new(CopiedRowBound { bound, copier }),
                    ));
                    bounded
                })
                .collect();
            if !changed {
                return Ok(Transformed::no(node));
            }
            replace_children_if_necessary(node, inputs).map(Transformed::yes)
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "kith_bound_copied_rows"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on, ending with an error at a row larger than its bound.
pub(crate) type BoundCopiedRowsExec = PassThroughExec<CopiedRowBound>;

/// How large a row entering an operator that copies it may be.
#[derive(Debug)]
pub(crate) struct CopiedRowBound {
    bound: usize,
    /// What copies the rows, as the refusal says it.
    copier: &'static str,
}

impl Watch for CopiedRowBound {
    fn name(&self) -> &'static str {
        "BoundCopiedRowsExec"
    }

    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(BoundCopiedRowsStream {
            schema: input.schema(),
            input,
            bound: self.bound,
            copier: self.copier,
        })
    }
}

struct BoundCopiedRowsStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    bound: usize,
    copier: &'static str,
}

impl Stream for BoundCopiedRowsStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.input.poll_next_unpin(cx);
        let Poll::Ready(Some(Ok(batch))) = polled else {
            return polled;
        };
        match row_over(&batch, self.bound) {
            Some((row, bytes)) => Poll::Ready(Some(Err(DataFusionError::Execution(format!(
                "a row of {} KiB (row {row} of a batch) enters {}; a row there may hold at \
                 most {} KiB of text and lists. Join, unnest or compute the window first and \
                 add the large values afterwards, or make them smaller (array_slice, substr, \
                 an aggregate such as cardinality)",
                bytes >> 10,
                self.copier,
                self.bound >> 10
            ))))),
            _ => Poll::Ready(Some(Ok(batch))),
        }
    }
}

impl RecordBatchStream for BoundCopiedRowsStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}

/// The row of `batch` whose values (text, binary, lists: see [`value_sizes`]) hold the most
/// bytes, with those bytes, when they are more than `bound`. Most batches are passed after a look at each column's
/// largest value, without counting row by row: this runs on every batch a join reads. Values
/// of a fixed width beside them (a few bytes each) are not counted.
fn row_over(batch: &RecordBatch, bound: usize) -> Option<(usize, usize)> {
    let columns: Vec<&dyn Array> = batch
        .columns()
        .iter()
        .map(|column| column.as_ref())
        .filter(|column| column.data_type().primitive_width().is_none())
        .collect();
    let at_most: usize = columns
        .iter()
        .map(|column| largest_value(*column, bound))
        .fold(0, usize::saturating_add);
    if at_most <= bound {
        return None;
    }
    largest_row(batch.num_rows(), &columns).filter(|(_, bytes)| *bytes > bound)
}

/// The bytes of `column`'s largest value, or more when that is cheaper to find and still at
/// most `bound` (a text column's whole length).
fn largest_value(column: &dyn Array, bound: usize) -> usize {
    fn from_offsets<O: Copy + TryInto<usize>>(offsets: &[O], bound: usize) -> usize {
        let whole = match (offsets.first(), offsets.last()) {
            (Some(first), Some(last)) => range(*first, *last).len(),
            _ => 0,
        };
        if whole <= bound {
            return whole;
        }
        ranges(offsets)
            .map(|values| values.len())
            .max()
            .unwrap_or(0)
    }
    match column.data_type() {
        DataType::Utf8 => from_offsets(column.as_string::<i32>().value_offsets(), bound),
        DataType::LargeUtf8 => from_offsets(column.as_string::<i64>().value_offsets(), bound),
        DataType::Binary => from_offsets(column.as_binary::<i32>().value_offsets(), bound),
        DataType::LargeBinary => from_offsets(column.as_binary::<i64>().value_offsets(), bound),
        DataType::Utf8View | DataType::BinaryView => {
            let views = match column.data_type() {
                DataType::Utf8View => column.as_string_view().views(),
                _ => column.as_binary_view().views(),
            };
            views
                .iter()
                .map(|view| *view as u32 as usize)
                .max()
                .unwrap_or(0)
        }
        _ => value_sizes(column).into_iter().max().unwrap_or(0),
    }
}

/// The row with the most bytes of values in `columns`, and those bytes.
fn largest_row(rows: usize, columns: &[&dyn Array]) -> Option<(usize, usize)> {
    let mut sizes = vec![0usize; rows];
    for column in columns {
        for (size, value) in sizes.iter_mut().zip(value_sizes(*column)) {
            *size = size.saturating_add(value);
        }
    }
    sizes
        .into_iter()
        .enumerate()
        .max_by_key(|(_, bytes)| *bytes)
}

/// The bytes of each of `array`'s values: a text's or binary's length, a fixed-width value's
/// width, the sum of a list's elements or a struct's fields. Types with neither (a dictionary,
/// a union) count nothing.
fn value_sizes(array: &dyn Array) -> Vec<usize> {
    fn from_offsets<O: Copy + TryInto<usize>>(offsets: &[O]) -> Vec<usize> {
        ranges(offsets).map(|values| values.len()).collect()
    }
    /// Sums, for each list, the sizes of its elements.
    fn summed<O: Copy + TryInto<usize>>(offsets: &[O], elements: &[usize]) -> Vec<usize> {
        ranges(offsets)
            .map(|values| elements.get(values).map_or(0, |sizes| sizes.iter().sum()))
            .collect()
    }
    match array.data_type() {
        DataType::Utf8 => from_offsets(array.as_string::<i32>().value_offsets()),
        DataType::LargeUtf8 => from_offsets(array.as_string::<i64>().value_offsets()),
        DataType::Binary => from_offsets(array.as_binary::<i32>().value_offsets()),
        DataType::LargeBinary => from_offsets(array.as_binary::<i64>().value_offsets()),
        // A view's low 32 bits are its value's length.
        DataType::Utf8View => array
            .as_string_view()
            .views()
            .iter()
            .map(|view| *view as u32 as usize)
            .collect(),
        DataType::BinaryView => array
            .as_binary_view()
            .views()
            .iter()
            .map(|view| *view as u32 as usize)
            .collect(),
        // A list's values are those of every row of the array it was sliced from: its offsets
        // say which are its own.
        DataType::List(_) => {
            let list = array.as_list::<i32>();
            summed(list.value_offsets(), &value_sizes(list.values().as_ref()))
        }
        DataType::LargeList(_) => {
            let list = array.as_list::<i64>();
            summed(list.value_offsets(), &value_sizes(list.values().as_ref()))
        }
        DataType::Map(_, _) => {
            let map = array.as_map();
            summed(map.value_offsets(), &value_sizes(map.entries()))
        }
        DataType::FixedSizeList(_, _) => {
            let list = array.as_fixed_size_list();
            (0..list.len())
                .map(|row| value_sizes(list.value(row).as_ref()).iter().sum())
                .collect()
        }
        DataType::Struct(_) => {
            let mut sizes = vec![0usize; array.len()];
            for field in array.as_struct().columns() {
                for (size, value) in sizes.iter_mut().zip(value_sizes(field.as_ref())) {
                    *size = size.saturating_add(value);
                }
            }
            sizes
        }
        fixed => vec![fixed.primitive_width().unwrap_or(0); array.len()],
    }
}

/// Where each value an offsets buffer delimits lies (empty where an offset does not fit).
fn ranges<O: Copy + TryInto<usize>>(offsets: &[O]) -> impl Iterator<Item = Range<usize>> + '_ {
    offsets.windows(2).map(|ends| range(ends[0], ends[1]))
}

/// The values from offset `start` to offset `end` (empty where either does not fit).
fn range<O: TryInto<usize>>(start: O, end: O) -> Range<usize> {
    match (start.try_into(), end.try_into()) {
        (Ok(start), Ok(end)) => start..end.max(start),
        _ => 0..0,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        ArrayRef, Int64Array, ListArray, RecordBatch, StringArray, StringViewArray,
    };
    use arrow::datatypes::Int64Type;

    use super::row_over;

    #[test]
    fn the_largest_row_counts_text_views_and_lists() {
        let text: ArrayRef = Arc::new(StringArray::from(vec!["a", "bbbb", ""]));
        let views: ArrayRef = Arc::new(StringViewArray::from(vec![
            "x".repeat(100).as_str(),
            "",
            "yy",
        ]));
        let lists: ArrayRef = Arc::new(ListArray::from_iter_primitive::<Int64Type, _, _>(vec![
            Some(vec![Some(1)]),
            Some(vec![]),
            Some((0..50).map(Some).collect()),
        ]));
        let numbers: ArrayRef = Arc::new(Int64Array::from(vec![1, 2, 3]));
        let batch =
            RecordBatch::try_from_iter([("t", text), ("v", views), ("l", lists), ("n", numbers)])
                .unwrap();
        // Row 2: two bytes of text and fifty 8-byte values; the numbers beside them are not
        // counted.
        assert_eq!(row_over(&batch, 200), Some((2, 2 + 50 * 8)));
        assert_eq!(row_over(&batch, 402), None);
        // A slice counts only its own rows.
        assert_eq!(row_over(&batch.slice(0, 2), 100), Some((0, 1 + 100 + 8)));
        assert_eq!(row_over(&batch.slice(0, 2), 109), None);
    }
}
