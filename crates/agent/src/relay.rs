//! The Airlock relay path: the agent keeps an outbound connection to every configured relay node (`[relay] nodes`)
//! — or, with nothing configured, to an **embedded relay** it runs on loopback — and every public connection the
//! relay splices in ends in an inner-TLS [`Terminator`] on this machine. The relay path and the Anthropic path share
//! one gateway.
//!
//! * Identity: the agent's mutual-TLS key (keystore entry `relay-identity-key`, self-signed certificate in
//!   `relay-identity-cert`), created on first use and stable across restarts (relay tokens bind to it).
//! * Token: `relay-token` (stored by `airlock tunnel login`), or `relay-embedded-token` (minted by the embedded relay
//!   for itself). The relay derives the tunnel domain `<tunnel-id>.<base>` from it; the agent learns it from WELCOME,
//!   keeps it in `[relay] tunnel_domain`, and serves `*.<tunnel domain>` from that domain's CA (`pki/<domain>/`).
//! * Embedded default: `airlock_relay::Relay` on 127.0.0.1 (state in `AIRLOCK_HOME/relay-embedded`, base domain
//!   [`EMBEDDED_BASE`]). `*.localhost` names do not resolve everywhere, so each exposed server also gets a loopback
//!   port (`[servers.<id>] local_port`) whose connections reach the relay behind a routing preface
//!   ([`airlock_relay::embedded`]) and end here in TLS with a certificate for `127.0.0.1` from the same CA:
//!   `https://127.0.0.1:<port>/mcp` works with only the Airlock CA trusted.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use airlock_gateway::{
    Arrival, Gateway, HostRoutes, IngressKind, Protection, ResourceServer, Site,
};
use airlock_ingress::{HostTable, InnerTls, Terminator};
use airlock_keystore::{Keystore, Secret};
use airlock_relay::{
    Identity, LinkOptions, MuxStream, NodeState, NodeStatus, RelayLink, RelayNode,
};
use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, Config, Edit};
use crate::error::AgentError;
use crate::pki_store::{PkiStore, Validity};
use crate::state::{AgentState, Event};

/// Keystore entry of the tunnel token for `[relay] nodes`.
pub const RELAY_TOKEN: &str = "relay-token";
/// Keystore entry of the token the embedded relay minted for this agent.
pub const EMBEDDED_TOKEN: &str = "relay-embedded-token";
const IDENTITY_KEY: &str = "relay-identity-key";
const IDENTITY_CERT: &str = "relay-identity-cert";
/// Base domain of the embedded relay: tunnels are `<tunnel-id>.airlock.localhost`.
pub const EMBEDDED_BASE: &str = "airlock.localhost";
/// Time a stream may wait for the inner-TLS terminator (the first WELCOME names the domain it needs).
const TERMINATOR_WAIT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
const RENEW_CHECK: Duration = Duration::from_secs(3600);

fn invalid(e: impl std::fmt::Display) -> AgentError {
    AgentError::Invalid(e.to_string())
}

/// The agent's mutual-TLS identity toward relays, created on first use (key in the keystore).
pub async fn identity(keystore: &Keystore) -> Result<Identity, AgentError> {
    let fail = |e: airlock_keystore::KeystoreError| {
        AgentError::Invalid(format!("relay identity in the keystore: {e}"))
    };
    let key = keystore.get(IDENTITY_KEY).await.map_err(fail)?;
    let cert = keystore.get(IDENTITY_CERT).await.map_err(fail)?;
    if let (Some(key), Some(cert)) = (key, cert)
        && let (Ok(key), Ok(cert)) = (key.expose_str(), cert.expose_str())
    {
        match Identity::from_pem(cert, key) {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::warn!(error = %e, "the stored relay identity is unusable; creating a new one (relay tokens bound to the old key must be re-issued)")
            }
        }
    }
    let (id, cert_pem, key_pem) =
        Identity::generate_self_signed(vec!["airlock-agent".into()]).map_err(invalid)?;
    // Key first: a certificate without its key would be useless after a crash in between.
    keystore
        .set(IDENTITY_KEY, &Secret::from(key_pem.as_str()))
        .await
        .map_err(fail)?;
    keystore
        .set(IDENTITY_CERT, &Secret::from(cert_pem.as_str()))
        .await
        .map_err(fail)?;
    tracing::info!("created the agent's relay identity (mutual-TLS key in the keystore)");
    Ok(id)
}

