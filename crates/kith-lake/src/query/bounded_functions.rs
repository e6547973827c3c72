//! Functions whose result can be vastly larger than their arguments (`repeat('a', 2000000000)`,
//! `generate_series(1, 10000000000)`), held to a size before they run.
//!
//! DataFusion counts the memory its operators hold (sorts, joins, aggregations) against a
//! query's limit, but not what a scalar function allocates. It also folds constant expressions
//! while planning, where no time limit can interrupt it. One such call, after its query had
//! already been answered with a timeout, kept a core busy for another forty seconds and grew the
//! server by gigabytes. Each function here is DataFusion's own, with a check in front of it of
//! the largest result its arguments can give, refused when over the bound. Functions that only
//! join their arguments (`concat`, and `||` on text, planned here as a function) are bounded too:
//! composed step by step they double a value each time.
//!
//! The bound is the query's, not each call's: the calls in a query share it (see
//! [`CallBudget`]), so forty calls side by side cannot each make the whole of it.

use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::datatypes::{DataType, FieldRef, Int64Type, IntervalMonthDayNano};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchema, DataFusionError, Result, ScalarValue};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::planner::{ExprPlanner, PlannerResult, RawBinaryExpr};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ExprSchemable, LogicalPlan, ReturnFieldArgs,
    ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::analyzer::AnalyzerRule;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::BinaryOperator;

/// How a function's result grows with its arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Growth {
    /// `repeat(text, n)`: the text `n` times.
    Repeat,
    /// `lpad` / `rpad(text, n [, fill])`: `n` characters.
    Pad,
    /// `replace(text, from, to)`: each `from` becomes `to`.
    Replace,
    /// `regexp_replace(text, pattern, replacement [, flags])`: each match becomes the
    /// replacement, whose `$n` references repeat parts of the match.
    RegexpReplace,
    /// `array_repeat(value, n)`: a list of `n` values.
    ArrayRepeat,
    /// `array_resize(list, n [, value])`: a list of `n` values.
    ArrayResize,
    /// `range` / `generate_series(start, stop [, step])`: a list of every step between.
    Range,
    /// `concat` and the `||` operator on text: the arguments side by side. A result no larger
    /// than its arguments, but composing it doubles a value at each step (`WITH b AS (SELECT
    /// s || s AS s FROM a), c AS (SELECT s || s ...)`).
    Concat,
    /// `concat_ws(separator, ...)`: the same, with the separator between each two.
    ConcatWs,
    /// `encode(value, 'hex' | 'base64')`: twice the value at most. Composed, it doubles a value
    /// at each step, as `concat` does.
    Encode,
    /// `array_concat` / `make_array(...)`: the lists or values side by side, which, composed,
    /// double a list at each step.
    ArrayJoin,
    /// `array_to_string(list, delimiter [, null_text])`: each element written as text, with the
    /// delimiter between each two (and the null text for each null): a list of a million small
    /// values joined by a long delimiter makes a million delimiters.
    ListToText,
    /// `string_to_array(text, delimiter [, null_text])`: a list with a part for each
    /// delimiter, or each character when the delimiter is null or empty; each part costs its
    /// place in the list besides its bytes (a 16 KB text split into characters is 16,000 parts).
    Split,
    /// `levenshtein(a, b)`: no large result, but time that grows with the product of the two
    /// lengths, in one step the time limit cannot interrupt (two texts of a million characters
    /// take a quarter of an hour). Held to [`MAX_COMPARISONS`] instead of the bound on bytes.
    Comparisons,
}

/// The most pairs of characters one call of `levenshtein` may compare over its rows: about a
/// second of work.
const MAX_COMPARISONS: u128 = 1_000_000_000;

