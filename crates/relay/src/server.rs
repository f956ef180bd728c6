//! The relay server: tunnel listener (agents, mutual TLS 1.3 + proto mux), public listener
//! (SNI passthrough into agent streams) and an ops listener (`/healthz`, `/metrics`).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use airlock_mux::airlock_proto::frame::reject;
use airlock_mux::{MuxHandle, accept_agent};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::sni::{ClientHelloParser, DEFAULT_MAX_CLIENT_HELLO, Parsed};
use crate::tls;
use crate::token::{TokenAuthority, TokenError};

/// Relay settings. `Default` binds everything to loopback on ephemeral ports.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Private state: operator key, tunnel cert/key, token bindings, revocation file.
    pub state_dir: PathBuf,
    /// Tunnels live at `<tunnel_id>.<base_domain>`.
    pub base_domain: String,
    /// Where agents connect (mutual TLS 1.3).
    pub tunnel_listen: SocketAddr,
    /// Where public clients connect (raw TLS, routed by SNI).
    pub public_listen: SocketAddr,
    /// `/healthz` + `/metrics` (plain HTTP; keep it private).
    pub ops_listen: Option<SocketAddr>,
    /// DNS names in the self-signed tunnel certificate (agents pin its key, not its name).
    pub tunnel_cert_names: Vec<String>,
    /// Verify-only node: the operator public key. `None` = use (or create) the operator
    /// signing key in `state_dir`.
    pub operator_public_key: Option<[u8; 32]>,
    /// Revocation file (default `<state_dir>/revoked-tokens.txt`), re-read when it changes.
    pub revocation_file: Option<PathBuf>,
    /// How often the revocation file is checked.
    pub revocation_reload: Duration,
    /// Time a public client gets to send its whole ClientHello.
    pub client_hello_timeout: Duration,
    /// Most raw bytes buffered while reading a ClientHello.
    pub max_client_hello: usize,
    /// Concurrent public connections per client IP.
    pub max_conns_per_ip: usize,
    /// Public connections still sending their ClientHello, from all addresses together (a
    /// slowloris from many addresses is bounded too; routed connections do not count).
    pub max_pending_hellos: usize,
    /// TLS + HELLO deadline for agents.
    pub agent_handshake_timeout: Duration,
    /// How long shutdown waits for in-flight streams after GOAWAY.
    pub drain_timeout: Duration,
    /// Optional per-hostname client IP allowlist (key: an exact SNI or a tunnel domain).
    pub allowlists: HashMap<String, Vec<IpNet>>,
    /// Optional new-connection rate limit per tunnel domain.
    pub rate_limit: Option<RateLimit>,
    /// Mux settings (windows, stream limit, keepalive).
    pub mux: airlock_mux::airlock_proto::Config,
}

impl RelayConfig {
    /// Loopback defaults with the given state dir and base domain.
    pub fn new(state_dir: PathBuf, base_domain: &str) -> Self {
        let lo: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            state_dir,
            base_domain: base_domain.trim_end_matches('.').to_ascii_lowercase(),
            tunnel_listen: lo,
            public_listen: lo,
            ops_listen: None,
            tunnel_cert_names: vec![format!("relay.{}", base_domain.trim_end_matches('.'))],
            operator_public_key: None,
            revocation_file: None,
            revocation_reload: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(10),
            max_client_hello: DEFAULT_MAX_CLIENT_HELLO,
            max_conns_per_ip: 64,
            max_pending_hellos: 4096,
            agent_handshake_timeout: Duration::from_secs(15),
            drain_timeout: Duration::from_secs(30),
            allowlists: HashMap::new(),
            rate_limit: None,
            mux: airlock_mux::airlock_proto::Config::default(),
        }
    }
}

/// Token bucket parameters.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: f64,
    pub burst: u32,
}

/// An IP network (`10.0.0.0/8`, `2001:db8::/32` or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// Relay start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("tunnel TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("tokens: {0}")]
    Token(#[from] TokenError),
    #[error("state dir {path}: {source}")]
    StateDir {
        path: String,
        source: std::io::Error,
    },
    #[error("background task failed: {0}")]
    Join(String),
}

