//! The OAuth 2.1 resource server in front of every exposed server, on every ingress.
//!
//! The gateway does not issue tokens: it asks an [`AccessVerifier`] what a bearer token allows, hands the
//! authorization-server paths to [`AuthEndpoints`] and reports every MCP call to an [`AuditSink`]. The three are
//! bundled in a [`ResourceServer`]; an ingress describes where a request arrived ([`Arrival`]) and calls
//! [`Gateway::serve_protected`], which is the only place that decides what a request may do.
//!
//! Per request (see [`Gateway::serve_protected`] for the path table):
//! 1. protected-resource metadata (RFC 9728) is served without authentication;
//! 2. authorization-server paths (metadata, `token`, `register`, `revoke`, and `/_airlock/oauth/*`: the approval
//!    pages, which the authorization server serves on loopback, and on a relay hostname only when configured) go to
//!    [`AuthEndpoints`] with an [`EndpointContext`] naming the server, issuer and resource URL;
//! 3. anything else needs `Authorization: Bearer`: a missing or refused token gets `401` with a
//!    `WWW-Authenticate: Bearer resource_metadata="…", scope="…"` challenge; the JSON-RPC method(s) of a POST (batches
//!    included, the tool name of `tools/call`) are checked against the grant's [`Scopes`] and tool list (`403
//!    insufficient_scope`); `GET`/`DELETE` of a session need `mcp:read`;
//! 4. the `Authorization` header is removed (no token passthrough), the request goes to the route, and one
//!    [`McpCall`] is reported when the response body ends (bytes counted as they stream; arguments never recorded).

use std::{
    fmt,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Weak},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::body::Body;
use bytes::Bytes;
use futures::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body::Frame;
use http_body_util::BodyExt;
use serde::Serialize;

use crate::Gateway;

/// Scope that allows reading: lifecycle, lists, `resources/read`, `prompts/get`, sessions (GET/DELETE).
pub const SCOPE_READ: &str = "mcp:read";
/// Scope that allows `tools/call`.
pub const SCOPE_CALL: &str = "mcp:call";
/// Every scope a server supports, in the order published (`scopes_supported`, challenges).
pub const SCOPES_SUPPORTED: [&str; 2] = [SCOPE_READ, SCOPE_CALL];

/// Well-known path prefix of protected-resource metadata (RFC 9728).
pub const PRM_WELL_KNOWN: &str = "/.well-known/oauth-protected-resource";
/// Well-known path of authorization-server metadata (RFC 8414).
pub const AS_WELL_KNOWN: &str = "/.well-known/oauth-authorization-server";
/// Well-known path of OpenID Connect discovery.
pub const OIDC_WELL_KNOWN: &str = "/.well-known/openid-configuration";
/// Path prefix of the approval pages (loopback slugs cannot start with `_`).
pub const PAGES_PREFIX: &str = "/_airlock/oauth";

/// What a grant allows: `mcp:read` and/or `mcp:call`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Scopes {
    pub read: bool,
    pub call: bool,
}

impl Scopes {
    pub const NONE: Scopes = Scopes {
        read: false,
        call: false,
    };
    pub const READ: Scopes = Scopes {
        read: true,
        call: false,
    };
    pub const CALL: Scopes = Scopes {
        read: false,
        call: true,
    };
    pub const ALL: Scopes = Scopes {
        read: true,
        call: true,
    };

    /// Parses a space-separated OAuth `scope` value. Scopes other than `mcp:read`/`mcp:call` (e.g.
    /// `offline_access`) are ignored.
    pub fn parse(scope: &str) -> Scopes {
        let mut s = Scopes::NONE;
        for part in scope.split_ascii_whitespace() {
            match part {
                SCOPE_READ => s.read = true,
                SCOPE_CALL => s.call = true,
                _ => {}
            }
        }
        s
    }

    /// Whether every scope in `other` is granted by `self`.
    pub fn contains(self, other: Scopes) -> bool {
        (self.read || !other.read) && (self.call || !other.call)
    }

    pub fn union(self, other: Scopes) -> Scopes {
        Scopes {
            read: self.read || other.read,
            call: self.call || other.call,
        }
    }

    pub fn is_empty(self) -> bool {
        !self.read && !self.call
    }
}

impl fmt::Display for Scopes {
    /// The OAuth `scope` value, e.g. `mcp:read mcp:call` (empty for [`Scopes::NONE`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::with_capacity(2);
        if self.read {
            parts.push(SCOPE_READ);
        }
        if self.call {
            parts.push(SCOPE_CALL);
        }
        f.write_str(&parts.join(" "))
    }
}

/// What a verified token allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Access {
    pub grant_id: String,
    pub client_id: String,
    /// For humans (audit, UI); attacker-controlled, never interpreted.
    pub client_name: String,
    pub scopes: Scopes,
    /// `Some`: `tools/call` is limited to these tool names. `None`: every tool.
    pub tools: Option<Vec<String>>,
}

impl Access {
    /// Whether `tools/call` of `tool` is within the grant's tool list (scopes are checked separately).
    pub fn allows_tool(&self, tool: &str) -> bool {
        self.tools
            .as_ref()
            .is_none_or(|tools| tools.iter().any(|t| t == tool))
    }
}

