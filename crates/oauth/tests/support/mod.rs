//! Test harness: the authorization server behind a small stand-in for the gateway's routing, served on loopback;
//! a plain HTTP client; a browser that keeps cookies; an HTTPS server (test CA) for client metadata documents.
#![allow(clippy::unwrap_used, dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_egress::{BoxFuture, BoxStream, Dialer, StaticResolver, TcpDialer};
use airlock_oauth::*;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

pub const T0: i64 = 1_800_000_000_000;

pub struct TestResources {
    pub port: u16,
}

/// Hostnames of the stand-in relay and Anthropic tunnel ingresses: `<slug>.relay.test`, `<slug>.tunnel.test`.
pub const RELAY_DOMAIN: &str = "relay.test";
pub const TUNNEL_DOMAIN: &str = "tunnel.test";

impl ResourceResolver for TestResources {
    fn resolve(&self, resource: &str) -> Option<ResolvedResource> {
        ["a", "b"].iter().find_map(|slug| {
            if resource == format!("http://127.0.0.1:{}/{slug}/mcp", self.port) {
                return Some(ResolvedResource {
                    server_id: format!("srv_{slug}"),
                    issuer: format!("http://127.0.0.1:{}/{slug}", self.port),
                });
            }
            [RELAY_DOMAIN, TUNNEL_DOMAIN].iter().find_map(|domain| {
                (resource == format!("https://{slug}.{domain}/mcp")).then(|| ResolvedResource {
                    server_id: format!("srv_{slug}"),
                    issuer: format!("https://{slug}.{domain}"),
                })
            })
        })
    }
    fn server_name(&self, server_id: &str) -> Option<String> {
        matches!(server_id, "srv_a" | "srv_b").then(|| {
            format!(
                "Server {}",
                server_id.trim_start_matches("srv_").to_uppercase()
            )
        })
    }
}

pub struct Harness {
    pub server: AuthServer,
    pub clock: Arc<ManualClock>,
    pub port: u16,
    pub base: String,
    pub dir: tempfile::TempDir,
    /// `http://127.0.0.1:<port>` of the stand-in relay ingress (send `Host: <slug>.relay.test`).
    pub relay_base: String,
    /// `http://127.0.0.1:<port>` of the stand-in Anthropic tunnel ingress (send `Host: <slug>.tunnel.test`).
    pub tunnel_base: String,
}

impl Harness {
    pub async fn start() -> Harness {
        Self::start_with(|_| {}, None).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut Config), cimd: Option<CimdFetcher>) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak, cimd).await
    }

    pub async fn start_in(
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
        cimd: Option<CimdFetcher>,
    ) -> Harness {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let base = format!("http://127.0.0.1:{port}");
        let mut config = Config::new(
            dir.path().join("oauth.sqlite"),
            format!("{base}/_airlock/oauth/authorize"),
        );
        tweak(&mut config);
        let clock = Arc::new(ManualClock::new(T0));
        let mut opts = Options::new(config, Arc::new(TestResources { port }));
        opts.clock = clock.clone();
        if let Some(c) = cimd {
            opts.cimd = c;
        } else {
            // Nothing in these tests may reach the internet.
            opts.cimd = CimdFetcher::new(
                Arc::new(StaticResolver::new()),
                Arc::new(airlock_egress::RecordingDialer::refusing()),
                rustls::RootCertStore::empty(),
            );
        }
        let server = AuthServer::open(opts).await.unwrap();
        let app = axum::Router::new()
            .fallback(gateway_standin)
            .with_state(server.clone());
        tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        let relay_base = host_ingress(server.clone(), Ingress::Relay).await;
        let tunnel_base = host_ingress(server.clone(), Ingress::AnthropicTunnel).await;
        Harness {
            server,
            clock,
            port,
            base,
            dir,
            relay_base,
            tunnel_base,
        }
    }

    pub fn resource(&self, slug: &str) -> String {
        format!("{}/{slug}/mcp", self.base)
    }
    pub fn issuer(&self, slug: &str) -> String {
        format!("{}/{slug}", self.base)
    }
    pub fn authorize_url(&self) -> String {
        format!("{}/_airlock/oauth/authorize", self.base)
    }
}