/// Where the embedded relay listens.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddedInfo {
    pub public_addr: SocketAddr,
    pub tunnel_addr: SocketAddr,
}

/// The running relay path.
pub struct RelayRuntime {
    /// `Some` when the agent runs the embedded relay.
    pub embedded: Option<EmbeddedInfo>,
    /// Port in relay URLs (443 is left out of URLs).
    pub public_port: u16,
    /// Per node (same order as the status): whether its key is pinned.
    pub pinned: Vec<bool>,
    domain: RwLock<Option<String>>,
    terminator: watch::Sender<Option<Terminator>>,
    local: Option<Arc<LocalRoutes>>,
    status: watch::Receiver<Vec<NodeStatus>>,
    link: Mutex<Option<RelayLink>>,
    pki_root: std::path::PathBuf,
}

impl std::fmt::Debug for RelayRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRuntime")
            .field("embedded", &self.embedded)
            .field("domain", &self.domain())
            .finish_non_exhaustive()
    }
}

impl RelayRuntime {
    /// The tunnel domain (`<tunnel-id>.<base>`), once known.
    pub fn domain(&self) -> Option<String> {
        self.domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `https://<label>.<tunnel domain>[:port]<path>`.
    pub fn url(&self, label: &str, path: &str) -> Option<String> {
        let domain = self.domain()?;
        Some(match self.public_port {
            443 => format!("https://{label}.{domain}{path}"),
            p => format!("https://{label}.{domain}:{p}{path}"),
        })
    }

    /// The CA file clients trust for relay URLs.
    pub fn ca_path(&self) -> Option<std::path::PathBuf> {
        Some(self.pki_root.join(self.domain()?).join("ca.pem"))
    }

    /// Whether servers get `https://127.0.0.1:<port>/…` URLs (embedded relay only).
    pub fn has_local_ports(&self) -> bool {
        self.local.is_some()
    }

    /// Connection state of every node.
    pub fn nodes(&self) -> Vec<NodeStatus> {
        self.status.borrow().clone()
    }

    /// Nodes connected now.
    pub fn connected(&self) -> usize {
        self.status
            .borrow()
            .iter()
            .filter(|n| matches!(n.state, NodeState::Connected { .. }))
            .count()
    }

    /// Replaces the routing table of the relay's terminator.
    pub fn set_hosts(&self, routes: &[(String, String)]) {
        let Some(domain) = self.domain() else { return };
        if let Some(t) = self.terminator.borrow().as_ref() {
            let mut table = HostTable::new(&domain);
            for (key, id) in routes {
                table.insert(key, id);
            }
            t.set_hosts(table);
        }
    }

    /// Makes the loopback port listeners match the exposed servers `(id, slug, configured port)`. Returns the ports
    /// newly chosen (to be kept in config.toml).
    pub async fn sync_local_ports(
        &self,
        wanted: &[(String, String, Option<u16>)],
    ) -> Vec<(String, u16)> {
        let (Some(local), Some(domain)) = (&self.local, self.domain()) else {
            return Vec::new();
        };
        local.sync(wanted, &domain).await
    }

    /// The loopback port of a server's `https://127.0.0.1:<port>/…` URL, while it is served.
    pub fn local_port(&self, slug: &str) -> Option<u16> {
        let local = self.local.as_ref()?;
        local.port_of(slug)
    }

    /// The `relay` object of `/v1/status`.
    pub fn status_json(&self, ca_fingerprint: Option<String>) -> serde_json::Value {
        let nodes: Vec<serde_json::Value> = self
            .nodes()
            .into_iter()
            .zip(self.pinned.iter().copied().chain(std::iter::repeat(true)))
            .map(|(n, pinned)| {
                let mut v = serde_json::to_value(&n).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("pinned".into(), pinned.into());
                }
                v
            })
            .collect();
        serde_json::json!({
            "mode": if self.embedded.is_some() { "embedded" } else { "nodes" },
            "tunnel_domain": self.domain(),
            "public_port": self.public_port,
            "connected": self.connected(),
            "nodes": nodes,
            "embedded": self.embedded,
            "ca_fingerprint": ca_fingerprint,
            "ca_file": self.ca_path(),
        })
    }

