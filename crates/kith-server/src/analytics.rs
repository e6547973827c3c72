//! `POST /v1/analytics/{rfm,cohorts,funnel,paths,preferences,risk,trends}`: the analyses of `kith-analytics` over the
//! server's event tables, run on the query runtime so they never hold up ingestion.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use kith_analytics::{Analysis, AnalyticsError};
use kith_lake::QueryError;
use kith_state::KeyScope;
use serde_json::Value;

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::json_body;
use crate::query::query_error;

pub(crate) fn analytics_error(err: AnalyticsError) -> ApiError {
    match err {
        AnalyticsError::Invalid { .. } => {
            ApiError::new(ErrorCode::InvalidAnalysis, err.to_string())
        }
        // The SQL is the analysis's own: what made it too large is the definition.
        AnalyticsError::Query(QueryError::TooLarge(message)) => ApiError::new(
            ErrorCode::InvalidAnalysis,
            format!(
                "the definition asks for more than one query can hold: use fewer `where` or \
                 `segment` conditions, shorter `in` lists, or fewer steps ({message})"
            ),
        ),
        AnalyticsError::Query(e) => query_error(e),
        AnalyticsError::Model(message) | AnalyticsError::NotEnoughData(message) => {
            ApiError::new(ErrorCode::InvalidAnalysis, message)
        }
        AnalyticsError::Profiles(message) => {
            tracing::error!(error = %message, "reading profiles for a segment failed");
            ApiError::new(
                ErrorCode::Internal,
                "reading the profiles for the segment failed; see the server log",
            )
        }
    }
}

/// Runs one analysis.
#[utoipa::path(post, path = "/v1/analytics/{analysis}", tag = "analytics",
    description = "Runs an analysis over the events, each attributed to the profile it belongs to now. `analysis` is rfm, cohorts, funnel, paths, preferences, risk or trends. Every definition takes `from`, `to` (RFC 3339 or a date), `timezone`, `where` ([{field, op, value}] on events), `segment` ([{field, op, value}] on profiles, e.g. `profile.model_traits.rfm_segment`) and `breakdown` (a field of the event such as `context.device.type`, or of the profile such as `profile.traits.plan`), plus its own fields (see docs/analytics.md). Auth: read key.",
    params(("analysis" = String, Path, description = "rfm | cohorts | funnel | paths | preferences | risk | trends")),
    request_body(content = Object, description = "the definition, e.g. `{\"steps\": [{\"event\": \"Product Viewed\"}, {\"event\": \"Order Completed\"}], \"window\": \"7d\"}`"),
    responses((status = 200, description = "the report; with `notes` when it found nothing for an event it names that no stored event has (the nearest name there is), or its breakdown put everything under `(none)`"), (status = 400, description = "invalid definition: the message names the field"), (status = 401, description = "bad key"), (status = 429, description = "no query thread was free to start the analysis within 10 s; retry after `Retry-After` seconds")))]
pub async fn analyze(
    State(app): State<Arc<AppState>>,
    Path(kind): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<axum::response::Response, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let definition: Value = json_body(&headers, body, "an analysis definition object").await?;
    let analysis = Analysis::parse(&kind, &definition).map_err(analytics_error)?;
    let (lake, limits) = (app.pipeline.lake.clone(), app.config.query_limits.clone());
    let state = app.clone();
    // Written out on the query runtime, which gives the report's memory back when it ends.
    let report = crate::runtimes::run_query_for_request("analysis", async move {
        let data = state
            .identities
            .data(&lake, &state.pipeline.profiles, limits);
        analysis.run_to_json_text(&data).await
    })
    .await?
    .map_err(analytics_error)?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        report,
    )
        .into_response())
}
