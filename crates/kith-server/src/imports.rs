//! `POST /v1/imports`: events built by `kith import` from a file, written through the same
//! journal and identity resolution as tracked events, answered with what they changed in profiles
//! (created, updated, merged …) so the import can report it.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use kith_core::Event;
use kith_profiles::{ChangeCounts, ChangeTally, KITH_SOURCE};
use kith_state::KeyScope;
use serde::{Deserialize, Serialize};

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::{check_backpressure, journal_error, json_body};

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImportBatch {
    /// Events in Kith's stored shape (as `kith import` builds them).
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportResult {
    pub stored: usize,
    /// Events already stored (same message id): an import run again.
    pub duplicates: usize,
    /// What the stored events changed in profiles.
    pub changes: ChangeCounts,
}

/// `POST /v1/imports`.
#[utoipa::path(post, path = "/v1/imports", tag = "profiles",
    request_body(content = Object, description = "`{\"events\": [...]}` in Kith's stored event shape, as built by `kith import`"),
    description = "Writes events built by `kith import` (contacts and other files) and answers once profiles reflect them, with what changed: `{stored, duplicates, changes: {created, updated, merged, conflict, unchanged, unattributed}}`. Auth: admin key (the `kith` command on the server's machine uses the server's local token).",
    responses((status = 200, description = "stored"), (status = 400, description = "malformed body"), (status = 429, description = "overloaded; retry")))]
pub async fn import_batch(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportResult>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Admin)?;
    let batch: ImportBatch = json_body(&headers, body, r#"{"events": [...]}"#).await?;
    if let Some(event) = batch.events.iter().find(|e| e.source == KITH_SOURCE) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "event `{}` names the source `{KITH_SOURCE}`, which is reserved for events Kith writes itself",
                event.message_id
            ),
        ));
    }
    // The names `kith import --source` and keys' sources are held to (length, control and
    // invisible characters), whoever built the events.
    if let Some((index, problem)) = batch.events.iter().enumerate().find_map(|(i, e)| {
        kith_state::check_source_name(&e.source)
            .err()
            .map(|p| (i, p))
    }) {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "events[{index}] cannot be stored: {problem}; nothing in this request was stored"
            ),
        ));
    }
    // `kith import` builds events the parser's rules allow; another client could send any.
    if let Some((index, event, problem)) = batch
        .events
        .iter()
        .enumerate()
        .find_map(|(i, e)| e.unstorable().map(|problem| (i, e, problem)))
    {
        return Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "events[{index}] (message_id `{}`) cannot be stored: {problem}; nothing in this \
                 request was stored",
                event.message_id.chars().take(100).collect::<String>()
            ),
        ));
    }
    check_backpressure(&app)?;
    let tally = Arc::new(ChangeTally::default());
    let written = app
        .pipeline
        .write(batch.events, Some(&tally))
        .await
        .map_err(journal_error)?;
    if let Some(seq) = written.last_seq() {
        app.pipeline.wait_for_profiles(seq).await;
    }
    metrics::counter!("kith_import_events_stored_total").increment(written.stored() as u64);
    Ok(Json(ImportResult {
        stored: written.stored(),
        duplicates: written.duplicates(),
        changes: tally.counts(),
    }))
}
