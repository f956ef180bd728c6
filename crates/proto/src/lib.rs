//! Sans-IO wire protocol between an Airlock agent and an Airlock relay.
//!
//! The agent connects *outbound* to the relay (over TLS 1.3, handled elsewhere) and the relay
//! multiplexes many public connections over that one transport as streams with per-stream,
//! credit-based flow control. This crate only turns bytes into frames and frames into state
//! transitions: it never touches sockets, spawns tasks or reads a clock. Time is passed in as
//! [`std::time::Instant`] values, bytes go in through [`Connection::handle_input`] and come out
//! through [`Connection::poll_transmit`].
//!
//! * [`frame`]: the binary encoding ([`encode`], incremental [`Decoder`]) with a hard cap on
//!   every length.
//! * [`conn`]: the [`Connection`] state machine (handshake, streams, flow control, keepalive,
//!   graceful drain).
//!
//! The wire format is documented in the crate's `README.md`.
#![forbid(unsafe_code)]

pub mod conn;
pub mod error;
pub mod frame;

pub use conn::{Config, Connection, Event, Role, State};
pub use error::{ProtoError, UsageError};
pub use frame::{Decoder, Frame, Hello, StreamId, Token, Welcome, encode};
