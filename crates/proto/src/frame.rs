//! Frame encoding and incremental decoding.
//!
//! Every frame is a 10-byte header followed by a payload:
//!
//! ```text
//! +--------+--------+----------------+----------------+
//! | type u8| flags u8| stream id u32 | length u32     |  (big endian)
//! +--------+--------+----------------+----------------+
//! | payload (length bytes, capped per frame type)     |
//! +---------------------------------------------------+
//! ```
//!
//! Every length is checked against its cap *before* anything is buffered or allocated, so a
//! hostile peer can make the decoder hold at most one header plus [`MAX_DATA_PAYLOAD`] bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::ProtoError;

/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 10;
/// Largest DATA payload (64 KiB). Also the largest payload of any frame.
pub const MAX_DATA_PAYLOAD: usize = 64 * 1024;
/// Largest SNI / hostname (DNS limit).
pub const MAX_HOSTNAME_LEN: usize = 253;
/// Largest REJECT / GOAWAY reason, in bytes of UTF-8.
pub const MAX_REASON_LEN: usize = 256;
/// Largest HELLO token.
pub const MAX_TOKEN_LEN: usize = 4096;
/// Largest agent name, in bytes of UTF-8.
pub const MAX_AGENT_NAME_LEN: usize = 128;
/// Most protocol versions a HELLO may list.
pub const MAX_VERSIONS: usize = 16;
/// Largest per-stream flow-control window either side may grant (16 MiB).
pub const MAX_WINDOW: u32 = 16 * 1024 * 1024;
/// Smallest per-stream initial window (so a stream can always make progress).
pub const MIN_WINDOW: u32 = 1024;
/// Largest `max_streams` a WELCOME may announce.
pub const MAX_STREAMS: u32 = 65_536;
/// Length of the WELCOME session id.
pub const SESSION_ID_LEN: usize = 16;

/// Frame type codes on the wire.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const REJECT: u8 = 0x03;
    pub const OPEN: u8 = 0x04;
    pub const DATA: u8 = 0x05;
    pub const WINDOW_UPDATE: u8 = 0x06;
    pub const FIN: u8 = 0x07;
    pub const RESET: u8 = 0x08;
    pub const PING: u8 = 0x09;
    pub const PONG: u8 = 0x0a;
    pub const GOAWAY: u8 = 0x0b;
}

/// Error codes carried by RESET and GOAWAY.
pub mod code {
    /// Graceful: nothing went wrong.
    pub const NO_ERROR: u32 = 0;
    /// The peer violated the protocol.
    pub const PROTOCOL_ERROR: u32 = 1;
    /// The peer sent beyond its flow-control credit.
    pub const FLOW_CONTROL_ERROR: u32 = 2;
    /// The stream was refused (limit reached or draining); safe to retry elsewhere.
    pub const REFUSED: u32 = 3;
    /// Keepalive timeout.
    pub const TIMEOUT: u32 = 4;
    /// The application cancelled the stream.
    pub const CANCEL: u32 = 5;
    /// Internal error of the sender.
    pub const INTERNAL: u32 = 6;
}

/// Codes carried by REJECT.
pub mod reject {
    /// The token was missing, wrong or expired.
    pub const UNAUTHORIZED: u16 = 1;
    /// None of the offered protocol versions is supported.
    pub const UNSUPPORTED_VERSION: u16 = 2;
    /// The HELLO was malformed or arrived out of order.
    pub const PROTOCOL_ERROR: u16 = 3;
    /// The relay is at capacity; retry later.
    pub const OVERLOADED: u16 = 4;
    /// The agent name is already connected or not allowed.
    pub const NAME_CONFLICT: u16 = 5;
}

/// A stream identifier. Zero is reserved for connection-level frames. Streams opened by the
/// relay are odd, streams opened by the agent (reserved for future use) are even.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u32);

