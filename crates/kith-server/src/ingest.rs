//! The Segment tracking API: `/v1/{identify,track,page,screen,group,alias}` and their one-letter
//! forms, `/v1/batch`, `/v1/b`, `/v1/import`.

use std::io::Read;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use chrono::Utc;
use kith_core::limits::MAX_REQUEST_BYTES;
use kith_core::parse::RawRequest;
use kith_core::{
    IngestBatch, MessageType, RequestError, Stored, parse_batch_request, parse_single_request,
};
use kith_journal::{Appended, Entry, JournalError};
use kith_state::KeyScope;
use serde::Serialize;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::{key_from_headers, key_from_headers_or};
use crate::body_budget::OverBudget;
use crate::caller::{ClientIpPolicy, Origin, PeerAddress, record_address};
use crate::errors::{ApiError, ErrorCode};
use crate::params::UrlWriteKey;
use crate::pipeline::event_entry;
use crate::unify::Ingested;

/// What an ingest call answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IngestResponse {
    /// Always true on a 200, as Segment answers.
    pub success: bool,
    /// Events stored now.
    pub accepted: usize,
    /// Events already stored earlier (same `messageId`), not stored again.
    pub duplicates: usize,
    /// Events refused; each is kept in `rejected_events` with its reason.
    pub rejected: usize,
    /// One entry per refused event.
    pub errors: Vec<EventError>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EventError {
    /// Position of the event in the batch.
    pub index: usize,
    pub code: String,
    pub message: String,
    pub field: Option<String>,
    #[serde(rename = "messageId")]
    pub message_id: Option<String>,
}

/// What a body over the size limit is told when it carries events.
pub(crate) const SEND_SMALLER_BATCHES: &str = "send events in more, smaller batches";

/// What a single call's body over the size limit is told: it holds one event, which may hold at
/// most `MAX_EVENT_BYTES` anyway.
static SEND_A_SMALLER_EVENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "a call carries one event, of at most {} KB: send less in its `properties`, `traits` \
         or `context`",
        kith_core::limits::MAX_EVENT_BYTES / 1024
    )
});

/// The most parts a body may arrive in: a 500 KB batch in chunks of 50 bytes. Hyper hands over
/// a chunked body a chunk at a time, and each costs a little work however small: half a million
/// one-byte chunks took over half a second of CPU to read.
const MAX_BODY_PIECES: usize = 10_000;

/// Reads the body, undoing gzip, never holding more than the request limit; a body over it is
/// told `advice` (what to send instead, in the endpoint's terms).
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    advice: &str,
) -> Result<Vec<u8>, ApiError> {
    // `what` is the body as sent, or as its gzip undoes it (`, once its gzip is undone,`).
    let too_large = |what: &str, why: &str| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!(
                "the body{what} is over {MAX_REQUEST_BYTES} bytes, the most one request may \
                 carry{why}; {advice}"
            ),
        )
    };
    let gzipped = is_gzipped(headers)?;
    let read_error = |e: axum::Error| {
        let e = e.into_inner();
        if let Some(over) = find_cause::<OverBudget>(&*e) {
            ApiError::from(over)
        } else if caused_by::<tower_http::timeout::TimeoutError>(&*e) {
            ApiError::new(
                ErrorCode::RequestTimeout,
                "the body stopped arriving: no more of it came within the server's \
                     `idle_connection_secs` (kith.toml; 75 seconds by default); send it whole, \
                     without pauses",
            )
        } else {
            ApiError::new(
                ErrorCode::MalformedRequest,
                format!("the body could not be read to its end: {e}"),
            )
        }
    };
    // Each part copied into one buffer as it arrives: kept as parts (`to_bytes`), a body sent
    // in one-byte chunks held some 50 bytes of bookkeeping per byte, which the receiving
    // budget does not count, and its parts are bounded in number for the work each costs.
    let mut body = body;
    let expected = usize::try_from(hyper::body::Body::size_hint(&body).lower()).unwrap_or(0);
    let mut raw: Vec<u8> = Vec::with_capacity(expected.min(MAX_REQUEST_BYTES));
    let mut pieces = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        let Ok(data) = frame.map_err(read_error)?.into_data() else {
            continue;
        };
        pieces += 1;
        if raw.len() + data.len() > MAX_REQUEST_BYTES {
            return Err(too_large("", ""));
        }
        if pieces > MAX_BODY_PIECES {
            return Err(ApiError::new(
                ErrorCode::MalformedRequest,
                format!(
                    "the body came in more than {MAX_BODY_PIECES} pieces (chunks of \
                     `Transfer-Encoding: chunked`); send it with a Content-Length, or in fewer, \
                     larger chunks"
                ),
            ));
        }
        raw.extend_from_slice(&data);
    }
    if !gzipped {
        return Ok(raw);
    }
    let decoded = gunzip(&raw, MAX_REQUEST_BYTES).map_err(|e| {
        // The first member may have been whole, with something else after it.
        let mut first = flate2::read::GzDecoder::new(&raw[..]).take(MAX_REQUEST_BYTES as u64 + 1);
        let what = if first.read_to_end(&mut Vec::new()).is_ok() {
            "its gzip data is followed by bytes that are not gzip; send the compressed body alone"
                .to_string()
        } else {
            format!("the body could not be decompressed: {e}")
        };
        ApiError::new(
            ErrorCode::InvalidGzip,
            format!("`Content-Encoding: gzip` was sent but {what}"),
        )
    })?;
    decoded.ok_or_else(|| {
        too_large(
            ", once its gzip is undone,",
            " (the limit is on what it holds, not on what was sent)",
        )
    })
}

