//! SQL over the event tables, with limits so one query cannot take the server down.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::CacheManager;
use datafusion::execution::context::SQLOptions;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, MemoryReservation};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};

mod bounded_functions;
mod copied_rows;
mod global_aggregates;
mod large_constants;
pub(crate) mod memory;
mod near_name;
mod owned_task;
mod pass_through;
mod plan_size;
mod sql_size;
mod unknown_column;
mod window_lists;
pub mod worker;
mod yield_points;
use datafusion::sql::parser::DFParser;
use datafusion::sql::sqlparser::parser::ParserError;
use memory::QueryShare;
pub(crate) use memory::{QueryMemory, held_bytes};
pub use near_name::nearest_name;
pub use owned_task::OwnedTask;
pub use sql_size::QUERY_THREAD_STACK_BYTES;
use thiserror::Error;

use crate::{Lake, TableView};

/// Serializable, so a query worker process can hand it to the server (see [`worker`]).
#[derive(Debug, Error, serde::Serialize, serde::Deserialize)]
pub enum QueryError {
    /// The query is wrong: syntax, unknown table or column, type mismatch.
    #[error("{0}")]
    Invalid(String),
    /// The query holds more terms, operators or `||` than one query may: what it holds and
    /// the bound. Apart from [`QueryError::Invalid`] so that an analysis, whose SQL its caller
    /// did not write, can say which part of its definition to make smaller.
    #[error("{0}")]
    TooLarge(String),
    #[error("the query ran longer than the {0:?} limit; narrow it with WHERE or LIMIT")]
    Timeout(Duration),
    /// The time ran out before the query was planned, so before it read anything: narrowing
    /// what it reads would not help.
    #[error(
        "planning the query took longer than the {0:?} limit, before it read any data: it is \
         too intricate to plan (deeply nested subqueries or CASE levels, many joins or CTEs); \
         write it with fewer levels"
    )]
    PlanningTimeout(Duration),
    #[error(
        "the query needs more than the {} MiB of memory that the queries running at once may \
         use together; filter or aggregate more, or try again when other queries have finished. \
         COUNT(DISTINCT x) beside other aggregates holds every distinct value at once: \
         `SELECT count(*) FROM (SELECT DISTINCT x FROM ...)` counts them in less",
        .0 >> 20
    )]
    OutOfMemory(usize),
    /// The answer itself does not fit in the memory queries may hold until it is sent.
    #[error(
        "the answer is larger than the {} MiB of memory that the queries running at once may \
         hold together until their answers are sent; ask for fewer rows (LIMIT), fewer or \
         shorter columns, or aggregate, or try again when other queries have finished",
        .0 >> 20
    )]
    AnswerTooLarge(usize),
    /// One row of the answer is too large to write out: an answer is written a row at a time at
    /// least, and as JSON or CSV a row takes several times its size again.
    #[error(
        "row {row} of the answer holds {} MiB, more than the {} MiB one row may (a sixteenth of \
         the query memory limit), since a row is written out whole; aggregate into fewer values \
         (a count, a sum, the first few with array_slice) or ask for the parts as rows",
        .bytes >> 20,
        .limit >> 20
    )]
    RowTooLarge {
        row: usize,
        bytes: usize,
        limit: usize,
    },
    /// The tables built for the query (the profile tables) do not fit in the memory queries
    /// may use, even alone.
    #[error(
        "the table `{table}` (with the tables before it, {} MiB) is larger than the {} MiB of \
         memory that the queries running at once may use together; raise `[query] memory_mb` \
         in kith.toml, or try again when other queries have finished",
        .bytes >> 20,
        .limit >> 20
    )]
    TablesTooLarge {
        table: String,
        bytes: usize,
        limit: usize,
    },
    /// Building a table for the query (the `profiles` table, a row per profile) took the whole
    /// time limit, before the query started.
    #[error(
        "building the `{table}` table for the query took longer than the {limit:?} limit \
         ({built} of {rows} rows built, before the query itself started); raise \
         `[query] timeout_secs` in kith.toml. `profile_identities` alone is far quicker to \
         build, and the analytics API reads the profiles without this table"
    )]
    TableTooSlow {
        table: String,
        built: usize,
        rows: usize,
        limit: Duration,
    },
    /// The query would have had the memory it needs, but other queries running now hold it.
    #[error(
        "the queries running now hold the memory this one needs (they share {} MiB); try again \
         in a moment",
        .0 >> 20
    )]
    Crowded(usize),
    /// Every query worker is busy: as many queries run as may at once.
    #[error(
        "the server runs {at_once} queries at once and they are all still running after \
         {waited:?}; retry after `Retry-After` seconds"
    )]
    Busy { at_once: usize, waited: Duration },
    /// The query's worker process ran out of the memory it may use: memory the engine does not
    /// count as it goes (a large batch a join builds, values a function makes) grew past it.
    #[error(
        "the query needed more memory than its process may have (twice the {} MiB query memory \
         limit, beside the tables it reads), in work the engine does not count as it goes: a \
         join or unnest copying wide rows many times, or functions making large values; filter \
         or aggregate earlier, or select fewer or shorter columns",
        .0 >> 20
    )]
    WorkerOutOfMemory(usize),
    /// Something failed that is not the query's fault.
    #[error("query failed: {0}")]
    Internal(String),
    /// The query engine broke down on this query (a panic inside DataFusion, caught at the
    /// query's task): a fault of the engine, which another way of writing the query may avoid.
    #[error(
        "the query engine failed on this query ({0}); this is a fault in the engine, not in the \
         query: writing it another way (for example without joining one CTE to itself several \
         times) may avoid it"
    )]
    EngineFault(String),
}