/// The functions held to a bound, by name (their aliases follow them).
const BOUNDED: [(&str, Growth); 18] = [
    ("levenshtein", Growth::Comparisons),
    ("string_to_array", Growth::Split),
    ("concat", Growth::Concat),
    // The text with another put in its middle: at most both side by side, doubling when
    // composed, as `concat` does.
    ("overlay", Growth::Concat),
    ("array_to_string", Growth::ListToText),
    ("encode", Growth::Encode),
    ("array_concat", Growth::ArrayJoin),
    ("make_array", Growth::ArrayJoin),
    ("concat_ws", Growth::ConcatWs),
    ("repeat", Growth::Repeat),
    ("lpad", Growth::Pad),
    ("rpad", Growth::Pad),
    ("replace", Growth::Replace),
    ("regexp_replace", Growth::RegexpReplace),
    ("array_repeat", Growth::ArrayRepeat),
    ("array_resize", Growth::ArrayResize),
    ("range", Growth::Range),
    ("generate_series", Growth::Range),
];

/// What the calls in one query that can make large values may make together: each call may
/// make its share of the bound. The calls are counted once the plan is optimized
/// ([`CountBoundedCalls`]); calls the planner folds into constants before then run with the
/// whole bound, and their results are held to the constants' own limit (`large_constants`).
#[derive(Debug)]
pub(crate) struct CallBudget {
    max_result_bytes: usize,
    calls: AtomicUsize,
}

impl CallBudget {
    /// What one call may make, and how many calls share the bound.
    fn per_call(&self) -> (usize, usize) {
        let calls = self.calls.load(Ordering::Relaxed).max(1);
        (self.max_result_bytes / calls, calls)
    }

    /// The refusal of a call of `name` that could make `largest` bytes, `copies` times over.
    fn refuse(&self, name: &str, largest: u128, copies: u128) -> DataFusionError {
        let (per_call, calls) = self.per_call();
        let per_batch = if copies > 1 {
            format!(" (a constant result is copied onto each of a batch's {copies} rows)")
        } else {
            String::new()
        };
        let share = if calls > 1 {
            format!(
                "more than the {} each call may make: the query's {calls} calls of functions \
                 that can make large values share {} (an eighth of its memory limit); ask for \
                 less, call fewer, or filter the rows first",
                human_bytes(per_call as u128),
                human_bytes(self.max_result_bytes as u128)
            )
        } else {
            format!(
                "more than the {} one function call may make (an eighth of the query's memory \
                 limit); ask for less, or filter the rows first",
                human_bytes(per_call as u128)
            )
        };
        DataFusionError::Execution(format!(
            "{name} could make a result of {} here{per_batch}, {share}",
            human_bytes(largest)
        ))
    }

    /// Refuses a call that could make `largest` bytes, `copies` times over, beyond its share.
    fn check(&self, name: &str, largest: u128, copies: u128) -> Result<()> {
        let largest = largest.saturating_mul(copies);
        if largest > self.per_call().0 as u128 {
            return Err(self.refuse(name, largest, copies));
        }
        Ok(())
    }
}

/// The budget as the functions hold it: one per session, compared by identity.
#[derive(Debug, Clone)]
struct SharedBudget(Arc<CallBudget>);