/// Whether `error`, or an error it was caused by, is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    find_cause::<E>(error).is_some()
}

/// `error` or the first of its causes that is an `E`.
fn find_cause<'e, E: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<E>() {
            return Some(found);
        }
        cause = error.source();
    }
    None
}

/// Decompresses a gzip body of one or more members (RFC 1952 allows several, one after
/// another), up to `limit` bytes: `None` when it holds more. Anything after the last member
/// that is not another member is an error, so a damaged or spliced body is never half-read.
fn gunzip(raw: &[u8], limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut decoded = Vec::new();
    flate2::read::MultiGzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut decoded)?;
    Ok((decoded.len() <= limit).then_some(decoded))
}

/// Whether the body is gzip-compressed, from its `Content-Encoding`: none or `identity` means
/// it is sent as it is; `gzip` (or its old name `x-gzip`) that it is compressed. Any other
/// coding, or several, is refused rather than read as JSON it is not.
fn is_gzipped(headers: &HeaderMap) -> Result<bool, ApiError> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok(coding)
            if coding.eq_ignore_ascii_case("gzip") || coding.eq_ignore_ascii_case("x-gzip") =>
        {
            Ok(true)
        }
        Ok(coding) if coding.is_empty() || coding.eq_ignore_ascii_case("identity") => Ok(false),
        _ => Err(ApiError::new(
            ErrorCode::UnsupportedEncoding,
            format!(
                "`Content-Encoding: {}` is not a coding Kith reads: send the body as it is, \
                 or gzip-compressed with `Content-Encoding: gzip`",
                String::from_utf8_lossy(value.as_bytes()).trim()
            ),
        )),
    }
}

/// Reads a JSON request body (gzip or not, within the size limit) into `T`; `shape` shows the
/// caller what was expected when it is not.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    shape: &str,
) -> Result<T, ApiError> {
    let bytes = read_body(headers, body, &format!("send {shape} within it")).await?;
    // serde reads a struct from an array of its fields in order too (`["SELECT 1"]` for
    // `{"sql": ...}`); a body the API documents as an object must be one.
    let starts_array = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[');
    if shape.starts_with('{') && starts_array {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("the body must be {shape}, an object, not an array"),
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let code = if e.is_data() {
            ErrorCode::InvalidBody
        } else {
            ErrorCode::InvalidJson
        };
        ApiError::new(code, format!("the body must be {shape}: {e}"))
    })
}

pub(crate) fn request_error(err: RequestError) -> ApiError {
    let code = match err {
        RequestError::InvalidJson(_) => ErrorCode::InvalidJson,
        RequestError::TooManyEvents(_) => ErrorCode::TooManyEvents,
        RequestError::NotAnObject(_)
        | RequestError::MissingBatch
        | RequestError::BatchNotArray(_)
        | RequestError::BatchFieldType { .. }
        | RequestError::BatchFieldTooLarge { .. } => ErrorCode::InvalidBody,
    };
    ApiError::new(code, err.to_string())
}

