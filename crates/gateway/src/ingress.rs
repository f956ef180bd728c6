//! Ingresses: how connections arrive ([`serve_loopback`], [`serve_connection`]) and who may call
//! ([`Protection`]: the OAuth [`ResourceServer`]).

use std::{sync::Arc, time::Duration};

use axum::body::Body;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    Gateway,
    auth::{Arrival, IngressKind, ResourceServer, Site},
};

/// How an ingress decides who may call.
#[derive(Clone)]
pub enum Protection {
    /// The OAuth 2.1 resource server ([`Gateway::serve_protected`]): metadata, authorization-server endpoints,
    /// per-server tokens, scopes, audit.
    OAuth(ResourceServer),
}

impl std::fmt::Debug for Protection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Protection::OAuth(_) => f.write_str("Protection::OAuth"),
        }
    }
}

impl From<ResourceServer> for Protection {
    fn from(rs: ResourceServer) -> Self {
        Protection::OAuth(rs)
    }
}

/// A JSON-RPC-shaped error body with an HTTP status.
pub(crate) fn json_error(status: StatusCode, message: &str) -> Response<Body> {
    let body = serde_json::json!({
        "jsonrpc": "2.0",
        "id": null,
        "error": { "code": -32000, "message": message },
    });
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

struct Loopback {
    gateway: Gateway,
    auth: Protection,
    hosts: [String; 3],
    origins: [String; 3],
}

impl Loopback {
    fn new(gateway: Gateway, auth: Protection, port: u16) -> Self {
        Self {
            gateway,
            auth,
            hosts: [
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::1]:{port}"),
            ],
            origins: [
                format!("http://127.0.0.1:{port}"),
                format!("http://localhost:{port}"),
                format!("http://[::1]:{port}"),
            ],
        }
    }

    async fn handle(
        &self,
        req: Request<Body>,
        peer: Option<std::net::SocketAddr>,
    ) -> Response<Body> {
        // 1. Host (DNS rebinding protection).
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.as_str().to_owned()));
        let host = host.filter(|h| self.hosts.iter().any(|a| a.eq_ignore_ascii_case(h)));
        let Some(host) = host else {
            return json_error(
                StatusCode::FORBIDDEN,
                "Forbidden: Host header is not an allowed loopback address (DNS rebinding protection)",
            );
        };
        // 2. Origin, when present.
        if let Some(origin) = req.headers().get(header::ORIGIN) {
            let ok = origin
                .to_str()
                .is_ok_and(|o| self.origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
            if !ok {
                return json_error(StatusCode::FORBIDDEN, "Forbidden: Origin not allowed");
            }
        }
        let path = req.uri().path().to_owned();
        if path == "/healthz" {
            let mut r = Response::new(Body::from("ok"));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
            return r;
        }
        if self.gateway.is_shutting_down() {
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway is shutting down",
            );
        }
        let Protection::OAuth(rs) = &self.auth;
        let arrival = Arrival {
            site: Site::Loopback {
                origin: format!("http://{}", host.to_ascii_lowercase()),
            },
            ingress: IngressKind::Loopback,
            peer,
        };
        self.gateway.serve_protected(rs, arrival, req).await
    }
}

/// Loopback ingress: `http://127.0.0.1:PORT/<slug>/...` → route `slug`, prefix stripped.
///
/// Checks, in order: Host must be `127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT` (else 403);
/// Origin, when present, must be `http://127.0.0.1:PORT` / `http://localhost:PORT` (else 403);
/// `GET /healthz` needs no credential. Then, with [`Protection::OAuth`], everything else goes to
/// [`Gateway::serve_protected`] with [`Site::Loopback`] (origin `http://<Host as sent>`: metadata,
/// authorization-server paths, `/_airlock/oauth/…`, bearer tokens per server, scopes, audit); the
/// `Authorization` header is removed before the request reaches the route. When `shutdown` fires, no new connections are accepted and open
/// connections are closed gracefully (bounded by the gateway's `drain_timeout`).
pub async fn serve_loopback(
    gateway: Gateway,
    listener: tokio::net::TcpListener,
    auth: impl Into<Protection>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let drain = gateway.options().drain_timeout;
    gateway.set_loopback_port(port);
    let state = Arc::new(Loopback::new(gateway, auth.into(), port));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Transient (e.g. EMFILE): back off briefly instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let router = axum::Router::new().fallback(move |req: Request<Body>| {
            let state = state.clone();
            async move { state.handle(req, Some(peer)).await }
        });
        let shutdown = shutdown.clone();
        tracker.spawn(serve_connection_until(stream, router, shutdown, drain));
    }
    tracker.close();
    let _ = tokio::time::timeout(drain + Duration::from_secs(1), tracker.wait()).await;
    Ok(())
}

/// Serves HTTP/1.1 and h2 on any byte stream (later ingresses — inner TLS, relay streams — feed
/// connections here). Returns when the connection ends.
pub async fn serve_connection<IO>(io: IO, service: axum::Router)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_connection_until(
        io,
        service,
        CancellationToken::new(),
        Duration::from_secs(5),
    )
    .await;
}

/// Like [`serve_connection`], but starts a graceful close when `shutdown` fires and gives up
/// after `drain`.
pub async fn serve_connection_until<IO>(
    io: IO,
    service: axum::Router,
    shutdown: CancellationToken,
    drain: Duration,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = TowerToHyperService::new(service);
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection ended with error: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(drain, conn.as_mut()).await;
        }
    }
}
