//! Models that score every profile, run in the background: `POST /v1/models/clv/fit` starts a
//! fit (or the schedule does), `GET /v1/models/clv` says how it is going and what the last run
//! found, `GET /v1/models/clv/results` is the last run's report. A run reads the purchases on the
//! query runtime, fits on a blocking thread, then replaces the model's traits on every profile in
//! one transaction (`model_traits.db`), so ingestion and queries go on meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use kith_analytics::{AnalyticsError, ClvDefinition, Data};
use kith_state::KeyScope;
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::read_body;

/// The name CLV runs are kept under (job, traits, last run).
pub const CLV: &str = "clv";

/// When the server refits CLV by itself.
#[derive(Debug, Clone)]
pub struct ClvSchedule {
    /// The definition scheduled runs use (`[models.clv]` in kith.toml), as JSON.
    pub definition: Value,
    /// Refit when the last run is older than this; `None` only on demand.
    pub refresh: Option<Duration>,
    /// How long after start-up the first scheduled check waits (the server has just replayed its
    /// journal and clients are connecting).
    pub first_check_after: Duration,
}

impl Default for ClvSchedule {
    fn default() -> Self {
        ClvSchedule {
            definition: json!({}),
            refresh: Some(Duration::from_secs(24 * 3600)),
            first_check_after: Duration::from_secs(60),
        }
    }
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

    fn finish(&self, model: &'static str, outcome: Result<u64, String>) {
        let mut jobs = self.lock();
        if let Some(job) = jobs.get_mut(model) {
            job.finished_at = Some(now());
            match outcome {
                Ok(profiles) => {
                    job.state = "succeeded";
                    job.profiles_scored = Some(profiles);
                }
                Err(message) => {
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

/// Starts a CLV run in the background; `None` when one is running already.
pub fn start_clv(
    app: &Arc<AppState>,
    definition: ClvDefinition,
    as_sent: Value,
    trigger: &'static str,
) -> Option<JobStatus> {
    let status = app.models.begin(CLV, trigger, as_sent)?;
    let app = app.clone();
    crate::runtimes::queries().spawn(async move {
        let outcome = run_clv(&app, definition).await;
        match &outcome {
            Ok(profiles) => tracing::info!(profiles, trigger, "CLV scores written"),
            Err(e) => tracing::warn!(error = %e, trigger, "CLV run failed"),
        }
        metrics::counter!("kith_model_runs_total", "model" => CLV, "outcome" => if outcome.is_ok() { "succeeded" } else { "failed" }).increment(1);
        app.models.finish(CLV, outcome);
    });
    Some(status)
}

/// Reads the purchases, fits and scores, writes the traits. Returns the profiles scored.
async fn run_clv(app: &Arc<AppState>, definition: ClvDefinition) -> Result<u64, String> {
    let mut limits = app.config.query_limits.clone();
    // A background run reads every purchase; the interactive time limit is not meant for it.
    limits.timeout = limits.timeout.max(Duration::from_secs(3600));
    let data = Data {
        lake: &app.pipeline.lake,
        tables: vec![app.identities.get(&app.pipeline.profiles)],
        limits,
    };
    let purchases = definition.purchases(&data).await.map_err(|e| match e {
        AnalyticsError::Query(q) => format!("reading the purchases failed: {q}"),
        other => other.to_string(),
    })?;
    let profiles = app.pipeline.profiles.clone();
    tokio::task::spawn_blocking(move || {
        let run = definition.score(&purchases).map_err(|e| e.to_string())?;
        let report = serde_json::to_value(&run.report).map_err(|e| e.to_string())?;
        let written = profiles
            .model_traits()
            .replace(
                CLV,
                &definition.trait_names(),
                &report,
                run.profile_traits(),
            )
            .map_err(|e| format!("writing the scores failed: {e}"))?;
        Ok(written.profiles)
    })
    .await
    .map_err(|e| format!("the CLV task failed: {e}"))?
}

/// Starts scheduled runs when the last one is older than the refresh interval. A failed run is
/// retried only after another interval, not on every check.
pub async fn clv_schedule_loop(app: Arc<AppState>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let schedule = app.config.clv.clone();
    let Some(refresh) = schedule.refresh else {
        return;
    };
    let definition = match ClvDefinition::parse(&schedule.definition) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "[models.clv] is not a valid CLV definition; scheduled runs are off");
            return;
        }
    };
    tokio::select! {
        _ = tokio::time::sleep(schedule.first_check_after) => {}
        _ = stop.changed() => return,
    }
    let mut tick = tokio::time::interval(Duration::from_secs(60).min(refresh));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let last_success_age = match app.pipeline.profiles.model_traits().run(CLV) {
            Ok(run) => run.map(|r| {
                let age = chrono::Utc::now().timestamp_micros() - r.computed_at_micros;
                Duration::from_micros(age.max(0) as u64)
            }),
            Err(e) => {
                tracing::error!(error = %e, "reading the last CLV run failed");
                continue;
            }
        };
        let last_attempt_age = app.models.status(CLV).map(|j| j.started.elapsed());
        if scheduled_run_due(last_success_age, last_attempt_age, refresh) {
            start_clv(
                &app,
                definition.clone(),
                schedule.definition.clone(),
                "schedule",
            );
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

/// `POST /v1/models/clv/fit`.
#[utoipa::path(post, path = "/v1/models/clv/fit", tag = "models",
    description = "Starts fitting BG/NBD and Gamma-Gamma on the purchases Kith holds (each attributed to its profile) and scoring every buyer, in the background; answers 202 at once. When it succeeds every scored profile carries `clv_expected_purchases_90d`, `clv_p_alive`, `clv_expected_order_value` and `clv_expected_value_12m` in `model_traits` (names follow `horizon_days` and `clv_months`). Body (optional): `purchase_event`, `value`, `as_of`, `horizon_days`, `clv_months`, `monthly_discount_rate`, `penalizer`, plus `from`, `to`, `timezone`, `where`. Auth: admin key.",
    request_body(content = Object, description = "the definition, e.g. `{\"horizon_days\": 30}`; empty means the defaults"),
    responses((status = 202, description = "the job, `state: running`"), (status = 400, description = "invalid definition: the message names the field"), (status = 409, description = "a CLV run is in progress")))]
pub async fn fit_clv(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.keys
        .authorize(key_from_headers(&headers).as_deref(), KeyScope::Admin)?;
    let bytes = read_body(&headers, body).await?;
    let as_sent: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidJson,
                format!("the body must be a CLV definition object: {e}"),
            )
        })?
    };
    let definition = ClvDefinition::parse(&as_sent)
        .map_err(|e| ApiError::new(ErrorCode::InvalidModel, e.to_string()))?;
    let status = start_clv(&app, definition, as_sent, "api").ok_or_else(|| {
        ApiError::new(
            ErrorCode::ModelRunning,
            "a CLV run is in progress; follow it at GET /v1/models/clv",
        )
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"model": CLV, "job": status})),
    ))
}

