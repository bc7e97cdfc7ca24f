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

pub(crate) fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
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

/// Who the user service says the credentials are, and what they may do.
struct Verified {
    user: Uuid,
    permissions: Vec<pb::Permission>,
}

async fn verify(
    gw: &Shared,
    credentials: pb::verify_credentials_request::Credentials,
) -> Result<Verified, ApiError> {
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
    Ok(Verified {
        user,
        permissions: resp.permissions().collect(),
    })
}

/// Access tokens the user service verified, so that a client's burst of
/// requests costs one verification. A token ends with its session (sign-out,
/// theft of its refresh chain): this gateway forgets it at once when the
/// sign-out comes through it, others within [`TokenCache::TTL`], the longest
/// an entry is trusted.
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

    /// Forgets a token (its session ended).
    pub fn forget(&self, token: &str) {
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(token);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.tokens.lock().map(|t| t.len()).unwrap_or(0)
    }
}

/// When a (verified) access token expires, read from its payload.
fn expiry(token: &str) -> Option<Instant> {
    let exp = claims(token)?.get("exp")?.as_i64()?;
    let left = exp.saturating_sub(chrono::Utc::now().timestamp());
    (left > 0).then(|| Instant::now() + Duration::from_secs(left as u64))
}

/// A JWT's claims, read without verifying it (the user service verifies).
fn claims(token: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// The API key an Upbit request's bearer token names (its `access_key`).
pub fn access_key(headers: &HeaderMap) -> Option<String> {
    let jwt = bearer(headers).ok()?;
    Some(claims(jwt)?.get("access_key")?.as_str()?.to_owned())
}

/// A user of the native API.
#[derive(Clone, Copy, Debug)]
pub struct NativeUser(pub Uuid);

impl FromRequestParts<Shared> for NativeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Shared) -> Result<Self, Self::Rejection> {
        Self::verify(gw, bearer(&parts.headers)?).await
    }
}

impl NativeUser {
    /// The user an access token names (remembered until it expires, unless
    /// its session ends first on this gateway).
    pub async fn verify(gw: &Shared, token: &str) -> Result<Self, ApiError> {
        if let Some(user) = gw.tokens.get(token, Instant::now()) {
            return Ok(Self(user));
        }
        let user = verify(
            gw,
            pb::verify_credentials_request::Credentials::AccessToken(token.to_owned()),
        )
        .await?
        .user;
        if let Some(until) = expiry(token) {
            gw.tokens.put(token, user, until, Instant::now());
        }
        Ok(Self(user))
    }
}

/// A verified Upbit-style request: who sent it, what its key may do, and its
/// parameters in order.
#[derive(Clone, Debug)]
pub struct UpbitRequest {
    pub user: Uuid,
    pub params: Vec<(String, String)>,
    pub permissions: Vec<pb::Permission>,
}

impl UpbitRequest {
    /// Refuses the request unless its API key has `permission` (Upbit's 401
    /// `out_of_scope`).
    pub fn require(&self, permission: pb::Permission) -> Result<(), ApiError> {
        if self.permissions.contains(&permission) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "out_of_scope",
                format!(
                    "this API key lacks the {} permission",
                    permission
                        .as_str_name()
                        .trim_start_matches("PERMISSION_")
                        .to_lowercase()
                ),
            ))
        }
    }

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

/// Largest request body read for an Upbit-signed request.
const MAX_SIGNED_BODY: usize = 64 * 1024;

impl From<upbit::signing::Unsignable> for ApiError {
    fn from(e: upbit::signing::Unsignable) -> Self {
        ApiError::bad_request(e.to_string())
    }
}

impl FromRequest<Shared> for UpbitRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, gw: &Shared) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let mut signed = upbit::signing::from_query(parts.uri.query().unwrap_or(""))?;
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.starts_with("application/json"));
        let bytes = axum::body::to_bytes(body, MAX_SIGNED_BODY)
            .await
            .map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
            })?;
        if !bytes.is_empty() {
            signed.extend(if is_json {
                upbit::signing::from_json(&bytes)?
            } else {
                let text = std::str::from_utf8(&bytes)
                    .map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
                upbit::signing::from_query(text)?
            })?;
        }
        // Upbit names a missing or malformed token `jwt_verification`, which
        // clients (ccxt) map to an authentication error.
        let jwt = bearer(&parts.headers)
            .map_err(|e| ApiError {
                name: "jwt_verification".into(),
                ..e
            })?
            .to_owned();
        let mut hashed = signed.hashed().into_iter();
        let upbit = pb::UpbitToken {
            jwt,
            query: hashed.next().unwrap_or_default(),
            alternatives: hashed.collect(),
        };
        let verified = verify(
            gw,
            pb::verify_credentials_request::Credentials::Upbit(upbit),
        )
        .await?;
        Ok(Self {
            user: verified.user,
            params: signed.params,
            permissions: verified.permissions,
        })
    }
}

/// Counts a private request of `client` in `group` (Upbit: `default` 30/s,
/// `order` 12/s).
pub async fn private_limit(
    gw: &Shared,
    group: &'static str,
    client: &str,
) -> Result<Decision, ApiError> {
    let limit = gw.limits.private(group);
    match gw.limiter.check(group, client, limit).await {
        d @ (Decision::Limited | Decision::Blocked { .. }) => {
            Err(crate::ratelimit::refusal(d, group, limit))
        }
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
}
