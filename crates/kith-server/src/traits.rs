//! Computed traits through the API: `GET`/`POST /v1/computed-traits`,
//! `DELETE /v1/computed-traits/{name}`. Declaring one answers at once (202) and computes its past
//! in the background; the list shows `status: computing` until it is `ready`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use kith_profiles::{ComputedTraitDef, DeclareError};
use kith_state::KeyScope;
use serde_json::{Value, json};

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::{journal_error, json_body};
use crate::pipeline::TraitError;

fn trait_error(err: TraitError) -> ApiError {
    match err {
        TraitError::Journal(e) => journal_error(e),
        TraitError::Declare(e) => declare_error(e),
    }
}

fn declare_error(err: DeclareError) -> ApiError {
    let code = match &err {
        DeclareError::Invalid(_) => ErrorCode::InvalidComputedTrait,
        DeclareError::Exists(_) => ErrorCode::ComputedTraitExists,
        DeclareError::InConfig(_) => ErrorCode::ComputedTraitInConfig,
        DeclareError::NotFound(_) => ErrorCode::ComputedTraitNotFound,
        DeclareError::ReadOnly | DeclareError::Store(_) => {
            tracing::error!(error = %err, "computed trait change failed");
            return ApiError::new(
                ErrorCode::Internal,
                "the computed trait could not be stored; see the server log",
            );
        }
    };
    ApiError::new(code, err.to_string())
}

/// `GET /v1/computed-traits`.
#[utoipa::path(get, path = "/v1/computed-traits", tag = "profiles",
    description = "The declared computed traits (from kith.toml and the API), each with `declared_in` and `status` (`computing` while its past is computed, then `ready`). Auth: read key.",
    responses((status = 200, description = "`{computed_traits: [...]}`")))]
pub async fn list(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Read)?;
    Ok(Json(
        json!({"computed_traits": app.pipeline.profiles.computed_traits()}),
    ))
}

/// `POST /v1/computed-traits`.
#[utoipa::path(post, path = "/v1/computed-traits", tag = "profiles",
    request_body(content = Object, description = "`{name, kind, event?, type?, property?, window_days?}` as in kith.toml's [[computed_traits]]"),
    description = "Declares a computed trait. Every event from now on counts towards it; its past is computed from the stored events in the background (202, `status: computing`). Auth: admin key.",
    responses((status = 202, description = "declared"), (status = 400, description = "invalid definition"), (status = 409, description = "the name is taken or declared in kith.toml")))]
pub async fn declare(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Admin)?;
    // An object (or `invalid_json` / `invalid_body`), then the definition it holds: a field of
    // the wrong kind (`"kind": "median"`) is a definition that is not valid.
    let object: serde_json::Map<String, Value> = json_body(
        &headers,
        body,
        r#"{"name": "orders_30d", "kind": "count", "event": "Order Completed", "window_days": 30}"#,
    )
    .await?;
    let def: ComputedTraitDef =
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| {
            // The field at fault, when it is one (a missing field is the whole object's).
            let field = match e.path().to_string() {
                path if path == "." => String::new(),
                path => format!("`{path}`: "),
            };
            ApiError::new(
                ErrorCode::InvalidComputedTrait,
                format!(
                    "the computed trait definition is not valid: {field}{}",
                    e.inner()
                ),
            )
        })?;
    let name = def.name.clone();
    app.pipeline.declare_trait(def).map_err(trait_error)?;
    let declared = app
        .pipeline
        .profiles
        .computed_traits()
        .into_iter()
        .find(|t| t.definition.name == name);
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "computed_trait": declared })),
    ))
}

/// `DELETE /v1/computed-traits/{name}`.
#[utoipa::path(delete, path = "/v1/computed-traits/{name}", tag = "profiles",
    params(("name" = String, Path, description = "the trait's name")),
    description = "Removes a computed trait declared through the API, and its values. Traits from kith.toml are changed there. Auth: admin key.",
    responses((status = 200, description = "removed"), (status = 404, description = "no such trait"), (status = 409, description = "declared in kith.toml")))]
pub async fn remove(
    State(app): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    app.keys
        .authorize(key_from_headers(&headers)?.as_deref(), KeyScope::Admin)?;
    app.pipeline
        .profiles
        .remove_trait(&name)
        .map_err(declare_error)?;
    Ok(Json(json!({ "removed": name })))
}
