//! Models that score every profile (CLV, RFM, risk, preferences), run in the background:
//! `POST /v1/models/{model}/fit` starts a run (or the schedule does), `GET /v1/models/{model}`
//! says how it is going and what the last run found, `GET /v1/models/{model}/results` is the
//! last run's report. A run queries on the query runtime, does its CPU-bound part (CLV's fits) on
//! a blocking thread, then replaces the model's traits on every profile in one transaction
//! (`model_traits.db`), so ingestion and queries go on meanwhile.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use futures::FutureExt;
use kith_analytics::{AnalyticsError, PROFILE_MODELS, ProfileModel};
use kith_state::KeyScope;
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::read_body;

/// When the server reruns a model by itself.
#[derive(Debug, Clone)]
pub struct ModelSchedule {
    /// The definition scheduled runs use (`[models.NAME]` in kith.toml), as JSON.
    pub definition: Value,
    /// Rerun when the last run is older than this; `None` only on demand.
    pub refresh: Option<Duration>,
}

impl Default for ModelSchedule {
    fn default() -> Self {
        ModelSchedule {
            definition: json!({}),
            refresh: Some(Duration::from_secs(24 * 3600)),
        }
    }
}

/// Every model's schedule, and the memory a run may use.
#[derive(Debug, Clone)]
pub struct ModelSchedules {
    pub models: BTreeMap<&'static str, ModelSchedule>,
    /// How long after start-up the first scheduled check waits (the server has just replayed its
    /// journal and clients are connecting).
    pub first_check_after: Duration,
    /// The memory a model run's queries may use together (`[models] memory_mb`); `None`: see
    /// [`run_limits`].
    pub memory_bytes: Option<usize>,
}

/// What a model run's queries may use unless `[models] memory_mb` says: a run aggregates every
/// event it needs in one pass (a group per profile, or per profile and value), more than an
/// interactive query is allowed.
pub const DEFAULT_RUN_MEMORY_BYTES: usize = 4 << 30;

/// The limits a model run reads events under, in the server and in `kith analyze
/// --write-traits` / `kith models clv fit` alike: an hour at least, and `memory_bytes`
/// (`[models] memory_mb`) or else the larger of the query memory and
/// [`DEFAULT_RUN_MEMORY_BYTES`]. A machine with less memory than that needs the setting: a run
/// that takes it all takes the server down with it. Runs count their memory apart from
/// interactive queries, so neither can crowd the other out.
pub fn run_limits(
    query: &kith_lake::QueryLimits,
    memory_bytes: Option<usize>,
) -> kith_lake::QueryLimits {
    kith_lake::QueryLimits {
        timeout: query.timeout.max(Duration::from_secs(3600)),
        memory_bytes: memory_bytes
            .unwrap_or_else(|| query.memory_bytes.max(DEFAULT_RUN_MEMORY_BYTES)),
        // Runs read every row they ask for (they stream); an answer's row cap is not for them.
        max_rows: 1 << 40,
        purpose: kith_lake::MemoryPurpose::ModelRuns,
    }
}

impl Default for ModelSchedules {
    fn default() -> Self {
        ModelSchedules {
            models: PROFILE_MODELS
                .iter()
                .map(|m| (*m, ModelSchedule::default()))
                .collect(),
            first_check_after: Duration::from_secs(60),
            memory_bytes: None,
        }
    }
}

/// The model a path names, as the static name jobs are kept under.
fn known_model(name: &str) -> Result<&'static str, ApiError> {
    PROFILE_MODELS
        .iter()
        .find(|m| **m == name)
        .copied()
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "no model `{name}`; the models that score profiles are {}",
                    PROFILE_MODELS.join(", ")
                ),
            )
        })
}

/// What a model's current or last job is doing.
#[derive(Debug, Clone, Serialize)]
pub struct JobStatus {
    /// `running`, `succeeded` or `failed`.
    pub state: &'static str,
    /// `api` or `schedule`.
    pub trigger: &'static str,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub definition: Value,
    /// Profiles whose traits the run wrote.
    pub profiles_scored: Option<u64>,
    #[serde(skip)]
    started: std::time::Instant,
}

/// The model jobs of one server, by model name.
#[derive(Default)]
pub struct ModelJobs {
    jobs: Mutex<HashMap<&'static str, JobStatus>>,
}

impl ModelJobs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, JobStatus>> {
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks `model` running, unless it already is.
    fn begin(
        &self,
        model: &'static str,
        trigger: &'static str,
        definition: Value,
    ) -> Option<JobStatus> {
        let mut jobs = self.lock();
        if jobs.get(model).is_some_and(|j| j.state == "running") {
            return None;
        }
        let status = JobStatus {
            state: "running",
            trigger,
            started_at: now(),
            finished_at: None,
            error: None,
            definition,
            profiles_scored: None,
            started: std::time::Instant::now(),
        };
        jobs.insert(model, status.clone());
        Some(status)
    }