/// Bounds on one query.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    pub timeout: Duration,
    /// What the queries of this purpose running at once may hold together.
    pub memory_bytes: usize,
    /// Rows returned at most; the rest is cut and `truncated` set.
    pub max_rows: usize,
    /// Whose memory the query counts in.
    pub purpose: MemoryPurpose,
}

impl Default for QueryLimits {
    fn default() -> Self {
        QueryLimits {
            timeout: Duration::from_secs(30),
            memory_bytes: 1 << 30,
            max_rows: 100_000,
            purpose: MemoryPurpose::Queries,
        }
    }
}

/// What a query is for, which decides the memory it shares: queries of one purpose share
/// their `memory_bytes`, and purposes never share, so that a model run holding its memory
/// cannot crowd out the interactive queries (each has its own setting: `[query] memory_mb`,
/// `[models] memory_mb`), whatever the two amounts are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum MemoryPurpose {
    /// Queries a person waits for: SQL, analyses, profiles, segments.
    #[default]
    Queries,
    /// Model runs, which read every event in the background.
    ModelRuns,
    /// Recomputations from every stored event (a computed trait's past).
    Recomputations,
}

pub struct QueryResult {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub truncated: bool,
    /// The answer's share of the queries' memory, given back when the result is dropped.
    _memory: Option<MemoryReservation>,
}