impl PartialEq for SharedBudget {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for SharedBudget {}

impl std::hash::Hash for SharedBudget {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

/// Replaces, in `ctx`, each function of [`BOUNDED`] with itself refusing a result over its
/// share of `max_result_bytes` (counted for one call: a whole batch of rows, or a constant once
/// for each row of a batch), plans `||` on text as a function held to the same bound, and
/// counts the calls that share it once the plan is optimized.
pub(crate) fn bound_growing_functions(
    ctx: &mut SessionContext,
    max_result_bytes: usize,
) -> Result<()> {
    let budget = SharedBudget(Arc::new(CallBudget {
        max_result_bytes,
        calls: AtomicUsize::new(0),
    }));
    let mut bounded = HashMap::new();
    for (name, growth) in BOUNDED {
        let inner = FunctionRegistry::udf(ctx, name)?;
        let wrapper = Arc::new(ScalarUDF::new_from_impl(Bounded {
            inner: inner.as_ref().clone(),
            growth,
            budget: budget.clone(),
        }));
        SessionContext::register_udf(ctx, wrapper.as_ref().clone());
        bounded.insert(name, wrapper);
    }
    ctx.add_analyzer_rule(Arc::new(UseBoundedFunctions { bounded }));
    let operator = Arc::new(ScalarUDF::new_from_impl(ConcatOperator {
        signature: Signature::user_defined(Volatility::Immutable),
        budget: budget.clone(),
    }));
    ctx.add_optimizer_rule(Arc::new(CountBoundedCalls { budget }));
    ctx.register_expr_planner(Arc::new(TextConcatPlanner { operator }))
}

/// How many copies of one call's result a batch holds: a call of constants makes one value,
/// copied onto each of the rows it is called for (one while the planner folds it into a
/// constant: the constant is then held to the bound `large_constants` sets, as it is copied
/// onto each row of a batch); any other makes its rows once.
fn rows_and_copies(args: &ScalarFunctionArgs) -> (usize, u128) {
    let all_constant = args
        .args
        .iter()
        .all(|arg| matches!(arg, ColumnarValue::Scalar(_)));
    if all_constant {
        (1, args.number_rows.max(1) as u128)
    } else {
        (args.number_rows, 1)
    }
}

/// Counts, in the optimized plan (subqueries included), the calls that share the bound. It
/// runs after DataFusion's own rules in each optimizer pass (only `large_constants`, which
/// changes nothing, comes after it), so the count is the final plan's.
#[derive(Debug)]
struct CountBoundedCalls {
    budget: SharedBudget,
}

impl OptimizerRule for CountBoundedCalls {
    fn name(&self) -> &str {
        "kith_count_bounded_calls"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        // The same call in several places counts once: the optimizer copies a filter into
        // each branch of a union (`events` is the stored rows and the buffered ones), and each
        // copy works on its own branch's batches.
        let mut calls = std::collections::HashSet::new();
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::ScalarFunction(call) = e {
                        let name = call.func.name();
                        let shares_the_bound = BOUNDED.iter().any(|(bounded, growth)| {
                            *bounded == name && *growth != Growth::Comparisons
                        });
                        if name == CONCAT_OPERATOR || shares_the_bound {
                            calls.insert(e.schema_name().to_string());
                        }
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        self.budget.0.calls.store(calls.len(), Ordering::Relaxed);
        Ok(Transformed::no(plan))
    }
}

/// Calls the bounded function wherever the plan calls one of [`BOUNDED`]. A call by name finds
/// the bounded function registered in its place, but DataFusion's own planners call the
/// originals directly: an array literal `[a, b]` is `make_array`, `||` on lists is
/// `array_concat`; and a function's simplification may return a call of another original.
#[derive(Debug)]
struct UseBoundedFunctions {
    bounded: HashMap<&'static str, Arc<ScalarUDF>>,
}

impl AnalyzerRule for UseBoundedFunctions {
    fn name(&self) -> &str {
        "kith_use_bounded_functions"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|node| {
            node.map_expressions(|expr| {
                expr.transform_up(|expr| {
                    let Expr::ScalarFunction(mut call) = expr else {
                        return Ok(Transformed::no(expr));
                    };
                    match self.bounded.get(call.func.name()) {
                        Some(bounded) if !Arc::ptr_eq(bounded, &call.func) => {
                            call.func = Arc::clone(bounded);
                            Ok(Transformed::yes(Expr::ScalarFunction(call)))
                        }
                        _ => Ok(Transformed::no(Expr::ScalarFunction(call))),
                    }
                })
            })
        })
        .map(|rewritten| rewritten.data)
    }
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct Bounded {
    inner: ScalarUDF,
    growth: Growth,
    budget: SharedBudget,
}

impl Bounded {
    fn inner(&self) -> &dyn ScalarUDFImpl {
        self.inner.inner().as_ref()
    }
}

impl ScalarUDFImpl for Bounded {
    fn name(&self) -> &str {
        self.inner().name()
    }

    fn aliases(&self) -> &[String] {
        self.inner().aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner().schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner().signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner().return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner().return_field_from_args(args)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner().coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner().documentation()
    }

