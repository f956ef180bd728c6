//! Name resolution behind a trait, so tests never touch DNS.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

/// A boxed, `Send` future (keeps [`Resolver`] and [`crate::Dialer`] object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Turns a host name into socket addresses.
pub trait Resolver: Send + Sync {
    /// All addresses for `host:port`. `host` may be an IP literal (IPv6 with or without
    /// brackets).
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>>;
}

/// Parse an IP literal, accepting `[v6]` brackets.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    h.parse().ok()
}

/// The operating system's resolver (`tokio::net::lookup_host`, which runs `getaddrinfo` on the
/// blocking pool). IP literals short-circuit without DNS.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            if let Some(ip) = ip_literal(host) {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            let host = host.strip_suffix('.').unwrap_or(host);
            Ok(tokio::net::lookup_host((host, port)).await?.collect())
        })
    }
}

/// A fixed name → addresses map, for tests. Names are case-insensitive (a trailing dot is
/// ignored); IP literals resolve to themselves; unknown names fail with `NotFound`.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver {
    map: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty map.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add (or replace) `name` → `addrs`.
    pub fn with(mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) -> Self {
        self.insert(name, addrs);
        self
    }

    /// Add (or replace) `name` → `addrs`.
    pub fn insert(&mut self, name: &str, addrs: impl IntoIterator<Item = IpAddr>) {
        self.map
            .insert(normalize(name), addrs.into_iter().collect());
    }
}

fn normalize(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl Resolver for StaticResolver {
    fn resolve<'a>(
        &'a self,
        host: &'a str,
        port: u16,
    ) -> BoxFuture<'a, io::Result<Vec<SocketAddr>>> {
        Box::pin(async move {
            if let Some(ip) = ip_literal(host) {
                return Ok(vec![SocketAddr::new(ip, port)]);
            }
            match self.map.get(&normalize(host)) {
                Some(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
                None => Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no such host {host:?} (StaticResolver)"),
                )),
            }
        })
    }
}
