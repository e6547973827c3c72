//! What RudderStack's SDKs and pixels call beyond the Segment API, so they work unchanged with
//! Kith's address as their data plane (and control plane) URL:
//! - `POST /beacon/v1/batch?writeKey=…`: the JavaScript SDK's `navigator.sendBeacon` transport
//!   (`useBeacon`), which cannot send headers, so the write key rides in the query;
//! - `GET /pixel/v1/track` and `GET /pixel/v1/page`: tracking pixels (email opens, AMP pages).
//!   The event is built from the query, dotted names nesting (`properties.plan=pro` →
//!   `{"properties": {"plan": "pro"}}`), and a stored event is answered with a 1×1 GIF;
//! - `GET /sourceConfig`: the source configuration the browser and mobile SDKs fetch from their
//!   control plane (`configUrl`, `controlPlaneUrl`) before they send anything.
//!
//! Each call goes through the same judging, journal and durability as `/v1/batch`.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use kith_core::{MessageType, parse_single_request};
use kith_state::KeyScope;
use serde_json::{Map, Value, json};

use crate::app::AppState;
use crate::auth::key_from_headers;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::{IngestResponse, batch_request, body_text, read_body, request_error, submit};

/// A query string's parameters, in order, repeats kept (so a repeat can be refused).
type QueryPairs = Vec<(String, String)>;

/// The query parameter that carries the write key where headers cannot.
const WRITE_KEY_PARAMETER: &str = "writeKey";

/// The deepest a pixel parameter's dotted name may nest (`context.page.url` is three).
const MAX_PARAMETER_DEPTH: usize = 8;

/// A transparent 1×1 GIF: what an `<img>` tag (an email's open pixel) expects back.
const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// `POST /beacon/v1/batch`.
#[utoipa::path(post, path = "/beacon/v1/batch", tag = "tracking",
    description = "RudderStack's beacon batch (the JavaScript SDK with `useBeacon`): a `/v1/batch` body, the write key in the `writeKey` query parameter (or HTTP Basic, or the body).",
    params(("writeKey" = Option<String>, Query, description = "an ingest key")),
    request_body(content = Object, description = "`{\"batch\": [events]}`"),
    responses((status = 200, body = IngestResponse), (status = 400, description = "invalid request"), (status = 401, description = "bad key"), (status = 415, description = "a Content-Encoding other than gzip"), (status = 429, description = "overloaded"), (status = 503, description = "storage unavailable")))]
pub async fn beacon_batch(
    State(app): State<Arc<AppState>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<IngestResponse>, ApiError> {
    let query_key = write_key_in(&query_pairs(query)?)?;
    let submitted = {
        let bytes = read_body(&headers, body).await?;
        let request = batch_request(&bytes)?;
        submit(&app, &headers, query_key.as_deref(), request)?
    };
    submitted.answer().await
}

/// `GET /pixel/v1/track`.
#[utoipa::path(get, path = "/pixel/v1/track", tag = "tracking",
    description = "A tracking pixel (RudderStack's): a track event built from the query. `writeKey` and `event` are required with `userId` or `anonymousId`; dotted names nest (`properties.plan=pro`, `context.campaign.name=…`); every value is text. A stored event is answered with a 1×1 GIF; an event without `messageId` gets a new one, so each load counts.",
    params(("writeKey" = String, Query, description = "an ingest key"), ("event" = String, Query, description = "the event's name")),
    responses((status = 200, description = "the event was stored: a 1×1 GIF", content_type = "image/gif"), (status = 400, description = "invalid parameters or event (kept in `rejected_events`)"), (status = 401, description = "bad key")))]
pub async fn pixel_track(
    State(app): State<Arc<AppState>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    pixel(&app, MessageType::Track, query, &headers).await
}

