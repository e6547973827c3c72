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

    /// `(code, HTTP status, type)`. What each means is in `docs/errors.md`, which
    /// `GET /docs/errors` serves.
    pub fn describe(self) -> (&'static str, StatusCode, &'static str) {
        use ErrorCode::*;
        use StatusCode as S;
        match self {
            InvalidJson => ("invalid_json", S::BAD_REQUEST, "invalid_request"),
            InvalidBody => ("invalid_body", S::BAD_REQUEST, "invalid_request"),
            PayloadTooLarge => ("payload_too_large", S::BAD_REQUEST, "invalid_request"),
            TooManyEvents => ("too_many_events", S::BAD_REQUEST, "invalid_request"),
            InvalidGzip => ("invalid_gzip", S::BAD_REQUEST, "invalid_request"),
            UnsupportedEncoding => (
                "unsupported_encoding",
                S::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
            ),
            InvalidEvent => ("invalid_event", S::BAD_REQUEST, "invalid_request"),
            MalformedRequest => ("malformed_request", S::BAD_REQUEST, "invalid_request"),
            UriTooLong => ("uri_too_long", S::URI_TOO_LONG, "invalid_request"),
            HeadersTooLarge => (
                "headers_too_large",
                S::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "invalid_request",
            ),
            RequestTimeout => ("request_timeout", S::REQUEST_TIMEOUT, "invalid_request"),
            MissingApiKey => ("missing_api_key", S::UNAUTHORIZED, "auth"),
            InvalidApiKey => ("invalid_api_key", S::UNAUTHORIZED, "auth"),
            RevokedApiKey => ("revoked_api_key", S::UNAUTHORIZED, "auth"),
            InsufficientScope => ("insufficient_scope", S::FORBIDDEN, "auth"),
            InvalidSql => ("invalid_sql", S::BAD_REQUEST, "invalid_request"),
            QueryTimeout => ("query_timeout", S::BAD_REQUEST, "invalid_request"),
            QueryMemoryExceeded => ("query_memory_exceeded", S::BAD_REQUEST, "invalid_request"),
            NotFound => ("not_found", S::NOT_FOUND, "invalid_request"),
            MethodNotAllowed => (
                "method_not_allowed",
                S::METHOD_NOT_ALLOWED,
                "invalid_request",
            ),
            NotAcceptable => ("not_acceptable", S::NOT_ACCEPTABLE, "invalid_request"),
            InvalidProfileLookup => ("invalid_profile_lookup", S::BAD_REQUEST, "invalid_request"),
            ProfileNotFound => ("profile_not_found", S::NOT_FOUND, "invalid_request"),
            InvalidParameter => ("invalid_parameter", S::BAD_REQUEST, "invalid_request"),
            MergeRefused => ("merge_refused", S::CONFLICT, "invalid_request"),
            InvalidComputedTrait => ("invalid_computed_trait", S::BAD_REQUEST, "invalid_request"),
            ComputedTraitExists => ("computed_trait_exists", S::CONFLICT, "invalid_request"),
            ComputedTraitInConfig => ("computed_trait_in_config", S::CONFLICT, "invalid_request"),
            InvalidAnalysis => ("invalid_analysis", S::BAD_REQUEST, "invalid_request"),
            InvalidModel => ("invalid_model", S::BAD_REQUEST, "invalid_request"),
            ModelRunning => ("model_running", S::CONFLICT, "invalid_request"),
            ModelNotFitted => ("model_not_fitted", S::NOT_FOUND, "invalid_request"),
            ComputedTraitNotFound => ("computed_trait_not_found", S::NOT_FOUND, "invalid_request"),
            Overloaded => ("overloaded", S::TOO_MANY_REQUESTS, "system"),
            StorageUnavailable => ("storage_unavailable", S::SERVICE_UNAVAILABLE, "system"),
            Starting => ("starting", S::SERVICE_UNAVAILABLE, "system"),
            Internal => ("internal", S::INTERNAL_SERVER_ERROR, "internal"),
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
        let (code, _, kind) = self.code.describe();
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
        let (code, status, _) = self.code.describe();
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

/// The error table people read, built into the server so that `GET /docs/errors` serves the
/// same words.
const ERROR_DOCS: &str = include_str!("../../../docs/errors.md");

/// What the API error `code` means: its row of the first table of `docs/errors.md`
/// (`` | `code` | status | type | meaning | ``); the second lists per-event rejections, some
/// of the same names.
fn meaning(code: &str) -> &'static str {
    let api_table = ERROR_DOCS.split("\n## ").next().unwrap_or_default();
    let lead = format!("| `{code}` | ");
    api_table
        .lines()
        .find(|line| line.starts_with(&lead))
        .and_then(|line| line.splitn(4, " | ").nth(3))
        .map_or("", |rest| rest.trim_end().trim_end_matches('|').trim_end())
}

/// `GET /docs/errors`: the error table itself, so every `link` resolves: a page whose rows are
/// the links' anchors for a browser, JSON otherwise.
#[utoipa::path(get, path = "/docs/errors", tag = "operations",
    description = "Every error code the API answers, with its HTTP status, type and meaning: where each error's `link` leads. HTML for a browser (`Accept: text/html`; each row's `id` is its code, so `/docs/errors#CODE` lands on it), JSON otherwise.",
    responses((status = 200, description = "`{errors: [{code, status, type, meaning}]}`, or the table as HTML")))]
