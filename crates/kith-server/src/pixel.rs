//! Tracking pixels: an event carried in a `GET` URL, for email opens, ad impressions and AMP
//! pages, where an image can be embedded but no script can run. Both vendors' forms work:
//! - Segment's `GET /v1/pixel/{identify,track,page,screen,group,alias}?data=…`: the event is the
//!   JSON of a `/v1/{call}` body (with `writeKey`), base64-encoded; or, unencoded, one parameter
//!   a field, as below;
//! - RudderStack's `GET /pixel/v1/track` and `GET /pixel/v1/page`: one parameter a field, dotted
//!   names nesting (`properties.plan=pro` → `{"properties": {"plan": "pro"}}`), every value text,
//!   `writeKey` the key.
//!
//! A stored event is answered with a 1×1 GIF. What cannot be stored is answered as every other
//! call is (a status and a JSON error naming the problem), so a pixel URL under test says what
//! is wrong; a refused event is kept in `rejected_events`. An event without `messageId` gets a new
//! one: a pixel loaded twice is two events (two opens of an email), not a retry.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use kith_core::{MessageType, json_kind, parse_single_request};
use serde_json::{Map, Value};

use crate::app::AppState;
use crate::caller::PeerAddress;
use crate::errors::{ApiError, ErrorCode};
use crate::ingest::{Caller, body_text, request_error, submit};
use crate::params::StrictQuery;
use crate::params::{self, QueryPairs};

/// The deepest a parameter's dotted name may nest (`context.page.url` is three).
const MAX_PARAMETER_DEPTH: usize = 8;

/// The parameter holding a Segment pixel's whole event.
const DATA: &str = "data";

/// A transparent 1×1 GIF: what an `<img>` tag expects back.
const PIXEL_GIF: &[u8] = &[
    0x47, 0x49, 0x46, 0x38, 0x39, 0x61, 0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00,
    0xff, 0xff, 0xff, 0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, 0x2c, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x01, 0x00, 0x00, 0x02, 0x02, 0x44, 0x01, 0x00, 0x3b,
];

/// `GET /v1/pixel/{call}`.
#[utoipa::path(get, path = "/v1/pixel/{call}", tag = "tracking",
    description = "Segment's tracking pixel: the event of a `/v1/{call}` body, `writeKey` included, as base64 (standard or URL-safe) in `data`; or unencoded, one query parameter a field (dotted names nest: `properties.subject=…`). Beside `data`, parameters that name no event field (cache-busters, `utm_*`) are ignored. A stored event is answered with a 1×1 GIF; an event without `messageId` gets a new one, so each load counts.",
    params(("call" = String, Path, description = "identify | track | page | screen | group | alias"), ("data" = Option<String>, Query, description = "the event's JSON, base64-encoded")),
    responses((status = 200, description = "the event was stored: a 1×1 GIF", content_type = "image/gif"), (status = 400, description = "invalid parameters or event (a refused event is kept in `rejected_events`)"), (status = 401, description = "bad key"), (status = 404, description = "unknown call")))]
pub async fn segment_pixel(
    State(app): State<Arc<AppState>>,
    Path(call): Path<String>,
    method: Method,
    StrictQuery(pairs): StrictQuery,
    peer: PeerAddress,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(answer) = looked_at(&method) {
        return Ok(answer);
    }
    let kind = match MessageType::from_path_segment(&call) {
        Some(kind) if call.len() > 1 => kind,
        _ => {
            return Err(ApiError::new(
                ErrorCode::NotFound,
                format!(
                    "`/v1/pixel/{call}` is not a pixel call; use /v1/pixel/ followed by identify, track, page, screen, group or alias"
                ),
            ));
        }
    };
    let query_key = params::write_key(&pairs)?;
    let event = match params::single(&pairs, DATA)? {
        Some(data) => {
            refuse_fields_beside_data(&pairs)?;
            event_from_data(data)?
        }
        None => event_from_params(&pairs)?,
    };
    let caller = Caller::new(&headers, peer).with_query_key(query_key.as_deref());
    store(&app, kind, event, &caller).await
}

/// `GET /pixel/v1/track`.
#[utoipa::path(get, path = "/pixel/v1/track", tag = "tracking",
    description = "RudderStack's tracking pixel: a track event built from the query. `writeKey` and `event` are required with `userId` or `anonymousId`; dotted names nest (`properties.plan=pro`, `context.campaign.name=…`); every value is text. A stored event is answered with a 1×1 GIF; an event without `messageId` gets a new one, so each load counts.",
    params(("writeKey" = String, Query, description = "an ingest key"), ("event" = String, Query, description = "the event's name")),
    responses((status = 200, description = "the event was stored: a 1×1 GIF", content_type = "image/gif"), (status = 400, description = "invalid parameters or event (a refused event is kept in `rejected_events`)"), (status = 401, description = "bad key")))]
