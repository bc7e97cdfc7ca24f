//! The Upbit protocol, shared by the ingestor (client), `upbit-sim` (server) and the
//! gateway (server).
//!
//! - [`types`]: ticker, trade, orderbook and candle messages with exact decimals.
//! - [`parse`]: one parser for WebSocket frames in both the DEFAULT and SIMPLE
//!   formats. Decimals are read from the JSON number's text (never through `f64`,
//!   exponents accepted); unknown fields are ignored; malformed input is an
//!   [`parse::ParseError`], never a panic.
//! - [`write`]: writers for the DEFAULT, SIMPLE and `*_LIST` WebSocket formats and
//!   for the REST quotation shapes.
//! - [`request`]: subscription requests (`[{ticket},{type,codes},{format}]`), parsed
//!   with Upbit's error names and built for clients.
//! - [`private`]: the private WebSocket's requests (`myOrder`, `myAsset`) and events.
//! - [`query`]: REST query parameters validated with client-safe messages.
//! - [`scan`]: a strict, allocation-free reader of one JSON object's fields, for
//!   clients that convert frames straight into their own types.
//! - [`signing`]: the string a private request's `query_hash` is of, unambiguous.
//! - [`market`]: market codes (`QUOTE-BASE`), tick sizes, minimum order totals.
//! - [`error`]: Upbit's error body `{"error":{"name","message"}}`.

pub mod error;
pub mod market;
pub mod parse;
pub mod private;
pub mod query;
pub mod request;
pub mod scan;
pub mod signing;
pub mod types;
pub mod write;

pub use parse::{ParseError, parse_message};
pub use types::*;

/// The `min` of Upbit's `Remaining-Req` header (`group=candle; min=1800;
/// sec=9`): deprecated, and sent as this fixed value whatever is left; `sec`
/// is what counts.
pub const DEPRECATED_MIN: u32 = 1800;
