//! The Anthropic-compatible tunnel ingress end to end (issue #3).
//!
//! The real `airlock up` runs with an `[anthropic]` section and plays the role of Anthropic's
//! `mcp-proxy`; this test plays Anthropic's backend: a WebSocket to the agent's tunnel listener
//! (any path, a subprotocol), a TLS client inside it with SNI `<hostname>.<tunnel domain>` that
//! trusts ONLY the PEM printed by `airlock ca export`, then MCP over HTTP/1.1 on that TLS stream
//! to a real stdio server (`mcp-server-time` from the test venv) bridged by the agent.
//!
//! The agent's keystore is the file backend here (`[keystore] backend = "file"`) so these tests
//! behave the same with and without a Secret Service; `tests/keychain.rs` covers the keychain.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_e2e::{Agent, Output, TestHome, processes, venv_bin, wait_for};
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};

const DOMAIN: &str = "abcd1234.tunnel.example";
/// Bound on one network step (connect, handshake, one MCP request) on a loaded 2-core machine.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
const PROTOCOL: &str = "2025-06-18";

// ---------------------------------------------------------------------------------------
// The agent side
// ---------------------------------------------------------------------------------------

/// A home whose Claude Desktop config names `time`, with an `[anthropic]` section.
fn tunnel_home() -> TestHome {
    let home = TestHome::new();
    let cfg = json!({
        "mcpServers": {
            "time": {
                "command": venv_bin("mcp-server-time"),
                "args": ["--local-timezone", "UTC"]
            }
        }
    });
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&cfg).expect("serialize the Claude Desktop config"),
    );
    home.write_airlock_config(&format!(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n\n\
         [anthropic]\ntunnel_domain = \"{DOMAIN}\"\nlisten_addr = \"127.0.0.1:0\"\n"
    ));
    home
}

/// What Anthropic's backend needs to reach one exposed server through the tunnel.
#[derive(Debug, Clone)]
struct Target {
    /// The agent's WebSocket listener (`anthropic.listen_addr` in `airlock status --json`).
    ws: SocketAddr,
    /// `time.<domain>`.
    host: String,
    /// An access token for `time`, obtained through the OAuth flow.
    token: String,
    /// `airlock ca export`.
    ca_pem: String,
}

fn cli_ok(agent: &Agent, args: &[&str]) -> Output {
    let out = agent.cli(args);
    if out.code != Some(0) {
        panic!(
            "`airlock {}` failed (code {:?}):\n--- stdout\n{}\n--- stderr\n{}\n--- agent stderr\n{}",
            args.join(" "),
            out.code,
            out.stdout,
            out.stderr,
            agent.stderr_log()
        );
    }
    out
}

fn listen_addr(agent: &Agent) -> SocketAddr {
    let status = agent.cli_json(&["status", "--json"]);
    let addr = status["anthropic"]["listen_addr"]
        .as_str()
        .unwrap_or_else(|| {
            panic!("`airlock status --json` has no anthropic.listen_addr: {status}")
        });
    let addr: SocketAddr = addr
        .parse()
        .unwrap_or_else(|e| panic!("anthropic.listen_addr {addr:?} is not IP:PORT: {e}"));
    assert!(
        addr.ip().is_loopback() && addr.port() != 0,
        "listen_addr 127.0.0.1:0 must bind a real loopback port: {status}"
    );
    assert_eq!(status["anthropic"]["tunnel_domain"], DOMAIN, "{status}");
    addr
}

/// Starts the agent, exposes `time` under hostname `time` and collects the tunnel facts.
fn start_and_expose_time() -> (Agent, Target) {
    let agent = Agent::start(tunnel_home());
    agent.wait_server("time", Duration::from_secs(60));
    cli_ok(&agent, &["expose", "time", "--yes", "--hostname", "time"]);
    let url = agent.cli_json(&["url", "time", "--json"]);
    let local = url["url"]
        .as_str()
        .unwrap_or_else(|| panic!("`airlock url time --json` has no url: {url}"));
    // A token for `time` through the OAuth flow (issued for the server, valid on every ingress).
    let token = airlock_e2e::oauth::obtain_token(&agent, local).access_token;
    assert_eq!(
        url["tunnel_url"],
        format!("https://time.{DOMAIN}/mcp").as_str(),
        "tunnel_url of a stdio server exposed as `time`: {url}"
    );
    let ca_pem = cli_ok(&agent, &["ca", "export"]).stdout;
    assert!(
        ca_pem.contains("-----BEGIN CERTIFICATE-----") && !ca_pem.contains("PRIVATE KEY"),
        "`airlock ca export` must print only the CA certificate: {ca_pem}"
    );
    let target = Target {
        ws: listen_addr(&agent),
        host: format!("time.{DOMAIN}"),
        token,
        ca_pem,
    };
    (agent, target)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("cannot build a tokio runtime")
}