impl StreamId {
    pub fn get(self) -> u32 {
        self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The HELLO credential. Its `Debug` output is redacted so it never lands in logs.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Token(pub Bytes);

impl Token {
    pub fn new(bytes: impl Into<Bytes>) -> Self {
        Self(bytes.into())
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<{} bytes redacted>)", self.0.len())
    }
}

/// Agent → relay: first frame on a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// Supported protocol versions (1..=16 entries).
    pub versions: Vec<u16>,
    /// Per-stream receive window the agent grants the relay.
    pub initial_window: u32,
    /// Opaque credential (≤ 4 KiB).
    pub token: Token,
    /// Human-readable agent name (≤ 128 bytes UTF-8, no control characters).
    pub agent_name: String,
}

/// Relay → agent: handshake accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// The version picked from the HELLO list.
    pub version: u16,
    /// The public domain routed to this agent (a valid hostname).
    pub tunnel_domain: String,
    /// Relay-chosen session identifier.
    pub session_id: [u8; SESSION_ID_LEN],
    /// How many concurrent streams the relay may open on this session (1..=65536).
    pub max_streams: u32,
    /// Per-stream receive window the relay grants the agent.
    pub initial_window: u32,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Reject {
        code: u16,
        reason: String,
    },
    Open {
        stream: StreamId,
        sni: String,
        client_addr: SocketAddr,
    },
    Data {
        stream: StreamId,
        data: Bytes,
    },
    WindowUpdate {
        stream: StreamId,
        increment: u32,
    },
    Fin {
        stream: StreamId,
    },
    Reset {
        stream: StreamId,
        code: u32,
    },
    Ping {
        opaque: u64,
    },
    Pong {
        opaque: u64,
    },
    GoAway {
        last_stream: StreamId,
        code: u32,
        reason: String,
    },
}

impl Frame {
    /// The wire type code.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Reject { .. } => kind::REJECT,
            Frame::Open { .. } => kind::OPEN,
            Frame::Data { .. } => kind::DATA,
            Frame::WindowUpdate { .. } => kind::WINDOW_UPDATE,
            Frame::Fin { .. } => kind::FIN,
            Frame::Reset { .. } => kind::RESET,
            Frame::Ping { .. } => kind::PING,
            Frame::Pong { .. } => kind::PONG,
            Frame::GoAway { .. } => kind::GOAWAY,
        }
    }

    /// The frame name used in errors and logs.
    pub fn name(&self) -> &'static str {
        kind_name(self.kind()).unwrap_or("UNKNOWN")
    }

    fn header_stream(&self) -> u32 {
        match self {
            Frame::Open { stream, .. }
            | Frame::Data { stream, .. }
            | Frame::WindowUpdate { stream, .. }
            | Frame::Fin { stream }
            | Frame::Reset { stream, .. } => stream.0,
            _ => 0,
        }
    }
}

/// Name of a frame type, or `None` if the type is unknown.
pub fn kind_name(kind: u8) -> Option<&'static str> {
    Some(match kind {
        kind::HELLO => "HELLO",
        kind::WELCOME => "WELCOME",
        kind::REJECT => "REJECT",
        kind::OPEN => "OPEN",
        kind::DATA => "DATA",
        kind::WINDOW_UPDATE => "WINDOW_UPDATE",
        kind::FIN => "FIN",
        kind::RESET => "RESET",
        kind::PING => "PING",
        kind::PONG => "PONG",
        kind::GOAWAY => "GOAWAY",
        _ => return None,
    })
}

/// Largest payload a frame of this type may carry.
fn max_payload(kind: u8) -> usize {
    match kind {
        kind::HELLO => 1 + 2 * MAX_VERSIONS + 4 + 2 + MAX_TOKEN_LEN + 1 + MAX_AGENT_NAME_LEN,
        kind::WELCOME => 2 + 1 + MAX_HOSTNAME_LEN + SESSION_ID_LEN + 4 + 4,
        kind::REJECT => 2 + 2 + MAX_REASON_LEN,
        kind::OPEN => 1 + MAX_HOSTNAME_LEN + 1 + 16 + 2,
        kind::DATA => MAX_DATA_PAYLOAD,
        kind::WINDOW_UPDATE | kind::RESET => 4,
        kind::FIN => 0,
        kind::PING | kind::PONG => 8,
        kind::GOAWAY => 4 + 4 + 2 + MAX_REASON_LEN,
        _ => 0,
    }
}