    fn set_domain(&self, domain: &str) {
        *self.domain.write().unwrap_or_else(|p| p.into_inner()) = Some(domain.to_string());
    }
}

/// Which relay, if any, this config asks for.
pub fn wanted(config: &Config) -> bool {
    !config.relay.nodes.is_empty() || config.relay.embedded_active(config.anthropic.is_some())
}

/// Starts the relay path (nodes from `[relay]`, else the embedded relay) and registers it in `state.relay`.
pub async fn start(
    state: &Arc<AgentState>,
    auth: ResourceServer,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    let config = state.config();
    let keystore = state.keystore.clone();
    let pki_root = state.home.root().join("pki");
    let identity = identity(&keystore).await?;

    let (nodes, embedded, domain, public_port, pinned) = if config.relay.nodes.is_empty() {
        let (node, info, domain) = start_embedded(state, &config, tasks, stop.clone()).await?;
        let port = info_port(&info);
        (vec![node], Some(info), Some(domain), port, vec![true])
    } else {
        let token = match keystore.get(RELAY_TOKEN).await {
            Ok(Some(t)) => t.expose_str().map(|t| t.trim().to_string()).map_err(|_| {
                invalid("the stored relay token is not text; run `airlock tunnel login` again")
            })?,
            Ok(None) => {
                return Err(AgentError::Invalid(
                    "[relay] nodes are configured but no relay token is stored: pipe the token from \
                     `airlock relay token create` into `airlock tunnel login --relay ADDR`"
                        .into(),
                ));
            }
            Err(e) => return Err(invalid(format!("reading the relay token: {e}"))),
        };
        let mut nodes = Vec::new();
        let mut pinned = Vec::new();
        for n in &config.relay.nodes {
            let pin = match &n.fingerprint {
                Some(f) => Some(config::parse_fingerprint(f)?),
                None => {
                    tracing::warn!(relay = %n.addr, "no fingerprint for this relay node: its key is not checked (add `fingerprint` from `airlock relay fingerprint`)");
                    None
                }
            };
            pinned.push(pin.is_some());
            nodes.push(RelayNode {
                addr: n.addr.clone(),
                spki_sha256: pin,
                token: token.clone(),
            });
        }
        (
            nodes,
            None,
            config.relay.tunnel_domain.clone(),
            config.relay.public_port.unwrap_or(443),
            pinned,
        )
    };

    let (term_tx, term_rx) = watch::channel(None);
    let local = match &embedded {
        Some(info) => {
            let domain = domain.clone().unwrap_or_default();
            let store = PkiStore::new(&pki_root, &domain, &keystore, Validity::default())?;
            let now = OffsetDateTime::now_utc();
            let ca = store.ensure_ca(now).await?.cert().fingerprint_sha256_hex();
            let cert = store.issue_loopback(now).await?;
            let tls = InnerTls::new(&cert.chain_pem, cert.key_pem.expose()).map_err(invalid)?;
            let ports: Arc<LocalPorts> = Arc::new(LocalPorts::default());
            let registered: Arc<dyn HostRoutes> = ports.clone();
            state.gateway.register_hosts(&registered);
            Some(Arc::new(LocalRoutes {
                gateway: state.gateway.clone(),
                ports,
                _registered: registered,
                tls,
                issued: Mutex::new((cert.not_after, ca)),
                auth: auth.clone(),
                relay_public: info.public_addr,
                listeners: tokio::sync::Mutex::new(HashMap::new()),
                by_slug: RwLock::new(HashMap::new()),
                stop: stop.child_token(),
            }))
        }
        None => None,
    };
    let ctx = Arc::new(StreamCtx {
        terminator: term_rx,
        local: local.clone(),
        domain: Arc::new(RwLock::new(domain.clone())),
    });
    let handler_ctx = ctx.clone();
    let link = RelayLink::start(
        nodes,
        identity,
        LinkOptions::default(),
        move |stream, sni, peer| {
            let ctx = handler_ctx.clone();
            tokio::spawn(async move { ctx.serve(stream, sni, peer).await });
        },
    );
    let runtime = Arc::new(RelayRuntime {
        embedded,
        public_port,
        pinned,
        domain: RwLock::new(None),
        terminator: term_tx,
        local,
        status: link.status(),
        link: Mutex::new(Some(link)),
        pki_root,
    });
    if let Some(d) = &domain {
        install_domain(state, &runtime, &ctx, d, &auth).await?;
    }
    if state.relay.set(runtime.clone()).is_err() {
        return Err(invalid("the relay path was started twice"));
    }
    tasks.spawn(watch_nodes(
        state.clone(),
        runtime.clone(),
        ctx,
        auth,
        stop.clone(),
    ));
    tasks.spawn(renew_loop(state.clone(), runtime.clone(), stop.clone()));
    let rt = runtime;
    tasks.spawn(async move {
        stop.cancelled().await;
        let link = rt.link.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(link) = link {
            link.stop().await;
        }
        if let Some(local) = &rt.local {
            local.stop.cancel();
        }
    });
    Ok(())
}

