//! The sandbox's egress proxy: an HTTP proxy (CONNECT, and absolute-form `http://` requests)
//! on a unix socket that is bound into the sandbox. Only allowlisted host names are served,
//! and every resolved address goes through `airlock-egress`'s resolved-address rule plus the
//! sandbox's own "public addresses only" rule (loopback, private, link-local and CGNAT targets
//! are refused unless `allowed_ips` lists them).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_egress::{BoxStream, Dialer, IpPolicy, Purpose, Resolver, resolve_checked};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::SandboxError;

/// Request head size limit.
const MAX_HEAD: usize = 16 * 1024;
/// Concurrent proxied connections per sandbox.
const MAX_CONNECTIONS: usize = 128;
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What the proxy allows.
#[derive(Clone)]
pub(crate) struct ProxyConfig {
    pub(crate) allowed_domains: Vec<String>,
    pub(crate) allowed_ips: Vec<IpNet>,
    pub(crate) resolver: Arc<dyn Resolver>,
    pub(crate) dialer: Arc<dyn Dialer>,
}

/// A running egress proxy (stopped and its socket removed on drop).
pub struct EgressProxy {
    dir: PathBuf,
    socket: PathBuf,
    stop: CancellationToken,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("socket", &self.socket)
            .finish_non_exhaustive()
    }
}

impl Drop for EgressProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `host` matches an entry: `example.com` exactly, `*.example.com` any subdomain (not the
/// apex). Case-insensitive; a trailing dot is ignored.
pub fn domain_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return false;
    }
    allowed.iter().any(|entry| {
        let entry = entry.trim().trim_end_matches('.').to_ascii_lowercase();
        match entry.strip_prefix("*.") {
            Some(suffix) => {
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix)
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
            None => host == entry,
        }
    })
}

impl EgressProxy {
    /// Listen on a fresh unix socket in a private (0700) directory.
    pub(crate) async fn start(cfg: ProxyConfig) -> Result<Self, SandboxError> {
        use std::os::unix::fs::DirBuilderExt;
        let dir =
            std::env::temp_dir().join(format!("airlock-proxy-{:016x}", rand::random::<u64>()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SandboxError::io(format!("creating {}", dir.display()), e))?;
        let socket = dir.join("proxy.sock");
        let listener = UnixListener::bind(&socket)
            .map_err(|e| SandboxError::io(format!("binding {}", socket.display()), e))?;
        let stop = CancellationToken::new();
        let cfg = Arc::new(cfg);
        let token = stop.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = token.cancelled() => break,
                };
                let Ok((stream, _)) = accepted else { continue };
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    drop(stream);
                    continue;
                };
                let cfg = cfg.clone();
                let token = token.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = handle(stream, &cfg) => {}
                        _ = token.cancelled() => {}
                    }
                    drop(permit);
                });
            }
        });
        Ok(Self { dir, socket, stop })
    }

    /// The unix socket to bind into the sandbox.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }
}

async fn respond(stream: &mut UnixStream, status: &str, body: &str) {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(msg.as_bytes()).await;
    let _ = stream.shutdown().await;
}

fn split_host_port(authority: &str, default_port: u16) -> Option<(String, u16)> {
    if let Some(rest) = authority.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => default_port,
            None => return None,
        };
        return Some((h.to_owned(), port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Some((h.to_owned(), p.parse().ok()?)),
        Some(_) => None,
        None => Some((authority.to_owned(), default_port)),
    }
}