    // `simplify` is left at its default on purpose: a function's own simplification may return
    // an expression that calls the unbounded original.

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        if self.growth == Growth::Comparisons {
            check_comparisons(self.name(), &args)?;
            return self.inner.invoke_with_args(args);
        }
        let (rows, copies) = rows_and_copies(&args);
        let largest = largest_result(self.growth, &args.args, rows)
            .map_err(|why| DataFusionError::Execution(format!("{}(…) {why}", self.name())))?;
        self.budget
            .0
            .check(&format!("{}(…)", self.name()), largest, copies)?;
        self.inner.invoke_with_args(args)
    }
}

/// `a || b` on text, computed as DataFusion's operator computes it (null when either side is),
/// held to the bound. DataFusion keeps `||` on text as an operator, which no function wrapper
/// reaches; [`TextConcatPlanner`] plans it as this function instead.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ConcatOperator {
    signature: Signature,
    budget: SharedBudget,
}

/// [`ConcatOperator`]'s name.
const CONCAT_OPERATOR: &str = "kith_text_concat";

impl ScalarUDFImpl for ConcatOperator {
    fn name(&self) -> &str {
        CONCAT_OPERATOR
    }

    /// Named as the operator, so a column `SELECT a || b` makes is called `a || b` as before.
    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        let names = args
            .iter()
            .map(|arg| arg.schema_name().to_string())
            .collect::<Vec<_>>();
        Ok(names.join(" || "))
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let common = if arg_types.contains(&DataType::LargeUtf8) {
            DataType::LargeUtf8
        } else if arg_types.contains(&DataType::Utf8View) {
            DataType::Utf8View
        } else {
            DataType::Utf8
        };
        Ok(vec![common; arg_types.len()])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(arg_types.first().cloned().unwrap_or(DataType::Utf8))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let (rows, copies) = rows_and_copies(&args);
        let largest =
            largest_result(Growth::Concat, &args.args, rows).map_err(DataFusionError::Execution)?;
        self.budget.0.check("||", largest, copies)?;
        let [left, right] = args.args.as_slice() else {
            return Err(DataFusionError::Internal(format!(
                "|| takes two values, got {}",
                args.args.len()
            )));
        };
        let both_constant = matches!(
            (left, right),
            (ColumnarValue::Scalar(_), ColumnarValue::Scalar(_))
        );
        let length = if both_constant { 1 } else { args.number_rows };
        let joined = datafusion::arrow::compute::kernels::concat_elements::concat_elements_dyn(
            &left.to_array(length)?,
            &right.to_array(length)?,
        )?;
        if both_constant {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(
                &joined, 0,
            )?))
        } else {
            Ok(ColumnarValue::Array(joined))
        }
    }
}

/// Plans `a || b` where both sides are text as [`ConcatOperator`]; lists and other types are
/// left to DataFusion (its own planner turns `||` on lists into `array_concat`).
#[derive(Debug)]
struct TextConcatPlanner {
    operator: Arc<ScalarUDF>,
}

impl ExprPlanner for TextConcatPlanner {
    fn plan_binary_op(
        &self,
        expr: RawBinaryExpr,
        schema: &DFSchema,
    ) -> Result<PlannerResult<RawBinaryExpr>> {
        let is_text = |side: &Expr| {
            matches!(
                side.get_type(schema),
                Ok(DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null)
            )
        };
        if expr.op == BinaryOperator::StringConcat && is_text(&expr.left) && is_text(&expr.right) {
            return Ok(PlannerResult::Planned(
                self.operator.call(vec![expr.left, expr.right]),
            ));
        }
        Ok(PlannerResult::Original(expr))
    }
}

