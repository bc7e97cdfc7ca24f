//! The idempotency key of a request that creates something (an order, a
//! deposit): the client's `Idempotency-Key` header, else the request's
//! `X-Request-Id` (set at the mesh's edge and carried by every retry of the
//! request), else a new one. Even a new one makes the gateway's own gRPC call
//! safe to retry: the mesh resends the call's bytes, key included.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// Longest header value used as it is; longer ones are hashed.
const MAX_PLAIN: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestKey(pub String);

/// Whether `key` came with the request (`Idempotency-Key`, or the
/// `X-Request-Id` every retry of it carries), so a retry has the same one;
/// a key the gateway made up is new on every attempt.
pub fn kept_by_retries(key: &str) -> bool {
    !key.starts_with(MADE_UP)
}

/// The prefix of a key the gateway made up.
const MADE_UP: &str = "gw:";

fn key(kind: &str, value: &str) -> String {
    if value.len() <= MAX_PLAIN {
        format!("{kind}:{value}")
    } else {
        format!("{kind}#{}", hex::encode(Sha256::digest(value.as_bytes())))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for RequestKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let header = |name: &str| parts.headers.get(name).map(|v| v.to_str().map(str::trim));
        if let Some(value) = header("idempotency-key") {
            return match value {
                Ok(v) if !v.is_empty() => Ok(Self(key("idem", v))),
                _ => Err(ApiError::bad_request(
                    "Idempotency-Key must be a non-empty printable string",
                )),
            };
        }
        if let Some(Ok(v)) = header("x-request-id")
            && !v.is_empty()
        {
            return Ok(Self(key("rid", v)));
        }
        Ok(Self(format!("{MADE_UP}{}", uuid::Uuid::new_v4())))
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;

    use super::*;

    async fn of(headers: &[(&str, &str)]) -> Result<RequestKey, ApiError> {
        let mut request = Request::builder();
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let (mut parts, _) = request.body(()).unwrap().into_parts();
        RequestKey::from_request_parts(&mut parts, &()).await
    }

    #[tokio::test]
    async fn the_client_key_then_the_request_id_then_a_new_one() {
        assert_eq!(
            of(&[("idempotency-key", "abc"), ("x-request-id", "r1")])
                .await
                .unwrap()
                .0,
            "idem:abc"
        );
        assert_eq!(of(&[("x-request-id", "r1")]).await.unwrap().0, "rid:r1");
        let (a, b) = (of(&[]).await.unwrap().0, of(&[]).await.unwrap().0);
        assert!(a.starts_with("gw:") && a != b, "a new key per request");
        let long = "x".repeat(500);
        let hashed = of(&[("x-request-id", long.as_str())]).await.unwrap().0;
        assert!(
            hashed.len() <= 128 && hashed.starts_with("rid#"),
            "{hashed}"
        );
        assert!(of(&[("idempotency-key", "")]).await.is_err());
    }
}
