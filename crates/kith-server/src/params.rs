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
