#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! In-process relay + agent link over loopback. The agent's handler terminates the public
//! client's TLS with a test certificate the relay never sees.

use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_pki::CertificateAuthority;
use airlock_relay::client::ClientError;
use airlock_relay::{
    Identity, LinkOptions, NodeState, Relay, RelayClient, RelayConfig, RelayLink, RelayNode,
    TokenAuthority,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};

const T: Duration = Duration::from_secs(30);
const BASE: &str = "relay.test";

struct Running {
    tunnel: SocketAddr,
    public: SocketAddr,
    ops: Option<SocketAddr>,
    spki: [u8; 32],
    auth: Arc<TokenAuthority>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(T, self.done).await.unwrap().unwrap();
    }
}

async fn start_relay(dir: &Path, tweak: impl FnOnce(&mut RelayConfig)) -> Running {
    let mut cfg = RelayConfig::new(dir.to_path_buf(), BASE);
    cfg.ops_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.drain_timeout = Duration::from_secs(20);
    tweak(&mut cfg);
    let relay = Relay::bind(cfg).await.unwrap();
    let (stop, rx) = oneshot::channel::<()>();
    Running {
        tunnel: relay.tunnel_addr(),
        public: relay.public_addr(),
        ops: relay.ops_addr(),
        spki: relay.tunnel_spki_sha256(),
        auth: relay.authority(),
        stop: Some(stop),
        done: tokio::spawn(async move {
            relay
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }),
    }
}

/// The agent's inner-TLS server for one tunnel: a CA constrained to the tunnel domain and a
/// leaf for `*.domain`. Lives only in the test (agent side).
struct EchoCert {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    leaf_der: Vec<u8>,
    leaf_pem: String,
}

fn echo_cert(domain: &str) -> EchoCert {
    let now = time::OffsetDateTime::now_utc();
    let (ca, ca_key) =
        CertificateAuthority::generate(domain, now, time::Duration::days(1)).unwrap();
    let ca_loaded = CertificateAuthority::from_parts(&ca.pem, ca_key.expose()).unwrap();
    let leaf = ca_loaded
        .issue_server(now, time::Duration::hours(1))
        .unwrap();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.expose().as_bytes()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der.clone())).unwrap();
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    EchoCert {
        server: Arc::new(server),
        client: Arc::new(client),
        leaf_der: leaf.cert_der.clone(),
        leaf_pem: leaf.cert_pem.clone(),
    }
}

/// Starts a link whose handler terminates inner TLS and echoes; SNIs seen go to the channel.
fn start_link(
    relay: &Running,
    token: &str,
    identity: &Identity,
    cert: &EchoCert,
) -> (RelayLink, mpsc::UnboundedReceiver<(String, SocketAddr)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = cert.server.clone();
    let node = RelayNode {
        addr: relay.tunnel.to_string(),
        spki_sha256: Some(relay.spki),
        token: token.to_owned(),
    };
    let link = RelayLink::start(
        vec![node],
        identity.clone(),
        LinkOptions::default(),
        move |stream, sni, client| {
            let _ = tx.send((sni, client));
            let acceptor = tokio_rustls::TlsAcceptor::from(server.clone());
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut buf = [0u8; 4096];
                loop {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if tls.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            let _ = tls.flush().await;
                        }
                    }
                }
                let _ = tls.shutdown().await;
            });
        },
    );
    (link, rx)
}

async fn wait_connected(link: &RelayLink) -> String {
    let mut st = link.status();
    let s = tokio::time::timeout(
        T,
        st.wait_for(|v| matches!(v[0].state, NodeState::Connected { .. })),
    )
    .await
    .expect("link did not connect in time")
    .unwrap()
    .clone();
    match &s[0].state {
        NodeState::Connected { tunnel_domain, .. } => tunnel_domain.clone(),
        _ => unreachable!(),
    }
}

