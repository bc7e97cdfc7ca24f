//! Just enough JWT: HS256/HS512 signing and verification. The algorithm must be
//! one the caller allows (so `"alg":"none"` and algorithm confusion are refused),
//! and the signature is compared in constant time.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::{Sha256, Sha512};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Hs256,
    Hs512,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs512 => "HS512",
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm not allowed")]
    Algorithm,
    #[error("bad signature")]
    Signature,
}

fn mac(alg: Alg, key: &[u8], input: &[u8]) -> Vec<u8> {
    match alg {
        Alg::Hs256 => {
            let mut m =
                <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
        Alg::Hs512 => {
            let mut m =
                <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(input);
            m.finalize().into_bytes().to_vec()
        }
    }
}

fn verify_mac(alg: Alg, key: &[u8], input: &[u8], tag: &[u8]) -> bool {
    match alg {
        Alg::Hs256 => {
            let mut m =
                <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(input);
            m.verify_slice(tag).is_ok()
        }
        Alg::Hs512 => {
            let mut m =
                <Hmac<Sha512> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
            m.update(input);
            m.verify_slice(tag).is_ok()
        }
    }
}

/// `header.payload.signature` for `claims`.
pub fn sign(alg: Alg, key: &[u8], claims: &Value) -> String {
    let header = serde_json::json!({"alg": alg.name(), "typ": "JWT"});
    let input = format!(
        "{}.{}",
        B64.encode(header.to_string()),
        B64.encode(claims.to_string())
    );
    let sig = B64.encode(mac(alg, key, input.as_bytes()));
    format!("{input}.{sig}")
}

/// A token split and decoded, not yet verified.
pub struct Unverified<'a> {
    pub alg: Option<Alg>,
    pub claims: Value,
    input: &'a str,
    signature: Vec<u8>,
}

/// Splits and decodes `token` without checking the signature.
pub fn decode(token: &str) -> Result<Unverified<'_>, JwtError> {
    let (input, sig) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
    let (header, payload) = input.split_once('.').ok_or(JwtError::Malformed)?;
    let header: Value =
        serde_json::from_slice(&B64.decode(header).map_err(|_| JwtError::Malformed)?)
            .map_err(|_| JwtError::Malformed)?;
    let claims: Value =
        serde_json::from_slice(&B64.decode(payload).map_err(|_| JwtError::Malformed)?)
            .map_err(|_| JwtError::Malformed)?;
    if !claims.is_object() {
        return Err(JwtError::Malformed);
    }
    let alg = match header.get("alg").and_then(Value::as_str) {
        Some("HS256") => Some(Alg::Hs256),
        Some("HS512") => Some(Alg::Hs512),
        _ => None,
    };
    let signature = B64.decode(sig).map_err(|_| JwtError::Malformed)?;
    Ok(Unverified {
        alg,
        claims,
        input,
        signature,
    })
}

impl Unverified<'_> {
    /// The claims, if the algorithm is allowed and the signature is `key`'s.
    pub fn verify(self, key: &[u8], allowed: &[Alg]) -> Result<Value, JwtError> {
        let alg = self
            .alg
            .filter(|a| allowed.contains(a))
            .ok_or(JwtError::Algorithm)?;
        if verify_mac(alg, key, self.input.as_bytes(), &self.signature) {
            Ok(self.claims)
        } else {
            Err(JwtError::Signature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let claims = serde_json::json!({"sub": "u1", "exp": 2_000_000_000});
        let token = sign(Alg::Hs256, b"k", &claims);
        assert_eq!(
            decode(&token).unwrap().verify(b"k", &[Alg::Hs256]).unwrap(),
            claims
        );
        assert_eq!(
            decode(&token).unwrap().verify(b"other", &[Alg::Hs256]),
            Err(JwtError::Signature)
        );
        assert_eq!(
            decode(&token).unwrap().verify(b"k", &[Alg::Hs512]),
            Err(JwtError::Algorithm)
        );
        // alg none with an empty signature
        let none = format!(
            "{}.{}.",
            B64.encode(r#"{"alg":"none","typ":"JWT"}"#),
            B64.encode(claims.to_string())
        );
        assert_eq!(
            decode(&none)
                .unwrap()
                .verify(b"k", &[Alg::Hs256, Alg::Hs512]),
            Err(JwtError::Algorithm)
        );
        // A forged payload under a valid signature.
        let (h, rest) = token.split_once('.').unwrap();
        let (_, s) = rest.split_once('.').unwrap();
        let forged = format!(
            "{h}.{}.{s}",
            B64.encode(r#"{"sub":"admin","exp":2000000000}"#)
        );
        assert_eq!(
            decode(&forged).unwrap().verify(b"k", &[Alg::Hs256]),
            Err(JwtError::Signature)
        );
        assert!(decode("not.a.token.at.all").is_err());
        assert!(decode("garbage").is_err());
        let hs512 = sign(Alg::Hs512, b"secret", &claims);
        assert!(
            decode(&hs512)
                .unwrap()
                .verify(b"secret", &[Alg::Hs256, Alg::Hs512])
                .is_ok()
        );
    }
}
