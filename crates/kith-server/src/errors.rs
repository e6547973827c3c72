//! The one table of API error codes. Every error body is `{message, code, type, link}`.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Every error the API can answer, with its HTTP status and type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidBody,
    PayloadTooLarge,
    TooManyEvents,
    InvalidGzip,
    UnsupportedEncoding,
    InvalidEvent,
    MalformedRequest,
    UriTooLong,
    HeadersTooLarge,
    RequestTimeout,
    MissingApiKey,
    InvalidApiKey,
    RevokedApiKey,
    InsufficientScope,
    InvalidSql,
    QueryTimeout,
    QueryMemoryExceeded,
    NotFound,
    MethodNotAllowed,
    NotAcceptable,
    InvalidProfileLookup,
    ProfileNotFound,
    InvalidParameter,
    MergeRefused,
    InvalidComputedTrait,
    ComputedTraitExists,
    ComputedTraitInConfig,
    ComputedTraitNotFound,
    InvalidAnalysis,
    InvalidModel,
    ModelRunning,
    ModelNotFitted,
    Overloaded,
    StorageUnavailable,
    Starting,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 37] = [
        ErrorCode::InvalidJson,
        ErrorCode::InvalidBody,
        ErrorCode::PayloadTooLarge,
        ErrorCode::TooManyEvents,
        ErrorCode::InvalidGzip,
        ErrorCode::UnsupportedEncoding,
        ErrorCode::InvalidEvent,
        ErrorCode::MalformedRequest,
        ErrorCode::UriTooLong,
        ErrorCode::HeadersTooLarge,
        ErrorCode::RequestTimeout,
        ErrorCode::MissingApiKey,
        ErrorCode::InvalidApiKey,
        ErrorCode::RevokedApiKey,
        ErrorCode::InsufficientScope,
        ErrorCode::InvalidSql,
        ErrorCode::QueryTimeout,
        ErrorCode::QueryMemoryExceeded,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::NotAcceptable,
        ErrorCode::InvalidProfileLookup,
        ErrorCode::ProfileNotFound,
        ErrorCode::InvalidParameter,
        ErrorCode::MergeRefused,
        ErrorCode::InvalidComputedTrait,
        ErrorCode::ComputedTraitExists,
        ErrorCode::ComputedTraitInConfig,
        ErrorCode::ComputedTraitNotFound,
        ErrorCode::InvalidAnalysis,
        ErrorCode::InvalidModel,
        ErrorCode::ModelRunning,
        ErrorCode::ModelNotFitted,
        ErrorCode::Overloaded,
        ErrorCode::StorageUnavailable,
        ErrorCode::Starting,
        ErrorCode::Internal,
    ];

    /// `(code, HTTP status, type, what it means)`.
    pub fn describe(self) -> (&'static str, StatusCode, &'static str, &'static str) {
        use ErrorCode::*;
        use StatusCode as S;
        match self {
            InvalidJson => (
                "invalid_json",
                S::BAD_REQUEST,
                "invalid_request",
                "the body is not valid JSON",
            ),
            InvalidBody => (
                "invalid_body",
                S::BAD_REQUEST,
                "invalid_request",
                "the JSON does not have the expected shape",
            ),
            PayloadTooLarge => (
                "payload_too_large",
                S::BAD_REQUEST,
                "invalid_request",
                "the body is over 500 KB (after decompression)",
            ),
            TooManyEvents => (
                "too_many_events",
                S::BAD_REQUEST,
                "invalid_request",
                "a batch holds more than 2,500 events",
            ),
            InvalidGzip => (
                "invalid_gzip",
                S::BAD_REQUEST,
                "invalid_request",
                "`Content-Encoding: gzip` was sent but the body is not gzip, is cut short, or has bytes after its last gzip member",
            ),
            UnsupportedEncoding => (
                "unsupported_encoding",
                S::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "the body's `Content-Encoding` is not one Kith reads: send it as it is, or gzip-compressed (`Content-Encoding: gzip`)",
            ),
            InvalidEvent => (
                "invalid_event",
                S::BAD_REQUEST,
                "invalid_request",
                "no event in the request was valid; each one's reason is listed",
            ),
            MalformedRequest => (
                "malformed_request",
                S::BAD_REQUEST,
                "invalid_request",
                "the request is not readable HTTP/1.1: a malformed request line or header line, a body length that cannot be told, or a body that broke off before its end",
            ),
            UriTooLong => (
                "uri_too_long",
                S::URI_TOO_LONG,
                "invalid_request",
                "the path and query string are over 65,534 bytes; send the data in a POST body",
            ),
            HeadersTooLarge => (
                "headers_too_large",
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request",
                "more than 100 header lines, or a request line and headers over 128 KiB together",
            ),
            RequestTimeout => (
                "request_timeout",
                S::REQUEST_TIMEOUT,
                "invalid_request",
                "the body stopped arriving: no more of it came within `idle_connection_secs` (default 75)",
            ),
            MissingApiKey => (
                "missing_api_key",
                S::UNAUTHORIZED,
                "auth",
                "no key was sent: use HTTP Basic with the key as user name, a Bearer token, or `writeKey` in the body",
            ),
            InvalidApiKey => (
                "invalid_api_key",
                S::UNAUTHORIZED,
                "auth",
                "the key is not known to this Kith, the `Authorization` header cannot be read (or is sent more than once), or it, the body's `writeKey` and the URL's `writeKey` do not all name the same key",
            ),
            RevokedApiKey => (
                "revoked_api_key",
                S::UNAUTHORIZED,
                "auth",
                "the key was revoked",
            ),
            InsufficientScope => (
                "insufficient_scope",
                S::FORBIDDEN,
                "auth",
                "the key's scope does not allow this call",
            ),
            InvalidSql => (
                "invalid_sql",
                S::BAD_REQUEST,
                "invalid_request",
                "the SQL is wrong or not a read query",
            ),
            QueryTimeout => (
                "query_timeout",
                S::BAD_REQUEST,
                "invalid_request",
                "the query ran past its time limit",
            ),
            QueryMemoryExceeded => (
                "query_memory_exceeded",
                S::BAD_REQUEST,
                "invalid_request",
                "the query, its answer or the profile tables it reads need more memory than queries may use, even alone",
            ),
            NotFound => (
                "not_found",
                S::NOT_FOUND,
                "invalid_request",
                "no such endpoint or resource",
            ),
            MethodNotAllowed => (
                "method_not_allowed",
                S::METHOD_NOT_ALLOWED,
                "invalid_request",
                "the endpoint exists but not for this HTTP method; the `Allow` header and /openapi.json name the methods it takes",
            ),
            NotAcceptable => (
                "not_acceptable",
                S::NOT_ACCEPTABLE,
                "invalid_request",
                "the `Accept` header allows none of the formats the endpoint answers in; the message lists them",
            ),
            InvalidProfileLookup => (
                "invalid_profile_lookup",
                S::BAD_REQUEST,
                "invalid_request",
                "the profile path must be `{type}:{value}` with a known identifier type and a valid value",
            ),
            ProfileNotFound => (
                "profile_not_found",
                S::NOT_FOUND,
                "invalid_request",
                "no profile holds that identifier",
            ),
            InvalidParameter => (
                "invalid_parameter",
                S::BAD_REQUEST,
                "invalid_request",
                "a query-string parameter has a value that cannot be used",
            ),
            MergeRefused => (
                "merge_refused",
                S::CONFLICT,
                "invalid_request",
                "the profiles cannot be merged: the identity guards refuse it (e.g. two different user ids)",
            ),
            InvalidComputedTrait => (
                "invalid_computed_trait",
                S::BAD_REQUEST,
                "invalid_request",
                "the computed trait definition is not valid; the message names the field",
            ),
            ComputedTraitExists => (
                "computed_trait_exists",
                S::CONFLICT,
                "invalid_request",
                "a computed trait with that name exists; remove it first or choose another name",
            ),
            ComputedTraitInConfig => (
                "computed_trait_in_config",
                S::CONFLICT,
                "invalid_request",
                "the computed trait is declared in kith.toml; change it there",
            ),
            InvalidAnalysis => (
                "invalid_analysis",
                S::BAD_REQUEST,
                "invalid_request",
                "the analysis definition is not valid; the message names the field and says why",
            ),
            InvalidModel => (
                "invalid_model",
                S::BAD_REQUEST,
                "invalid_request",
                "the model definition is not valid; the message names the field and says why",
            ),
            ModelRunning => (
                "model_running",
                S::CONFLICT,
                "invalid_request",
                "a run of this model is in progress; follow it and start another when it ends",
            ),
            ModelNotFitted => (
                "model_not_fitted",
                S::NOT_FOUND,
                "invalid_request",
                "the model has not been fitted successfully yet; start a fit first",
            ),
            ComputedTraitNotFound => (
                "computed_trait_not_found",
                S::NOT_FOUND,
                "invalid_request",
                "no computed trait has that name",
            ),
            Overloaded => (
                "overloaded",
                S::TOO_MANY_REQUESTS,
                "system",
                "Kith is busy; retry after the `Retry-After` seconds",
            ),
            StorageUnavailable => (
                "storage_unavailable",
                S::SERVICE_UNAVAILABLE,
                "system",
                "the data could not be made durable (disk full or failing); retry later",
            ),
            Starting => (
                "starting",
                S::SERVICE_UNAVAILABLE,
                "system",
                "Kith is starting: it replays its journal (or loads the demo world) before it answers; retry after `Retry-After` seconds",
            ),
            Internal => (
                "internal",
                S::INTERNAL_SERVER_ERROR,
                "internal",
                "an unexpected error; see the server log",
            ),
        }
    }
}