fn info_port(info: &EmbeddedInfo) -> u16 {
    info.public_addr.port()
}

/// Binds and runs the embedded relay; returns the node to connect to, its addresses and the tunnel domain.
async fn start_embedded(
    state: &Arc<AgentState>,
    config: &Config,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(RelayNode, EmbeddedInfo, String), AgentError> {
    let dir = state.home.root().join("relay-embedded");
    let mut cfg = airlock_relay::RelayConfig::new(dir, EMBEDDED_BASE);
    cfg.max_conns_per_ip = 4096;
    cfg.drain_timeout = Duration::from_secs(5);
    cfg.tunnel_cert_names = vec!["relay.airlock.localhost".into()];
    let wanted_port = config.relay.embedded_port.unwrap_or(0);
    cfg.public_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, wanted_port));
    let relay = match airlock_relay::Relay::bind(cfg.clone()).await {
        Ok(r) => r,
        Err(airlock_relay::RelayError::Bind { what: "public", .. }) if wanted_port != 0 => {
            tracing::warn!(
                port = wanted_port,
                "the embedded relay's port is taken; choosing another (relay URLs change)"
            );
            cfg.public_listen = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
            airlock_relay::Relay::bind(cfg).await.map_err(invalid)?
        }
        Err(e) => return Err(invalid(format!("embedded relay: {e}"))),
    };
    let authority = relay.authority();
    let keystore = state.keystore.clone();
    let stored = keystore
        .get(EMBEDDED_TOKEN)
        .await
        .map_err(|e| invalid(format!("reading the embedded relay token: {e}")))?
        .and_then(|s| s.expose_str().ok().map(|t| t.trim().to_string()));
    let auth = authority.clone();
    let (token, claims, fresh) = tokio::task::spawn_blocking(move || {
        if let Some(t) = stored
            && let Ok(claims) = auth.verify(&t, SystemTime::now())
        {
            return Ok((t, claims, false));
        }
        auth.create("embedded", None).map(|(t, c)| (t, c, true))
    })
    .await
    .map_err(invalid)?
    .map_err(|e| invalid(format!("embedded relay token: {e}")))?;
    if fresh {
        keystore
            .set(EMBEDDED_TOKEN, &Secret::from(token.as_str()))
            .await
            .map_err(|e| invalid(format!("storing the embedded relay token: {e}")))?;
    }
    let domain = authority.tunnel_domain(&claims.tunnel_id);
    let info = EmbeddedInfo {
        public_addr: relay.public_addr(),
        tunnel_addr: relay.tunnel_addr(),
    };
    if config.relay.embedded_port != Some(info.public_addr.port())
        || config.relay.embedded_domain.as_deref() != Some(domain.as_str())
    {
        let (port, d) = (info.public_addr.port(), domain.clone());
        state
            .edit_config(move |path| config::update(path, Edit::SetEmbedded { port, domain: &d }))
            .await?;
    }
    let node = RelayNode {
        addr: info.tunnel_addr.to_string(),
        spki_sha256: Some(relay.tunnel_spki_sha256()),
        token,
    };
    tracing::info!(public = %info.public_addr, tunnel = %info.tunnel_addr, %domain, "embedded relay listening on loopback");
    tasks.spawn(async move {
        if let Err(e) = relay.run(async move { stop.cancelled().await }).await {
            tracing::warn!(error = %e, "the embedded relay stopped");
        }
    });
    Ok((node, info, domain))
}

