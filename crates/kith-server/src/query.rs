//! `POST /v1/query`: SQL over `events` and `rejected_events`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kith_lake::QueryError;
use kith_lake::output;
use kith_state::KeyScope;
use serde::Deserialize;

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::json_body;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    /// A read-only SQL statement (DataFusion dialect).
    pub sql: String,
}

const ARROW_STREAM: &str = "application/vnd.apache.arrow.stream";

enum Format {
    Json,
    Csv,
    Arrow,
}

fn negotiate(headers: &HeaderMap) -> Format {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if accept.contains(ARROW_STREAM) {
        Format::Arrow
    } else if accept.contains("text/csv") {
        Format::Csv
    } else {
        Format::Json
    }
}

pub(crate) fn query_error(err: QueryError) -> ApiError {
    match err {
        QueryError::Invalid(message) => ApiError::new(ErrorCode::InvalidSql, message),
        QueryError::Timeout(_) => ApiError::new(ErrorCode::QueryTimeout, err.to_string()),
        QueryError::OutOfMemory(_) => {
            ApiError::new(ErrorCode::QueryMemoryExceeded, err.to_string())
        }
        QueryError::Internal(message) => {
            tracing::error!(%message, "query failed");
            ApiError::new(ErrorCode::Internal, "the query failed; see the server log")
        }
    }
}

/// Runs one query.
#[utoipa::path(post, path = "/v1/query", tag = "query",
    description = "Runs a read-only SQL query over `events` and `rejected_events` (Delta tables plus the freshest buffered events). Auth: `Authorization: Bearer <read key>`. Answers JSON `{columns, types, rows, row_count, truncated}`, or CSV (`Accept: text/csv`) or Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`).",
    request_body = QueryRequest,
    responses((status = 200, description = "the result"), (status = 400, description = "invalid SQL, timeout or memory limit"), (status = 401, description = "bad key"), (status = 403, description = "not a read key")))]
pub async fn query(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers).as_deref(), KeyScope::Read)?;
    let request: QueryRequest = json_body(&headers, body, r#"{"sql": "..."}"#).await?;
    let (lake, limits) = (app.pipeline.lake.clone(), app.config.query_limits.clone());
    let profiles = app.pipeline.profiles.clone();
    let result = crate::runtimes::spawn_query(async move {
        let extra = if crate::profiles::mentions_profiles(&request.sql) {
            crate::profiles::profile_tables(&profiles)
                .map_err(|e| QueryError::Internal(format!("the profiles could not be read: {e}")))?
        } else {
            Vec::new()
        };
        lake.query_with(&request.sql, &limits, extra).await
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "query task failed");
        ApiError::new(ErrorCode::Internal, "the query failed; see the server log")
    })?
    .map_err(query_error)?;
    let (content_type, body) = match negotiate(&headers) {
        Format::Json => {
            return Ok(axum::Json(output::to_json(&result)).into_response());
        }
        Format::Csv => ("text/csv; charset=utf-8", output::to_csv(&result)),
        Format::Arrow => (ARROW_STREAM, output::to_arrow_ipc(&result)),
    };
    let body = body.map_err(|e| {
        tracing::error!(error = %e, "could not encode a query result");
        ApiError::new(ErrorCode::Internal, "the result could not be encoded")
    })?;
    let mut response = body.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}