/// Why a bearer token was refused. Every variant is answered with `401`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRejection {
    #[error("no bearer token: send `Authorization: Bearer <access token>`")]
    Missing,
    #[error("the access token is not valid")]
    Invalid,
    #[error("the access token expired")]
    Expired,
    #[error("the access token was revoked")]
    Revoked,
    #[error("the access token was issued for another server")]
    WrongResource,
}

/// Checks bearer tokens.
pub trait AccessVerifier: Send + Sync + 'static {
    /// What `bearer_token` allows on server `server_id` (the route id). Sync and cheap (an in-memory lookup of the
    /// token hash): it runs on every request. A token of another server is [`TokenRejection::WrongResource`].
    fn verify(&self, server_id: &str, bearer_token: &str) -> Result<Access, TokenRejection>;
}

/// Which ingress a request arrived on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IngressKind {
    /// The loopback gateway (`http://127.0.0.1:<port>/<slug>/…`).
    Loopback,
    /// Anthropic's MCP tunnel (cloudflared → WebSocket → inner TLS).
    AnthropicTunnel,
    /// Airlock's relay (inner TLS through the relay).
    Relay,
}

impl IngressKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IngressKind::Loopback => "loopback",
            IngressKind::AnthropicTunnel => "anthropic_tunnel",
            IngressKind::Relay => "relay",
        }
    }
}

/// Which authorization-server endpoint a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthEndpoint {
    /// RFC 8414 metadata (`/.well-known/oauth-authorization-server…`).
    AuthorizationServerMetadata,
    /// OpenID Connect discovery (`/.well-known/openid-configuration…`); serve the same metadata.
    OpenIdConfiguration,
    /// `<issuer>/token`
    Token,
    /// `<issuer>/register` (RFC 7591)
    Register,
    /// `<issuer>/revoke` (RFC 7009)
    Revoke,
    /// `/_airlock/oauth/…` (authorize page, status, decision); the request path says which. On loopback, and on a
    /// per-server hostname (the authorization server answers 404 there unless remote approval is configured).
    Pages,
}

/// Where an authorization-server request arrived. The request handed along with it is unchanged (full original
/// path and query).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointContext {
    /// The server (route id) whose issuer the request is for; for [`AuthEndpoint::Pages`]: `None` on loopback, the
    /// hostname's server on a per-server hostname.
    pub server_id: Option<String>,
    pub endpoint: AuthEndpoint,
    /// The issuer of that server on this ingress: `https://<host>` on a tunnel/relay host,
    /// `http://127.0.0.1:<port>/<slug>` on loopback. For [`AuthEndpoint::Pages`]: the origin.
    pub issuer: String,
    /// The resource URL of that server on this ingress (origin + MCP path). Empty for [`AuthEndpoint::Pages`].
    pub resource: String,
    /// The origin the request was sent to (`https://<host>` or `http://127.0.0.1:<port>`, as the client wrote it).
    pub origin: String,
    /// The TCP peer (on a tunnel this is the local connector, not the remote client).
    pub peer: Option<SocketAddr>,
    pub ingress: IngressKind,
}

/// The endpoints the gateway does not implement itself: authorization-server metadata, token, registration and
/// revocation on every exposed host, and the approval pages on loopback.
pub trait AuthEndpoints: Send + Sync + 'static {
    fn handle(
        &self,
        ctx: EndpointContext,
        req: Request<Body>,
    ) -> BoxFuture<'static, Response<Body>>;
}

/// One MCP request as the audit log sees it: never arguments or results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct McpCall {
    pub server_id: String,
    pub grant_id: Option<String>,
    pub client_id: Option<String>,
    /// The JSON-RPC method of a POST (`tools/call`, `notifications/initialized`, a response from the client is
    /// `response`); for a batch the methods joined with `,`; for other HTTP methods the HTTP method (`GET` opens the
    /// SSE stream, `DELETE` closes the session); `invalid` for a POST body that is not JSON-RPC.
    pub method: String,
    /// The tool name of a `tools/call` (batch: names joined with `,`).
    pub tool: Option<String>,
    /// HTTP status of the response (`403` when the gateway refused for scope).
    pub status: u16,
    /// Request body bytes.
    pub bytes_in: u64,
    /// Response body bytes actually sent (counted as they stream).
    pub bytes_out: u64,
    /// From arrival until the response body ended (or the client went away).
    pub duration: Duration,
    pub ingress: IngressKind,
}

/// Receives one [`McpCall`] per authenticated MCP request.
pub trait AuditSink: Send + Sync + 'static {
    /// Must not block (called from the response path): queue the record.
    fn mcp_call(&self, call: McpCall);
}

/// An [`AuditSink`] that drops every record.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoAudit;

impl AuditSink for NoAudit {
    fn mcp_call(&self, _call: McpCall) {}
}

/// The resource server: verifier, authorization-server endpoints and audit sink. Cheap to clone.
#[derive(Clone)]
pub struct ResourceServer {
    verifier: Arc<dyn AccessVerifier>,
    endpoints: Arc<dyn AuthEndpoints>,
    audit: Arc<dyn AuditSink>,
}

impl fmt::Debug for ResourceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResourceServer").finish_non_exhaustive()
    }
}

impl ResourceServer {
    pub fn new(
        verifier: Arc<dyn AccessVerifier>,
        endpoints: Arc<dyn AuthEndpoints>,
        audit: Arc<dyn AuditSink>,
    ) -> Self {
        Self {
            verifier,
            endpoints,
            audit,
        }
    }
}