/// Issues (or loads) the server certificate for `domain` and makes it the terminator's.
async fn install_domain(
    state: &Arc<AgentState>,
    runtime: &RelayRuntime,
    ctx: &StreamCtx,
    domain: &str,
    auth: &ResourceServer,
) -> Result<(), AgentError> {
    let store = PkiStore::new(
        &runtime.pki_root,
        domain,
        &state.keystore,
        Validity::default(),
    )?;
    let domain = store.domain().to_string();
    let cert = store.server_cert(OffsetDateTime::now_utc()).await?;
    let tls = InnerTls::new(&cert.chain_pem, cert.key_pem.expose()).map_err(invalid)?;
    let terminator = Terminator::new(
        state.gateway.clone(),
        tls,
        HostTable::new(&domain),
        Protection::OAuth(auth.clone()),
    )
    .with_ingress(IngressKind::Relay);
    runtime.set_domain(&domain);
    *ctx.domain.write().unwrap_or_else(|p| p.into_inner()) = Some(domain.clone());
    let old = runtime.terminator.send_replace(Some(terminator));
    if let Some(old) = old {
        old.shutdown();
    }
    tracing::info!(%domain, "relay inner TLS ready");
    Ok(())
}

/// Publishes node state changes as events; adopts the tunnel domain a relay assigns.
async fn watch_nodes(
    state: Arc<AgentState>,
    runtime: Arc<RelayRuntime>,
    ctx: Arc<StreamCtx>,
    auth: ResourceServer,
    stop: CancellationToken,
) {
    let mut rx = runtime.status.clone();
    loop {
        let nodes = rx.borrow_and_update().clone();
        let assigned = nodes.iter().find_map(|n| match &n.state {
            NodeState::Connected { tunnel_domain, .. } => Some(tunnel_domain.clone()),
            _ => None,
        });
        if let Some(d) = assigned
            && runtime.domain().as_deref() != Some(d.as_str())
        {
            match install_domain(&state, &runtime, &ctx, &d, &auth).await {
                Ok(()) => {
                    let domain = d.clone();
                    if runtime.embedded.is_none()
                        && let Err(e) = state
                            .edit_config(move |path| {
                                config::update(path, Edit::SetRelayDomain(&domain))
                            })
                            .await
                    {
                        tracing::warn!(error = %e, "could not record the tunnel domain in config.toml");
                    }
                    state.reconcile().await;
                    state.emit(Event::ServersChanged);
                }
                Err(e) => {
                    tracing::warn!(domain = %d, error = %e, "cannot serve the relay's tunnel domain")
                }
            }
        }
        state.emit(Event::Relay { nodes });
        tokio::select! {
            _ = stop.cancelled() => return,
            r = rx.changed() => if r.is_err() { return },
        }
    }
}

