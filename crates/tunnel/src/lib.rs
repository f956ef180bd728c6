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
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use airlock_tunnel::{CloudflaredOptions, CloudflaredSupervisor, ProxyConfig, TunnelToken};
//! let env: std::collections::HashMap<String, String> = std::env::vars().collect();
//! let config = ProxyConfig::load("/etc/mcp-gateway/config.yaml".as_ref(), &env)?;
//! let route = config.lookup("echo.abcd1234.tunnel.anthropic.com");
//! let sup = CloudflaredSupervisor::start(
//!     CloudflaredOptions::for_local_port(8080),
//!     TunnelToken::new(std::env::var("TUNNEL_TOKEN")?),
//! );
//! let mut state = sup.state();
//! state.changed().await?;
//! println!("{}", serde_json::to_string(&*state.borrow())?);
//! sup.shutdown().await;
//! # drop(route); Ok(()) }
//! ```
//!
//! Upstream IP validation itself lives in `airlock-egress`; [`anthropic_config::ProxyConfig::ip_policy`]
//! turns the config's `upstream` block into an `airlock_egress::IpPolicy`.

pub mod anthropic_config;
pub mod cloudflared;

pub use anthropic_config::{ConfigError, ConfigErrorKind, ProxyConfig, Route, Upstream};
pub use cloudflared::{CloudflaredOptions, CloudflaredState, CloudflaredSupervisor, TunnelToken};
