//! `tunnel-load`: a fixed-concurrency, bounded-duration `tools/call` load generator that reaches
//! an MCP server either through Airlock's Anthropic tunnel ingress (WebSocket + inner TLS, as
//! Anthropic's backend does) or through the loopback gateway (used by `bench/tunnel.sh`).
//!
//! Each worker holds ONE persistent HTTP/1.1 connection (a WebSocket + TLS session in tunnel
//! mode, a TCP connection in gateway mode), opens its own MCP session on it (`initialize` +
//! `notifications/initialized`) and calls one tool in a closed loop until the duration ends.
//! Prints one JSON line: `{"label", "mode", "concurrency", "secs", "ok", "errors", "rps",
//! "p50_ms", "p99_ms", "first_error"}`. Loopback only.
//!
//! usage:
//!   tunnel-load --gateway-url http://127.0.0.1:P/everything/mcp --token T [common flags]
//!   tunnel-load --ws 127.0.0.1:P --tunnel-url https://everything.<domain>/mcp --ca ca.pem
//!               --token T [common flags]
//!   tunnel-load --tls 127.0.0.1:P --tunnel-url https://everything.<domain>:P/mcp --ca ca.pem
//!               --token T [common flags]     (inner TLS over plain TCP: a relay's public port)
//!   common: [--concurrency 8] [--duration 10] [--warmup 2] [--tool echo]
//!           [--args '{"message":"bench"}'] [--expect 'Echo: bench'] [--label NAME]

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Bound on one step (connect, handshake, one request).
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
enum Mode {
    Gateway {
        addr: SocketAddr,
    },
    Tunnel {
        ws: SocketAddr,
        sni: String,
        tls: Arc<rustls::ClientConfig>,
    },
    /// Inner TLS straight over TCP (an Airlock relay's public port; `bench/relay.sh`).
    Tls {
        addr: SocketAddr,
        sni: String,
        tls: Arc<rustls::ClientConfig>,
    },
}

#[derive(Clone)]
struct Args {
    mode: Mode,
    /// `Host` header value.
    host: String,
    path: String,
    token: Option<String>,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    tool: String,
    args: Value,
    expect: String,
    label: String,
}

/// `scheme://authority/path` → (authority, path).
fn split_url(url: &str, scheme: &str) -> Result<(String, String), String> {
    let rest = url
        .strip_prefix(scheme)
        .and_then(|r| r.strip_prefix("://"))
        .ok_or_else(|| format!("{url:?} is not a {scheme}:// URL"))?;
    Ok(match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    })
}

fn loopback(addr: &str, what: &str) -> Result<SocketAddr, String> {
    let a: SocketAddr = addr
        .replace("localhost", "127.0.0.1")
        .parse()
        .map_err(|e| format!("{what} {addr:?} is not IP:PORT: {e}"))?;
    if !a.ip().is_loopback() {
        return Err(format!("{what} must be a loopback address (got {a})"));
    }
    Ok(a)
}

