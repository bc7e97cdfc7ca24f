//! The parameters of an Upbit-signed request, from a query string or a JSON
//! body, and the strings a client may have hashed for them: never a panic, and
//! no string with two readings — the decoded rendering split at `&` and `=`,
//! and the escaped one read as a query, give back exactly the same parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upbit::signing::{Signed, from_json, from_query, split_decoded};

fn check(signed: &Signed) {
    let hashed = signed.hashed();
    assert_eq!(
        split_decoded(&hashed[0]),
        signed.params,
        "{:?} reads otherwise",
        hashed[0]
    );
    for escaped in &hashed[1..] {
        let again = from_query(escaped)
            .unwrap_or_else(|e| panic!("a rendering does not read back: {e}\n{escaped:?}"));
        assert_eq!(again.params, signed.params, "{escaped:?} reads otherwise");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(signed) = from_json(data) {
        check(&signed);
    }
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(signed) = from_query(text)
    {
        check(&signed);
    }
});
