#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Frame round trips, chunked decoding and every length / validity limit.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use airlock_proto::frame::{
    self, HEADER_LEN, MAX_AGENT_NAME_LEN, MAX_DATA_PAYLOAD, MAX_REASON_LEN, MAX_TOKEN_LEN,
    MAX_WINDOW, kind,
};
use airlock_proto::{Decoder, Frame, Hello, ProtoError, StreamId, Token, Welcome, encode};
use bytes::{Bytes, BytesMut};

fn samples() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            versions: vec![1, 2, 0xffff],
            initial_window: 65_536,
            token: Token::new(Bytes::from_static(b"\x00secret\xff")),
            agent_name: "laptop-é".to_owned(),
        }),
        Frame::Welcome(Welcome {
            version: 2,
            tunnel_domain: "alice.tunnel.example.com".to_owned(),
            session_id: [7; 16],
            max_streams: 100,
            initial_window: MAX_WINDOW,
        }),
        Frame::Reject {
            code: 1,
            reason: "bad token — expired".to_owned(),
        },
        Frame::Open {
            stream: StreamId(1),
            sni: "mcp.alice.tunnel.example.com".to_owned(),
            client_addr: SocketAddr::new(Ipv4Addr::new(203, 0, 113, 9).into(), 51_000),
        },
        Frame::Open {
            stream: StreamId(u32::MAX),
            sni: "a".to_owned(),
            client_addr: SocketAddr::new(Ipv6Addr::LOCALHOST.into(), 0),
        },
        Frame::Data {
            stream: StreamId(3),
            data: Bytes::from(vec![0xab; MAX_DATA_PAYLOAD]),
        },
        Frame::Data {
            stream: StreamId(3),
            data: Bytes::new(),
        },
        Frame::WindowUpdate {
            stream: StreamId(5),
            increment: 12_345,
        },
        Frame::Fin {
            stream: StreamId(7),
        },
        Frame::Reset {
            stream: StreamId(9),
            code: 3,
        },
        Frame::Ping { opaque: u64::MAX },
        Frame::Pong { opaque: 42 },
        Frame::GoAway {
            last_stream: StreamId(11),
            code: 0,
            reason: String::new(),
        },
    ]
}

fn decode_all(mut input: &[u8]) -> Result<Vec<Frame>, ProtoError> {
    let mut d = Decoder::new();
    let mut out = Vec::new();
    while let Some(f) = d.decode(&mut input)? {
        out.push(f);
    }
    assert!(input.is_empty());
    assert_eq!(d.buffered(), 0, "no partial frame should remain");
    Ok(out)
}

fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![kind, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn decode_one(bytes: &[u8]) -> Result<Option<Frame>, ProtoError> {
    let mut input = bytes;
    Decoder::new().decode(&mut input)
}

#[test]
fn every_frame_round_trips() {
    for f in samples() {
        let mut buf = BytesMut::new();
        encode(&f, &mut buf).unwrap();
        assert_eq!(buf[0], f.kind());
        assert_eq!(decode_all(&buf).unwrap(), vec![f]);
    }
}

#[test]
fn several_frames_in_one_read_and_one_byte_at_a_time() {
    let frames = samples();
    let mut buf = BytesMut::new();
    for f in &frames {
        encode(f, &mut buf).unwrap();
    }
    assert_eq!(decode_all(&buf).unwrap(), frames);

    let mut d = Decoder::new();
    let mut got = Vec::new();
    for b in buf.iter() {
        let mut one: &[u8] = std::slice::from_ref(b);
        while let Some(f) = d.decode(&mut one).unwrap() {
            got.push(f);
        }
        assert!(one.is_empty());
        assert!(d.buffered() <= HEADER_LEN + MAX_DATA_PAYLOAD);
    }
    assert_eq!(got, frames);

    // Odd chunk sizes that straddle headers and payloads.
    for chunk in [3usize, 7, 11, 4096, 70_000] {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for mut c in buf.chunks(chunk) {
            while let Some(f) = d.decode(&mut c).unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, frames, "chunk size {chunk}");
    }
}

#[test]
fn oversize_length_is_rejected_from_the_header_alone() {
    // A DATA header announcing 64 KiB + 1 bytes: rejected before any payload is buffered.
    let mut hdr = raw(kind::DATA, 0, 1, &[]);
    hdr[6..10].copy_from_slice(&((MAX_DATA_PAYLOAD as u32) + 1).to_be_bytes());
    let mut d = Decoder::new();
    let mut input = &hdr[..];
    let err = d.decode(&mut input).unwrap_err();
    assert!(matches!(err, ProtoError::PayloadTooLarge { frame: "DATA", len, .. } if len == 65_537));
    assert_eq!(d.buffered(), 0);

    // A PING claiming 4 GiB.
    let mut hdr = raw(kind::PING, 0, 0, &[]);
    hdr[6..10].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decode_one(&hdr),
        Err(ProtoError::PayloadTooLarge {
            frame: "PING",
            max: 8,
            ..
        })
    ));

    // The decoder stays poisoned after an error.
    let mut more: &[u8] = &raw(kind::PING, 0, 0, &[0; 8]);
    assert!(d.decode(&mut more).is_err());

    let big = Frame::Data {
        stream: StreamId(1),
        data: Bytes::from(vec![0; MAX_DATA_PAYLOAD + 1]),
    };
    let mut buf = BytesMut::new();
    assert!(matches!(
        encode(&big, &mut buf),
        Err(ProtoError::PayloadTooLarge { .. })
    ));
    assert!(
        buf.is_empty(),
        "a failed encode must not leave bytes behind"
    );
}

#[test]
fn unknown_type_flags_and_stream_id_rules() {
    assert_eq!(
        decode_one(&raw(0x7f, 0, 0, &[])),
        Err(ProtoError::UnknownFrameType(0x7f))
    );
    assert!(matches!(
        decode_one(&raw(kind::FIN, 0x80, 1, &[])),
        Err(ProtoError::NonZeroFlags { flags: 0x80, .. })
    ));
    assert!(matches!(
        decode_one(&raw(kind::FIN, 0, 0, &[])),
        Err(ProtoError::BadStreamId { id: 0, .. })
    ));
    assert!(matches!(
        decode_one(&raw(kind::PING, 0, 5, &[0; 8])),
        Err(ProtoError::BadStreamId { id: 5, .. })
    ));
    let mut buf = BytesMut::new();
    assert!(
        encode(
            &Frame::Fin {
                stream: StreamId(0)
            },
            &mut buf
        )
        .is_err()
    );
    assert!(buf.is_empty());
}

#[test]
fn truncated_and_trailing_payloads() {
    assert!(matches!(
        decode_one(&raw(kind::RESET, 0, 1, &[0, 0])),
        Err(ProtoError::Truncated { frame: "RESET", .. })
    ));
    // REJECT: code, reason length 1, reason "x", then one stray byte.
    assert!(matches!(
        decode_one(&raw(kind::REJECT, 0, 0, &[0, 1, 0, 1, b'x', 0])),
        Err(ProtoError::TrailingBytes {
            frame: "REJECT",
            extra: 1
        })
    ));
    // GOAWAY whose reason length points past the payload.
    assert!(matches!(
        decode_one(&raw(
            kind::GOAWAY,
            0,
            0,
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 5, b'a']
        )),
        Err(ProtoError::Truncated {
            frame: "GOAWAY",
            field: "reason"
        })
    ));
}