// ---------------------------------------------------------------------------------------
// Anthropic's backend: WebSocket, inner TLS, HTTP/1.1
// ---------------------------------------------------------------------------------------

/// Opens a WebSocket to `addr` (an arbitrary path, subprotocol `cloudflared`) and returns a
/// byte stream carried in binary messages (two bounded pump tasks behind a duplex pipe).
async fn websocket_bytes(addr: SocketAddr) -> std::io::Result<DuplexStream> {
    let tcp = TcpStream::connect(addr).await?;
    let request = Request::builder()
        .uri(format!("ws://{addr}/any/path?from=anthropic"))
        .header("host", addr.to_string())
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header(
            "sec-websocket-key",
            tokio_tungstenite::tungstenite::handshake::client::generate_key(),
        )
        .header("sec-websocket-protocol", "cloudflared")
        .body(())
        .map_err(std::io::Error::other)?;
    let (ws, resp) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(std::io::Error::other)?;
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok()),
        Some("cloudflared"),
        "the listener must select the offered subprotocol"
    );
    let (near, far) = tokio::io::duplex(64 * 1024);
    let (mut far_read, mut far_write) = tokio::io::split(far);
    let (mut sink, mut stream) = ws.split();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match far_read.read(&mut buf).await {
                Ok(0) | Err(_) => {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                Ok(n) => {
                    if sink
                        .send(Message::Binary(Bytes::copy_from_slice(&buf[..n])))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        while let Some(msg) = stream.next().await {
            let data = match msg {
                Ok(Message::Binary(b)) => b,
                Ok(Message::Text(t)) => Bytes::copy_from_slice(t.as_bytes()),
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            if far_write.write_all(&data).await.is_err() {
                break;
            }
        }
        let _ = far_write.shutdown().await;
    });
    Ok(near)
}

type Tls = tokio_rustls::client::TlsStream<DuplexStream>;

/// A TLS client config that trusts exactly the certificates in `ca_pem`.
fn trusting_only(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let cert = cert.unwrap_or_else(|e| panic!("bad PEM in the trust anchor ({e}): {ca_pem}"));
        roots
            .add(cert)
            .unwrap_or_else(|e| panic!("rustls refuses the trust anchor ({e}): {ca_pem}"));
    }
    assert_eq!(
        roots.len(),
        1,
        "exactly one CA certificate expected: {ca_pem}"
    );
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

/// WebSocket, then TLS inside it with `sni`, trusting only `ca_pem`.
async fn connect(addr: SocketAddr, sni: &str, ca_pem: &str) -> std::io::Result<Tls> {
    let connector = tokio_rustls::TlsConnector::from(trusting_only(ca_pem));
    let name = ServerName::try_from(sni.to_string()).map_err(std::io::Error::other)?;
    let fut = async {
        let ws = websocket_bytes(addr).await?;
        connector.connect(name, ws).await
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| std::io::Error::other(format!("no TLS session within {IO_TIMEOUT:?}")))?
}

/// The certificates the server presented.
fn presented_chain(tls: &Tls) -> Vec<Vec<u8>> {
    tls.get_ref()
        .1
        .peer_certificates()
        .expect("a finished handshake has peer certificates")
        .iter()
        .map(|c| c.as_ref().to_vec())
        .collect()
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http1(tls: Tls) -> Sender {
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .expect("HTTP/1.1 handshake on the inner TLS stream");
    tokio::spawn(conn);
    send
}

#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn post(
    send: &mut Sender,
    host: &str,
    token: Option<&str>,
    session: Option<&str>,
    body: &Value,
) -> Reply {
    let fut = async {
        send.ready()
            .await
            .expect("the HTTP/1.1 connection closed unexpectedly");
        let mut req = Request::builder()
            .method("POST")
            .uri("/mcp")
            .header("host", host)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", PROTOCOL);
        }
        let req = req
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("valid request");
        let resp = send
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("POST /mcp to {host} failed: {e}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap_or_else(|e| panic!("reading the response body from {host}: {e}"))
            .to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| panic!("no response from {host} within {IO_TIMEOUT:?} to {body}"))
}

/// The JSON-RPC response with `id` in a JSON or SSE (`text/event-stream`) body.
fn jsonrpc_response(reply: &Reply, id: u64) -> Value {
    let ctype = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut messages = Vec::new();
    if ctype.starts_with("text/event-stream") {
        for event in reply.body.replace("\r\n", "\n").split("\n\n") {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n")) {
                messages.push(v);
            }
        }
    } else if ctype.starts_with("application/json") {
        match serde_json::from_str::<Value>(&reply.body) {
            Ok(Value::Array(batch)) => messages.extend(batch),
            Ok(v) => messages.push(v),
            Err(e) => panic!("JSON response body does not parse ({e}): {reply:?}"),
        }
    } else {
        panic!("unexpected content-type {ctype:?} for a JSON-RPC response: {reply:?}");
    }
    messages
        .into_iter()
        .find(|m| m["id"] == id)
        .unwrap_or_else(|| panic!("no JSON-RPC response with id {id} in {reply:?}"))
}

