//! Decimals on the wire (every price, volume and amount a client sends): never
//! a panic; what is accepted is within the documented bounds and its wire
//! text reads back to the same value.
#![no_main]

// The module itself, not the crate around it: that crate also builds every
// gRPC stub, which the fuzzer does not need.
#[path = "../../libs/proto/src/decimal.rs"]
#[allow(dead_code)]
mod decimal;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(value) = decimal::parse(text) else {
        return;
    };
    let wire = decimal::to_wire(value);
    assert!(!wire.contains(['e', 'E']), "{wire}");
    assert_eq!(decimal::parse(&wire), Ok(value), "{text:?} -> {wire}");
    assert!(value.scale() as usize <= decimal::MAX_SCALE, "{wire}");
    if let Ok(positive) = decimal::positive("f", text) {
        assert!(positive > rust_decimal::Decimal::ZERO);
    }
});
