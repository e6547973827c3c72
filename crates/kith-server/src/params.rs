//! Query-string parameters for the calls that carry an event or a key in the URL (pixels,
//! beacons, RudderStack's source configuration): read in order, a repeated name refused.

use axum::extract::Query;
use axum::extract::rejection::QueryRejection;

use crate::errors::{ApiError, ErrorCode};

/// A query string's parameters, in order, repeats kept (so a repeat can be refused).
pub type QueryPairs = Vec<(String, String)>;

/// The query parameter that carries the write key where headers cannot.
pub const WRITE_KEY: &str = "writeKey";

pub fn query_pairs(
    query: Result<Query<QueryPairs>, QueryRejection>,
) -> Result<QueryPairs, ApiError> {
    query.map(|Query(pairs)| pairs).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!(
                "the query string cannot be read ({e}); send `name=value` pairs joined by `&`, percent-encoded"
            ),
        )
    })
}

/// A typed query string that did not read, as a person reads it. axum says "Failed to
/// deserialize query string: limit: invalid digit found in string"; this says which parameter,
/// and what it must be.
pub fn typed_query_error(rejection: &QueryRejection) -> ApiError {
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

/// The `writeKey` parameter, if given.
pub fn write_key(pairs: &QueryPairs) -> Result<Option<String>, ApiError> {
    Ok(single(pairs, WRITE_KEY)?.map(str::to_string))
}

pub fn repeated(name: &str) -> ApiError {
    ApiError::new(
        ErrorCode::InvalidParameter,
        format!("the query parameter `{name}` is given more than once; give each one once"),
    )
}