impl QueryResult {
    /// Rows that are not counted in the queries' memory.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>, truncated: bool) -> QueryResult {
        QueryResult {
            schema,
            batches,
            truncated,
            _memory: None,
        }
    }

    /// The same rows, not counted in the queries' memory (the copy shares the batches).
    pub fn uncounted(&self) -> QueryResult {
        QueryResult::new(self.schema.clone(), self.batches.clone(), self.truncated)
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

fn classify(err: DataFusionError, limits: &QueryLimits) -> QueryError {
    classify_ref(&err, limits)
}

fn classify_ref(err: &DataFusionError, limits: &QueryLimits) -> QueryError {
    match err {
        DataFusionError::ResourcesExhausted(_) => QueryError::OutOfMemory(limits.memory_bytes),
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => {
            classify_ref(inner, limits)
        }
        // An error several partitions share (a repartition hands each the same one).
        DataFusionError::Shared(shared) => classify_ref(shared, limits),
        // Several mistakes found at once (`sum(evnt), count(*) FILTER (WHERE evnt > 0)`): the
        // first is answered, as one alone would be.
        DataFusionError::Collection(errors) if !errors.is_empty() => {
            classify_ref(&errors[0], limits)
        }
        DataFusionError::SQL(parse, _) => QueryError::Invalid(syntax_message(parse)),
        DataFusionError::SchemaError(schema_error, _)
            if let datafusion::common::SchemaError::FieldNotFound {
                field,
                valid_fields,
            } = schema_error.as_ref() =>
        {
            QueryError::Invalid(unknown_column::message(field, valid_fields))
        }
        // A time written as the engine cannot read it (`'07/12/2026'`): say how it reads them.
        DataFusionError::ArrowError(arrow_error, _)
            if let arrow::error::ArrowError::ParseError(message) = arrow_error.as_ref()
                && message.starts_with("Error parsing timestamp from") =>
        {
            QueryError::Invalid(format!(
                "{message}; write times as '2026-12-07', '2026-12-07 13:00:00' or \
                 '2026-12-07T13:00:00Z' (ISO 8601), or read other forms with \
                 to_timestamp(text, '%d/%m/%Y')"
            ))
        }
        DataFusionError::Execution(message) if message == yield_points::PAST_TIME_LIMIT => {
            QueryError::Timeout(limits.timeout)
        }
        // A regular expression in the query that does not compile: the engine hands the regex
        // crates' error on as an external one (the planner checks patterns it can simplify).
        DataFusionError::External(inner)
            if inner.downcast_ref::<regex::Error>().is_some()
                || inner.downcast_ref::<regex_syntax::Error>().is_some() =>
        {
            QueryError::Invalid(format!(
                "a regular expression in the query does not compile: {}",
                inner.to_string().replace('\n', " ")
            ))
        }
        // The query's own condition failing on a row of a table file (`WHERE CAST(event AS
        // INT) > 0` over a name that is no number): the file reader evaluates it and hands its
        // error on as text.
        DataFusionError::ParquetError(_)
        | DataFusionError::External(_)
        | DataFusionError::ArrowError(..)
            if let Some(reason) = failed_file_filter(&err.to_string()) =>
        {
            QueryError::Invalid(reason)
        }
        // A table file that cannot be read (damaged data: "Data corruption detected", pages that
        // do not add up) reaches the engine as an Arrow error of Parquet's, or of the store's:
        // ours, and logged, not the query's mistake.
        DataFusionError::ArrowError(arrow_error, _)
            if matches!(
                arrow_error.as_ref(),
                arrow::error::ArrowError::ParquetError(_)
                    | arrow::error::ArrowError::IoError(..)
                    | arrow::error::ArrowError::ExternalError(_)
            ) =>
        {
            QueryError::Internal(first_line(err))
        }
        // Storage and engine faults are ours, not the query's.
        DataFusionError::IoError(_)
        | DataFusionError::ObjectStore(_)
        | DataFusionError::ParquetError(_)
        | DataFusionError::Internal(_)
        | DataFusionError::ExecutionJoin(_)
        | DataFusionError::External(_)
        | DataFusionError::Ffi(_) => QueryError::Internal(first_line(err)),
        // Syntax, planning, schema, casts and arguments: the query is wrong.
        other => QueryError::Invalid(with_json_advice(first_line(other))),
    }
}

/// What a condition the Parquet reader evaluated for the query (see [`classify_ref`]) failed
/// with, said as the engine says it when the same expression fails elsewhere ("Divide by zero
/// error", "Cast error: …"); `None` for other errors, and for kinds that are not the query's
/// mistake (an internal error, memory running out), which stay ours. The reader writes the
/// error it got in Rust's debug form: `ArrowError(CastError("Cannot cast …"), Some(""))`.
fn failed_file_filter(message: &str) -> Option<String> {
    const MARK: &str = "Error evaluating filter predicate: ";
    let found = &message[message.find(MARK)? + MARK.len()..];
    let error = found.strip_prefix("ArrowError(")?;
    let error = error
        .rsplit_once(", Some(")
        .or_else(|| error.rsplit_once(", None)"))
        .map_or(error, |(error, _)| error);
    if error == "DivideByZero" {
        return Some(in_a_condition("Divide by zero error"));
    }
    let (kind, quoted) = error.split_once('(')?;
    let kind = match kind {
        "CastError" => "Cast error",
        "ArithmeticOverflow" => "Arithmetic overflow",
        "ComputeError" => "Compute error",
        "InvalidArgumentError" => "Invalid argument error",
        "ParseError" => "Parser error",
        _ => return None,
    };
    // The text as written in the debug form: quoted, with `\"` and `\\` escaped.
    let text = quoted.strip_prefix('"')?.strip_suffix("\")")?;
    let text = text.replace("\\\"", "\"").replace("\\\\", "\\");
    Some(in_a_condition(&format!("{kind}: {text}")))
}

fn in_a_condition(said: &str) -> String {
    format!("{said} (in a condition of the query, on a row it was tested on)")
}

/// The engine's message, with how Kith's JSON columns are read when the query read one as a
/// struct (`properties.revenue`, `properties['revenue']`: "type Utf8View is not Struct") or
/// called another engine's JSON function (`json_extract`): the engine's words name neither JSON
/// nor the functions that read it.
fn with_json_advice(message: String) -> String {
    let read_as_a_struct =
        message.starts_with("Cannot access field") && message.contains("is not Struct, Map");
    let unknown_json_function = message
        .strip_prefix("Invalid function '")
        .and_then(|rest| rest.split('\'').next())
        .is_some_and(|name| {
            let name = name.to_ascii_lowercase();
            name.starts_with("json") || name == "get_json_object"
        });
    if !(read_as_a_struct || unknown_json_function) {
        return message;
    }
    format!(
        "{}; the JSON columns (properties, context, traits, integrations, extra) are text, read \
         with functions: properties->>'revenue' or json_as_text(properties, 'revenue') (any \
         value, as text), json_get_float(properties, 'revenue') (numbers), \
         json_get_str(context, 'page', 'url') (strings, nested)",
        message.trim_end_matches('.')
    )
}

/// What a query's task ended with when it did not end: a panic inside the engine (whose
/// message is kept), or the task cancelled.
fn engine_fault(join: tokio::task::JoinError) -> QueryError {
    match join.try_into_panic() {
        Ok(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_string());
            QueryError::EngineFault(message)
        }
        Err(join) => QueryError::Internal(format!("query task failed: {join}")),
    }
}

