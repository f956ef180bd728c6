//! The relay path end to end, in one process: a real relay (`airlock_relay::Relay` on 127.0.0.1:0), the agent
//! (`airlock_agent::run`) connected to it, a real stdio MCP server (`airlock-fixture-mcp`) exposed, and an HTTPS
//! client that trusts only the Airlock CA and pins names to 127.0.0.1 — `initialize` and `tools/call` must work.
//! Also: two relay nodes at once, a relay restart (the agent reconnects), and the embedded default
//! (`https://127.0.0.1:<port>/mcp`, stable across agent restarts).
//!
//! The keystore is the 0600 file store (these tests do not need a desktop keychain).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_agent::client::ControlClient;
use airlock_agent::{AgentOptions, AirlockHome};
use airlock_discovery::{DiscoveryEnv, Os};
use airlock_relay::{Relay, RelayConfig};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls_pki_types::ServerName;
use rustls_pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const BIG: Duration = Duration::from_secs(60);

/// The fixture binary of the gateway crate, built on demand.
fn fixture() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let bin = dir.join("airlock-fixture-mcp");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "airlock-gateway",
                "--bin",
                "airlock-fixture-mcp",
            ])
            .status()
            .unwrap();
        assert!(st.success(), "building airlock-fixture-mcp failed");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

struct Env {
    _dir: tempfile::TempDir,
    home: AirlockHome,
    user_home: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let user_home = dir.path().join("user");
    std::fs::create_dir_all(&user_home).unwrap();
    let cfg = json!({ "mcpServers": { "fixture": { "command": fixture(), "args": [] } } });
    std::fs::write(user_home.join(".claude.json"), cfg.to_string()).unwrap();
    let home = AirlockHome::new(dir.path().join("airlock"));
    std::fs::create_dir_all(home.root()).unwrap();
    Env {
        _dir: dir,
        home,
        user_home,
    }
}

fn write_config(home: &AirlockHome, extra: &str) {
    std::fs::write(
        home.config_path(),
        format!("[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n\n{extra}"),
    )
    .unwrap();
}

struct RunningAgent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), airlock_agent::AgentError>>,
    client: ControlClient,
}

impl RunningAgent {
    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(BIG, self.task)
            .await
            .expect("agent stops")
            .unwrap()
            .unwrap();
    }
}