/// A per-server-host ingress (relay or Anthropic tunnel flavour) on a new loopback listener; returns its base URL.
async fn host_ingress(server: AuthServer, ingress: Ingress) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .fallback(host_standin)
        .with_state((server, ingress));
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    base
}

/// Routes like the gateway does on a hostname that names one server (`<slug>.<domain>`, issuer `https://<host>`;
/// the TLS the real ingress terminates is left out).
async fn host_standin(
    State((server, ingress)): State<(AuthServer, Ingress)>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let slug = host.split('.').next().unwrap_or("").to_owned();
    if slug != "a" && slug != "b" {
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::NOT_FOUND;
        return resp;
    }
    let server_id = format!("srv_{slug}");
    let origin = format!("https://{host}");
    let path = req.uri().path().to_owned();
    let endpoint = match path.as_str() {
        "/.well-known/oauth-authorization-server" => Endpoint::AuthorizationServerMetadata,
        "/.well-known/openid-configuration" => Endpoint::OpenIdConfiguration,
        "/token" => Endpoint::Token,
        "/register" => Endpoint::Register,
        "/revoke" => Endpoint::Revoke,
        p if p.starts_with("/_airlock/oauth/") => Endpoint::Pages,
        _ => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::UNAUTHORIZED;
            return resp;
        }
    };
    let ctx = RequestContext {
        server_id: Some(server_id),
        endpoint,
        issuer: origin.clone(),
        resource: format!("{origin}/mcp"),
        origin,
        peer: Some(peer),
        ingress,
    };
    server.handle(ctx, req).await
}

/// Routes like the gateway does (loopback flavour: path issuers `/<slug>`).
async fn gateway_standin(
    State(server): State<AuthServer>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request<Body>,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let origin = format!("http://{host}");
    let ctx = |server_id: Option<String>, endpoint: Endpoint, slug: &str| RequestContext {
        server_id,
        endpoint,
        issuer: if slug.is_empty() {
            origin.clone()
        } else {
            format!("{origin}/{slug}")
        },
        resource: if slug.is_empty() {
            String::new()
        } else {
            format!("{origin}/{slug}/mcp")
        },
        origin: origin.clone(),
        peer: Some(peer),
        ingress: Ingress::Loopback,
    };
    if let Some(rest) = path.strip_prefix("/.well-known/oauth-protected-resource/") {
        // Protected-resource metadata (served by the gateway in the product).
        let slug = rest.trim_end_matches("/mcp");
        let doc = serde_json::json!({
            "resource": format!("{origin}/{slug}/mcp"),
            "authorization_servers": [format!("{origin}/{slug}")],
            "scopes_supported": ["mcp:read", "mcp:call"],
            "bearer_methods_supported": ["header"],
        });
        let mut resp = Response::new(Body::from(doc.to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    if path.starts_with("/_airlock/oauth/") {
        return server.handle(ctx(None, Endpoint::Pages, ""), req).await;
    }
    for (prefix, ep) in [
        (
            "/.well-known/oauth-authorization-server/",
            Endpoint::AuthorizationServerMetadata,
        ),
        (
            "/.well-known/openid-configuration/",
            Endpoint::OpenIdConfiguration,
        ),
    ] {
        if let Some(slug) = path.strip_prefix(prefix) {
            let slug = slug.to_owned();
            return server
                .handle(ctx(Some(format!("srv_{slug}")), ep, &slug), req)
                .await;
        }
    }
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let slug = parts.next().unwrap_or("").to_owned();
    let rest = parts.next().unwrap_or("").to_owned();
    let sid = Some(format!("srv_{slug}"));
    let ep = match rest.as_str() {
        "token" => Endpoint::Token,
        "register" => Endpoint::Register,
        "revoke" => Endpoint::Revoke,
        ".well-known/openid-configuration" => Endpoint::OpenIdConfiguration,
        "mcp" => {
            let token = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.strip_prefix("Bearer "))
                .unwrap_or("");
            let body = match server.verify(&format!("srv_{slug}"), token) {
                Ok(a) => (StatusCode::OK, serde_json::to_string(&a).unwrap()),
                Err(r) => (
                    StatusCode::UNAUTHORIZED,
                    serde_json::json!({ "rejection": format!("{r:?}") }).to_string(),
                ),
            };
            let mut resp = Response::new(Body::from(body.1));
            *resp.status_mut() = body.0;
            if body.0 == StatusCode::UNAUTHORIZED {
                let challenge = format!(
                    "Bearer resource_metadata=\"{origin}/.well-known/oauth-protected-resource/{slug}/mcp\", scope=\"mcp:read mcp:call\""
                );
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, challenge.parse().unwrap());
            }
            return resp;
        }
        _ => {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NOT_FOUND;
            return resp;
        }
    };
    server.handle(ctx(sid, ep, &slug), req).await
}

#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    }
    pub fn location(&self) -> url::Url {
        url::Url::parse(&self.header("location").expect("a Location header")).unwrap()
    }
}

