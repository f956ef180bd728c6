//! Relay end to end: a real `airlock relay` node in its own process, tunnel tokens from the CLI,
//! a small relay-side "agent" (an [`airlock_relay::RelayLink`] with an inner-TLS echo server behind
//! it, in-process or as the `relay-echo-agent` binary) and inner-TLS clients that reach it through
//! the relay's public port trusting only that agent's CA.
//!
//! The echo agent speaks a line protocol inside the inner TLS session (each request one line,
//! at most 64 KiB):
//! * `ECHO <text>` → `<text>`
//! * `HOLD <text>` → nothing until the client sends `GO`, then `<text>` (keeps a request in
//!   flight, with its plaintext in the agent's memory, for as long as the client wants)
//! * `BULK <n>` → `n` bytes of data; the client hangs up once it has them all (throughput)
//! * `WAIT` → nothing until the client closes (an idle stream)

use std::fs;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_relay::{Identity, LinkOptions, NodeState, RelayLink, RelayNode};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector, client::TlsStream};

use crate::{TestHome, free_port, wait_for};

/// Longest request line the echo agent accepts.
pub const MAX_LINE: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// The relay node process
// ---------------------------------------------------------------------------------------

/// A running `airlock relay` node (killed on drop). Its ports are fixed at the first start so
/// a restart comes back on the same addresses.
#[derive(Debug)]
pub struct RelayProcess {
    child: Option<Child>,
    pub domain: String,
    pub state_dir: PathBuf,
    pub public: SocketAddr,
    pub tunnel: SocketAddr,
    pub ops: SocketAddr,
    /// Hex SHA-256 of the tunnel key's SPKI (what agents pin).
    pub pin: String,
    log: PathBuf,
    starts: u32,
    env: Vec<(String, PathBuf)>,
    bin: PathBuf,
    soft_nofile: Option<u64>,
}

/// A token from `airlock relay token create`.
#[derive(Debug, Clone)]
pub struct RelayToken {
    pub token: String,
    pub tunnel_id: String,
    pub tunnel_domain: String,
    pub jti: String,
}

impl RelayProcess {
    /// Starts `airlock relay --domain <domain>` with state in `<home>/relay-state`, all three
    /// listeners on free loopback ports, and waits for "relay node ready".
    pub fn start(home: &TestHome, domain: &str) -> Self {
        Self::start_with(home, domain, None)
    }

