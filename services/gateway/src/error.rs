//! Errors as HTTP responses with Upbit's body `{"error":{"name","message"}}`.
//!
//! One table maps gRPC codes from the services to HTTP statuses. Services may
//! name the error for clients in the `x-error-name` metadata (e.g.
//! `insufficient_funds_bid`); otherwise a name per code is used. Messages of
//! internal failures are never passed on: they are logged.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use service_kit::grpc::ERROR_NAME;
use tonic::Code;

/// An error answered to a client: status, Upbit error name, a safe message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub name: String,
    pub message: String,
    /// Upbit's `Remaining-Req`, which a refusal for a rate limit carries too.
    pub remaining_req: Option<axum::http::HeaderValue>,
    /// `Retry-After` seconds (a 418 block).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            name: name.into(),
            message: message.into(),
            remaining_req: None,
            retry_after: None,
        }
    }

    /// A placement whose answer never came back: the order may have been
    /// made, so the client is told to look before placing it again, never
    /// simply to retry (a retry with a new key would be a second order).
    pub fn placement(status: tonic::Status) -> Self {
        let mut e = Self::from(status);
        if matches!(e.name.as_str(), "service_unavailable" | "timeout") {
            e.message = UNKNOWN_PLACEMENT.to_owned();
        }
        e
    }

    /// The error with a `Retry-After` header.
    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// The error with a `Remaining-Req` header.
    pub fn with_remaining_req(mut self, value: Option<axum::http::HeaderValue>) -> Self {
        self.remaining_req = value;
        self
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "validation_error", message)
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// Upbit's answer for an unknown market on quotation endpoints.
    pub fn code_not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "404", "Code not found")
    }
}

/// What a client is told when a placement's outcome is not known.
pub const UNKNOWN_PLACEMENT: &str = "the order may have been placed: look it up (by identifier) \
     or repeat the request with the same Idempotency-Key, rather than placing it anew";

/// HTTP status and default error name for a gRPC code.
pub fn classify(code: Code) -> (StatusCode, &'static str) {
    match code {
        Code::InvalidArgument | Code::OutOfRange => (StatusCode::BAD_REQUEST, "validation_error"),
        Code::FailedPrecondition => (StatusCode::BAD_REQUEST, "failed_precondition"),
        Code::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        Code::AlreadyExists | Code::Aborted => (StatusCode::CONFLICT, "conflict"),
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "invalid_access_key"),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, "out_of_scope"),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
        Code::Unavailable | Code::Cancelled => {
            (StatusCode::SERVICE_UNAVAILABLE, "service_unavailable")
        }
        Code::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
        Code::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "not_implemented"),
        Code::Ok | Code::Unknown | Code::Internal | Code::DataLoss => {
            (StatusCode::INTERNAL_SERVER_ERROR, "server_error")
        }
    }
}

/// The code of a status, where a call that broke on its way counts as the
/// service being unavailable, not as its failure: tonic's client makes such a
/// status itself, with the transport error as its source — a connection reset
/// mid-call is UNKNOWN "transport error", an HTTP/2 stream reset or GOAWAY
/// INTERNAL "h2 protocol error". A status the service sent has no source.
fn code_of(status: &tonic::Status) -> Code {
    match status.code() {
        Code::Unknown | Code::Internal if std::error::Error::source(status).is_some() => {
            Code::Unavailable
        }
        code => code,
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        let code = code_of(&status);
        let (http, default_name) = classify(code);
        let name = status
            .metadata()
            .get(ERROR_NAME)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(default_name)
            .to_owned();
        let message = match code {
            // These messages are written for clients by the services.
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::FailedPrecondition
            | Code::NotFound
            | Code::AlreadyExists
            | Code::Aborted
            | Code::Unauthenticated
            | Code::PermissionDenied
            | Code::ResourceExhausted => status.message().to_owned(),
            // A named unavailability (a stale market feed) is explained to the client.
            Code::Unavailable if name != default_name => status.message().to_owned(),
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded => {
                tracing::warn!(?code, message = status.message(), "upstream unavailable");
                "the service is temporarily unavailable; retry shortly".to_owned()
            }
            Code::Unimplemented => "not implemented yet".to_owned(),
            _ => {
                tracing::error!(?code, message = status.message(), "upstream failure");
                "internal error".to_owned()
            }
        };
        Self {
            status: http,
            name,
            message,
            remaining_req: None,
            retry_after: None,
        }
    }
}

