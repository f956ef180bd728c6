//! End-to-end tests of the gateway: real child processes (the `airlock-fixture-mcp` binary),
//! real loopback HTTP, rmcp's streamable HTTP client and raw reqwest POSTs.
#![allow(deprecated)] // sampling (SEP-2577) is still what legacy servers use

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use airlock_gateway::{
    Access, AccessVerifier, AuthEndpoints, EndpointContext, Gateway, GatewayOptions, Health,
    NoAudit, ResourceServer, Route, RouteStatus, Scopes, TokenRejection, UpstreamSpec,
    serve_loopback,
};
use rmcp::{
    RoleClient, ServiceExt,
    model::{CallToolRequestParams, ProtocolVersion},
    service::{ClientLifecycleMode, RunningService, serve_client_with_lifecycle},
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-token-123";
const FIXTURE: &str = env!("CARGO_BIN_EXE_airlock-fixture-mcp");
/// Generous bound for anything on a loaded 2-core machine.
const BOUND: Duration = Duration::from_secs(60);

/// Every exposed server accepts `TOKEN` with full scope (the authorization server is another crate).
struct AnyServer;

impl AccessVerifier for AnyServer {
    fn verify(&self, _server_id: &str, token: &str) -> Result<Access, TokenRejection> {
        if token != TOKEN {
            return Err(TokenRejection::Invalid);
        }
        Ok(Access {
            grant_id: "g".into(),
            client_id: "c".into(),
            client_name: "test".into(),
            scopes: Scopes::ALL,
            tools: None,
        })
    }
}

struct NoEndpoints;

impl AuthEndpoints for NoEndpoints {
    fn handle(
        &self,
        _ctx: EndpointContext,
        _req: http::Request<axum::body::Body>,
    ) -> futures::future::BoxFuture<'static, http::Response<axum::body::Body>> {
        Box::pin(async {
            let mut r = http::Response::new(axum::body::Body::empty());
            *r.status_mut() = http::StatusCode::NOT_IMPLEMENTED;
            r
        })
    }
}

struct Harness {
    gateway: Gateway,
    port: u16,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Harness {
    async fn start() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
        let gateway = Gateway::new(GatewayOptions {
            restart_initial: Duration::from_millis(100),
            restart_max: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(2),
            ..GatewayOptions::default()
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let port = listener.local_addr().expect("local addr").port();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve_loopback(
            gateway.clone(),
            listener,
            ResourceServer::new(
                Arc::new(AnyServer),
                Arc::new(NoEndpoints),
                Arc::new(NoAudit),
            ),
            shutdown.clone(),
        ));
        Self {
            gateway,
            port,
            shutdown,
            server,
        }
    }

    fn url(&self, slug: &str) -> String {
        format!("http://127.0.0.1:{}/{slug}/mcp", self.port)
    }

    async fn expose_fixture(&self, id: &str, slug: &str, flags: &[&str]) {
        self.gateway
            .expose(Route {
                id: id.into(),
                slug: slug.into(),
                upstream: UpstreamSpec::Stdio {
                    command: FIXTURE.into(),
                    args: flags.iter().map(|s| s.to_string()).collect(),
                    env: BTreeMap::from([("FIXTURE_SECRET".into(), "do-not-log".into())]),
                    cwd: None,
                },
            })
            .await
            .expect("expose fixture");
    }

    /// Waits until route `id` is Ready with a pid different from `not_pid`.
    async fn wait_ready(&self, id: &str, not_pid: Option<u32>) -> (String, u32) {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let status: Option<RouteStatus> =
                self.gateway.routes().into_iter().find(|r| r.id == id);
            if let Some(RouteStatus {
                health:
                    Health::Ready {
                        era,
                        pid: Some(pid),
                    },
                ..
            }) = status
                && Some(pid) != not_pid
            {
                return (era, pid);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "route {id} never became ready: {:?}",
                self.gateway.routes()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.gateway.shutdown().await;
        let _ = tokio::time::timeout(BOUND, self.server).await;
    }
}

fn transport(url: &str) -> StreamableHttpClientTransport<reqwest::Client> {
    StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(TOKEN),
    )
}

async fn legacy_client(url: &str) -> RunningService<RoleClient, ()> {
    tokio::time::timeout(BOUND, ().serve(transport(url)))
        .await
        .expect("legacy initialize in time")
        .expect("legacy initialize")
}

async fn modern_client(url: &str) -> RunningService<RoleClient, ()> {
    tokio::time::timeout(
        BOUND,
        serve_client_with_lifecycle(
            (),
            transport(url),
            ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        ),
    )
    .await
    .expect("modern discover in time")
    .expect("modern discover")
}

fn args(v: Value) -> rmcp::model::JsonObject {
    match v {
        Value::Object(m) => m,
        _ => rmcp::model::JsonObject::new(),
    }
}

async fn call_text(client: &RunningService<RoleClient, ()>, tool: &str, a: Value) -> String {
    let result = tokio::time::timeout(
        BOUND,
        client
            .peer()
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args(a))),
    )
    .await
    .expect("tool call in time")
    .expect("tool call");
    result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .expect("text content")
}