fn tls_trusting(ca_file: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    let pem = std::fs::read(ca_file).map_err(|e| format!("--ca {ca_file}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("--ca {ca_file}: bad PEM: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("--ca {ca_file}: not a usable CA: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("--ca {ca_file}: no certificate in the file"));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS config: {e}"))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

fn parse_args() -> Result<Args, String> {
    let mut gateway_url = None;
    let mut tunnel_url = None;
    let mut ws = None;
    let mut tls_addr = None;
    let mut ca = None;
    let mut token = None;
    let mut concurrency = 8usize;
    let mut duration = Duration::from_secs(10);
    let mut warmup = Duration::from_secs(2);
    let mut tool = "echo".to_string();
    let mut args = json!({"message": "bench"});
    let mut expect = "Echo: bench".to_string();
    let mut label = None;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--gateway-url" => gateway_url = Some(val()?),
            "--tunnel-url" => tunnel_url = Some(val()?),
            "--ws" => ws = Some(val()?),
            "--tls" => tls_addr = Some(val()?),
            "--ca" => ca = Some(val()?),
            "--token" => token = Some(val()?),
            "--concurrency" => {
                concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--duration" => {
                duration =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--warmup" => {
                warmup =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--warmup: {e}"))?)
            }
            "--tool" => tool = val()?,
            "--args" => args = serde_json::from_str(&val()?).map_err(|e| format!("--args: {e}"))?,
            "--expect" => expect = val()?,
            "--label" => label = Some(val()?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if concurrency == 0 || concurrency > 256 {
        return Err("--concurrency must be 1..=256".into());
    }
    if duration > Duration::from_secs(300) || warmup > Duration::from_secs(60) {
        return Err("--duration is capped at 300 s and --warmup at 60 s".into());
    }
    let (mode, host, path, default_label) =
        match (gateway_url, tunnel_url, ws.or(tls_addr.clone()), ca) {
            (Some(url), None, None, None) => {
                let (authority, path) = split_url(&url, "http")?;
                let addr = loopback(&authority, "--gateway-url")?;
                (Mode::Gateway { addr }, authority, path, "gateway")
            }
            (None, Some(url), Some(ws), Some(ca)) => {
                let (authority, path) = split_url(&url, "https")?;
                let sni = authority
                    .rsplit_once(':')
                    .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                    .map_or(authority.as_str(), |(h, _)| h)
                    .to_string();
                let tls = tls_trusting(&ca)?;
                let mode = match tls_addr {
                    Some(addr) => Mode::Tls {
                        addr: loopback(&addr, "--tls")?,
                        sni,
                        tls,
                    },
                    None => Mode::Tunnel {
                        ws: loopback(&ws, "--ws")?,
                        sni,
                        tls,
                    },
                };
                (mode, authority, path, "tunnel")
            }
            _ => {
                return Err(
                "give either --gateway-url, or --tunnel-url with --ws and --ca (see the usage in \
                 tests/src/bin/tunnel-load.rs)"
                    .into(),
            );
            }
        };
    Ok(Args {
        mode,
        host,
        path,
        token,
        concurrency,
        duration,
        warmup,
        tool,
        args,
        expect,
        label: label.unwrap_or_else(|| default_label.to_string()),
    })
}

/// A WebSocket to `ws` carrying a byte stream in binary messages (two bounded pump tasks).
async fn websocket_bytes(ws: SocketAddr) -> Result<tokio::io::DuplexStream, String> {
    let tcp = TcpStream::connect(ws)
        .await
        .map_err(|e| format!("connect {ws}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let request = Request::builder()
        .uri(format!("ws://{ws}/"))
        .header("host", ws.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("sec-websocket-protocol", "cloudflared")
        .body(())
        .map_err(|e| format!("upgrade request: {e}"))?;
    let (stream, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| format!("WebSocket upgrade at {ws}: {e}"))?;
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (mut sink, mut source) = stream.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match far_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(msg) = source.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => Bytes::copy_from_slice(t.as_bytes()),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if far_write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = far_write.shutdown().await;
    });
    Ok(near)
}

async fn connect(mode: &Mode) -> Result<Sender, String> {
    let fut = async {
        match mode {
            Mode::Gateway { addr } => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(send)
            }
            Mode::Tunnel { ws, sni, tls } => {
                let bytes = websocket_bytes(*ws).await?;
                let name = ServerName::try_from(sni.clone())
                    .map_err(|e| format!("server name {sni:?}: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, bytes)
                    .await
                    .map_err(|e| format!("inner TLS handshake for {sni}: {e}"))?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(send)
            }
            Mode::Tls { addr, sni, tls } => {
                let tcp = TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let name = ServerName::try_from(sni.clone())
                    .map_err(|e| format!("server name {sni:?}: {e}"))?;
                let stream = tokio_rustls::TlsConnector::from(tls.clone())
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("inner TLS handshake for {sni}: {e}"))?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
                tokio::spawn(conn);
                Ok(send)
            }
        }
    };
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no connection within {STEP_TIMEOUT:?}"))?
}

struct Session {
    id: Option<String>,
    version: String,
}

async fn post(
    send: &mut Sender,
    a: &Args,
    session: Option<&Session>,
    body: &Value,
) -> Result<(u16, Option<String>, String), String> {
    let fut = async {
        send.ready().await.map_err(|e| format!("connection: {e}"))?;
        let session = session.map(|s| (s.id.as_deref(), s.version.as_str()));
        let req = airlock_e2e::mcp_post_request(
            &a.path,
            Some(&a.host),
            a.token.as_deref(),
            session,
            body,
        )?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        airlock_e2e::read_mcp_response(resp).await
    };
    tokio::time::timeout(STEP_TIMEOUT, fut)
        .await
        .map_err(|_| format!("no response within {STEP_TIMEOUT:?}"))?
}

async fn open_session(send: &mut Sender, a: &Args) -> Result<Session, String> {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "tunnel-load", "version": "0"}}});
    let (status, sid, body) = post(send, a, None, &init).await?;
    let resp = airlock_e2e::jsonrpc_response_for(&body, 0)
        .ok_or_else(|| format!("initialize: HTTP {status}, no response in {body:?}"))?;
    let version = resp["result"]["protocolVersion"]
        .as_str()
        .ok_or_else(|| format!("initialize failed: {resp}"))?
        .to_string();
    let s = Session { id: sid, version };
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = post(send, a, Some(&s), &note).await?;
    if !(200..300).contains(&status) {
        return Err(format!("notifications/initialized: HTTP {status} {body}"));
    }
    Ok(s)
}

