//! Who is calling: keys from HTTP Basic (Segment's write-key convention), Bearer, or the body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use base64::Engine;
use kith_state::keys::KeyCheck;
use kith_state::{ApiKey, KeyScope, StateStore};

use crate::errors::{ApiError, ErrorCode};

/// How long a key lookup is reused. Short, so `kith key revoke` takes effect within a second.
const CACHE_TTL: Duration = Duration::from_millis(1000);
const CACHE_MAX: usize = 10_000;

pub struct KeyResolver {
    state: Arc<StateStore>,
    /// The admin token of this run of the server for `kith` commands on the same machine
    /// (see [`crate::local`]).
    local_token: Option<String>,
    cache: Mutex<HashMap<String, (KeyCheck, Instant)>>,
}

/// The secret presented in the `Authorization` header, if any: Basic (user name = key, empty
/// password, as Segment SDKs send it) or Bearer.
pub fn key_from_headers(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        return (!user.is_empty()).then(|| user.to_string());
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        return (!rest.is_empty()).then(|| rest.to_string());
    }
    None
}

impl KeyResolver {
    pub fn new(state: Arc<StateStore>, local_token: Option<String>) -> KeyResolver {
        KeyResolver {
            state,
            local_token,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn lookup(&self, secret: &str) -> Result<KeyCheck, ApiError> {
        if let Some((check, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(secret)
            && at.elapsed() < CACHE_TTL
        {
            return Ok(check.clone());
        }
        let check = self.state.check_key(secret).map_err(|e| {
            tracing::error!(error = %e, "key lookup failed");
            ApiError::new(ErrorCode::Internal, "the key could not be checked")
        })?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(secret.to_string(), (check.clone(), Instant::now()));
        Ok(check)
    }

    /// Checks a presented secret against the scope a call needs.
    pub fn authorize(&self, secret: Option<&str>, required: KeyScope) -> Result<ApiKey, ApiError> {
        let Some(secret) = secret.filter(|s| !s.is_empty()) else {
            return Err(ApiError::new(
                ErrorCode::MissingApiKey,
                match required {
                    KeyScope::Ingest => {
                        "no write key was sent; use HTTP Basic auth with the write key as the user name and an empty password, or put `writeKey` in the body (or, for beacon and pixel calls, in the URL's query)"
                    }
                    _ => {
                        "no key was sent; use `Authorization: Bearer <key>` with a read or admin key"
                    }
                },
            ));
        };
        if self.local_token.as_deref() == Some(secret) && required != KeyScope::Ingest {
            return Ok(ApiKey {
                id: "local".into(),
                scope: KeyScope::Admin,
                source: None,
                created_at: chrono::Utc::now(),
                revoked_at: None,
            });
        }
        match self.lookup(secret)? {
            KeyCheck::Unknown => Err(ApiError::new(
                ErrorCode::InvalidApiKey,
                "the key is not known to this server: a key works only on the server whose data \
                 directory holds it; create one with `kith key create --data-dir DIR`, DIR being \
                 the directory this server was started with",
            )),
            KeyCheck::Revoked(key) => Err(ApiError::new(
                ErrorCode::RevokedApiKey,
                format!(
                    "the key `{}` was revoked; create a new one with `kith key create`",
                    key.id
                ),
            )),
            KeyCheck::Valid(key) if key.scope.allows(required) => Ok(key),
            KeyCheck::Valid(key) => Err(ApiError::new(
                ErrorCode::InsufficientScope,
                format!(
                    "this call needs {} key; the key `{}` is {} key",
                    with_article(required.as_str()),
                    key.id,
                    with_article(key.scope.as_str())
                ),
            )),
        }
    }
}

/// "a read", "an ingest", "an admin".
fn with_article(scope: &str) -> String {
    let article = if scope.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {scope}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(value: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        map
    }

    #[test]
    fn keys_come_from_basic_or_bearer() {
        // base64("wk:") — what Segment SDKs send.
        assert_eq!(
            key_from_headers(&headers("Basic d2s6")).as_deref(),
            Some("wk")
        );
        assert_eq!(
            key_from_headers(&headers("basic d2s=")).as_deref(),
            Some("wk")
        );
        assert_eq!(
            key_from_headers(&headers("Bearer abc")).as_deref(),
            Some("abc")
        );
        assert_eq!(key_from_headers(&headers("Basic !!!")), None);
        assert_eq!(key_from_headers(&headers("Basic Og==")), None, "empty user");
        assert_eq!(key_from_headers(&HeaderMap::new()), None);
    }
}