/// `GET /v1/models/clv`.
#[utoipa::path(get, path = "/v1/models/clv", tag = "models",
    description = "The CLV job (`running`, `succeeded` or `failed` with its error; null when none ran since start-up), the last successful run (when, how many profiles, the traits it writes) and the schedule. Auth: read key.",
    responses((status = 200, description = "`{model, job, last_run, schedule}`")))]
pub async fn clv_status(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers).as_deref(), KeyScope::Read)?;
    let last_run = last_run(&app)?.map(|mut run| {
        // The status stays small; the report is at /results.
        run.details = Value::Null;
        run
    });
    Ok(Json(json!({
        "model": CLV,
        "job": app.models.status(CLV),
        "last_run": last_run,
        "schedule": {
            "refresh_hours": app.config.clv.refresh.map(|r| r.as_secs_f64() / 3600.0),
            "definition": app.config.clv.definition,
        },
    })))
}

/// `GET /v1/models/clv/results`.
#[utoipa::path(get, path = "/v1/models/clv/results", tag = "models",
    description = "The last successful CLV run's report: the data (customers, repeat customers, purchases), the fitted BG/NBD and Gamma-Gamma parameters with standard errors and log-likelihoods (or why Gamma-Gamma could not be fitted), population totals and the highest-value profiles. Auth: read key.",
    responses((status = 200, description = "`{computed_at, profiles, trait_names, report}`"), (status = 404, description = "no CLV run has succeeded yet")))]
pub async fn clv_results(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers).as_deref(), KeyScope::Read)?;
    let run = last_run(&app)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::ModelNotFitted,
            "no CLV run has succeeded yet; start one with POST /v1/models/clv/fit",
        )
    })?;
    Ok(Json(json!({
        "computed_at": run.computed_at,
        "profiles": run.profiles,
        "trait_names": run.trait_names,
        "report": run.details,
    })))
}

fn last_run(app: &AppState) -> Result<Option<kith_profiles::ModelRun>, ApiError> {
    app.pipeline.profiles.model_traits().run(CLV).map_err(|e| {
        tracing::error!(error = %e, "reading the last CLV run failed");
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
}