fn is_stream_frame(kind: u8) -> bool {
    matches!(
        kind,
        kind::OPEN | kind::DATA | kind::WINDOW_UPDATE | kind::FIN | kind::RESET
    )
}

/// A parsed, validated frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Header {
    kind: u8,
    stream: u32,
    len: usize,
}

fn parse_header(b: &[u8; HEADER_LEN]) -> Result<Header, ProtoError> {
    let kind = b[0];
    let flags = b[1];
    let stream = u32::from_be_bytes([b[2], b[3], b[4], b[5]]);
    let len = u32::from_be_bytes([b[6], b[7], b[8], b[9]]);
    let name = kind_name(kind).ok_or(ProtoError::UnknownFrameType(kind))?;
    if flags != 0 {
        return Err(ProtoError::NonZeroFlags { frame: name, flags });
    }
    let max = max_payload(kind);
    if u64::from(len) > max as u64 {
        return Err(ProtoError::PayloadTooLarge {
            frame: name,
            len: u64::from(len),
            max,
        });
    }
    if is_stream_frame(kind) {
        if stream == 0 {
            return Err(ProtoError::BadStreamId {
                frame: name,
                id: 0,
                reason: "but stream frames need a non-zero stream id",
            });
        }
    } else if stream != 0 {
        return Err(ProtoError::BadStreamId {
            frame: name,
            id: stream,
            reason: "but connection frames must use stream id 0",
        });
    }
    Ok(Header {
        kind,
        stream,
        len: len as usize,
    })
}

