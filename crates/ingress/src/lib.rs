//! How connections from outside reach the gateway: the inner-TLS terminator and the ingresses that feed it.
//!
//! The transport (Cloudflare's tunnel, Airlock's relay) carries opaque bytes; TLS ends here, on the device, with a
//! certificate only the user holds, so no transport ever reads an MCP payload.
//!
//! Layout:
//! - [`tls`]: [`InnerTls`], the rustls server side with a certificate that can be replaced while listeners run
//!   (renewals reach new handshakes; open connections keep theirs). 0-RTT is refused: a relay could replay a
//!   `tools/call`.
//! - [`hosts`]: [`HostTable`], Anthropic's route lookup — exact hostname first, then the tunnel domain stripped and the
//!   subdomain matched.
//! - [`terminate`]: [`Terminator`], one TLS byte stream in, HTTP/1.1 or h2 out, each request routed by `Host` (which
//!   must name the same route as the SNI), authorised, and handed to the gateway. Every byte-stream ingress ends here.
//! - [`websocket`]: the Anthropic-compatible listener (what `mcp-proxy` does on `:8080`): plain WebSocket carrying the
//!   TLS bytes, any path and subprotocol, binary or text frames; browser `Origin`s refused.

pub mod hosts;
pub mod terminate;
pub mod tls;
pub mod websocket;

pub use hosts::HostTable;
pub use terminate::Terminator;
pub use tls::{InnerTls, TlsError};
pub use websocket::serve_websocket;