/// An API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    /// Extra fields merged into the body (e.g. the per-event errors).
    pub details: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    message: &'a str,
    code: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    link: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> ApiError {
        self.details = Some(details);
        self
    }

    pub fn body(&self) -> serde_json::Value {
        let (code, _, kind, _) = self.code.describe();
        let mut body = serde_json::to_value(ErrorBody {
            message: &self.message,
            code,
            kind,
            link: format!("/docs/errors#{code}"),
        })
        .unwrap_or_default();
        if let (Some(serde_json::Value::Object(extra)), Some(map)) =
            (&self.details, body.as_object_mut())
        {
            for (k, v) in extra {
                map.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
        body
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, status, _, _) = self.code.describe();
        // Every error answer by code, collection's included: a request refused before any of
        // its events is read (a wrong or revoked write key, a body that is not JSON) counts
        // no event, so this is where an SDK shipped with a bad key shows.
        metrics::counter!("kith_http_error_responses_total", "code" => code).increment(1);
        let mut response = (status, axum::Json(self.body())).into_response();
        let retry_after = match self.code {
            ErrorCode::Overloaded => Some("1"),
            ErrorCode::StorageUnavailable => Some("5"),
            ErrorCode::Starting => Some("1"),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        if self.code == ErrorCode::UnsupportedEncoding {
            // RFC 9110 §15.5.16: a 415 for a content coding says which codings are accepted.
            response.headers_mut().insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("gzip, identity"),
            );
        }
        response
    }
}

