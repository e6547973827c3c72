//! What RudderStack's SDKs call beyond the Segment API, so they work unchanged with Kith's
//! address as their data plane (and control plane) URL:
//! - `POST /beacon/v1/batch?writeKey=…`: the JavaScript SDK's `navigator.sendBeacon` transport
//!   (`useBeacon`), which cannot send headers, so the write key rides in the query; the batch
//!   goes through the same judging, journal and durability as `/v1/batch`;
//! - `GET /sourceConfig`: the source configuration the browser and mobile SDKs fetch from their
//!   control plane (`configUrl`, `controlPlaneUrl`) before they send anything.
//!
//! RudderStack's pixels (`/pixel/v1/…`) are in [`crate::pixel`], beside Segment's.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use kith_state::KeyScope;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::key_from_headers_or;
use crate::caller::PeerAddress;
use crate::errors::ApiError;
use crate::ingest::{Caller, IngestResponse, receive_batch};
use crate::params;
use crate::params::StrictQuery;

/// `POST /beacon/v1/batch`.
#[utoipa::path(post, path = "/beacon/v1/batch", tag = "tracking",
    description = "RudderStack's beacon batch (the JavaScript SDK with `useBeacon`): a `/v1/batch` body, the write key in the `writeKey` query parameter (or HTTP Basic, or the body).",
    params(("writeKey" = Option<String>, Query, description = "an ingest key")),
    request_body(content = Object, description = "`{\"batch\": [events]}`"),
    responses((status = 200, body = IngestResponse), (status = 400, description = "invalid request"), (status = 401, description = "bad key"), (status = 415, description = "a Content-Encoding other than gzip"), (status = 429, description = "overloaded"), (status = 503, description = "storage unavailable")))]
pub async fn beacon_batch(
    State(app): State<Arc<AppState>>,
    StrictQuery(pairs): StrictQuery,
    peer: PeerAddress,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let query_key = params::write_key(&pairs)?;
    let caller = Caller::new(&headers, peer).with_query_key(query_key.as_deref());
    receive_batch(&app, &caller, body).await
}

/// `GET /sourceConfig` (and `/sourceConfig/`).
#[utoipa::path(get, path = "/sourceConfig", tag = "tracking",
    description = "The source configuration RudderStack's JavaScript (`configUrl`) and mobile (`controlPlaneUrl`) SDKs load at start-up: the source the write key belongs to, enabled, with no device-mode destinations and the SDKs' reports to RudderStack's cloud (errors, metrics) off. The key comes as HTTP Basic (as the SDKs send it) or the `writeKey` query parameter.",
    params(("writeKey" = Option<String>, Query, description = "an ingest key, where HTTP Basic is not used")),
    responses((status = 200, description = "the source configuration"), (status = 401, description = "unknown or revoked key")))]
pub async fn source_config(
    State(app): State<Arc<AppState>>,
    StrictQuery(pairs): StrictQuery,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let query_key = params::write_key(&pairs)?;
    let secret = key_from_headers_or(&headers, query_key.as_deref(), None)?;
    let key = app.keys.authorize(secret.as_deref(), KeyScope::Ingest)?;
    let source = key.source.unwrap_or_else(|| "default".to_string());
    Ok(Json(json!({
        "isHosted": false,
        "source": {
            "id": source,
            "name": source,
            "writeKey": secret,
            "enabled": true,
            "workspaceId": "kith",
            "createdAt": key.created_at,
            "updatedAt": key.created_at,
            // The SDKs' own error and metrics reports would go to RudderStack's cloud: off.
            // (Some versions of the Kotlin SDK also refuse a config without these fields.)
            "config": {
                "statsCollection": {"errors": {"enabled": false}, "metrics": {"enabled": false}}
            },
            "destinations": []
        }
    })))
}
