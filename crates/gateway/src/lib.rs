//! Serves exposed MCP servers over Streamable HTTP.
//!
//! Layout:
//! - `bridge` (private): the stdio bridge. A supervisor task per exposed stdio server spawns ONE
//!   shared child process, probes its protocol era with rmcp's lifecycle probe (`server/discover`,
//!   falling back to `initialize`), restarts it with jittered exponential backoff when it dies, and
//!   stops it (stdin close → SIGTERM → SIGKILL) on unexpose/shutdown. The HTTP side is rmcp's
//!   `StreamableHttpService` (both protocol eras: legacy sessions and 2026-07-28 stateless POSTs)
//!   driving a proxy `ServerHandler` that forwards every client request through an rmcp client
//!   `Peer<RoleClient>` to the child, so JSON-RPC ids towards the child are assigned by the bridge.
//!   Server→client traffic is routed back: progress by progress token, other notifications and
//!   server requests by the in-flight request that caused them, list_changed to every session.
//! - `http_proxy` (private): reverse proxy for MCP servers already listening on loopback/private
//!   addresses (streaming bodies, credentials and hop-by-hop headers stripped).
//! - [`auth`]: the OAuth 2.1 resource server every ingress goes through (below).
//! - [`ingress`]: how connections arrive — the loopback ingress [`serve_loopback`] (`/<slug>/...`
//!   routing, Host/Origin checks) and [`serve_connection`] for any byte stream — and who may call,
//!   [`Protection`]: [`Protection::OAuth`] (a [`ResourceServer`]); there is no other way in.
//!
//! [`Gateway`] ties them together: a registry of routes, their health ([`RouteStatus`]), a
//! per-route HTTP entry point without any checks ([`Gateway::handle`]) and the protected entry
//! point every ingress calls ([`Gateway::serve_protected`]).
//!
//! ## Resource server (module [`auth`])
//! The gateway verifies tokens but does not issue them: the embedding application supplies three
//! traits, bundled with [`ResourceServer::new`]:
//! - [`AccessVerifier::verify`]`(server_id, token) -> Result<`[`Access`]`, `[`TokenRejection`]`>`:
//!   sync and cheap, on every request. [`Access`] = grant id, client id and name, [`Scopes`]
//!   (`read` = `mcp:read`, `call` = `mcp:call`) and an optional tool list.
//! - [`AuthEndpoints::handle`]`(`[`EndpointContext`]`, request) -> BoxFuture<Response>`: the
//!   authorization server's paths; the context says which [`AuthEndpoint`], which server
//!   (`server_id`, `None` for the approval pages), its `issuer` and `resource` URL on this ingress,
//!   the `origin`, the TCP `peer` and the [`IngressKind`]. The request is handed over unchanged.
//! - [`AuditSink::mcp_call`]`(`[`McpCall`]`)`: one record per authenticated MCP request (server,
//!   grant, client, JSON-RPC method(s), tool name(s), status, bytes in/out, duration, ingress; never
//!   arguments), sent when the response body ends — SSE is counted as it streams, not buffered.
//!   Must not block.
//!
//! Identities: a server is its route id. Its **resource URL** on an ingress is origin + MCP path
//! ([`Gateway::mcp_path`]: `/mcp` for stdio, the upstream URL's path for HTTP): on a tunnel/relay
//! host `https://<host>/mcp` (issuer `https://<host>`), on loopback `http://127.0.0.1:<port>/<slug>/mcp`
//! (issuer `http://127.0.0.1:<port>/<slug>`; the origin follows the `Host` the client sent, so
//! `localhost` works too). [`Gateway::resolve_resource`] maps any of these URLs back to the server
//! (the authorization server uses it to bind `resource` to a server); the inner-TLS terminator
//! registers its hostnames with [`Gateway::register_hosts`], [`serve_loopback`] its port
//! ([`Gateway::loopback_origin`] is where `/_airlock/oauth/…` lives).
//!
//! Per request ([`Gateway::serve_protected`] has the path table): metadata (RFC 9728: `resource`,
//! `authorization_servers: [issuer]`, `scopes_supported`, `bearer_methods_supported: ["header"]`)
//! at `/.well-known/oauth-protected-resource<resource path>` and, on per-server hosts, the root
//! well-known — never behind auth; authorization-server paths go to [`AuthEndpoints`]; anything else
//! needs `Authorization: Bearer` — missing or refused → `401` with `WWW-Authenticate: Bearer
//! [error="invalid_token", error_description="…", ]resource_metadata="<absolute URL>",
//! scope="mcp:read mcp:call"`; the POST body (bounded by `max_body_bytes`) is parsed for its
//! JSON-RPC method(s), batches included, and checked per method ([`auth::scope_for_method`]:
//! `tools/call` and unknown methods need `mcp:call`, lifecycle/list/get/read/subscribe/notifications
//! and client responses need `mcp:read`, so does `GET`/`DELETE` of a session; a body that is not
//! JSON-RPC needs `mcp:call`) and the `tools/call` tool name against the grant's tool list → `403`
//! with `WWW-Authenticate: Bearer error="insufficient_scope", scope="mcp:read mcp:call",
//! resource_metadata="…"`. Under a tool-narrowed grant `tools/list` answers show only the granted
//! tools. The `Authorization` header never reaches the route.
//!
//! Semantics worth knowing:
//! - A stdio route serves its MCP endpoint at `/mcp` (relative to the route). Legacy clients
//!   (`initialize`, `MCP-Session-Id`, GET stream, DELETE) and 2026-07-28 clients (stateless POSTs,
//!   `server/discover`) are both served, whatever era the child speaks. Sessions minted before a
//!   child restart get `404` so clients re-initialize.
//! - An HTTP route forwards the relative path and query unchanged to the upstream's
//!   `scheme://host:port` (so `http://127.0.0.1:9000/mcp` is reached at `/<slug>/mcp`).
//! - Server→client requests (sampling, elicitation) reach the HTTP session whose in-flight request
//!   caused them when exactly one session has requests in flight; otherwise the child gets a
//!   JSON-RPC error at once. The bridge does not advertise `roots` to children.
//! - Environment values of stdio children are never logged.

