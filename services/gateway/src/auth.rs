//! Authentication of private requests.
//!
//! - Native API (`/api/v1/...`): `Authorization: Bearer <access token>` from
//!   `/api/v1/auth/login`.
//! - Upbit-compatible API (`/v1/...`): `Authorization: Bearer <JWT>` signed by
//!   the client with its API secret, carrying `access_key`, `nonce` and
//!   `query_hash` = SHA512 of the request's parameters written as a query string
//!   (`market=KRW-BTC&side=bid&…`, not percent-encoded) — from the URL for
//!   GET/DELETE, from the JSON or form body for POST.
//!
//! The user service verifies both; the gateway keeps no secrets.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use exchange_proto::user::v1 as pb;
use uuid::Uuid;

use crate::error::ApiError;
use crate::ratelimit::Decision;
use crate::state::Shared;

fn unauthorized(name: &str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, name, message)
}

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            unauthorized(
                "no_authorization_token",
                "Authorization: Bearer <token> is required",
            )
        })?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            unauthorized(
                "no_authorization_token",
                "Authorization: Bearer <token> is required",
            )
        })
}

async fn verify(
    gw: &Shared,
    credentials: pb::verify_credentials_request::Credentials,
) -> Result<Uuid, ApiError> {
    let resp = gw
        .user
        .clone()
        .verify_credentials(pb::VerifyCredentialsRequest {
            credentials: Some(credentials),
        })
        .await
        .map_err(ApiError::from)?
        .into_inner();
    let user = Uuid::parse_str(&resp.user_id)
        .map_err(|_| ApiError::new(StatusCode::BAD_GATEWAY, "server_error", "bad user id"))?;
    Ok(user)
}

/// Access tokens the user service verified, so that a client's burst of
/// requests costs one verification. Access tokens are stateless (not
/// revocable before they expire), so remembering one changes nothing about
/// who gets in; entries still last at most [`TokenCache::TTL`].
#[derive(Default)]
pub struct TokenCache {
    tokens: Mutex<HashMap<String, (Uuid, Instant)>>,
}

impl TokenCache {
    /// The longest an entry is trusted.
    pub const TTL: Duration = Duration::from_secs(60);
    /// Entries kept at most (expired ones are dropped first).
    pub const CAPACITY: usize = 100_000;

    /// The user of a token verified before and still valid at `now`.
    pub fn get(&self, token: &str, now: Instant) -> Option<Uuid> {
        let tokens = self.tokens.lock().ok()?;
        tokens
            .get(token)
            .filter(|(_, until)| *until > now)
            .map(|(user, _)| *user)
    }

    /// Remembers a verified token until `until`, or [`Self::TTL`] from `now`
    /// if sooner.
    pub fn put(&self, token: &str, user: Uuid, until: Instant, now: Instant) {
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        if tokens.len() >= Self::CAPACITY {
            tokens.retain(|_, (_, t)| *t > now);
            if tokens.len() >= Self::CAPACITY {
                tokens.clear();
            }
        }
        tokens.insert(token.to_owned(), (user, until.min(now + Self::TTL)));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// When a (verified) access token expires, read from its payload.
fn expiry(token: &str) -> Option<Instant> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()?;
    let left = exp - chrono::Utc::now().timestamp();
    (left > 0).then(|| Instant::now() + Duration::from_secs(left as u64))
}

/// A user of the native API.
#[derive(Clone, Copy, Debug)]
pub struct NativeUser(pub Uuid);

impl FromRequestParts<Shared> for NativeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Shared) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?.to_owned();
        if let Some(user) = gw.tokens.get(&token, Instant::now()) {
            return Ok(Self(user));
        }
        let user = verify(
            gw,
            pb::verify_credentials_request::Credentials::AccessToken(token.clone()),
        )
        .await?;
        if let Some(until) = expiry(&token) {
            gw.tokens.put(&token, user, until, Instant::now());
        }
        Ok(Self(user))
    }
}

/// A verified Upbit-style request: who sent it and its parameters in order.
#[derive(Clone, Debug)]
pub struct UpbitRequest {
    pub user: Uuid,
    pub params: Vec<(String, String)>,
}

