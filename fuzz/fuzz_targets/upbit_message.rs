//! Upbit WebSocket frames (DEFAULT and SIMPLE formats) as the ingestor and
//! clients read them: never a panic; a frame that parses writes back, in each
//! format, to one that parses to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use upbit::write::{self, Format};
use upbit::{Message, parse_message};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = parse_message(data) else {
        return;
    };
    for format in [
        Format::Default,
        Format::Simple,
        Format::JsonList,
        Format::SimpleList,
    ] {
        let written = match &msg {
            Message::Ticker(t) => write::ticker(t, format),
            Message::Trade(t) => write::trade(t, format),
            Message::Orderbook(o) => write::orderbook(o, format),
            Message::Candle(c) => write::candle(c, format),
            Message::Status(_) | Message::Error(_) => return,
        };
        let again = parse_message(written.as_bytes()).unwrap_or_else(|e| {
            panic!("{format:?} of a parsed frame does not parse: {e}\n{written}")
        });
        assert_eq!(again, msg, "{format:?}: parse(write(x)) != x\n{written}");
    }
});