pub fn query_of(url: &url::Url) -> HashMap<String, String> {
    url.query_pairs()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub async fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Resp {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mut b = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let req = b
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(30), client.request(req))
        .await
        .expect("response within 30 s")
        .unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Resp {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

pub async fn get(url: &str) -> Resp {
    request(Method::GET, url, &[], None).await
}

pub async fn post_form(url: &str, form: &[(&str, &str)]) -> Resp {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    request(
        Method::POST,
        url,
        &[("content-type", "application/x-www-form-urlencoded")],
        Some(body.into_bytes()),
    )
    .await
}

pub async fn post_json(url: &str, v: &serde_json::Value) -> Resp {
    request(
        Method::POST,
        url,
        &[("content-type", "application/json")],
        Some(v.to_string().into_bytes()),
    )
    .await
}

/// The `oauth2` crate's HTTP client, over hyper.
pub async fn oauth2_http(req: oauth2::HttpRequest) -> Result<oauth2::HttpResponse, io::Error> {
    let (parts, body) = req.into_parts();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let hv: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = request(parts.method, &parts.uri.to_string(), &hv, Some(body)).await;
    let mut out = http::Response::new(r.body.into_bytes());
    *out.status_mut() = r.status;
    *out.headers_mut() = r.headers;
    Ok(out)
}

/// A browser: keeps cookies of the one origin it talks to, never runs scripts.
#[derive(Default)]
pub struct Browser {
    pub cookies: HashMap<String, String>,
    /// `Host` to send (a hostname of a stand-in host ingress); `None`: the URL's.
    pub host: Option<String>,
}

impl Browser {
    /// A browser talking to `host` (e.g. `a.relay.test`) on a stand-in host ingress.
    pub fn for_host(host: &str) -> Browser {
        Browser {
            host: Some(host.to_owned()),
            ..Browser::default()
        }
    }

    pub async fn get(&mut self, url: &str) -> Resp {
        let cookie = self.cookie_header();
        let mut h = vec![];
        if !cookie.is_empty() {
            h.push(("cookie", cookie.as_str()));
        }
        if let Some(host) = &self.host {
            h.push(("host", host.as_str()));
        }
        let r = request(Method::GET, url, &h, None).await;
        self.keep(&r);
        r
    }

    pub async fn post(&mut self, url: &str, form: &[(&str, &str)], origin: Option<&str>) -> Resp {
        let cookie = self.cookie_header();
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if !cookie.is_empty() {
            h.push(("cookie", cookie.as_str()));
        }
        if let Some(o) = origin {
            h.push(("origin", o));
        }
        if let Some(host) = &self.host {
            h.push(("host", host.as_str()));
        }
        let r = request(Method::POST, url, &h, Some(body.into_bytes())).await;
        self.keep(&r);
        r
    }

    fn cookie_header(&self) -> String {
        self.cookies
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn keep(&mut self, r: &Resp) {
        for v in r.headers.get_all(header::SET_COOKIE) {
            let s = v.to_str().unwrap();
            let kv = s.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            self.cookies.insert(k.to_owned(), v.to_owned());
        }
    }
}

/// What the approval page carries: the decision URL and the CSRF token.
pub struct PageForm {
    pub action: String,
    pub ticket: String,
    pub csrf: String,
}

pub fn form_of(html: &str) -> PageForm {
    let action = between(html, "<form method=\"post\" action=\"", "\"");
    let csrf = between(html, "name=\"csrf\" value=\"", "\"");
    let ticket = action.rsplit('/').next().unwrap().to_owned();
    PageForm {
        action,
        ticket,
        csrf,
    }
}

pub fn between(s: &str, start: &str, end: &str) -> String {
    let i = s
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in {s}"))
        + start.len();
    let j = s[i..].find(end).unwrap() + i;
    s[i..j].to_owned()
}

/// Dials a fixed local address whatever address was checked, and records what was asked.
#[derive(Clone)]
pub struct ToLocal {
    pub target: SocketAddr,
    pub seen: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Dialer for ToLocal {
    fn dial(&self, addr: SocketAddr) -> BoxFuture<'_, io::Result<BoxStream>> {
        self.seen.lock().unwrap().push(addr);
        TcpDialer.dial(self.target)
    }
}

/// path → (status, body, delay).
pub type Docs = Arc<Mutex<HashMap<String, (u16, String, Duration)>>>;

/// An HTTPS server under a test CA serving documents by path.
pub struct DocServer {
    pub addr: SocketAddr,
    pub roots: rustls::RootCertStore,
    pub hits: Arc<AtomicUsize>,
    pub docs: Docs,
}

impl DocServer {
    pub async fn start(names: &[&str]) -> DocServer {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf_params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let key = rustls_pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let docs: Docs = Arc::default();
        let (h, d) = (hits.clone(), docs.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let (h, d) = (h.clone(), d.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            let (h, d) = (h.clone(), d.clone());
                            async move {
                                h.fetch_add(1, Ordering::SeqCst);
                                let doc = d.lock().unwrap().get(req.uri().path()).cloned();
                                let (status, body, delay) =
                                    doc.unwrap_or((404, String::new(), Duration::ZERO));
                                tokio::time::sleep(delay).await;
                                let mut r = Response::new(Full::new(Bytes::from(body)));
                                *r.status_mut() = StatusCode::from_u16(status).unwrap();
                                r.headers_mut().insert(
                                    header::CONTENT_TYPE,
                                    http::HeaderValue::from_static("application/json"),
                                );
                                Ok::<_, io::Error>(r)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        DocServer {
            addr,
            roots,
            hits,
            docs,
        }
    }

    pub fn put(&self, path: &str, status: u16, body: String, delay: Duration) {
        self.docs
            .lock()
            .unwrap()
            .insert(path.to_owned(), (status, body, delay));
    }

    /// A fetcher whose resolver maps `names` to `ips` and whose dialer always reaches this server.
    pub fn fetcher(&self, names: &[(&str, IpAddr)]) -> (CimdFetcher, Arc<Mutex<Vec<SocketAddr>>>) {
        let mut r = StaticResolver::new();
        for (n, ip) in names {
            r.insert(n, [*ip]);
        }
        let seen: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let dialer = ToLocal {
            target: self.addr,
            seen: seen.clone(),
        };
        (
            CimdFetcher::new(Arc::new(r), Arc::new(dialer), self.roots.clone()),
            seen,
        )
    }
}

/// A DCR registration returning the client id.
pub async fn register(h: &Harness, slug: &str, name: &str, redirect: &str) -> String {
    let r = post_json(
        &format!("{}/{slug}/register", h.base),
        &serde_json::json!({
            "client_name": name,
            "redirect_uris": [redirect],
            "grant_types": ["authorization_code", "refresh_token"],
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
        }),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    r.json()["client_id"].as_str().unwrap().to_owned()
}

/// A PKCE pair (verifier, S256 challenge).
/// Approve everything asked for (no tool narrowing, no confirmation code).
pub fn approve_all() -> Decision {
    Decision::Approve {
        tools: None,
        code: None,
    }
}

/// Approve everything asked for, confirming a remote request with `code`.
pub fn approve_with_code(code: impl Into<String>) -> Decision {
    Decision::Approve {
        tools: None,
        code: Some(code.into()),
    }
}

pub fn pkce() -> (String, String) {
    let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
    (verifier.secret().clone(), challenge.as_str().to_owned())
}

pub fn authorize_query(params: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}
