//! Airlock's egress guard: the *resolved-address rule*.
//!
//! This crate owns every decision about whether Airlock may open a connection to an address
//! named by outside data: the gateway dialling upstream MCP servers (tunnel routes), and later
//! OAuth client-metadata fetches and the sandbox's egress proxy. Callers never dial such hosts
//! themselves; they go through [`connect_checked`], which
//!
//! 1. resolves the host once through an injectable [`Resolver`],
//! 2. checks **every** resolved address against an [`IpPolicy`] (a DNS answer mixing allowed and
//!    disallowed addresses is refused as a whole: that is what a rebinding attack looks like),
//! 3. dials only the checked addresses through an injectable [`Dialer`] (never re-resolving),
//!
//! all with bounded timeouts. Tests swap in [`StaticResolver`] and [`RecordingDialer`] to prove
//! a refusal happens before any packet leaves.
//!
//! ```no_run
//! # async fn demo() -> Result<(), airlock_egress::EgressError> {
//! use airlock_egress::{connect_checked, IpPolicy, Purpose, SystemResolver, TcpDialer};
//! let policy = IpPolicy::from_config(&["10.0.0.0/8"], false)?;
//! let (stream, addr) =
//!     connect_checked("docs-mcp.corp", 8080, &policy, Purpose::UserExposed, &SystemResolver, &TcpDialer)
//!         .await?;
//! # drop((stream, addr)); Ok(()) }
//! ```
//!
//! [`IpPolicy`] follows Anthropic's `mcp-proxy` semantics (RFC1918 by default, `allowed_ips`
//! replaces the default, `disable_ip_validation`), with Airlock's own rules on top (link-local /
//! cloud metadata, loopback and unroutable addresses); see its docs.

mod dial;
mod policy;
mod resolve;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

pub use dial::{BoxStream, Dialer, EgressIo, RecordingDialer, TcpDialer};
pub use ipnet::IpNet;
pub use policy::{IpPolicy, Purpose, canonical, parse_ip_entry};
pub use resolve::{BoxFuture, Resolver, StaticResolver, SystemResolver};

/// Everything that can go wrong deciding about or opening an egress connection.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// Outside the policy (Anthropic's wording, verbatim).
    #[error("IP validation failed: {ip} is not a private address")]
    NotAllowed { ip: IpAddr },
    /// Link-local / cloud-metadata address without an explicit `allowed_ips` entry.
    #[error(
        "IP validation failed: {ip} is a link-local / cloud-metadata address; it is only dialled when listed explicitly in upstream.allowed_ips (e.g. \"{ip}\")"
    )]
    LinkLocal { ip: IpAddr },
    /// Loopback for [`Purpose::Fetch`].
    #[error(
        "IP validation failed: {ip} is a loopback address; loopback is only dialled for servers the user exposed, never for fetches named by outside data"
    )]
    Loopback { ip: IpAddr },
    /// Unspecified, multicast or broadcast.
    #[error(
        "IP validation failed: {ip} is an unspecified, multicast or broadcast address and is never dialled"
    )]
    Unroutable { ip: IpAddr },
    /// `allowed_ips` and `disable_ip_validation` were both given.
    #[error(
        "upstream.allowed_ips and upstream.disable_ip_validation are mutually exclusive: remove one of them"
    )]
    ConflictingPolicy,
    /// An `allowed_ips` entry that is neither an address nor a CIDR.
    #[error(
        "invalid allowed_ips entry {entry:?}: expected an IP address (10.1.2.3) or a CIDR (10.0.0.0/8, fd00::/8)"
    )]
    InvalidCidr { entry: String },
    /// DNS failed.
    #[error("could not resolve {host}:{port}: {source}")]
    Resolve {
        host: String,
        port: u16,
        #[source]
        source: io::Error,
    },
    /// DNS answered with nothing.
    #[error("{host}:{port} resolved to no addresses")]
    NoAddresses { host: String, port: u16 },
    /// The whole connect (resolve plus attempts) took longer than [`Timeouts::total`].
    #[error("connecting to {host}:{port} timed out after {timeout:?}")]
    Timeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    /// DNS took too long.
    #[error("resolving {host}:{port} timed out after {timeout:?}")]
    ResolveTimeout {
        host: String,
        port: u16,
        timeout: Duration,
    },
    /// Every checked address refused or timed out; `attempts` says what happened to each.
    #[error("could not connect to {host}:{port} ({})", summarize(.attempts))]
    Connect {
        host: String,
        port: u16,
        attempts: Vec<(SocketAddr, String)>,
    },
}