#[derive(Default)]
struct Metrics {
    agent_connections_total: AtomicU64,
    agents_connected: AtomicU64,
    agent_rejects_total: AtomicU64,
    public_connections_total: AtomicU64,
    public_rejects_total: AtomicU64,
    streams_total: AtomicU64,
    streams_active: AtomicU64,
    bytes_to_agent_total: AtomicU64,
    bytes_from_agent_total: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}
fn dec(c: &AtomicU64) {
    c.fetch_sub(1, Ordering::Relaxed);
}

impl Metrics {
    fn render(&self) -> String {
        let mut s = String::new();
        let rows: [(&str, &str, &AtomicU64, &str); 9] = [
            (
                "airlock_relay_agent_connections_total",
                "counter",
                &self.agent_connections_total,
                "Agent connections accepted (TCP)",
            ),
            (
                "airlock_relay_agents_connected",
                "gauge",
                &self.agents_connected,
                "Agent connections registered now",
            ),
            (
                "airlock_relay_agent_rejects_total",
                "counter",
                &self.agent_rejects_total,
                "Agent connections refused (TLS, handshake or token)",
            ),
            (
                "airlock_relay_public_connections_total",
                "counter",
                &self.public_connections_total,
                "Public connections accepted",
            ),
            (
                "airlock_relay_public_rejects_total",
                "counter",
                &self.public_rejects_total,
                "Public connections closed before routing (bad ClientHello, unknown SNI, limits)",
            ),
            (
                "airlock_relay_streams_total",
                "counter",
                &self.streams_total,
                "Streams opened to agents",
            ),
            (
                "airlock_relay_streams_active",
                "gauge",
                &self.streams_active,
                "Streams open now",
            ),
            (
                "airlock_relay_bytes_to_agent_total",
                "counter",
                &self.bytes_to_agent_total,
                "Bytes from public clients to agents",
            ),
            (
                "airlock_relay_bytes_from_agent_total",
                "counter",
                &self.bytes_from_agent_total,
                "Bytes from agents to public clients",
            ),
        ];
        for (name, kind, v, help) in rows {
            s.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        s
    }
}

struct Agent {
    id: u64,
    jti: String,
    handle: MuxHandle,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

struct State {
    cfg: RelayConfig,
    auth: Arc<TokenAuthority>,
    tunnels: Mutex<HashMap<String, Vec<Agent>>>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    pending_hellos: Arc<tokio::sync::Semaphore>,
    buckets: Mutex<HashMap<String, Bucket>>,
    metrics: Metrics,
    next_id: AtomicU64,
    rr: AtomicU64,
    shutting_down: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A bound relay, ready to [`run`](Relay::run).
pub struct Relay {
    state: Arc<State>,
    tunnel: TcpListener,
    public: TcpListener,
    ops: Option<TcpListener>,
    acceptor: TlsAcceptor,
    spki: [u8; 32],
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("tunnel", &self.tunnel.local_addr().ok())
            .field("public", &self.public.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// Loads (or creates) the state dir, binds the listeners and raises RLIMIT_NOFILE.
    pub async fn bind(cfg: RelayConfig) -> Result<Self, RelayError> {
        match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => tracing::debug!(nofile = n, "raised the open-file limit"),
            Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
        }
        let c = cfg.clone();
        let (auth, identity) = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(&c.state_dir).map_err(|source| RelayError::StateDir {
                path: c.state_dir.display().to_string(),
                source,
            })?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let _ =
                    std::fs::set_permissions(&c.state_dir, std::fs::Permissions::from_mode(0o700));
            }
            let mut auth = match c.operator_public_key {
                Some(pk) => TokenAuthority::with_public_key(pk, &c.state_dir, &c.base_domain)?,
                None => TokenAuthority::open(&c.state_dir, &c.base_domain)?,
            };
            if let Some(p) = &c.revocation_file {
                auth.set_revocation_file(p.clone())?;
            }
            let id = tls::load_or_create_server_identity(&c.state_dir, &c.tunnel_cert_names)?;
            Ok::<_, RelayError>((auth, id))
        })
        .await
        .map_err(|e| RelayError::Join(e.to_string()))??;
        let spki = identity.spki_sha256()?;
        let acceptor = TlsAcceptor::from(Arc::new(tls::server_config(&identity)?));
        let bind = |what, addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| RelayError::Bind { what, addr, source })
        };
        let tunnel = bind("tunnel", cfg.tunnel_listen).await?;
        let public = bind("public", cfg.public_listen).await?;
        let ops = match cfg.ops_listen {
            Some(a) => Some(bind("ops", a).await?),
            None => None,
        };
        let max_pending_hellos = cfg.max_pending_hellos;
        Ok(Self {
            state: Arc::new(State {
                cfg,
                auth: Arc::new(auth),
                tunnels: Mutex::new(HashMap::new()),
                per_ip: Mutex::new(HashMap::new()),
                pending_hellos: Arc::new(tokio::sync::Semaphore::new(max_pending_hellos.max(1))),
                buckets: Mutex::new(HashMap::new()),
                metrics: Metrics::default(),
                next_id: AtomicU64::new(1),
                rr: AtomicU64::new(0),
                shutting_down: AtomicBool::new(false),
            }),
            tunnel,
            public,
            ops,
            acceptor,
            spki,
        })
    }

    pub fn tunnel_addr(&self) -> SocketAddr {
        self.tunnel
            .local_addr()
            .unwrap_or(self.state.cfg.tunnel_listen)
    }

    pub fn public_addr(&self) -> SocketAddr {
        self.public
            .local_addr()
            .unwrap_or(self.state.cfg.public_listen)
    }

    pub fn ops_addr(&self) -> Option<SocketAddr> {
        self.ops.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// SHA-256 of the tunnel certificate's SPKI: what agents pin.
    pub fn tunnel_spki_sha256(&self) -> [u8; 32] {
        self.spki
    }

    /// The token authority (create / revoke tokens).
    pub fn authority(&self) -> Arc<TokenAuthority> {
        self.state.auth.clone()
    }

    /// Serves until `shutdown` resolves, then drains: GOAWAY to every agent, in-flight
    /// streams get up to `drain_timeout`, then everything is closed.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), RelayError> {
        let Relay {
            state,
            tunnel,
            public,
            ops,
            acceptor,
            ..
        } = self;
        let tracker = TaskTracker::new();
        let cancel = CancellationToken::new();
        tracker.spawn(reload_revocations(state.clone(), cancel.clone()));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                r = tunnel.accept() => match r {
                    Ok((tcp, peer)) => {
                        inc(&state.metrics.agent_connections_total);
                        tracker.spawn(serve_agent(state.clone(), acceptor.clone(), tcp, peer, cancel.clone()));
                    }
                    Err(e) => accept_backoff("tunnel", e).await,
                },
                r = public.accept() => match r {
                    Ok((tcp, peer)) => {
                        inc(&state.metrics.public_connections_total);
                        match IpGuard::acquire(&state, peer.ip()) {
                            Some(guard) => {
                                tracker.spawn(serve_public(state.clone(), tcp, peer, guard, cancel.clone()));
                            }
                            None => {
                                inc(&state.metrics.public_rejects_total);
                                tracing::info!(client = %peer, "per-IP connection cap reached; closed");
                                drop(tcp);
                            }
                        }
                    }
                    Err(e) => accept_backoff("public", e).await,
                },
                r = accept_opt(&ops) => match r {
                    Ok((tcp, _)) => { tracker.spawn(serve_ops(state.clone(), tcp, cancel.clone())); }
                    Err(e) => accept_backoff("ops", e).await,
                },
            }
        }
        drop((tunnel, public, ops));
        tracing::info!("relay shutting down: GOAWAY to every agent");
        state.shutting_down.store(true, Ordering::SeqCst);
        for agents in lock(&state.tunnels).values() {
            for a in agents {
                a.handle.go_away("relay shutting down");
            }
        }
        cancel.cancel();
        tracker.close();
        if tokio::time::timeout(state.cfg.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("drain timeout: closing the remaining agent connections");
            for agents in lock(&state.tunnels).values() {
                for a in agents {
                    a.handle.abort();
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
        }
        Ok(())
    }
}

