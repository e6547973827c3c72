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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Csv,
    Arrow,
}

impl Format {
    /// In the order chosen between equally preferred ones: JSON is the default.
    const ALL: [Format; 3] = [Format::Json, Format::Csv, Format::Arrow];

    fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Csv => "text/csv",
            Format::Arrow => ARROW_STREAM,
        }
    }
}

/// One media range of an `Accept` header: `type/subtype` (either may be `*`) and its weight.
struct MediaRange<'a> {
    kind: &'a str,
    subtype: &'a str,
    weight: f32,
}

impl MediaRange<'_> {
    /// How closely the range names `media_type`: 2 exactly, 1 by `type/*`, 0 by `*/*`; `None`
    /// when it does not match.
    fn specificity(&self, media_type: &str) -> Option<u8> {
        let (kind, subtype) = media_type.split_once('/')?;
        match (self.kind, self.subtype) {
            ("*", "*") => Some(0),
            (k, "*") if k.eq_ignore_ascii_case(kind) => Some(1),
            (k, s) if k.eq_ignore_ascii_case(kind) && s.eq_ignore_ascii_case(subtype) => Some(2),
            _ => None,
        }
    }
}

/// The media ranges of an `Accept` value (RFC 9110 §12.5.1), in the order given; elements that
/// do not parse are skipped.
fn media_ranges(accept: &str) -> Vec<MediaRange<'_>> {
    accept
        .split(',')
        .filter_map(|element| {
            let mut parts = element.split(';');
            let (kind, subtype) = parts.next()?.trim().split_once('/')?;
            let (kind, subtype) = (kind.trim(), subtype.trim());
            if kind.is_empty() || subtype.is_empty() || (kind == "*" && subtype != "*") {
                return None;
            }
            let mut weight = 1.0;
            for parameter in parts {
                if let Some((name, value)) = parameter.split_once('=')
                    && name.trim().eq_ignore_ascii_case("q")
                {
                    weight = value
                        .trim()
                        .parse::<f32>()
                        .ok()
                        .filter(|q| (0.0..=1.0).contains(q))?;
                }
            }
            Some(MediaRange {
                kind,
                subtype,
                weight,
            })
        })
        .collect()
}

/// The answer's format: the one `Accept` prefers most, by weight, then by the order the header
/// lists them, then JSON first. No `Accept` (or an empty one) means JSON.
fn negotiate(headers: &HeaderMap) -> Result<Format, ApiError> {
    let Some(value) = headers.get(header::ACCEPT) else {
        return Ok(Format::Json);
    };
    let accept = value.to_str().unwrap_or("");
    if value.as_bytes().iter().all(u8::is_ascii_whitespace) {
        return Ok(Format::Json);
    }
    let ranges = media_ranges(accept);
    let weigh = |format: Format| {
        // The most specific range that names the format decides its weight.
        ranges
            .iter()
            .enumerate()
            .filter_map(|(position, range)| {
                range
                    .specificity(format.media_type())
                    .map(|specificity| (specificity, range.weight, position))
            })
            .max_by_key(|&(specificity, _, position)| (specificity, std::cmp::Reverse(position)))
            .map(|(_, weight, position)| (weight, position))
    };
    let mut chosen: Option<(Format, f32, usize)> = None;
    for format in Format::ALL {
        if let Some((weight, position)) = weigh(format)
            && weight > 0.0
            && chosen.is_none_or(|(_, best, at)| weight > best || (weight == best && position < at))
        {
            chosen = Some((format, weight, position));
        }
    }
    chosen.map(|(format, _, _)| format).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NotAcceptable,
            format!(
                "`Accept: {}` allows none of the formats a query answers in: \
                 application/json (the default), text/csv or {ARROW_STREAM}",
                String::from_utf8_lossy(value.as_bytes()).trim()
            ),
        )
    })
}

pub(crate) fn query_error(err: QueryError) -> ApiError {
    match err {
        QueryError::Invalid(message) | QueryError::TooLarge(message) => {
            ApiError::new(ErrorCode::InvalidSql, message)
        }
        QueryError::Timeout(_)
        | QueryError::PlanningTimeout(_)
        | QueryError::TableTooSlow { .. } => {
            ApiError::new(ErrorCode::QueryTimeout, err.to_string())
        }
        QueryError::OutOfMemory(_)
        | QueryError::AnswerTooLarge(_)
        | QueryError::RowTooLarge { .. }
        | QueryError::TablesTooLarge { .. }
        | QueryError::WorkerOutOfMemory(_) => {
            ApiError::new(ErrorCode::QueryMemoryExceeded, err.to_string())
        }
        QueryError::Crowded(_) | QueryError::Busy { .. } => {
            ApiError::new(ErrorCode::Overloaded, err.to_string())
        }
        QueryError::Internal(message) => {
            tracing::error!(%message, "query failed");
            ApiError::new(ErrorCode::Internal, "the query failed; see the server log")
        }
        QueryError::EngineFault(_) => {
            let message = err.to_string();
            tracing::error!(%message, "the query engine failed");
            ApiError::new(ErrorCode::Internal, message)
        }
    }
}