/// Renews the relay server certificate (stored, from the domain's CA) and the in-memory loopback certificate.
async fn renew_loop(state: Arc<AgentState>, runtime: Arc<RelayRuntime>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RENEW_CHECK) => {}
        }
        if let Err(e) = reload_certificates(&state, &runtime).await {
            tracing::warn!(error = %e, "relay certificate renewal failed; retrying");
        }
    }
}

/// Reloads the relay certificates from the PKI store (after a CA rotation or when renewal is due).
pub async fn reload_certificates(
    state: &AgentState,
    runtime: &RelayRuntime,
) -> Result<bool, AgentError> {
    let Some(domain) = runtime.domain() else {
        return Ok(false);
    };
    let now = OffsetDateTime::now_utc();
    let store = PkiStore::new(
        &runtime.pki_root,
        &domain,
        &state.keystore,
        Validity::default(),
    )?;
    let mut changed = false;
    let current = runtime.terminator.borrow().clone();
    if let Some(t) = current {
        let cert = store.server_cert(now).await?;
        if cert.cert_der != t.tls().current_leaf_der() {
            t.tls()
                .set_certificate(&cert.chain_pem, cert.key_pem.expose())
                .map_err(invalid)?;
            changed = true;
        }
    }
    if let Some(local) = &runtime.local {
        let ca = store.ensure_ca(now).await?.cert().fingerprint_sha256_hex();
        let due = {
            let issued = local.issued.lock().unwrap_or_else(|p| p.into_inner());
            // A rotated CA (`airlock ca activate`) needs a leaf that chains to it.
            issued.1 != ca
                || airlock_pki::needs_renewal(issued.0, now, Validity::default().renew_before)
        };
        if due {
            let cert = store.issue_loopback(now).await?;
            local
                .tls
                .set_certificate(&cert.chain_pem, cert.key_pem.expose())
                .map_err(invalid)?;
            *local.issued.lock().unwrap_or_else(|p| p.into_inner()) = (cert.not_after, ca);
            changed = true;
        }
    }
    Ok(changed)
}

/// What the stream handler needs.
struct StreamCtx {
    terminator: watch::Receiver<Option<Terminator>>,
    local: Option<Arc<LocalRoutes>>,
    domain: Arc<RwLock<Option<String>>>,
}

impl StreamCtx {
    async fn serve(&self, mut stream: MuxStream, sni: String, peer: SocketAddr) {
        let domain = self
            .domain
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let (Some(local), Some(domain)) = (&self.local, &domain)
            && let Some(slug) = airlock_relay::embedded::port_slug(&sni, domain)
        {
            // Port routes come from this machine's loopback listeners only.
            if !peer.ip().is_loopback() {
                tracing::info!(client = %peer, %sni, "port route from a non-loopback client refused");
                return;
            }
            let Some(port) = local.port_of(slug) else {
                tracing::info!(%sni, "port route for a server that is not served");
                return;
            };
            match tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                airlock_relay::embedded::skip_preface(&mut stream),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::info!(%sni, error = %e, "bad port-route preface");
                    return;
                }
                Err(_) => return,
            }
            local.serve(stream, slug.to_string(), port, peer).await;
            return;
        }
        let mut rx = self.terminator.clone();
        let terminator = match tokio::time::timeout(TERMINATOR_WAIT, rx.wait_for(Option::is_some))
            .await
        {
            Ok(Ok(t)) => t.clone(),
            _ => {
                tracing::info!(%sni, "no inner-TLS certificate for the relay domain yet; stream dropped");
                return;
            }
        };
        if let Some(t) = terminator {
            t.serve(Linger::new(stream), &peer.to_string()).await;
        }
    }
}

struct LocalListener {
    slug: String,
    port: u16,
    stop: CancellationToken,
}

