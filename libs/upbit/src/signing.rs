//! What an Upbit client hashes into its token's `query_hash`: the request's
//! parameters as `key=value` pairs joined by `&`, arrays as `key[]=value`,
//! JSON body fields in their order, numbers as written. Clients differ in how
//! they escape that string, so each of their renderings is accepted
//! ([`Signed::hashed`]):
//!
//! - Upbit's examples (`unquote(urlencode(params))`) and ccxt (its
//!   `rawencode`): the decoded text;
//! - pyupbit: `urlencode(params)` with `%5B%5D=` put back as `[]=` — escaped
//!   as Python's `quote_plus` escapes.
//!
//! The decoded string is ambiguous as it stands: the single parameter `a` =
//! `1&b=2` (sent as `a=1%26b%3D2`) and the two parameters `a=1`, `b=2` hash the
//! same, so a token signed for one request would be good for the other; so
//! would a literal `%41` and an escaped `A`, and (in Upbit's rendering, which
//! writes a space as `+`) a space and a `+`. A request is therefore refused
//! when a decoded name holds `&`, `=`, `%` or a space, or a decoded value `&`,
//! `%` or a space: then no string any client may have hashed has two
//! readings, whichever of the renderings it is. A `+` is allowed (times such
//! as `2026-01-01T00:00:00+09:00` carry one); sent in a query it must be
//! escaped as `%2B`, as every client does, since a bare `+` means a space.

use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Most parameters in one request.
pub const MAX_PARAMS: usize = 100;

/// A request's parameters, decoded, in order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Signed {
    /// `(key, value)` pairs (`+` in a query read as a space).
    pub params: Vec<(String, String)>,
}

/// Why the parameters cannot be signed unambiguously.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unsignable {
    #[error("a parameter is not valid UTF-8 once percent-decoded")]
    NotUtf8,
    #[error("parameters must not contain `&`, `%` or a space once decoded, nor names `=`")]
    Ambiguous,
    #[error("at most {MAX_PARAMS} parameters")]
    TooMany,
    #[error("the body must be a JSON object of strings, numbers, booleans or arrays of them")]
    NotFlat,
}

impl Signed {
    fn push(&mut self, key: String, value: String) -> Result<(), Unsignable> {
        if key.contains(['&', '=', '%', ' ']) || value.contains(['&', '%', ' ']) {
            return Err(Unsignable::Ambiguous);
        }
        if self.params.len() == MAX_PARAMS {
            return Err(Unsignable::TooMany);
        }
        self.params.push((key, value));
        Ok(())
    }

    /// Appends `other` (a body's parameters after the query's).
    pub fn extend(&mut self, other: Signed) -> Result<(), Unsignable> {
        if self.params.len() + other.params.len() > MAX_PARAMS {
            return Err(Unsignable::TooMany);
        }
        self.params.extend(other.params);
        Ok(())
    }

    /// Every string a client may have hashed for these parameters, each once:
    /// decoded (Upbit's examples, ccxt), then escaped as Python's `urlencode`
    /// escapes (pyupbit) when that differs. One empty string for a request
    /// without parameters.
    pub fn hashed(&self) -> Vec<String> {
        let pairs = || self.params.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let decoded = join(pairs());
        let quoted: Vec<(String, String)> = pairs()
            .map(|(k, v)| (quote_plus(k), quote_plus(v)))
            .collect();
        let escaped =
            join(quoted.iter().map(|(k, v)| (k.as_str(), v.as_str()))).replace("%5B%5D=", "[]=");
        if escaped == decoded {
            vec![decoded]
        } else {
            vec![decoded, escaped]
        }
    }
}

/// The parameters of a decoded rendering (the first of [`Signed::hashed`]):
/// split at `&` and each pair's first `=`, nothing decoded.
pub fn split_decoded(rendered: &str) -> Vec<(String, String)> {
    rendered
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

/// Python's `quote_plus`: letters, digits and `_.-~` as they are, a space as
/// `+`, every other byte as `%XX`.
fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
    out
}