/// `GET /pixel/v1/page`.
#[utoipa::path(get, path = "/pixel/v1/page", tag = "tracking",
    description = "A page-view pixel (RudderStack's): a page event built from the query, as `/pixel/v1/track` builds a track (`name` names the page).",
    params(("writeKey" = String, Query, description = "an ingest key"), ("name" = Option<String>, Query, description = "the page's name")),
    responses((status = 200, description = "the event was stored: a 1×1 GIF", content_type = "image/gif"), (status = 400, description = "invalid parameters or event (kept in `rejected_events`)"), (status = 401, description = "bad key")))]
pub async fn pixel_page(
    State(app): State<Arc<AppState>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    pixel(&app, MessageType::Page, query, &headers).await
}

async fn pixel(
    app: &AppState,
    kind: MessageType,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let pairs = query_pairs(query)?;
    let query_key = write_key_in(&pairs)?;
    let event = event_from_query(kind, &pairs)?;
    let text = event.to_string();
    let submitted = {
        let request =
            parse_single_request(body_text(text.as_bytes())?, kind).map_err(request_error)?;
        submit(app, headers, query_key.as_deref(), request)?
    };
    let _stored = submitted.answer().await?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("image/gif")),
            // Every load is an event: no cache may answer in the server's place.
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("no-store, no-cache, must-revalidate"),
            ),
        ],
        PIXEL_GIF,
    )
        .into_response())
}

/// `GET /sourceConfig` (and `/sourceConfig/`).
#[utoipa::path(get, path = "/sourceConfig", tag = "tracking",
    description = "The source configuration RudderStack's JavaScript (`configUrl`) and mobile (`controlPlaneUrl`) SDKs load at start-up: the source the write key belongs to, enabled, with no device-mode destinations and the SDKs' reports to RudderStack's cloud (errors, metrics) off. The key comes as HTTP Basic (as the SDKs send it) or the `writeKey` query parameter.",
    params(("writeKey" = Option<String>, Query, description = "an ingest key, where HTTP Basic is not used")),
    responses((status = 200, description = "the source configuration"), (status = 401, description = "unknown or revoked key")))]
pub async fn source_config(
    State(app): State<Arc<AppState>>,
    query: Result<Query<QueryPairs>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let query_key = write_key_in(&query_pairs(query)?)?;
    let secret = key_from_headers(&headers).or(query_key);
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

fn query_pairs(query: Result<Query<QueryPairs>, QueryRejection>) -> Result<QueryPairs, ApiError> {
    query.map(|Query(pairs)| pairs).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!("the query string cannot be read ({e}); send `name=value` pairs joined by `&`, percent-encoded"),
        )
    })
}

/// The `writeKey` parameter, refused when given twice (which one would be meant?).
fn write_key_in(pairs: &QueryPairs) -> Result<Option<String>, ApiError> {
    let mut keys = pairs
        .iter()
        .filter(|(name, _)| name == WRITE_KEY_PARAMETER)
        .map(|(_, value)| value);
    let key = keys.next().cloned();
    if keys.next().is_some() {
        return Err(repeated(WRITE_KEY_PARAMETER));
    }
    Ok(key)
}

fn repeated(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!("the query parameter `{name}` is given more than once; give each one once"),
    )
}

/// Builds a pixel's event from its query: every parameter but `writeKey` becomes a field, a dotted
/// name a nested one. `anonymousId` may arrive quoted (as AMP pages send it); the quotes go.
/// Without `messageId` the event gets a new random one: a pixel loaded twice is two events
/// (two opens of an email), not a retry.
fn event_from_query(kind: MessageType, pairs: &QueryPairs) -> Result<Value, ApiError> {
    let mut event = Map::new();
    for (name, value) in pairs {
        if name == WRITE_KEY_PARAMETER {
            continue;
        }
        let value = match name.as_str() {
            "anonymousId" => unquoted(value),
            _ => value.as_str(),
        };
        set_path(&mut event, name, Value::String(value.to_string()))?;
    }
    // The pixel's path says what the call is; a `type` parameter could only contradict it.
    if event.contains_key("type") {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "the query parameter `type` is not taken: this pixel's path makes it a {} call",
                kind.as_str()
            ),
        ));
    }
    if !event.contains_key("messageId") {
        event.insert(
            "messageId".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
    }
    Ok(Value::Object(event))
}