/// The most bytes `growth` can produce from `args` over `rows` rows, or why the call must not
/// run at all. Arguments of a type it does not know count as making nothing: the function
/// itself refuses types it does not take.
fn largest_result(growth: Growth, args: &[ColumnarValue], rows: usize) -> Result<u128, String> {
    let text = |i: usize| args.get(i).map_or(Texts::None, Texts::of);
    let count = |i: usize| args.get(i).map_or(Counts::None, Counts::of);
    let mut total: u128 = 0;
    let mut add = |bytes: u128| total = total.saturating_add(bytes);
    match growth {
        Growth::Repeat => {
            let (texts, counts) = (text(0), count(1));
            for row in 0..rows {
                add(texts.len(row).saturating_mul(counts.at_least_zero(row)));
            }
        }
        Growth::Pad => {
            let (texts, lengths, fill) = (text(0), count(1), text(2));
            // A character of the fill takes up to four bytes in UTF-8 (one for the default
            // space); the text itself is cut to the length or kept whole.
            let per_char = match (&args.get(2), &fill) {
                (None, _) => 1,
                (Some(_), Texts::Constant(Some(fill))) => {
                    fill.chars().map(char::len_utf8).max().unwrap_or(1) as u128
                }
                (Some(_), _) => 4,
            };
            for row in 0..rows {
                add(texts.len(row) + lengths.at_least_zero(row).saturating_mul(per_char));
            }
        }
        Growth::Replace => {
            let (texts, from, to) = (text(0), text(1), text(2));
            for row in 0..rows {
                let len = texts.len(row);
                // An empty `from` matches between every two characters.
                let matches = len / from.len(row).max(1) + 1;
                add(len + matches.saturating_mul(to.len(row)));
            }
        }
        Growth::RegexpReplace => {
            let (texts, replacement) = (text(0), text(2));
            for row in 0..rows {
                let len = texts.len(row);
                // At most one match per position (an empty pattern matches at each); each `$`
                // in the replacement can repeat its match, and the matches together span the
                // text at most once.
                let references = replacement.dollars(row);
                add(len
                    .saturating_add((len + 1).saturating_mul(replacement.len(row)))
                    .saturating_add(references.saturating_mul(len)));
            }
        }
        Growth::ArrayRepeat => {
            let (values, counts) = (args.first(), count(1));
            for row in 0..rows {
                let n = counts.at_least_zero(row);
                if n > 0 {
                    add(n.saturating_mul(value_bytes(values, row)));
                }
            }
        }
        Growth::ArrayResize => {
            // Each new element is the fill, or (an upper bound for) an element of the list.
            let (lists, counts, fill) = (args.first(), count(1), args.get(2));
            for row in 0..rows {
                if let Some(n) = counts.at(row).filter(|n| *n < 0) {
                    return Err(format!(
                        "has a negative size ({n}); give the length the list should have, 0 or more"
                    ));
                }
                let n = counts.at_least_zero(row);
                if n > 0 {
                    let element = value_bytes(lists, row).max(value_bytes(fill, row));
                    add(value_bytes(lists, row).saturating_add(n.saturating_mul(element)));
                }
            }
        }
        Growth::Encode => {
            let values = args.first();
            for row in 0..rows {
                add(value_bytes(values, row).saturating_mul(2));
            }
        }
        Growth::ArrayJoin => {
            for row in 0..rows {
                add(args.iter().map(|arg| value_bytes(Some(arg), row)).sum());
            }
        }
        Growth::ListToText => {
            // An element is written in at most 64 bytes, or as its own text; each has a
            // delimiter (or the null text) beside it.
            let (lists, delimiter, null_text) = (args.first(), text(1), text(2));
            for row in 0..rows {
                let each = 64 + delimiter.len(row) + null_text.len(row);
                add(value_bytes(lists, row)
                    .saturating_add(leaves_at(lists, row).saturating_mul(each)));
            }
        }
        // Bounded by its time instead (`check_comparisons`).
        Growth::Comparisons => {}
        Growth::Split => {
            let (texts, delimiters) = (text(0), text(1));
            for row in 0..rows {
                let len = texts.len(row);
                let parts = match delimiters.len(row) {
                    0 => len,
                    delimiter => len / delimiter + 1,
                };
                // A part's place: its offset, and the list's share of it.
                add(len.saturating_add(parts.saturating_mul(8)));
            }
        }
        Growth::Range => {
            for row in 0..rows {
                add(range_elements(args, row)?.saturating_mul(8));
            }
        }
        Growth::Concat | Growth::ConcatWs => {
            // A value that is not text (a number) is written in at most 64 bytes; `concat_ws`
            // repeats its first argument between each two others.
            // Summed over the rows at once: this runs on every batch a `||` sees.
            let texts: Vec<Texts> = args.iter().map(Texts::of).collect();
            let length = |text: &Texts| match text {
                Texts::None => 64 * rows as u128,
                text => text.total_len(rows),
            };
            let sum: u128 = texts.iter().map(length).sum();
            let separators = match (growth, texts.first()) {
                (Growth::ConcatWs, Some(separator)) => {
                    length(separator).saturating_mul(texts.len() as u128)
                }
                _ => 0,
            };
            add(sum.saturating_add(separators));
        }
    }
    Ok(total)
}

