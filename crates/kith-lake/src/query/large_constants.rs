//! A constant in a query is copied onto every row of each batch it is projected over: a
//! 300 KiB text in `SELECT '…' AS x FROM t` becomes 2.4 GB a batch, outside the memory limit,
//! and past Arrow's 2 GiB for one text column (which panics). Constants are refused above the
//! size a function's result may take for a whole batch (see `bounded_functions`), once the
//! optimizer has folded what it folds.

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};

/// The most bytes one constant may hold: its copies over a batch of `batch_rows` rows may take
/// `max_batch_bytes`. A scalar subquery's value is copied the same way (see `copied_rows`).
pub(crate) fn largest_constant(max_batch_bytes: usize, batch_rows: usize) -> usize {
    max_batch_bytes / batch_rows.max(1)
}

#[derive(Debug)]
pub(crate) struct RefuseLargeConstants {
    /// What one batch's copies of a constant may take.
    pub max_batch_bytes: usize,
}

impl OptimizerRule for RefuseLargeConstants {
    fn name(&self) -> &str {
        "kith_refuse_large_constants"
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let rows = config.options().execution.batch_size.get().max(1);
        let largest_allowed = largest_constant(self.max_batch_bytes, rows);
        let mut largest_found = 0;
        plan.apply_with_subqueries(|node| {
            node.apply_expressions(|expr| {
                expr.apply(|e| {
                    if let Expr::Literal(value, _) = e {
                        largest_found = largest_found.max(value.size());
                    }
                    Ok(TreeNodeRecursion::Continue)
                })
            })
        })?;
        if largest_found > largest_allowed {
            return Err(DataFusionError::Execution(format!(
                "the query holds a constant of {} bytes; a constant is copied onto each of a \
                 batch's {rows} rows, so one may hold at most {largest_allowed} bytes (an eighth \
                 of the query's memory limit over a batch): shorten it",
                largest_found
            )));
        }
        Ok(Transformed::no(plan))
    }
}
