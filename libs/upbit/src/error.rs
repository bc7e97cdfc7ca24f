//! Upbit's error body: `{"error":{"name":"...","message":"..."}}`.

use serde::{Deserialize, Serialize};

/// The object inside `"error"`. Upbit writes some names as numbers (`404`
/// for an unknown market): a name of digits is written as a number, and
/// either form is read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    #[serde(serialize_with = "name_out", deserialize_with = "name_in")]
    pub name: String,
    pub message: String,
}

fn name_out<S: serde::Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
    match name.parse::<u16>() {
        Ok(n) if !name.starts_with('0') => s.serialize_u16(n),
        _ => s.serialize_str(name),
    }
}

fn name_in<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Name {
        Text(String),
        Number(u64),
    }
    Ok(match Name::deserialize(d)? {
        Name::Text(t) => t,
        Name::Number(n) => n.to_string(),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_names_are_numbers_as_upbit_writes_them() {
        assert_eq!(
            ErrorResponse::new("404", "Code not found").to_json(),
            r#"{"error":{"name":404,"message":"Code not found"}}"#
        );
        assert_eq!(
            ErrorResponse::new("validation_error", "m").to_json(),
            r#"{"error":{"name":"validation_error","message":"m"}}"#
        );
        let read: ErrorResponse =
            serde_json::from_str(r#"{"error":{"name":404,"message":"Code not found"}}"#).unwrap();
        assert_eq!(read.error.name, "404");
    }
}