async fn tool_names(client: &RunningService<RoleClient, ()>) -> Vec<String> {
    let tools = tokio::time::timeout(BOUND, client.peer().list_tools(None))
        .await
        .expect("list in time")
        .expect("list tools");
    tools.tools.iter().map(|t| t.name.to_string()).collect()
}

/// Raw Streamable HTTP helper (we control ids and headers).
struct Raw {
    http: reqwest::Client,
    url: String,
}

impl Raw {
    fn new(url: String) -> Self {
        Self {
            http: reqwest::Client::new(),
            url,
        }
    }

    async fn post(&self, session: Option<&str>, body: Value) -> reqwest::Response {
        let mut req = self
            .http
            .post(&self.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(s) = session {
            req = req
                .header("mcp-session-id", s)
                .header("mcp-protocol-version", "2025-11-25");
        }
        tokio::time::timeout(BOUND, req.send())
            .await
            .expect("POST in time")
            .expect("POST")
    }

    /// initialize + notifications/initialized; returns the session id.
    async fn open_session(&self) -> String {
        let resp = self
            .post(
                None,
                json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
                    "protocolVersion":"2025-11-25","capabilities":{},
                    "clientInfo":{"name":"raw","version":"1"}}}),
            )
            .await;
        assert_eq!(resp.status(), 200);
        let sid = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .expect("session id header")
            .to_owned();
        let msgs = sse_messages(resp).await;
        assert!(
            msgs.iter()
                .any(|m| m["id"] == 1 && m["result"]["serverInfo"].is_object()),
            "initialize result: {msgs:?}"
        );
        let resp = self
            .post(
                Some(&sid),
                json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
            )
            .await;
        assert_eq!(resp.status(), 202);
        sid
    }
}