pub(crate) fn journal_error(err: JournalError) -> ApiError {
    match err {
        JournalError::Overloaded => ApiError::new(
            ErrorCode::Overloaded,
            "the journal queue is full; retry after the Retry-After delay",
        ),
        full if full.is_disk_full() => {
            tracing::error!(error = %full, "journal append failed");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the server's disk is full, so the events could not be made durable; nothing \
                 was acknowledged, retry after the Retry-After delay",
            )
        }
        other => {
            tracing::error!(error = %other, "journal append failed");
            ApiError::new(
                ErrorCode::StorageUnavailable,
                "the events could not be made durable; nothing was acknowledged, retry later",
            )
        }
    }
}

/// `POST /v1/batch`, `/v1/b`, `/v1/import`.
#[utoipa::path(post, path = "/v1/batch", tag = "tracking",
    description = "Segment batch call (also `/v1/b` and `/v1/import`). Auth: HTTP Basic with the write key as user name, or `writeKey` in the body. Accepts `application/json` and `text/plain`, gzip bodies.",
    request_body(content = Object, description = "`{\"batch\": [events], \"context\": {}, \"integrations\": {}}`"),
    responses((status = 200, body = IngestResponse), (status = 400, description = "invalid request"), (status = 401, description = "bad key"), (status = 415, description = "a Content-Encoding other than gzip"), (status = 429, description = "overloaded"), (status = 503, description = "storage unavailable")))]
pub async fn batch(
    State(app): State<Arc<AppState>>,
    UrlWriteKey(query_key): UrlWriteKey,
    peer: PeerAddress,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let caller = Caller::new(&headers, peer).with_query_key(query_key.as_deref());
    receive_batch(&app, &caller, body).await
}

/// `POST /v1/import`: a batch of historical events, as `/v1/batch` takes them, except that the
/// client's address is never recorded: it is the importer's, not the customer's.
pub async fn import(
    State(app): State<Arc<AppState>>,
    UrlWriteKey(query_key): UrlWriteKey,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let caller = Caller {
        records_address: false,
        ..Caller::new(&headers, PeerAddress(None)).with_query_key(query_key.as_deref())
    };
    receive_batch(&app, &caller, body).await
}

/// Reads a batch body, stores its events and answers once they are durable.
pub(crate) async fn receive_batch(
    app: &AppState,
    caller: &Caller<'_>,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    refuse_a_bad_header_key(app, caller.headers)?;
    let submitted = {
        let bytes = read_body(caller.headers, body, SEND_SMALLER_BATCHES).await?;
        let request = batch_request(&bytes)?;
        submit(app, caller, request)?
    };
    submitted.answer().await
}

/// Refuses a request whose `Authorization` header names no valid write key before its body is
/// read: whatever the body holds, the request is refused (a `writeKey` in it must be the same
/// key), and reading it first let anyone without a key make the server read and parse 500 KB.
/// Requests that carry their key in the body only are read first, as they must be.
pub(crate) fn refuse_a_bad_header_key(app: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if let Ok(Some(key)) = key_from_headers(headers) {
        app.keys.authorize(Some(&key), KeyScope::Ingest)?;
    }
    Ok(())
}

/// Reads a batch body's envelope.
pub(crate) fn batch_request(bytes: &[u8]) -> Result<RawRequest<'_>, ApiError> {
    parse_batch_request(body_text(bytes)?).map_err(request_error)
}

/// Authorizes the request's write key and judges every event, as the source the key belongs to.
/// The key is looked for in the `Authorization` header, then in the URL's query (`query_key`:
/// RudderStack's beacon and pixel calls, which cannot send headers), then in the body.
pub(crate) fn judge(
    app: &AppState,
    headers: &HeaderMap,
    query_key: Option<&str>,
    request: &RawRequest<'_>,
) -> Result<(String, IngestBatch), ApiError> {
    if let Some(found) = request.write_key_not_text {
        return Err(ApiError::new(
            ErrorCode::InvalidApiKey,
            format!(
                "the body's `writeKey` is {found}; a write key is text: send it as a string, or \
                 in the Authorization header (HTTP Basic, the key as user name)"
            ),
        ));
    }
    let secret = key_from_headers_or(headers, query_key, request.write_key.as_deref())?;
    let key = app.keys.authorize(secret.as_deref(), KeyScope::Ingest)?;
    let source = key.source.unwrap_or_else(|| "default".to_string());
    let outcome = request.normalize(&source, Utc::now());
    Ok((source, outcome))
}