pub mod auth;
mod bridge;
mod http_proxy;
pub mod ingress;

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::Duration,
};

use serde::Serialize;
use tokio::sync::broadcast;

pub use auth::{
    Access, AccessVerifier, Arrival, AuditSink, AuthEndpoint, AuthEndpoints, EndpointContext,
    HostRoutes, IngressKind, McpCall, NoAudit, ResolvedResource, ResourceServer, Scopes, Site,
    TokenRejection,
};
pub use ingress::{Protection, serve_connection, serve_loopback};

/// What a route forwards to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UpstreamSpec {
    /// A stdio MCP server, spawned and bridged to Streamable HTTP (served at `/mcp`).
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// An MCP server already listening over HTTP on a loopback or private address.
    Http { url: String },
}

/// One exposed server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub id: String,
    /// DNS label (`[a-z0-9-]`, 1–63 chars, no leading/trailing `-`); unique across routes.
    pub slug: String,
    pub upstream: UpstreamSpec,
}

/// How upstreams are dialled: the IP policy applied to resolved addresses, and the resolver and dialer (injectable,
/// so tests can prove a refusal without sending a packet).
#[derive(Clone)]
pub struct Egress {
    pub policy: airlock_egress::IpPolicy,
    pub resolver: Arc<dyn airlock_egress::Resolver>,
    pub dialer: Arc<dyn airlock_egress::Dialer>,
}

impl Default for Egress {
    fn default() -> Self {
        Self {
            policy: airlock_egress::IpPolicy::default(),
            resolver: Arc::new(airlock_egress::SystemResolver),
            dialer: Arc::new(airlock_egress::TcpDialer),
        }
    }
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Tunables; see [`GatewayOptions::default`].
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// First restart delay after a child dies (doubles per failure, with jitter).
    pub restart_initial: Duration,
    /// Cap for the restart delay.
    pub restart_max: Duration,
    /// How long shutdown waits for in-flight requests before stopping children.
    pub drain_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Dialling of HTTP upstreams (IP policy on resolved addresses).
    pub egress: Egress,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            restart_initial: Duration::from_millis(200),
            restart_max: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(5),
            max_body_bytes: 4 * 1024 * 1024,
            egress: Egress::default(),
        }
    }
}