    /// Like [`start`](Self::start), with the soft open-file limit lowered to `soft_nofile`
    /// before the relay runs (through `sh -c 'ulimit -Sn N; exec …'`).
    pub fn start_with(home: &TestHome, domain: &str, soft_nofile: Option<u64>) -> Self {
        let state_dir = home.scratch().join("relay-state");
        let cmd = home.airlock();
        let mut p = Self {
            child: None,
            domain: domain.to_string(),
            state_dir,
            public: SocketAddr::from(([127, 0, 0, 1], free_port())),
            tunnel: SocketAddr::from(([127, 0, 0, 1], free_port())),
            ops: SocketAddr::from(([127, 0, 0, 1], free_port())),
            pin: String::new(),
            log: home.scratch().join("relay.log"),
            starts: 0,
            env: home.env(),
            bin: PathBuf::from(cmd.get_program()),
            soft_nofile,
        };
        p.spawn();
        p
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "the relay is already running");
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let before = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let mut cmd = match self.soft_nofile {
            Some(n) => {
                let mut c = std::process::Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -Sn {n} && exec \"$0\" \"$@\""))
                    .arg(&self.bin);
                c
            }
            None => std::process::Command::new(&self.bin),
        };
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.args(["relay", "--domain", &self.domain])
            .arg("--public")
            .arg(self.public.to_string())
            .arg("--tunnel")
            .arg(self.tunnel.to_string())
            .arg("--ops")
            .arg(self.ops.to_string())
            .arg("--state")
            .arg(&self.state_dir)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start `airlock relay`: {e}"));
        self.child = Some(child);
        let log_path = self.log.clone();
        let line = wait_for(
            Duration::from_secs(60),
            "`airlock relay` to log \"relay node ready\"",
            || {
                let text = fs::read(&log_path).ok()?;
                let text = String::from_utf8_lossy(text.get(before as usize..)?).into_owned();
                text.lines()
                    .find(|l| l.contains("relay node ready"))
                    .map(str::to_string)
            },
        );
        let pin = line
            .split("pin=")
            .nth(1)
            .and_then(|s| s.get(..64))
            .unwrap_or_else(|| panic!("no pin in the ready line: {line}"));
        self.pin = pin.to_string();
    }

    /// The node's pid.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(Child::id)
            .expect("the relay is not running")
    }

    /// The pin as bytes.
    pub fn pin_bytes(&self) -> [u8; 32] {
        let v = hex_decode(&self.pin);
        v.try_into().expect("the pin is 32 bytes")
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the node again on the same ports and state (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Everything the node logged (all runs).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// `airlock relay token create` against this node's state dir.
    pub fn create_token(&self, home: &TestHome, name: &str) -> RelayToken {
        let state = self.state_dir.display().to_string();
        let out = home.cli(&[
            "relay",
            "token",
            "create",
            "--domain",
            &self.domain,
            "--name",
            name,
            "--state",
            &state,
        ]);
        out.assert_success("airlock relay token create");
        let v = out.json();
        let s = |k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("token create printed no {k}: {v}"))
                .to_string()
        };
        RelayToken {
            token: s("token"),
            tunnel_id: s("tunnel_id"),
            tunnel_domain: s("tunnel_domain"),
            jti: s("jti"),
        }
    }

    /// `GET /metrics` on the ops port, as `name → value`.
    pub fn metrics(&self) -> std::collections::HashMap<String, f64> {
        let mut out = std::collections::HashMap::new();
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&self.ops, Duration::from_secs(10))
        else {
            return out;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
        let _ = std::io::Write::write_all(
            &mut s,
            b"GET /metrics HTTP/1.1\r\nhost: ops\r\nconnection: close\r\n\r\n",
        );
        let mut body = String::new();
        let _ = s.read_to_string(&mut body);
        for line in body.lines().filter(|l| !l.starts_with('#')) {
            if let Some((k, v)) = line.split_once(' ')
                && let Ok(v) = v.trim().parse()
            {
                out.insert(k.to_string(), v);
            }
        }
        out
    }

    /// Resident set size of the node (kB), from /proc.
    pub fn rss_kb(&self) -> u64 {
        rss_kb(self.pid())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// (soft, hard) `Max open files` of a process, from /proc (`None` when unreadable).
pub fn nofile_limits(pid: u32) -> Option<(String, String)> {
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut it = line.trim_start_matches("Max open files").split_whitespace();
    Some((it.next()?.to_string(), it.next()?.to_string()))
}

/// `VmRSS` of a process in kB (0 when it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// Lowercase/uppercase hex to bytes (panics on bad input: test data).
pub fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .unwrap_or_else(|| panic!("not hex: {s}"))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The inner TLS: a CA per tunnel domain, the echo server, clients
// ---------------------------------------------------------------------------------------

/// A CA constrained to one tunnel domain and a server certificate for `*.<domain>`.
#[derive(Debug, Clone)]
pub struct InnerPki {
    pub ca_pem: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl InnerPki {
    pub fn generate(tunnel_domain: &str) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let (ca, key) = airlock_pki::CertificateAuthority::generate(
            tunnel_domain,
            now,
            time::Duration::days(1),
        )
        .expect("generate a CA");
        let ca = airlock_pki::CertificateAuthority::from_parts(&ca.pem, key.expose())
            .expect("load the CA");
        let leaf = ca
            .issue_server(now, time::Duration::days(1))
            .expect("issue a server certificate");
        Self {
            ca_pem: ca.cert().pem.clone(),
            chain_pem: leaf.chain_pem,
            key_pem: leaf.key_pem.expose().to_string(),
        }
    }

    /// A TLS server config presenting the server certificate (HTTP/1.1-free: raw lines).
    pub fn acceptor(&self) -> TlsAcceptor {
        let chain = CertificateDer::pem_slice_iter(self.chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("parse the chain");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("parse the key");
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        TlsAcceptor::from(Arc::new(cfg))
    }
}

/// A TLS client config that trusts only `ca_pem` (nothing from the system or webpki roots).
pub fn client_trusting(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(c.expect("CA PEM parses"))
            .expect("CA certificate is usable as a root");
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// TCP to `addr` from `source` (any port), with a deadline.
pub async fn tcp_from(source: Option<IpAddr>, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    tokio::time::timeout(Duration::from_secs(30), sock.connect(addr))
        .await
        .map_err(|_| std::io::Error::other(format!("connect to {addr} timed out")))?
}

/// The `n`-th loopback source address after 127.0.0.1 (127.0.0.2, …, 127.0.1.0, …): a
/// distinct client IP for per-IP limits.
pub fn loopback_source(n: u32) -> IpAddr {
    let base = u32::from(Ipv4Addr::new(127, 0, 0, 2));
    IpAddr::V4(Ipv4Addr::from(base + n))
}

/// Inner TLS through the relay's public port: SNI `host`, trusting only `tls`'s roots.
pub async fn inner_tls(
    public: SocketAddr,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
    source: Option<IpAddr>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(source, public).await?;
    let _ = tcp.set_nodelay(true);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| std::io::Error::other(format!("bad name {host}: {e}")))?;
    tokio::time::timeout(
        Duration::from_secs(30),
        TlsConnector::from(tls).connect(name, tcp),
    )
    .await
    .map_err(|_| std::io::Error::other("inner TLS handshake timed out"))?
}

/// Sends one request line and reads one response line (bounded by `timeout`).
pub async fn request_line<S>(io: &mut S, line: &str, timeout: Duration) -> std::io::Result<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    io.write_all(format!("{line}\n").as_bytes()).await?;
    io.flush().await?;
    read_line(io, timeout).await
}

/// Reads one `\n`-terminated line (without it), byte by byte (no read-ahead is lost).
pub async fn read_line<S>(io: &mut S, timeout: Duration) -> std::io::Result<String>
where
    S: AsyncRead + Unpin,
{
    let fut = async {
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        loop {
            let n = io.read(&mut b).await?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed after {:?}",
                        String::from_utf8_lossy(&out)
                    ),
                ));
            }
            if b[0] == b'\n' {
                return Ok(String::from_utf8_lossy(&out).into_owned());
            }
            out.push(b[0]);
            if out.len() > MAX_LINE {
                return Err(std::io::Error::other("response line too long"));
            }
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in time"))?
}