/// The answer to `/v1/{call}` where `call` is not one.
pub(crate) fn unknown_call(call: &str) -> ApiError {
    // The API's collections have no listing of their own: say where their members are.
    let elsewhere = match call {
        "models" => format!(
            "; a model's status is at GET /v1/models/{{{}}}",
            kith_analytics::profile_models::PROFILE_MODELS.join("|")
        ),
        "analytics" => format!(
            "; analyses run at POST /v1/analytics/{{{}}}",
            kith_analytics::ANALYSES.replace(", ", "|")
        ),
        "profiles" => "; a profile is at GET /v1/profiles/{type}:{value}".to_string(),
        "sql" | "queries" => "; SQL queries go to POST /v1/query".to_string(),
        _ => "; /openapi.json lists every endpoint".to_string(),
    };
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "`/v1/{call}` is not a tracking call; use identify, track, page, screen, group, alias, \
             batch or import (or their one-letter forms i, t, p, s, g, a and b){elsewhere}"
        ),
    )
}

/// `POST /v1/{identify,track,page,screen,group,alias}` and `/v1/{i,t,p,s,g,a}`.
#[utoipa::path(post, path = "/v1/{call}", tag = "tracking",
    description = "A single Segment call: identify, track, page, screen, group, alias (or the one-letter paths i, t, p, s, g, a that analytics.js uses).",
    params(("call" = String, Path, description = "identify | track | page | screen | group | alias | i | t | p | s | g | a")),
    request_body(content = Object, description = "one Segment event"),
    responses((status = 200, body = IngestResponse), (status = 400, description = "invalid event"), (status = 401, description = "bad key"), (status = 404, description = "unknown call"), (status = 415, description = "a Content-Encoding other than gzip")))]
pub async fn single(
    State(app): State<Arc<AppState>>,
    Path(call): Path<String>,
    UrlWriteKey(query_key): UrlWriteKey,
    peer: PeerAddress,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let Some(kind) = MessageType::from_path_segment(&call) else {
        return Err(unknown_call(&call));
    };
    refuse_a_bad_header_key(&app, &headers)?;
    let submitted = {
        let bytes = read_body(&headers, body, &SEND_A_SMALLER_EVENT).await?;
        let text = body_text(&bytes)?;
        let request = parse_single_request(text, kind).map_err(request_error)?;
        let caller = Caller::new(&headers, peer).with_query_key(query_key.as_deref());
        submit(&app, &caller, request)?
    };
    submitted.answer().await
}

pub(crate) fn body_text(bytes: &[u8]) -> Result<&str, ApiError> {
    // A byte order mark some editors and Windows tools put first; JSON parsers may ignore it
    // (RFC 8259 §8.1), and it says nothing about the events.
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        // gzip's magic number: compressed without saying so, or compressed twice.
        let hint = if bytes.starts_with(&[0x1f, 0x8b]) {
            "; it looks gzip-compressed: send it with `Content-Encoding: gzip`, compressed once"
        } else {
            ""
        };
        ApiError::new(
            ErrorCode::InvalidJson,
            format!(
                "the body is not UTF-8 text (byte {}); send UTF-8 JSON{hint}",
                e.valid_up_to()
            ),
        )
    })
}

/// Refuses new work while identity resolution or the event tables are too far behind: the
/// client retries after `Retry-After` instead of memory filling up.
pub(crate) fn check_backpressure(app: &AppState) -> Result<(), ApiError> {
    let unresolved = app.pipeline.unifier.backlog();
    if unresolved >= app.config.max_buffered_rows {
        metrics::counter!("kith_ingest_backpressure_total").increment(1);
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{unresolved} events are waiting for identity resolution (the limit is {}); \
                 nothing from this request was stored, retry after the Retry-After delay",
                app.config.max_buffered_rows
            ),
        ));
    }
    let buffered = app.pipeline.lake.unflushed_rows();
    if buffered >= app.config.max_buffered_rows {
        metrics::counter!("kith_ingest_backpressure_total").increment(1);
        return Err(ApiError::new(
            ErrorCode::Overloaded,
            format!(
                "{buffered} events are waiting to be written to the event tables (the limit is {}); \
                 nothing from this request was stored, retry after the Retry-After delay",
                app.config.max_buffered_rows
            ),
        ));
    }
    Ok(())
}