/// All JSON messages of an SSE (or JSON) response body.
async fn sse_messages(resp: reqwest::Response) -> Vec<Value> {
    let is_json = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let text = tokio::time::timeout(BOUND, resp.text())
        .await
        .expect("body in time")
        .expect("body");
    if is_json {
        return serde_json::from_str(&text).into_iter().collect();
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .filter_map(|d| serde_json::from_str(d).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_and_modern_clients_share_one_modern_child() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    let (era, pid) = h.wait_ready("fx", None).await;
    assert_eq!(era, "2026-07-28", "dual-era fixture is probed as modern");

    let legacy = legacy_client(&h.url("fx")).await;
    let names = tool_names(&legacy).await;
    assert!(names.contains(&"echo".to_string()), "{names:?}");
    assert_eq!(
        call_text(&legacy, "echo", json!({"text":"hello"})).await,
        "hello"
    );
    assert_eq!(call_text(&legacy, "add", json!({"a":2,"b":40})).await, "42");
    assert_eq!(call_text(&legacy, "pid", json!({})).await, pid.to_string());

    let modern = modern_client(&h.url("fx")).await;
    let names = tool_names(&modern).await;
    assert!(names.contains(&"slow".to_string()), "{names:?}");
    assert_eq!(call_text(&modern, "echo", json!({"text":"hi"})).await, "hi");
    // Same shared child.
    assert_eq!(call_text(&modern, "pid", json!({})).await, pid.to_string());

    let _ = legacy.cancel().await;
    let _ = modern.cancel().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_child_serves_both_eras() {
    let h = Harness::start().await;
    h.expose_fixture("old", "old", &["--legacy", "--stderr-noise"])
        .await;
    let (era, pid) = h.wait_ready("old", None).await;
    assert_eq!(
        era, "2025-11-25",
        "legacy-only fixture falls back to initialize"
    );

    let legacy = legacy_client(&h.url("old")).await;
    assert_eq!(call_text(&legacy, "echo", json!({"text":"a"})).await, "a");
    let modern = modern_client(&h.url("old")).await;
    assert!(tool_names(&modern).await.contains(&"add".to_string()));
    assert_eq!(call_text(&modern, "add", json!({"a":1,"b":2})).await, "3");
    assert_eq!(call_text(&modern, "pid", json!({})).await, pid.to_string());

    let _ = legacy.cancel().await;
    let _ = modern.cancel().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colliding_ids_in_two_sessions_get_their_own_results() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    h.wait_ready("fx", None).await;
    let raw = Raw::new(h.url("fx"));
    let s1 = raw.open_session().await;
    let s2 = raw.open_session().await;
    assert_ne!(s1, s2);

    for round in 0..5 {
        let call = |sid: String, text: String| {
            let raw = &raw;
            async move {
                // `slow` first so both calls overlap in the child.
                let resp = raw
                    .post(
                        Some(&sid),
                        json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
                               "params":{"name":"echo","arguments":{"text":text}}}),
                    )
                    .await;
                assert_eq!(resp.status(), 200);
                sse_messages(resp).await
            }
        };
        let (a, b) = tokio::join!(
            call(s1.clone(), format!("one-{round}")),
            call(s2.clone(), format!("two-{round}"))
        );
        let text = |msgs: &[Value]| {
            msgs.iter()
                .find(|m| m["id"] == 7)
                .map(|m| m["result"]["content"][0]["text"].clone())
        };
        assert_eq!(text(&a), Some(json!(format!("one-{round}"))), "{a:?}");
        assert_eq!(text(&b), Some(json!(format!("two-{round}"))), "{b:?}");
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_routed_with_the_clients_token() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    h.wait_ready("fx", None).await;
    let raw = Raw::new(h.url("fx"));
    let sid = raw.open_session().await;
    let resp = raw
        .post(
            Some(&sid),
            json!({"jsonrpc":"2.0","id":"p1","method":"tools/call","params":{
                "name":"slow","arguments":{"ms":200,"steps":3},
                "_meta":{"progressToken":"my-token"}}}),
        )
        .await;
    let msgs = sse_messages(resp).await;
    let progress: Vec<&Value> = msgs
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{msgs:?}");
    assert!(
        progress
            .iter()
            .all(|m| m["params"]["progressToken"] == "my-token"),
        "{progress:?}"
    );
    assert!(
        msgs.iter()
            .any(|m| m["id"] == "p1" && m["result"].is_object())
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_mid_call_errors_promptly_restarts_and_expires_sessions() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    let (_, pid1) = h.wait_ready("fx", None).await;
    let raw = Raw::new(h.url("fx"));
    let sid = raw.open_session().await;
    let mut events = h.gateway.subscribe();

    // A long call in flight…
    let slow = {
        let raw = Raw::new(h.url("fx"));
        let sid = sid.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = raw
                .post(
                    Some(&sid),
                    json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
                           "params":{"name":"slow","arguments":{"ms":120000}}}),
                )
                .await;
            (sse_messages(resp).await, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    // …when the child crashes.
    let resp = raw
        .post(
            Some(&sid),
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"crash","arguments":{}}}),
        )
        .await;
    let crash_msgs = sse_messages(resp).await;
    assert!(
        crash_msgs
            .iter()
            .any(|m| m["id"] == 2 && m["error"].is_object()),
        "crash call must get a JSON-RPC error: {crash_msgs:?}"
    );
    let (msgs, took) = tokio::time::timeout(Duration::from_secs(20), slow)
        .await
        .expect("in-flight call must not hang")
        .expect("join");
    assert!(
        msgs.iter().any(|m| m["id"] == 1 && m["error"].is_object()),
        "in-flight call must get a JSON-RPC error: {msgs:?}"
    );
    assert!(took < Duration::from_secs(20), "took {took:?}");

    // Restarted with a new process.
    let (_, pid2) = h.wait_ready("fx", Some(pid1)).await;
    assert_ne!(pid1, pid2);
    // The restart was reported, with the child's last stderr line as context.
    let mut restarting = None;
    while let Ok(ev) = events.try_recv() {
        if let Health::Restarting { last_error, .. } = ev.health {
            restarting = Some(last_error);
        }
    }
    let last_error = restarting.expect("a Restarting status was broadcast");
    assert!(
        last_error.contains("exited") && last_error.contains("crash requested"),
        "{last_error}"
    );
    // Old session → 404, so clients re-initialize.
    let resp = raw
        .post(
            Some(&sid),
            json!({"jsonrpc":"2.0","id":3,"method":"tools/list"}),
        )
        .await;
    assert_eq!(resp.status(), 404);
    // A new session works and talks to the new child.
    let client = legacy_client(&h.url("fx")).await;
    assert_eq!(call_text(&client, "pid", json!({})).await, pid2.to_string());
    let _ = client.cancel().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_checks_host_origin_and_bearer() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    h.wait_ready("fx", None).await;
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"x","version":"1"}}});
    let post = |host: Option<String>, origin: Option<&'static str>, auth: Option<&'static str>| {
        let mut r = http
            .post(h.url("fx"))
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(init.to_string());
        if let Some(host) = host {
            r = r.header("host", host);
        }
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.send()
    };
    let bearer = "Bearer test-token-123";
    let r = post(Some(format!("evil.example:{}", h.port)), None, Some(bearer))
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = post(None, Some("https://evil.example"), Some(bearer))
        .await
        .expect("post");
    assert_eq!(r.status(), 403);
    let r = post(None, None, None).await.expect("post");
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer resource_metadata=")),
        "{:?}",
        r.headers()
    );
    let r = post(None, None, Some("Bearer wrong")).await.expect("post");
    assert_eq!(r.status(), 401);
    // Allowed origin + correct token + localhost Host → OK.
    let origin: &'static str = Box::leak(format!("http://localhost:{}", h.port).into_boxed_str());
    let r = post(
        Some(format!("localhost:{}", h.port)),
        Some(origin),
        Some(bearer),
    )
    .await
    .expect("post");
    assert_eq!(r.status(), 200);
    // Unknown slug → 404 JSON.
    let r = http
        .post(format!("http://127.0.0.1:{}/nope/mcp", h.port))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);
    assert!(r.json::<Value>().await.is_ok());
    // healthz needs no auth.
    let r = http
        .get(format!("http://127.0.0.1:{}/healthz", h.port))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    h.stop().await;
}