/// Joins pairs as `k=v&k=v`.
fn join<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (k, v) in pairs {
        if !out.is_empty() {
            out.push('&');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(v);
    }
    out
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decodes `text`, `+` read as a space (a `%` not followed by two hex
/// digits stays as it is, as browsers and `urllib` do — and is then refused).
fn decode(text: &str) -> Result<String, Unsignable> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h * 16 + l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| Unsignable::NotUtf8)
}

/// A query string (or an `application/x-www-form-urlencoded` body) as it
/// arrived: empty segments are skipped, a segment without `=` is a key with an
/// empty value.
pub fn from_query(raw: &str) -> Result<Signed, Unsignable> {
    let mut signed = Signed::default();
    for segment in raw.split('&').filter(|s| !s.is_empty()) {
        let (k, v) = segment.split_once('=').unwrap_or((segment, ""));
        signed.push(decode(k)?, decode(v)?)?;
    }
    Ok(signed)
}

/// A JSON body's fields in order: strings as they are, numbers and booleans
/// as written, arrays as `key[]` once per item, `null` left out.
pub fn from_json(body: &[u8]) -> Result<Signed, Unsignable> {
    let Fields(fields) = serde_json::from_slice(body).map_err(|_| Unsignable::NotFlat)?;
    let mut signed = Signed::default();
    for (key, raw) in fields {
        let text = raw.get();
        if text.starts_with('[') {
            let items: Vec<Box<RawValue>> =
                serde_json::from_str(text).map_err(|_| Unsignable::NotFlat)?;
            for item in items {
                signed.push(
                    format!("{key}[]"),
                    scalar(&item)?.ok_or(Unsignable::NotFlat)?,
                )?;
            }
        } else if let Some(value) = scalar(&raw)? {
            signed.push(key, value)?;
        }
    }
    Ok(signed)
}

/// A scalar's text (None for `null`).
fn scalar(raw: &RawValue) -> Result<Option<String>, Unsignable> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => serde_json::from_str(text)
            .map(Some)
            .map_err(|_| Unsignable::NotFlat),
        Some(b'n') => Ok(None),
        Some(b'{' | b'[') | None => Err(Unsignable::NotFlat),
        // Numbers and booleans, as written.
        Some(_) => Ok(Some(text.to_owned())),
    }
}

