//! Who is calling: keys from HTTP Basic (Segment's write-key convention), Bearer, or the body.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::net::IpAddr;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use kith_state::keys::KeyCheck;
use kith_state::{ApiKey, KeyScope, StateStore};

use crate::app::AppState;
use crate::caller::PeerAddress;
use crate::errors::{ApiError, ErrorCode};

/// How long a key lookup is reused. Short, so `kith key revoke` takes effect within a second.
const CACHE_TTL: Duration = Duration::from_millis(1000);
const CACHE_MAX: usize = 10_000;

pub struct KeyResolver {
    state: Arc<StateStore>,
    /// The admin token of this run of the server for `kith` commands on the same machine
    /// (see [`crate::local`]).
    local_token: Option<LocalToken>,
    cache: Mutex<HashMap<String, (KeyCheck, Instant)>>,
}

/// The token `kith` commands on the server's machine use (see [`crate::local`]).
pub struct LocalToken {
    pub secret: String,
    /// The address the server listens on: a command on this machine reaches a server bound to
    /// one of its addresses from that address, and one bound to all of them over loopback.
    pub listening_on: IpAddr,
}

/// Refuses the local token from anywhere but the server's own machine. It lets `kith`
/// commands there reach the server; from elsewhere (a copy of the data directory taken while
/// the server ran holds it) it would be an admin key nobody can list or revoke. The connection's
/// own peer decides, never what a proxy header says (a trusted peer's `X-Forwarded-For:
/// 127.0.0.1` would pass for this machine), and a request that came through a proxy is not a
/// `kith` command's: those send no forwarding headers. The read and management API, the only
/// routes a read or admin key opens, all sit behind this check (see `api_routes`).
pub(crate) async fn local_token_stays_local(
    State(app): State<Arc<AppState>>,
    peer: PeerAddress,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(local), Ok(Some(secret))) =
        (&app.keys.local_token, key_from_headers(request.headers()))
        && local.secret == secret
    {
        let headers = request.headers();
        let forwarded = [
            "forwarded",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
        ]
        .iter()
        .any(|name| headers.contains_key(*name));
        // No peer at all: a request handed to the router in-process.
        let from_here = peer
            .0
            .map(|ip| ip.to_canonical())
            .is_none_or(|ip| ip.is_loopback() || ip == local.listening_on.to_canonical());
        if forwarded || !from_here {
            return ApiError::new(
                ErrorCode::InvalidApiKey,
                "this server's local token (in its data directory's `kith.server`) works only \
                 for `kith` commands on the server's own machine, never through a proxy; from \
                 elsewhere, use a key: `kith key create --scope read` (or `--scope admin`)",
            )
            .into_response();
        }
    }
    next.run(request).await
}

/// The secret presented in the `Authorization` header: Basic (user name = key, empty
/// password, as Segment SDKs send it) or Bearer. `Ok(None)` without the header; a header that
/// is there but cannot be read is an error that says what is wrong with it (never what it
/// holds: it may be a secret).
pub fn key_from_headers(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let unreadable = |why: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidApiKey,
            format!(
                "the Authorization header cannot be read: {why}. Send `Authorization: Basic \
                 <base64 of KEY:>` (the key as user name, an empty password) or \
                 `Authorization: Bearer KEY`"
            ),
        ))
    };
    if values.next().is_some() {
        // Which one a proxy or server would pick differs; guessing could file events under
        // another source.
        return unreadable("it is sent more than once; send one");
    }
    let Ok(value) = value.to_str() else {
        return unreadable("it is not plain ASCII text");
    };
    let value = value.trim();
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(rest) else {
            return unreadable("its Basic credentials are not base64");
        };
        let Ok(text) = String::from_utf8(decoded) else {
            return unreadable("its Basic credentials are not UTF-8 text");
        };
        let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
        if user.is_empty() {
            return unreadable(
                "its Basic credentials have an empty user name, and the key goes there, not in \
                 the password",
            );
        }
        return Ok(Some(user.to_string()));
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        if rest.is_empty() {
            return unreadable("the Bearer token is empty");
        }
        return Ok(Some(rest.to_string()));
    }
    unreadable("its scheme is neither Basic nor Bearer")
}