/// A request whose events are queued on the journal, waiting to be durable.
///
/// Submitting is synchronous and the request body is freed before the wait: a request spends
/// most of its life waiting for the group commit, and a body held through it is memory the next
/// request on this thread cannot reuse while it is still in cache.
pub(crate) struct Submitted {
    source: String,
    event_count: usize,
    errors: Vec<EventError>,
    /// `None` when the request held no events at all.
    durable: Option<tokio::sync::oneshot::Receiver<kith_journal::AppendResult>>,
}

/// What a tracking call's request carries besides its events.
pub(crate) struct Caller<'a> {
    pub headers: &'a HeaderMap,
    /// The connection's other end, for `context.ip` when the server records it.
    pub peer: PeerAddress,
    /// The write key from the URL's query (see [`judge`]).
    pub query_key: Option<&'a str>,
    /// Whether the events may get the client's address (when the server records it).
    pub records_address: bool,
}

impl<'a> Caller<'a> {
    pub(crate) fn new(headers: &'a HeaderMap, peer: PeerAddress) -> Self {
        Caller {
            headers,
            peer,
            query_key: None,
            records_address: true,
        }
    }

    pub(crate) fn with_query_key(self, query_key: Option<&'a str>) -> Self {
        Caller { query_key, ..self }
    }
}

/// Judges the request's events and queues the accepted and the rejected ones on the journal.
pub(crate) fn submit(
    app: &AppState,
    caller: &Caller<'_>,
    request: RawRequest<'_>,
) -> Result<Submitted, ApiError> {
    let (source, mut outcome) = judge(app, caller.headers, caller.query_key, &request)?;
    check_backpressure(app)?;
    if caller.records_address
        && app.config.client_ip != ClientIpPolicy::Off
        && let Some(address) = app.config.client_ip.address_to_record(&Origin::new(
            caller.headers,
            caller.peer,
            &app.config.trusted_proxies,
        ))
    {
        record_address(&mut outcome.events, &address);
    }
    metrics::counter!("kith_events_received_total", "source" => source.clone())
        .increment(request.len() as u64);
    drop(request);
    for rejection in &outcome.rejections {
        metrics::counter!("kith_events_rejected_total", "reason" => rejection.code.clone())
            .increment(1);
    }

    let event_count = outcome.events.len();
    let errors: Vec<EventError> = outcome
        .rejections
        .iter()
        .map(|r| EventError {
            index: r.index,
            code: r.code.clone(),
            message: r.message.clone(),
            field: r.field.clone(),
            message_id: r.message_id.clone(),
        })
        .collect();
    let durable = (event_count + outcome.rejections.len() > 0).then(|| {
        app.pipeline.append_with(|extractor| {
            let mut entries = Vec::with_capacity(event_count + outcome.rejections.len());
            for event in outcome.events {
                entries.push(event_entry(extractor, event, None));
            }
            for rejection in outcome.rejections {
                entries.push(Entry {
                    dedup_key: None,
                    payload: Stored::Rejected(rejection).encode(),
                    item: Ingested { facts: None },
                });
            }
            entries
        })
    });
    Ok(Submitted {
        source,
        event_count,
        errors,
        durable,
    })
}

