//! Caller-chosen text that a service stores or looks up (idempotency keys,
//! order identifiers, labels, access keys): bounded, and free of control
//! characters — PostgreSQL refuses a NUL in `text`, and a refusal there would
//! read as the database failing (a retryable 503) instead of as bad input.

/// `value` if it is 1 to `max` bytes without control characters; otherwise the
/// message to refuse it with.
pub fn key<'a>(field: &str, value: &'a str, max: usize) -> Result<&'a str, String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{field} must be 1 to {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(value)
}

/// Like [`key`], but the empty string means "not given".
pub fn optional_key<'a>(
    field: &str,
    value: &'a str,
    max: usize,
) -> Result<Option<&'a str>, String> {
    if value.is_empty() {
        Ok(None)
    } else {
        key(field, value, max).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bounded_and_printable() {
        assert_eq!(key("k", "abc-123_가", 20), Ok("abc-123_가"));
        assert!(key("k", "", 20).is_err());
        assert!(key("k", &"x".repeat(21), 20).is_err());
        assert!(key("k", &"x".repeat(20), 20).is_ok());
        for bad in ["a\0b", "\n", "tab\there", "\u{7f}", "\u{85}"] {
            assert_eq!(
                key("k", bad, 20),
                Err("k must not contain control characters".into()),
                "{bad:?}"
            );
        }
        assert_eq!(optional_key("k", "", 20), Ok(None));
        assert_eq!(optional_key("k", "a", 20), Ok(Some("a")));
        assert!(optional_key("k", "\0", 20).is_err());
    }
}
