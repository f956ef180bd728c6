#![allow(clippy::unwrap_used)]
//! Plays Anthropic's backend against the WebSocket ingress, as the tunnel documentation describes it: a WebSocket to
//! the listener, a TLS client inside it with SNI `<sub>.<tunnel-domain>` trusting only the exported CA, then HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_gateway::{
    Access, AccessVerifier, AuditSink, AuthEndpoint, AuthEndpoints, EndpointContext, Gateway,
    GatewayOptions, IngressKind, McpCall, ResourceServer, Route, Scopes, TokenRejection,
    UpstreamSpec,
};
use airlock_ingress::websocket::WsBytes;
use airlock_ingress::{HostTable, InnerTls, Terminator, serve_websocket};
use airlock_pki::{CertificateAuthority, ServerCert};
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use rustls_pki_types::{CertificateDer, ServerName};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const DOMAIN: &str = "abcd1234.tunnel.example";
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct Pki {
    ca: CertificateAuthority,
    server: ServerCert,
}

fn pki() -> Pki {
    let now = OffsetDateTime::now_utc();
    let (cert, key) =
        CertificateAuthority::generate(DOMAIN, now, time::Duration::days(30)).unwrap();
    let ca = CertificateAuthority::from_parts(&cert.pem, key.expose()).unwrap();
    let server = ca.issue_server(now, time::Duration::days(10)).unwrap();
    Pki { ca, server }
}