async fn accept_opt(l: &Option<TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_backoff(what: &str, e: std::io::Error) {
    // EMFILE and friends: don't spin.
    tracing::warn!(listener = what, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn reload_revocations(state: Arc<State>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(state.cfg.revocation_reload) => {}
        }
        let auth = state.auth.clone();
        match tokio::task::spawn_blocking(move || auth.reload_revocations()).await {
            Ok(Ok(true)) => {
                tracing::info!("revocation list reloaded");
                // Cut live connections whose token was just revoked (abortive: the operator
                // revoked access, in-flight streams end too).
                for agents in lock(&state.tunnels).values() {
                    for a in agents.iter().filter(|a| state.auth.is_revoked(&a.jti)) {
                        tracing::info!(
                            tunnel_conn = a.id,
                            "token revoked: closing the agent connection"
                        );
                        a.handle.abort();
                    }
                }
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "revocation list reload failed"),
            Err(e) => tracing::warn!(error = %e, "revocation reload task failed"),
        }
    }
}

async fn serve_agent(
    state: Arc<State>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    cancel: CancellationToken,
) {
    let _ = tcp.set_nodelay(true);
    let deadline = state.cfg.agent_handshake_timeout;
    let tls = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(deadline, acceptor.accept(tcp)) => match r {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                inc(&state.metrics.agent_rejects_total);
                tracing::info!(agent = %peer, error = %e, "agent TLS handshake failed");
                return;
            }
            Err(_) => {
                inc(&state.metrics.agent_rejects_total);
                tracing::info!(agent = %peer, "agent TLS handshake timed out");
                return;
            }
        },
    };
    let spki = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| tls::spki_sha256(c).ok());
    let Some(spki) = spki else {
        inc(&state.metrics.agent_rejects_total);
        tracing::info!(agent = %peer, "agent presented no usable client certificate");
        return;
    };
    let pending = tokio::select! {
        _ = cancel.cancelled() => return,
        r = accept_agent(tls, state.cfg.mux.clone(), deadline) => match r {
            Ok(p) => p,
            Err(e) => {
                inc(&state.metrics.agent_rejects_total);
                tracing::info!(agent = %peer, error = %e, "agent handshake failed");
                return;
            }
        },
    };
    let token = String::from_utf8_lossy(pending.hello.token.as_bytes()).into_owned();
    let agent_name = pending.hello.agent_name.clone();
    let auth = state.auth.clone();
    let verdict =
        tokio::task::spawn_blocking(move || auth.verify_and_bind(&token, &spki, SystemTime::now()))
            .await;
    let claims = match verdict {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            inc(&state.metrics.agent_rejects_total);
            tracing::info!(agent = %peer, name = %agent_name, reason = %e, "agent rejected");
            pending.reject(reject::UNAUTHORIZED, &e.to_string()).await;
            return;
        }
        Err(e) => {
            inc(&state.metrics.agent_rejects_total);
            tracing::warn!(error = %e, "token check task failed");
            pending.reject(reject::OVERLOADED, "internal error").await;
            return;
        }
    };
    let domain = state.auth.tunnel_domain(&claims.tunnel_id);
    let session: [u8; 16] = rand::rng().random();
    let id = state.next_id.fetch_add(1, Ordering::Relaxed);
    let handle = {
        // Accepted and registered under one lock: the agent learns it is connected from the
        // accept, and a public connection it then expects to be routed must find it.
        let mut t = lock(&state.tunnels);
        let handle = match pending.accept(&domain, session) {
            Ok(h) => h,
            Err(e) => {
                drop(t);
                tracing::info!(agent = %peer, error = %e, "agent vanished during the handshake");
                return;
            }
        };
        t.entry(domain.clone()).or_default().push(Agent {
            id,
            jti: claims.jti.clone(),
            handle: handle.clone(),
        });
        handle
    };
    if state.shutting_down.load(Ordering::SeqCst) {
        handle.go_away("relay shutting down");
    }
    inc(&state.metrics.agents_connected);
    tracing::info!(agent = %peer, name = %agent_name, tunnel = %domain, "agent connected");
    let err = handle.closed().await;
    {
        let mut t = lock(&state.tunnels);
        if let Some(v) = t.get_mut(&domain) {
            v.retain(|a| a.id != id);
            if v.is_empty() {
                t.remove(&domain);
            }
        }
    }
    dec(&state.metrics.agents_connected);
    match err {
        None => tracing::info!(agent = %peer, tunnel = %domain, "agent disconnected"),
        Some(e) => {
            tracing::info!(agent = %peer, tunnel = %domain, error = %e, "agent connection lost")
        }
    }
}

