//! WebSocket subscription requests as the gateway reads them from any client:
//! never a panic; a request that parses is rebuilt by `to_json` into one that
//! parses to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upbit::request::{ClientFrame, parse_request};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ClientFrame::Subscribe(request)) = parse_request(text) {
        let json = request.to_json();
        let again = parse_request(&json)
            .unwrap_or_else(|e| panic!("a rebuilt request does not parse: {e:?}\n{json}"));
        assert_eq!(again, ClientFrame::Subscribe(request), "{json}");
    }
});