async fn tls_client<IO: AsyncRead + AsyncWrite + Unpin>(
    io: IO,
    cert: &EchoCert,
    sni: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<IO>> {
    let connector = tokio_rustls::TlsConnector::from(cert.client.clone());
    let name = ServerName::try_from(sni.to_owned()).unwrap();
    tokio::time::timeout(T, connector.connect(name, io))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

async fn echo_once<IO: AsyncRead + AsyncWrite + Unpin>(
    tls: &mut tokio_rustls::client::TlsStream<IO>,
    msg: &[u8],
) {
    tls.write_all(msg).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = vec![0u8; msg.len()];
    tokio::time::timeout(T, tls.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, msg);
}

async fn roundtrip(relay: &Running, cert: &EchoCert, sni: &str) {
    let tcp = TcpStream::connect(relay.public).await.unwrap();
    let mut tls = tls_client(tcp, cert, sni).await.unwrap();
    // The certificate the client saw is the agent's, which the relay has no key for.
    let peer = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    assert_eq!(peer, cert.leaf_der);
    echo_once(&mut tls, b"hello through the relay").await;
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    echo_once(&mut tls, &big).await;
}

struct Setup {
    _dir: tempfile::TempDir,
    relay: Running,
    token: String,
    domain: String,
    cert: EchoCert,
    identity: Identity,
}

async fn setup(tweak: impl FnOnce(&mut RelayConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path(), tweak).await;
    let (token, claims) = relay.auth.create("laptop", None).unwrap();
    let domain = relay.auth.tunnel_domain(&claims.tunnel_id);
    let cert = echo_cert(&domain);
    let (identity, _, _) = Identity::generate_self_signed(vec!["agent".into()]).unwrap();
    Setup {
        _dir: dir,
        relay,
        token,
        domain,
        cert,
        identity,
    }
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(T, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_handshake_completes_through_the_relay() {
    let s = setup(|_| {}).await;
    let (link, mut snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    assert_eq!(wait_connected(&link).await, s.domain);
    let sni = format!("x.{}", s.domain);
    roundtrip(&s.relay, &s.cert, &sni).await;
    let (seen, client) = snis.recv().await.unwrap();
    assert_eq!(seen, sni);
    assert!(client.ip().is_loopback());
    // The bare tunnel domain routes too.
    roundtrip(&s.relay, &s.cert, &s.domain).await;

    // Nothing the relay wrote to its state dir contains the inner certificate.
    for entry in std::fs::read_dir(s._dir.path()).unwrap() {
        let text = std::fs::read(entry.unwrap().path()).unwrap();
        let leaf_b64 = s.cert.leaf_pem.lines().nth(1).unwrap().as_bytes();
        assert!(!text.windows(leaf_b64.len()).any(|w| w == leaf_b64));
    }

    let ops = s.relay.ops.unwrap();
    assert!(http_get(ops, "/healthz").await.starts_with("HTTP/1.1 200"));
    let m = http_get(ops, "/metrics").await;
    assert!(metric(&m, "airlock_relay_streams_total") >= 2, "{m}");
    assert_eq!(metric(&m, "airlock_relay_agents_connected"), 1, "{m}");
    // Byte counts are added when a spliced connection ends, which trails the client's close.
    let deadline = std::time::Instant::now() + T;
    loop {
        let m = http_get(ops, "/metrics").await;
        if metric(&m, "airlock_relay_bytes_to_agent_total") > 400_000
            && metric(&m, "airlock_relay_bytes_from_agent_total") > 400_000
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "byte counters not updated: {m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(http_get(ops, "/nope").await.starts_with("HTTP/1.1 404"));

    // Status serialises for `airlock status`.
    let json = serde_json::to_value(&*link.status().borrow()).unwrap();
    assert_eq!(json[0]["state"], "connected");
    assert_eq!(json[0]["tunnel_domain"], s.domain.as_str());

    link.stop().await;
    s.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_sni_is_refused() {
    let s = setup(|_| {}).await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    for sni in [
        "x.nosuchtunnel.relay.test".to_owned(),
        "example.com".to_owned(),
        s.domain.replace("relay.test", "other.test"),
    ] {
        let tcp = TcpStream::connect(s.relay.public).await.unwrap();
        let r = tls_client(tcp, &s.cert, &sni).await;
        assert!(r.is_err(), "{sni} must not complete a handshake");
    }
    let m = http_get(s.relay.ops.unwrap(), "/metrics").await;
    assert!(metric(&m, "airlock_relay_public_rejects_total") >= 3, "{m}");
    // Still serving.
    roundtrip(&s.relay, &s.cert, &format!("y.{}", s.domain)).await;
    link.stop().await;
    s.relay.shutdown().await;
}

async fn expect_rejected(relay: &Running, token: &str, identity: &Identity, want: &str) {
    let err = RelayClient::connect(
        &relay.tunnel.to_string(),
        Some(relay.spki),
        token,
        identity,
        &Default::default(),
    )
    .await
    .unwrap_err();
    match err {
        ClientError::Mux {
            source: airlock_mux::MuxError::Rejected { reason, .. },
            ..
        } => assert!(
            reason.contains(want),
            "reason {reason:?} should mention {want:?}"
        ),
        other => panic!("expected a rejection mentioning {want:?}, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_rejected_and_the_relay_keeps_serving() {
    let s = setup(|_| {}).await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;

    let (other_key, _, _) = Identity::generate_self_signed(vec!["agent2".into()]).unwrap();
    // Garbage token.
    expect_rejected(&s.relay, "not-a-token", &other_key, "malformed").await;
    // Signed by another operator.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign = TokenAuthority::open(foreign_dir.path(), BASE).unwrap();
    let (ft, _) = foreign.create("x", None).unwrap();
    expect_rejected(&s.relay, &ft, &other_key, "signature").await;
    // Expired.
    let (old, _) = s
        .relay
        .auth
        .create_at(
            "old",
            None,
            Some(Duration::from_secs(60)),
            std::time::SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap();
    expect_rejected(&s.relay, &old, &other_key, "expired").await;
    // Revoked.
    let (rv, rc) = s.relay.auth.create("revoked", None).unwrap();
    s.relay.auth.revoke(&rc.jti).unwrap();
    expect_rejected(&s.relay, &rv, &other_key, "revoked").await;
    // The good agent's token replayed with another client key.
    expect_rejected(&s.relay, &s.token, &other_key, "bound to another agent key").await;

    // Wrong pin: the agent refuses the relay.
    let err = RelayClient::connect(
        &s.relay.tunnel.to_string(),
        Some([0u8; 32]),
        &s.token,
        &s.identity,
        &Default::default(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, ClientError::Tls { .. }), "{err}");

    // The good agent is still connected and serving.
    roundtrip(&s.relay, &s.cert, &format!("z.{}", s.domain)).await;
    let m = http_get(s.relay.ops.unwrap(), "/metrics").await;
    assert!(metric(&m, "airlock_relay_agent_rejects_total") >= 5, "{m}");
    link.stop().await;
    s.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_streams_and_the_link_reconnects() {
    let s = setup(|_| {}).await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    let sni = format!("a.{}", s.domain);
    let tcp = TcpStream::connect(s.relay.public).await.unwrap();
    let mut inflight = tls_client(tcp, &s.cert, &sni).await.unwrap();
    echo_once(&mut inflight, b"before shutdown").await;

    let (tunnel, public, dir) = (s.relay.tunnel, s.relay.public, s._dir.path().to_path_buf());
    let spki = s.relay.spki;
    let relay = s.relay;
    let stop = tokio::spawn(relay.shutdown());
    // The link sees GOAWAY and goes back to connecting (relay is gone).
    let mut st = link.status();
    tokio::time::timeout(
        T,
        st.wait_for(|v| !matches!(v[0].state, NodeState::Connected { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    // New connections are not accepted any more (listeners closed before the GOAWAY).
    assert!(TcpStream::connect(public).await.is_err());
    // The in-flight stream still works, then ends cleanly; only then does the relay exit.
    echo_once(&mut inflight, b"during the drain").await;
    assert!(!stop.is_finished());
    inflight.shutdown().await.unwrap();
    drop(inflight);
    tokio::time::timeout(T, stop).await.unwrap().unwrap();

    // Restart on the same ports and state dir: same key, so the pin still matches.
    let restarted = start_relay(&dir, |c| {
        c.tunnel_listen = tunnel;
        c.public_listen = public;
    })
    .await;
    assert_eq!(restarted.spki, spki);
    let started = std::time::Instant::now();
    wait_connected(&link).await;
    assert!(started.elapsed() < Duration::from_secs(15));
    roundtrip(&restarted, &s.cert, &format!("b.{}", s.domain)).await;
    link.stop().await;
    restarted.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_both_ports_does_not_take_the_relay_down() {
    let s = setup(|c| c.client_hello_timeout = Duration::from_secs(2)).await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    let junk: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect();
    for addr in [s.relay.public, s.relay.tunnel] {
        for payload in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            &junk,
            &[0x16, 3, 1, 0xff, 0xff][..],
        ] {
            let mut t = TcpStream::connect(addr).await.unwrap();
            let _ = t.write_all(payload).await;
            let mut buf = [0u8; 64];
            // The relay closes on us (bounded: the ClientHello / handshake deadlines).
            let r = tokio::time::timeout(T, async {
                loop {
                    match t.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(
                r.is_ok(),
                "relay did not close a garbage connection on {addr}"
            );
        }
    }
    // A connection that says nothing is dropped after the ClientHello deadline.
    let mut idle = TcpStream::connect(s.relay.public).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(20), idle.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "slowloris connection not closed: {r:?}"
    );

    roundtrip(&s.relay, &s.cert, &format!("g.{}", s.domain)).await;
    link.stop().await;
    s.relay.shutdown().await;
}

/// Re-frames the first write (the ClientHello flight) into 1-byte TLS records, each written
/// separately; everything after passes through.
struct OneByteRecords {
    inner: TcpStream,
    first: bool,
    pending: Vec<u8>,
    off: usize,
}

impl AsyncRead for OneByteRecords {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for OneByteRecords {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        if this.first {
            this.first = false;
            let mut rest = data;
            while rest.len() >= 5 {
                let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
                let body = &rest[5..5 + len];
                for b in body {
                    this.pending
                        .extend_from_slice(&[rest[0], rest[1], rest[2], 0, 1, *b]);
                }
                rest = &rest[5 + len..];
            }
            assert!(rest.is_empty());
            this.off = 0;
        } else if this.off >= this.pending.len() {
            return Pin::new(&mut this.inner).poll_write(cx, data);
        }
        // Drain the fragmented flight one record per write.
        while this.off < this.pending.len() {
            let end = this.off + 6;
            match Pin::new(&mut this.inner).poll_write(cx, &this.pending[this.off..end]) {
                Poll::Ready(Ok(n)) => this.off += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hello_in_one_byte_records_still_routes() {
    let s = setup(|_| {}).await;
    let (link, mut snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    let tcp = TcpStream::connect(s.relay.public).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let io = OneByteRecords {
        inner: tcp,
        first: true,
        pending: Vec::new(),
        off: 0,
    };
    let sni = format!("frag.{}", s.domain);
    let mut tls = tls_client(io, &s.cert, &sni).await.unwrap();
    assert!(
        tls.get_ref().0.pending.len() > 6 * 100,
        "ClientHello was not fragmented"
    );
    echo_once(&mut tls, b"fragmented hello").await;
    assert_eq!(snis.recv().await.unwrap().0, sni);
    link.stop().await;
    s.relay.shutdown().await;
}

async fn connect_from(src: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(format!("{src}:0").parse().unwrap())?;
    sock.connect(to).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_waiting_for_a_client_hello_are_capped_across_addresses() {
    let s = setup(|c| {
        c.max_pending_hellos = 3;
        c.client_hello_timeout = Duration::from_secs(60);
    })
    .await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    // A routed connection holds no slot.
    let tcp = connect_from("127.0.0.9", s.relay.public).await.unwrap();
    let mut routed = tls_client(tcp, &s.cert, &format!("held.{}", s.domain))
        .await
        .unwrap();
    echo_once(&mut routed, b"routed").await;
    // Three slow ClientHellos from three addresses fill the slots.
    let mut idle = Vec::new();
    for src in ["127.0.0.2", "127.0.0.3", "127.0.0.4"] {
        let mut t = connect_from(src, s.relay.public).await.unwrap();
        t.write_all(&[0x16, 3, 1]).await.unwrap();
        idle.push(t);
    }
    // A fourth, from yet another address, is closed; it may race the third's slot, so
    // retry until one is refused.
    let deadline = std::time::Instant::now() + T;
    loop {
        let mut t = connect_from("127.0.0.5", s.relay.public).await.unwrap();
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(2), t.read(&mut buf)).await;
        if matches!(r, Ok(Ok(0)) | Ok(Err(_))) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a connection beyond the cap was kept waiting: {r:?}"
        );
    }
    // The routed connection still works, and a freed slot serves a new client.
    echo_once(&mut routed, b"still routed").await;
    drop(idle.pop());
    let deadline = std::time::Instant::now() + T;
    let mut tls = loop {
        let tcp = connect_from("127.0.0.6", s.relay.public).await.unwrap();
        match tls_client(tcp, &s.cert, &format!("freed.{}", s.domain)).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "slot never freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    echo_once(&mut tls, b"slot freed").await;
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_cap_limits_one_address_not_others() {
    let s = setup(|c| {
        c.max_conns_per_ip = 4;
        c.client_hello_timeout = Duration::from_secs(60);
    })
    .await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    let mut idle = Vec::new();
    for _ in 0..4 {
        let mut t = connect_from("127.0.0.2", s.relay.public).await.unwrap();
        t.write_all(&[0x16, 3, 1]).await.unwrap(); // a ClientHello that never finishes
        idle.push(t);
    }
    // The accept loop takes the per-IP slot before handing a connection off, in accept
    // order, so the fifth connection is refused regardless of timing.
    let mut fifth = connect_from("127.0.0.2", s.relay.public).await.unwrap();
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(Duration::from_secs(10), fifth.read(&mut buf)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "5th connection from one IP not closed: {r:?}"
    );
    // Another source address still gets through.
    let tcp = connect_from("127.0.0.3", s.relay.public).await.unwrap();
    let mut tls = tls_client(tcp, &s.cert, &format!("ip.{}", s.domain))
        .await
        .unwrap();
    echo_once(&mut tls, b"other ip").await;
    // Closing one idle connection frees a slot for the capped address.
    drop(idle.pop());
    let deadline = std::time::Instant::now() + T;
    let mut tls = loop {
        let tcp = connect_from("127.0.0.2", s.relay.public).await.unwrap();
        match tls_client(tcp, &s.cert, &format!("ip2.{}", s.domain)).await {
            Ok(t) => break t,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "slot never freed: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    echo_once(&mut tls, b"slot freed").await;
    drop(idle);
    link.stop().await;
    s.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_spread_over_several_connections_of_one_tunnel() {
    let s = setup(|_| {}).await;
    // Two links with the same token and key, as an agent connected to one node twice
    // (one per relay node in production).
    let (l1, mut s1) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    let (l2, mut s2) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&l1).await;
    wait_connected(&l2).await;
    for i in 0..8 {
        let tcp = TcpStream::connect(s.relay.public).await.unwrap();
        let mut tls = tls_client(tcp, &s.cert, &format!("n{i}.{}", s.domain))
            .await
            .unwrap();
        echo_once(&mut tls, b"spread").await;
    }
    let (mut a, mut b) = (0, 0);
    while s1.try_recv().is_ok() {
        a += 1;
    }
    while s2.try_recv().is_ok() {
        b += 1;
    }
    assert_eq!(a + b, 8);
    assert!(a > 0 && b > 0, "all streams on one connection: {a}/{b}");
    // One connection going away leaves the tunnel served by the other.
    l1.stop().await;
    let ops = s.relay.ops.unwrap();
    let deadline = std::time::Instant::now() + T;
    while metric(
        &http_get(ops, "/metrics").await,
        "airlock_relay_agents_connected",
    ) != 1
    {
        assert!(
            std::time::Instant::now() < deadline,
            "relay did not notice the closed link"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    roundtrip(&s.relay, &s.cert, &format!("after.{}", s.domain)).await;
    l2.stop().await;
    s.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_file_reload_cuts_live_connections() {
    let s = setup(|c| c.revocation_reload = Duration::from_millis(200)).await;
    let (link, _snis) = start_link(&s.relay, &s.token, &s.identity, &s.cert);
    wait_connected(&link).await;
    let claims = s
        .relay
        .auth
        .verify(&s.token, std::time::SystemTime::now())
        .unwrap();
    // The operator distributes a new revocation file (written by another tool, not `revoke`).
    std::fs::write(
        s._dir.path().join("revoked-tokens.txt"),
        format!("# revoked\n{}\n", claims.jti),
    )
    .unwrap();
    let mut st = link.status();
    let v = tokio::time::timeout(
        T,
        st.wait_for(|v| matches!(&v[0].state, NodeState::Backoff { last_error, .. } if last_error.contains("revoked"))),
    )
    .await
    .expect("link was not cut and refused after revocation")
    .unwrap()
    .clone();
    assert!(matches!(v[0].state, NodeState::Backoff { .. }));
    link.stop().await;
    s.relay.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_and_rate_limit() {
    let dir = tempfile::tempdir().unwrap();
    // Create the token first so the allowlist can name the tunnel domain.
    let auth = TokenAuthority::open(dir.path(), BASE).unwrap();
    let (token, claims) = auth.create("laptop", None).unwrap();
    let domain = auth.tunnel_domain(&claims.tunnel_id);
    drop(auth);
    let d = domain.clone();
    let relay = start_relay(dir.path(), move |c| {
        c.allowlists
            .insert(d, vec!["127.0.0.3/32".parse().unwrap()]);
        c.rate_limit = Some(airlock_relay::RateLimit {
            per_second: 0.001,
            burst: 2,
        });
    })
    .await;
    let cert = echo_cert(&domain);
    let (identity, _, _) = Identity::generate_self_signed(vec!["agent".into()]).unwrap();
    let (link, _snis) = start_link(&relay, &token, &identity, &cert);
    wait_connected(&link).await;
    let sni = format!("a.{domain}");
    // Not on the allowlist.
    let tcp = connect_from("127.0.0.2", relay.public).await.unwrap();
    assert!(tls_client(tcp, &cert, &sni).await.is_err());
    // Allowed: two connections (the burst), then the bucket is empty.
    for _ in 0..2 {
        let tcp = connect_from("127.0.0.3", relay.public).await.unwrap();
        let mut tls = tls_client(tcp, &cert, &sni).await.unwrap();
        echo_once(&mut tls, b"allowed").await;
    }
    let tcp = connect_from("127.0.0.3", relay.public).await.unwrap();
    assert!(
        tls_client(tcp, &cert, &sni).await.is_err(),
        "rate limit not applied"
    );
    link.stop().await;
    relay.shutdown().await;
}