#[test]
fn string_limits_and_utf8() {
    // Reason: 256 ok, 257 rejected both ways.
    let ok = Frame::Reject {
        code: 1,
        reason: "r".repeat(MAX_REASON_LEN),
    };
    let mut buf = BytesMut::new();
    encode(&ok, &mut buf).unwrap();
    assert_eq!(decode_all(&buf).unwrap(), vec![ok]);
    let long = "r".repeat(MAX_REASON_LEN + 1);
    assert!(matches!(
        encode(
            &Frame::GoAway {
                last_stream: StreamId(0),
                code: 0,
                reason: long.clone()
            },
            &mut BytesMut::new()
        ),
        Err(ProtoError::FieldTooLong {
            field: "reason",
            len: 257,
            max: 256
        })
    ));
    let mut p = vec![0, 1];
    p.extend_from_slice(&257u16.to_be_bytes());
    p.extend_from_slice(long.as_bytes());
    // 2 + 2 + 257 exceeds the REJECT payload cap: caught at the header.
    assert!(matches!(
        decode_one(&raw(kind::REJECT, 0, 0, &p)),
        Err(ProtoError::PayloadTooLarge {
            frame: "REJECT",
            ..
        })
    ));

    // Invalid UTF-8 in a reason.
    assert_eq!(
        decode_one(&raw(kind::REJECT, 0, 0, &[0, 1, 0, 2, 0xc3, 0x28])),
        Err(ProtoError::InvalidUtf8 { field: "reason" })
    );

    // Token: 4096 ok, 4097 rejected.
    let hello = |token: usize, name: &str| {
        Frame::Hello(Hello {
            versions: vec![1],
            initial_window: 4096,
            token: Token::new(vec![1; token]),
            agent_name: name.to_owned(),
        })
    };
    let mut buf = BytesMut::new();
    encode(&hello(MAX_TOKEN_LEN, "a"), &mut buf).unwrap();
    assert_eq!(decode_all(&buf).unwrap().len(), 1);
    assert!(matches!(
        encode(&hello(MAX_TOKEN_LEN + 1, "a"), &mut BytesMut::new()),
        Err(ProtoError::FieldTooLong { field: "token", .. })
    ));
    assert!(matches!(
        encode(
            &hello(1, &"n".repeat(MAX_AGENT_NAME_LEN + 1)),
            &mut BytesMut::new()
        ),
        Err(ProtoError::FieldTooLong {
            field: "agent_name",
            ..
        })
    ));
    assert!(matches!(
        encode(&hello(1, "bad\nname"), &mut BytesMut::new()),
        Err(ProtoError::InvalidValue {
            field: "agent_name",
            ..
        })
    ));
    assert!(matches!(
        encode(&hello(1, ""), &mut BytesMut::new()),
        Err(ProtoError::InvalidValue {
            field: "agent_name",
            ..
        })
    ));
}

fn open(sni: &str) -> Frame {
    Frame::Open {
        stream: StreamId(1),
        sni: sni.to_owned(),
        client_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 1),
    }
}

#[test]
fn sni_must_be_a_valid_hostname() {
    let label = "a".repeat(63);
    let max = format!("{label}.{label}.{label}.{}", "b".repeat(61)); // 253 bytes
    assert_eq!(max.len(), 253);
    let mut buf = BytesMut::new();
    encode(&open(&max), &mut buf).unwrap();
    encode(&open("xn--bcher-kva.example-1.COM"), &mut buf).unwrap();
    assert_eq!(decode_all(&buf).unwrap().len(), 2);

    for bad in [
        "",
        "a..b",
        ".a",
        "a.",
        "-a.com",
        "a-.com",
        "a_b.com",
        "a b",
        "bücher.de",
        "a:443",
        &"a".repeat(64),
    ] {
        let err = encode(&open(bad), &mut BytesMut::new()).unwrap_err();
        assert!(
            matches!(err, ProtoError::InvalidHostname { field: "sni", .. }),
            "{bad:?}: {err}"
        );
    }
    let too_long = format!("{max}.c");
    assert!(matches!(
        encode(&open(&too_long), &mut BytesMut::new()),
        Err(ProtoError::FieldTooLong {
            field: "sni",
            len: 255,
            ..
        })
    ));

    // The same checks apply on decode: an SNI with an underscore crafted by hand.
    let mut p = vec![3];
    p.extend_from_slice(b"a_b");
    p.extend_from_slice(&[4, 127, 0, 0, 1, 0, 80]);
    assert!(matches!(
        decode_one(&raw(kind::OPEN, 0, 1, &p)),
        Err(ProtoError::InvalidHostname { .. })
    ));
    // Unknown address family.
    let mut p = vec![1, b'a', 5];
    p.extend_from_slice(&[0; 6]);
    assert!(matches!(
        decode_one(&raw(kind::OPEN, 0, 1, &p)),
        Err(ProtoError::InvalidValue {
            field: "client_addr",
            ..
        })
    ));
}

