//! One inner-TLS byte stream in; HTTP requests routed by `Host` into the gateway.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use airlock_gateway::{Arrival, Gateway, HostRoutes, IngressKind, Protection, Site};
use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

use crate::hosts::HostTable;
use crate::tls::InnerTls;

/// Bound on the inner TLS handshake: a peer that stalls it only holds a task this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long open connections get to finish in-flight requests on shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The routing table and ingress kind, shared with the gateway (for resolving resource URLs).
struct SharedHosts {
    table: RwLock<Arc<HostTable>>,
    kind: RwLock<IngressKind>,
}

impl HostRoutes for SharedHosts {
    fn route_for_host(&self, host: &str) -> Option<String> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        table.lookup(host).map(str::to_string)
    }

    fn ingress(&self) -> IngressKind {
        *self.kind.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Terminates inner TLS and serves the exposed routes. Cheap to clone.
#[derive(Clone)]
pub struct Terminator {
    gateway: Gateway,
    tls: InnerTls,
    hosts: Arc<SharedHosts>,
    /// Keeps the gateway's (weak) registration of `hosts` alive.
    _registered: Arc<dyn HostRoutes>,
    auth: Protection,
    shutdown: CancellationToken,
    drain: Duration,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("hosts", &self.hosts())
            .finish_non_exhaustive()
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

impl Terminator {
    /// A terminator for the Anthropic tunnel ingress (see [`Terminator::with_ingress`] for another kind). Its
    /// hostnames are registered with `gateway` so that [`Gateway::resolve_resource`] knows them.
    pub fn new(
        gateway: Gateway,
        tls: InnerTls,
        hosts: HostTable,
        auth: impl Into<Protection>,
    ) -> Self {
        let hosts = Arc::new(SharedHosts {
            table: RwLock::new(Arc::new(hosts)),
            kind: RwLock::new(IngressKind::AnthropicTunnel),
        });
        let registered: Arc<dyn HostRoutes> = hosts.clone();
        gateway.register_hosts(&registered);
        Self {
            gateway,
            tls,
            hosts,
            _registered: registered,
            auth: auth.into(),
            shutdown: CancellationToken::new(),
            drain: DRAIN,
        }
    }

    /// Sets which ingress this terminator serves (audit records, endpoint contexts, resolved resources); shared by
    /// every clone.
    pub fn with_ingress(self, kind: IngressKind) -> Self {
        *self.hosts.kind.write().unwrap_or_else(|p| p.into_inner()) = kind;
        self
    }

    pub fn ingress(&self) -> IngressKind {
        self.hosts.ingress()
    }

    pub fn tls(&self) -> &InnerTls {
        &self.tls
    }

    /// Replaces the routing table (the agent rebuilds it whenever exposure changes).
    pub fn set_hosts(&self, hosts: HostTable) {
        *self.hosts.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(hosts);
    }

    pub fn hosts(&self) -> Arc<HostTable> {
        self.hosts
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Starts a graceful close of every connection served by this terminator.
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Runs the TLS handshake on `io` (no 0-RTT) and serves HTTP/1.1 or h2 (ALPN) until the connection ends.
    pub async fn serve<IO>(&self, io: IO, peer: &str)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.server_config());
        let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::info!(%peer, "tls handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::info!(%peer, "tls handshake timed out");
                return;
            }
        };
        let sni = stream
            .get_ref()
            .1
            .server_name()
            .map(str::to_ascii_lowercase);
        let this = self.clone();
        let sni = Arc::new(sni);
        let peer: Option<SocketAddr> = peer.parse().ok();
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let this = this.clone();
            let sni = sni.clone();
            async move { this.route(req, sni.as_deref(), peer).await }
        });
        airlock_gateway::ingress::serve_connection_until(
            stream,
            router,
            self.shutdown.clone(),
            self.drain,
        )
        .await;
    }

    async fn route(
        &self,
        req: Request<Body>,
        sni: Option<&str>,
        peer: Option<SocketAddr>,
    ) -> Response<Body> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let hosts = self.hosts();
        let Some(host) = host else {
            return text(StatusCode::BAD_REQUEST, "missing Host header");
        };
        let Some(route_id) = hosts.lookup(&host).map(str::to_string) else {
            tracing::info!(%host, "no route for host");
            return text(StatusCode::BAD_GATEWAY, "No route configured for host");
        };
        // The name the TLS session was opened for must be the server the request goes to.
        if sni.and_then(|s| hosts.lookup(s)) != Some(route_id.as_str()) {
            tracing::info!(%host, sni = ?sni, "SNI and Host name different routes");
            return text(
                StatusCode::MISDIRECTED_REQUEST,
                "TLS server name and Host header do not match",
            );
        }
        let Protection::OAuth(rs) = &self.auth;
        let arrival = Arrival {
            site: Site::Host {
                server_id: route_id,
                origin: format!("https://{}", host.trim().to_ascii_lowercase()),
            },
            ingress: self.ingress(),
            peer,
        };
        self.gateway.serve_protected(rs, arrival, req).await
    }
}
