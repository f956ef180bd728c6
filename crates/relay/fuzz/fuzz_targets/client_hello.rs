//! Arbitrary bytes, arbitrarily chunked, into the ClientHello parser: no panics, the raw-byte
//! cap holds, results are sticky and independent of chunking, and a parsed SNI is a valid
//! lower-case hostname.
#![no_main]

use airlock_relay::sni::{ClientHelloParser, Parsed};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    // First byte picks the chunk size; the rest is the stream.
    let chunk = usize::from(data[0] % 64) + 1;
    let input = &data[1..];

    let mut whole = ClientHelloParser::new(MAX);
    let whole_result = whole.push(input);

    let mut pieces = ClientHelloParser::new(MAX);
    let mut result = Ok(Parsed::NeedMore);
    for c in input.chunks(chunk) {
        result = pieces.push(c);
        assert!(pieces.buffered().len() <= MAX);
        if !matches!(result, Ok(Parsed::NeedMore)) {
            // Sticky.
            assert_eq!(pieces.push(b"\x16\x03\x01"), result);
            break;
        }
    }
    // A final answer does not depend on how the bytes were split (the chunked parser may stop
    // early, the whole one may also be oversized where the chunked one already finished).
    if let (Ok(Parsed::Sni(a)), Ok(Parsed::Sni(b))) = (&whole_result, &result) {
        assert_eq!(a, b);
    }
    if let Ok(Parsed::Sni(name)) = &result {
        assert!(!name.is_empty() && name.len() <= 253);
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
    }
});
