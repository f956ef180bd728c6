//! Error types.
//!
//! [`ProtoError`] is something the *peer* (or the bytes on the wire) did wrong; it is fatal for
//! the connection. [`UsageError`] is a local API call that cannot be honoured (unknown stream,
//! connection not yet established, ...); it never changes connection state.

use crate::frame::StreamId;

/// A violation of the wire protocol or a fatal connection condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("unknown frame type 0x{0:02x}")]
    UnknownFrameType(u8),
    #[error("{frame} frame has reserved flags 0x{flags:02x} set; flags must be zero")]
    NonZeroFlags { frame: &'static str, flags: u8 },
    #[error("{frame} frame payload of {len} bytes exceeds the limit of {max} bytes")]
    PayloadTooLarge {
        frame: &'static str,
        len: u64,
        max: usize,
    },
    #[error("{frame} frame is truncated: missing {field}")]
    Truncated {
        frame: &'static str,
        field: &'static str,
    },
    #[error("{frame} frame has {extra} unexpected trailing bytes")]
    TrailingBytes { frame: &'static str, extra: usize },
    #[error("{field} is {len} bytes long; the limit is {max} bytes")]
    FieldTooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is not valid UTF-8")]
    InvalidUtf8 { field: &'static str },
    #[error("{field} {value:?} is not a valid hostname: {reason}")]
    InvalidHostname {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        field: &'static str,
        reason: &'static str,
    },
    #[error("{frame} frame carries stream id {id}, {reason}")]
    BadStreamId {
        frame: &'static str,
        id: u32,
        reason: &'static str,
    },
    #[error("unexpected {frame} frame while {state}")]
    UnexpectedFrame {
        frame: &'static str,
        state: &'static str,
    },
    #[error(
        "peer sent {len} bytes on stream {stream} but only had {credit} bytes of flow-control credit"
    )]
    FlowControl {
        stream: StreamId,
        len: usize,
        credit: u32,
    },
    #[error(
        "peer's WINDOW_UPDATE on stream {stream} would raise the send window to {window}, above the initial window {max}"
    )]
    WindowOverflow {
        stream: StreamId,
        window: u64,
        max: u32,
    },
    #[error("peer sent {frame} on stream {stream} after finishing it")]
    AfterFin {
        frame: &'static str,
        stream: StreamId,
    },
    #[error("no common protocol version (we support {ours:?}, peer offered {theirs:?})")]
    NoCommonVersion { ours: Vec<u16>, theirs: Vec<u16> },
    #[error("relay rejected the agent (code {code}): {reason}")]
    Rejected { code: u16, reason: String },
    #[error("peer closed the connection with an error (code {code}): {reason}")]
    PeerError { code: u32, reason: String },
    #[error("connection timed out: nothing received for {idle_ms} ms ({phase})")]
    Timeout { idle_ms: u128, phase: &'static str },
    #[error(
        "{what} backlog reached {len} (limit {max}); the peer keeps sending while our output or events are not drained"
    )]
    Backlog {
        what: &'static str,
        len: usize,
        max: usize,
    },
}

/// A local API call that cannot be honoured. The connection state is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    #[error("invalid configuration: {0}")]
    InvalidConfig(&'static str),
    #[error("argument rejected by the wire limits: {0}")]
    Invalid(#[from] ProtoError),
    #[error("the handshake has not completed yet")]
    NotEstablished,
    #[error("only the {allowed} can {op}")]
    WrongRole {
        op: &'static str,
        allowed: &'static str,
    },
    #[error("the connection is draining after GOAWAY; no new streams can be opened")]
    GoingAway,
    #[error("{max} streams are already open (the configured max_streams)")]
    TooManyStreams { max: u32 },
    #[error("stream ids are exhausted on this connection; reconnect")]
    StreamIdsExhausted,
    #[error("stream {0} is not open (never opened, reset, or fully closed)")]
    UnknownStream(StreamId),
    #[error("stream {0} was already finished (half-closed) by us; no more data can be sent")]
    SendAfterFinish(StreamId),
    #[error("stream {stream} was reset by the peer (code {code}); it reads no more data")]
    StreamReset { stream: StreamId, code: u32 },
    #[error("stream {0} has no data buffered yet; wait for StreamReadable")]
    WouldBlock(StreamId),
    #[error("the connection is closed")]
    Closed,
}
