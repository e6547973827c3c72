//! Keeps filters above aggregates that make rows of their own. DataFusion's `PushDownFilter`
//! moves a filter below an aggregate when the filter reads only the grouping columns, which is
//! also true of a filter that reads no column at all: `SELECT * FROM (SELECT 2 AS step, count(*)
//! AS n FROM events) WHERE step = 1` became a count over no rows and answered `2, 0` instead
//! of nothing, and a funnel written as a `UNION ALL` of counts filtered by step answered every
//! step. An aggregate without `GROUP BY` makes its one row whatever its input holds, and the
//! empty grouping set of `CUBE`, `ROLLUP` or `GROUPING SETS` does the same (and its other sets
//! make nulls the filter may be about), so no filter may move below either. The same mistake
//! was fixed in Spark (SPARK-17712, SPARK-22983) and Presto (#11296).

use std::sync::Arc;

use datafusion::common::Result;
use datafusion::common::tree_node::Transformed;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{Optimizer, OptimizerConfig, OptimizerRule};

/// DataFusion's optimizer rules, with `push_down_filter` kept from moving filters below
/// aggregates that make rows of their own.
pub(crate) fn optimizer_rules() -> Vec<Arc<dyn OptimizerRule + Send + Sync>> {
    Optimizer::new()
        .rules
        .into_iter()
        .map(|rule| {
            if rule.name() == "push_down_filter" {
                let guarded: Arc<dyn OptimizerRule + Send + Sync> =
                    Arc::new(KeepFiltersAboveGlobalAggregates { inner: rule });
                guarded
            } else {
                rule
            }
        })
        .collect()
}

#[derive(Debug)]
struct KeepFiltersAboveGlobalAggregates {
    inner: Arc<dyn OptimizerRule + Send + Sync>,
}

impl OptimizerRule for KeepFiltersAboveGlobalAggregates {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        self.inner.apply_order()
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        if let LogicalPlan::Filter(filter) = &plan
            && let LogicalPlan::Aggregate(aggregate) = filter.input.as_ref()
            && makes_rows_of_its_own(&aggregate.group_expr)
        {
            return Ok(Transformed::no(plan));
        }
        self.inner.rewrite(plan, config)
    }
}

/// Whether an aggregate grouped by `group_expr` makes a row however few rows it reads: it has
/// no grouping columns, or grouping sets (one of which may be empty).
fn makes_rows_of_its_own(group_expr: &[Expr]) -> bool {
    group_expr.is_empty()
        || group_expr
            .iter()
            .any(|expr| matches!(expr, Expr::GroupingSet(_)))
}
