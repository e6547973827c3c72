//! A stop and a yield point above every operator, so a query ends when its time is up.
//!
//! A query is cancelled by dropping it, which takes effect only when it next yields to the
//! runtime. DataFusion's own yield points are in its data sources and exchanges, and they spend
//! a unit of the task's budget per batch: an operator that does a great deal of work for each
//! batch it pulls (a nested-loop join whose filter matches nothing pulls batch after batch, each
//! against the whole other side) can run for minutes between two yields. Such a query went on
//! burning a core for minutes after its timeout had been answered, and held one of the query
//! threads, so that other queries waited behind it.
//!
//! Above each operator, [`StopAtTimeLimitExec`] ends the stream with a time-limit error once
//! the query's deadline has passed, and takes part in Tokio's cooperative scheduling as
//! DataFusion's `CooperativeExec` does: a query then stops within one batch of one operator
//! after its time is up.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::make_cooperative;
use datafusion::physical_plan::execution_plan::SchedulingType;
use datafusion::physical_plan::{ExecutionPlan, PlanProperties};
use futures::{Stream, StreamExt};

use super::copied_rows::BoundCopiedRowsExec;
use super::pass_through::{PassThroughExec, Watch};

/// The error a stopped query ends with; [`super::classify`] reads it as the time limit.
pub(crate) const PAST_TIME_LIMIT: &str = "the query ran past its time limit";

/// Puts a [`StopAtTimeLimitExec`] above every operator of the plan; none when the time limit
/// is so long that no deadline can be computed from it (`Instant` would overflow). The deadline
/// is fixed when the session is made, a moment before the caller's own timeout starts, so the
/// engine stops no later than the answer is given.
#[derive(Debug)]
pub(crate) struct StopAtTimeLimit {
    pub deadline: Option<Instant>,
}

impl PhysicalOptimizerRule for StopAtTimeLimit {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        _config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(deadline) = self.deadline else {
            return Ok(plan);
        };
        let deadline = Arc::new(Deadline(deadline));
        plan.transform_up(|node| {
            // A bound on copied rows only passes batches on: the operator above it stops.
            if node.is::<StopAtTimeLimitExec>() || node.is::<BoundCopiedRowsExec>() {
                return Ok(Transformed::no(node));
            }
            let stop: Arc<dyn ExecutionPlan> =
                Arc::new(StopAtTimeLimitExec::new(node, Arc::clone(&deadline)));
            Ok(Transformed::yes(stop))
        })
        .map(|transformed| transformed.data)
    }

    fn name(&self) -> &str {
        "kith_stop_at_time_limit"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Passes its input's batches on until the deadline, then ends with [`PAST_TIME_LIMIT`].
pub(crate) type StopAtTimeLimitExec = PassThroughExec<Deadline>;

/// When a query's time is up.
#[derive(Debug)]
pub(crate) struct Deadline(Instant);

impl Watch for Deadline {
    fn name(&self) -> &'static str {
        "StopAtTimeLimitExec"
    }

    /// Cooperative: the stream takes part in Tokio's budget (see `execute`).
    fn properties(&self, input: &Arc<PlanProperties>) -> Arc<PlanProperties> {
        PlanProperties::clone(input)
            .with_scheduling_type(SchedulingType::Cooperative)
            .into()
    }

    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(StopAtTimeLimitStream {
            schema: input.schema(),
            input: make_cooperative(input),
            deadline: self.0,
            stopped: false,
        })
    }
}

struct StopAtTimeLimitStream {
    schema: SchemaRef,
    input: SendableRecordBatchStream,
    deadline: Instant,
    stopped: bool,
}

impl Stream for StopAtTimeLimitStream {
    type Item = Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.stopped {
            return Poll::Ready(None);
        }
        if Instant::now() >= self.deadline {
            self.stopped = true;
            return Poll::Ready(Some(Err(DataFusionError::Execution(
                PAST_TIME_LIMIT.to_string(),
            ))));
        }
        self.input.poll_next_unpin(cx)
    }
}

impl RecordBatchStream for StopAtTimeLimitStream {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }
}