async fn handle(mut stream: UnixStream, cfg: &ProxyConfig) {
    let mut buf = Vec::with_capacity(1024);
    let head_end = tokio::time::timeout(HEAD_TIMEOUT, async {
        let mut chunk = [0u8; 2048];
        loop {
            if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return Some(p + 4);
            }
            if buf.len() > MAX_HEAD {
                return None;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let Ok(Some(head_end)) = head_end else {
        respond(
            &mut stream,
            "400 Bad Request",
            "airlock sandbox proxy: malformed or oversized request head\n",
        )
        .await;
        return;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let leftover = buf[head_end..].to_vec();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        respond(
            &mut stream,
            "400 Bad Request",
            "airlock sandbox proxy: malformed request line\n",
        )
        .await;
        return;
    };
    let connect = method.eq_ignore_ascii_case("CONNECT");
    let (authority, path) = if connect {
        (target.to_owned(), String::new())
    } else if let Some(rest) = target.strip_prefix("http://") {
        match rest.find('/') {
            Some(i) => (rest[..i].to_owned(), rest[i..].to_owned()),
            None => (rest.to_owned(), "/".to_owned()),
        }
    } else {
        respond(
            &mut stream,
            "400 Bad Request",
            "airlock sandbox proxy: use CONNECT for https, or an absolute http:// URL\n",
        )
        .await;
        return;
    };
    let Some((host, port)) = split_host_port(&authority, if connect { 443 } else { 80 }) else {
        respond(
            &mut stream,
            "400 Bad Request",
            "airlock sandbox proxy: bad host:port\n",
        )
        .await;
        return;
    };
    if !domain_allowed(&host, &cfg.allowed_domains) {
        tracing::info!(%host, port, "sandbox egress refused: not in the allowlist");
        respond(
            &mut stream,
            "403 Forbidden",
            &format!("airlock sandbox: {host} is not in the egress allowlist (airlock sandbox allow-domain {host})\n"),
        )
        .await;
        return;
    }
    let upstream = match connect_checked(&host, port, cfg).await {
        Ok(s) => s,
        Err((status, msg)) => {
            tracing::info!(%host, port, "sandbox egress refused: {msg}");
            respond(&mut stream, status, &format!("airlock sandbox: {msg}\n")).await;
            return;
        }
    };
    tracing::info!(%host, port, "sandbox egress allowed");
    let mut upstream = upstream;
    if connect {
        if stream
            .write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            .await
            .is_err()
        {
            return;
        }
    } else {
        let mut out = format!("{method} {path} {version}\r\n");
        for line in lines {
            if line.is_empty() {
                continue;
            }
            let name = line
                .split(':')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if name.starts_with("proxy-") || name == "connection" || name == "keep-alive" {
                continue;
            }
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        if upstream.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
    if !leftover.is_empty() && upstream.write_all(&leftover).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
}

fn listed(ip: IpAddr, allowed: &[IpNet]) -> bool {
    allowed.iter().any(|n| n.contains(&ip))
}

/// Private, shared or otherwise non-public ranges the sandbox refuses unless listed (loopback
/// and link-local are refused by `airlock-egress` itself).
fn non_public(ip: IpAddr) -> bool {
    const V4: [(&str, u8); 6] = [
        ("10.0.0.0", 8),
        ("172.16.0.0", 12),
        ("192.168.0.0", 16),
        ("100.64.0.0", 10),
        ("198.18.0.0", 15),
        ("0.0.0.0", 8),
    ];
    const V6: [(&str, u8); 4] = [
        ("fc00::", 7),
        ("fec0::", 10),
        ("64:ff9b::", 96),
        ("2002::", 16),
    ];
    let nets = V4.iter().chain(V6.iter()).filter_map(|(a, l)| {
        let addr: IpAddr = a.parse().ok()?;
        IpNet::new(addr, *l).ok()
    });
    nets.into_iter().any(|n| n.contains(&ip)) || ip.is_loopback()
}

async fn connect_checked(
    host: &str,
    port: u16,
    cfg: &ProxyConfig,
) -> Result<BoxStream, (&'static str, String)> {
    let loopback_listed = cfg.allowed_ips.iter().any(|n| {
        n.contains(&IpAddr::from([127, 0, 0, 1]))
            || n.contains(&IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]))
    });
    let purpose = if loopback_listed {
        Purpose::UserExposed
    } else {
        Purpose::Fetch
    };
    let mut nets: Vec<IpNet> = ["0.0.0.0/0", "::/0"]
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    nets.extend(cfg.allowed_ips.iter().copied());
    let policy = IpPolicy::allowing(nets);
    let addrs: Vec<SocketAddr> = resolve_checked(
        host,
        port,
        &policy,
        purpose,
        cfg.resolver.as_ref(),
        RESOLVE_TIMEOUT,
    )
    .await
    .map_err(|e| ("403 Forbidden", e.to_string()))?;
    for a in &addrs {
        if non_public(a.ip()) && !listed(a.ip(), &cfg.allowed_ips) {
            return Err((
                "403 Forbidden",
                format!(
                    "IP validation failed: {} resolves to {}, a non-public address; the sandbox reaches it only when its allowed_ips lists it",
                    host,
                    a.ip()
                ),
            ));
        }
    }
    let mut errors = Vec::new();
    for a in addrs {
        match tokio::time::timeout(CONNECT_TIMEOUT, cfg.dialer.dial(a)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => errors.push(format!("{a}: {e}")),
            Err(_) => errors.push(format!("{a}: timed out")),
        }
    }
    Err((
        "502 Bad Gateway",
        format!("could not connect to {host}:{port}: {}", errors.join("; ")),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_matching() {
        let allowed = vec!["example.com".to_owned(), "*.pypi.org".to_owned()];
        assert!(domain_allowed("example.com", &allowed));
        assert!(domain_allowed("EXAMPLE.com.", &allowed));
        assert!(!domain_allowed("www.example.com", &allowed));
        assert!(domain_allowed("files.pypi.org", &allowed));
        assert!(!domain_allowed("pypi.org", &allowed));
        assert!(!domain_allowed("evilpypi.org", &allowed));
        assert!(!domain_allowed("", &allowed));
    }

    #[test]
    fn non_public_ranges() {
        for ip in [
            "10.1.2.3",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "127.0.0.1",
        ] {
            assert!(
                non_public(ip.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))),
                "{ip}"
            );
        }
        for ip in ["203.0.113.7", "8.8.8.8", "2606:4700::1111"] {
            assert!(
                !non_public(ip.parse().unwrap_or(IpAddr::from([10, 0, 0, 0]))),
                "{ip}"
            );
        }
    }
}