/// How the server of a request is found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Site {
    /// A hostname that names one server (Anthropic tunnel, relay). `origin` is `https://<host as requested>`.
    Host { server_id: String, origin: String },
    /// The loopback gateway: servers under `/<slug>`, approval pages under `/_airlock/oauth/`. `origin` is
    /// `http://<host as requested>` (`127.0.0.1:<port>`, `localhost:<port>` or `[::1]:<port>`).
    Loopback { origin: String },
}

/// Where a request arrived: the site, the ingress and the TCP peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Arrival {
    pub site: Site,
    pub ingress: IngressKind,
    pub peer: Option<SocketAddr>,
}

/// A resource URL mapped to its server (see [`Gateway::resolve_resource`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedResource {
    pub server_id: String,
    /// The issuer for that server on the ingress the URL names.
    pub issuer: String,
    pub ingress: IngressKind,
}

/// Maps hostnames of a per-server-host ingress to route ids (implemented by the inner-TLS terminator, whose
/// `HostTable` lives in another crate). Registered with [`Gateway::register_hosts`].
pub trait HostRoutes: Send + Sync + 'static {
    /// The route id a `Host` value (maybe with `:port`) names.
    fn route_for_host(&self, host: &str) -> Option<String>;
    fn ingress(&self) -> IngressKind;
}

pub(crate) type HostRegistry = std::sync::Mutex<Vec<Weak<dyn HostRoutes>>>;

/// The path (after the origin) of a server's resource URL: `prefix` + MCP path, with a lone `/` dropped
/// (`https://h/` is the resource `https://h`, RFC 9728 §3.1).
fn resource_path(prefix: &str, mcp_path: &str) -> String {
    let p = format!("{prefix}{mcp_path}");
    if p == "/" { String::new() } else { p }
}

/// What a path on a site is.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Metadata {
        server_id: String,
        slug_prefix: String,
    },
    Endpoint {
        server_id: Option<String>,
        slug_prefix: String,
        endpoint: AuthEndpoint,
    },
    Protected {
        server_id: String,
        slug_prefix: String,
    },
    NotFound(String),
}

fn as_endpoint_for_tail(tail: &str) -> Option<AuthEndpoint> {
    match tail {
        "/token" => Some(AuthEndpoint::Token),
        "/register" => Some(AuthEndpoint::Register),
        "/revoke" => Some(AuthEndpoint::Revoke),
        AS_WELL_KNOWN => Some(AuthEndpoint::AuthorizationServerMetadata),
        OIDC_WELL_KNOWN => Some(AuthEndpoint::OpenIdConfiguration),
        _ => None,
    }
}

impl Gateway {
    fn classify(&self, site: &Site, path: &str) -> Target {
        match site {
            Site::Host { server_id, .. } => {
                let Some(mcp_path) = self.mcp_path(server_id) else {
                    return Target::NotFound("no such server".into());
                };
                let rpath = resource_path("", &mcp_path);
                if path == mcp_path {
                    return Target::Protected {
                        server_id: server_id.clone(),
                        slug_prefix: String::new(),
                    };
                }
                if path == PRM_WELL_KNOWN || path == format!("{PRM_WELL_KNOWN}{rpath}") {
                    return Target::Metadata {
                        server_id: server_id.clone(),
                        slug_prefix: String::new(),
                    };
                }
                if let Some(endpoint) = as_endpoint_for_tail(path).or_else(|| {
                    (path == PAGES_PREFIX || path.starts_with(&format!("{PAGES_PREFIX}/")))
                        .then_some(AuthEndpoint::Pages)
                }) {
                    return Target::Endpoint {
                        server_id: Some(server_id.clone()),
                        slug_prefix: String::new(),
                        endpoint,
                    };
                }
                Target::Protected {
                    server_id: server_id.clone(),
                    slug_prefix: String::new(),
                }
            }
            Site::Loopback { .. } => {
                if path == PAGES_PREFIX || path.starts_with(&format!("{PAGES_PREFIX}/")) {
                    return Target::Endpoint {
                        server_id: None,
                        slug_prefix: String::new(),
                        endpoint: AuthEndpoint::Pages,
                    };
                }
                let not_found =
                    |slug: &str| Target::NotFound(format!("no MCP server is exposed at /{slug}"));
                if let Some(rest) = path.strip_prefix(&format!("{PRM_WELL_KNOWN}/")) {
                    let slug = rest.split('/').next().unwrap_or_default();
                    let Some(id) = self.route_id_for_slug(slug) else {
                        return not_found(slug);
                    };
                    let prefix = format!("/{slug}");
                    let expected = self
                        .mcp_path(&id)
                        .map(|m| resource_path(&prefix, &m))
                        .unwrap_or_default();
                    if format!("/{rest}") == expected {
                        return Target::Metadata {
                            server_id: id,
                            slug_prefix: prefix,
                        };
                    }
                    return Target::NotFound(format!(
                        "no protected resource at /{rest}; the metadata of this server is at {PRM_WELL_KNOWN}{expected}"
                    ));
                }
                for (well_known, endpoint) in [
                    (AS_WELL_KNOWN, AuthEndpoint::AuthorizationServerMetadata),
                    (OIDC_WELL_KNOWN, AuthEndpoint::OpenIdConfiguration),
                ] {
                    if let Some(slug) = path.strip_prefix(&format!("{well_known}/")) {
                        return match self.route_id_for_slug(slug) {
                            Some(id) => Target::Endpoint {
                                server_id: Some(id),
                                slug_prefix: format!("/{slug}"),
                                endpoint,
                            },
                            None => not_found(slug),
                        };
                    }
                }
                if path.starts_with("/.well-known/") {
                    return Target::NotFound("unknown well-known path".into());
                }
                let trimmed = path.strip_prefix('/').unwrap_or(path);
                let (slug, tail) = match trimmed.find('/') {
                    Some(i) => (&trimmed[..i], &trimmed[i..]),
                    None => (trimmed, ""),
                };
                let Some(id) = self.route_id_for_slug(slug) else {
                    return not_found(slug);
                };
                let prefix = format!("/{slug}");
                if self.mcp_path(&id).as_deref() != Some(tail)
                    && let Some(endpoint) = as_endpoint_for_tail(tail)
                {
                    return Target::Endpoint {
                        server_id: Some(id),
                        slug_prefix: prefix,
                        endpoint,
                    };
                }
                Target::Protected {
                    server_id: id,
                    slug_prefix: prefix,
                }
            }
        }
    }