/// One MCP client session (2025-06-18 era: initialize + Mcp-Session-Id) on one connection.
struct Mcp {
    send: Sender,
    host: String,
    token: String,
    session: Option<String>,
    next_id: u64,
}

impl Mcp {
    fn new(send: Sender, target: &Target) -> Self {
        Self {
            send,
            host: target.host.clone(),
            token: target.token.clone(),
            session: None,
            next_id: 1,
        }
    }

    /// Sends a request and returns its `result` (panics on a JSON-RPC error).
    async fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let reply = post(
            &mut self.send,
            &self.host,
            Some(&self.token),
            self.session.as_deref(),
            &body,
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{method} through the tunnel: {reply:?}"
        );
        if method == "initialize" {
            self.session = reply
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
        }
        let msg = jsonrpc_response(&reply, id);
        assert!(
            msg.get("error").is_none(),
            "{method} returned an error: {msg}"
        );
        msg["result"].clone()
    }

    async fn notify(&mut self, method: &str) {
        let body = json!({"jsonrpc": "2.0", "method": method});
        let reply = post(
            &mut self.send,
            &self.host,
            Some(&self.token),
            self.session.as_deref(),
            &body,
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::ACCEPTED,
            "{method} notification through the tunnel: {reply:?}"
        );
    }

    /// `initialize` → `notifications/initialized` → `tools/list`; returns the tool names.
    async fn handshake_and_list(&mut self) -> Vec<String> {
        let init = self
            .request(
                "initialize",
                json!({
                    "protocolVersion": PROTOCOL,
                    "capabilities": {},
                    "clientInfo": {"name": "anthropic-backend-e2e", "version": "0"}
                }),
            )
            .await;
        assert!(
            init["protocolVersion"].is_string() && init["serverInfo"]["name"].is_string(),
            "initialize result: {init}"
        );
        assert!(
            self.session.is_some(),
            "the bridge must assign an Mcp-Session-Id on initialize"
        );
        self.notify("notifications/initialized").await;
        let list = self.request("tools/list", json!({})).await;
        list["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("tools/list has no tools array: {list}"))
            .iter()
            .filter_map(|t| t["name"].as_str().map(str::to_string))
            .collect()
    }

    /// `tools/call get_current_time {"timezone": "UTC"}`; asserts a real, current answer.
    async fn call_current_time(&mut self) {
        let today = utc_date();
        let result = self
            .request(
                "tools/call",
                json!({"name": "get_current_time", "arguments": {"timezone": "UTC"}}),
            )
            .await;
        assert_ne!(result["isError"], true, "get_current_time failed: {result}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_else(|| panic!("get_current_time returned no text content: {result}"));
        let answer: Value = serde_json::from_str(text)
            .unwrap_or_else(|e| panic!("get_current_time text is not JSON ({e}): {text}"));
        assert_eq!(answer["timezone"], "UTC", "{answer}");
        let dt = answer["datetime"].as_str().unwrap_or_default();
        let after = utc_date();
        assert!(
            dt.starts_with(&today) || dt.starts_with(&after),
            "get_current_time must return the current UTC date ({today}): {answer}"
        );
    }
}

fn utc_date() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    )
}