struct Stats {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Stats {
    fn error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut g) = self.first_error.lock() {
            g.get_or_insert(e);
        }
    }
}

async fn worker(
    a: Arc<Args>,
    stats: Arc<Stats>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Vec<u32> {
    let mut lat_us = Vec::with_capacity(1 << 14);
    let mut send = match connect(&a.mode).await {
        Ok(s) => s,
        Err(e) => {
            stats.error(e);
            return lat_us;
        }
    };
    let session = match open_session(&mut send, &a).await {
        Ok(s) => s,
        Err(e) => {
            stats.error(e);
            return lat_us;
        }
    };
    let mut id: u64 = 1;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": a.tool, "arguments": a.args}});
        let t0 = Instant::now();
        let res = post(&mut send, &a, Some(&session), &call).await;
        let took = t0.elapsed();
        let good = match &res {
            Ok((200, _, body)) => airlock_e2e::jsonrpc_response_for(body, id).is_some_and(|v| {
                v["result"]["content"][0]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(&a.expect))
            }),
            _ => false,
        };
        if measuring.load(Ordering::Relaxed) {
            if good {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                lat_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            } else {
                stats.error(format!("{res:?}"));
            }
        }
        if res.is_err() {
            // The connection is gone: one worker, one connection; stop rather than spin.
            break;
        }
    }
    lat_us
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tunnel-load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tunnel-load: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(a))
}

async fn run(a: Args) -> ExitCode {
    let a = Arc::new(a);
    let stats = Arc::new(Stats {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for _ in 0..a.concurrency {
        handles.push(tokio::spawn(worker(
            a.clone(),
            stats.clone(),
            measuring.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(a.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(a.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        if let Ok(Ok(mut v)) = tokio::time::timeout(STEP_TIMEOUT, h).await {
            lat.append(&mut v);
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i.min(lat.len() - 1)]) / 1000.0
    };
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let first_error = stats.first_error.lock().ok().and_then(|g| g.clone());
    let mode = match a.mode {
        Mode::Gateway { .. } => "gateway",
        Mode::Tunnel { .. } => "tunnel",
        Mode::Tls { .. } => "tls",
    };
    let out = json!({
        "label": a.label,
        "mode": mode,
        "host": a.host,
        "path": a.path,
        "concurrency": a.concurrency,
        "secs": secs,
        "ok": ok,
        "errors": errors,
        "rps": ok as f64 / secs,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "first_error": first_error,
    });
    println!("{out}");
    if ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