/// In-process MCP server behind a header-recording layer, used as an HTTP upstream.
mod upstream {
    use super::*;
    use rmcp::{
        ErrorData as McpError, RoleServer, ServerHandler,
        model::{
            CallToolResponse, CallToolResult, ContentBlock, ListToolsResult,
            PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
        },
        service::RequestContext,
        transport::streamable_http_server::{
            StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
        },
    };

    pub struct Upstream;

    impl ServerHandler for Upstream {
        fn get_info(&self) -> ServerConfig {
            ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
        }
        async fn list_tools(
            &self,
            _r: Option<PaginatedRequestParams>,
            _c: RequestContext<RoleServer>,
        ) -> Result<ListToolsResult, McpError> {
            Ok(ListToolsResult::with_all_items(vec![Tool::new(
                "whoami",
                "says upstream",
                Arc::new(rmcp::model::JsonObject::new()),
            )]))
        }
        async fn call_tool(
            &self,
            _r: rmcp::model::CallToolRequestParams,
            _c: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, McpError> {
            Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                ContentBlock::text("upstream"),
            ])))
        }
    }

    pub type Seen = Arc<Mutex<Vec<http::HeaderMap>>>;

    pub async fn start() -> (u16, Seen, tokio::task::JoinHandle<()>) {
        let seen: Seen = Arc::default();
        let service = StreamableHttpService::new(
            || Ok(Upstream),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let record = seen.clone();
        let router = axum::Router::new().fallback(move |req: http::Request<axum::body::Body>| {
            let service = service.clone();
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(req.headers().clone());
                service.handle(req).await.map(axum::body::Body::new)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (port, seen, task)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_is_proxied_without_credentials() {
    let h = Harness::start().await;
    let (port, seen, task) = upstream::start().await;
    h.gateway
        .expose(Route {
            id: "up".into(),
            slug: "up".into(),
            upstream: UpstreamSpec::Http {
                url: format!("http://127.0.0.1:{port}/mcp"),
            },
        })
        .await
        .expect("expose http upstream");
    assert!(matches!(h.gateway.routes()[0].health, Health::Proxy { .. }));
    let client = legacy_client(&h.url("up")).await;
    assert_eq!(tool_names(&client).await, vec!["whoami".to_string()]);
    assert_eq!(call_text(&client, "whoami", json!({})).await, "upstream");
    let modern = modern_client(&h.url("up")).await;
    assert_eq!(call_text(&modern, "whoami", json!({})).await, "upstream");
    let _ = client.cancel().await;
    let _ = modern.cancel().await;

    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    assert!(seen.len() >= 4, "upstream saw {} requests", seen.len());
    assert!(
        seen.iter().all(|h| h.get("authorization").is_none()),
        "Authorization leaked to the upstream"
    );
    assert!(
        seen.iter().any(|h| h.get("mcp-session-id").is_some()),
        "session id must be forwarded"
    );
    assert!(seen.iter().any(|h| h.get("mcp-protocol-version").is_some()));

    // Public address literals are refused at expose time (names are checked per dial: see tests/ssrf.rs).
    let err = h
        .gateway
        .expose(Route {
            id: "pub".into(),
            slug: "pub".into(),
            upstream: UpstreamSpec::Http {
                url: "http://8.8.8.8/mcp".into(),
            },
        })
        .await;
    assert!(err.is_err());
    task.abort();
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_children_and_unexpose_removes_routes() {
    let h = Harness::start().await;
    h.expose_fixture("a", "a", &[]).await;
    h.expose_fixture("b", "b", &["--legacy"]).await;
    let (_, pid_a) = h.wait_ready("a", None).await;
    let (_, pid_b) = h.wait_ready("b", None).await;
    let mut events = h.gateway.subscribe();

    assert!(h.gateway.unexpose("a").await);
    assert!(!h.gateway.unexpose("a").await);
    assert!(
        !proc_alive(pid_a).await,
        "child a must be gone after unexpose"
    );
    let r = reqwest::Client::new()
        .post(h.url("a"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 404);

    h.gateway.shutdown().await;
    assert!(
        !proc_alive(pid_b).await,
        "child b must be gone after shutdown"
    );
    let mut stopped = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if ev.health == Health::Stopped {
            stopped.push(ev.id);
        }
    }
    assert!(stopped.contains(&"a".to_string()), "{stopped:?}");
    assert!(stopped.contains(&"b".to_string()), "{stopped:?}");
    h.stop().await;
}

/// Whether a process is still running (not a zombie), waiting briefly for it to go.
async fn proc_alive(pid: u32) -> bool {
    for _ in 0..100 {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => return false,
            Ok(stat) => {
                // Field 3 is the state; Z = zombie (exited, not yet reaped).
                let state = stat
                    .rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    .unwrap_or("");
                if state == "Z" || state == "X" {
                    return false;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    true
}

/// A legacy client that answers sampling requests.
struct Sampler;

impl rmcp::ClientHandler for Sampler {
    async fn create_message(
        &self,
        _params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        Ok(rmcp::model::CreateMessageResult::new(
            rmcp::model::SamplingMessage::assistant_text("pong-from-client"),
            "test-model".into(),
        ))
    }

    fn get_info(&self) -> rmcp::model::ClientConfig {
        let mut caps = rmcp::model::ClientCapabilities::default();
        caps.sampling = Some(Default::default());
        rmcp::model::ClientConfig::new(caps, rmcp::model::Implementation::new("sampler", "1"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_requests_reach_the_calling_session_or_fail_fast() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &["--legacy"]).await;
    h.wait_ready("fx", None).await;

    // The session whose tools/call caused the request answers it.
    let sampler = tokio::time::timeout(BOUND, Sampler.serve(transport(&h.url("fx"))))
        .await
        .expect("init in time")
        .expect("init");
    let result = tokio::time::timeout(
        BOUND,
        sampler
            .peer()
            .call_tool(CallToolRequestParams::new("sample").with_arguments(args(json!({})))),
    )
    .await
    .expect("sample in time")
    .expect("sample");
    let text = result
        .content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default();
    assert_eq!(result.is_error, Some(false), "{text}");
    assert!(text.contains("pong-from-client"), "{text}");

    // A client without the sampling capability: the child gets a JSON-RPC error, no hang.
    let plain = legacy_client(&h.url("fx")).await;
    let started = std::time::Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        plain
            .peer()
            .call_tool(CallToolRequestParams::new("sample").with_arguments(args(json!({})))),
    )
    .await
    .expect("must not hang")
    .expect("tool call itself succeeds");
    assert_eq!(result.is_error, Some(true));
    assert!(started.elapsed() < Duration::from_secs(20));
    let _ = sampler.cancel().await;
    let _ = plain.cancel().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_in_flight_requests_finish() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    let (_, pid) = h.wait_ready("fx", None).await;
    let client = legacy_client(&h.url("fx")).await;
    let slow = tokio::spawn(async move {
        let text = call_text(&client, "slow", json!({"ms": 800, "steps": 2})).await;
        let _ = client.cancel().await;
        text
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let gateway = h.gateway.clone();
    let shutdown = tokio::spawn(async move { gateway.shutdown().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New work is refused while draining.
    let r = Raw::new(h.url("fx"))
        .post(None, json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .await;
    assert_eq!(r.status(), 503);
    let text = tokio::time::timeout(BOUND, slow)
        .await
        .expect("in time")
        .expect("join");
    assert_eq!(text, "slept 800");
    tokio::time::timeout(BOUND, shutdown)
        .await
        .expect("shutdown in time")
        .expect("join");
    assert!(
        !proc_alive(pid).await,
        "child must be stopped after shutdown"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_command_restarts_with_capped_jittered_backoff() {
    let gateway = Gateway::new(GatewayOptions {
        restart_initial: Duration::from_millis(100),
        restart_max: Duration::from_millis(400),
        ..GatewayOptions::default()
    });
    let mut events = gateway.subscribe();
    gateway
        .expose(Route {
            id: "bad".into(),
            slug: "bad".into(),
            upstream: UpstreamSpec::Stdio {
                command: "/nonexistent/airlock-no-such-binary".into(),
                args: vec![],
                env: BTreeMap::new(),
                cwd: None,
            },
        })
        .await
        .expect("expose");
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let ev = tokio::time::timeout(BOUND, events.recv())
            .await
            .expect("status in time")
            .expect("status");
        if let Health::Restarting {
            attempt,
            retry_in_ms,
            last_error,
        } = ev.health
        {
            assert!(last_error.contains("failed to start"), "{last_error}");
            // A status for the same attempt may be re-sent (e.g. with a later error text): count attempts once.
            if seen.last().is_none_or(|(a, _)| *a != attempt) {
                seen.push((attempt, retry_in_ms));
            }
        }
    }
    for pair in seen.windows(2) {
        assert_eq!(
            pair[1].0,
            pair[0].0 + 1,
            "attempts count up one by one: {seen:?}"
        );
    }
    for (attempt, retry) in &seen {
        let full = (100u64 << (attempt - 1).min(8)).min(400);
        assert!(
            (full / 2..=full).contains(retry),
            "attempt {attempt}: retry {retry} ms outside [{}, {full}]",
            full / 2
        );
    }
    assert!(gateway.unexpose("bad").await);
}

/// A legacy client that reports tools/list_changed notifications.
struct Watcher(tokio::sync::mpsc::Sender<()>);

impl rmcp::ClientHandler for Watcher {
    async fn on_tool_list_changed(&self, _context: rmcp::service::NotificationContext<RoleClient>) {
        let _ = self.0.try_send(());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_reaches_every_session() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &["--legacy"]).await;
    h.wait_ready("fx", None).await;
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let watcher = tokio::time::timeout(BOUND, Watcher(tx).serve(transport(&h.url("fx"))))
        .await
        .expect("init in time")
        .expect("init");
    // Give the watcher's standalone GET stream a moment to open.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = legacy_client(&h.url("fx")).await;
    assert_eq!(
        call_text(&other, "notify_tools_changed", json!({})).await,
        "sent"
    );
    tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .expect("list_changed must reach the other session")
        .expect("channel open");
    let _ = watcher.cancel().await;
    let _ = other.cancel().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unexpose_kills_the_whole_process_group() {
    let h = Harness::start().await;
    let dir = std::env::temp_dir().join(format!("airlock-gw-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pid_file = dir.join("grandchild.pid");
    let script = format!(
        "sleep 1000 </dev/null >/dev/null 2>&1 & echo $! > '{}'; exec '{}'",
        pid_file.display(),
        FIXTURE
    );
    h.gateway
        .expose(Route {
            id: "pg".into(),
            slug: "pg".into(),
            upstream: UpstreamSpec::Stdio {
                command: "sh".into(),
                args: vec!["-c".into(), script],
                env: BTreeMap::new(),
                cwd: Some(dir.clone()),
            },
        })
        .await
        .expect("expose");
    h.wait_ready("pg", None).await;
    let grandchild: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid file")
        .trim()
        .parse()
        .expect("pid");
    assert!(proc_alive_now(grandchild), "grandchild should be running");
    assert!(h.gateway.unexpose("pg").await);
    assert!(
        !proc_alive(grandchild).await,
        "grandchild in the child's process group must be killed"
    );
    let _ = std::fs::remove_dir_all(&dir);
    h.stop().await;
}

fn proc_alive_now(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("");
        state != "Z" && state != "X"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_param_headers_are_validated_against_the_childs_tools() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &[]).await;
    h.wait_ready("fx", None).await;
    let http = reqwest::Client::new();
    let call = |header_region: &'static str| {
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
            "name":"region","arguments":{"region":"eu"},
            "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28",
                     "io.modelcontextprotocol/clientCapabilities":{},
                     "io.modelcontextprotocol/clientInfo":{"name":"raw","version":"1"}}}});
        http.post(h.url("fx"))
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "region")
            .header("mcp-param-region", header_region)
            .body(body.to_string())
            .send()
    };
    // The tool cache is seeded right after the child becomes ready; allow it a moment.
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let r = call("us").await.expect("post");
        if r.status() == 400 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "mismatch never rejected"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = call("eu").await.expect("post");
    assert_eq!(r.status(), 200);
    let msgs = sse_messages(r).await;
    assert!(
        msgs.iter()
            .any(|m| m["result"]["content"][0]["text"] == "eu"
                && m["result"]["resultType"] == "complete"),
        "{msgs:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modern_listen_streams_receive_list_changed() {
    let h = Harness::start().await;
    h.expose_fixture("fx", "fx", &["--legacy"]).await;
    h.wait_ready("fx", None).await;
    let modern = modern_client(&h.url("fx")).await;
    let filter = rmcp::model::SubscriptionFilter::builder()
        .tools_list_changed()
        .build();
    let mut sub = tokio::time::timeout(BOUND, modern.peer().listen(filter))
        .await
        .expect("listen in time")
        .expect("listen");
    assert_eq!(sub.acknowledged().tools_list_changed, Some(true));
    let other = legacy_client(&h.url("fx")).await;
    assert_eq!(
        call_text(&other, "notify_tools_changed", json!({})).await,
        "sent"
    );
    let note = tokio::time::timeout(Duration::from_secs(20), sub.next())
        .await
        .expect("notification in time")
        .expect("subscription open");
    assert!(
        matches!(
            note,
            Some(rmcp::model::ServerNotification::ToolListChangedNotification(_))
        ),
        "{note:?}"
    );
    let _ = sub.cancel().await;
    let _ = modern.cancel().await;
    let _ = other.cancel().await;
    h.stop().await;
}