/// The embedded relay's per-server loopback ports and the TLS that ends their connections.
struct LocalRoutes {
    gateway: Gateway,
    tls: InnerTls,
    /// Expiry of the loopback certificate and the fingerprint of the CA that issued it.
    issued: Mutex<(OffsetDateTime, String)>,
    auth: ResourceServer,
    /// `127.0.0.1:<port>` → route id, for resolving the ports' resource URLs.
    ports: Arc<LocalPorts>,
    /// Keeps the gateway's (weak) registration of `ports` alive.
    _registered: Arc<dyn HostRoutes>,
    relay_public: SocketAddr,
    /// By server id.
    listeners: tokio::sync::Mutex<HashMap<String, LocalListener>>,
    /// slug → port, for the stream handler.
    by_slug: RwLock<HashMap<String, u16>>,
    stop: CancellationToken,
}

impl LocalRoutes {
    fn port_of(&self, slug: &str) -> Option<u16> {
        self.by_slug
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(slug)
            .copied()
    }

    async fn sync(
        &self,
        wanted: &[(String, String, Option<u16>)],
        domain: &str,
    ) -> Vec<(String, u16)> {
        let mut listeners = self.listeners.lock().await;
        let keep: HashMap<&str, (&str, Option<u16>)> = wanted
            .iter()
            .map(|(id, slug, port)| (id.as_str(), (slug.as_str(), *port)))
            .collect();
        listeners.retain(|id, l| {
            let same = keep
                .get(id.as_str())
                .is_some_and(|(slug, port)| *slug == l.slug && port.is_none_or(|p| p == l.port));
            if !same {
                l.stop.cancel();
            }
            same
        });
        let mut chosen = Vec::new();
        for (id, slug, port) in wanted {
            if listeners.contains_key(id) {
                continue;
            }
            let want = port.unwrap_or(0);
            let listener = match TcpListener::bind((Ipv4Addr::LOCALHOST, want)).await {
                Ok(l) => l,
                Err(e) if want != 0 => {
                    tracing::warn!(server = %id, port = want, error = %e, "the server's loopback port is taken; choosing another (its local URL changes)");
                    match TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await {
                        Ok(l) => l,
                        Err(e) => {
                            tracing::warn!(server = %id, error = %e, "no loopback port for the server");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %id, error = %e, "no loopback port for the server");
                    continue;
                }
            };
            let Ok(addr) = listener.local_addr() else {
                continue;
            };
            if *port != Some(addr.port()) {
                chosen.push((id.clone(), addr.port()));
            }
            let stop = self.stop.child_token();
            tokio::spawn(airlock_relay::embedded::serve_port_route(
                listener,
                self.relay_public,
                airlock_relay::embedded::port_sni(slug, domain),
                stop.clone(),
            ));
            listeners.insert(
                id.clone(),
                LocalListener {
                    slug: slug.clone(),
                    port: addr.port(),
                    stop,
                },
            );
        }
        *self.by_slug.write().unwrap_or_else(|p| p.into_inner()) = listeners
            .values()
            .map(|l| (l.slug.clone(), l.port))
            .collect();
        *self
            .ports
            .by_port
            .write()
            .unwrap_or_else(|p| p.into_inner()) = listeners
            .iter()
            .map(|(id, l)| (l.port, id.clone()))
            .collect();
        chosen
    }

    /// TLS for `127.0.0.1` on one server's port: every request goes to that server (no SNI to route by).
    async fn serve(&self, stream: MuxStream, slug: String, port: u16, peer: SocketAddr) {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server_config());
        let tls =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(Linger::new(stream)))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::info!(client = %peer, "tls handshake failed: {e}");
                    return;
                }
                Err(_) => return,
            };
        let gateway = self.gateway.clone();
        let auth = self.auth.clone();
        let slug = Arc::new(slug);
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let gateway = gateway.clone();
            let auth = auth.clone();
            let slug = slug.clone();
            async move { route_local(&gateway, &auth, &slug, port, peer, req).await }
        });
        airlock_gateway::ingress::serve_connection_until(
            tls,
            router,
            self.stop.clone(),
            Duration::from_secs(10),
        )
        .await;
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `Host` must name this loopback port (DNS rebinding); then the OAuth resource server decides (the server's
/// resource URL on this port is `https://127.0.0.1:<port>/mcp`).
async fn route_local(
    gateway: &Gateway,
    rs: &ResourceServer,
    slug: &str,
    port: u16,
    peer: SocketAddr,
    req: Request<Body>,
) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase)
        .or_else(|| {
            req.uri()
                .authority()
                .map(|a| a.to_string().to_ascii_lowercase())
        });
    let Some(host) = host.filter(|h| {
        [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            format!("[::1]:{port}"),
        ]
        .contains(h)
    }) else {
        return text(
            StatusCode::MISDIRECTED_REQUEST,
            "Host must be 127.0.0.1:<this port>",
        );
    };
    let Some(server_id) = gateway.route_id_for_slug(slug) else {
        return text(StatusCode::BAD_GATEWAY, "No route configured for host");
    };
    gateway
        .serve_protected(
            rs,
            Arrival {
                site: Site::Host {
                    server_id,
                    origin: format!("https://{host}"),
                },
                ingress: IngressKind::Relay,
                peer: Some(peer),
            },
            req,
        )
        .await
}

