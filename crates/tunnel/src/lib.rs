//! Airlock's tunnel crate: what it takes to stand in for Anthropic's MCP tunnel stack.
//!
//! It owns two things:
//!
//! * [`anthropic_config`]: the `mcp-proxy` `config.yaml` — reading it (with `${VAR}` expansion
//!   and the proxy's own validation errors), writing a config the real proxy accepts, and the
//!   proxy's route lookup (exact host, then subdomain of `tunnel_domain`).
//! * [`cloudflared`]: a supervisor for Cloudflare's `cloudflared` connector — runs
//!   `cloudflared tunnel --no-autoupdate run --url <target>` with the tunnel token only in its
//!   environment, follows its connection log lines, restarts it with jittered exponential
//!   backoff, stops it on shutdown, and publishes its state on a `watch` channel.
//!
//! Upstream IP validation itself lives in `airlock-egress`; [`anthropic_config::ProxyConfig::ip_policy`]
//! turns the config's `upstream` block into an `airlock_egress::IpPolicy`.

pub mod anthropic_config;
pub mod cloudflared;

pub use anthropic_config::{ConfigError, ConfigErrorKind, ProxyConfig, Route, Upstream};
pub use cloudflared::{CloudflaredOptions, CloudflaredState, CloudflaredSupervisor, TunnelToken};