impl Submitted {
    /// Waits until the events are durable and answers the client.
    pub(crate) async fn answer(self) -> Result<Json<IngestResponse>, ApiError> {
        let Submitted {
            source,
            event_count,
            errors,
            durable,
        } = self;
        let results = match durable {
            None => Vec::new(),
            Some(durable) => durable
                .await
                .map_err(|_| journal_error(JournalError::Stopped))?
                .map_err(journal_error)?,
        };
        let stored = results
            .iter()
            .take(event_count)
            .filter(|r| matches!(r, Appended::Stored { .. }))
            .count();
        let duplicates = event_count - stored;
        metrics::counter!("kith_events_accepted_total", "source" => source)
            .increment(stored as u64);

        let response = IngestResponse {
            success: true,
            accepted: stored,
            duplicates,
            rejected: errors.len(),
            errors,
        };
        if event_count == 0 && response.rejected > 0 {
            let details = serde_json::to_value(&response).unwrap_or(Value::Null);
            let message = if response.rejected == 1 {
                format!("the event was rejected: {}", response.errors[0].message)
            } else {
                format!(
                    "all {} events were rejected; see `errors` for each one's reason",
                    response.rejected
                )
            };
            return Err(
                ApiError::new(ErrorCode::InvalidEvent, message).with_details(json!({
                    "accepted": 0,
                    "duplicates": 0,
                    "rejected": response.rejected,
                    "errors": details["errors"],
                })),
            );
        }
        Ok(Json(response))
    }
}

/// `GET /v1/projects/{writeKey}/settings`: the settings document analytics.js loads at start-up.
#[utoipa::path(get, path = "/v1/projects/{write_key}/settings", tag = "tracking",
    description = "The settings document analytics.js fetches; points the Segment.io integration back at this server.",
    params(("write_key" = String, Path, description = "an ingest key")),
    responses((status = 200, description = "settings"), (status = 401, description = "unknown or revoked key")))]
pub async fn settings(
    State(app): State<Arc<AppState>>,
    Path(write_key): Path<String>,
    peer: PeerAddress,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.keys.authorize(Some(&write_key), KeyScope::Ingest)?;
    let (protocol, host) =
        Origin::new(&headers, peer, &app.config.trusted_proxies).public_address();
    Ok(Json(json!({
        "integrations": {
            "Segment.io": {
                "apiKey": write_key,
                "apiHost": format!("{host}/v1"),
                "protocol": protocol,
                "unbundledIntegrations": [],
                "addBundledMetadata": true,
                "maybeBundledConfigIds": {},
                "versionSettings": {"version": "4.4.7", "componentTypes": ["browser"]}
            }
        },
        "plan": {"track": {"__default": {"enabled": true, "integrations": {}}}, "identify": {"__default": {"enabled": true}}, "group": {"__default": {"enabled": true}}},
        "edgeFunction": {},
        "analyticsNextEnabled": true,
        "middlewareSettings": {},
        "enabledMiddleware": {},
        "metrics": {"sampleRate": 0},
        "legacyVideoPluginsEnabled": false,
        "remotePlugins": []
    })))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::gunzip;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn every_member_of_a_gzip_body_is_read() {
        let mut body = gzip(b"{\"batch\": ");
        body.extend(gzip(b"[]}"));
        assert_eq!(
            gunzip(&body, 1000).unwrap().as_deref(),
            Some(&b"{\"batch\": []}"[..])
        );
    }

    #[test]
    fn bytes_after_the_last_member_make_the_body_unreadable() {
        let mut body = gzip(b"{\"batch\": []}");
        body.extend_from_slice(b"trailing bytes that are not gzip");
        assert!(gunzip(&body, 1000).is_err());
    }

    #[test]
    fn a_gzip_body_sent_as_plain_text_is_recognised() {
        let message = super::body_text(&gzip(b"{}")).unwrap_err().message;
        assert!(
            message.ends_with(
                "it looks gzip-compressed: send it with `Content-Encoding: gzip`, compressed once"
            ),
            "{message}"
        );
        let message = super::body_text(b"\xff\xfe").unwrap_err().message;
        assert_eq!(
            message,
            "the body is not UTF-8 text (byte 0); send UTF-8 JSON"
        );
    }

    #[test]
    fn a_truncated_member_is_unreadable() {
        let body = gzip(b"{\"batch\": []}");
        assert!(gunzip(&body[..body.len() - 4], 1000).is_err());
    }

    #[test]
    fn a_body_that_decompresses_past_the_limit_is_too_large() {
        let body = gzip(&[b' '; 2000]);
        assert_eq!(gunzip(&body, 1999).unwrap(), None);
        assert_eq!(gunzip(&body, 2000).unwrap().map(|d| d.len()), Some(2000));
    }
}