/// The answer for a query that ran out of time: whether it was still planning (the plan was
/// not ready within the limit) or running.
fn out_of_time(
    started: std::time::Instant,
    planned: &std::sync::OnceLock<std::time::Instant>,
    limits: &QueryLimits,
) -> QueryError {
    let planned_in_time = planned
        .get()
        .is_some_and(|at| at.duration_since(started) < limits.timeout);
    if planned_in_time {
        QueryError::Timeout(limits.timeout)
    } else {
        QueryError::PlanningTimeout(limits.timeout)
    }
}

/// Plans `sql` as one read-only statement: no DDL (which could reach arbitrary files), no DML,
/// no SET. Parsed here rather than by `SessionContext::sql` so that an empty text or several
/// statements get an answer that says so.
async fn read_query(
    ctx: &SessionContext,
    sql: &str,
    limits: &QueryLimits,
    tables_on_request: &[String],
) -> Result<DataFrame, QueryError> {
    sql_size::check(sql)?;
    let mut statements = DFParser::parse_sql(sql).map_err(|e| classify(e, limits))?;
    let statement = match (statements.pop_front(), statements.len()) {
        (None, _) => {
            return Err(QueryError::Invalid(
                "the SQL is empty: send one query, such as `SELECT count(*) FROM events`".into(),
            ));
        }
        (Some(statement), 0) => statement,
        (Some(_), more) => {
            return Err(QueryError::Invalid(format!(
                "the SQL holds {} statements: send one at a time",
                more + 1
            )));
        }
    };
    plan_size::check_statement(&statement)?;
    let plan = ctx
        .state()
        .statement_to_plan(statement)
        .await
        .map_err(|e| name_the_tables(ctx, tables_on_request, classify(e, limits)))?;
    plan_size::check(&plan)?;
    if let Some(what) = writes(&plan) {
        return Err(QueryError::Invalid(format!(
            "queries only read here, and this one {what}; events are added by sending them \
             (POST /v1/batch)"
        )));
    }
    // The check above names the usual cases; this one also finds them nested (EXPLAIN INSERT).
    SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false)
        .verify_plan(&plan)
        .map_err(|e| classify(e, limits))?;
    ctx.execute_logical_plan(plan)
        .await
        .map_err(|e| classify(e, limits))
}

/// What `plan` would change, if it changes anything.
fn writes(plan: &LogicalPlan) -> Option<&'static str> {
    match plan {
        LogicalPlan::Ddl(_) => Some("creates, changes or drops a table or view"),
        LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => {
            Some("writes rows (INSERT, UPDATE, DELETE or COPY)")
        }
        LogicalPlan::Statement(_) => {
            Some("is a statement (SET, a transaction or a prepared statement)")
        }
        _ => None,
    }
}

/// A query naming a table that does not exist is answered with the tables that do (those
/// registered, and those built on request), instead of DataFusion's
/// `table 'datafusion.public.x' not found`.
fn name_the_tables(
    ctx: &SessionContext,
    tables_on_request: &[String],
    err: QueryError,
) -> QueryError {
    let QueryError::Invalid(message) = &err else {
        return err;
    };
    let Some(missing) = message
        .strip_prefix("table '")
        .and_then(|rest| rest.strip_suffix("' not found"))
    else {
        return err;
    };
    let missing = missing
        .strip_prefix("datafusion.public.")
        .unwrap_or(missing);
    let mut tables = ctx
        .catalog("datafusion")
        .and_then(|catalog| catalog.schema("public"))
        .map(|schema| schema.table_names())
        .unwrap_or_default();
    tables.extend(tables_on_request.iter().cloned());
    tables.sort();
    tables.dedup();
    QueryError::Invalid(format!(
        "there is no table `{missing}`; the tables are {}",
        tables.join(", ")
    ))
}

/// A parse error as a person reads it: DataFusion's own text wraps it in Rust's debug form
/// (`SQL error: ParserError("Expected: ...")`).
fn syntax_message(err: &ParserError) -> String {
    let detail = match err {
        ParserError::TokenizerError(detail) | ParserError::ParserError(detail) => detail.as_str(),
        ParserError::RecursionLimitExceeded => "it nests too deeply to be read",
    };
    format!("the SQL does not parse: {detail}")
}

/// The first line of `err`'s message, without DataFusion's prefix (`Error during planning: `,
/// `Execution error: `, `Arrow error: `), which says nothing to the person who wrote the query.
fn first_line(err: &DataFusionError) -> String {
    err.message().lines().next().unwrap_or_default().to_string()
}

/// What a query reads, and shares with the other queries of its process: each event table as
/// it is at one moment (its Delta snapshot and the rows buffered since), the Parquet metadata
/// caches and the memory pool. Taken from the [`Lake`] in the server, or rebuilt from a snapshot
/// in a query worker process (see [`worker`]).
pub(crate) struct Sources {
    pub(crate) tables: Vec<Source>,
    pub(crate) caches: Arc<CacheManager>,
    pub(crate) memory: Arc<dyn MemoryPool>,
    /// Tables the caller builds on request, named when a query asks for one that does not exist.
    pub(crate) tables_on_request: Vec<String>,
}