/// A JSON object's fields in order, values unparsed.
struct Fields(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Box<RawValue>>()? {
                    if fields.len() > MAX_PARAMS {
                        return Err(serde::de::Error::custom("too many fields"));
                    }
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &Signed) -> Vec<(&str, &str)> {
        s.params
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn a_query_is_hashed_decoded_as_clients_hash_it() {
        let s = from_query("market=KRW-BTC&states%5B%5D=wait&states%5B%5D=watch").unwrap();
        assert_eq!(
            pairs(&s),
            [
                ("market", "KRW-BTC"),
                ("states[]", "wait"),
                ("states[]", "watch")
            ]
        );
        // Every client writes this one the same way.
        assert_eq!(s.hashed(), ["market=KRW-BTC&states[]=wait&states[]=watch"]);
        // Unencoded brackets, as some clients send them.
        let raw = from_query("market=KRW-BTC&states[]=wait&states[]=watch").unwrap();
        assert_eq!(raw, s);
        assert_eq!(from_query("").unwrap().hashed(), [""]);
    }

    #[test]
    fn each_clients_escaping_is_offered() {
        let s = from_query("start_time=2026-01-01T00:00:00%2B09:00&uuid=a%2Fb").unwrap();
        assert_eq!(
            pairs(&s),
            [("start_time", "2026-01-01T00:00:00+09:00"), ("uuid", "a/b")]
        );
        assert_eq!(
            s.hashed(),
            [
                // unquote(urlencode(...)), Upbit's examples; ccxt's rawencode.
                "start_time=2026-01-01T00:00:00+09:00&uuid=a/b",
                // pyupbit's urlencode.
                "start_time=2026-01-01T00%3A00%3A00%2B09%3A00&uuid=a%2Fb",
            ]
        );
        let korean = from_json("{\"identifier\":\"주문\"}".as_bytes()).unwrap();
        assert_eq!(
            korean.hashed(),
            ["identifier=주문", "identifier=%EC%A3%BC%EB%AC%B8"]
        );
    }

    #[test]
    fn strings_with_two_readings_are_refused() {
        // `a` = "1&b=2" would hash as the two parameters a=1, b=2.
        assert_eq!(from_query("a=1%26b%3D2"), Err(Unsignable::Ambiguous));
        assert_eq!(from_query("a%3D1=2"), Err(Unsignable::Ambiguous));
        assert_eq!(from_query("a%261=2"), Err(Unsignable::Ambiguous));
        // A space would read as a `+` in Upbit's rendering, a `%` as an escape.
        assert_eq!(from_query("a=my+order"), Err(Unsignable::Ambiguous));
        assert_eq!(from_query("a=my%20order"), Err(Unsignable::Ambiguous));
        assert_eq!(from_query("a=100%25"), Err(Unsignable::Ambiguous));
        assert_eq!(from_query("a=%ZZ"), Err(Unsignable::Ambiguous));
        // An `=` in a value has one reading (a name never holds one).
        assert_eq!(
            from_query("a=b%3Dc").unwrap().hashed(),
            ["a=b=c", "a=b%3Dc"]
        );
        assert_eq!(from_json(br#"{"a":"1&b=2"}"#), Err(Unsignable::Ambiguous));
        assert_eq!(from_json(br#"{"a=1":"2"}"#), Err(Unsignable::Ambiguous));
        assert_eq!(from_json(br#"{"a":"x y"}"#), Err(Unsignable::Ambiguous));
    }

    #[test]
    fn every_rendering_reads_back_to_the_same_parameters() {
        for query in [
            "market=KRW-BTC&states[]=wait",
            "start_time=2026-01-01T00:00:00%2B09:00&b=%EC%A3%BC&c=a%3Db",
            "",
        ] {
            let s = from_query(query).unwrap();
            let hashed = s.hashed();
            assert_eq!(split_decoded(&hashed[0]), s.params, "{query}");
            for other in &hashed[1..] {
                assert_eq!(from_query(other).unwrap(), s, "{query}");
            }
        }
    }

    #[test]
    fn bad_utf8_is_refused_and_empty_segments_skipped() {
        assert_eq!(from_query("a=%FF%FE"), Err(Unsignable::NotUtf8));
        assert_eq!(
            pairs(&from_query("flag&&b=").unwrap()),
            [("flag", ""), ("b", "")]
        );
    }

    #[test]
    fn a_json_body_keeps_its_order_and_its_numbers_as_written() {
        let s = from_json(
            br#"{"market":"KRW-BTC","side":"bid","volume":5e-05,"price":1000000,"post_only":true,"states":["wait","done"],"x":null}"#,
        )
        .unwrap();
        assert_eq!(
            pairs(&s),
            [
                ("market", "KRW-BTC"),
                ("side", "bid"),
                ("volume", "5e-05"),
                ("price", "1000000"),
                ("post_only", "true"),
                ("states[]", "wait"),
                ("states[]", "done"),
            ]
        );
        assert_eq!(
            s.hashed(),
            [
                "market=KRW-BTC&side=bid&volume=5e-05&price=1000000&post_only=true&states[]=wait&states[]=done"
            ]
        );
        for bad in [
            &b"[]"[..],
            b"\"x\"",
            b"{\"a\":{}}",
            b"{\"a\":[[1]]}",
            b"{\"a\":[null]}",
            b"{",
        ] {
            assert_eq!(
                from_json(bad),
                Err(Unsignable::NotFlat),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn a_body_follows_the_query() {
        let mut s = from_query("a=1%2B2").unwrap();
        s.extend(from_json(br#"{"b":"3"}"#).unwrap()).unwrap();
        assert_eq!(s.hashed(), ["a=1+2&b=3", "a=1%2B2&b=3"]);
        let many = (0..=MAX_PARAMS)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(from_query(&many), Err(Unsignable::TooMany));
    }
}