/// Decrements the per-IP connection count on drop.
struct IpGuard {
    state: Arc<State>,
    ip: IpAddr,
}

impl IpGuard {
    fn acquire(state: &Arc<State>, ip: IpAddr) -> Option<Self> {
        let mut m = lock(&state.per_ip);
        let n = m.entry(ip).or_insert(0);
        if *n >= state.cfg.max_conns_per_ip {
            return None;
        }
        *n += 1;
        Some(Self {
            state: state.clone(),
            ip,
        })
    }
}

impl Drop for IpGuard {
    fn drop(&mut self) {
        let mut m = lock(&self.state.per_ip);
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

/// TLS alert `unrecognized_name` (fatal), sent before closing an unroutable connection.
const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70];

impl State {
    /// The tunnel domain for an SNI (`<tunnel_id>.<base>` or `<sub…>.<tunnel_id>.<base>`).
    fn tunnel_domain_for(&self, sni: &str) -> Option<String> {
        let base = &self.cfg.base_domain;
        let head = sni.strip_suffix(base.as_str())?.strip_suffix('.')?;
        let tid = head.rsplit('.').next()?;
        if tid.is_empty() {
            return None;
        }
        Some(format!("{tid}.{base}"))
    }

    /// A live connection of the tunnel (the one with the fewest streams).
    fn pick(&self, domain: &str) -> Vec<MuxHandle> {
        let t = lock(&self.tunnels);
        let mut v: Vec<(usize, MuxHandle)> = t
            .get(domain)
            .map(|agents| {
                agents
                    .iter()
                    .filter(|a| a.handle.is_open())
                    .map(|a| (a.handle.stream_count(), a.handle.clone()))
                    .collect()
            })
            .unwrap_or_default();
        // Fewest streams first; ties rotate so idle connections share new streams.
        if !v.is_empty() {
            let k = self.rr.fetch_add(1, Ordering::Relaxed) as usize % v.len();
            v.rotate_left(k);
        }
        v.sort_by_key(|(n, _)| *n);
        v.into_iter().map(|(_, h)| h).collect()
    }