fn summarize(attempts: &[(SocketAddr, String)]) -> String {
    attempts
        .iter()
        .map(|(a, e)| format!("{a}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Time limits for [`connect_checked_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole DNS lookup.
    pub resolve: Duration,
    /// Each TCP connect attempt.
    pub connect: Duration,
    /// The whole operation (resolve plus every connect attempt).
    pub total: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            resolve: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            total: Duration::from_secs(30),
        }
    }
}

/// At most this many distinct resolved addresses are considered (all are checked, the answer
/// is refused if it is longer than this: a huge answer is not something a server needs).
pub const MAX_RESOLVED_ADDRESSES: usize = 32;

/// Resolve `host:port` once and check every answer against `policy`. Returns the (deduplicated,
/// answer-ordered) addresses, all of which passed; refuses the whole answer if any did not.
pub async fn resolve_checked(
    host: &str,
    port: u16,
    policy: &IpPolicy,
    purpose: Purpose,
    resolver: &dyn Resolver,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, EgressError> {
    let answer = match tokio::time::timeout(timeout, resolver.resolve(host, port)).await {
        Err(_) => {
            return Err(EgressError::ResolveTimeout {
                host: host.to_owned(),
                port,
                timeout,
            });
        }
        Ok(Err(source)) => {
            return Err(EgressError::Resolve {
                host: host.to_owned(),
                port,
                source,
            });
        }
        Ok(Ok(addrs)) => addrs,
    };
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(answer.len().min(MAX_RESOLVED_ADDRESSES));
    for addr in answer {
        let addr = SocketAddr::new(canonical(addr.ip()), addr.port());
        if !addrs.contains(&addr) {
            if addrs.len() == MAX_RESOLVED_ADDRESSES {
                return Err(EgressError::Resolve {
                    host: host.to_owned(),
                    port,
                    source: io::Error::other(format!(
                        "more than {MAX_RESOLVED_ADDRESSES} addresses in the answer"
                    )),
                });
            }
            addrs.push(addr);
        }
    }
    if addrs.is_empty() {
        return Err(EgressError::NoAddresses {
            host: host.to_owned(),
            port,
        });
    }
    for addr in &addrs {
        if let Err(e) = policy.check(addr.ip(), purpose) {
            tracing::warn!(host, port, %addr, "{e}");
            return Err(e);
        }
    }
    Ok(addrs)
}

/// [`connect_checked_with`] with the default [`Timeouts`].
pub async fn connect_checked(
    host: &str,
    port: u16,
    policy: &IpPolicy,
    purpose: Purpose,
    resolver: &dyn Resolver,
    dialer: &dyn Dialer,
) -> Result<(BoxStream, SocketAddr), EgressError> {
    connect_checked_with(
        host,
        port,
        policy,
        purpose,
        resolver,
        dialer,
        Timeouts::default(),
    )
    .await
}

/// Resolve once, check every address, then dial the checked addresses in answer order until
/// one connects. Returns the stream and the address it is connected to.
pub async fn connect_checked_with(
    host: &str,
    port: u16,
    policy: &IpPolicy,
    purpose: Purpose,
    resolver: &dyn Resolver,
    dialer: &dyn Dialer,
    timeouts: Timeouts,
) -> Result<(BoxStream, SocketAddr), EgressError> {
    let attempt = connect_inner(host, port, policy, purpose, resolver, dialer, timeouts);
    match tokio::time::timeout(timeouts.total, attempt).await {
        Ok(result) => result,
        Err(_) => Err(EgressError::Timeout {
            host: host.to_owned(),
            port,
            timeout: timeouts.total,
        }),
    }
}

async fn connect_inner(
    host: &str,
    port: u16,
    policy: &IpPolicy,
    purpose: Purpose,
    resolver: &dyn Resolver,
    dialer: &dyn Dialer,
    timeouts: Timeouts,
) -> Result<(BoxStream, SocketAddr), EgressError> {
    let addrs = resolve_checked(host, port, policy, purpose, resolver, timeouts.resolve).await?;
    let mut attempts = Vec::new();
    for addr in addrs {
        match tokio::time::timeout(timeouts.connect, dialer.dial(addr)).await {
            Ok(Ok(stream)) => return Ok((stream, addr)),
            Ok(Err(e)) => attempts.push((addr, e.to_string())),
            Err(_) => attempts.push((addr, format!("timed out after {:?}", timeouts.connect))),
        }
    }
    Err(EgressError::Connect {
        host: host.to_owned(),
        port,
        attempts,
    })
}
