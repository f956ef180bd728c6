//! OAuth 2.1 authorization server for exposed MCP servers: metadata, PKCE, tokens, client registration, approvals,
//! audit (SQLite).
//!
//! [`AuthServer`] is the whole authorization server of one Airlock agent. It does not know about HTTP routing or
//! the gateway: the gateway's resource server hands it
//! - every authorization-server request ([`AuthServer::handle`], with a [`RequestContext`] saying which endpoint,
//!   server, issuer and ingress: RFC 8414 / OIDC metadata, `token`, `register`, `revoke`, and the approval pages under
//!   `/_airlock/oauth/`: on loopback, and on relay hostnames with [`Config::remote_approval`]),
//! - every bearer token it must check ([`AuthServer::verify`]: sync, an in-memory lookup of the token's SHA-256),
//! - every MCP call for the audit log ([`AuthServer::record_mcp_call`]: queued, never blocks).
//!
//! The agent supplies a [`ResourceResolver`] (resource URL → server id + issuer, from the gateway's route table).
//!
//! # Flow
//! 1. A client discovers the metadata of the issuer it was pointed at; `authorization_endpoint` is
//!    [`Config::authorization_endpoint`] (the loopback gateway, where the person is), the other endpoints are under
//!    the issuer (split discovery). With [`Config::remote_approval`], the metadata served on a relay hostname names
//!    the page on that hostname instead ([`AuthServer::authorization_endpoint`]), for a browser elsewhere.
//! 2. The client registers: a client ID metadata document (CIMD: `client_id` is an `https` URL, fetched through
//!    [`airlock_egress`] with the resolved-address rule, size/time limits and a cache) or dynamic registration
//!    (RFC 7591, `<issuer>/register`).
//! 3. The browser opens the authorization endpoint: the request is validated (client, exact redirect URI with the
//!    RFC 8252 loopback-port rule, PKCE `S256`, `resource` → server) and becomes a **pending approval**
//!    ([`Approval`], [`Event::ApprovalPending`]). The page shows who asks for what; the person approves (optionally
//!    narrowing tools) or denies there, or through [`AuthServer::decide`] (UI/CLI). Nothing is ever approved
//!    automatically. The page then refreshes itself on a status URL that redirects to the client with
//!    `code`, `state` and `iss` (or `error=access_denied`). A request opened on a relay hostname's page is
//!    **remote** ([`Approval::remote`]): its page shows a random confirmation code (`XXXX-XXXX`) and has no approve
//!    button; [`AuthServer::decide`] approves it only with that code ([`Decision::Approve`] `code`, constant-time,
//!    case- and dash-insensitive), and the [`MAX_WRONG_CODES`]th wrong code denies it. The code is never part of an
//!    [`Approval`], an [`Event`] or the audit log.
//! 4. `token` exchanges the code (single use, ≤ 60 s, PKCE verified, `resource` must name the same server) for an
//!    access token and a refresh token; refresh tokens rotate, with a short grace window for racing refreshes.
//! 5. Tokens are opaque random strings; only their SHA-256 is stored. A grant (client × server × scopes × tools)
//!    lasts until it expires or is revoked ([`AuthServer::revoke`] by grant, client or token id; RFC 7009
//!    `revoke`).
//!
//! Callers without a browser get a token from [`AuthServer::mint_token`] (printed once, listed among clients).
//!
//! [`control_router`] exposes approvals, clients, revocation, minting, the audit log and events as JSON routes for
//! the agent's control API.
//!
//! # Storage and threads
//! One SQLite database (clients, grants, tokens, audit). Every statement runs on one dedicated thread fed by a
//! bounded channel; async callers await the answer. Pending approvals and authorization codes live only in memory:
//! they are short-lived, and a restart invalidating them is the safe outcome.

#![forbid(unsafe_code)]

mod audit;
mod cimd;
mod clients;
mod control;
mod db;
mod endpoints;
mod html;
mod limits;
mod pages;
mod server;
mod tokens;
mod types;

pub use audit::{AuditEntry, AuditKind, AuditQuery};
pub use cimd::{CimdFetcher, CimdPolicy};
pub use clients::{ClientKind, ClientRecord};
pub use control::{DEFAULT_MINT_TTL, control_router};
pub use server::{AuthServer, Options};
pub use types::*;