/// The bytes of `arg`'s value at `row` (at least 8, what an element of a list costs at least).
fn value_bytes(arg: Option<&ColumnarValue>, row: usize) -> u128 {
    let bytes = match arg {
        Some(ColumnarValue::Scalar(value)) => value.size(),
        Some(ColumnarValue::Array(values)) => ScalarValue::try_from_array(values, row)
            .map(|value| value.size())
            .unwrap_or(0),
        None => 0,
    };
    (bytes as u128).max(8)
}

/// Refuses a call of `name` (`levenshtein`) whose rows would compare more than
/// [`MAX_COMPARISONS`] pairs of characters in all.
fn check_comparisons(name: &str, args: &ScalarFunctionArgs) -> Result<()> {
    let (rows, _) = rows_and_copies(args);
    let texts: Vec<Texts> = args.args.iter().map(Texts::of).collect();
    let (Some(first), Some(second)) = (texts.first(), texts.get(1)) else {
        return Ok(());
    };
    let mut pairs: u128 = 0;
    for row in 0..rows {
        pairs = pairs.saturating_add(first.len(row).saturating_mul(second.len(row)));
    }
    if pairs > MAX_COMPARISONS {
        return Err(DataFusionError::Execution(format!(
            "{name}(…) would compare {pairs} pairs of characters here (the product of the two \
             lengths, summed over the rows), more than the {MAX_COMPARISONS} one call may \
             compare, as it cannot be stopped by the time limit; compare shorter texts \
             (substr) or fewer rows"
        )));
    }
    Ok(())
}

/// How many values the list `arg` holds at `row`, counting the elements of nested lists.
fn leaves_at(arg: Option<&ColumnarValue>, row: usize) -> u128 {
    // A list's values are those of every row of the array it was sliced from: only the
    // range its offsets span are its own.
    fn leaves(array: &dyn Array) -> usize {
        match array.data_type() {
            DataType::List(_) => {
                let list = array.as_list::<i32>();
                let offsets = list.value_offsets();
                let (start, end) = (offsets[0] as usize, offsets[list.len()] as usize);
                leaves(list.values().slice(start, end - start).as_ref())
            }
            DataType::LargeList(_) => {
                let list = array.as_list::<i64>();
                let offsets = list.value_offsets();
                let (start, end) = (offsets[0] as usize, offsets[list.len()] as usize);
                leaves(list.values().slice(start, end - start).as_ref())
            }
            DataType::FixedSizeList(_, size) => {
                let list = array.as_fixed_size_list();
                let start = list.value_offset(0).max(0) as usize;
                let count = list.len() * (*size).max(0) as usize;
                leaves(list.values().slice(start, count).as_ref())
            }
            _ => array.len(),
        }
    }
    let value = match arg {
        Some(ColumnarValue::Scalar(value)) => value.to_array_of_size(1).ok(),
        Some(ColumnarValue::Array(values)) if row < values.len() => Some(values.slice(row, 1)),
        _ => None,
    };
    value.map_or(0, |value| leaves(value.as_ref()) as u128)
}