/// Errors from [`Gateway::expose`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    #[error(
        "invalid slug `{0}`: use 1-63 lowercase letters, digits or `-`, not starting or ending with `-`"
    )]
    InvalidSlug(String),
    #[error("slug `{slug}` is already used by route `{other_id}`; pick a different slug")]
    SlugInUse { slug: String, other_id: String },
    #[error("route id must not be empty")]
    EmptyId,
    #[error("stdio route `{0}` has an empty command")]
    EmptyCommand(String),
    #[error("refusing upstream URL `{url}`: {reason}")]
    UpstreamRefused { url: String, reason: String },
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// Health of one route, as reported by [`Gateway::routes`] and [`Gateway::subscribe`].
#[derive(Clone, Debug, Serialize)]
pub struct RouteStatus {
    pub id: String,
    pub slug: String,
    pub health: Health,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Health {
    /// The child is being spawned and its era probed.
    Starting,
    /// The child answered the lifecycle probe; `era` is its protocol version.
    Ready {
        era: String,
        pid: Option<u32>,
    },
    /// The child died or failed to start; the next attempt is scheduled.
    Restarting {
        attempt: u32,
        retry_in_ms: u64,
        last_error: String,
    },
    /// An HTTP upstream (reverse proxied, not supervised).
    Proxy {
        url: String,
    },
    Stopped,
}

enum RouteKind {
    Stdio(Arc<bridge::Bridge>),
    Http(Arc<http_proxy::HttpUpstream>),
}

struct RouteEntry {
    id: String,
    slug: String,
    /// Path of the MCP endpoint relative to the route (`/mcp` for stdio, the URL's path for HTTP upstreams).
    mcp_path: String,
    kind: RouteKind,
    health: Arc<std::sync::Mutex<Health>>,
}

impl RouteEntry {
    fn status(&self) -> RouteStatus {
        RouteStatus {
            id: self.id.clone(),
            slug: self.slug.clone(),
            health: lock(&self.health).clone(),
        }
    }
}

struct Inner {
    opts: GatewayOptions,
    routes: RwLock<HashMap<String, Arc<RouteEntry>>>,
    status_tx: broadcast::Sender<RouteStatus>,
    shutting_down: std::sync::atomic::AtomicBool,
    http_client: http_proxy::Client,
    /// Port of the loopback ingress, once [`serve_loopback`] runs (for [`Gateway::resolve_resource`]).
    loopback_port: std::sync::Mutex<Option<u16>>,
    /// Per-server-host ingresses (for [`Gateway::resolve_resource`]).
    hosts: auth::HostRegistry,
}

/// The gateway: a registry of exposed routes. Cheap to clone.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn valid_slug(slug: &str) -> bool {
    !slug.is_empty()
        && slug.len() <= 63
        && !slug.starts_with('-')
        && !slug.ends_with('-')
        && slug
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Reports health changes of one route: stores the latest and broadcasts it.
#[derive(Clone)]
pub(crate) struct StatusReporter {
    id: String,
    slug: String,
    health: Arc<std::sync::Mutex<Health>>,
    tx: broadcast::Sender<RouteStatus>,
}

impl StatusReporter {
    pub(crate) fn set(&self, health: Health) {
        {
            let mut h = lock(&self.health);
            if *h == health {
                return;
            }
            *h = health.clone();
        }
        // No receivers is fine.
        let _ = self.tx.send(RouteStatus {
            id: self.id.clone(),
            slug: self.slug.clone(),
            health,
        });
    }
}

impl Gateway {
    pub fn new(opts: GatewayOptions) -> Self {
        let (status_tx, _) = broadcast::channel(256);
        let http_client = http_proxy::client(opts.egress.clone());
        Self {
            inner: Arc::new(Inner {
                opts,
                routes: RwLock::new(HashMap::new()),
                status_tx,
                shutting_down: std::sync::atomic::AtomicBool::new(false),
                http_client,
                loopback_port: std::sync::Mutex::new(None),
                hosts: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn options(&self) -> &GatewayOptions {
        &self.inner.opts
    }

    fn read_routes(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<RouteEntry>>> {
        self.inner
            .routes
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write_routes(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<RouteEntry>>> {
        self.inner
            .routes
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Exposes `route` (replacing an existing route with the same id, whose child is stopped).
    /// A stdio child is started in the background; watch [`Gateway::subscribe`] for readiness.
    pub async fn expose(&self, route: Route) -> Result<(), GatewayError> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(GatewayError::ShuttingDown);
        }
        if route.id.is_empty() {
            return Err(GatewayError::EmptyId);
        }
        if !valid_slug(&route.slug) {
            return Err(GatewayError::InvalidSlug(route.slug));
        }
        if let Some(other) = self
            .read_routes()
            .values()
            .find(|r| r.slug == route.slug && r.id != route.id)
        {
            return Err(GatewayError::SlugInUse {
                slug: route.slug,
                other_id: other.id.clone(),
            });
        }
        let health = Arc::new(std::sync::Mutex::new(Health::Starting));
        let reporter = StatusReporter {
            id: route.id.clone(),
            slug: route.slug.clone(),
            health: health.clone(),
            tx: self.inner.status_tx.clone(),
        };
        let mut mcp_path = "/mcp".to_string();
        let kind = match route.upstream {
            UpstreamSpec::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                if command.trim().is_empty() {
                    return Err(GatewayError::EmptyCommand(route.id));
                }
                let spec = bridge::StdioSpec {
                    command,
                    args,
                    env,
                    cwd,
                };
                RouteKind::Stdio(bridge::Bridge::start(
                    route.id.clone(),
                    spec,
                    &self.inner.opts,
                    reporter.clone(),
                ))
            }
            UpstreamSpec::Http { url } => {
                let upstream = http_proxy::HttpUpstream::new(&url, &self.inner.opts.egress.policy)?;
                mcp_path = upstream.path().to_string();
                *lock(&health) = Health::Proxy { url: url.clone() };
                RouteKind::Http(Arc::new(upstream))
            }
        };
        let entry = Arc::new(RouteEntry {
            id: route.id.clone(),
            slug: route.slug,
            mcp_path,
            kind,
            health,
        });
        let status = entry.status();
        let old = self.write_routes().insert(route.id, entry);
        let _ = self.inner.status_tx.send(status);
        if let Some(old) = old {
            stop_entry(&old, Duration::ZERO).await;
        }
        Ok(())
    }

    /// Removes a route and stops its child. Returns whether the route existed.
    pub async fn unexpose(&self, id: &str) -> bool {
        let old = self.write_routes().remove(id);
        match old {
            Some(old) => {
                stop_entry(&old, Duration::ZERO).await;
                let _ = self.inner.status_tx.send(RouteStatus {
                    id: old.id.clone(),
                    slug: old.slug.clone(),
                    health: Health::Stopped,
                });
                true
            }
            None => false,
        }
    }

    /// Current status of every route (sorted by id).
    pub fn routes(&self) -> Vec<RouteStatus> {
        let mut v: Vec<RouteStatus> = self.read_routes().values().map(|r| r.status()).collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Health changes of all routes.
    pub fn subscribe(&self) -> broadcast::Receiver<RouteStatus> {
        self.inner.status_tx.subscribe()
    }

    /// Stops accepting requests, lets in-flight requests finish (up to `drain_timeout`), then
    /// stops every child (stdin close → SIGTERM → SIGKILL).
    pub async fn shutdown(&self) {
        self.inner
            .shutting_down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let entries: Vec<Arc<RouteEntry>> = self.write_routes().drain().map(|(_, v)| v).collect();
        let drain = self.inner.opts.drain_timeout;
        let stops = entries.iter().map(|e| stop_entry(e, drain));
        futures::future::join_all(stops).await;
        for e in &entries {
            let _ = self.inner.status_tx.send(RouteStatus {
                id: e.id.clone(),
                slug: e.slug.clone(),
                health: Health::Stopped,
            });
        }
    }

    /// Route id for a slug (used by ingresses that route by path prefix or Host).
    pub fn route_id_for_slug(&self, slug: &str) -> Option<String> {
        self.read_routes()
            .values()
            .find(|r| r.slug == slug)
            .map(|r| r.id.clone())
    }

    /// Slug of a route.
    pub fn slug_for_route(&self, id: &str) -> Option<String> {
        self.read_routes().get(id).map(|r| r.slug.clone())
    }

    /// Path of a route's MCP endpoint, relative to the route: `/mcp` for a stdio server, the URL's path (`/` when
    /// it has none) for an HTTP upstream. A server's resource URL on an ingress is its origin (+ `/<slug>` on
    /// loopback) + this path.
    pub fn mcp_path(&self, id: &str) -> Option<String> {
        self.read_routes().get(id).map(|r| r.mcp_path.clone())
    }

    /// The loopback gateway's origin (`http://127.0.0.1:<port>`) once [`serve_loopback`] runs: where the approval
    /// pages (`/_airlock/oauth/…`) are.
    pub fn loopback_origin(&self) -> Option<String> {
        self.loopback_port()
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    pub(crate) fn loopback_port(&self) -> Option<u16> {
        *lock(&self.inner.loopback_port)
    }

    pub(crate) fn set_loopback_port(&self, port: u16) {
        *lock(&self.inner.loopback_port) = Some(port);
    }

    /// Registers a per-server-host ingress for [`Gateway::resolve_resource`]. Held weakly: dropping the last `Arc`
    /// unregisters it.
    pub fn register_hosts(&self, routes: &Arc<dyn HostRoutes>) {
        let mut v = lock(&self.inner.hosts);
        v.retain(|w| w.strong_count() > 0);
        v.push(Arc::downgrade(routes));
    }

    pub(crate) fn host_registry(&self) -> Vec<Arc<dyn HostRoutes>> {
        lock(&self.inner.hosts)
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect()
    }

    /// The HTTP service for one route, path relative to the route (the stdio bridge serves
    /// `/mcp`; an HTTP upstream gets the path/query unchanged, appended to the upstream's
    /// scheme://host:port).
    ///
    /// No Host/Origin/credential checks happen here: the calling ingress is responsible for them
    /// (see [`serve_loopback`] for the loopback rules).
    pub async fn handle(
        &self,
        route_id: &str,
        req: http::Request<axum::body::Body>,
    ) -> http::Response<axum::body::Body> {
        if self
            .inner
            .shutting_down
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return ingress::json_error(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "the gateway is shutting down",
            );
        }
        let entry = self.read_routes().get(route_id).cloned();
        let Some(entry) = entry else {
            return ingress::json_error(http::StatusCode::NOT_FOUND, "no such route");
        };
        match &entry.kind {
            RouteKind::Stdio(b) => b.handle(req).await,
            RouteKind::Http(u) => {
                u.handle(&self.inner.http_client, req, self.inner.opts.max_body_bytes)
                    .await
            }
        }
    }
}

async fn stop_entry(entry: &RouteEntry, drain: Duration) {
    match &entry.kind {
        RouteKind::Stdio(b) => b.stop(drain).await,
        RouteKind::Http(_) => {}
    }
    *lock(&entry.health) = Health::Stopped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert!(valid_slug("fs"));
        assert!(valid_slug("my-server-2"));
        assert!(!valid_slug(""));
        assert!(!valid_slug("-a"));
        assert!(!valid_slug("a-"));
        assert!(!valid_slug("A"));
        assert!(!valid_slug("a_b"));
        assert!(!valid_slug(&"a".repeat(64)));
    }

    #[test]
    fn health_serializes_tagged() {
        let v = serde_json::to_value(Health::Ready {
            era: "2025-11-25".into(),
            pid: Some(7),
        })
        .unwrap_or_default();
        assert_eq!(
            v,
            serde_json::json!({"state":"ready","era":"2025-11-25","pid":7})
        );
        let v = serde_json::to_value(Health::Stopped).unwrap_or_default();
        assert_eq!(v, serde_json::json!({"state":"stopped"}));
    }
}