// ---------------------------------------------------------------------------------------
// Certificate rules (Anthropic's documentation of the inner TLS)
// ---------------------------------------------------------------------------------------

fn pem_der(pem: &str) -> Vec<u8> {
    let mut it = CertificateDer::pem_slice_iter(pem.as_bytes());
    let der = it
        .next()
        .unwrap_or_else(|| panic!("no certificate in PEM: {pem}"))
        .unwrap_or_else(|e| panic!("bad PEM ({e}): {pem}"));
    der.as_ref().to_vec()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    x509_parser::parse_x509_certificate(der)
        .unwrap_or_else(|e| panic!("not an X.509 certificate: {e}"))
        .1
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_ecdsa_p256(cert: &X509Certificate<'_>) -> bool {
    let alg = &cert.public_key().algorithm;
    alg.algorithm == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        && alg
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .is_some_and(|curve| curve == x509_parser::oid_registry::OID_EC_P256)
}

/// Checks every rule on the chain the server presented against the exported CA.
fn check_certificate_rules(chain: &[Vec<u8>], ca_pem: &str) {
    let ca_der = pem_der(ca_pem);
    assert!(
        !chain.is_empty() && chain.len() <= 2,
        "leaf (+ optionally the CA itself), no intermediates; got {} certificates",
        chain.len()
    );
    if let Some(second) = chain.get(1) {
        assert_eq!(
            second, &ca_der,
            "the second certificate presented must be the exported CA"
        );
    }
    let leaf = parse(&chain[0]);
    let ca = parse(&ca_der);

    // CA: critical BasicConstraints CA:TRUE, keyCertSign, NameConstraints to the tunnel domain.
    let bc = ca
        .basic_constraints()
        .ok()
        .flatten()
        .expect("the CA has BasicConstraints");
    assert!(bc.critical, "the CA's BasicConstraints must be critical");
    assert!(bc.value.ca, "the CA's BasicConstraints must say CA:TRUE");
    let ku = ca.key_usage().ok().flatten().expect("the CA has KeyUsage");
    assert!(
        ku.value.key_cert_sign(),
        "the CA's KeyUsage must allow keyCertSign"
    );
    let nc = ca
        .name_constraints()
        .ok()
        .flatten()
        .expect("the CA has NameConstraints");
    let permitted: Vec<String> = nc
        .value
        .permitted_subtrees
        .iter()
        .flatten()
        .filter_map(|s| match &s.base {
            GeneralName::DNSName(d) => Some(d.trim_start_matches('.').to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    assert_eq!(
        permitted,
        vec![DOMAIN.to_string()],
        "the CA must be name-constrained to the tunnel domain"
    );
    assert!(is_ecdsa_p256(&ca), "the CA key must be ECDSA P-256");

    // Leaf: AKI == CA SKI, SAN *.domain + domain, EKU serverAuth, not a CA, P-256, signed by the CA.
    let ski = ca
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("the CA has a SubjectKeyIdentifier");
    let aki = leaf
        .extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(k) => {
                k.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            _ => None,
        })
        .expect("the server certificate has an AuthorityKeyIdentifier");
    assert_eq!(aki, ski, "server AKI must equal the CA's SKI");
    let san: Vec<String> = leaf
        .subject_alternative_name()
        .ok()
        .flatten()
        .expect("the server certificate has a SubjectAlternativeName")
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            _ => None,
        })
        .collect();
    assert!(
        san.contains(&format!("*.{DOMAIN}")),
        "SAN must hold *.{DOMAIN}: {san:?}"
    );
    assert!(
        san.contains(&DOMAIN.to_string()),
        "SAN must hold {DOMAIN}: {san:?}"
    );
    let eku = leaf
        .extended_key_usage()
        .ok()
        .flatten()
        .expect("the server certificate has ExtendedKeyUsage");
    assert!(eku.value.server_auth, "EKU must include serverAuth");
    assert!(
        !leaf
            .basic_constraints()
            .ok()
            .flatten()
            .is_some_and(|bc| bc.value.ca),
        "the server certificate must not be a CA"
    );
    assert!(is_ecdsa_p256(&leaf), "the server key must be ECDSA P-256");
    assert!(
        leaf.validity().is_valid(),
        "the server certificate is valid now"
    );
    assert_eq!(leaf.issuer(), ca.subject(), "issued directly by the CA");
    assert_eq!(
        leaf.signature_algorithm.algorithm,
        x509_parser::oid_registry::OID_SIG_ECDSA_WITH_SHA256,
        "signed with ecdsa-with-SHA256"
    );
    let ca_key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P256_SHA256_ASN1,
        ca.public_key().subject_public_key.data.as_ref(),
    );
    assert!(
        ca_key
            .verify(
                leaf.tbs_certificate.as_ref(),
                leaf.signature_value.data.as_ref()
            )
            .is_ok(),
        "the server certificate's signature must verify with the CA's key (signed directly by it)"
    );
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// Issue #3 must-show: the certificate rules on what is really served, MCP through WebSocket +
/// inner TLS to a real stdio server, routing errors, and a foreign CA refused.
#[test]
fn anthropic_backend_reaches_a_stdio_server_through_websocket_and_inner_tls() {
    let (agent, target) = start_and_expose_time();

    // The fingerprint commands agree with the exported PEM.
    let ca_der = pem_der(&target.ca_pem);
    let fp = cli_ok(&agent, &["ca", "fingerprint"]).stdout;
    let fp = fp.trim().replace(':', "").to_ascii_lowercase();
    assert_eq!(
        fp,
        sha256_hex(&ca_der),
        "`airlock ca fingerprint` = SHA-256 of the exported CA"
    );
    let status = agent.cli_json(&["status", "--json"]);
    assert_eq!(
        status["anthropic"]["ca_fingerprint"]
            .as_str()
            .map(|s| s.replace(':', "").to_ascii_lowercase()),
        Some(fp.clone()),
        "{status}"
    );

    let rt = runtime();
    rt.block_on(async {
        let tls = connect(target.ws, &target.host, &target.ca_pem)
            .await
            .unwrap_or_else(|e| {
                panic!("TLS through the WebSocket, trusting only `airlock ca export`: {e}")
            });
        check_certificate_rules(&presented_chain(&tls), &target.ca_pem);

        let mut mcp = Mcp::new(http1(tls).await, &target);
        let tools = mcp.handshake_and_list().await;
        for want in ["get_current_time", "convert_time"] {
            assert!(
                tools.iter().any(|t| t == want),
                "tools/list through the tunnel must list {want}: {tools:?}"
            );
        }
        mcp.call_current_time().await;
        // Keep-alive: a second call on the same WebSocket and session.
        mcp.call_current_time().await;

        // No bearer token → 401 (the tunnel is not an open door).
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": PROTOCOL, "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "0"}}});
        let reply = post(&mut mcp.send, &target.host, None, None, &init).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "no token: {reply:?}"
        );
        let reply = post(
            &mut mcp.send,
            &target.host,
            Some("not-the-token"),
            None,
            &init,
        )
        .await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "wrong token: {reply:?}"
        );

        // Unknown hostname (SNI and Host `nope.<domain>`): 502, the proxy's message.
        let nope = format!("nope.{DOMAIN}");
        let tls = connect(target.ws, &nope, &target.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("the wildcard certificate also serves {nope}: {e}"));
        let mut send = http1(tls).await;
        let reply = post(&mut send, &nope, Some(&target.token), None, &init).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "unknown host: {reply:?}"
        );
        assert!(
            reply.body.contains("No route configured for host"),
            "unknown host body: {reply:?}"
        );
        // SNI `nope` but Host `time`: the session was opened for another name → 421.
        let reply = post(&mut send, &target.host, Some(&target.token), None, &init).await;
        assert_eq!(
            reply.status,
            StatusCode::MISDIRECTED_REQUEST,
            "SNI/Host mismatch: {reply:?}"
        );

        // A client trusting a different (freshly generated) CA for the same domain fails the handshake.
        let (other_ca, _key) = airlock_pki::CertificateAuthority::generate(
            DOMAIN,
            time::OffsetDateTime::now_utc(),
            time::Duration::days(30),
        )
        .expect("generate a second CA");
        let err = connect(target.ws, &target.host, &other_ca.pem)
            .await
            .expect_err("a CA that was never exported must not be accepted");
        assert!(
            err.to_string().to_ascii_lowercase().contains("certificate"),
            "the failure must be a certificate error: {err}"
        );

        // The first connection still works after all that.
        mcp.call_current_time().await;
    });
    drop(agent);
}

