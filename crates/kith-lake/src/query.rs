//! SQL over the event tables, with limits so one query cannot take the server down.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use thiserror::Error;

use crate::{EventTable, Lake};

#[derive(Debug, Error)]
pub enum QueryError {
    /// The query is wrong: syntax, unknown table or column, type mismatch.
    #[error("{0}")]
    Invalid(String),
    #[error("the query ran longer than the {0:?} limit; narrow it with WHERE or LIMIT")]
    Timeout(Duration),
    #[error(
        "the query needs more than the {0} bytes of memory it may use; aggregate or filter more"
    )]
    OutOfMemory(usize),
    /// Something failed that is not the query's fault.
    #[error("query failed: {0}")]
    Internal(String),
}

/// Bounds on one query.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    pub timeout: Duration,
    pub memory_bytes: usize,
    /// Rows returned at most; the rest is cut and `truncated` set.
    pub max_rows: usize,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(30),
            memory_bytes: 1 << 30,
            max_rows: 100_000,
        }
    }
}

pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
}

impl QueryResult {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

fn classify(err: DataFusionError, limits: &QueryLimits) -> QueryError {
    match err {
        DataFusionError::ResourcesExhausted(_) => QueryError::OutOfMemory(limits.memory_bytes),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            classify(*inner, limits)
        }
        DataFusionError::Shared(shared) => classify(
            Arc::try_unwrap(shared).unwrap_or_else(|s| DataFusionError::Execution(s.to_string())),
            limits,
        ),
        // Storage and engine faults are ours, not the query's.
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ParquetError(_)
        | DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::External(_)
        | DataFusionError::Ffi(_) => QueryError::Internal(first_line(&err)),
        // Syntax, planning, schema, casts and arguments: the query is wrong.
        other => QueryError::Invalid(first_line(&other)),
    }
}

fn first_line(err: &DataFusionError) -> String {
    err.to_string()
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Builds a session where `events` and `rejected_events` are Delta plus the buffer.
pub async fn session(lake: &Lake, limits: &QueryLimits) -> Result<SessionContext, QueryError> {
    lake.seal();
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .build_arc()
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(num_cpus_hint());
    let mut ctx = SessionContext::new_with_config_rt(config, runtime);
    datafusion_functions_json::register_all(&mut ctx)
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    for table in lake.tables() {
        register(&ctx, table).await?;
    }
    Ok(ctx)
}

fn num_cpus_hint() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

async fn register(ctx: &SessionContext, table: &EventTable) -> Result<(), QueryError> {
    let view = table.view();
    let internal = |e: DataFusionError| QueryError::Internal(e.to_string());
    let buffered = MemTable::try_new(table.schema(), vec![view.buffered]).map_err(internal)?;
    let mut frame = ctx.read_table(Arc::new(buffered)).map_err(internal)?;
    if let Some(delta) = view.delta {
        delta
            .update_datafusion_session(&ctx.state())
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let provider = delta
            .table_provider()
            .await
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        let stored = ctx.read_table(provider).map_err(internal)?;
        frame = stored.union(frame).map_err(internal)?;
    }
    ctx.register_table(table.name, frame.into_view())
        .map_err(internal)?;
    Ok(())
}

pub(crate) async fn run(
    lake: &Lake,
    sql: &str,
    limits: &QueryLimits,
) -> Result<QueryResult, QueryError> {
    let started = std::time::Instant::now();
    let ctx = session(lake, limits).await?;
    // The work runs as its own task: when the time is up the caller answers at once, and the
    // task is aborted at its next yield point instead of holding the caller hostage.
    let sql = sql.to_string();
    let task_limits = limits.clone();
    let work = tokio::spawn(async move {
        let limits = &task_limits;
        // Reads only: no DDL (which could reach arbitrary files), no DML, no SET.
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let frame = ctx
            .sql_with_options(&sql, options)
            .await
            .map_err(|e| classify(e, limits))?;
        let schema: SchemaRef = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame
            .limit(0, Some(limits.max_rows + 1))
            .map_err(|e| classify(e, limits))?
            .collect()
            .await
            .map_err(|e| classify(e, limits))?;
        Ok::<_, QueryError>((schema, batches))
    });
    let abort = work.abort_handle();
    let (schema, mut batches) = match tokio::time::timeout(limits.timeout, work).await {
        Ok(Ok(result)) => result?,
        Ok(Err(join)) => return Err(QueryError::Internal(format!("query task failed: {join}"))),
        Err(_) => {
            abort.abort();
            return Err(QueryError::Timeout(limits.timeout));
        }
    };
    let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let truncated = total > limits.max_rows;
    if truncated {
        let mut keep = limits.max_rows;
        batches = batches
            .into_iter()
            .filter_map(|b| {
                let take = keep.min(b.num_rows());
                keep -= take;
                (take > 0).then(|| b.slice(0, take))
            })
            .collect();
    }
    metrics::histogram!("kith_query_seconds").record(started.elapsed().as_secs_f64());
    Ok(QueryResult {
        schema,
        batches,
        truncated,
    })
}