async fn start_agent(e: &Env) -> RunningAgent {
    let opts = AgentOptions {
        home: e.home.clone(),
        gateway_port: None,
        discovery_env: Some(DiscoveryEnv {
            home: e.user_home.clone(),
            os: Os::current(),
            vars: Default::default(),
            project_dirs: vec![],
        }),
        keystore: Some(airlock_keystore::KeystoreChoice::File),
    };
    let _ = std::fs::remove_file(e.home.runtime_path());
    let stop = CancellationToken::new();
    let task = tokio::spawn(airlock_agent::run(opts, stop.clone()));
    let deadline = tokio::time::Instant::now() + BIG;
    loop {
        if let Ok(client) = ControlClient::connect(&e.home)
            && let Ok(s) = client.get("/v1/status").await
            && s["ready"] == true
        {
            return RunningAgent { stop, task, client };
        }
        assert!(!task.is_finished(), "the agent stopped during start-up");
        assert!(tokio::time::Instant::now() < deadline, "agent not ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for<F: Fn(&Value) -> bool>(client: &ControlClient, what: &str, ok: F) -> Value {
    let deadline = tokio::time::Instant::now() + BIG;
    loop {
        let s = client.get("/v1/status").await.unwrap();
        if ok(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An HTTPS client trusting only `ca_pem`, connecting to `addr` with TLS name `name`.
struct Https {
    addr: SocketAddr,
    name: ServerName<'static>,
    host: String,
    config: Arc<rustls::ClientConfig>,
    token: String,
    session: Option<String>,
}

impl Https {
    fn new(ca_pem: &str, addr: SocketAddr, name: &str, host: String, token: &str) -> Self {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        Self {
            addr,
            name: ServerName::try_from(name.to_string()).unwrap(),
            host,
            config: Arc::new(config),
            token: token.to_string(),
            session: None,
        }
    }

    /// One JSON-RPC POST on a fresh connection; returns the JSON-RPC answer (from JSON or SSE).
    async fn rpc(&mut self, body: Value) -> Value {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .expect("TLS handshake with only the Airlock CA trusted");
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let mut req = http::Request::post("/mcp")
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-06-18");
        if let Some(s) = &self.session {
            req = req.header("mcp-session-id", s);
        }
        let req = req.body(Full::new(Bytes::from(body.to_string()))).unwrap();
        let resp = tokio::time::timeout(BIG, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let status = resp.status();
        if let Some(s) = resp.headers().get("mcp-session-id") {
            self.session = Some(s.to_str().unwrap().to_string());
        }
        let bytes = tokio::time::timeout(BIG, resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        let text = String::from_utf8_lossy(&bytes).to_string();
        assert!(status.is_success(), "{status}: {text}");
        if body.get("id").is_none() {
            return Value::Null;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            return v;
        }
        text.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
            .find(|v| v.get("id") == body.get("id"))
            .unwrap_or_else(|| panic!("no JSON-RPC answer in {text:?}"))
    }

    /// The status of one bare POST (no MCP session) with this client's Host and token.
    async fn status(&self) -> http::StatusCode {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::post("/mcp")
            .header("host", &self.host)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        send.send_request(req).await.unwrap().status()
    }

    /// One request on a fresh connection (this client's Host, no token): status, headers, body.
    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (http::StatusCode, http::HeaderMap, String) {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(self.config.clone())
            .connect(self.name.clone(), tcp)
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = tokio::time::timeout(BIG, send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            parts.status,
            parts.headers,
            String::from_utf8_lossy(&bytes).into_owned(),
        )
    }

    /// initialize → initialized → tools/call echo; asserts the echo.
    async fn mcp_round_trip(&mut self, marker: &str) {
        let init = self
            .rpc(
                json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "relay-test", "version": "1"}}}),
            )
            .await;
        assert_eq!(
            init["result"]["serverInfo"]["name"], "airlock-fixture-mcp",
            "{init}"
        );
        self.rpc(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
            .await;
        let call = self
            .rpc(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": marker}}}))
            .await;
        assert_eq!(call["result"]["content"][0]["text"], marker, "{call}");
    }
}

async fn expose_fixture(client: &ControlClient) -> Value {
    let view = client
        .post(
            "/v1/servers/fixture/expose",
            &json!({"hostname": "fixture"}),
        )
        .await
        .unwrap();
    assert_eq!(view["exposed"], true, "{view}");
    view
}

/// A token for the fixture server, minted through the control API (`airlock token create`).
async fn mint_token(client: &ControlClient, view: &Value) -> String {
    let server_id = view["id"].as_str().unwrap();
    let minted = client
        .post(
            "/v1/tokens",
            &json!({"server_id": server_id, "scope": "mcp:read mcp:call", "label": "relay test"}),
        )
        .await
        .unwrap();
    minted["token"].as_str().unwrap().to_string()
}

/// `GET path` on the loopback gateway (plain HTTP/1.1, `Connection: close`): the whole response as text.
async fn plain_get(port: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(format!("127.0.0.1:{port}"))
        .await
        .unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(BIG, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

async fn url_info(client: &ControlClient) -> Value {
    client.get("/v1/servers/fixture/url").await.unwrap()
}

fn relay_config(dir: &Path, tunnel: Option<SocketAddr>, public: Option<SocketAddr>) -> RelayConfig {
    let mut cfg = RelayConfig::new(dir.to_path_buf(), "relay.test");
    if let Some(t) = tunnel {
        cfg.tunnel_listen = t;
    }
    if let Some(p) = public {
        cfg.public_listen = p;
    }
    cfg.drain_timeout = Duration::from_secs(2);
    cfg
}

fn spawn_relay(relay: Relay) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        relay.run(async move { s.cancelled().await }).await.unwrap();
    });
    (stop, task)
}

fn node_states(status: &Value) -> Vec<String> {
    status["relay"]["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| n["state"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_serves_mcp_through_two_relay_nodes_and_reconnects_after_a_relay_restart() {
    let e = env();
    let relays = tempfile::tempdir().unwrap();
    // Two nodes of one operator: node B verifies node A's tokens with the operator public key only.
    let a = Relay::bind(relay_config(&relays.path().join("a"), None, None))
        .await
        .unwrap();
    let mut b_cfg = relay_config(&relays.path().join("b"), None, None);
    b_cfg.operator_public_key = Some(a.authority().public_key());
    let b = Relay::bind(b_cfg).await.unwrap();
    let (token, claims) = a.authority().create("laptop", None).unwrap();
    let domain = format!("{}.relay.test", claims.tunnel_id);
    let (a_tunnel, a_public, a_pin) = (a.tunnel_addr(), a.public_addr(), a.tunnel_spki_sha256());
    let (b_tunnel, b_public, b_pin) = (b.tunnel_addr(), b.public_addr(), b.tunnel_spki_sha256());
    let (a_stop, a_task) = spawn_relay(a);
    let (b_stop, b_task) = spawn_relay(b);

    // What `airlock tunnel login` writes: the nodes in config.toml, the token in the keystore.
    write_config(
        &e.home,
        &format!(
            "[relay]\nnodes = [{{ addr = \"{a_tunnel}\", fingerprint = \"{}\" }}, {{ addr = \"{b_tunnel}\", fingerprint = \"{}\" }}]\npublic_port = {}\n",
            hex::encode(a_pin),
            hex::encode(b_pin),
            a_public.port()
        ),
    );
    let ks = airlock_agent::home::open_keystore(&e.home, Some("file"), None)
        .await
        .unwrap();
    ks.set(
        airlock_agent::relay::RELAY_TOKEN,
        &airlock_keystore::Secret::from(token.as_str()),
    )
    .await
    .unwrap();

    let agent = start_agent(&e).await;
    let status = wait_for(&agent.client, "two connected nodes", |s| {
        s["relay"]["connected"] == 2
    })
    .await;
    assert_eq!(status["relay"]["mode"], "nodes");
    assert_eq!(status["relay"]["tunnel_domain"], domain.as_str());
    assert_eq!(node_states(&status), ["connected", "connected"]);
    let view = expose_fixture(&agent.client).await;
    assert_eq!(
        view["relay_url"],
        format!("https://fixture.{domain}:{}/mcp", a_public.port()).as_str()
    );
    let info = url_info(&agent.client).await;
    let token_gw = mint_token(&agent.client, &view).await;
    let ca_file = info["relay_ca_file"].as_str().unwrap().to_string();
    assert!(
        info["urls"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["kind"] == "relay" && u["ca_file"] == ca_file.as_str()),
        "{info}"
    );
    let ca = std::fs::read_to_string(&ca_file).unwrap();
    let host = format!("fixture.{domain}");

    // Through either node: the relay routes by SNI to the agent, TLS ends in the agent.
    for public in [a_public, b_public] {
        let mut c = Https::new(
            &ca,
            public,
            &host,
            format!("{host}:{}", public.port()),
            &token_gw,
        );
        c.mcp_round_trip(&format!("via-{}", public.port())).await;
    }
    // A wrong bearer token is refused inside the inner TLS.
    let bad = Https::new(&ca, a_public, &host, host.clone(), "nope");
    assert_eq!(bad.status().await, 401);

    // Relay A restarts on the same ports with the same state: the agent reconnects and serves through it again.
    a_stop.cancel();
    tokio::time::timeout(BIG, a_task).await.unwrap().unwrap();
    wait_for(&agent.client, "node A lost", |s| {
        node_states(s).first().map(String::as_str) != Some("connected")
    })
    .await;
    let started = tokio::time::Instant::now();
    let a2 = Relay::bind(relay_config(
        &relays.path().join("a"),
        Some(a_tunnel),
        Some(a_public),
    ))
    .await
    .unwrap();
    assert_eq!(a2.tunnel_spki_sha256(), a_pin, "same key after restart");
    let (a2_stop, a2_task) = spawn_relay(a2);
    wait_for(&agent.client, "node A back", |s| {
        s["relay"]["connected"] == 2
    })
    .await;
    let reconnect = started.elapsed();
    let mut c = Https::new(&ca, a_public, &host, host.clone(), &token_gw);
    c.mcp_round_trip("after-restart").await;
    println!("relay restart → reconnected in {reconnect:?}");
    assert!(reconnect < Duration::from_secs(30), "{reconnect:?}");

    agent.stop().await;
    a2_stop.cancel();
    b_stop.cancel();
    let _ = tokio::time::timeout(BIG, a2_task).await;
    let _ = tokio::time::timeout(BIG, b_task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_default_gives_each_server_a_loopback_https_url_that_survives_restarts() {
    let e = env();
    write_config(&e.home, "");
    let agent = start_agent(&e).await;
    let status = wait_for(&agent.client, "embedded relay connected", |s| {
        s["relay"]["connected"] == 1
    })
    .await;
    assert_eq!(status["relay"]["mode"], "embedded", "{status:#}");
    let domain = status["relay"]["tunnel_domain"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(domain.ends_with(".airlock.localhost"), "{domain}");
    let fingerprint = status["relay"]["ca_fingerprint"].clone();
    assert!(fingerprint.is_string(), "{status:#}");
    let view = expose_fixture(&agent.client).await;
    let info = url_info(&agent.client).await;
    let local = info["local_url"].as_str().unwrap().to_string();
    let port: u16 = local
        .strip_prefix("https://127.0.0.1:")
        .and_then(|r| r.strip_suffix("/mcp"))
        .unwrap()
        .parse()
        .unwrap();
    let token = mint_token(&agent.client, &view).await;
    let ca = std::fs::read_to_string(info["relay_ca_file"].as_str().unwrap()).unwrap();
    let local_addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // No DNS: the URL is an IP; the certificate names 127.0.0.1 and chains to the Airlock CA.
    let mut c = Https::new(
        &ca,
        local_addr,
        "127.0.0.1",
        format!("127.0.0.1:{port}"),
        &token,
    );
    c.mcp_round_trip("embedded-local").await;
    // The same server under its relay hostname (the name pinned to 127.0.0.1 here).
    let relay_url = info["relay_url"].as_str().unwrap();
    let public_port: u16 = relay_url
        .rsplit_once(':')
        .and_then(|(_, r)| r.strip_suffix("/mcp"))
        .unwrap()
        .parse()
        .unwrap();
    let host = format!("fixture.{domain}");
    let mut c = Https::new(
        &ca,
        ([127, 0, 0, 1], public_port).into(),
        &host,
        format!("{host}:{public_port}"),
        &token,
    );
    c.mcp_round_trip("embedded-relay").await;
    // A Host naming something else than this port is refused (DNS rebinding); so is a wrong token.
    let wrong = Https::new(&ca, local_addr, "127.0.0.1", "evil.example".into(), &token);
    assert_eq!(wrong.status().await, 421);
    let bad = Https::new(
        &ca,
        local_addr,
        "127.0.0.1",
        format!("127.0.0.1:{port}"),
        "nope",
    );
    assert_eq!(bad.status().await, 401);

    // OAuth on the embedded port: the challenge and the protected-resource metadata name the port's own resource URL,
    // and the authorization server maps that URL to the server (a client registered there can ask for it).
    let local_resource = format!("https://127.0.0.1:{port}/mcp");
    let (status, headers, _) = bad.request("POST", "/mcp", Some(json!({}))).await;
    assert_eq!(status, 401);
    let challenge = headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"https://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp\""
        )),
        "{challenge}"
    );
    let (status, _, prm) = bad
        .request("GET", "/.well-known/oauth-protected-resource/mcp", None)
        .await;
    assert_eq!(status, 200, "{prm}");
    let prm: Value = serde_json::from_str(&prm).unwrap();
    assert_eq!(prm["resource"], local_resource.as_str(), "{prm}");
    let (status, _, reg) = bad
        .request(
            "POST",
            "/register",
            Some(json!({"client_name": "relay port client", "redirect_uris": ["http://127.0.0.1:9/cb"],
                "grant_types": ["authorization_code"], "response_types": ["code"],
                "token_endpoint_auth_method": "none"})),
        )
        .await;
    assert_eq!(status, 201, "{reg}");
    let client_id = serde_json::from_str::<Value>(&reg).unwrap()["client_id"]
        .as_str()
        .unwrap()
        .to_string();
    let loopback = info["url"].as_str().unwrap();
    let gw_port = loopback
        .strip_prefix("http://127.0.0.1:")
        .and_then(|r| r.split('/').next())
        .unwrap();
    let enc = |v: &str| {
        v.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let query = format!(
        "response_type=code&client_id={}&redirect_uri={}&code_challenge={}&code_challenge_method=S256&state=s1&resource={}&scope={}",
        enc(&client_id),
        enc("http://127.0.0.1:9/cb"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGkSW4jCRM",
        enc(&local_resource),
        enc("mcp:read mcp:call"),
    );
    let page = plain_get(gw_port, &format!("/_airlock/oauth/authorize?{query}")).await;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let approvals = agent.client.get("/v1/approvals").await.unwrap();
    let approval = approvals
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["client_id"] == client_id.as_str())
        .unwrap_or_else(|| panic!("no approval for the port's client: {approvals}"));
    assert_eq!(approval["resource"], local_resource.as_str(), "{approval}");
    assert_eq!(approval["server_id"], view["id"], "{approval}");

    // Restart: same port, same tunnel domain, same CA.
    agent.stop().await;
    let agent = start_agent(&e).await;
    let status = wait_for(&agent.client, "embedded relay connected again", |s| {
        s["relay"]["connected"] == 1
    })
    .await;
    assert_eq!(status["relay"]["tunnel_domain"], domain.as_str());
    assert_eq!(status["relay"]["ca_fingerprint"], fingerprint);
    let info = url_info(&agent.client).await;
    assert_eq!(info["local_url"], local.as_str());
    let mut c = Https::new(
        &ca,
        local_addr,
        "127.0.0.1",
        format!("127.0.0.1:{port}"),
        &token,
    );
    c.mcp_round_trip("after-agent-restart").await;
    agent.stop().await;
}