/// Cursor over a payload that reports which field was missing.
struct Reader<'a> {
    buf: &'a [u8],
    frame: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], ProtoError> {
        if self.buf.len() < n {
            return Err(ProtoError::Truncated {
                frame: self.frame,
                field,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self, field: &'static str) -> Result<u8, ProtoError> {
        Ok(self.take(1, field)?[0])
    }
    fn u16(&mut self, field: &'static str) -> Result<u16, ProtoError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &'static str) -> Result<u32, ProtoError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self, field: &'static str) -> Result<u64, ProtoError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    /// A length-prefixed byte string; the length is checked against `max` before reading.
    fn bytes(
        &mut self,
        len: usize,
        max: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ProtoError> {
        if len > max {
            return Err(ProtoError::FieldTooLong { field, len, max });
        }
        self.take(len, field)
    }
    fn str(&mut self, len: usize, max: usize, field: &'static str) -> Result<&'a str, ProtoError> {
        let b = self.bytes(len, max, field)?;
        std::str::from_utf8(b).map_err(|_| ProtoError::InvalidUtf8 { field })
    }
    fn finish(self) -> Result<(), ProtoError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtoError::TrailingBytes {
                frame: self.frame,
                extra: self.buf.len(),
            })
        }
    }
}

/// Checks that `value` is a DNS hostname: 1..=253 bytes, dot-separated labels of 1..=63
/// ASCII letters, digits or hyphens, no label starting or ending with a hyphen.
pub fn validate_hostname(field: &'static str, value: &str) -> Result<(), ProtoError> {
    let bad = |reason| ProtoError::InvalidHostname {
        field,
        value: value.chars().take(MAX_HOSTNAME_LEN).collect(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("it is empty"));
    }
    if value.len() > MAX_HOSTNAME_LEN {
        return Err(ProtoError::FieldTooLong {
            field,
            len: value.len(),
            max: MAX_HOSTNAME_LEN,
        });
    }
    for label in value.split('.') {
        if label.is_empty() {
            return Err(bad("it has an empty label"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-')
        {
            return Err(bad("only ASCII letters, digits, '-' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label starts or ends with '-'"));
        }
    }
    Ok(())
}

fn validate_agent_name(name: &str) -> Result<(), ProtoError> {
    if name.is_empty() {
        return Err(ProtoError::InvalidValue {
            field: "agent_name",
            reason: "it is empty",
        });
    }
    if name.chars().any(char::is_control) {
        return Err(ProtoError::InvalidValue {
            field: "agent_name",
            reason: "it contains control characters",
        });
    }
    Ok(())
}

fn validate_window(field: &'static str, w: u32) -> Result<(), ProtoError> {
    if !(MIN_WINDOW..=MAX_WINDOW).contains(&w) {
        return Err(ProtoError::InvalidValue {
            field,
            reason: "must be between 1024 bytes and 16 MiB",
        });
    }
    Ok(())
}

fn parse_payload(h: Header, payload: &[u8]) -> Result<Frame, ProtoError> {
    let frame = kind_name(h.kind).ok_or(ProtoError::UnknownFrameType(h.kind))?;
    let stream = StreamId(h.stream);
    let mut r = Reader {
        buf: payload,
        frame,
    };
    let f = match h.kind {
        kind::HELLO => {
            let n = usize::from(r.u8("version count")?);
            if n == 0 || n > MAX_VERSIONS {
                return Err(ProtoError::InvalidValue {
                    field: "versions",
                    reason: "HELLO must list between 1 and 16 versions",
                });
            }
            let mut versions = Vec::with_capacity(n);
            for _ in 0..n {
                versions.push(r.u16("version")?);
            }
            let initial_window = r.u32("initial_window")?;
            validate_window("initial_window", initial_window)?;
            let tlen = usize::from(r.u16("token length")?);
            let token = Token(Bytes::copy_from_slice(r.bytes(
                tlen,
                MAX_TOKEN_LEN,
                "token",
            )?));
            let nlen = usize::from(r.u8("agent_name length")?);
            let agent_name = r.str(nlen, MAX_AGENT_NAME_LEN, "agent_name")?.to_owned();
            validate_agent_name(&agent_name)?;
            Frame::Hello(Hello {
                versions,
                initial_window,
                token,
                agent_name,
            })
        }
        kind::WELCOME => {
            let version = r.u16("version")?;
            let dlen = usize::from(r.u8("tunnel_domain length")?);
            let tunnel_domain = r.str(dlen, MAX_HOSTNAME_LEN, "tunnel_domain")?.to_owned();
            validate_hostname("tunnel_domain", &tunnel_domain)?;
            let mut session_id = [0u8; SESSION_ID_LEN];
            session_id.copy_from_slice(r.take(SESSION_ID_LEN, "session_id")?);
            let max_streams = r.u32("max_streams")?;
            if max_streams == 0 || max_streams > MAX_STREAMS {
                return Err(ProtoError::InvalidValue {
                    field: "max_streams",
                    reason: "must be between 1 and 65536",
                });
            }
            let initial_window = r.u32("initial_window")?;
            validate_window("initial_window", initial_window)?;
            Frame::Welcome(Welcome {
                version,
                tunnel_domain,
                session_id,
                max_streams,
                initial_window,
            })
        }
        kind::REJECT => {
            let code = r.u16("code")?;
            let len = usize::from(r.u16("reason length")?);
            let reason = r.str(len, MAX_REASON_LEN, "reason")?.to_owned();
            Frame::Reject { code, reason }
        }
        kind::OPEN => {
            let len = usize::from(r.u8("sni length")?);
            let sni = r.str(len, MAX_HOSTNAME_LEN, "sni")?.to_owned();
            validate_hostname("sni", &sni)?;
            let ip = match r.u8("address family")? {
                4 => {
                    let b = r.take(4, "IPv4 address")?;
                    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
                }
                6 => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(r.take(16, "IPv6 address")?);
                    IpAddr::V6(Ipv6Addr::from(a))
                }
                _ => {
                    return Err(ProtoError::InvalidValue {
                        field: "client_addr",
                        reason: "address family must be 4 or 6",
                    });
                }
            };
            let port = r.u16("port")?;
            Frame::Open {
                stream,
                sni,
                client_addr: SocketAddr::new(ip, port),
            }
        }
        kind::DATA => {
            let data = Bytes::copy_from_slice(r.take(payload.len(), "data")?);
            Frame::Data { stream, data }
        }
        kind::WINDOW_UPDATE => {
            let increment = r.u32("increment")?;
            if increment == 0 {
                return Err(ProtoError::InvalidValue {
                    field: "increment",
                    reason: "WINDOW_UPDATE increment must be non-zero",
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::FIN => Frame::Fin { stream },
        kind::RESET => Frame::Reset {
            stream,
            code: r.u32("code")?,
        },
        kind::PING => Frame::Ping {
            opaque: r.u64("opaque")?,
        },
        kind::PONG => Frame::Pong {
            opaque: r.u64("opaque")?,
        },
        kind::GOAWAY => {
            let last_stream = StreamId(r.u32("last_stream")?);
            let code = r.u32("code")?;
            let len = usize::from(r.u16("reason length")?);
            let reason = r.str(len, MAX_REASON_LEN, "reason")?.to_owned();
            Frame::GoAway {
                last_stream,
                code,
                reason,
            }
        }
        other => return Err(ProtoError::UnknownFrameType(other)),
    };
    r.finish()?;
    Ok(f)
}

fn put_len_u8(
    out: &mut BytesMut,
    field: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), ProtoError> {
    if b.len() > max || b.len() > usize::from(u8::MAX) {
        return Err(ProtoError::FieldTooLong {
            field,
            len: b.len(),
            max,
        });
    }
    out.put_u8(b.len() as u8);
    out.put_slice(b);
    Ok(())
}

fn put_len_u16(
    out: &mut BytesMut,
    field: &'static str,
    b: &[u8],
    max: usize,
) -> Result<(), ProtoError> {
    if b.len() > max || b.len() > usize::from(u16::MAX) {
        return Err(ProtoError::FieldTooLong {
            field,
            len: b.len(),
            max,
        });
    }
    out.put_u16(b.len() as u16);
    out.put_slice(b);
    Ok(())
}

fn put_header(out: &mut BytesMut, kind: u8, stream: u32, len: usize) {
    out.put_u8(kind);
    out.put_u8(0);
    out.put_u32(stream);
    // Callers check `len <= MAX_DATA_PAYLOAD` (or a smaller per-type cap) first.
    out.put_u32(len as u32);
}

/// Encodes one DATA frame straight from a slice (no intermediate `Bytes`).
pub fn encode_data(stream: StreamId, data: &[u8], out: &mut BytesMut) -> Result<(), ProtoError> {
    if stream.0 == 0 {
        return Err(ProtoError::BadStreamId {
            frame: "DATA",
            id: 0,
            reason: "but stream frames need a non-zero stream id",
        });
    }
    if data.len() > MAX_DATA_PAYLOAD {
        return Err(ProtoError::PayloadTooLarge {
            frame: "DATA",
            len: data.len() as u64,
            max: MAX_DATA_PAYLOAD,
        });
    }
    out.reserve(HEADER_LEN + data.len());
    put_header(out, kind::DATA, stream.0, data.len());
    out.put_slice(data);
    Ok(())
}

/// Appends the encoding of `frame` to `out`.
///
/// The frame is checked against the same limits the [`Decoder`] enforces, so anything this
/// function accepts decodes back to an equal frame. On error `out` is left unchanged.
pub fn encode(frame: &Frame, out: &mut BytesMut) -> Result<(), ProtoError> {
    if let Frame::Data { stream, data } = frame {
        return encode_data(*stream, data, out);
    }
    let start = out.len();
    let res = encode_control(frame, out);
    if res.is_err() {
        out.truncate(start);
    }
    res
}

fn encode_control(frame: &Frame, out: &mut BytesMut) -> Result<(), ProtoError> {
    let start = out.len();
    let kind = frame.kind();
    let stream = frame.header_stream();
    put_header(out, kind, stream, 0);
    match frame {
        Frame::Hello(h) => {
            if h.versions.is_empty() || h.versions.len() > MAX_VERSIONS {
                return Err(ProtoError::InvalidValue {
                    field: "versions",
                    reason: "HELLO must list between 1 and 16 versions",
                });
            }
            out.put_u8(h.versions.len() as u8);
            for v in &h.versions {
                out.put_u16(*v);
            }
            out.put_u32(h.initial_window);
            put_len_u16(out, "token", h.token.as_bytes(), MAX_TOKEN_LEN)?;
            put_len_u8(
                out,
                "agent_name",
                h.agent_name.as_bytes(),
                MAX_AGENT_NAME_LEN,
            )?;
        }
        Frame::Welcome(w) => {
            out.put_u16(w.version);
            put_len_u8(
                out,
                "tunnel_domain",
                w.tunnel_domain.as_bytes(),
                MAX_HOSTNAME_LEN,
            )?;
            out.put_slice(&w.session_id);
            out.put_u32(w.max_streams);
            out.put_u32(w.initial_window);
        }
        Frame::Reject { code, reason } => {
            out.put_u16(*code);
            put_len_u16(out, "reason", reason.as_bytes(), MAX_REASON_LEN)?;
        }
        Frame::Open {
            sni, client_addr, ..
        } => {
            put_len_u8(out, "sni", sni.as_bytes(), MAX_HOSTNAME_LEN)?;
            match client_addr.ip() {
                IpAddr::V4(a) => {
                    out.put_u8(4);
                    out.put_slice(&a.octets());
                }
                IpAddr::V6(a) => {
                    out.put_u8(6);
                    out.put_slice(&a.octets());
                }
            }
            out.put_u16(client_addr.port());
        }
        Frame::Data { .. } | Frame::Fin { .. } => {}
        Frame::WindowUpdate { increment, .. } => out.put_u32(*increment),
        Frame::Reset { code, .. } => out.put_u32(*code),
        Frame::Ping { opaque } | Frame::Pong { opaque } => out.put_u64(*opaque),
        Frame::GoAway {
            last_stream,
            code,
            reason,
        } => {
            out.put_u32(last_stream.0);
            out.put_u32(*code);
            put_len_u16(out, "reason", reason.as_bytes(), MAX_REASON_LEN)?;
        }
    }
    let len = out.len() - start - HEADER_LEN;
    let mut hdr = [0u8; HEADER_LEN];
    hdr.copy_from_slice(&out[start..start + HEADER_LEN]);
    hdr[6..10].copy_from_slice(&(len as u32).to_be_bytes());
    out[start..start + HEADER_LEN].copy_from_slice(&hdr);
    // Validate exactly as the decoder would: header caps, stream id rules, field rules.
    let h = parse_header(&hdr)?;
    parse_payload(h, &out[start + HEADER_LEN..])?;
    Ok(())
}

/// Incremental frame decoder.
///
/// Feed it input of any chunking: [`Decoder::decode`] consumes bytes from the front of the
/// slice it is given and returns a frame as soon as one is complete. It buffers at most one
/// partial frame (≤ [`HEADER_LEN`] + [`MAX_DATA_PAYLOAD`] bytes) and only after the header's
/// length has been checked against the cap of its frame type. After an error the decoder is
/// poisoned and keeps returning that error (the byte stream can no longer be trusted).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
    header: Option<Header>,
    failed: Option<ProtoError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of a partial frame currently held.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Consumes bytes from `input` and returns the next complete frame, or `Ok(None)` when
    /// `input` is exhausted without completing one (the partial frame is kept).
    pub fn decode(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtoError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.decode_inner(input);
        if let Err(e) = &res {
            self.failed = Some(e.clone());
            self.buf = BytesMut::new();
            self.header = None;
        }
        res
    }

    fn decode_inner(&mut self, input: &mut &[u8]) -> Result<Option<Frame>, ProtoError> {
        let header = match self.header {
            Some(h) => h,
            None => {
                let need = HEADER_LEN - self.buf.len();
                let take = need.min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                input.advance(take);
                if self.buf.len() < HEADER_LEN {
                    return Ok(None);
                }
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&self.buf[..HEADER_LEN]);
                self.buf.clear();
                let h = parse_header(&hb)?;
                self.header = Some(h);
                h
            }
        };
        // Fast path: the whole payload is in `input` and nothing is buffered.
        if self.buf.is_empty() && input.len() >= header.len {
            let (payload, rest) = input.split_at(header.len);
            *input = rest;
            self.header = None;
            return parse_payload(header, payload).map(Some);
        }
        let need = header.len - self.buf.len();
        let take = need.min(input.len());
        // `header.len` was checked against the per-type cap, so this reserve is bounded.
        self.buf.reserve(take);
        self.buf.extend_from_slice(&input[..take]);
        input.advance(take);
        if self.buf.len() < header.len {
            return Ok(None);
        }
        self.header = None;
        let payload = self.buf.split();
        parse_payload(header, &payload).map(Some)
    }
}