/// `GET /docs/errors`: the error table itself, so every `link` resolves.
#[utoipa::path(get, path = "/docs/errors", tag = "operations",
    description = "Every error code the API answers, with its HTTP status, type and meaning: where each error's `link` leads.",
    responses((status = 200, description = "`{errors: [{code, status, type, meaning}]}`")))]
pub async fn error_docs() -> axum::Json<serde_json::Value> {
    let rows: Vec<_> = ErrorCode::ALL
        .iter()
        .map(|c| {
            let (code, status, kind, meaning) = c.describe();
            serde_json::json!({"code": code, "status": status.as_u16(), "type": kind, "meaning": meaning})
        })
        .collect();
    axum::Json(serde_json::json!({ "errors": rows }))
}

/// Errors answered by the HTTP layer rather than by a handler (a path segment that is not UTF-8,
/// a malformed query string) come as plain text from axum; every error the API answers is the
/// one JSON shape, so they are rewritten into it, their text kept as the message.
pub async fn answer_errors_as_json(response: Response) -> Response {
    let status = response.status();
    let plain_text = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain_text {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string())
        .unwrap_or_default();
    let code = match status.as_u16() {
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        413 => ErrorCode::PayloadTooLarge,
        422 => ErrorCode::InvalidBody,
        500..=599 => ErrorCode::Internal,
        _ => ErrorCode::InvalidParameter,
    };
    let message = match (text.is_empty(), status.is_server_error()) {
        (true, _) => status
            .canonical_reason()
            .unwrap_or("the request cannot be answered")
            .to_string(),
        (false, false) => format!("the request cannot be read: {text}"),
        (false, true) => format!("the request failed: {text}"),
    };
    // The status and headers stay as they were (`Allow`, `Retry-After`); only the body and its
    // type change.
    let mut rewritten = ApiError::new(code, message).into_response();
    *rewritten.status_mut() = status;
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::ErrorCode;

    /// `docs/errors.md` is the table people read; every code the API can answer is in it, with
    /// its status and type.
    #[test]
    fn the_error_docs_list_every_code_with_its_status_and_type() {
        let docs = include_str!("../../../docs/errors.md");
        for code in ErrorCode::ALL {
            let (name, status, kind, _) = code.describe();
            let row = format!("| `{name}` | {} | {kind} |", status.as_u16());
            assert!(docs.contains(&row), "docs/errors.md lacks the row {row}");
        }
    }
}
