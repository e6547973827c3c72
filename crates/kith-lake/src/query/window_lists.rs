//! An aggregate that builds a list or a text (`array_agg`, `string_agg`) used as a window
//! function gives each row the result of its whole frame. Over a frame of all rows (`OVER ()`),
//! or from the first row on (`OVER (ORDER BY …)`, whose frame runs from the start), n rows make n
//! lists of up to n values: 300,000 rows asked for terabytes at once, outside the memory limit,
//! and the failed allocation aborted the process. Such a call is refused unless its frame is a
//! bounded number of rows.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result, ScalarValue};
use datafusion::logical_expr::{
    Expr, LogicalPlan, WindowFrame, WindowFrameBound, WindowFrameUnits, WindowFunctionDefinition,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The aggregates whose result grows with the rows they take.
const GROWING_AGGREGATES: [&str; 2] = ["array_agg", "string_agg"];

/// The most rows the frame of such a call may span.
pub(crate) const MAX_FRAME_ROWS: u64 = 1_000;

#[derive(Debug)]
pub(crate) struct RefuseGrowingWindows;

impl OptimizerRule for RefuseGrowingWindows {
    fn name(&self) -> &str {
        "kith_refuse_growing_windows"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let mut refused = None;
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::WindowFunction(window) = e
                        && let WindowFunctionDefinition::AggregateUDF(aggregate) = &window.fun
                        && grows(aggregate.name(), aggregate.aliases())
                        && frame_rows(&window.params.window_frame)
                            .is_none_or(|rows| rows > MAX_FRAME_ROWS)
                    {
                        refused = Some(aggregate.name().to_string());
                        return Ok(TreeNodeRecursion::Stop);
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        if let Some(name) = refused {
            // The engine cannot slide string_agg's frame (it cannot take rows back out of
            // it), so its text is made from a sliding list instead.
            let (made, bounded) = if name == "string_agg" {
                (
                    "text",
                    "array_to_string(array_agg(x) OVER (ORDER BY … ROWS BETWEEN 99 PRECEDING \
                     AND CURRENT ROW), ',')",
                )
            } else {
                (
                    "list",
                    "OVER (ORDER BY … ROWS BETWEEN 99 PRECEDING AND CURRENT ROW)",
                )
            };
            return Err(DataFusionError::Execution(format!(
                "{name} over a window gives each row the {made} of its whole frame, and this \
                 frame can span every row (`OVER ()`, or `OVER (ORDER BY …)`, which runs from \
                 the first row): as many lists as rows, each as long as the table. Give it a \
                 frame of at most {MAX_FRAME_ROWS} rows (`{bounded}`), or aggregate with GROUP BY"
            )));
        }
        Ok(Transformed::no(plan))
    }
}

fn grows(name: &str, aliases: &[String]) -> bool {
    GROWING_AGGREGATES
        .iter()
        .any(|growing| *growing == name || aliases.iter().any(|alias| alias == growing))
}

/// How many rows `frame` spans at most, when it is a bounded number of rows (`ROWS BETWEEN n
/// PRECEDING AND m FOLLOWING`); `None` for an unbounded side, or a RANGE or GROUPS frame, whose
/// rows depend on the data.
fn frame_rows(frame: &WindowFrame) -> Option<u64> {
    if frame.units != WindowFrameUnits::Rows {
        return None;
    }
    let offset = |bound: &WindowFrameBound| match bound {
        WindowFrameBound::CurrentRow => Some(0),
        WindowFrameBound::Preceding(value) | WindowFrameBound::Following(value) => {
            match value.cast_to(&DataType::UInt64) {
                Ok(ScalarValue::UInt64(Some(rows))) => Some(rows),
                _ => None,
            }
        }
    };
    let (start, end) = (offset(&frame.start_bound)?, offset(&frame.end_bound)?);
    Some(start.saturating_add(end).saturating_add(1))
}