/// The write key a request names: in the `Authorization` header, the URL's query (beacons and
/// pixels, which cannot send headers) or the body. Every place that names one must name the same
/// one, since any guess could file the events under a source the sender did not mean. A header
/// that cannot be read is reported only when no other place holds a key.
pub fn key_from_headers_or(
    headers: &HeaderMap,
    in_url: Option<&str>,
    in_body: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let differ = |what: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidApiKey,
            format!(
                "{what} name different keys; send the write key in one place, or the same key in both"
            ),
        ))
    };
    if let (Some(url_key), Some(body_key)) = (in_url, in_body)
        && url_key != body_key
    {
        return differ("the URL's `writeKey` and the body's");
    }
    match (key_from_headers(headers), in_url.or(in_body)) {
        (Ok(Some(header_key)), Some(other)) if header_key != other => {
            differ("the Authorization header and the request's `writeKey` (in the body or the URL)")
        }
        (Ok(Some(key)), _) => Ok(Some(key)),
        (Ok(None), other) => Ok(other.map(str::to_string)),
        (Err(unreadable), other) => other.map(|key| Some(key.to_string())).ok_or(unreadable),
    }
}

impl KeyResolver {
    pub fn new(state: Arc<StateStore>, local_token: Option<LocalToken>) -> KeyResolver {
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
        if self
            .local_token
            .as_ref()
            .is_some_and(|local| local.secret == secret)
            && required != KeyScope::Ingest
        {
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
                    match required {
                        // An admin key may do all a read key does.
                        KeyScope::Read => "a read or admin",
                        other => other.with_article(),
                    },
                    key.id,
                    key.scope.with_article()
                ),
            )),
        }
    }
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
        let key = |value: &str| key_from_headers(&headers(value)).map_err(|e| e.message);
        assert_eq!(key("Basic d2s6"), Ok(Some("wk".into())));
        assert_eq!(key("basic d2s="), Ok(Some("wk".into())));
        assert_eq!(key("Bearer abc"), Ok(Some("abc".into())));
        assert_eq!(
            key_from_headers(&HeaderMap::new()).map_err(|e| e.message),
            Ok(None)
        );
        // A header that is there but cannot be read says why, without echoing it.
        for (value, why) in [
            ("Basic !!!", "its Basic credentials are not base64"),
            ("Basic /w==", "its Basic credentials are not UTF-8 text"),
            ("Basic OndrX3NlY3JldA==", "have an empty user name"),
            ("Bearer ", "the Bearer token is empty"),
            ("Token wk_secret", "its scheme is neither Basic nor Bearer"),
            ("wk_secret", "its scheme is neither Basic nor Bearer"),
        ] {
            let message = key(value).unwrap_err();
            assert!(
                message.starts_with("the Authorization header cannot be read: ")
                    && message.contains(why),
                "{value}: {message}"
            );
            assert!(!message.contains("wk_secret"), "{message}");
        }
        let mut not_ascii = HeaderMap::new();
        not_ascii.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(b"Bearer \xff").unwrap(),
        );
        let mut twice = headers("Basic d2s6");
        twice.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic d2s6"),
        );
        let message = key_from_headers(&twice).unwrap_err().message;
        assert!(message.contains("sent more than once"), "{message}");
        let err = key_from_headers(&not_ascii).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidApiKey);
        assert!(err.message.contains("not plain ASCII"), "{}", err.message);
    }

    #[test]
    fn a_header_key_and_a_body_key_must_agree_and_an_unreadable_header_is_a_fallback() {
        let either = |value: &str, body: Option<&str>| {
            key_from_headers_or(&headers(value), None, body).map_err(|e| e.code)
        };
        assert_eq!(either("Basic d2s6", Some("wk")), Ok(Some("wk".into())));
        assert_eq!(either("Basic d2s6", None), Ok(Some("wk".into())));
        assert_eq!(
            either("Basic d2s6", Some("body")),
            Err(ErrorCode::InvalidApiKey)
        );
        assert_eq!(either("Basic !!!", Some("body")), Ok(Some("body".into())));
        assert_eq!(either("Basic !!!", None), Err(ErrorCode::InvalidApiKey));
        assert_eq!(
            key_from_headers_or(&HeaderMap::new(), None, None).map_err(|e| e.code),
            Ok(None)
        );
    }
}
