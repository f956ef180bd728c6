#![allow(clippy::unwrap_used)]
//! Egress through the filtering proxy: an allowed name works (a loopback test server behind an
//! injected resolver and dialer: no test reaches the internet), everything else is refused
//! before any connection is attempted, and direct connections stay impossible.

mod common;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use airlock_egress::{BoxFuture, BoxStream, Dialer, StaticResolver};
use airlock_sandbox::{NetworkPolicy, Sandbox};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Dials the test server whenever the (documentation-range) public address is asked for;
/// records every attempt.
struct MapDialer {
    public: IpAddr,
    server: SocketAddr,
    attempts: Mutex<Vec<SocketAddr>>,
}

impl Dialer for MapDialer {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>> {
        self.attempts.lock().unwrap().push(addr);
        Box::pin(async move {
            if addr.ip() != self.public {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "not the test server",
                ));
            }
            let s = tokio::net::TcpStream::connect(self.server).await?;
            Ok(Box::new(s) as BoxStream)
        })
    }
}

async fn serve() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                break;
            };
            h.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&got)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let body = format!("hello through the proxy: {line}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    (addr, hits)
}

#[tokio::test]
async fn allowed_names_work_through_the_proxy_and_nothing_else_does() {
    let env = env();
    let (server, hits) = serve().await;
    let public: IpAddr = "203.0.113.7".parse().unwrap();
    let resolver = StaticResolver::new()
        .with("allowed.test", [public])
        .with("other.test", ["203.0.113.8".parse().unwrap()])
        .with("private.test", ["10.0.0.5".parse().unwrap()])
        .with("loop.test", ["127.0.0.1".parse().unwrap()])
        .with("meta.test", ["169.254.169.254".parse().unwrap()])
        .with("mixed.test", [public, "192.168.1.1".parse().unwrap()]);
    let dialer = Arc::new(MapDialer {
        public,
        server,
        attempts: Mutex::new(Vec::new()),
    });
    let mut cfg = config(&env);
    cfg.network = NetworkPolicy {
        allowed_domains: [
            "allowed.test",
            "private.test",
            "loop.test",
            "meta.test",
            "mixed.test",
        ]
        .map(String::from)
        .to_vec(),
        allowed_ips: Vec::new(),
        resolver: Arc::new(resolver),
        dialer: dialer.clone(),
    };
    let sb = Sandbox::open(cfg).await.unwrap();

    // Plain http (absolute-form through the proxy) and CONNECT (-p tunnels through it).
    let out = bash(&sb, "curl -sS -f --max-time 20 http://allowed.test/hello").await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(
        out.text_content(),
        "hello through the proxy: GET /hello HTTP/1.1"
    );
    let out = bash(
        &sb,
        "curl -sS -f --max-time 20 -p http://allowed.test:8080/tunnel",
    )
    .await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(
        out.text_content(),
        "hello through the proxy: GET /tunnel HTTP/1.1"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    let dialled = dialer.attempts.lock().unwrap().clone();
    assert_eq!(
        dialled,
        vec![SocketAddr::new(public, 80), SocketAddr::new(public, 8080)]
    );

    // Not allowlisted, or resolving to loopback / private / link-local / a mix: refused with a
    // reason, and never dialled.
    for (host, reason) in [
        ("other.test", "not in the egress allowlist"),
        ("private.test", "non-public address"),
        ("loop.test", "loopback"),
        ("meta.test", "link-local"),
        ("mixed.test", "non-public address"),
    ] {
        let out = bash(&sb, &format!("curl -sS --max-time 20 http://{host}/")).await;
        assert!(out.text_content().contains(reason), "{host}: {out:?}");
        let out = bash(&sb, &format!("curl -sS -f --max-time 20 https://{host}/")).await;
        assert!(out.is_error, "{host}: {out:?}");
    }
    assert_eq!(dialer.attempts.lock().unwrap().len(), 2);

    // Direct connections, around the proxy: there is no network to use.
    let out = bash(
        &sb,
        "curl -sS --noproxy '*' --max-time 5 http://203.0.113.7/",
    )
    .await;
    assert!(out.is_error, "{out:?}");
    let out = bash(
        &sb,
        &format!(
            "exec 3<>/dev/tcp/127.0.0.1/{} && echo connected",
            server.port()
        ),
    )
    .await;
    assert!(out.is_error, "{out:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    sb.close().await;
}

#[tokio::test]
async fn listed_networks_unlock_private_targets() {
    let env = env();
    let (server, hits) = serve().await;
    let private: IpAddr = "10.0.0.5".parse().unwrap();
    let resolver = StaticResolver::new().with("intranet.test", [private]);
    let dialer = Arc::new(MapDialer {
        public: private,
        server,
        attempts: Mutex::new(Vec::new()),
    });
    let mut cfg = config(&env);
    cfg.network = NetworkPolicy {
        allowed_domains: vec!["*.test".into()],
        allowed_ips: vec!["10.0.0.0/24".parse().unwrap()],
        resolver: Arc::new(resolver),
        dialer,
    };
    let sb = Sandbox::open(cfg).await.unwrap();
    let out = bash(&sb, "curl -sS -f --max-time 20 http://intranet.test/x").await;
    assert!(!out.is_error, "{out:?}");
    assert_eq!(hits.load(Ordering::SeqCst), 1);
    sb.close().await;
}
