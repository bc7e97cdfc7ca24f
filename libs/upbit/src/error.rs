//! Upbit's error body: `{"error":{"name":"...","message":"..."}}`.

use serde::{Deserialize, Serialize};

/// The object inside `"error"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub name: String,
    pub message: String,
}

/// The whole error document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

impl ErrorResponse {
    pub fn new(name: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorBody {
                name: name.into(),
                message: message.into(),
            },
        }
    }

    /// The JSON text of this error.
    pub fn to_json(&self) -> String {
        // Serialising two strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}
