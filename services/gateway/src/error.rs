//! Errors as HTTP responses with Upbit's body `{"error":{"name","message"}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// An error answered to a client: status, Upbit error name, a safe message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub name: String,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            name: name.into(),
            message: message.into(),
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = upbit::error::ErrorResponse::new(self.name, self.message);
        (self.status, Json(body)).into_response()
    }
}
