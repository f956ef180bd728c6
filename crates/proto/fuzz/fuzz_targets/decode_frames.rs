//! Arbitrary bytes into the incremental decoder, in arbitrary chunk sizes.
//!
//! Invariants: no panic; the decoder never holds more than one header plus the largest
//! payload; every frame it yields re-encodes and decodes back to itself; the same input fed
//! in one piece yields the same frames (and the same error) as fed in chunks.
#![no_main]

use airlock_proto::frame::{HEADER_LEN, MAX_DATA_PAYLOAD};
use airlock_proto::{Decoder, Frame, ProtoError, encode};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fn run(data: &[u8], chunk: usize) -> (Vec<Frame>, Option<ProtoError>) {
    let mut d = Decoder::new();
    let mut frames = Vec::new();
    for mut piece in data.chunks(chunk.max(1)) {
        loop {
            match d.decode(&mut piece) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
            assert!(d.buffered() <= HEADER_LEN + MAX_DATA_PAYLOAD);
        }
        assert!(
            piece.is_empty(),
            "Ok(None) must mean the input was consumed"
        );
        assert!(d.buffered() <= HEADER_LEN + MAX_DATA_PAYLOAD);
    }
    (frames, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&chunk, data)) = input.split_first() else {
        return;
    };
    let (frames, err) = run(data, usize::from(chunk));
    let (whole, whole_err) = run(data, data.len());
    assert_eq!(frames, whole, "chunking changed the decoded frames");
    assert_eq!(err, whole_err, "chunking changed the error");
    for f in &frames {
        let mut buf = BytesMut::new();
        encode(f, &mut buf).expect("a decoded frame must re-encode");
        let mut slice = &buf[..];
        let back = Decoder::new()
            .decode(&mut slice)
            .expect("re-encoded frame must decode");
        assert_eq!(back.as_ref(), Some(f));
        assert!(slice.is_empty());
    }
});