/// How many elements `range`/`generate_series` makes for row `row` at most: the distance from
/// start to stop over the step, plus one. An interval step that can be zero is refused: the
/// function would never end (it checks only for an interval whose three parts are all zero).
fn range_elements(args: &[ColumnarValue], row: usize) -> Result<u128, String> {
    let point = |i: usize| args.get(i).and_then(|arg| scalar_at(arg, row));
    let integer = |i: usize| point(i).and_then(|v| as_i128(&v));
    let (start, stop, step) = match args.len() {
        1 => (Some(0), integer(0), Some(1)),
        2 => (integer(0), integer(1), Some(1)),
        _ => match point(2) {
            Some(ScalarValue::IntervalMonthDayNano(Some(interval))) => {
                let step = shortest_step(&interval).ok_or_else(|| {
                    format!(
                        "has a step that can be zero ({} months, {} days, {} ns), so it would \
                         never end; give a step that only moves one way",
                        interval.months, interval.days, interval.nanoseconds
                    )
                })?;
                (
                    point(0).and_then(|v| as_nanos(&v)),
                    point(1).and_then(|v| as_nanos(&v)),
                    Some(step),
                )
            }
            step => (integer(0), integer(1), step.and_then(|v| as_i128(&v))),
        },
    };
    Ok(match (start, stop, step) {
        // A zero integer step is the function's own error to give.
        (Some(start), Some(stop), Some(step)) if step != 0 => {
            (start.abs_diff(stop) / step.unsigned_abs()).saturating_add(1)
        }
        _ => 0,
    })
}

/// The shortest an interval step can be, in nanoseconds, or `None` when it can be zero. A month
/// is 28 to 31 days and a day 23 to 25 hours (across a change of daylight-saving time), so
/// `1 month - 30 days` is zero in some months and `1 day - 24 hours` on most days.
fn shortest_step(interval: &IntervalMonthDayNano) -> Option<i128> {
    const HOUR: i128 = 3_600 * 1_000_000_000;
    let span = |count: i128, shortest: i128, longest: i128| {
        if count >= 0 {
            (count * shortest, count * longest)
        } else {
            (count * longest, count * shortest)
        }
    };
    let (months_low, months_high) = span(
        i128::from(interval.months),
        28 * NANOS_PER_DAY,
        31 * NANOS_PER_DAY,
    );
    let (days_low, days_high) = span(i128::from(interval.days), 23 * HOUR, 25 * HOUR);
    let nanos = i128::from(interval.nanoseconds);
    let (low, high) = (
        months_low + days_low + nanos,
        months_high + days_high + nanos,
    );
    if low <= 0 && high >= 0 {
        return None;
    }
    Some(low.unsigned_abs().min(high.unsigned_abs()) as i128)
}

const NANOS_PER_DAY: i128 = 86_400 * 1_000_000_000;

fn scalar_at(arg: &ColumnarValue, row: usize) -> Option<ScalarValue> {
    match arg {
        ColumnarValue::Scalar(value) => Some(value.clone()),
        ColumnarValue::Array(array) => ScalarValue::try_from_array(array, row).ok(),
    }
}