/// Renewal through the agent: `airlock ca rotate` + `airlock ca activate` (which posts
/// `/v1/pki/reload`) → new connections get a certificate from the new CA; a connection opened
/// before keeps working.
#[test]
fn ca_rotation_reaches_new_connections_without_dropping_open_ones() {
    let (agent, target) = start_and_expose_time();
    let old_ca = target.ca_pem.clone();
    let rt = runtime();

    let (mut before, old_leaf) = rt.block_on(async {
        let tls = connect(target.ws, &target.host, &old_ca)
            .await
            .unwrap_or_else(|e| panic!("first connection: {e}"));
        let chain = presented_chain(&tls);
        check_certificate_rules(&chain, &old_ca);
        let mut mcp = Mcp::new(http1(tls).await, &target);
        let tools = mcp.handshake_and_list().await;
        assert!(tools.iter().any(|t| t == "get_current_time"), "{tools:?}");
        (mcp, chain[0].clone())
    });

    // Rotate: a pending CA exists, but nothing changes for clients yet.
    let rotate = cli_ok(&agent, &["ca", "rotate"]);
    let new_ca = rotate.stdout.clone();
    assert!(new_ca.contains("-----BEGIN CERTIFICATE-----"), "{rotate:?}");
    assert_ne!(
        pem_der(&new_ca),
        pem_der(&old_ca),
        "rotate must create a new CA"
    );
    let pending = cli_ok(&agent, &["ca", "export", "--pending"]).stdout;
    assert_eq!(
        pem_der(&pending),
        pem_der(&new_ca),
        "`ca export --pending` = the rotated CA"
    );
    rt.block_on(async {
        let tls = connect(target.ws, &target.host, &old_ca)
            .await
            .unwrap_or_else(|e| panic!("after `ca rotate` the old CA still serves: {e}"));
        assert_eq!(
            presented_chain(&tls)[0],
            old_leaf,
            "rotate alone must not change the served certificate"
        );
    });

    // Activate: the agent is told to reload and serves a certificate from the new CA.
    let activate = cli_ok(&agent, &["ca", "activate"]);
    println!("ca activate: {}{}", activate.stdout, activate.stderr);
    let exported = cli_ok(&agent, &["ca", "export"]).stdout;
    assert_eq!(
        pem_der(&exported),
        pem_der(&new_ca),
        "after activate, `ca export` = the new CA"
    );
    rt.block_on(async {
        // `activate` waits for the agent's reload; allow a little slack on a loaded machine, far
        // less than the hourly renewal check.
        let deadline = Instant::now() + Duration::from_secs(10);
        let tls = loop {
            match connect(target.ws, &target.host, &new_ca).await {
                Ok(tls) => break tls,
                Err(e) if Instant::now() < deadline => {
                    println!("not yet served by the new CA: {e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!(
                    "10 s after `airlock ca activate`, a client trusting only the new CA still fails: {e}"
                ),
            }
        };
        let chain = presented_chain(&tls);
        assert_ne!(chain[0], old_leaf, "a new server certificate after activate");
        check_certificate_rules(&chain, &new_ca);
        let mut mcp = Mcp::new(http1(tls).await, &target);
        mcp.handshake_and_list().await;
        mcp.call_current_time().await;

        // A client that still trusts only the old CA cannot connect any more.
        let err = connect(target.ws, &target.host, &old_ca)
            .await
            .expect_err("new handshakes are served by the new CA only");
        assert!(err.to_string().to_ascii_lowercase().contains("certificate"), "{err}");

        // The connection opened before the rotation keeps working.
        before.call_current_time().await;
    });
    let list = agent.cli_json(&["ca", "list", "--json"]);
    let roles: Vec<(String, String)> = list["cas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["role"].as_str().unwrap_or_default().to_string(),
                c["fingerprint"]
                    .as_str()
                    .unwrap_or_default()
                    .replace(':', "")
                    .to_ascii_lowercase(),
            )
        })
        .collect();
    assert!(
        roles.contains(&("active".into(), sha256_hex(&pem_der(&new_ca))))
            && roles.contains(&("previous".into(), sha256_hex(&pem_der(&old_ca)))),
        "`ca list` must show the new CA active and the old one as previous: {list}"
    );
    drop(agent);
}

