//! The parameters of an Upbit-signed request, from a query string or a JSON
//! body, and the strings a client may have hashed for them: never a panic, and
//! no string with two readings — each rendering, read back as a query, gives
//! exactly the same parameters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upbit::signing::{Signed, from_json, from_query};

fn check(signed: &Signed) {
    for hashed in signed.hashed() {
        let again = from_query(&hashed)
            .unwrap_or_else(|e| panic!("a rendering does not read back: {e}\n{hashed:?}"));
        assert_eq!(again.params, signed.params, "{hashed:?} reads otherwise");
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
