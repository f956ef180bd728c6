//! Bad input against a real `airlock relay` process, on its public port (no TLS, a ClientHello
//! in 1-byte records, truncated and oversized ClientHellos, unknown SNI, 1 000 idle slowloris
//! connections from 127.0.0.2 and up) and on its tunnel port (bad, expired and replayed tokens,
//! no client certificate, garbage before and after HELLO). Throughout, a well-behaved client
//! keeps reaching an echo server behind an agent connection ([`airlock_relay::RelayLink`]) through
//! the relay, and the node keeps running.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use airlock_e2e::TestHome;
use airlock_e2e::relay::{
    EchoAgent, EchoAgentOptions, RelayProcess, echo_once, inner_tls, loopback_source,
    nofile_limits, tcp_from,
};
use airlock_relay::airlock_proto::Token;
use airlock_relay::airlock_proto::frame::{self, Frame, Hello};
use airlock_relay::{ClientOptions, Identity, RelayClient, TokenAuthority, tls};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DOMAIN: &str = "relay.test";
const STEP: Duration = Duration::from_secs(60);

struct Fixture {
    _home: TestHome,
    relay: RelayProcess,
    agent: EchoAgent,
    tls: Arc<rustls::ClientConfig>,
    host: String,
    token: String,
    served: u32,
}

impl Fixture {
    async fn new() -> Self {
        let home = TestHome::new();
        let (relay, tok) = tokio::task::block_in_place(|| {
            // Started with a low soft fd limit: the relay must raise it to the hard limit.
            let relay = RelayProcess::start_with(&home, DOMAIN, Some(256));
            let tok = relay.create_token(&home, "good");
            (relay, tok)
        });
        let agent = EchoAgent::start(
            relay.tunnel,
            relay.pin_bytes(),
            &tok.token,
            &tok.tunnel_domain,
            EchoAgentOptions::default(),
        )
        .await;
        agent.connected(STEP).await;
        let (soft, hard) = nofile_limits(relay.pid()).expect("/proc/<relay>/limits");
        assert_eq!(
            soft, hard,
            "the relay raises its soft open-file limit (started at 256) to the hard limit"
        );
        assert_ne!(soft, "256");
        let tls = agent.client();
        let host = agent.host();
        let mut f = Self {
            _home: home,
            relay,
            agent,
            tls,
            host,
            token: tok.token,
            served: 0,
        };
        f.healthy("start").await;
        f
    }

    /// The well-behaved client: a fresh inner TLS session through the relay, one echo.
    async fn healthy(&mut self, after: &str) {
        self.served += 1;
        let text = format!("still-served-{}-{after}", self.served);
        if let Err(e) =
            echo_once(self.relay.public, &self.host, self.tls.clone(), &text, STEP).await
        {
            panic!(
                "the well-behaved client is not served after {after}: {e}\n--- relay log\n{}",
                self.relay.log()
            );
        }
        assert!(
            tokio::task::block_in_place(|| self.relay.is_running()),
            "the relay died after {after}"
        );
    }

    fn operator(&self) -> TokenAuthority {
        TokenAuthority::open(&self.relay.state_dir, DOMAIN).unwrap()
    }
}

/// Reads until the peer closes (EOF or reset); returns the bytes read and how long it took.
async fn until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut got = Vec::new();
    let r = tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        r.is_ok(),
        "the relay kept the connection open for {within:?}"
    );
    (got, t.elapsed())
}

/// The TLS alert `unrecognized_name` the relay sends for names it cannot route.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

