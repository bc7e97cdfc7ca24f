//! A strict, allocation-free pull reader of JSON, for the hot path of a feed
//! client: the caller walks the document key by key and takes the raw text of
//! the values it needs, so a frame is converted straight into the caller's
//! types in one pass, without a document or a typed message in between.
//!
//! It accepts a subset of what a full JSON parser accepts and never more: keys
//! with escapes, nesting deeper than [`MAX_DEPTH`] or anything malformed give
//! [`Unsupported`], and the caller then falls back to a full parser (which
//! names the error, if there is one).

/// Nesting [`Reader::skip`] follows inside a value it skips.
pub const MAX_DEPTH: usize = 64;

/// The input is not something the reader reads; use a full parser.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsupported;

/// A scalar value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// A string without escapes: the text between the quotes.
    Str(&'a str),
    /// A string with escapes: its raw text, quotes included.
    Escaped(&'a str),
    /// A number: its text (valid JSON number grammar).
    Num(&'a str),
    Bool(bool),
    Null,
}

/// A cursor over one JSON document.
pub struct Reader<'a> {
    text: &'a str,
    at: usize,
    /// Whether the next key or item of the open object or array is its first.
    first: bool,
}

impl<'a> Reader<'a> {
    /// A reader of `bytes`, which are checked to be UTF-8 once, here.
    pub fn new(bytes: &'a [u8]) -> Result<Self, Unsupported> {
        let text = std::str::from_utf8(bytes).map_err(|_| Unsupported)?;
        Ok(Self {
            text,
            at: 0,
            first: true,
        })
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn peek(&mut self) -> Option<u8> {
        let b = self.bytes();
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(self.at) {
            self.at += 1;
        }
        b.get(self.at).copied()
    }

    fn expect(&mut self, c: u8) -> Result<(), Unsupported> {
        if self.peek() == Some(c) {
            self.at += 1;
            Ok(())
        } else {
            Err(Unsupported)
        }
    }

    /// Enters the object that comes next.
    pub fn object(&mut self) -> Result<(), Unsupported> {
        self.expect(b'{')?;
        self.first = true;
        Ok(())
    }

    /// The next key of the object entered last, with its `:` consumed; None
    /// once its closing `}` is consumed.
    pub fn key(&mut self) -> Result<Option<&'a str>, Unsupported> {
        match self.peek() {
            Some(b'}') => {
                self.at += 1;
                self.first = false;
                return Ok(None);
            }
            Some(b',') if !self.first => self.at += 1,
            Some(b'"') if self.first => {}
            _ => return Err(Unsupported),
        }
        self.first = false;
        self.peek();
        let Value::Str(key) = self.string()? else {
            return Err(Unsupported);
        };
        self.expect(b':')?;
        Ok(Some(key))
    }

    /// Enters the array that comes next.
    pub fn array(&mut self) -> Result<(), Unsupported> {
        self.expect(b'[')?;
        self.first = true;
        Ok(())
    }

    /// Whether another item of the array entered last follows (its `,`
    /// consumed); false once its closing `]` is consumed.
    pub fn item(&mut self) -> Result<bool, Unsupported> {
        match self.peek() {
            Some(b']') => {
                self.at += 1;
                self.first = false;
                Ok(false)
            }
            Some(b',') if !self.first => {
                self.at += 1;
                Ok(true)
            }
            Some(_) if self.first => {
                self.first = false;
                Ok(true)
            }
            _ => Err(Unsupported),
        }
    }

    /// The scalar that comes next, and its raw text.
    pub fn scalar(&mut self) -> Result<(Value<'a>, &'a str), Unsupported> {
        let from = match self.peek() {
            Some(_) => self.at,
            None => return Err(Unsupported),
        };
        let b = self.bytes();
        let v = match b[from] {
            b'"' => self.string()?,
            b'-' | b'0'..=b'9' => self.number()?,
            b't' if b[from..].starts_with(b"true") => {
                self.at += 4;
                Value::Bool(true)
            }
            b'f' if b[from..].starts_with(b"false") => {
                self.at += 5;
                Value::Bool(false)
            }
            b'n' if b[from..].starts_with(b"null") => {
                self.at += 4;
                Value::Null
            }
            _ => return Err(Unsupported),
        };
        Ok((v, self.cut(from, self.at)?))
    }

    /// Skips the value that comes next, checking it.
    pub fn skip(&mut self) -> Result<(), Unsupported> {
        self.skip_at(1)
    }

    fn skip_at(&mut self, depth: usize) -> Result<(), Unsupported> {
        match self.peek() {
            Some(b'{') if depth <= MAX_DEPTH => {
                self.object()?;
                while self.key()?.is_some() {
                    self.skip_at(depth + 1)?;
                }
                Ok(())
            }
            Some(b'[') if depth <= MAX_DEPTH => {
                self.array()?;
                while self.item()? {
                    self.skip_at(depth + 1)?;
                }
                Ok(())
            }
            Some(b'{' | b'[') => Err(Unsupported),
            _ => self.scalar().map(|_| ()),
        }
    }

    /// Nothing but whitespace is left.
    pub fn end(&mut self) -> Result<(), Unsupported> {
        match self.peek() {
            None => Ok(()),
            Some(_) => Err(Unsupported),
        }
    }

    /// `text[from..to]`, cut at ASCII structure (so on character boundaries).
    fn cut(&self, from: usize, to: usize) -> Result<&'a str, Unsupported> {
        self.text.get(from..to).ok_or(Unsupported)
    }

    /// The string at the cursor (which is on its opening quote).
    fn string(&mut self) -> Result<Value<'a>, Unsupported> {
        let b = self.bytes();
        let open = self.at;
        if b.get(open) != Some(&b'"') {
            return Err(Unsupported);
        }
        let mut i = open + 1;
        let mut escaped = false;
        loop {
            match b.get(i) {
                None => return Err(Unsupported),
                Some(b'"') => break,
                Some(b'\\') => {
                    escaped = true;
                    match b.get(i + 1) {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i += 2,
                        Some(b'u')
                            if b.get(i + 2..i + 6)
                                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) =>
                        {
                            i += 6
                        }
                        _ => return Err(Unsupported),
                    }
                }
                Some(c) if *c < 0x20 => return Err(Unsupported),
                Some(_) => i += 1,
            }
        }
        self.at = i + 1;
        if escaped {
            Ok(Value::Escaped(self.cut(open, i + 1)?))
        } else {
            Ok(Value::Str(self.cut(open + 1, i)?))
        }
    }

    /// The number at the cursor (JSON grammar:
    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`).
    fn number(&mut self) -> Result<Value<'a>, Unsupported> {
        let b = self.bytes();
        let digits = |mut i: usize| {
            let from = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            (i > from).then_some(i)
        };
        let from = self.at;
        let mut i = from;
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        i = match b.get(i) {
            Some(b'0') => i + 1,
            Some(b'1'..=b'9') => digits(i).ok_or(Unsupported)?,
            _ => return Err(Unsupported),
        };
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1).ok_or(Unsupported)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = digits(i).ok_or(Unsupported)?;
        }
        self.at = i;
        Ok(Value::Num(self.cut(from, i)?))
    }
}

/// The normalised decimal text of a JSON number without an exponent and with
/// at most 27 digits (`148000000.0` → `148000000`, `-0.50` → `-0.5`, `-0.0`
/// → `0`): exactly what `Decimal` would print after reading it. None for
/// anything else (the caller then goes through `Decimal`).
pub fn plain_decimal(number: &str) -> Option<String> {
    let bytes = number.as_bytes();
    if bytes.iter().any(|b| matches!(b, b'e' | b'E')) {
        return None;
    }
    let negative = bytes.first() == Some(&b'-');
    let unsigned = &number[usize::from(negative)..];
    let (int, frac) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    if int.len() + frac.len() > 27 || int.is_empty() {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    let int = int.trim_start_matches('0');
    if int.is_empty() && frac.is_empty() {
        return Some("0".to_owned());
    }
    let mut out = String::with_capacity(number.len() + 1);
    if negative {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys and raw scalar texts of a flat object (nested values skipped).
    fn flat(text: &str) -> Result<Vec<(String, String)>, Unsupported> {
        let mut r = Reader::new(text.as_bytes())?;
        r.object()?;
        let mut out = Vec::new();
        while let Some(key) = r.key()? {
            if key.starts_with('_') {
                r.skip()?;
                out.push((key.to_owned(), String::new()));
            } else {
                out.push((key.to_owned(), r.scalar()?.1.to_owned()));
            }
        }
        r.end()?;
        Ok(out)
    }

    #[test]
    fn reads_keys_and_values_and_checks_what_it_skips() {
        let got = flat(r#" {"a":1, "b" : "x", "_c":[1,{"d":[true,null]}],"e":-0.5e+3,"_f":{}} "#)
            .unwrap();
        let keys: Vec<_> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["a", "b", "_c", "e", "_f"]);
        assert_eq!(got[1].1, r#""x""#);
        assert_eq!(got[3].1, "-0.5e+3");
        assert_eq!(flat("{}").unwrap(), vec![]);
        for bad in [
            r#"{"a":1,}"#,
            r#"{"a":1"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":.5}"#,
            r#"{"_a":[1,]}"#,
            r#"{"_a":[,1]}"#,
            r#"{"a":1} x"#,
            r#"{"a" 1}"#,
            r#"{"a":tru}"#,
            r#"{"a":"x\q"}"#,
            "{\"a\":\"x\ny\"}",
            r#"{"\u0061":1}"#,
            r#"[{"a":1}]"#,
            r#"{"_a":{"b":1,}}"#,
            r#"{"a":[1]}"#,
        ] {
            assert_eq!(flat(bad), Err(Unsupported), "{bad}");
        }
        let deep = format!("{{\"_a\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(flat(&deep), Err(Unsupported), "too deep to skip");
        let escaped = flat(r#"{"a":"x\"y\u00e9"}"#).unwrap();
        assert_eq!(escaped[0].1, r#""x\"y\u00e9""#);
        assert_eq!(Reader::new(b"{\"a\":\"\xff\"}").err(), Some(Unsupported));
    }

    #[test]
    fn arrays_of_objects_are_walked_item_by_item() {
        let mut r = Reader::new(br#"{"u":[{"p":1},{"p":2.5}],"n":[]}"#).unwrap();
        r.object().unwrap();
        assert_eq!(r.key().unwrap(), Some("u"));
        r.array().unwrap();
        let mut ps = Vec::new();
        while r.item().unwrap() {
            r.object().unwrap();
            while let Some(k) = r.key().unwrap() {
                assert_eq!(k, "p");
                ps.push(r.scalar().unwrap().1);
            }
        }
        assert_eq!(ps, ["1", "2.5"]);
        assert_eq!(r.key().unwrap(), Some("n"));
        r.array().unwrap();
        assert!(!r.item().unwrap());
        assert_eq!(r.key().unwrap(), None);
        r.end().unwrap();
    }

    #[test]
    fn plain_decimals_are_normalised_like_decimal_prints_them() {
        use rust_decimal::Decimal;
        use std::str::FromStr;
        for n in [
            "0",
            "-0",
            "0.0",
            "-0.000",
            "148000000",
            "148000000.0",
            "0.50",
            "-0.5",
            "10",
            "100.100",
            "0.00000001",
            "123456789012345678.123456789",
        ] {
            let d = Decimal::from_str(n).unwrap();
            assert_eq!(
                plain_decimal(n).as_deref(),
                Some(crate::write::decimal_string(d).as_str()),
                "{n}"
            );
        }
        for n in ["1e5", "1.5E-3", "1234567890123456789012345678"] {
            assert_eq!(plain_decimal(n), None, "{n}");
        }
    }
}