fn as_i128(value: &ScalarValue) -> Option<i128> {
    match value {
        ScalarValue::Int64(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int32(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int16(Some(v)) => Some(i128::from(*v)),
        ScalarValue::Int8(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt64(Some(v)) => Some(i128::from(*v)),
        ScalarValue::UInt32(Some(v)) => Some(i128::from(*v)),
        _ => None,
    }
}

/// A date or timestamp as nanoseconds since the epoch (wider than `i64` so no date overflows).
fn as_nanos(value: &ScalarValue) -> Option<i128> {
    let (amount, nanos_each) = match value {
        ScalarValue::Date32(Some(days)) => (i64::from(*days), NANOS_PER_DAY),
        ScalarValue::Date64(Some(ms)) | ScalarValue::TimestampMillisecond(Some(ms), _) => {
            (*ms, 1_000_000)
        }
        ScalarValue::TimestampSecond(Some(s), _) => (*s, 1_000_000_000),
        ScalarValue::TimestampMicrosecond(Some(us), _) => (*us, 1_000),
        ScalarValue::TimestampNanosecond(Some(ns), _) => (*ns, 1),
        _ => return None,
    };
    Some(i128::from(amount) * nanos_each)
}

/// The text argument of a call, read row by row without copying.
enum Texts<'a> {
    Constant(Option<&'a str>),
    Utf8(&'a datafusion::arrow::array::StringArray),
    LargeUtf8(&'a datafusion::arrow::array::LargeStringArray),
    View(&'a datafusion::arrow::array::StringViewArray),
    /// Absent, or of another type.
    None,
}

impl<'a> Texts<'a> {
    fn of(arg: &'a ColumnarValue) -> Self {
        match arg {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(value)
                | ScalarValue::LargeUtf8(value)
                | ScalarValue::Utf8View(value),
            ) => Texts::Constant(value.as_deref()),
            ColumnarValue::Array(array) => match array.data_type() {
                DataType::Utf8 => Texts::Utf8(array.as_string::<i32>()),
                DataType::LargeUtf8 => Texts::LargeUtf8(array.as_string::<i64>()),
                DataType::Utf8View => Texts::View(array.as_string_view()),
                _ => Texts::None,
            },
            ColumnarValue::Scalar(_) => Texts::None,
        }
    }

    fn value(&self, row: usize) -> Option<&'a str> {
        match self {
            Texts::Constant(value) => *value,
            Texts::Utf8(array) => present(*array, row).then(|| array.value(row)),
            Texts::LargeUtf8(array) => present(*array, row).then(|| array.value(row)),
            Texts::View(array) => present(*array, row).then(|| array.value(row)),
            Texts::None => None,
        }
    }

    fn len(&self, row: usize) -> u128 {
        self.value(row).map_or(0, |text| text.len() as u128)
    }

    /// The bytes of the first `rows` values together (a null's slot counts what it spans, which
    /// is nothing unless the array was built otherwise: an upper bound either way).
    fn total_len(&self, rows: usize) -> u128 {
        fn spanned<O: Copy + Into<i64>>(offsets: &[O], rows: usize) -> u128 {
            let end = rows.min(offsets.len().saturating_sub(1));
            match (offsets.first(), offsets.get(end)) {
                (Some(first), Some(last)) => ((*last).into() - (*first).into()).max(0) as u128,
                _ => 0,
            }
        }
        match self {
            Texts::Constant(value) => value.map_or(0, |text| text.len() as u128) * rows as u128,
            Texts::Utf8(array) => spanned(array.value_offsets(), rows),
            Texts::LargeUtf8(array) => spanned(array.value_offsets(), rows),
            // A view's low 32 bits are its value's length.
            Texts::View(array) => array
                .views()
                .iter()
                .take(rows)
                .map(|view| u128::from(*view as u32))
                .sum(),
            Texts::None => 0,
        }
    }

    fn dollars(&self, row: usize) -> u128 {
        self.value(row).map_or(0, |text| {
            text.bytes().filter(|b| *b == b'$').count() as u128
        })
    }
}

/// The count argument of a call (`n`), read row by row.
enum Counts {
    Constant(Option<i64>),
    Array(datafusion::arrow::array::Int64Array),
    None,
}

impl Counts {
    fn of(arg: &ColumnarValue) -> Self {
        match arg {
            ColumnarValue::Scalar(value) => {
                Counts::Constant(value.cast_to(&DataType::Int64).ok().and_then(|v| match v {
                    ScalarValue::Int64(n) => n,
                    _ => None,
                }))
            }
            ColumnarValue::Array(array) => {
                match datafusion::arrow::compute::cast(array, &DataType::Int64) {
                    Ok(cast) => Counts::Array(cast.as_primitive::<Int64Type>().clone()),
                    Err(_) => Counts::None,
                }
            }
        }
    }

    fn at(&self, row: usize) -> Option<i64> {
        match self {
            Counts::Constant(n) => *n,
            Counts::Array(array) => present(array, row).then(|| array.value(row)),
            Counts::None => None,
        }
    }

    fn at_least_zero(&self, row: usize) -> u128 {
        self.at(row).map_or(0, |n| n.max(0) as u128)
    }
}

/// Whether `array` has a value at `row` (a constant argument's array may be shorter than the
/// batch).
fn present(array: &dyn Array, row: usize) -> bool {
    row < array.len() && array.is_valid(row)
}

fn human_bytes(bytes: u128) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