impl UpbitRequest {
    /// The first value of `key` (empty values count as absent).
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, v)| k == key && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Every value of an array parameter (`states[]=wait&states[]=watch`).
    pub fn params(&self, key: &str) -> Vec<&str> {
        let array = format!("{key}[]");
        self.params
            .iter()
            .filter(|(k, _)| *k == array || k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// Parameters as `key=value` pairs joined by `&`, not percent-encoded: what
/// Upbit clients hash.
pub fn canonical(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

fn from_query(query: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// A JSON object's fields in order, scalars as their text, arrays as `key[]`.
fn from_json(value: &serde_json::Value) -> Result<Vec<(String, String)>, ApiError> {
    let object = value
        .as_object()
        .ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    };
    let mut out = Vec::new();
    for (k, v) in object {
        match v {
            serde_json::Value::Null => {}
            serde_json::Value::Array(items) => {
                for item in items {
                    out.push((
                        format!("{k}[]"),
                        scalar(item).ok_or_else(|| {
                            ApiError::bad_request(format!("{k} has a non-scalar item"))
                        })?,
                    ));
                }
            }
            other => out.push((
                k.clone(),
                scalar(other)
                    .ok_or_else(|| ApiError::bad_request(format!("{k} must be a scalar")))?,
            )),
        }
    }
    Ok(out)
}

impl FromRequest<Shared> for UpbitRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, gw: &Shared) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let mut params = parts.uri.query().map(from_query).unwrap_or_default();
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        let bytes = axum::body::to_bytes(body, 64 * 1024)
            .await
            .map_err(|_| ApiError::bad_request("the body is too large"))?;
        if !bytes.is_empty() {
            params.extend(if is_json {
                let value: serde_json::Value = serde_json::from_slice(&bytes)
                    .map_err(|_| ApiError::bad_request("the body is not valid JSON"))?;
                from_json(&value)?
            } else {
                from_query(&String::from_utf8_lossy(&bytes))
            });
        }
        let jwt = bearer(&parts.headers)?.to_owned();
        let upbit = pb::UpbitToken {
            jwt,
            query: canonical(&params),
        };
        let user = verify(
            gw,
            pb::verify_credentials_request::Credentials::Upbit(upbit),
        )
        .await?;
        Ok(Self { user, params })
    }
}

/// Counts a private request of `client` in `group` (Upbit: `default` 30/s,
/// `order` 8/s per key).
pub async fn private_limit(
    gw: &Shared,
    group: &'static str,
    client: &str,
) -> Result<Decision, ApiError> {
    match gw
        .limiter
        .check(group, client, gw.limits.private(group))
        .await
    {
        Decision::Limited => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_requests",
            "Too many API requests.",
        )),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_cache_forgets_expired_tokens_and_stays_bounded() {
        let cache = TokenCache::default();
        let (user, now) = (Uuid::new_v4(), Instant::now());
        cache.put("a", user, now + Duration::from_secs(5), now);
        assert_eq!(cache.get("a", now), Some(user));
        assert_eq!(cache.get("b", now), None);
        assert_eq!(
            cache.get("a", now + Duration::from_secs(5)),
            None,
            "expired"
        );
        // A token valid for an hour is trusted for TTL only.
        cache.put("long", user, now + Duration::from_secs(3600), now);
        assert_eq!(
            cache.get("long", now + TokenCache::TTL - Duration::from_secs(1)),
            Some(user)
        );
        assert_eq!(cache.get("long", now + TokenCache::TTL), None);
        // Full: expired entries go first...
        let cache = TokenCache::default();
        cache.put("kept", user, now + Duration::from_secs(60), now);
        for i in 1..TokenCache::CAPACITY {
            cache.put(&i.to_string(), user, now + Duration::from_secs(1), now);
        }
        assert_eq!(cache.len(), TokenCache::CAPACITY);
        let later = now + Duration::from_secs(2);
        cache.put("fresh", user, later + Duration::from_secs(10), later);
        assert_eq!(cache.len(), 2);
        assert_eq!(cache.get("kept", later), Some(user));
        // ...and if none has expired, everything goes.
        for i in 2..TokenCache::CAPACITY {
            cache.put(&i.to_string(), user, later + Duration::from_secs(10), later);
        }
        assert_eq!(cache.len(), TokenCache::CAPACITY);
        cache.put("newest", user, later + Duration::from_secs(10), later);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("newest", later), Some(user));
        assert_eq!(cache.get("kept", later), None);
    }

    #[test]
    fn expiry_comes_from_the_token_payload() {
        use base64::Engine as _;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        let token = |exp: i64| format!("h.{}.s", b64(serde_json::json!({"exp": exp})));
        let now = chrono::Utc::now().timestamp();
        let until = expiry(&token(now + 100)).expect("in the future");
        assert!(until > Instant::now() + Duration::from_secs(90));
        assert_eq!(expiry(&token(now - 1)), None, "already expired");
        assert_eq!(expiry("not-a-jwt"), None);
        assert_eq!(expiry("h.%%%.s"), None);
    }

    #[test]
    fn parameters_are_hashed_as_clients_write_them() {
        let q = from_query("market=KRW-BTC&states%5B%5D=wait&states%5B%5D=watch&page=1");
        assert_eq!(
            canonical(&q),
            "market=KRW-BTC&states[]=wait&states[]=watch&page=1"
        );
        let body = serde_json::json!({"market": "KRW-BTC", "side": "bid", "volume": "0.01", "price": 100, "ord_type": "limit"});
        assert_eq!(
            canonical(&from_json(&body).unwrap()),
            "market=KRW-BTC&side=bid&volume=0.01&price=100&ord_type=limit"
        );
        assert!(from_json(&serde_json::json!([1, 2])).is_err());
    }
}
