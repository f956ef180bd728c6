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
//!   must name the same route as the SNI) and handed to the gateway's OAuth resource server
//!   ([`airlock_gateway::Gateway::serve_protected`] with origin `https://<Host as requested>`: protected-resource
//!   metadata at `/.well-known/oauth-protected-resource[<mcp path>]`, the authorization-server paths of issuer
//!   `https://<host>`, bearer tokens of that server only). Every byte-stream ingress ends here; its hostnames are
//!   registered with the gateway so that resource URLs resolve to servers.
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