    /// The single entry point of every ingress once it has done its transport checks (Host/Origin on loopback,
    /// SNI/Host on inner TLS): serves metadata, hands authorization-server paths to [`AuthEndpoints`], and
    /// authenticates, authorizes, forwards and audits MCP requests.
    ///
    /// Paths on a per-server host ([`Site::Host`], MCP path `M`, e.g. `/mcp`):
    /// `M` and anything not below → the server (bearer required); `/.well-known/oauth-protected-resource` and
    /// `/.well-known/oauth-protected-resource` + `M` → metadata; `/.well-known/oauth-authorization-server`,
    /// `/.well-known/openid-configuration`, `/token`, `/register`, `/revoke`, `/_airlock/oauth/…` → [`AuthEndpoints`]
    /// (issuer `https://<host>`; the pages with the host's server).
    ///
    /// Paths on loopback ([`Site::Loopback`]): `/<slug>` + `M` and other `/<slug>/…` → the server with the prefix
    /// stripped; `/.well-known/oauth-protected-resource/<slug>` + `M` → metadata;
    /// `/.well-known/oauth-authorization-server/<slug>`, `/.well-known/openid-configuration/<slug>`,
    /// `/<slug>/.well-known/openid-configuration`, `/<slug>/.well-known/oauth-authorization-server`,
    /// `/<slug>/token`, `/<slug>/register`, `/<slug>/revoke` → [`AuthEndpoints`] (issuer `<origin>/<slug>`);
    /// `/_airlock/oauth/…` → [`AuthEndpoints`] with no server. Unknown slugs → 404.
    pub async fn serve_protected(
        &self,
        rs: &ResourceServer,
        arrival: Arrival,
        req: Request<Body>,
    ) -> Response<Body> {
        let started = Instant::now();
        let origin = match &arrival.site {
            Site::Host { origin, .. } | Site::Loopback { origin } => origin.clone(),
        };
        let path = req.uri().path().to_owned();
        match self.classify(&arrival.site, &path) {
            Target::NotFound(msg) => crate::ingress::json_error(StatusCode::NOT_FOUND, &msg),
            Target::Metadata {
                server_id,
                slug_prefix,
            } => self.metadata(&server_id, &origin, &slug_prefix, req.method()),
            Target::Endpoint {
                server_id,
                slug_prefix,
                endpoint,
            } => {
                let (issuer, resource) = match &server_id {
                    Some(id) => (
                        format!("{origin}{slug_prefix}"),
                        format!(
                            "{origin}{}",
                            resource_path(&slug_prefix, &self.mcp_path(id).unwrap_or_default())
                        ),
                    ),
                    None => (origin.clone(), String::new()),
                };
                let ctx = EndpointContext {
                    server_id,
                    endpoint,
                    issuer,
                    resource,
                    origin,
                    peer: arrival.peer,
                    ingress: arrival.ingress,
                };
                rs.endpoints.handle(ctx, req).await
            }
            Target::Protected {
                server_id,
                slug_prefix,
            } => {
                let prm_url = format!(
                    "{origin}{PRM_WELL_KNOWN}{}",
                    resource_path(&slug_prefix, &self.mcp_path(&server_id).unwrap_or_default())
                );
                self.protected(
                    rs,
                    Protected {
                        server_id,
                        slug_prefix,
                        prm_url,
                        ingress: arrival.ingress,
                        started,
                    },
                    req,
                )
                .await
            }
        }
    }