/// With a short certificate validity (`cert_duration = "40s"`, `renew_before = "30s"`), the running agent renews the
/// server certificate on its own: new handshakes get the new certificate, the open connection keeps working.
#[test]
fn short_lived_certificate_is_renewed_in_place() {
    let home = tunnel_home();
    let cfg =
        std::fs::read_to_string(home.airlock_home().join("config.toml")).expect("read config.toml");
    home.write_airlock_config(&format!(
        "{cfg}cert_duration = \"40s\"\nrenew_before = \"30s\"\n"
    ));
    let agent = Agent::start(home);
    agent.wait_server("time", Duration::from_secs(60));
    cli_ok(&agent, &["expose", "time", "--yes", "--hostname", "time"]);
    let url = agent.cli_json(&["url", "time", "--json"]);
    let target = Target {
        ws: listen_addr(&agent),
        host: format!("time.{DOMAIN}"),
        token: airlock_e2e::oauth::obtain_token(&agent, url["url"].as_str().unwrap_or_default())
            .access_token,
        ca_pem: cli_ok(&agent, &["ca", "export"]).stdout,
    };
    let rt = runtime();
    rt.block_on(async {
        let tls = connect(target.ws, &target.host, &target.ca_pem)
            .await
            .unwrap_or_else(|e| panic!("first connection: {e}"));
        let first_leaf = presented_chain(&tls)[0].clone();
        let mut open = Mcp::new(http1(tls).await, &target);
        open.handshake_and_list().await;
        // Renewal is due 10 s after issue and checked every 7.5 s; allow far more on a loaded machine.
        let started = Instant::now();
        let renewed = loop {
            let tls = connect(target.ws, &target.host, &target.ca_pem)
                .await
                .unwrap_or_else(|e| panic!("a new connection during renewal: {e}"));
            let chain = presented_chain(&tls);
            if chain[0] != first_leaf {
                check_certificate_rules(&chain, &target.ca_pem);
                break chain[0].clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the certificate was not renewed within 120 s\n{}",
                agent.stderr_log()
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        println!("renewed after {:?}", started.elapsed());
        assert_ne!(renewed, first_leaf);
        // The connection opened with the old certificate still serves calls.
        open.call_current_time().await;
    });
    drop(agent);
}

/// Writes the cloudflared stand-in: exits 1 without `TUNNEL_TOKEN`, logs four registered
/// connections in cloudflared's format, then sleeps until SIGTERM.
fn write_cloudflared_stand_in(dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(dir).expect("create the stand-in dir");
    let script = r#"#!/bin/bash
log() { echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $1 $2" >&2; }
if [ -z "$TUNNEL_TOKEN" ]; then
  log ERR '"cloudflared tunnel run" requires the ID or name of the tunnel to run as the last command line argument or in the configuration file.'
  exit 1
fi
log INF "Starting tunnel tunnelID=6ff42ae2-765d-4adf-8112-31c55c1551ef"
log INF "Version 2026.7.2 (Checksum 4b1e0e2f)"
log INF "Initial protocol quic"
trap 'for i in 0 1 2 3; do log INF "Unregistered tunnel connection connIndex=$i event=0 ip=198.41.192.$((7 + i * 10))"; done; kill $sleeper 2>/dev/null; exit 0' TERM
for i in 0 1 2 3; do
  log INF "Registered tunnel connection connIndex=$i connection=0b3c1f4e-6a51-4a3e-9d7b-2a1f0c9e8d7$i event=0 ip=198.41.192.$((7 + i * 10)) location=lhr0$((i % 2 + 1)) protocol=quic"
done
while :; do sleep 1 & sleeper=$!; wait $sleeper; done
"#;
    let path = dir.join("cloudflared");
    std::fs::write(&path, script).expect("write the cloudflared stand-in");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the cloudflared stand-in");
    path
}

/// `airlock tunnel set-token` with the token on stdin.
fn set_token(home: &TestHome, token: &str) -> String {
    let mut cmd: Command = home.airlock();
    cmd.args(["tunnel", "set-token"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start `airlock tunnel set-token`");
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        std::io::Write::write_all(&mut stdin, format!("{token}\n").as_bytes())
            .expect("write the token to stdin");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("`airlock tunnel set-token` did not finish within 60 s")
        .expect("wait for `airlock tunnel set-token`");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "`airlock tunnel set-token` failed: {text}"
    );
    text
}

/// cloudflared supervised by the agent: token only in the child's environment, four
/// connections reported in `airlock status`, nothing left behind when the agent stops.
#[test]
fn cloudflared_runs_with_the_token_only_in_its_environment_and_stops_with_the_agent() {
    let mut home = tunnel_home();
    let bin_dir = home.scratch().join("fake-bin");
    let stand_in = write_cloudflared_stand_in(&bin_dir);
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    home.set_env("PATH", &path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let token = format!(
        "eyJhIjoiZTJlIiwidCI6InR1bm5lbCJ9{nanos:x}{:x}",
        std::process::id()
    );
    let printed = set_token(&home, &token);
    assert!(
        !printed.contains(&token),
        "set-token must not echo the token: {printed}"
    );

    let mut agent = Agent::start(home);
    let listen = listen_addr(&agent);
    let cf = wait_for(
        Duration::from_secs(60),
        "anthropic.cloudflared = running with 4 connections in `airlock status --json`",
        || {
            let s = agent.cli_json(&["status", "--json"]);
            let cf = s["anthropic"]["cloudflared"].clone();
            (cf["state"] == "running" && cf["connections"] == 4).then_some(cf)
        },
    );
    let pid = cf["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("cloudflared state has no pid: {cf}"));
    let status_text = agent.cli(&["status", "--json"]).stdout;
    assert!(
        !status_text.contains(&token),
        "status must not show the token"
    );

    // The running process is our stand-in, started by the agent with the documented arguments.
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_else(|e| panic!("cloudflared pid {pid} from status is not running: {e}"));
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert!(
        argv.iter().any(|a| Path::new(a) == stand_in),
        "the process must be the stand-in found on PATH: {argv:?}"
    );
    let url = format!("http://{listen}");
    let tail: Vec<&str> = argv
        .iter()
        .map(String::as_str)
        .skip_while(|a| *a != "tunnel")
        .collect();
    assert_eq!(
        tail,
        ["tunnel", "--no-autoupdate", "run", "--url", url.as_str()],
        "cloudflared arguments: {argv:?}"
    );
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&token),
        "the token must not be on cloudflared's command line: {argv:?}"
    );
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/environ: {e}"));
    let want = format!("TUNNEL_TOKEN={token}");
    assert!(
        environ.split(|b| *b == 0).any(|kv| kv == want.as_bytes()),
        "the token must reach cloudflared in TUNNEL_TOKEN"
    );
    let parent = processes()
        .into_iter()
        .find(|p| u64::from(p.pid) == pid)
        .map(|p| p.ppid);
    assert_eq!(
        parent,
        Some(agent.pid()),
        "cloudflared is the agent's child"
    );

    // Stop the agent: the stand-in goes with it and the token never reached the logs.
    let scratch = agent.home.scratch();
    let needle = bin_dir.to_string_lossy().into_owned();
    let status = agent.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "the agent must exit cleanly on SIGTERM: {status:?}\n{}",
        agent.stderr_log()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<_> = processes()
            .into_iter()
            .filter(|p| p.cmdline.contains(&needle))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "30 s after the agent stopped, cloudflared stand-in processes are still running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut logs = agent.stderr_log();
    logs.push_str(&std::fs::read_to_string(scratch.join("agent.stdout.log")).unwrap_or_default());
    assert!(!logs.trim().is_empty(), "the agent logged nothing at all");
    assert!(
        !logs.contains(&token),
        "the cloudflared token appears in the agent's log output"
    );
    drop(agent);
}
