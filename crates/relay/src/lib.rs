//! The self-hostable Airlock relay (see `README.md`).
//!
//! * [`server::Relay`]: public SNI-passthrough listener + agent tunnel listener + ops listener.
//! * [`client::RelayClient`] / [`client::RelayLink`]: the agent side.
//! * [`token::TokenAuthority`]: Ed25519 tunnel tokens.
//! * [`sni::ClientHelloParser`]: sans-IO ClientHello SNI reader.
//! * [`embedded`]: port routes for a relay on loopback (URLs without SNI).
#![forbid(unsafe_code)]

pub mod client;
pub mod embedded;
mod fsutil;
pub mod server;
pub mod sni;
pub mod tls;
pub mod token;

pub use airlock_mux::{MuxStream, airlock_proto};
pub use client::{
    ClientError, ClientOptions, LinkOptions, NodeState, NodeStatus, RelayClient, RelayLink,
    RelayNode, RelaySession,
};
pub use server::{IpNet, RateLimit, Relay, RelayConfig, RelayError};
pub use tls::Identity;
pub use token::{TokenAuthority, TokenClaims, TokenError};
