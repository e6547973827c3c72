//! An operator that passes its input's batches on, watched: the guards that stop a query at
//! its time limit (`yield_points`) and that refuse rows too large to copy (`copied_rows`) are
//! both one of these, differing only in what they do to the stream.

use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};

/// What a [`PassThroughExec`] does to the batches it passes on.
pub(crate) trait Watch: std::fmt::Debug + Send + Sync + 'static {
    /// The operator's name in plans (`EXPLAIN`).
    fn name(&self) -> &'static str;

    /// The operator's properties, given its input's: the same unless the watch changes how
    /// the stream is scheduled.
    fn properties(&self, input: &Arc<PlanProperties>) -> Arc<PlanProperties> {
        Arc::clone(input)
    }

    /// The stream passed on, made from the input's.
    fn watch(&self, input: SendableRecordBatchStream) -> SendableRecordBatchStream;
}

/// Passes its one input's batches on through its [`Watch`].
#[derive(Debug)]
pub(crate) struct PassThroughExec<W> {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    watch: Arc<W>,
}

impl<W: Watch> PassThroughExec<W> {
    pub(crate) fn new(input: Arc<dyn ExecutionPlan>, watch: Arc<W>) -> Self {
        PassThroughExec {
            properties: watch.properties(input.properties()),
            input,
            watch,
        }
    }
}

impl<W: Watch> DisplayAs for PassThroughExec<W> {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.watch.name())
    }
}

impl<W: Watch> ExecutionPlan for PassThroughExec<W> {
    fn name(&self) -> &str {
        self.watch.name()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(PassThroughExec::new(
                input,
                Arc::clone(&self.watch),
            ))),
            _ => Err(DataFusionError::Internal(format!(
                "{} takes one input",
                self.watch.name()
            ))),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Ok(self.watch.watch(self.input.execute(partition, context)?))
    }
}