/// One ECHO round trip through the relay on a fresh connection.
pub async fn echo_once(
    public: SocketAddr,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
    text: &str,
    timeout: Duration,
) -> Result<(), String> {
    let fut = async {
        let mut s = inner_tls(public, host, tls, None)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let got = request_line(&mut s, &format!("ECHO {text}"), timeout)
            .await
            .map_err(|e| format!("echo: {e}"))?;
        if got == text {
            Ok(())
        } else {
            Err(format!("echoed {got:?}, expected {text:?}"))
        }
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("echo through the relay took over {timeout:?}"))?
}

/// Serves the echo protocol on an accepted inner TLS session.
pub async fn serve_echo<S>(io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut io = BufReader::new(io);
    let mut held: Option<String> = None;
    loop {
        let mut line = String::new();
        let n = match (&mut io).take(MAX_LINE as u64).read_line(&mut line).await {
            Ok(n) => n,
            Err(_) => return,
        };
        if n == 0 || !line.ends_with('\n') {
            return;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        let (cmd, arg) = line.split_once(' ').unwrap_or((line, ""));
        let reply = match cmd {
            "ECHO" => Some(arg.to_string()),
            "HOLD" => {
                held = Some(arg.to_string());
                None
            }
            "GO" => held.take(),
            "BULK" => {
                let Ok(mut left) = arg.parse::<u64>() else {
                    return;
                };
                let chunk = vec![0x5au8; 64 * 1024];
                while left > 0 {
                    let k = left.min(chunk.len() as u64) as usize;
                    if io.get_mut().write_all(&chunk[..k]).await.is_err() {
                        return;
                    }
                    left -= k as u64;
                }
                let _ = io.get_mut().flush().await;
                // The client hangs up once it has every byte; close only then (a mux stream
                // dropped before the peer finished is reset, and the reset could overtake the
                // tail of the data).
                let _ = tokio::time::timeout(Duration::from_secs(30), async {
                    let mut sink = [0u8; 1024];
                    while matches!(io.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
                let _ = io.get_mut().shutdown().await;
                return;
            }
            "WAIT" => None,
            _ => return,
        };
        if let Some(r) = reply {
            let w = io.get_mut();
            if w.write_all(format!("{r}\n").as_bytes()).await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The echo agent (in-process)
// ---------------------------------------------------------------------------------------

/// A relay-side agent: a [`RelayLink`] to one node whose streams end in an inner-TLS echo
/// server for `*.<tunnel_domain>`, plus the same echo server on a direct loopback port.
pub struct EchoAgent {
    link: Option<RelayLink>,
    pub pki: InnerPki,
    pub tunnel_domain: String,
    /// The echo server without the relay (direct inner TLS on loopback).
    pub direct: SocketAddr,
    direct_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for EchoAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EchoAgent")
            .field("tunnel_domain", &self.tunnel_domain)
            .finish_non_exhaustive()
    }
}

/// Options for [`EchoAgent::start`].
#[derive(Debug, Clone)]
pub struct EchoAgentOptions {
    pub link: LinkOptions,
    /// A fixed client identity (the same key across restarts); `None` = a fresh key.
    pub identity: Option<Identity>,
    /// Connections to the node (each carries at most the relay's `max_streams` streams).
    pub connections: usize,
}

impl Default for EchoAgentOptions {
    fn default() -> Self {
        // Reconnect quickly in tests (the policy itself is unit-tested in the relay crate).
        let link = LinkOptions {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(500),
            ..LinkOptions::default()
        };
        Self {
            link,
            identity: None,
            connections: 1,
        }
    }
}

impl EchoAgent {
    /// Connects to `tunnel` (pinned to `pin`) with `token`; the inner TLS serves `tunnel_domain`.
    pub async fn start(
        tunnel: SocketAddr,
        pin: [u8; 32],
        token: &str,
        tunnel_domain: &str,
        opts: EchoAgentOptions,
    ) -> Self {
        let pki = InnerPki::generate(tunnel_domain);
        let acceptor = pki.acceptor();
        let identity = match opts.identity {
            Some(i) => i,
            None => {
                Identity::generate_self_signed(vec!["agent.invalid".into()])
                    .expect("agent identity")
                    .0
            }
        };
        let a = acceptor.clone();
        let node = RelayNode {
            addr: tunnel.to_string(),
            spki_sha256: Some(pin),
            token: token.to_string(),
        };
        let link = RelayLink::start(
            vec![node; opts.connections.max(1)],
            identity,
            opts.link,
            move |stream, _sni, _client| {
                let a = a.clone();
                tokio::spawn(async move {
                    if let Ok(Ok(tls)) =
                        tokio::time::timeout(Duration::from_secs(30), a.accept(stream)).await
                    {
                        serve_echo(tls).await;
                    }
                });
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the direct echo port");
        let direct = listener.local_addr().expect("direct echo address");
        let direct_task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let a = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = a.accept(tcp).await {
                        serve_echo(tls).await;
                    }
                });
            }
        });
        Self {
            link: Some(link),
            pki,
            tunnel_domain: tunnel_domain.to_string(),
            direct,
            direct_task,
        }
    }

    /// The link's node state.
    pub fn state(&self) -> NodeState {
        self.link
            .as_ref()
            .and_then(|l| l.status().borrow().first().map(|s| s.state.clone()))
            .unwrap_or(NodeState::Stopped)
    }

    /// Waits until the link is connected (panics after `timeout` with the last state).
    pub async fn connected(&self, timeout: Duration) {
        let Some(link) = &self.link else {
            panic!("the echo agent is stopped")
        };
        let mut rx = link.status();
        let r = tokio::time::timeout(timeout, async {
            loop {
                if rx
                    .borrow_and_update()
                    .iter()
                    .all(|s| matches!(s.state, NodeState::Connected { .. }))
                {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if r.is_err() {
            panic!(
                "the echo agent did not connect within {timeout:?}: {:?}",
                self.state()
            );
        }
    }

    /// A client config trusting only this agent's CA.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        client_trusting(&self.pki.ca_pem)
    }

    /// `echo.<tunnel_domain>`.
    pub fn host(&self) -> String {
        format!("echo.{}", self.tunnel_domain)
    }

    pub async fn stop(mut self) {
        self.direct_task.abort();
        if let Some(l) = self.link.take() {
            l.stop().await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Separate processes: the echo agent binary, core dumps
// ---------------------------------------------------------------------------------------

/// `gcore` of `pid` into `dir`; returns the core file's path.
pub fn gcore(pid: u32, dir: &Path, name: &str) -> PathBuf {
    let prefix = dir.join(name);
    let out = std::process::Command::new("gcore")
        .arg("-o")
        .arg(&prefix)
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run gcore ({e}); install gdb (scripts/test installs it)")
        });
    let core = dir.join(format!("{name}.{pid}"));
    assert!(
        core.is_file(),
        "gcore {pid} wrote no {}: {}\n{}",
        core.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    core
}

/// Whether `needle` occurs in the file (streamed, in 1 MiB windows with overlap).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; 1 << 20];
    let keep = needle.len().saturating_sub(1);
    let mut filled = 0;
    loop {
        let n = f
            .read(&mut buf[filled..])
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        if n == 0 {
            return false;
        }
        let end = filled + n;
        if buf[..end].windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let tail = end.saturating_sub(keep);
        buf.copy_within(tail..end, 0);
        filled = end - tail;
    }
}

/// Waits (polling) until `f` holds, up to `timeout`; returns how long it took.
pub fn elapsed_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if f() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}