#[test]
fn numeric_limits() {
    let welcome = |max_streams, initial_window| {
        Frame::Welcome(Welcome {
            version: 1,
            tunnel_domain: "t.example".to_owned(),
            session_id: [0; 16],
            max_streams,
            initial_window,
        })
    };
    assert!(encode(&welcome(1, 1024), &mut BytesMut::new()).is_ok());
    for (ms, w) in [(0, 4096), (65_537, 4096), (1, 1023), (1, MAX_WINDOW + 1)] {
        assert!(
            matches!(
                encode(&welcome(ms, w), &mut BytesMut::new()),
                Err(ProtoError::InvalidValue { .. })
            ),
            "max_streams {ms} window {w}"
        );
    }
    assert!(matches!(
        encode(
            &Frame::WindowUpdate {
                stream: StreamId(1),
                increment: 0
            },
            &mut BytesMut::new()
        ),
        Err(ProtoError::InvalidValue {
            field: "increment",
            ..
        })
    ));
    for versions in [vec![], vec![1u16; 17]] {
        let h = Frame::Hello(Hello {
            versions,
            initial_window: 4096,
            token: Token::default(),
            agent_name: "a".to_owned(),
        });
        assert!(matches!(
            encode(&h, &mut BytesMut::new()),
            Err(ProtoError::InvalidValue {
                field: "versions",
                ..
            })
        ));
    }
    // A HELLO whose version count byte says 0.
    assert!(matches!(
        decode_one(&raw(kind::HELLO, 0, 0, &[0])),
        Err(ProtoError::InvalidValue {
            field: "versions",
            ..
        })
    ));
}

#[test]
fn errors_name_what_was_wrong() {
    let e = decode_one(&raw(kind::REJECT, 0, 0, &[0, 1, 0, 1, b'x', 0])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "REJECT frame has 1 unexpected trailing bytes"
    );
    let e = frame::validate_hostname("sni", "a_b").unwrap_err();
    assert!(
        e.to_string().contains("\"a_b\" is not a valid hostname"),
        "{e}"
    );
}

/// The seed corpus was written by hand (in Python) straight from the README's byte layout, so
/// decoding it cross-checks the implementation against the documented format.
#[test]
fn documented_layout_matches_the_decoder() {
    let seed = include_bytes!("../fuzz/seeds/decode_frames/all-frames-whole");
    let frames = decode_all(&seed[1..]).unwrap();
    let kinds: Vec<u8> = frames.iter().map(Frame::kind).collect();
    assert_eq!(kinds, vec![1, 2, 3, 4, 4, 5, 6, 7, 8, 9, 10, 11]);
    assert_eq!(
        frames[0],
        Frame::Hello(Hello {
            versions: vec![1, 2],
            initial_window: 65_536,
            token: Token::new(Bytes::from_static(b"tok")),
            agent_name: "agent".to_owned(),
        })
    );
    assert_eq!(
        frames[4],
        Frame::Open {
            stream: StreamId(3),
            sni: "b.example".to_owned(),
            client_addr: "[::1]:443".parse().unwrap(),
        }
    );
    assert_eq!(
        frames[11],
        Frame::GoAway {
            last_stream: StreamId(1),
            code: 0,
            reason: "bye".to_owned()
        }
    );
}

#[test]
fn token_is_redacted_in_debug_output() {
    let hello = Hello {
        versions: vec![1],
        initial_window: 4096,
        token: Token::new(&b"hunter2-secret"[..]),
        agent_name: "a".to_owned(),
    };
    let dbg = format!("{hello:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(dbg.contains("<14 bytes redacted>"), "{dbg}");
}