    fn finish(&self, model: &'static str, outcome: Result<u64, RunFailure>) {
        let mut jobs = self.lock();
        if let Some(job) = jobs.get_mut(model) {
            job.finished_at = Some(now());
            match outcome {
                Ok(profiles) => {
                    job.state = "succeeded";
                    job.profiles_scored = Some(profiles);
                }
                Err(RunFailure::NotEnoughData(message)) => {
                    job.state = NOT_ENOUGH_DATA;
                    job.error = Some(message);
                }
                Err(RunFailure::Failed(message)) => {
                    job.state = "failed";
                    job.error = Some(message);
                }
            }
        }
    }

    pub fn status(&self, model: &str) -> Option<JobStatus> {
        self.lock().get(model).cloned()
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Starts a run of `model` in the background; `None` when one is running already.
pub fn start_model(
    app: &Arc<AppState>,
    model: ProfileModel,
    as_sent: Value,
    trigger: &'static str,
) -> Option<JobStatus> {
    let name = model.name();
    let status = app.models.begin(name, trigger, as_sent)?;
    let app = app.clone();
    crate::runtimes::spawn_query(async move {
        // A panic inside the engine must still end the job: left `running`, every later fit
        // of this model would be refused as already running until a restart.
        let outcome = std::panic::AssertUnwindSafe(run_model(&app, model))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                Err(RunFailure::Failed(
                    "the run failed on a fault inside the query engine; see the server log".into(),
                ))
            });
        let result = match &outcome {
            Ok(profiles) => {
                tracing::info!(model = name, profiles, trigger, "model traits written");
                "succeeded"
            }
            // Not a fault: a new server has no purchases yet, say. Said, not warned about.
            Err(RunFailure::NotEnoughData(why)) => {
                tracing::info!(model = name, reason = %why, trigger, "model not fitted: not enough data yet");
                NOT_ENOUGH_DATA
            }
            Err(RunFailure::Failed(e)) => {
                tracing::warn!(model = name, error = %e, trigger, "model run failed");
                "failed"
            }
        };
        metrics::counter!("kith_model_runs_total", "model" => name, "outcome" => result)
            .increment(1);
        app.models.finish(name, outcome);
    });
    Some(status)
}

/// The state (and metric outcome) of a run with too little data to fit: a new server with no
/// purchases yet is not failing.
const NOT_ENOUGH_DATA: &str = "not_enough_data";

/// Why a model run wrote no traits.
enum RunFailure {
    /// Not enough data for the model yet: no purchases, too few repeat buyers.
    NotEnoughData(String),
    Failed(String),
}

/// What an analytics error says about a run.
fn run_failure(e: AnalyticsError) -> RunFailure {
    match e {
        AnalyticsError::NotEnoughData(why) => RunFailure::NotEnoughData(why),
        other => RunFailure::Failed(explain_run_error(&other)),
    }
}

/// Why a model run failed, in words that name what to change: a run out of memory names the
/// setting of model runs, where the engine's own messages are written for interactive queries
/// (`[query] memory_mb`, "try again in a moment").
pub fn explain_run_error(e: &AnalyticsError) -> String {
    use kith_lake::QueryError;
    let out_of_memory = |limit: usize| {
        format!(
            "reading the events needed more than the {} MiB a model run may use; raise \
             `[models] memory_mb` in kith.toml, or narrow the definition (`from`, `where`, \
             `segment`)",
            limit >> 20
        )
    };
    match e {
        AnalyticsError::Query(
            QueryError::OutOfMemory(limit)
            | QueryError::AnswerTooLarge(limit)
            | QueryError::TablesTooLarge { limit, .. },
        ) => out_of_memory(*limit),
        AnalyticsError::Query(QueryError::Crowded(limit)) => format!(
            "other model runs held the memory this run needed (runs share the {} MiB of \
             `[models] memory_mb`); start it again when they have finished",
            limit >> 20
        ),
        AnalyticsError::Query(q) => format!("reading the events failed: {q}"),
        other => other.to_string(),
    }
}

/// Queries, scores, writes the traits. Returns the profiles scored.
async fn run_model(app: &Arc<AppState>, model: ProfileModel) -> Result<u64, RunFailure> {
    // A background run reads every event it needs; the interactive limits are not meant for it.
    let limits = run_limits(&app.config.query_limits, app.config.models.memory_bytes);
    let data = app
        .identities
        .data(&app.pipeline.lake, &app.pipeline.profiles, limits);
    let gathered = model.gather(&data).await.map_err(run_failure)?;
    let profiles = app.pipeline.profiles.clone();
    tokio::task::spawn_blocking(move || {
        let run = gathered.finish().map_err(run_failure)?;
        let written = profiles
            .model_traits()
            .replace(model.name(), &model.trait_names(), &run.report, run.traits)
            .map_err(|e| RunFailure::Failed(format!("writing the traits failed: {e}")))?;
        Ok(written.profiles)
    })
    .await
    .map_err(|e| RunFailure::Failed(format!("the model task failed: {e}")))?
}