impl From<upbit::query::InvalidParam> for ApiError {
    fn from(e: upbit::query::InvalidParam) -> Self {
        Self::bad_request(e.0)
    }
}

/// The name for an error the framework answered by itself (an extractor's
/// rejection, a wrong method), by HTTP status.
pub fn name_of(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "validation_error",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        s if s.is_server_error() => "server_error",
        _ => "bad_request",
    }
}

/// Every error answer in Upbit's shape: one the handlers made already is; one
/// the framework made (a plain-text rejection of a query, path or body it could
/// not read, a 405) gets the shape, its text as the message (cut to 200
/// characters), and 400 for axum's 422 as Upbit answers bad input.
pub async fn upbit_shape(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 << 10)
        .await
        .unwrap_or_default();
    let message: String = String::from_utf8_lossy(&text).chars().take(200).collect();
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    let message = if message.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        message
    };
    let mut shaped = ApiError::new(status, name_of(status), message).into_response();
    // Keep what the framework said beside the body (an `Allow` on a 405).
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            shaped.headers_mut().append(name.clone(), value.clone());
        }
    }
    shaped
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = upbit::error::ErrorResponse::new(self.name, self.message);
        let mut response = (self.status, Json(body)).into_response();
        if let Some(value) = self.remaining_req {
            response.headers_mut().insert("remaining-req", value);
        }
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_without_an_answer_is_never_told_to_retry() {
        for status in [
            tonic::Status::unavailable("inventory slow"),
            tonic::Status::deadline_exceeded("deadline"),
            tonic::Status::cancelled("reset by the mesh"),
        ] {
            let e = ApiError::placement(status);
            assert_eq!(e.message, UNKNOWN_PLACEMENT);
            assert!(e.status.is_server_error());
        }
        // A definite refusal keeps its own words.
        let mut named = tonic::Status::unavailable("KRW-BTC's orderbook is stale");
        named
            .metadata_mut()
            .insert(ERROR_NAME, "market_data_stale".parse().unwrap());
        let e = ApiError::placement(named);
        assert_eq!(e.message, "KRW-BTC's orderbook is stale");
        let e = ApiError::placement(tonic::Status::invalid_argument("bad price"));
        assert_eq!(
            (e.status, e.message.as_str()),
            (StatusCode::BAD_REQUEST, "bad price")
        );
    }

    #[test]
    fn a_call_broken_on_its_way_is_a_503_and_a_service_failure_a_500() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "connection reset",
        )));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(
            ApiError::from(broken).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        // What tonic's client makes of an HTTP/2 stream reset or GOAWAY.
        let mut reset = tonic::Status::internal("h2 protocol error: http2 error");
        reset.set_source(std::sync::Arc::new(std::io::Error::other("stream reset")));
        assert_eq!(
            ApiError::from(reset).status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        for failed in [
            tonic::Status::unknown("the service failed"),
            tonic::Status::internal("the service failed"),
        ] {
            assert_eq!(
                ApiError::from(failed).status,
                StatusCode::INTERNAL_SERVER_ERROR
            );
        }
    }

    #[tokio::test]
    async fn the_frameworks_own_errors_get_upbits_shape() {
        let plain = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(axum::http::header::ALLOW, "GET,HEAD")],
            "",
        )
            .into_response();
        let shaped = upbit_shape(plain).await;
        assert_eq!(shaped.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(shaped.headers()[axum::http::header::ALLOW], "GET,HEAD");
        let body = axum::body::to_bytes(shaped.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["name"], "method_not_allowed");
        assert_eq!(body["error"]["message"], "Method Not Allowed");

        let rejected = (StatusCode::UNPROCESSABLE_ENTITY, "missing field `market`").into_response();
        let shaped = upbit_shape(rejected).await;
        assert_eq!(shaped.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(shaped.into_body(), 1 << 16)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["name"], "validation_error");
        assert_eq!(body["error"]["message"], "missing field `market`");

        // An answer already in the shape passes untouched.
        let ours = ApiError::new(StatusCode::CONFLICT, "conflict", "x").into_response();
        let passed = upbit_shape(ours).await;
        assert_eq!(passed.status(), StatusCode::CONFLICT);
        let body = axum::body::to_bytes(passed.into_body(), 1 << 16)
            .await
            .unwrap();
        assert_eq!(&body[..], br#"{"error":{"name":"conflict","message":"x"}}"#);
    }
}