fn unquoted(value: &str) -> &str {
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value)
}

/// Sets `value` at the dotted path `name` inside `event`.
fn set_path(event: &mut Map<String, Value>, name: &str, value: Value) -> Result<(), ApiError> {
    let parts: Vec<&str> = name.split('.').collect();
    if parts.iter().any(|part| part.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "the query parameter name `{name}` has an empty part; name a field as `event` or a nested one as `properties.plan`"
            ),
        ));
    }
    if parts.len() > MAX_PARAMETER_DEPTH {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "the query parameter name `{name}` nests {} levels deep; at most {MAX_PARAMETER_DEPTH} are taken",
                parts.len()
            ),
        ));
    }
    let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
    let mut object = event;
    for (depth, part) in parents.iter().enumerate() {
        let slot = object
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(inner) = slot else {
            return Err(clash(name, &parts[..=depth].join(".")));
        };
        object = inner;
    }
    match object.get(*last) {
        None => {
            object.insert(last.to_string(), value);
            Ok(())
        }
        Some(Value::Object(_)) => Err(clash(name, name)),
        Some(_) => Err(repeated(name)),
    }
}

/// `name` would set a field inside (or over) `taken`, which another parameter already set.
fn clash(name: &str, taken: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!(
            "the query parameter `{name}` clashes with another that already set `{taken}`: a field is either a value or has fields inside it"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> QueryPairs {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dotted_names_nest_and_the_write_key_is_not_a_field() {
        let event = event_from_query(
            MessageType::Track,
            &pairs(&[
                ("writeKey", "wk"),
                ("event", "Email Opened"),
                ("anonymousId", "\"anon-7\""),
                ("properties.campaign", "noviembre"),
                ("properties.plan", "pro"),
                ("context.page.url", "https://tienda.mx/"),
                ("messageId", "open-1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            event,
            json!({
                "event": "Email Opened",
                "anonymousId": "anon-7",
                "properties": {"campaign": "noviembre", "plan": "pro"},
                "context": {"page": {"url": "https://tienda.mx/"}},
                "messageId": "open-1"
            })
        );
    }

    #[test]
    fn each_load_without_a_message_id_is_a_new_event() {
        let query = pairs(&[("event", "Email Opened"), ("userId", "ana")]);
        let first = event_from_query(MessageType::Track, &query).unwrap();
        let second = event_from_query(MessageType::Track, &query).unwrap();
        assert!(first["messageId"].is_string());
        assert_ne!(first["messageId"], second["messageId"]);
    }

    #[test]
    fn clashing_repeated_empty_and_deep_names_are_refused_by_name() {
        let refused = |list: &[(&str, &str)]| {
            let err = event_from_query(MessageType::Track, &pairs(list)).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidParameter);
            err.message
        };
        let message = refused(&[("properties", "x"), ("properties.plan", "pro")]);
        assert!(message.contains("`properties.plan`"), "{message}");
        assert!(message.contains("already set `properties`"), "{message}");
        let message = refused(&[("properties.plan", "pro"), ("properties", "x")]);
        assert!(message.contains("`properties`"), "{message}");
        let message = refused(&[("event", "A"), ("event", "B")]);
        assert!(
            message.contains("`event` is given more than once"),
            "{message}"
        );
        let message = refused(&[("properties..plan", "pro")]);
        assert!(message.contains("empty part"), "{message}");
        let deep = "a.".repeat(40) + "z";
        let message = refused(&[(deep.as_str(), "1")]);
        assert!(message.contains("at most 8"), "{message}");
        let message = refused(&[("type", "identify")]);
        assert!(message.contains("track call"), "{message}");
        let err = write_key_in(&pairs(&[("writeKey", "a"), ("writeKey", "b")])).unwrap_err();
        assert!(err.message.contains("`writeKey`"), "{}", err.message);
    }
}