pub async fn rudderstack_track(
    State(app): State<Arc<AppState>>,
    method: Method,
    StrictQuery(pairs): StrictQuery,
    peer: PeerAddress,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(answer) = looked_at(&method) {
        return Ok(answer);
    }
    rudderstack_pixel(&app, MessageType::Track, pairs, &headers, peer).await
}

/// `GET /pixel/v1/page`.
#[utoipa::path(get, path = "/pixel/v1/page", tag = "tracking",
    description = "RudderStack's page-view pixel: a page event built from the query, as `/pixel/v1/track` builds a track (`name` names the page).",
    params(("writeKey" = String, Query, description = "an ingest key"), ("name" = Option<String>, Query, description = "the page's name")),
    responses((status = 200, description = "the event was stored: a 1×1 GIF", content_type = "image/gif"), (status = 400, description = "invalid parameters or event (a refused event is kept in `rejected_events`)"), (status = 401, description = "bad key")))]
pub async fn rudderstack_page(
    State(app): State<Arc<AppState>>,
    method: Method,
    StrictQuery(pairs): StrictQuery,
    peer: PeerAddress,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(answer) = looked_at(&method) {
        return Ok(answer);
    }
    rudderstack_pixel(&app, MessageType::Page, pairs, &headers, peer).await
}

async fn rudderstack_pixel(
    app: &AppState,
    kind: MessageType,
    pairs: QueryPairs,
    headers: &HeaderMap,
    peer: PeerAddress,
) -> Result<Response, ApiError> {
    let query_key = params::write_key(&pairs)?;
    let event = event_from_params(&pairs)?;
    let caller = Caller::new(headers, peer).with_query_key(query_key.as_deref());
    store(app, kind, event, &caller).await
}

/// The top-level fields of a Segment event (its spec's common fields and those of each call).
/// Beside `data`, a parameter naming one of them (or a field inside one, `properties.plan`)
/// would be a second value for the event, so it is refused rather than guessed at.
const EVENT_FIELDS: &[&str] = &[
    "anonymousId",
    "category",
    "channel",
    "context",
    "event",
    "groupId",
    "integrations",
    "messageId",
    "name",
    "originalTimestamp",
    "previousId",
    "properties",
    "receivedAt",
    "sentAt",
    "timestamp",
    "traits",
    "type",
    "userId",
    "version",
];

/// With the event in `data`, Segment reads nothing else of the query, and pixel URLs gather
/// parameters on their way into an email or an ad (cache-busters such as `cb=` or `_=`, an email
/// tool's `utm_*`): those are ignored, and counted, so the load is still recorded. A parameter
/// naming an event field is refused, as the event would have two values for it.
fn refuse_fields_beside_data(pairs: &QueryPairs) -> Result<(), ApiError> {
    for (name, _) in pairs {
        if name == DATA || name == params::WRITE_KEY {
            continue;
        }
        let top = name.split('.').next().unwrap_or(name);
        if EVENT_FIELDS.contains(&top) {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!(
                    "the query gives the event in `data` and `{name}` beside it; put every field in `data`, or give each as its own parameter without `data`"
                ),
            ));
        }
        metrics::counter!("kith_pixel_parameters_ignored_total").increment(1);
        tracing::debug!(parameter = %name, "a pixel's parameter beside `data` is ignored");
    }
    Ok(())
}

/// Judges and stores one pixel's event as `/v1/{call}` would, and answers the GIF once it is
/// durable.
async fn store(
    app: &AppState,
    kind: MessageType,
    mut event: Map<String, Value>,
    caller: &Caller<'_>,
) -> Result<Response, ApiError> {
    if !event.contains_key("messageId") {
        event.insert(
            "messageId".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
    }
    let text = Value::Object(event).to_string();
    let submitted = {
        let request =
            parse_single_request(body_text(text.as_bytes())?, kind).map_err(request_error)?;
        submit(app, caller, request)?
    };
    let _stored = submitted.answer().await?;
    Ok(gif())
}

fn gif() -> Response {
    (
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
        .into_response()
}

/// A `HEAD` of a pixel (link checkers, mail scanners looking before they fetch) is answered as a
/// load would be, without storing an event: it is nobody opening anything.
fn looked_at(method: &Method) -> Option<Response> {
    (method == Method::HEAD).then(gif)
}

/// A Segment pixel's `data`: the event's JSON, base64-encoded (standard or URL-safe, padded or
/// not), or the JSON itself.
fn event_from_data(data: &str) -> Result<Map<String, Value>, ApiError> {
    let data = data.trim();
    let json = if data.starts_with('{') {
        data.as_bytes().to_vec()
    } else {
        // A `+` left unescaped in a URL arrives as a space; base64 never holds a space. Line
        // breaks are how `base64` wraps its output.
        let encoded: String = data
            .chars()
            .filter(|c| !matches!(c, '\n' | '\r'))
            .map(|c| if c == ' ' { '+' } else { c })
            .collect();
        let encoded = encoded.trim_end_matches('=');
        let engines = [
            base64::engine::general_purpose::STANDARD_NO_PAD,
            base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        engines
            .iter()
            .find_map(|engine| engine.decode(encoded).ok())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    "the query parameter `data` is not base64; encode the event's JSON with base64 (then percent-encode it in the URL)",
                )
            })?
    };
    let text = std::str::from_utf8(&json).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "the query parameter `data` decodes to bytes that are not UTF-8 text (byte {}); \
                 base64-encode the event's JSON as UTF-8",
                e.valid_up_to()
            ),
        )
    })?;
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(event)) => Ok(event),
        Ok(other) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!(
                "the query parameter `data` holds JSON that is not an object ({}); it must hold one event, as a `/v1/{{call}}` body",
                json_kind(&other)
            ),
        )),
        Err(e) => Err(ApiError::new(
            ErrorCode::InvalidJson,
            format!("the query parameter `data` does not hold valid JSON: {e}"),
        )),
    }
}