    fn metadata(
        &self,
        server_id: &str,
        origin: &str,
        slug_prefix: &str,
        method: &Method,
    ) -> Response<Body> {
        if method != Method::GET && method != Method::HEAD {
            let mut r = crate::ingress::json_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "protected resource metadata is read with GET",
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return r;
        }
        let mcp_path = self.mcp_path(server_id).unwrap_or_default();
        let doc = serde_json::json!({
            "resource": format!("{origin}{}", resource_path(slug_prefix, &mcp_path)),
            "authorization_servers": [format!("{origin}{slug_prefix}")],
            "scopes_supported": SCOPES_SUPPORTED,
            "bearer_methods_supported": ["header"],
            "resource_name": self.slug_for_route(server_id).unwrap_or_default(),
        });
        let mut r = Response::new(Body::from(doc.to_string()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn protected(
        &self,
        rs: &ResourceServer,
        p: Protected,
        req: Request<Body>,
    ) -> Response<Body> {
        // 1. Authentication.
        let access = match bearer(req.headers()) {
            Err(rejection) => return unauthorized(&p.prm_url, rejection),
            Ok(token) => match rs.verifier.verify(&p.server_id, token) {
                Ok(a) => a,
                Err(rejection) => return unauthorized(&p.prm_url, rejection),
            },
        };
        let (mut parts, body) = req.into_parts();
        // 2. What the request does.
        let (body, summary) = if parts.method == Method::POST {
            let limit = self.options().max_body_bytes;
            let bytes = match http_body_util::Limited::new(body, limit).collect().await {
                Ok(c) => c.to_bytes(),
                Err(e) => {
                    if e.downcast_ref::<http_body_util::LengthLimitError>()
                        .is_some()
                    {
                        return crate::ingress::json_error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            &format!("request body larger than {limit} bytes"),
                        );
                    }
                    return crate::ingress::json_error(
                        StatusCode::BAD_REQUEST,
                        "could not read the request body",
                    );
                }
            };
            let summary = summarize(&bytes);
            (Body::from(bytes), summary)
        } else {
            (
                body,
                Summary {
                    method: parts.method.as_str().to_owned(),
                    tools: Vec::new(),
                    needs: Scopes::READ,
                    bytes_in: 0,
                },
            )
        };
        let mut call = McpCall {
            server_id: p.server_id.clone(),
            grant_id: Some(access.grant_id.clone()),
            client_id: Some(access.client_id.clone()),
            method: bounded(&summary.method),
            tool: (!summary.tools.is_empty()).then(|| bounded(&summary.tools.join(","))),
            status: 0,
            bytes_in: summary.bytes_in,
            bytes_out: 0,
            duration: Duration::ZERO,
            ingress: p.ingress,
        };
        // 3. Authorization.
        let refusal = if !access.scopes.contains(summary.needs) {
            Some(format!(
                "this request needs the scope `{}`; the token grants `{}`",
                summary.needs, access.scopes
            ))
        } else {
            summary
                .tools
                .iter()
                .find(|t| !access.allows_tool(t))
                .map(|t| format!("the tool `{}` is not part of this grant", bounded(t)))
        };
        if let Some(reason) = refusal {
            let resp = insufficient_scope(&p.prm_url, &reason);
            call.status = resp.status().as_u16();
            return audited(resp, call, p.started, rs.audit.clone());
        }
        // 4. Forward without the caller's credential.
        parts.headers.remove(header::AUTHORIZATION);
        if !p.slug_prefix.is_empty() {
            let rel = parts
                .uri
                .path()
                .strip_prefix(&p.slug_prefix)
                .unwrap_or_default();
            let rel = if rel.is_empty() { "/" } else { rel };
            let pq = match parts.uri.query() {
                Some(q) => format!("{rel}?{q}"),
                None => rel.to_owned(),
            };
            let mut uparts = parts.uri.clone().into_parts();
            uparts.path_and_query = pq.parse().ok();
            match http::Uri::from_parts(uparts) {
                Ok(uri) => parts.uri = uri,
                Err(_) => {
                    return crate::ingress::json_error(
                        StatusCode::BAD_REQUEST,
                        "invalid request path",
                    );
                }
            }
        }
        let mut resp = self
            .handle(&p.server_id, Request::from_parts(parts, body))
            .await;
        if let Some(tools) = &access.tools
            && summary.method == "tools/list"
            && resp.status().is_success()
        {
            resp = filter_tool_list(resp, tools.clone(), self.options().max_body_bytes).await;
        }
        call.status = resp.status().as_u16();
        audited(resp, call, p.started, rs.audit.clone())
    }

    /// Maps a resource URL (as a client sends it in `resource`) to its server, on any ingress this gateway serves:
    /// `http://127.0.0.1:<loopback port>/<slug><mcp path>` (also `localhost`, `[::1]`) and
    /// `https://<host><mcp path>` for hosts of a registered [`HostRoutes`]. Query and fragment are not allowed.
    pub fn resolve_resource(&self, resource: &str) -> Option<ResolvedResource> {
        if resource.contains('#') || resource.contains('?') {
            return None;
        }
        let uri: http::Uri = resource.parse().ok()?;
        let authority = uri.authority()?;
        let path = uri.path();
        let path = if path == "/" { "" } else { path };
        match uri.scheme_str()? {
            "http" => {
                let port = self.loopback_port()?;
                let host = authority.host().to_ascii_lowercase();
                if authority.port_u16() != Some(port)
                    || !matches!(host.as_str(), "127.0.0.1" | "localhost" | "[::1]")
                {
                    return None;
                }
                let rest = path.strip_prefix('/')?;
                let slug = rest.split('/').next()?;
                let id = self.route_id_for_slug(slug)?;
                let prefix = format!("/{slug}");
                (resource_path(&prefix, &self.mcp_path(&id)?) == path).then(|| ResolvedResource {
                    server_id: id,
                    issuer: format!("http://{}{prefix}", authority.as_str().to_ascii_lowercase()),
                    ingress: IngressKind::Loopback,
                })
            }
            "https" => {
                let registry = self.host_registry();
                for routes in registry {
                    if let Some(id) = routes.route_for_host(authority.as_str())
                        && resource_path("", &self.mcp_path(&id)?) == path
                    {
                        return Some(ResolvedResource {
                            server_id: id,
                            issuer: format!("https://{}", authority.as_str().to_ascii_lowercase()),
                            ingress: routes.ingress(),
                        });
                    }
                }
                None
            }
            _ => None,
        }
    }
}

struct Protected {
    server_id: String,
    slug_prefix: String,
    prm_url: String,
    ingress: IngressKind,
    started: Instant,
}

/// The bearer token of `Authorization: Bearer <token>` (one header, scheme case-insensitive).
pub(crate) fn bearer(headers: &http::HeaderMap) -> Result<&str, TokenRejection> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(TokenRejection::Missing);
    };
    if values.next().is_some() {
        return Err(TokenRejection::Invalid);
    }
    let value = value.to_str().map_err(|_| TokenRejection::Invalid)?;
    let (scheme, token) = value.split_once(' ').ok_or(TokenRejection::Invalid)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(TokenRejection::Invalid);
    }
    Ok(token)
}