/// A loopback upstream that answers with what it received (host, path, whether credentials arrived).
async fn echo_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request<Body>| {
        let seen = seen2.clone();
        async move {
            let auth = req.headers().get("authorization").is_some();
            let line = format!("{} {} auth={auth}", req.method(), req.uri());
            seen.lock().unwrap().push(line.clone());
            line
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

/// Tokens: `TOKEN` (all scopes) and `READ_TOKEN` (read only) for `route-echo`, `OTHER_TOKEN` for `route-other`.
struct Verifier;

const READ_TOKEN: &str = "read-only-token";
const OTHER_TOKEN: &str = "token-of-other";

impl AccessVerifier for Verifier {
    fn verify(&self, server_id: &str, token: &str) -> Result<Access, TokenRejection> {
        let (server, scopes) = match token {
            TOKEN => ("route-echo", Scopes::ALL),
            READ_TOKEN => ("route-echo", Scopes::READ),
            OTHER_TOKEN => ("route-other", Scopes::ALL),
            _ => return Err(TokenRejection::Invalid),
        };
        if server != server_id {
            return Err(TokenRejection::WrongResource);
        }
        Ok(Access {
            grant_id: format!("grant-{token}"),
            client_id: "claude".into(),
            client_name: "Claude".into(),
            scopes,
            tools: None,
        })
    }
}

/// Records the authorization-server requests; answers 299 so the test can tell them apart.
#[derive(Default)]
struct Endpoints(Mutex<Vec<(EndpointContext, String)>>);

impl AuthEndpoints for Endpoints {
    fn handle(
        &self,
        ctx: EndpointContext,
        req: Request<Body>,
    ) -> futures::future::BoxFuture<'static, http::Response<Body>> {
        self.0
            .lock()
            .unwrap()
            .push((ctx, req.uri().path().to_string()));
        Box::pin(async {
            http::Response::builder()
                .status(299)
                .body(Body::from("as"))
                .unwrap()
        })
    }
}

#[derive(Default)]
struct Audit(Mutex<Vec<McpCall>>);

impl AuditSink for Audit {
    fn mcp_call(&self, call: McpCall) {
        self.0.lock().unwrap().push(call);
    }
}

struct Harness {
    addr: SocketAddr,
    gateway: Gateway,
    terminator: Terminator,
    ca_pem: String,
    seen: Arc<Mutex<Vec<String>>>,
    endpoints: Arc<Endpoints>,
    audit: Arc<Audit>,
    _stop: tokio_util::sync::DropGuard,
}

async fn harness(pki: &Pki) -> Harness {
    let (upstream, seen) = echo_upstream().await;
    let gateway = Gateway::new(GatewayOptions::default());
    for slug in ["echo", "other"] {
        gateway
            .expose(Route {
                id: format!("route-{slug}"),
                slug: slug.into(),
                upstream: UpstreamSpec::Http {
                    url: format!("http://{upstream}/mcp"),
                },
            })
            .await
            .unwrap();
    }
    let mut hosts = HostTable::new(DOMAIN);
    hosts.insert("echo", "route-echo");
    hosts.insert("other", "route-other");
    let tls = InnerTls::new(&pki.server.chain_pem, pki.server.key_pem.expose()).unwrap();
    let endpoints = Arc::new(Endpoints::default());
    let audit = Arc::new(Audit::default());
    let terminator = Terminator::new(
        gateway.clone(),
        tls,
        hosts,
        ResourceServer::new(Arc::new(Verifier), endpoints.clone(), audit.clone()),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(serve_websocket(
        listener,
        terminator.clone(),
        vec![],
        stop.clone(),
    ));
    Harness {
        addr,
        gateway,
        terminator,
        ca_pem: pki.ca.cert().pem.clone(),
        seen,
        endpoints,
        audit,
        _stop: stop.drop_guard(),
    }
}

type Tls = tokio_rustls::client::TlsStream<WsBytes<TcpStream>>;

/// WebSocket (any path, a subprotocol) then TLS inside it, trusting only `ca_pem`.
async fn connect(addr: SocketAddr, sni: &str, ca_pem: &str) -> std::io::Result<Tls> {
    let tcp = TcpStream::connect(addr).await?;
    let request = http::Request::builder()
        .uri(format!("ws://{addr}/some/path?x=1"))
        .header("host", addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("sec-websocket-protocol", "cloudflared, other")
        .body(())
        .unwrap();
    let (ws, resp) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(std::io::Error::other)?;
    assert_eq!(resp.headers()["sec-websocket-protocol"], "cloudflared");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    connector
        .connect(
            ServerName::try_from(sni.to_string()).unwrap(),
            WsBytes::new(ws),
        )
        .await
}

use rustls_pki_types::pem::PemObject;

async fn http1(tls: Tls) -> hyper::client::conn::http1::SendRequest<Body> {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Body>,
    host: &str,
    path: &str,
) -> (StatusCode, String) {
    let (status, _, body) = request(send, "GET", host, path, Some(TOKEN), "").await;
    (status, body)
}

async fn request(
    send: &mut hyper::client::conn::http1::SendRequest<Body>,
    method: &str,
    host: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (StatusCode, http::HeaderMap, String) {
    send.ready().await.unwrap();
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .header("content-type", "application/json");
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let resp = send
        .send_request(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn www_authenticate(headers: &http::HeaderMap) -> String {
    headers
        .get("www-authenticate")
        .expect("a challenge")
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn certificate_meets_anthropics_rules_and_requests_route_by_host() {
    let pki = pki();
    let h = harness(&pki).await;
    let tls = connect(h.addr, &format!("echo.{DOMAIN}"), &h.ca_pem)
        .await
        .unwrap();

    // Every certificate rule, checked on what the server actually presented.
    let (_, session) = tls.get_ref();
    let chain = session.peer_certificates().unwrap().to_vec();
    let (_, leaf) = x509_parser::parse_x509_certificate(chain[0].as_ref()).unwrap();
    let (_, ca) = x509_parser::parse_x509_certificate(&pki.ca.cert().der).unwrap();
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        });
    assert!(
        ski.is_some() && aki == ski,
        "AKI of the server cert must equal the CA's SKI"
    );
    let bc = ca.basic_constraints().unwrap().unwrap();
    assert!(
        bc.critical && bc.value.ca,
        "CA: critical BasicConstraints CA:TRUE"
    );
    assert!(ca.key_usage().unwrap().unwrap().value.key_cert_sign());
    assert!(
        ca.name_constraints().unwrap().is_some(),
        "CA is name-constrained"
    );
    let san: Vec<String> = leaf
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect();
    assert!(san.contains(&format!("*.{DOMAIN}")), "{san:?}");
    assert!(san.contains(&DOMAIN.to_string()), "{san:?}");
    assert!(
        leaf.extended_key_usage()
            .unwrap()
            .unwrap()
            .value
            .server_auth
    );
    assert_eq!(leaf.issuer(), ca.subject(), "signed directly by the CA");
    assert_eq!(
        session.alpn_protocol(),
        None,
        "the test client offered no ALPN"
    );

    // Keep-alive: several requests on one WebSocket; path and query unchanged; credential stripped.
    let mut send = http1(tls).await;
    for i in 0..3 {
        let (status, body) =
            get(&mut send, &format!("echo.{DOMAIN}"), &format!("/mcp?n={i}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, format!("GET /mcp?n={i} auth=false"));
    }
    // SNI names `echo` but Host names `other`: misdirected.
    let (status, _) = get(&mut send, &format!("other.{DOMAIN}"), "/mcp").await;
    assert_eq!(status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(h.seen.lock().unwrap().len(), 3);
}

#[tokio::test]
async fn unknown_host_is_502_and_missing_token_is_401() {
    let pki = pki();
    let h = harness(&pki).await;
    let tls = connect(h.addr, &format!("nope.{DOMAIN}"), &h.ca_pem)
        .await
        .unwrap();
    let mut send = http1(tls).await;
    let (status, body) = get(&mut send, &format!("nope.{DOMAIN}"), "/mcp").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "No route configured for host");

    let tls = connect(h.addr, &format!("echo.{DOMAIN}"), &h.ca_pem)
        .await
        .unwrap();
    let mut send = http1(tls).await;
    send.ready().await.unwrap();
    let req = Request::builder()
        .uri("/mcp")
        .header("host", format!("echo.{DOMAIN}"))
        .body(Body::empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(
        h.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );
}

#[tokio::test]
async fn a_client_trusting_another_ca_fails_the_handshake() {
    let pki_a = pki();
    let pki_b = pki();
    let h = harness(&pki_a).await;
    let err = connect(h.addr, &format!("echo.{DOMAIN}"), &pki_b.ca.cert().pem)
        .await
        .expect_err("a CA that was not exported must not be accepted");
    assert!(
        err.to_string().to_lowercase().contains("certificate"),
        "{err}"
    );
}

#[tokio::test]
async fn browser_origins_are_refused_at_the_upgrade() {
    let pki = pki();
    let h = harness(&pki).await;
    let tcp = TcpStream::connect(h.addr).await.unwrap();
    let request = http::Request::builder()
        .uri(format!("ws://{}/", h.addr))
        .header("host", h.addr.to_string())
        .header("origin", "https://evil.example")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .body(())
        .unwrap();
    match tokio_tungstenite::client_async(request, tcp).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), StatusCode::FORBIDDEN)
        }
        other => panic!(
            "expected a 403 refusal, got {:?}",
            other.map(|(_, r)| r.status())
        ),
    }
}

#[tokio::test]
async fn renewed_certificate_is_served_without_dropping_open_connections() {
    let pki = pki();
    let h = harness(&pki).await;
    let first = connect(h.addr, &format!("echo.{DOMAIN}"), &h.ca_pem)
        .await
        .unwrap();
    let first_leaf = first.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    let mut open = http1(first).await;
    assert_eq!(
        get(&mut open, &format!("echo.{DOMAIN}"), "/a").await.0,
        StatusCode::OK
    );

    let renewed = pki
        .ca
        .issue_server(OffsetDateTime::now_utc(), time::Duration::days(20))
        .unwrap();
    h.terminator
        .tls()
        .set_certificate(&renewed.chain_pem, renewed.key_pem.expose())
        .unwrap();

    let second = connect(h.addr, &format!("echo.{DOMAIN}"), &h.ca_pem)
        .await
        .unwrap();
    let second_leaf = second.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec();
    assert_eq!(
        second_leaf, renewed.cert_der,
        "new handshakes get the renewed certificate"
    );
    assert_ne!(second_leaf, first_leaf);
    // The connection opened before the renewal still works.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        get(&mut open, &format!("echo.{DOMAIN}"), "/b").await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn tunnel_hosts_are_oauth_protected_resources_with_their_own_metadata() {
    let pki = pki();
    let h = harness(&pki).await;
    let host = format!("echo.{DOMAIN}");
    let tls = connect(h.addr, &host, &h.ca_pem).await.unwrap();
    let mut send = http1(tls).await;
    let call =
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}}"#;
    let prm_url = format!("https://{host}/.well-known/oauth-protected-resource/mcp");

    // No token: 401 pointing at the absolute metadata URL of this host.
    let (status, headers, _) = request(&mut send, "POST", &host, "/mcp", None, call).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        www_authenticate(&headers),
        format!(r#"Bearer resource_metadata="{prm_url}", scope="mcp:read mcp:call""#)
    );
    // Metadata at the path-specific and root well-knowns, without credentials, naming the URL used.
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let (status, headers, body) = request(&mut send, "GET", &host, path, None, "").await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers["content-type"], "application/json");
        let prm: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(prm["resource"], format!("https://{host}/mcp"));
        assert_eq!(
            prm["authorization_servers"],
            serde_json::json!([format!("https://{host}")])
        );
        assert_eq!(
            prm["scopes_supported"],
            serde_json::json!(["mcp:read", "mcp:call"])
        );
        assert_eq!(
            prm["bearer_methods_supported"],
            serde_json::json!(["header"])
        );
    }
    // The other server's token is refused here; a read-only token cannot call.
    let (status, headers, _) =
        request(&mut send, "POST", &host, "/mcp", Some(OTHER_TOKEN), call).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(www_authenticate(&headers).starts_with(r#"Bearer error="invalid_token""#));
    assert!(www_authenticate(&headers).contains(&format!(r#"resource_metadata="{prm_url}""#)));
    let (status, headers, _) =
        request(&mut send, "POST", &host, "/mcp", Some(READ_TOKEN), call).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let challenge = www_authenticate(&headers);
    assert!(
        challenge.starts_with(r#"Bearer error="insufficient_scope", scope="mcp:read mcp:call""#),
        "{challenge}"
    );
    assert!(challenge.contains(&format!(r#"resource_metadata="{prm_url}""#)));
    assert!(
        h.seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    // The right token: forwarded, without the credential, and audited once.
    let (status, _, body) = request(&mut send, "POST", &host, "/mcp", Some(TOKEN), call).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "POST /mcp auth=false");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let calls = loop {
        let calls = h.audit.0.lock().unwrap().clone();
        if calls.len() >= 2 || tokio::time::Instant::now() > deadline {
            break calls;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(calls.len(), 2, "the 403 and the call: {calls:?}");
    assert_eq!(calls[0].status, 403);
    let c = &calls[1];
    assert_eq!(
        (c.server_id.as_str(), c.method.as_str(), c.tool.as_deref()),
        ("route-echo", "tools/call", Some("x"))
    );
    assert_eq!(
        (c.status, c.bytes_in, c.bytes_out),
        (200, call.len() as u64, body.len() as u64)
    );
    assert_eq!(c.ingress, IngressKind::AnthropicTunnel);
    assert_eq!(c.client_id.as_deref(), Some("claude"));
}

#[tokio::test]
async fn authorization_server_paths_on_a_tunnel_host_reach_the_endpoints() {
    let pki = pki();
    let h = harness(&pki).await;
    let host = format!("echo.{DOMAIN}");
    let tls = connect(h.addr, &host, &h.ca_pem).await.unwrap();
    let mut send = http1(tls).await;
    for (method, path, endpoint) in [
        (
            "GET",
            "/.well-known/oauth-authorization-server",
            AuthEndpoint::AuthorizationServerMetadata,
        ),
        (
            "GET",
            "/.well-known/openid-configuration",
            AuthEndpoint::OpenIdConfiguration,
        ),
        ("POST", "/token", AuthEndpoint::Token),
        ("POST", "/register", AuthEndpoint::Register),
        ("POST", "/revoke", AuthEndpoint::Revoke),
    ] {
        let (status, _, body) = request(&mut send, method, &host, path, None, "").await;
        assert_eq!((status.as_u16(), body.as_str()), (299, "as"), "{path}");
        let (ctx, seen_path) = h.endpoints.0.lock().unwrap().pop().unwrap();
        assert_eq!(seen_path, path);
        assert_eq!(ctx.endpoint, endpoint);
        assert_eq!(ctx.server_id.as_deref(), Some("route-echo"));
        assert_eq!(ctx.issuer, format!("https://{host}"));
        assert_eq!(ctx.resource, format!("https://{host}/mcp"));
        assert_eq!(ctx.origin, format!("https://{host}"));
        assert_eq!(ctx.ingress, IngressKind::AnthropicTunnel);
    }
    // The approval pages go to the authorization server too, with the hostname's server (it refuses them on
    // a tunnel host unless remote approval is configured): never to the MCP server.
    let (status, _, body) = request(
        &mut send,
        "GET",
        &host,
        "/_airlock/oauth/authorize",
        None,
        "",
    )
    .await;
    assert_eq!((status.as_u16(), body.as_str()), (299, "as"));
    let (ctx, seen_path) = h.endpoints.0.lock().unwrap().pop().unwrap();
    assert_eq!(seen_path, "/_airlock/oauth/authorize");
    assert_eq!(ctx.endpoint, AuthEndpoint::Pages);
    assert_eq!(ctx.server_id.as_deref(), Some("route-echo"));
    assert_eq!(ctx.ingress, IngressKind::AnthropicTunnel);
    // Path-issuer forms are loopback's; a tunnel host's issuer has no path.
    let (status, _, _) = request(
        &mut send,
        "GET",
        &host,
        "/.well-known/oauth-authorization-server/echo",
        None,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(h.endpoints.0.lock().unwrap().is_empty());
    assert!(
        h.audit.0.lock().unwrap().is_empty(),
        "unauthenticated requests are not MCP calls"
    );
}

#[tokio::test]
async fn tunnel_resource_urls_resolve_to_their_server() {
    let pki = pki();
    let h = harness(&pki).await;
    let r = h
        .gateway
        .resolve_resource(&format!("https://echo.{DOMAIN}/mcp"))
        .unwrap();
    assert_eq!(r.server_id, "route-echo");
    assert_eq!(r.issuer, format!("https://echo.{DOMAIN}"));
    assert_eq!(r.ingress, IngressKind::AnthropicTunnel);
    assert_eq!(
        h.gateway
            .resolve_resource(&format!("https://other.{DOMAIN}/mcp"))
            .unwrap()
            .server_id,
        "route-other"
    );
    for bad in [
        format!("https://echo.{DOMAIN}/other"),
        format!("https://echo.{DOMAIN}"),
        format!("https://nope.{DOMAIN}/mcp"),
        format!("http://echo.{DOMAIN}/mcp"),
    ] {
        assert_eq!(h.gateway.resolve_resource(&bad), None, "{bad}");
    }
    // The same terminator serving the relay says so.
    let relay = h.terminator.clone().with_ingress(IngressKind::Relay);
    assert_eq!(relay.ingress(), IngressKind::Relay);
    let r = h
        .gateway
        .resolve_resource(&format!("https://echo.{DOMAIN}/mcp"))
        .unwrap();
    assert_eq!(r.ingress, IngressKind::Relay);
    // Dropping every clone of the terminator unregisters its hosts.
    drop(relay);
    let Harness {
        gateway,
        terminator,
        _stop,
        ..
    } = h;
    drop(terminator);
    drop(_stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while gateway
        .resolve_resource(&format!("https://echo.{DOMAIN}/mcp"))
        .is_some()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hosts stayed registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