/// The embedded relay's loopback ports as a per-server-host ingress: `127.0.0.1:<port>` (also `localhost`, `[::1]`)
/// names the server behind that port.
#[derive(Default)]
struct LocalPorts {
    by_port: RwLock<HashMap<u16, String>>,
}

impl HostRoutes for LocalPorts {
    fn route_for_host(&self, host: &str) -> Option<String> {
        let (name, port) = host.rsplit_once(':')?;
        if !matches!(
            name.to_ascii_lowercase().as_str(),
            "127.0.0.1" | "localhost" | "[::1]"
        ) {
            return None;
        }
        let port: u16 = port.parse().ok()?;
        self.by_port
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&port)
            .cloned()
    }

    fn ingress(&self) -> IngressKind {
        IngressKind::Relay
    }
}

/// A relay stream that, once shut down for writing, outlives its user until the peer finishes too.
///
/// Dropping a mux stream before both directions finished resets it, and a reset can overtake the response bytes
/// still queued (an HTTP/1.1 `Connection: close` answer written, shut down and dropped at once would be lost). After
/// a shutdown this wrapper hands the stream to a task that reads to the peer's end (bounded) before dropping it.
struct Linger {
    stream: Option<MuxStream>,
    shut_down: bool,
}

const LINGER: Duration = Duration::from_secs(10);

impl Linger {
    fn new(stream: MuxStream) -> Self {
        Self {
            stream: Some(stream),
            shut_down: false,
        }
    }

    fn inner(&mut self) -> std::io::Result<std::pin::Pin<&mut MuxStream>> {
        match self.stream.as_mut() {
            Some(s) => Ok(std::pin::Pin::new(s)),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                "stream is gone",
            )),
        }
    }
}

impl tokio::io::AsyncRead for Linger {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_read(cx, buf),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }
}

impl tokio::io::AsyncWrite for Linger {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_write(cx, data),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut().inner() {
            Ok(s) => s.poll_flush(cx),
            Err(e) => std::task::Poll::Ready(Err(e)),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let r = match this.inner() {
            Ok(s) => s.poll_shutdown(cx),
            Err(e) => return std::task::Poll::Ready(Err(e)),
        };
        if matches!(r, std::task::Poll::Ready(Ok(()))) {
            this.shut_down = true;
        }
        r
    }
}

impl Drop for Linger {
    fn drop(&mut self) {
        if !self.shut_down {
            return;
        }
        let (Some(mut stream), Ok(rt)) =
            (self.stream.take(), tokio::runtime::Handle::try_current())
        else {
            return;
        };
        rt.spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(LINGER, async {
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        });
    }
}