/// One event table as a query sees it.
pub(crate) struct Source {
    pub(crate) name: String,
    /// Where the table lives on disk.
    pub(crate) path: std::path::PathBuf,
    pub(crate) schema: SchemaRef,
    pub(crate) view: TableView,
}

impl Sources {
    /// The lake's tables as they are now, every event it was handed included.
    pub(crate) fn of(lake: &Lake, limits: &QueryLimits) -> Sources {
        lake.seal();
        Sources {
            tables: lake
                .tables()
                .iter()
                .map(|table| Source {
                    name: table.name.to_string(),
                    path: table.path().to_path_buf(),
                    schema: table.schema(),
                    view: table.view(),
                })
                .collect(),
            caches: lake.query_caches.clone(),
            memory: lake.query_memory.pool(limits.purpose, limits.memory_bytes),
            tables_on_request: lake.tables_on_request(),
        }
    }
}

/// Builds a session where `events` and `rejected_events` are Delta plus the buffer.
pub async fn session(lake: &Lake, limits: &QueryLimits) -> Result<SessionContext, QueryError> {
    session_over(&Sources::of(lake, limits), limits).await
}

async fn session_over(
    sources: &Sources,
    limits: &QueryLimits,
) -> Result<SessionContext, QueryError> {
    let mut runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(QueryShare::new(
            sources.memory.clone(),
            limits.memory_bytes,
        )))
        .build()
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    runtime.cache_manager = sources.caches.clone();
    let runtime = Arc::new(runtime);
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(num_cpus_hint());
    // DataFusion 55's leaf-expression pushdown mis-plans JSON lookups (`json_get_str`) above
    // joins: "Schema contains qualified field name … __datafusion_extracted_N … ambiguous"
    // (apache/datafusion#20430, #22895, PR #25412). Without it such queries plan and run.
    config
        .options_mut()
        .optimizer
        .enable_leaf_expression_pushdown = false;
    // What one function call, or one constant over a batch, may make: memory DataFusion does
    // not count against the limit.
    let max_result_bytes = limits.memory_bytes / 8;
    let batch_size = config.batch_size();
    // Every operator stops when the time is up (see `yield_points`): a query stops working when
    // its timeout is answered.
    let state = datafusion::execution::SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_optimizer_rules(global_aggregates::optimizer_rules())
        .with_physical_optimizer_rule(Arc::new(copied_rows::BoundCopiedRows {
            // A scalar subquery's value is copied onto each row of a batch, as a constant is.
            broadcast_bytes: large_constants::largest_constant(max_result_bytes, batch_size),
        }))
        .with_physical_optimizer_rule(Arc::new(yield_points::StopAtTimeLimit {
            deadline: std::time::Instant::now().checked_add(limits.timeout),
        }))
        .build();
    let mut ctx = SessionContext::new_with_state(state);
    datafusion_functions_json::register_all(&mut ctx)
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    bounded_functions::bound_growing_functions(&mut ctx, max_result_bytes)
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    ctx.add_optimizer_rule(Arc::new(large_constants::RefuseLargeConstants {
        max_batch_bytes: max_result_bytes,
    }));
    ctx.add_optimizer_rule(Arc::new(window_lists::RefuseGrowingWindows));
    for table in &sources.tables {
        register(&ctx, table).await?;
    }
    Ok(ctx)
}

fn num_cpus_hint() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

async fn register(ctx: &SessionContext, table: &Source) -> Result<(), QueryError> {
    let view = &table.view;
    let internal = |e: DataFusionError| QueryError::Internal(e.to_string());
    let Some(delta) = &view.delta else {
        let buffered = MemTable::try_new(table.schema.clone(), vec![view.buffered.clone()])
            .map_err(internal)?;
        ctx.register_table(table.name.as_str(), Arc::new(buffered))
            .map_err(internal)?;
        return Ok(());
    };
    delta
        .update_datafusion_session(&ctx.state())
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    let provider = delta
        .table_provider()
        .await
        .map_err(|e| QueryError::Internal(e.to_string()))?;
    // Delta scans read strings as Utf8View while the buffer holds Utf8. The two sides of the
    // union must have the very same schema, or plans that push expressions into both sides fail
    // to type-check, so the buffered rows take the scan's types (a cheap cast: views over the
    // same bytes).
    let scanned = provider.schema();
    let buffered = view
        .buffered
        .iter()
        .map(|batch| conform(batch, &scanned))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| QueryError::Internal(format!("buffered rows do not fit the table: {e}")))?;
    let buffered = MemTable::try_new(scanned, vec![buffered]).map_err(internal)?;
    let stored = ctx.read_table(provider).map_err(internal)?;
    let frame = stored
        .union(ctx.read_table(Arc::new(buffered)).map_err(internal)?)
        .map_err(internal)?;
    ctx.register_table(table.name.as_str(), frame.into_view())
        .map_err(internal)?;
    Ok(())
}