pub async fn error_docs(headers: axum::http::HeaderMap) -> Response {
    let rows = ErrorCode::ALL.iter().map(|c| {
        let (code, status, kind) = c.describe();
        (code, status.as_u16(), kind, meaning(code))
    });
    let mut response = if crate::welcome::wants_html(&headers) {
        axum::response::Html(error_page(rows)).into_response()
    } else {
        let rows: Vec<_> = rows
            .map(|(code, status, kind, meaning)| {
                serde_json::json!({"code": code, "status": status, "type": kind, "meaning": meaning})
            })
            .collect();
        axum::Json(serde_json::json!({ "errors": rows })).into_response()
    };
    // The same address answers a page or JSON: a cache must keep them apart.
    response
        .headers_mut()
        .insert(header::VARY, HeaderValue::from_static("accept"));
    response
}

/// The table as a page; text between backticks is shown as code, as the Markdown shows it.
fn error_page<'a>(rows: impl Iterator<Item = (&'a str, u16, &'a str, &'a str)>) -> String {
    use crate::welcome::escape;
    let as_html = |text: &str| -> String {
        text.split('`')
            .enumerate()
            .map(|(i, part)| {
                if i % 2 == 1 {
                    format!("<code>{}</code>", escape(part))
                } else {
                    escape(part)
                }
            })
            .collect()
    };
    let rows: String = rows
        .map(|(code, status, kind, meaning)| {
            format!(
                "<tr id=\"{code}\"><td><a href=\"#{code}\"><code>{code}</code></a></td><td>{status}</td>\
                 <td>{kind}</td><td>{}</td></tr>\n",
                as_html(meaning)
            )
        })
        .collect();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Kith API error codes</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:64rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}\
         td{{vertical-align:top;padding:.3rem .6rem;border-bottom:1px solid #ddd}}tr:target{{background:#fff3b0}}</style></head>\n\
         <body><h1>API error codes</h1>\n\
         <p>Every error body is <code>{{message, code, type, link}}</code>; its <code>link</code> \
         leads to its row here.</p>\n\
         <table>\n<tr><th>code</th><th>HTTP</th><th>type</th><th>meaning</th></tr>\n{rows}</table>\n\
         </body></html>\n"
    )
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
            let (name, status, kind) = code.describe();
            let row = format!("| `{name}` | {} | {kind} |", status.as_u16());
            assert!(docs.contains(&row), "docs/errors.md lacks the row {row}");
            // What `GET /docs/errors` serves is read from that row.
            assert!(!super::meaning(name).is_empty(), "{name}");
        }
    }

    /// An API code that also names a per-event rejection means what the API table says.
    #[test]
    fn meanings_come_from_the_api_table() {
        assert_eq!(
            super::meaning("invalid_json"),
            "the body is not valid JSON (or not UTF-8); a `NaN` or `Infinity` inside an event \
             refuses only that event (below)"
        );
        assert_eq!(super::meaning("no_such_code"), "");
    }

    /// The page shows the docs' code spans as code and nothing in them as markup.
    #[test]
    fn the_error_page_anchors_each_code_and_escapes_its_meaning() {
        let page = super::error_page(
            [(
                "invalid_body",
                400,
                "invalid_request",
                "no `<batch>` & more",
            )]
            .into_iter(),
        );
        assert!(
            page.contains(
                "<tr id=\"invalid_body\"><td><a href=\"#invalid_body\"><code>invalid_body</code></a></td>"
            ) && page.contains("<td>no <code>&lt;batch&gt;</code> &amp; more</td>"),
            "{page}"
        );
    }
}