/// An event given one query parameter a field: every parameter but `writeKey`, a dotted name a
/// nested field, every value text. `anonymousId` may arrive quoted (as AMP pages send it); the
/// quotes go.
fn event_from_params(pairs: &QueryPairs) -> Result<Map<String, Value>, ApiError> {
    let mut event = Map::new();
    for (name, value) in pairs {
        if name == params::WRITE_KEY {
            continue;
        }
        let value = match name.as_str() {
            "anonymousId" => unquoted(value),
            _ => value.as_str(),
        };
        set_path(&mut event, name, Value::String(value.to_string()))?;
    }
    Ok(event)
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
        Some(_) => Err(params::repeated(name)),
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
    use serde_json::json;

    fn pairs(list: &[(&str, &str)]) -> QueryPairs {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn dotted_names_nest_and_the_write_key_is_not_a_field() {
        let event = event_from_params(&pairs(&[
            ("writeKey", "wk"),
            ("event", "Email Opened"),
            ("anonymousId", "\"anon-7\""),
            ("properties.campaign", "noviembre"),
            ("properties.plan", "pro"),
            ("context.page.url", "https://tienda.mx/"),
        ]))
        .unwrap();
        assert_eq!(
            Value::Object(event),
            json!({
                "event": "Email Opened",
                "anonymousId": "anon-7",
                "properties": {"campaign": "noviembre", "plan": "pro"},
                "context": {"page": {"url": "https://tienda.mx/"}}
            })
        );
    }

    #[test]
    fn clashing_repeated_empty_and_deep_names_are_refused_by_name() {
        let refused = |list: &[(&str, &str)]| {
            let err = event_from_params(&pairs(list)).unwrap_err();
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
        let err = params::write_key(&pairs(&[("writeKey", "a"), ("writeKey", "b")])).unwrap_err();
        assert!(err.message.contains("`writeKey`"), "{}", err.message);
    }

    proptest::proptest! {
        /// Whatever a URL holds, reading a pixel's event answers (an event or an error), never
        /// panics.
        #[test]
        fn any_query_is_read_without_panicking(
            list in proptest::collection::vec(("[a-zA-Z.\\[\\]\"]{0,12}", "\\PC{0,12}"), 0..12),
            data in "\\PC{0,64}",
        ) {
            let _ = event_from_params(&list);
            let _ = event_from_data(&data);
            let encoded = base64::engine::general_purpose::STANDARD.encode(data.as_bytes());
            let _ = event_from_data(&encoded);
        }
    }

    #[test]
    fn data_is_read_as_any_base64_or_as_json() {
        let event = json!({"writeKey": "wk", "userId": "ana", "event": "Email Opened",
                           "properties": {"subject": "¿Ya viste? >>> ofertas"}});
        let text = event.to_string();
        let standard = base64::engine::general_purpose::STANDARD.encode(&text);
        assert!(
            standard.contains('+'),
            "the case must hold a `+`: {standard}"
        );
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&text);
        for data in [
            standard.clone(),
            standard.replace('+', " "),
            url_safe,
            text.clone(),
        ] {
            assert_eq!(
                Value::Object(event_from_data(&data).unwrap()),
                event,
                "{data}"
            );
        }
        let err = event_from_data("not base64!").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParameter);
        let err =
            event_from_data(&base64::engine::general_purpose::STANDARD.encode("[1]")).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidBody);
        assert!(err.message.contains("an array"), "{}", err.message);
        let err = event_from_data(&base64::engine::general_purpose::STANDARD.encode("{\"a\":"))
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        // Bytes that are not text are told they came from `data` (a pixel has no body).
        let err = event_from_data("//4=").unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParameter);
        assert!(
            err.message
                .starts_with("the query parameter `data` decodes to bytes that are not UTF-8"),
            "{}",
            err.message
        );
    }
}