/// `batch` with its columns cast to `schema`'s types (same columns, same order).
fn conform(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    let columns = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(column, field)| {
            if column.data_type() == field.data_type() {
                Ok(column.clone())
            } else {
                arrow::compute::cast(column, field.data_type())
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// A table registered next to the event tables for one query (e.g. `profiles`). Cloning
/// shares the batches.
#[derive(Clone)]
pub struct ExtraTable {
    pub name: String,
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    /// Held beyond the query by a cache shared by many queries (the identity table analyses
    /// reuse): counting it in each query's memory would count one table many times over. A
    /// table built for the query is counted while the query works.
    pub shared: bool,
}

/// Registers tables built for one query (the profile tables), counting what they hold in
/// the queries' shared memory for as long as the returned reservation lives: built per query,
/// at a million profiles they take hundreds of MB, and several queries at once must not
/// take more than the limit between them. Shared tables are registered without counting.
fn register_extra_tables(
    ctx: &SessionContext,
    extra: Vec<ExtraTable>,
    limits: &QueryLimits,
) -> Result<MemoryReservation, QueryError> {
    let pool = ctx.runtime_env().memory_pool.clone();
    let held = MemoryConsumer::new("tables built for the query").register(&pool);
    for table in extra {
        let bytes = if table.shared {
            0
        } else {
            table
                .batches
                .iter()
                .map(memory::held_bytes)
                .fold(0usize, usize::saturating_add)
        };
        if held.try_grow(bytes).is_err() {
            let too_large = QueryError::TablesTooLarge {
                table: table.name,
                bytes: held.size().saturating_add(bytes),
                limit: limits.memory_bytes,
            };
            return Err(memory::crowded_out(too_large, &pool));
        }
        let provider = MemTable::try_new(table.schema, vec![table.batches])
            .map_err(|e| QueryError::Internal(e.to_string()))?;
        ctx.register_table(table.name.as_str(), Arc::new(provider))
            .map_err(|e| QueryError::Internal(e.to_string()))?;
    }
    Ok(held)
}

pub(crate) async fn run(
    lake: &Lake,
    sql: &str,
    limits: &QueryLimits,
    extra: Vec<ExtraTable>,
) -> Result<QueryResult, QueryError> {
    run_over(&Sources::of(lake, limits), sql, limits, extra).await
}

/// Runs `sql` over `sources` and `extra` within `limits`, in this process.
async fn run_over(
    sources: &Sources,
    sql: &str,
    limits: &QueryLimits,
    extra: Vec<ExtraTable>,
) -> Result<QueryResult, QueryError> {
    let started = std::time::Instant::now();
    let ctx = session_over(sources, limits).await?;
    let tables_held = register_extra_tables(&ctx, extra, limits)?;
    // The work runs as its own task: when the time is up the caller answers at once, and the
    // task is aborted at its next yield point instead of holding the caller hostage.
    let sql = sql.to_string();
    let task_limits = limits.clone();
    let pool = ctx.runtime_env().memory_pool.clone();
    let tables_on_request = sources.tables_on_request.clone();
    // When the plan was ready, so a query out of time is told whether it was still planning.
    let planned = Arc::new(std::sync::OnceLock::new());
    let planned_in_task = Arc::clone(&planned);
    let work = OwnedTask::new(tokio::spawn(async move {
        let limits = &task_limits;
        let frame = read_query(&ctx, &sql, limits, &tables_on_request).await?;
        let schema: SchemaRef = memory::answered_schema(frame.schema().as_arrow());
        // EXPLAIN [ANALYZE] must stay the root of its plan; its answer is a few rows anyway.
        let explains = matches!(
            frame.logical_plan(),
            LogicalPlan::Explain(_) | LogicalPlan::Analyze(_)
        );
        let frame = if explains {
            frame
        } else {
            frame
                .limit(0, Some(limits.max_rows + 1))
                .map_err(|e| classify(e, limits))?
        };
        let pool = ctx.runtime_env().memory_pool.clone();
        let (batches, memory) =
            memory::collect_counted(frame, &pool, limits, &planned_in_task).await?;
        // The tables stay counted while the query works; an answer taken from them is
        // counted on its own from here on.
        drop(tables_held);
        Ok::<_, QueryError>((schema, batches, memory))
    }));
    // When the time is up, dropping `work` aborts it.
    let (schema, mut batches, memory) = match tokio::time::timeout(limits.timeout, work).await {
        Ok(Ok(Err(QueryError::Timeout(_)))) | Err(_) => {
            return Err(out_of_time(started, &planned, limits));
        }
        Ok(Ok(result)) => result.map_err(|e| memory::crowded_out(e, &pool))?,
        Ok(Err(join)) => return Err(engine_fault(join)),
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
    if let Some(why) = crate::output::unshowable_value(&schema, &batches) {
        return Err(QueryError::Invalid(why));
    }
    let row_limit = limits.memory_bytes / 16;
    if let Some((row, bytes)) = memory::row_larger_than(&batches, row_limit) {
        return Err(QueryError::RowTooLarge {
            row,
            bytes,
            limit: row_limit,
        });
    }
    metrics::histogram!("kith_query_seconds").record(started.elapsed().as_secs_f64());
    Ok(QueryResult {
        schema,
        batches,
        truncated,
        _memory: Some(memory),
    })
}

/// Runs `sql` and hands each result batch to `each` as it is produced, so a large answer is
/// never held whole (analyses that fold every event into per-profile state use it). The time
/// limit covers the whole run, `each` included; the memory limit applies to the query's own
/// operators.
///
/// As in [`run_over`], the engine works in a task of its own: when the time is up the caller
/// is answered at once (the task is aborted at its next yield point), and a panic inside the
/// engine ends the query as [`QueryError::EngineFault`]. `each` runs on the caller's task,
/// since it borrows the caller's state; the engine makes the next batch meanwhile. Analyses'
/// queries are timed in `kith_query_seconds`; background work (model runs, recomputations) is
/// not.
pub(crate) async fn stream(
    lake: &Lake,
    sql: &str,
    limits: &QueryLimits,
    extra: Vec<ExtraTable>,
    mut each: impl FnMut(&RecordBatch) + Send,
) -> Result<(), QueryError> {
    use futures::StreamExt;
    let started = std::time::Instant::now();
    let ctx = session(lake, limits).await?;
    let tables_held = register_extra_tables(&ctx, extra, limits)?;
    let pool = ctx.runtime_env().memory_pool.clone();
    let tables_on_request = lake.tables_on_request();
    let sql = sql.to_string();
    let task_limits = limits.clone();
    // When the plan was ready, so a query out of time is told whether it was still planning.
    let planned = Arc::new(std::sync::OnceLock::new());
    let planned_in_task = Arc::clone(&planned);
    // One batch waits while `each` folds the one before (and the engine may hold a third
    // while it waits to hand it over).
    let (sender, mut made) = tokio::sync::mpsc::channel(1);
    let work = OwnedTask::new(tokio::spawn(async move {
        let limits = &task_limits;
        let _tables_held = tables_held;
        let frame = read_query(&ctx, &sql, limits, &tables_on_request).await?;
        let mut batches = frame
            .execute_stream()
            .await
            .map_err(|e| classify(e, limits))?;
        let _ = planned_in_task.set(std::time::Instant::now());
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| classify(e, limits))?;
            if sender.send(batch).await.is_err() {
                break; // the caller has stopped listening
            }
        }
        Ok::<_, QueryError>(())
    }));
    let folded = async {
        while let Some(batch) = made.recv().await {
            each(&batch);
        }
        work.await
    };
    // When the time is up, dropping `folded` drops `work`, which aborts it.
    match tokio::time::timeout(limits.timeout, folded).await {
        Ok(Ok(Err(QueryError::Timeout(_)))) | Err(_) => Err(out_of_time(started, &planned, limits)),
        Ok(Ok(Err(err))) => Err(memory::crowded_out(err, &pool)),
        Ok(Err(join)) => Err(engine_fault(join)),
        Ok(Ok(Ok(()))) => {
            // Queries a person waits for; model runs and recomputations take minutes or hours
            // in the background and would swamp the latency this shows.
            if limits.purpose == MemoryPurpose::Queries {
                metrics::histogram!("kith_query_seconds").record(started.elapsed().as_secs_f64());
            }
            Ok(())
        }
    }
}

/// One person's events, newest first: the customer-360 timeline.
#[derive(Debug, Clone, Default)]
pub struct TimelineQuery {
    pub user_ids: Vec<String>,
    pub anonymous_ids: Vec<String>,
    /// Emails (as identifiers keep them: trimmed, lower case) whose records without a user or
    /// anonymous id belong to the person.
    pub emails: Vec<String>,
    /// Only these message types (`track`, `page`, ...); all when empty.
    pub types: Vec<String>,
    /// Only this event name.
    pub event: Option<String>,
    /// Only events strictly before this `(timestamp µs, message_id)` position (the page cursor).
    pub before: Option<(i64, String)>,
    /// Only events at or after this time (µs).
    pub since_micros: Option<i64>,
    pub limit: usize,
}

pub(crate) async fn timeline(
    lake: &Lake,
    query: &TimelineQuery,
    limits: &QueryLimits,
) -> Result<QueryResult, QueryError> {
    use datafusion::prelude::{Expr, col, lit};
    use datafusion::scalar::ScalarValue;

    let ctx = session(lake, limits).await?;
    let internal = |e: DataFusionError| QueryError::Internal(e.to_string());
    let strings = |values: &[String]| values.iter().map(|v| lit(v.clone())).collect::<Vec<Expr>>();
    let timestamp = |micros: i64| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(micros),
            Some("UTC".into()),
        ))
    };
    let mut who: Option<Expr> = None;
    for (column, values) in [
        ("user_id", &query.user_ids),
        ("anonymous_id", &query.anonymous_ids),
    ] {
        if values.is_empty() {
            continue;
        }
        let matches = col(column).in_list(strings(values), false);
        who = Some(match who {
            Some(w) => w.or(matches),
            None => matches,
        });
    }
    // Records that carry neither id (CRM contacts) belong to whoever holds their email, as
    // analyses attribute them; the email compared as identifiers keep it.
    if !query.emails.is_empty() {
        use datafusion::functions::expr_fn::{btrim, lower};
        let matches = col("user_id")
            .is_null()
            .and(col("anonymous_id").is_null())
            .and(lower(btrim(vec![col("email")])).in_list(strings(&query.emails), false));
        who = Some(match who {
            Some(w) => w.or(matches),
            None => matches,
        });
    }
    let Some(mut filter) = who else {
        return Ok(QueryResult::new(
            crate::schema::EVENTS_SCHEMA.clone(),
            Vec::new(),
            false,
        ));
    };
    if !query.types.is_empty() {
        filter = filter.and(col("type").in_list(strings(&query.types), false));
    }
    if let Some(event) = &query.event {
        filter = filter.and(col("event").eq(lit(event.clone())));
    }
    if let Some(since) = query.since_micros {
        filter = filter.and(col("timestamp").gt_eq(timestamp(since)));
    }
    if let Some((micros, message_id)) = &query.before {
        filter = filter.and(
            col("timestamp").lt(timestamp(*micros)).or(col("timestamp")
                .eq(timestamp(*micros))
                .and(col("message_id").lt(lit(message_id.clone())))),
        );
    }
    let frame = ctx
        .table("events")
        .await
        .map_err(internal)?
        .filter(filter)
        .map_err(internal)?
        .sort(vec![
            col("timestamp").sort(false, false),
            col("message_id").sort(false, false),
        ])
        .map_err(internal)?
        .limit(0, Some(query.limit))
        .map_err(internal)?;
    let schema: SchemaRef = memory::answered_schema(frame.schema().as_arrow());
    let pool = ctx.runtime_env().memory_pool.clone();
    let planned = std::sync::OnceLock::new();
    let work = memory::collect_counted(frame, &pool, limits, &planned);
    let (batches, memory) = match tokio::time::timeout(limits.timeout, work).await {
        Ok(result) => result.map_err(|e| memory::crowded_out(e, &pool))?,
        Err(_) => return Err(QueryError::Timeout(limits.timeout)),
    };
    Ok(QueryResult {
        schema,
        batches,
        truncated: false,
        _memory: Some(memory),
    })
}