/// Runs one query.
#[utoipa::path(post, path = "/v1/query", tag = "query",
    description = "Runs a read-only SQL query, in a worker process (`[query] isolation`), over `events` and `rejected_events` (Delta tables plus the freshest buffered events), `profiles` and `profile_identities`. Auth: `Authorization: Bearer <read key>`. Answers JSON `{columns, types, rows, row_count, truncated}`, or CSV (`Accept: text/csv`) or Arrow IPC stream (`Accept: application/vnd.apache.arrow.stream`); the `Kith-Row-Count` and `Kith-Truncated` headers say how many rows came and whether more matched.",
    request_body = QueryRequest,
    responses((status = 200, description = "the result"), (status = 400, description = "invalid SQL, timeout or memory limit"), (status = 401, description = "bad key"), (status = 403, description = "not a read key"), (status = 406, description = "`Accept` allows none of JSON, CSV and Arrow IPC, or asks for CSV of an answer with list, struct or map columns"), (status = 429, description = "the queries running now hold the memory this one needs, or every query thread or worker process, so that none started this one within 10 s; retry after `Retry-After` seconds")))]
pub async fn query(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    let format = negotiate(&headers)?;
    let request: QueryRequest = json_body(&headers, body, r#"{"sql": "..."}"#).await?;
    let (lake, limits) = (app.pipeline.lake.clone(), app.config.query_limits.clone());
    let profiles = app.pipeline.profiles.clone();
    let worker = app.config.query_worker.clone();
    let result = crate::runtimes::run_query_for_request("query", async move {
        let extra = crate::profiles::profile_tables_read_by(&request.sql, &profiles, &limits)?;
        match worker {
            Some(worker) => worker.query(&lake, &request.sql, &limits, extra).await,
            None => lake.query_with(&request.sql, &limits, extra).await,
        }
    })
    .await
    .and_then(|answered| answered.map_err(query_error));
    // How queries end, refusals and failures included (`kith_query_seconds` times the answered).
    let outcome = match &result {
        Ok(_) => "answered",
        Err(e) => e.code.describe().0,
    };
    metrics::counter!("kith_queries_total", "outcome" => outcome).increment(1);
    let result = result?;
    if format == Format::Csv
        && let Some(why) = output::csv_unwritable(&result.schema, "ask for JSON or Arrow")
    {
        return Err(ApiError::new(ErrorCode::NotAcceptable, why));
    }
    let (row_count, truncated) = (result.num_rows(), result.truncated);
    let (content_type, encoding) = match format {
        Format::Json => ("application/json", output::Encoding::Json),
        Format::Csv => ("text/csv; charset=utf-8", output::Encoding::Csv),
        Format::Arrow => (ARROW_STREAM, output::Encoding::ArrowIpc),
    };
    // Written as the client reads it: the answer is held once, as Arrow, and counted in the
    // queries' memory until the last piece has gone, or the client has stopped reading for as
    // long as a query may run.
    let stall_limit = app.config.query_limits.timeout;
    let mut response = crate::answer_body::streamed(result, encoding, stall_limit).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // The same query answers in another format for another `Accept`: caches must keep them apart.
    headers.append(header::VARY, HeaderValue::from_static("accept"));
    // CSV and Arrow have no place for these in the answer itself, as JSON has.
    headers.insert("kith-row-count", HeaderValue::from(row_count));
    headers.insert(
        "kith-truncated",
        HeaderValue::from_static(if truncated { "true" } else { "false" }),
    );
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chosen(accept: Option<&str>) -> Result<Format, ErrorCode> {
        let mut headers = HeaderMap::new();
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
        }
        negotiate(&headers).map_err(|e| e.code)
    }

    #[test]
    fn json_is_the_answer_unless_accept_prefers_another_format() {
        assert_eq!(chosen(None), Ok(Format::Json));
        assert_eq!(chosen(Some("")), Ok(Format::Json));
        assert_eq!(chosen(Some("*/*")), Ok(Format::Json));
        // What browsers' fetch and axios send.
        assert_eq!(
            chosen(Some("application/json, text/plain, */*")),
            Ok(Format::Json)
        );
        assert_eq!(chosen(Some("text/csv")), Ok(Format::Csv));
        assert_eq!(chosen(Some("TEXT/CSV; charset=utf-8")), Ok(Format::Csv));
        assert_eq!(chosen(Some("text/*")), Ok(Format::Csv));
        assert_eq!(chosen(Some(ARROW_STREAM)), Ok(Format::Arrow));
        assert_eq!(chosen(Some("application/*")), Ok(Format::Json));
    }

    #[test]
    fn weights_decide_then_the_order_given() {
        assert_eq!(
            chosen(Some("application/json;q=0.4, text/csv;q=0.9")),
            Ok(Format::Csv)
        );
        assert_eq!(
            chosen(Some("text/csv, application/vnd.apache.arrow.stream")),
            Ok(Format::Csv)
        );
        assert_eq!(
            chosen(Some("application/vnd.apache.arrow.stream, text/csv")),
            Ok(Format::Arrow)
        );
        // The most specific range decides a format's weight: JSON is refused here, CSV is not.
        assert_eq!(
            chosen(Some("application/json;q=0, */*;q=0.2")),
            Ok(Format::Csv)
        );
        assert_eq!(
            chosen(Some("text/csv;q=0, application/json;q=0.5")),
            Ok(Format::Json)
        );
    }

    #[test]
    fn an_accept_that_allows_none_of_them_is_not_acceptable() {
        for accept in [
            "application/xml",
            "text/html, image/*",
            "*/*;q=0",
            "application/json;q=0",
            "nonsense",
            "text/csv;q=2",
            "*/json",
        ] {
            assert_eq!(
                chosen(Some(accept)),
                Err(ErrorCode::NotAcceptable),
                "{accept}"
            );
        }
    }
}
