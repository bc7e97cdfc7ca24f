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
) -> Result<(Uuid, String), ApiError> {
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
    Ok((user, resp.access_key))
}

/// A user of the native API.
#[derive(Clone, Copy, Debug)]
pub struct NativeUser(pub Uuid);

impl FromRequestParts<Shared> for NativeUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, gw: &Shared) -> Result<Self, Self::Rejection> {
        let token = bearer(&parts.headers)?.to_owned();
        let (user, _) = verify(
            gw,
            pb::verify_credentials_request::Credentials::AccessToken(token),
        )
        .await?;
        Ok(Self(user))
    }
}

/// A verified Upbit-style request: who sent it and its parameters in order.
#[derive(Clone, Debug)]
pub struct UpbitRequest {
    pub user: Uuid,
    pub access_key: String,
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
        let (user, access_key) = verify(
            gw,
            pb::verify_credentials_request::Credentials::Upbit(upbit),
        )
        .await?;
        Ok(Self {
            user,
            access_key,
            params,
        })
    }
}

/// Counts a private request of `client` in `group` (Upbit: `default` 30/s,
/// `order` 8/s per key).
pub async fn private_limit(
    gw: &Shared,
    group: &'static str,
    client: &str,
) -> Result<Decision, ApiError> {
    let per_second = if group == "order" {
        gw.private_limits.1
    } else {
        gw.private_limits.0
    };
    match gw.limiter.check(group, client, per_second).await {
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