#[cfg(test)]
mod engine_fault_tests {
    use super::*;

    // A panic inside the engine reaches the query's task; the answer keeps its message and
    // says it is the engine's fault, not the query's.
    #[tokio::test]
    async fn a_panic_in_the_engine_is_answered_as_the_engines_fault() {
        let task = tokio::spawn(async { panic!("partition not used yet") });
        let join = task.await.unwrap_err();
        let err = engine_fault(join);
        assert!(matches!(err, QueryError::EngineFault(_)));
        assert!(
            err.to_string()
                .starts_with("the query engine failed on this query (partition not used yet)"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod failed_file_filter_tests {
    use super::failed_file_filter;

    /// The reader's debug text is said in the engine's words; kinds that are not the query's
    /// mistake stay internal.
    #[test]
    fn only_the_querys_own_mistakes_are_read_from_the_readers_text() {
        let reader = |error: &str| {
            format!("External: Compute error: Error evaluating filter predicate: {error}")
        };
        for (error, said) in [
            (
                r#"ArrowError(DivideByZero, Some(""))"#,
                "Divide by zero error",
            ),
            (
                r#"ArrowError(CastError("Cannot cast string 'a' to value of Int32 type"), None)"#,
                "Cast error: Cannot cast string 'a' to value of Int32 type",
            ),
            (
                r#"ArrowError(ArithmeticOverflow("Overflow happened on: 1 - 2"), Some(""))"#,
                "Arithmetic overflow: Overflow happened on: 1 - 2",
            ),
            (
                r#"ArrowError(ComputeError("a \"quoted\" \\ word"), Some(""))"#,
                r#"Compute error: a "quoted" \ word"#,
            ),
        ] {
            assert_eq!(
                failed_file_filter(&reader(error)).as_deref(),
                Some(
                    format!("{said} (in a condition of the query, on a row it was tested on)")
                        .as_str()
                ),
                "{error}"
            );
        }
        for not_the_querys in [
            r#"Internal("a bug")"#,
            r#"ResourcesExhausted("out of memory")"#,
            r#"ArrowError(IoError("disk", Custom), Some(""))"#,
        ] {
            assert_eq!(
                failed_file_filter(&reader(not_the_querys)),
                None,
                "{not_the_querys}"
            );
        }
        assert_eq!(failed_file_filter("Parquet error: a page is damaged"), None);
    }
}
