//! Query-string parameters for the calls that carry an event or a key in the URL (pixels,
//! beacons, RudderStack's source configuration): read in order, a repeated name refused.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::errors::{ApiError, ErrorCode};

/// A query string's parameters, in order, repeats kept (so a repeat can be refused).
pub type QueryPairs = Vec<(String, String)>;

/// The request's query string as [`QueryPairs`], decoded as forms are (`+` is a space, `%XX` a
/// byte). A name or value whose bytes are not UTF-8 is refused, naming the parameter: axum's
/// `Query` would replace them with U+FFFD, so that different names could become one and a value
/// be stored other than it was sent.
pub struct StrictQuery(pub QueryPairs);

impl<S: Send + Sync> FromRequestParts<S> for StrictQuery {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parse_query(parts.uri.query().unwrap_or_default()).map(StrictQuery)
    }
}

/// See [`StrictQuery`].
pub fn parse_query(raw: &str) -> Result<QueryPairs, ApiError> {
    raw.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let not_utf8 = |what: String| {
                ApiError::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "{what} is not UTF-8 text once its %-escapes are decoded; percent-encode \
                         the UTF-8 bytes of the text (e.g. `ñ` as `%C3%B1`)"
                    ),
                )
            };
            let name = form_decoded(name).ok_or_else(|| not_utf8("a parameter's name".into()))?;
            // The value is not shown: it may be the write key.
            let value =
                form_decoded(value).ok_or_else(|| not_utf8(format!("the value of `{name}`")))?;
            Ok((name, value))
        })
        .collect()
}

fn form_decoded(text: &str) -> Option<String> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// The query parameter that carries the write key where headers cannot.
pub const WRITE_KEY: &str = "writeKey";

/// A typed query string that did not read, as a person reads it. axum says "Failed to
/// deserialize query string: limit: invalid digit found in string"; this says which parameter,
/// and what it must be.
pub fn typed_query_error(rejection: &axum::extract::rejection::QueryRejection) -> ApiError {
    let text = rejection.body_text();
    let detail = text
        .strip_prefix("Failed to deserialize query string: ")
        .unwrap_or(&text);
    let message = match detail.split_once(": ") {
        Some((name, why))
            if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            let why = match why {
                "invalid digit found in string" => "it must be a whole number",
                "cannot parse integer from empty string" => "it is empty; give a whole number",
                "invalid float literal" => "it must be a number",
                "number too large to fit in target type" => "it is too large",
                other => other,
            };
            format!("the query parameter `{name}` is not valid: {why}")
        }
        _ => format!("the query string cannot be read: {detail}"),
    };
    ApiError::new(ErrorCode::InvalidParameter, message)
}

/// The one value of the parameter `name`, if given; given twice, it is refused (which one would
/// be meant?).
pub fn single<'a>(pairs: &'a QueryPairs, name: &str) -> Result<Option<&'a str>, ApiError> {
    let mut values = pairs
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str());
    let value = values.next();
    if values.next().is_some() {
        return Err(repeated(name));
    }
    Ok(value)
}

/// The `writeKey` parameter, if given; empty, as none (as an empty `writeKey` in a body is).
pub fn write_key(pairs: &QueryPairs) -> Result<Option<String>, ApiError> {
    Ok(single(pairs, WRITE_KEY)?
        .filter(|key| !key.is_empty())
        .map(str::to_string))
}

/// The `writeKey` in the URL of a tracking call that carries its events in the body
/// (`/v1/batch?writeKey=…`): the one parameter such a call reads, so the others are left
/// unread, whatever they hold, as they were before the key was looked for there.
pub struct UrlWriteKey(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for UrlWriteKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        let Some(query) = parts.uri.query() else {
            return Ok(UrlWriteKey(None));
        };
        let mut named = QueryPairs::new();
        for pair in query.split('&') {
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            if form_decoded(name).is_some_and(|name| name == WRITE_KEY) {
                named.extend(parse_query(pair)?);
            }
        }
        write_key(&named).map(UrlWriteKey)
    }
}

pub fn repeated(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!("the query parameter `{name}` is given more than once; give each one once"),
    )
}

#[cfg(test)]
mod strict_query_tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_as_forms_are() {
        let pairs =
            parse_query("event=Email+Opened&properties.city=Le%C3%B3n&&flag&empty=").unwrap();
        let expected: QueryPairs = [
            ("event", "Email Opened"),
            ("properties.city", "León"),
            ("flag", ""),
            ("empty", ""),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(pairs, expected);
        assert_eq!(parse_query("").unwrap(), QueryPairs::new());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_refused_by_parameter_never_replaced() {
        let message = parse_query("writeKey=k&event=%FF%FE").unwrap_err().message;
        assert!(
            message.starts_with("the value of `event` is not UTF-8 text"),
            "{message}"
        );
        let message = parse_query("properties.%FF=1").unwrap_err().message;
        assert!(
            message.starts_with("a parameter's name is not UTF-8"),
            "{message}"
        );
        // The value is never shown: it may be the write key.
        let message = parse_query("writeKey=%FFsecret").unwrap_err().message;
        assert!(!message.contains("secret"), "{message}");
    }
}