    fn allowed(&self, sni: &str, domain: &str, ip: IpAddr) -> bool {
        let list = self
            .cfg
            .allowlists
            .get(sni)
            .or_else(|| self.cfg.allowlists.get(domain));
        match list {
            Some(nets) => nets.iter().any(|n| n.contains(ip)),
            None => true,
        }
    }

    fn take_token(&self, domain: &str) -> bool {
        let Some(rl) = self.cfg.rate_limit else {
            return true;
        };
        let now = Instant::now();
        let mut b = lock(&self.buckets);
        let bucket = b.entry(domain.to_owned()).or_insert(Bucket {
            tokens: f64::from(rl.burst),
            last: now,
        });
        let refill = now.duration_since(bucket.last).as_secs_f64() * rl.per_second;
        bucket.tokens = (bucket.tokens + refill).min(f64::from(rl.burst));
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

async fn serve_public(
    state: Arc<State>,
    mut tcp: TcpStream,
    peer: SocketAddr,
    guard: IpGuard,
    cancel: CancellationToken,
) {
    let _guard = guard;
    let Ok(hello_slot) = state.pending_hellos.clone().try_acquire_owned() else {
        inc(&state.metrics.public_rejects_total);
        tracing::info!(client = %peer, reason = "too many connections waiting for a ClientHello", "public connection refused");
        return;
    };
    let _ = tcp.set_nodelay(true);
    let started = Instant::now();
    let mut parser = ClientHelloParser::new(state.cfg.max_client_hello);
    let read_hello = async {
        let mut buf = [0u8; 2048];
        loop {
            let n = tcp.read(&mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return parser.finish().map_err(|e| e.to_string());
            }
            match parser.push(&buf[..n]) {
                Ok(Parsed::NeedMore) => continue,
                r => return r.map_err(|e| e.to_string()),
            }
        }
    };
    let parsed = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(state.cfg.client_hello_timeout, read_hello) => r,
    };
    let reject = |why: &str, sni: Option<&str>| {
        inc(&state.metrics.public_rejects_total);
        tracing::info!(client = %peer, sni = sni.unwrap_or("-"), reason = why, "public connection refused");
    };
    drop(hello_slot);
    let sni = match parsed {
        Ok(Ok(Parsed::Sni(s))) => s,
        Ok(Ok(_)) => {
            reject("ClientHello without SNI", None);
            let _ = tcp.write_all(&ALERT_UNRECOGNIZED_NAME).await;
            return;
        }
        Ok(Err(e)) => {
            reject(&e, None);
            return;
        }
        Err(_) => {
            reject("ClientHello deadline", None);
            return;
        }
    };
    let Some(domain) = state.tunnel_domain_for(&sni) else {
        reject("SNI outside the relay's base domain", Some(&sni));
        let _ = tcp.write_all(&ALERT_UNRECOGNIZED_NAME).await;
        return;
    };
    if !state.allowed(&sni, &domain, peer.ip()) {
        reject("client IP not in the hostname's allowlist", Some(&sni));
        return;
    }
    let handles = state.pick(&domain);
    if handles.is_empty() {
        reject("no agent connected for this tunnel", Some(&sni));
        let _ = tcp.write_all(&ALERT_UNRECOGNIZED_NAME).await;
        return;
    }
    if !state.take_token(&domain) {
        reject("tunnel connection rate limit", Some(&sni));
        return;
    }
    let mut stream = None;
    for h in handles {
        match h.open_stream(&sni, peer) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not open a stream; trying another connection")
            }
        }
    }
    let Some(mut stream) = stream else {
        reject("no agent connection accepts streams", Some(&sni));
        return;
    };
    inc(&state.metrics.streams_total);
    inc(&state.metrics.streams_active);
    let hello = parser.into_buffered();
    let res = match stream.write_all(&hello).await {
        Ok(()) => tokio::io::copy_bidirectional(&mut tcp, &mut stream)
            .await
            .map(|(up, down)| (up + hello.len() as u64, down)),
        Err(e) => Err(e),
    };
    dec(&state.metrics.streams_active);
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match res {
        Ok((up, down)) => {
            state
                .metrics
                .bytes_to_agent_total
                .fetch_add(up, Ordering::Relaxed);
            state
                .metrics
                .bytes_from_agent_total
                .fetch_add(down, Ordering::Relaxed);
            tracing::info!(client = %peer, sni = %sni, bytes_in = up, bytes_out = down, duration_ms = elapsed_ms, "public connection done");
        }
        Err(e) => {
            tracing::info!(client = %peer, sni = %sni, duration_ms = elapsed_ms, error = %e, "public connection ended with an error");
        }
    }
}

async fn serve_ops(state: Arc<State>, mut tcp: TcpStream, cancel: CancellationToken) {
    let read = async {
        let mut buf = Vec::with_capacity(1024);
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
            let n = tcp.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(buf)
    };
    let req = tokio::select! {
        _ = cancel.cancelled() => return,
        r = tokio::time::timeout(Duration::from_secs(5), read) => r,
    };
    let Ok(Some(req)) = req else { return };
    let line = req.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match (method, path) {
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n".to_owned()),
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4",
            state.metrics.render(),
        ),
        _ => ("404 Not Found", "text/plain", "not found\n".to_owned()),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tcp.write_all(resp.as_bytes()).await;
    let _ = tcp.shutdown().await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ipnet() {
        let n: IpNet = "10.1.0.0/16".parse().unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(n.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one: IpNet = "127.0.0.2".parse().unwrap();
        assert!(one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("127.0.0.3".parse().unwrap()));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("nope".parse::<IpNet>().is_err());
    }
}