/// A real ClientHello for `host` (rustls, in memory) and the client connection that sent it.
fn client_hello(tls: Arc<rustls::ClientConfig>, host: &str) -> (rustls::ClientConnection, Vec<u8>) {
    let name = ServerName::try_from(host.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(tls, name).unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    (conn, out)
}

/// Re-frames TLS handshake records so every record carries exactly one handshake byte.
fn one_byte_records(records: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 {
        let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
        let (hdr, body) = rest.split_at(5);
        for b in &body[..len] {
            out.push(vec![hdr[0], hdr[1], hdr[2], 0, 1, *b]);
        }
        rest = &body[len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_survives_bad_input_on_both_ports_and_keeps_serving() {
    let mut f = Fixture::new().await;
    let public = f.relay.public;

    // --- public port ---------------------------------------------------------------------
    // Plain HTTP instead of TLS: closed without a byte of payload going anywhere.
    {
        let mut s = TcpStream::connect(public).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = until_closed(&mut s, STEP).await;
        assert!(got.is_empty(), "no TLS → no answer: {got:?}");
    }
    f.healthy("plain HTTP on the public port").await;

    // A ClientHello in 1-byte TLS records still routes, and the session works end to end.
    {
        let (conn, hello) = client_hello(f.tls.clone(), &f.host);
        let records = one_byte_records(&hello);
        assert!(
            records.len() > 100,
            "a real ClientHello: {} bytes",
            hello.len()
        );
        let text = tokio::task::spawn_blocking(move || {
            let mut tcp = std::net::TcpStream::connect(public).unwrap();
            tcp.set_nodelay(true).unwrap();
            tcp.set_read_timeout(Some(STEP)).unwrap();
            for r in &records {
                tcp.write_all(r).unwrap();
            }
            let mut tls = rustls::StreamOwned::new(conn, tcp);
            tls.write_all(b"ECHO split-hello\n").unwrap();
            tls.flush().unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while tls.read(&mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
                line.push(b[0]);
            }
            String::from_utf8_lossy(&line).into_owned()
        })
        .await
        .unwrap();
        assert_eq!(
            text, "split-hello",
            "a ClientHello split into 1-byte records must route"
        );
    }
    f.healthy("a ClientHello in 1-byte records").await;

    // Truncated ClientHello (half of it, then the client's FIN): closed at once.
    {
        let (_, hello) = client_hello(f.tls.clone(), &f.host);
        let mut s = TcpStream::connect(public).await.unwrap();
        s.write_all(&hello[..hello.len() / 2]).await.unwrap();
        s.shutdown().await.unwrap();
        let (got, took) = until_closed(&mut s, STEP).await;
        assert!(got.is_empty(), "{got:?}");
        assert!(
            took < Duration::from_secs(5),
            "truncated hello closed in {took:?}"
        );
    }
    f.healthy("a truncated ClientHello").await;

    // Oversized: a handshake message announcing 16 MiB, sent as two full records (32 KiB,
    // past the relay's 16 KiB cap) and then nothing more. A relay without the cap would wait
    // for the rest until the ClientHello deadline (10 s); this one closes at once.
    {
        let mut s = TcpStream::connect(public).await.unwrap();
        let mut body = vec![0x01, 0xff, 0xff, 0xff];
        body.resize(16 * 1024, 0x41);
        let t = Instant::now();
        for _ in 0..2 {
            let mut rec = vec![0x16, 0x03, 0x01];
            rec.extend_from_slice(&(body.len() as u16).to_be_bytes());
            rec.extend_from_slice(&body);
            let _ = s.write_all(&rec).await;
            body = vec![0x41; 16 * 1024];
        }
        let (got, _) = until_closed(&mut s, STEP).await;
        let took = t.elapsed();
        assert!(got.is_empty(), "{got:?}");
        assert!(
            took < Duration::from_secs(5),
            "an oversized ClientHello is cut off at the cap, not at the deadline: {took:?}"
        );
    }
    f.healthy("an oversized ClientHello").await;

    // Unknown SNI: inside the base domain but no such tunnel, and outside it. The relay answers
    // with a TLS alert and closes; nothing is routed.
    for sni in [
        format!("echo.nosuchtunnel.{DOMAIN}"),
        "echo.example.com".to_string(),
        DOMAIN.to_string(),
    ] {
        let (_, hello) = client_hello(f.tls.clone(), &sni);
        let mut s = TcpStream::connect(public).await.unwrap();
        s.write_all(&hello).await.unwrap();
        let (got, _) = until_closed(&mut s, STEP).await;
        assert_eq!(
            got, ALERT_UNRECOGNIZED_NAME,
            "SNI {sni}: an unrecognized_name alert"
        );
        let err = inner_tls(public, &sni, f.tls.clone(), None).await.err();
        assert!(err.is_some(), "SNI {sni} must not complete a handshake");
    }
    f.healthy("unknown SNIs").await;

    // 1 000 idle slowloris connections from 127.0.0.2 and up (20 per address: below the per-IP
    // cap, so the cap does not hide anything). Each sends the first 3 bytes of a record header
    // and stalls. The relay holds them all (its fd count shows it), keeps serving, and closes
    // every one at the ClientHello deadline (10 s).
    {
        let fds_before = fd_count(f.relay.pid());
        let mut idle = Vec::new();
        for i in 0..1000u32 {
            let mut s = tcp_from(Some(loopback_source(i / 20)), public)
                .await
                .unwrap();
            s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
            idle.push(s);
        }
        let opened = Instant::now();
        f.healthy("1 000 slowloris connections opened").await;
        let fds_during = fd_count(f.relay.pid());
        assert!(
            fds_during >= fds_before + 900,
            "the relay should hold the idle connections: fds {fds_before} → {fds_during}"
        );
        let metrics = f.relay.metrics();
        eprintln!(
            "slowloris: relay fds {fds_before} → {fds_during}, rss {} kB",
            f.relay.rss_kb()
        );
        assert!(
            metrics
                .get("airlock_relay_public_connections_total")
                .copied()
                .unwrap_or(0.0)
                >= 1000.0
        );
        f.healthy("1 000 slowloris connections held").await;
        let mut closed = 0;
        for mut s in idle {
            let left = (Duration::from_secs(40)).saturating_sub(opened.elapsed());
            let (got, _) = until_closed(&mut s, left.max(Duration::from_secs(1))).await;
            assert!(got.is_empty());
            closed += 1;
        }
        let took = opened.elapsed();
        eprintln!("slowloris: all {closed} closed by the relay {took:?} after opening");
        assert!(
            took >= Duration::from_secs(5),
            "closed before the deadline: {took:?}"
        );
    }
    f.healthy("slowloris connections timed out").await;

    // The per-IP cap is real: 80 connections from one address, at most 64 are held.
    {
        let src = Some(loopback_source(4000));
        let mut conns = Vec::new();
        for _ in 0..80 {
            let mut s = tcp_from(src, public).await.unwrap();
            let _ = s.write_all(&[0x16]).await;
            conns.push(s);
        }
        let mut refused = 0;
        for s in &mut conns {
            let mut b = [0u8; 1];
            if let Ok(r) = tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await
                && matches!(r, Ok(0) | Err(_))
            {
                refused += 1;
            }
        }
        assert!(refused >= 16, "per-IP cap 64: {refused} of 80 refused");
    }
    f.healthy("the per-IP cap").await;

    // --- tunnel port ---------------------------------------------------------------------
    let opts = ClientOptions {
        connect_timeout: STEP,
        ..ClientOptions::default()
    };
    let tunnel = f.relay.tunnel.to_string();
    let pin = Some(f.relay.pin_bytes());
    let fresh = || {
        Identity::generate_self_signed(vec!["attacker.invalid".into()])
            .unwrap()
            .0
    };
    let refused = |what: &str,
                   r: Result<airlock_relay::RelaySession, airlock_relay::ClientError>,
                   needle: &str| {
        match r {
            Ok(s) => panic!(
                "{what}: the relay accepted it ({})",
                s.welcome.tunnel_domain
            ),
            Err(e) => {
                let e = e.to_string();
                assert!(e.to_lowercase().contains(needle), "{what}: {e}");
            }
        }
    };

    let r = RelayClient::connect(&tunnel, pin, "not-a.token", &fresh(), &opts).await;
    refused("bad token", r, "");
    f.healthy("a bad token").await;

    let op = f.operator();
    let (forged, _) = TokenAuthority::open(&f._home.scratch().join("other-operator"), DOMAIN)
        .unwrap()
        .create("forged", None)
        .unwrap();
    let r = RelayClient::connect(&tunnel, pin, &forged, &fresh(), &opts).await;
    refused("token signed by another operator", r, "signature");
    f.healthy("a forged token").await;

    let (expired, _) = op
        .create_at(
            "expired",
            None,
            Some(Duration::from_secs(60)),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap();
    let r = RelayClient::connect(&tunnel, pin, &expired, &fresh(), &opts).await;
    refused("expired token", r, "expired");
    f.healthy("an expired token").await;

    // The good agent's token, replayed with another key.
    let r = RelayClient::connect(&tunnel, pin, &f.token, &fresh(), &opts).await;
    refused("token replayed with another key", r, "another");
    f.healthy("a replayed token").await;

    // Garbage instead of TLS.
    {
        let mut s = TcpStream::connect(f.relay.tunnel).await.unwrap();
        let junk: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect();
        let _ = s.write_all(&junk).await;
        until_closed(&mut s, STEP).await;
    }
    // TLS without a client certificate.
    {
        let tcp = TcpStream::connect(f.relay.tunnel).await.unwrap();
        let cfg = no_client_cert_config();
        let r = tokio::time::timeout(
            STEP,
            tokio_rustls::TlsConnector::from(cfg)
                .connect(ServerName::try_from("relay.test").unwrap(), tcp),
        )
        .await
        .unwrap();
        if let Ok(mut t) = r {
            // TLS 1.3: the server's verdict on the missing certificate arrives after the
            // client's Finished.
            let mut b = [0u8; 64];
            let got = tokio::time::timeout(STEP, t.read(&mut b)).await.unwrap();
            assert!(
                matches!(got, Ok(0) | Err(_)),
                "no client cert must be refused: {got:?}"
            );
        }
    }
    // Mutual TLS, then garbage frames instead of HELLO.
    let id = fresh();
    {
        let mut t = agent_tls(f.relay.tunnel, pin, &id).await;
        let junk: Vec<u8> = (0..2048u32).map(|i| (i * 31 % 256) as u8).collect();
        let _ = t.write_all(&junk).await;
        let _ = t.flush().await;
        let mut b = vec![0u8; 4096];
        let r = tokio::time::timeout(STEP, async {
            loop {
                match t.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "garbage instead of HELLO: the relay must close");
    }
    // A valid HELLO (a token of its own), then garbage frames after WELCOME.
    {
        let (tok, _) = op.create("garbage-after-hello", None).unwrap();
        let mut t = agent_tls(f.relay.tunnel, pin, &id).await;
        let mut out = bytes::BytesMut::new();
        frame::encode(
            &Frame::Hello(Hello {
                versions: vec![1],
                initial_window: 256 * 1024,
                token: Token::new(tok.into_bytes()),
                agent_name: "garbage".into(),
            }),
            &mut out,
        )
        .unwrap();
        t.write_all(&out).await.unwrap();
        t.flush().await.unwrap();
        let mut b = vec![0u8; 4096];
        let n = tokio::time::timeout(STEP, t.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0 && b[0] == frame::kind::WELCOME,
            "WELCOME expected, got {:?}",
            &b[..n.min(16)]
        );
        // Frames of an unknown type, then DATA for a stream the relay never opened.
        let mut junk = vec![0xee; 10];
        junk.extend_from_slice(&[0u8; 64]);
        let _ = t.write_all(&junk).await;
        let _ = t.flush().await;
        let r = tokio::time::timeout(STEP, async {
            loop {
                match t.read(&mut b).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(
            r.is_ok(),
            "garbage frames after WELCOME: the relay must close the connection"
        );
    }
    f.healthy("garbage on the tunnel port").await;

    // A tunnel-port slowloris: 200 TCP connections that never start TLS.
    {
        let mut idle = Vec::new();
        for i in 0..200u32 {
            idle.push(
                tcp_from(Some(loopback_source(i)), f.relay.tunnel)
                    .await
                    .unwrap(),
            );
        }
        f.healthy("200 idle connections on the tunnel port").await;
    }

    let m = f.relay.metrics();
    eprintln!(
        "relay metrics: public_rejects={:?} agent_rejects={:?} streams={:?}",
        m.get("airlock_relay_public_rejects_total"),
        m.get("airlock_relay_agent_rejects_total"),
        m.get("airlock_relay_streams_total")
    );
    assert!(
        m.get("airlock_relay_agent_rejects_total")
            .copied()
            .unwrap_or(0.0)
            >= 6.0,
        "{m:?}"
    );
    assert!(
        m.get("airlock_relay_public_rejects_total")
            .copied()
            .unwrap_or(0.0)
            >= 1000.0,
        "{m:?}"
    );
    assert!(
        m.get("airlock_relay_streams_total").copied().unwrap_or(0.0) >= f64::from(f.served),
        "{m:?}"
    );
    f.agent.stop().await;
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// TLS 1.3 to the tunnel port presenting `id`, the relay pinned.
async fn agent_tls(
    addr: SocketAddr,
    pin: Option<[u8; 32]>,
    id: &Identity,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let cfg = tls::client_config(id, pin).unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio::time::timeout(
        STEP,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(tls::server_name("127.0.0.1"), tcp),
    )
    .await
    .unwrap()
    .unwrap()
}

/// A TLS 1.3 client that accepts any server key and presents no certificate.
fn no_client_cert_config() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls_pki_types::CertificateDer<'_>,
            _: &[rustls_pki_types::CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: rustls_pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls_pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let p = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Any(p)))
            .with_no_client_auth(),
    )
}