fn oauth_error(
    status: StatusCode,
    error: &str,
    description: &str,
    challenge: String,
) -> Response<Body> {
    let body = serde_json::json!({"error": error, "error_description": description});
    let mut r = Response::new(Body::from(body.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    r
}

fn all_scopes() -> String {
    SCOPES_SUPPORTED.join(" ")
}

fn unauthorized(prm_url: &str, rejection: TokenRejection) -> Response<Body> {
    let scope = all_scopes();
    let description = rejection.to_string();
    let challenge = match rejection {
        TokenRejection::Missing => {
            format!("Bearer resource_metadata=\"{prm_url}\", scope=\"{scope}\"")
        }
        _ => format!(
            "Bearer error=\"invalid_token\", error_description=\"{description}\", resource_metadata=\"{prm_url}\", scope=\"{scope}\""
        ),
    };
    let error = match rejection {
        TokenRejection::Missing => "unauthorized",
        _ => "invalid_token",
    };
    oauth_error(StatusCode::UNAUTHORIZED, error, &description, challenge)
}

fn insufficient_scope(prm_url: &str, reason: &str) -> Response<Body> {
    let scope = all_scopes();
    let challenge = format!(
        "Bearer error=\"insufficient_scope\", scope=\"{scope}\", resource_metadata=\"{prm_url}\", error_description=\"{}\"",
        header_safe(reason)
    );
    oauth_error(
        StatusCode::FORBIDDEN,
        "insufficient_scope",
        reason,
        challenge,
    )
}

/// Longest method/tool text recorded or echoed (names come from the client).
const MAX_NAME: usize = 256;

/// `s` cut to [`MAX_NAME`] bytes (on a character boundary), marked with `…` when cut.
fn bounded(s: &str) -> String {
    if s.len() <= MAX_NAME {
        return s.to_owned();
    }
    let mut end = MAX_NAME;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Text that can sit inside a quoted header parameter: printable ASCII only, no `"` or `\`.
fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            c if c.is_ascii_graphic() || c == ' ' => c,
            _ => '?',
        })
        .collect()
}

/// What a request body does, for authorization and audit.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    method: String,
    tools: Vec<String>,
    needs: Scopes,
    bytes_in: u64,
}

/// The scope a JSON-RPC method needs. Unknown methods need `mcp:call` (they might act).
pub fn scope_for_method(method: &str) -> Scopes {
    match method {
        "tools/call" => Scopes::CALL,
        "initialize"
        | "ping"
        | "server/discover"
        | "resources/read"
        | "resources/subscribe"
        | "resources/unsubscribe"
        | "prompts/get"
        | "completion/complete"
        | "logging/setLevel"
        | "subscriptions/listen" => Scopes::READ,
        m if m.starts_with("notifications/") || m.ends_with("/list") => Scopes::READ,
        _ => Scopes::CALL,
    }
}

fn summarize(body: &[u8]) -> Summary {
    let mut s = Summary {
        method: String::new(),
        tools: Vec::new(),
        needs: Scopes::NONE,
        bytes_in: body.len() as u64,
    };
    let invalid = |mut s: Summary| {
        s.method = "invalid".into();
        s.needs = Scopes::CALL;
        s
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) else {
        return invalid(s);
    };
    let messages: Vec<&serde_json::Value> = match &value {
        serde_json::Value::Array(items) if !items.is_empty() => items.iter().collect(),
        serde_json::Value::Object(_) => vec![&value],
        _ => return invalid(s),
    };
    let mut methods = Vec::with_capacity(messages.len());
    for m in messages {
        let Some(obj) = m.as_object() else {
            return invalid(s);
        };
        match obj.get("method") {
            Some(serde_json::Value::String(method)) => {
                s.needs = s.needs.union(scope_for_method(method));
                if method == "tools/call" {
                    match obj
                        .get("params")
                        .and_then(|p| p.get("name"))
                        .and_then(|n| n.as_str())
                    {
                        Some(name) => s.tools.push(name.to_owned()),
                        // A call without a tool name is refused by the server; the grant must still allow calls.
                        None => s.tools.push(String::new()),
                    }
                }
                methods.push(method.clone());
            }
            Some(_) => return invalid(s),
            None if obj.contains_key("result") || obj.contains_key("error") => {
                s.needs = s.needs.union(Scopes::READ);
                methods.push("response".into());
            }
            None => return invalid(s),
        }
    }
    s.method = methods.join(",");
    s
}

/// Drops the tools outside `allowed` from the `result.tools` of one JSON-RPC message (other messages unchanged).
fn filter_message(msg: &mut serde_json::Value, allowed: &[String]) -> bool {
    let Some(tools) = msg
        .get_mut("result")
        .and_then(|r| r.get_mut("tools"))
        .and_then(|t| t.as_array_mut())
    else {
        return false;
    };
    tools.retain(|t| {
        t.get("name")
            .and_then(|n| n.as_str())
            .is_some_and(|n| allowed.iter().any(|a| a == n))
    });
    true
}

/// Filters one SSE event: `data:` lines that hold a `tools/list` result lose the tools outside the grant.
fn filter_event(event: &[u8], allowed: &[String]) -> Bytes {
    let Ok(text) = std::str::from_utf8(event) else {
        return Bytes::copy_from_slice(event);
    };
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (content, eol) = match line.strip_suffix("\r\n") {
            Some(c) => (c, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(c) => (c, "\n"),
                None => (line, ""),
            },
        };
        if let Some(data) = content.strip_prefix("data:")
            && let Ok(mut msg) = serde_json::from_str::<serde_json::Value>(data.trim_start())
            && filter_message(&mut msg, allowed)
        {
            out.push_str("data: ");
            out.push_str(&msg.to_string());
            out.push_str(eol);
        } else {
            out.push_str(line);
        }
    }
    Bytes::from(out)
}

/// Position just after the first SSE event terminator (blank line) in `buf`.
fn event_end(buf: &[u8]) -> Option<usize> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Under a tool-narrowed grant, `tools/list` shows only the granted tools (JSON answers are read whole, SSE answers
/// event by event as they stream; each is bounded by `limit`).
async fn filter_tool_list(
    resp: Response<Body>,
    allowed: Vec<String>,
    limit: usize,
) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if content_type.starts_with("application/json") {
        let bytes = match http_body_util::Limited::new(body, limit).collect().await {
            Ok(c) => c.to_bytes(),
            Err(_) => {
                return crate::ingress::json_error(
                    StatusCode::BAD_GATEWAY,
                    "the server's tools/list answer could not be read",
                );
            }
        };
        let body = match serde_json::from_slice::<serde_json::Value>(&bytes) {
            Ok(mut msg) => {
                if filter_message(&mut msg, &allowed) {
                    Bytes::from(msg.to_string())
                } else {
                    bytes
                }
            }
            Err(_) => bytes,
        };
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(body));
    }
    if !content_type.starts_with("text/event-stream") {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let state = (body.into_data_stream(), bytes::BytesMut::new(), false);
    let stream = futures::stream::unfold(state, move |(mut inner, mut buf, mut done)| {
        let allowed = allowed.clone();
        async move {
            use futures::StreamExt;
            loop {
                if let Some(end) = event_end(&buf) {
                    let event = buf.split_to(end);
                    return Some((Ok(filter_event(&event, &allowed)), (inner, buf, done)));
                }
                if done {
                    if buf.is_empty() {
                        return None;
                    }
                    let rest = buf.split().freeze();
                    return Some((Ok(rest), (inner, buf, done)));
                }
                match inner.next().await {
                    Some(Ok(chunk)) => {
                        buf.extend_from_slice(&chunk);
                        if buf.len() > limit {
                            return Some((
                                Err(axum::Error::new("an SSE event exceeds the size limit")),
                                (inner, bytes::BytesMut::new(), true),
                            ));
                        }
                    }
                    Some(Err(e)) => return Some((Err(e), (inner, bytes::BytesMut::new(), true))),
                    None => done = true,
                }
            }
        }
    });
    Response::from_parts(parts, Body::from_stream(stream))
}

/// Wraps the response body so that one [`McpCall`] is reported when it ends or is dropped.
fn audited(
    resp: Response<Body>,
    call: McpCall,
    started: Instant,
    sink: Arc<dyn AuditSink>,
) -> Response<Body> {
    let (parts, body) = resp.into_parts();
    let counted = Counted {
        inner: body,
        report: Some(Report {
            call,
            started,
            sink,
        }),
        bytes: 0,
    };
    Response::from_parts(parts, Body::new(counted))
}

struct Report {
    call: McpCall,
    started: Instant,
    sink: Arc<dyn AuditSink>,
}

struct Counted {
    inner: Body,
    report: Option<Report>,
    bytes: u64,
}

impl Counted {
    fn finish(&mut self) {
        if let Some(r) = self.report.take() {
            let mut call = r.call;
            call.bytes_out = self.bytes;
            call.duration = r.started.elapsed();
            r.sink.mcp_call(call);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn approval_pages_on_a_server_hostname_go_to_the_endpoints_with_that_server() {
        let gw = Gateway::new(crate::GatewayOptions::default());
        gw.expose(crate::Route {
            id: "fx-id".into(),
            slug: "fx".into(),
            upstream: crate::UpstreamSpec::Http {
                url: "http://10.1.2.3:9/mcp".into(),
            },
        })
        .await
        .unwrap();
        let site = Site::Host {
            server_id: "fx-id".into(),
            origin: "https://fx.example".into(),
        };
        for path in [
            "/_airlock/oauth",
            "/_airlock/oauth/authorize",
            "/_airlock/oauth/status/t",
        ] {
            assert_eq!(
                gw.classify(&site, path),
                Target::Endpoint {
                    server_id: Some("fx-id".into()),
                    slug_prefix: String::new(),
                    endpoint: AuthEndpoint::Pages,
                },
                "{path}"
            );
        }
        // Anything else of the hostname is still the server's, behind a token.
        for path in ["/_airlock/oauthx", "/_airlock", "/mcp"] {
            assert!(
                matches!(gw.classify(&site, path), Target::Protected { .. }),
                "{path}"
            );
        }
    }

    #[test]
    fn scopes_parse_and_print() {
        assert_eq!(
            Scopes::parse("mcp:read mcp:call offline_access"),
            Scopes::ALL
        );
        assert_eq!(Scopes::parse("  mcp:read "), Scopes::READ);
        assert_eq!(Scopes::parse("mcp:readx"), Scopes::NONE);
        assert_eq!(Scopes::ALL.to_string(), "mcp:read mcp:call");
        assert_eq!(Scopes::CALL.to_string(), "mcp:call");
        assert!(Scopes::ALL.contains(Scopes::READ));
        assert!(!Scopes::READ.contains(Scopes::CALL));
        assert!(Scopes::READ.contains(Scopes::NONE));
    }

    #[test]
    fn method_scopes() {
        for m in [
            "initialize",
            "ping",
            "notifications/initialized",
            "notifications/cancelled",
            "tools/list",
            "resources/list",
            "resources/templates/list",
            "prompts/list",
            "resources/read",
            "prompts/get",
            "completion/complete",
            "logging/setLevel",
            "resources/subscribe",
            "resources/unsubscribe",
            "server/discover",
            "subscriptions/listen",
        ] {
            assert_eq!(scope_for_method(m), Scopes::READ, "{m}");
        }
        for m in ["tools/call", "tasks/result", "x/unknown", ""] {
            assert_eq!(scope_for_method(m), Scopes::CALL, "{m}");
        }
    }

    #[test]
    fn summaries() {
        let s = summarize(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"secret"}}}"#);
        assert_eq!(s.method, "tools/call");
        assert_eq!(s.tools, vec!["echo"]);
        assert_eq!(s.needs, Scopes::CALL);
        let s = summarize(br#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add"}}]"#);
        assert_eq!(s.method, "tools/list,tools/call");
        assert_eq!(s.tools, vec!["add"]);
        assert_eq!(s.needs, Scopes::ALL);
        let s = summarize(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert_eq!((s.method.as_str(), s.needs), ("response", Scopes::READ));
        for bad in [
            &b"not json"[..],
            b"[]",
            b"42",
            b"[1]",
            br#"{"id":1}"#,
            br#"{"method":3}"#,
        ] {
            let s = summarize(bad);
            assert_eq!((s.method.as_str(), s.needs), ("invalid", Scopes::CALL));
        }
    }

    #[test]
    fn bearer_parsing() {
        let mut h = http::HeaderMap::new();
        assert_eq!(bearer(&h), Err(TokenRejection::Missing));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc "),
        );
        assert_eq!(bearer(&h), Ok("abc"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), Err(TokenRejection::Invalid));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&h), Err(TokenRejection::Invalid));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer a"));
        h.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(bearer(&h), Err(TokenRejection::Invalid));
    }

    #[test]
    fn tool_lists_are_filtered_per_event() {
        let allowed = vec!["echo".to_string()];
        let list =
            r#"{"jsonrpc":"2.0","id":1,"result":{"tools":[{"name":"echo"},{"name":"add"}]}}"#;
        let event = format!("id: 1\nevent: message\ndata: {list}\n\n");
        let out = filter_event(event.as_bytes(), &allowed);
        let out = std::str::from_utf8(&out).unwrap_or_default();
        assert!(out.starts_with("id: 1\nevent: message\ndata: "), "{out}");
        assert!(
            out.ends_with("\n\n") && out.contains("echo") && !out.contains("add"),
            "{out}"
        );
        let other = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\n";
        assert_eq!(
            &filter_event(other.as_bytes(), &allowed)[..],
            other.as_bytes()
        );
        assert_eq!(event_end(b"a\n\nb"), Some(3));
        assert_eq!(event_end(b"a\r\n\r\nb\n\n"), Some(5));
        assert_eq!(event_end(b"data: x\n"), None);
    }

    #[test]
    fn client_names_are_bounded_and_header_safe() {
        let long = "é".repeat(300);
        let b = bounded(&long);
        assert!(b.len() <= MAX_NAME + '…'.len_utf8() && b.ends_with('…'));
        assert_eq!(bounded("echo"), "echo");
        assert_eq!(header_safe("a\"b\\c\r\nd é"), "a'b'c??d ?");
        let r = insufficient_scope("http://x/prm", &format!("the tool `{}`", "\n\"x"));
        let h = r.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap_or_default();
        assert!(h.contains("error_description=\"the tool `?'x`\""), "{h}");
    }

    #[test]
    fn resource_paths() {
        assert_eq!(resource_path("", "/mcp"), "/mcp");
        assert_eq!(resource_path("", "/"), "");
        assert_eq!(resource_path("/fs", "/mcp"), "/fs/mcp");
        assert_eq!(resource_path("/fs", "/"), "/fs/");
    }
}