/// Starts scheduled runs of each model whose last run is older than its refresh interval, one
/// model per check (a minute apart). A failed run is retried only after another interval, not
/// on every check.
pub async fn schedule_loop(app: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let schedules = app.config.models.clone();
    let mut planned = Vec::new();
    for (name, schedule) in &schedules.models {
        let Some(refresh) = schedule.refresh else {
            continue;
        };
        match ProfileModel::parse(name, &schedule.definition) {
            Ok(model) => planned.push((model, schedule.definition.clone(), refresh)),
            Err(e) => {
                tracing::error!(model = name, error = %e, "not a valid definition; its scheduled runs are off")
            }
        }
    }
    if planned.is_empty() {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(schedules.first_check_after) => {}
        _ = stop.changed() => return,
    }
    let shortest = planned
        .iter()
        .map(|(_, _, r)| *r)
        .min()
        .unwrap_or(Duration::from_secs(60));
    let mut tick = tokio::time::interval(Duration::from_secs(60).min(shortest));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        for (model, definition, refresh) in &planned {
            let name = model.name();
            let last_success_age = match app.pipeline.profiles.model_traits().run(name) {
                Ok(run) => run.map(|r| {
                    let age = chrono::Utc::now().timestamp_micros() - r.computed_at_micros;
                    Duration::from_micros(age.max(0) as u64)
                }),
                Err(e) => {
                    tracing::error!(model = name, error = %e, "reading the last run failed");
                    continue;
                }
            };
            let last_attempt_age = app.models.status(name).map(|j| j.started.elapsed());
            if scheduled_run_due(last_success_age, last_attempt_age, *refresh)
                && start_model(&app, model.clone(), definition.clone(), "schedule").is_some()
            {
                // One model per check: on a first start every model is due at once, and four
                // runs together would take every query thread for as long as they last.
                break;
            }
        }
    }
}

/// Whether a scheduled run should start: the last successful run (if any) and the last attempt
/// since start-up (if any) are both at least `refresh` old. A model that never ran is due at
/// once; one that keeps failing is retried once per interval, not on every check.
pub fn scheduled_run_due(
    last_success_age: Option<Duration>,
    last_attempt_age: Option<Duration>,
    refresh: Duration,
) -> bool {
    let old_enough = |age: Option<Duration>| age.is_none_or(|a| a >= refresh);
    old_enough(last_success_age) && old_enough(last_attempt_age)
}

/// `POST /v1/models/{model}/fit`.
#[utoipa::path(post, path = "/v1/models/{model}/fit", tag = "models",
    params(("model" = String, Path, description = "clv | rfm | risk | preferences")),
    description = "Starts a run of a model that scores profiles, in the background; answers 202 at once. When it succeeds, every scored profile carries the model's traits in `model_traits` (replacing the last run's): clv writes `clv_expected_purchases_90d`, `clv_p_alive`, `clv_expected_order_value`, `clv_expected_value_12m`; rfm writes `rfm_segment`, `rfm_r`, `rfm_f`, `rfm_m`, `rfm_recency_days`, `rfm_frequency`, `rfm_monetary`; risk writes `activity_trend` and `risk_signals`; preferences writes `top_categories`. Body (optional): the model's definition (docs/models.md, docs/analytics.md). Auth: admin key.",
    request_body(content = Object, description = "the definition, e.g. `{\"horizon_days\": 30}`; empty means the defaults"),
    responses((status = 202, description = "the job, `state: running`"), (status = 400, description = "invalid definition: the message names the field"), (status = 404, description = "no such model"), (status = 409, description = "a run of this model is in progress")))]
pub async fn fit(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Admin)?;
    let name = known_model(&name)?;
    let advice = format!("a {name} definition is a small JSON object (docs/models.md)");
    let bytes = read_body(&headers, body, &advice).await?;
    let as_sent: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body must be a {name} definition object: {e}"),
            )
        })?
    };
    let model = ProfileModel::parse(name, &as_sent)
        .map_err(|e| ApiError::new(ErrorCode::InvalidModel, e.to_string()))?;
    let status = start_model(&app, model, as_sent, "api").ok_or_else(|| {
        ApiError::new(
            ErrorCode::ModelRunning,
            format!("a run of {name} is in progress; follow it at GET /v1/models/{name}"),
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"model": name, "job": status})),
    ))
}

