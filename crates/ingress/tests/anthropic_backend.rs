#![allow(clippy::unwrap_used)]
//! Plays Anthropic's backend against the WebSocket ingress, as the tunnel documentation describes it: a WebSocket to
//! the listener, a TLS client inside it with SNI `<sub>.<tunnel-domain>` trusting only the exported CA, then HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_gateway::{BearerToken, Gateway, GatewayOptions, Route, UpstreamSpec};
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

struct Harness {
    addr: SocketAddr,
    terminator: Terminator,
    ca_pem: String,
    seen: Arc<Mutex<Vec<String>>>,
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
                    url: format!("http://{upstream}"),
                },
            })
            .await
            .unwrap();
    }
    let mut hosts = HostTable::new(DOMAIN);
    hosts.insert("echo", "route-echo");
    hosts.insert("other", "route-other");
    let tls = InnerTls::new(&pki.server.chain_pem, pki.server.key_pem.expose()).unwrap();
    let terminator = Terminator::new(
        gateway,
        tls,
        hosts,
        Arc::new(BearerToken::new(TOKEN.into())) as Arc<dyn airlock_gateway::Authorizer>,
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
        terminator,
        ca_pem: pki.ca.cert().pem.clone(),
        seen,
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
    send.ready().await.unwrap();
    let req = Request::builder()
        .uri(path)
        .header("host", host)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
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
