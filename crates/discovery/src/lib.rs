//! # airlock-discovery
//!
//! Finds every MCP server configured on this machine, reading each client's config the way
//! that client does, and (optionally) MCP servers already listening on loopback.
//!
//! This crate owns: the list of clients and where they keep their configs (Linux/XDG, macOS
//! and Windows conventions, selected by [`Os`] so all are testable anywhere), tolerant parsing
//! (JSON with comments/trailing commas, TOML, YAML), `${VAR}` placeholder expansion, server
//! identity and merging, live file watching, and the loopback probe. It never executes
//! anything it finds.
//!
//! Layout:
//! - [`model`]: public data types ([`Snapshot`], [`DiscoveredServer`], [`TransportSpec`], …)
//! - `paths`: per-client, per-OS candidate file locations
//! - `parse`: JSONC / TOML / YAML readers with line/column diagnostics
//! - `expand`: `${VAR}`, `${VAR:-default}`, `${env:VAR}`, `${workspaceFolder}`, `${input:id}`
//! - `clients`: each client's entry shapes → [`TransportSpec`]
//! - `identity`: normalized launch identity, stable 12-hex ids ([`server_id`]), merging into
//!   servers ([`merge_servers`] combines a scan with probe results)
//! - `scan`: [`scan`], one synchronous pass over all candidates
//! - `watch`: [`watch`] / [`Watcher`], notify-based live rescans
//! - `probe`: [`probe_running`], loopback-only MCP probe
//!
//! Tests: unit tests per module; `tests/scan_fixture.rs` runs the twelve-client fixture in
//! `tests/fixtures/home/` (documented in `tests/fixtures/README.md`); `tests/paths.rs`,
//! `tests/watcher.rs`, `tests/probe.rs`. `examples/scan.rs` prints what this machine has.

mod clients;
mod expand;
mod identity;
pub mod model;
mod parse;
mod paths;
mod probe;
mod scan;
mod watch;

pub use identity::{merge_servers, server_id};
pub use model::{
    ClientKind, Diagnostic, DiscoveredServer, DiscoveryEnv, Os, REDACTED, Scope, Snapshot, Source,
    TransportSpec,
};
pub use probe::{ProbeOptions, probe_running};
pub use scan::scan;
pub use watch::{DiscoveryError, Watcher, watch};