/// `GET /v1/models/{model}`.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "clv | rfm | risk | preferences")),
    description = "The model's job (`running`, `succeeded` or `failed` with its error; null when none ran since start-up), its last successful run (when, how many profiles, the traits it writes) and its schedule. Auth: read key.",
    responses((status = 200, description = "`{model, job, last_run, schedule}`"), (status = 404, description = "no such model")))]
pub async fn status(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let name = known_model(&name)?;
    let last_run = last_run(&app, name)?.map(|run| {
        // The status stays small: the report is at /results, and not here even as a null.
        let mut run = json!(run);
        if let Some(fields) = run.as_object_mut() {
            fields.remove("details");
        }
        run
    });
    let schedule = app.config.models.models.get(name);
    Ok(Json(json!({
        "model": name,
        "job": app.models.status(name),
        "last_run": last_run,
        "schedule": {
            "refresh_hours": schedule.and_then(|s| s.refresh).map(|r| r.as_secs_f64() / 3600.0),
            "definition": schedule.map(|s| s.definition.clone()).unwrap_or(Value::Null),
        },
    })))
}

/// `GET /v1/models/{model}/results`.
#[utoipa::path(get, path = "/v1/models/{model}/results", tag = "models",
    params(("model" = String, Path, description = "clv | rfm | risk | preferences")),
    description = "The last successful run's report. For clv: the data (customers, repeat customers, purchases), the fitted BG/NBD and Gamma-Gamma parameters with standard errors and log-likelihoods (or why Gamma-Gamma could not be fitted), population totals and the highest-value profiles. For rfm, risk and preferences: the analysis's report. Auth: read key.",
    responses((status = 200, description = "`{model, computed_at, profiles, trait_names, report}`"), (status = 404, description = "no such model, or no run has succeeded yet")))]
pub async fn results(
    State(app): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let name = known_model(&name)?;
    let run = last_run(&app, name)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::ModelNotFitted,
            format!("no {name} run has succeeded yet; start one with POST /v1/models/{name}/fit"),
        )
    })?;
    Ok(Json(json!({
        "model": name,
        "computed_at": run.computed_at,
        "profiles": run.profiles,
        "trait_names": run.trait_names,
        "report": run.details,
    })))
}

fn last_run(app: &AppState, name: &str) -> Result<Option<kith_profiles::ModelRun>, ApiError> {
    app.pipeline.profiles.model_traits().run(name).map_err(|e| {
        tracing::error!(model = name, error = %e, "reading the last run failed");
        ApiError::new(
            ErrorCode::Internal,
            "the model store could not be read; see the server log",
        )
    })
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduled_runs_are_due_when_both_the_last_success_and_the_last_attempt_are_old() {
        let day = Duration::from_secs(86_400);
        let hour = Duration::from_secs(3_600);
        assert!(scheduled_run_due(None, None, day), "never ran");
        assert!(
            !scheduled_run_due(Some(hour), None, day),
            "fresh from before a restart"
        );
        assert!(
            scheduled_run_due(Some(2 * day), None, day),
            "stale from before a restart"
        );
        assert!(
            !scheduled_run_due(None, Some(hour), day),
            "failed an hour ago"
        );
        assert!(
            !scheduled_run_due(Some(2 * day), Some(hour), day),
            "running or just failed"
        );
        assert!(scheduled_run_due(Some(2 * day), Some(day), day));
    }

    #[test]
    fn a_run_short_of_memory_names_the_setting_of_model_runs_in_every_form() {
        use kith_lake::QueryError;
        let mib = 1 << 20;
        let short_of_memory = [
            QueryError::OutOfMemory(5 * mib),
            QueryError::AnswerTooLarge(5 * mib),
            QueryError::TablesTooLarge {
                table: "profile_identities".into(),
                bytes: 9 * mib,
                limit: 5 * mib,
            },
        ];
        for error in short_of_memory {
            let said = explain_run_error(&AnalyticsError::Query(error));
            assert!(
                said.contains("more than the 5 MiB a model run may use")
                    && said.contains("raise `[models] memory_mb`")
                    && !said.contains("[query]"),
                "{said}"
            );
        }
        let crowded = explain_run_error(&AnalyticsError::Query(QueryError::Crowded(5 * mib)));
        assert!(
            crowded.contains("share the 5 MiB of `[models] memory_mb`")
                && crowded.contains("start it again")
                && !crowded.contains("in a moment"),
            "{crowded}"
        );
        let other = explain_run_error(&AnalyticsError::Query(QueryError::Timeout(
            Duration::from_secs(3600),
        )));
        assert!(other.starts_with("reading the events failed: "), "{other}");
    }
}
