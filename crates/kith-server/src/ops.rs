//! Operations endpoints: health, readiness, metrics, the OpenAPI document, 404s, and the no-op
//! ingest endpoint used as the benchmark's ceiling.

use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, Uri, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::api_conventions::Conventions;

use crate::app::AppState;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::{self, read_body};

static PROMETHEUS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The bounds, in seconds, of the buckets every timing is counted in: from half a millisecond (a
/// journal commit) to ten minutes (a long query), so that Prometheus can sum them over servers
/// and compute any quantile over any window (a summary's quantiles allow neither).
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0, 600.0,
];

/// Installs the Prometheus recorder once per process (tests start several servers).
pub fn install_metrics() -> Option<&'static PrometheusHandle> {
    let builder = || {
        PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)?
            .install_recorder()
    };
    PROMETHEUS
        .get_or_init(|| match builder() {
            Ok(handle) => {
                crate::metric_catalog::describe_all();
                Some(handle)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, description = "alive (also while starting: then `starting: true`)")))]
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Readiness: the journal has been replayed and the writer accepts appends.
#[utoipa::path(get, path = "/readyz", tag = "operations", responses((status = 200, description = "ready"), (status = 503, description = "`starting`: the server is replaying its journal (or loading the demo world), retry after `Retry-After`; or `storage_unavailable`: the journal failed to sync and acknowledges nothing until the server restarts, or the disk is full and events are refused until there is room")))]
pub async fn readyz(State(app): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if app.pipeline.journal.has_failed() {
        return Err(ApiError::new(
            ErrorCode::StorageUnavailable,
            "an fdatasync of the journal failed, so no event is acknowledged any more; \
             restart the server (it recovers from what is on disk) and check the disk",
        ));
    }
    // A thread every event goes through that has ended (only a bug ends them) leaves a
    // server that acknowledges nothing more, or whose profiles stand still: not ready.
    for (running, what) in [
        (app.pipeline.journal.is_running(), "the journal writer"),
        (app.pipeline.unifier.is_running(), "identity resolution"),
    ] {
        if !running {
            return Err(ApiError::new(
                ErrorCode::StorageUnavailable,
                format!(
                    "{what} has stopped (the log says why); restart the server, which recovers \
                     from what is on disk"
                ),
            ));
        }
    }
    // Appends refused for a full disk succeed by themselves once there is room; until then the
    // server is up but acknowledges nothing. The space free tells which, so readiness comes
    // back without waiting for the next event.
    if let Some(needed) = app.pipeline.journal.refused_for_room() {
        let journal_dir = crate::pipeline::journal_dir(&app.config.data_dir);
        let free = free_bytes(&journal_dir);
        if free.is_none_or(|free| free < needed) {
            let free = free.map_or_else(|| "unknown".to_string(), |bytes| format!("{bytes} bytes"));
            return Err(ApiError::new(
                ErrorCode::StorageUnavailable,
                format!(
                    "the disk holding {} is full ({free} free, the last write refused needed \
                     {needed}): events are refused until there is room; free space on it \
                     (nothing acknowledged is lost, and ingestion resumes by itself)",
                    journal_dir.display()
                ),
            ));
        }
    }
    // `durable_through` seals what was ingested, so the table buffers counted next are current.
    let durable_through = app.pipeline.lake.durable_through();
    let buffered: usize = app
        .pipeline
        .lake
        .tables()
        .iter()
        .map(|t| t.pending().0)
        .sum();
    Ok(Json(json!({
        "status": "ready",
        "buffered_rows": buffered,
        "durable_through_seq": durable_through,
    })))
}

/// The bytes this process may still write on the file system holding `dir`: root may also use
/// the blocks reserved for it (5% on ext4), which other users may not.
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(dir).ok()?;
    let blocks = if rustix::process::geteuid().is_root() {
        stats.f_bfree
    } else {
        stats.f_bavail
    };
    Some(blocks.saturating_mul(stats.f_frsize))
}

/// Prometheus metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics() -> String {
    install_metrics().map(|h| h.render()).unwrap_or_default()
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kith",
        description = "Customer intelligence in one binary: Segment-compatible collection, SQL over every event."
    ),
    paths(
        crate::ingest::batch,
        crate::ingest::single,
        crate::ingest::settings,
        crate::rudderstack::beacon_batch,
        crate::pixel::segment_pixel,
        crate::pixel::rudderstack_track,
        crate::pixel::rudderstack_page,
        crate::rudderstack::source_config,
        crate::query::query,
        crate::profiles::show,
        crate::profiles::events,
        crate::profiles::merge,
        crate::profiles::duplicates,
        crate::traits::list,
        crate::traits::declare,
        crate::traits::remove,
        crate::imports::import_batch,
        crate::analytics::analyze,
        crate::models::fit,
        crate::models::status,
        crate::models::results,
        crate::welcome::welcome,
        healthz,
        readyz,
        metrics,
        openapi,
        crate::errors::error_docs,
    ),
    components(schemas(
        crate::ingest::IngestResponse,
        crate::ingest::EventError,
        crate::query::QueryRequest,
        crate::profiles::MergeRequest,
        crate::api_conventions::ErrorSchema
    )),
    modifiers(&Conventions)
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "OpenAPI 3.1 document")))]
pub async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::new(
        ErrorCode::NotFound,
        format!(
            "no endpoint at `{}`; see /openapi.json for the API",
            uri.path()
        ),
    )
}

/// A known path asked with a method it does not take (axum adds the `Allow` header). The
/// catch-all `/v1/{call}` route makes every `/v1/NAME` "known": one whose NAME is no tracking
/// call is answered as not found, as a POST to it would be.
pub async fn method_not_allowed(
    method: axum::http::Method,
    uri: Uri,
    matched: Option<MatchedPath>,
) -> Response {
    if let Some(call) = uri.path().strip_prefix("/v1/")
        && matched.is_some_and(|m| m.as_str() == "/v1/{call}")
        && kith_core::MessageType::from_path_segment(call).is_none()
    {
        let mut response = ingest::unknown_call(call).into_response();
        // Nothing is allowed on a path that does not exist.
        response.headers_mut().remove(header::ALLOW);
        return response;
    }
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        format!(
            "`{}` does not take {method}; the `Allow` header names the methods it takes \
             (tracking calls and queries are POSTs), and /openapi.json describes each endpoint",
            uri.path()
        ),
    )
    .into_response()
}

/// Parses, authenticates and judges a batch exactly like `/v1/batch`, then stores nothing.
pub async fn noop_batch(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = read_body(&headers, body, crate::ingest::SEND_SMALLER_BATCHES).await?;
    let request = ingest::batch_request(&bytes)?;
    let (_, outcome) = ingest::judge(&app, &headers, None, &request)?;
    // Encode for the journal like the real path does; the journal, the conversion to Arrow and
    // everything after them are what this endpoint leaves out.
    let encoded: usize = outcome
        .events
        .iter()
        .map(|event| kith_core::Stored::encode_event(event).len())
        .sum();
    Ok(Json(json!({
        "success": true,
        "accepted": outcome.events.len(),
        "rejected": outcome.rejections.len(),
        "encoded_bytes": encoded,
    })))
}
