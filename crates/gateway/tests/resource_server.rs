#![allow(clippy::unwrap_used)]
//! The OAuth resource server on the loopback ingress, with the real fixture stdio server and a real HTTP upstream.
//! The verifier, endpoints and audit sink are small in-memory stand-ins (the authorization server is another
//! crate); everything else — HTTP, the bridge, the child process, rmcp clients — is real.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use airlock_gateway::{
    Access, AccessVerifier, AuditSink, AuthEndpoint, AuthEndpoints, EndpointContext, Gateway,
    GatewayOptions, Health, IngressKind, McpCall, ResourceServer, Route, RouteStatus, Scopes,
    TokenRejection, UpstreamSpec, serve_loopback,
};
use axum::body::Body;
use futures::future::BoxFuture;
use rmcp::{
    RoleClient, ServiceExt,
    model::CallToolRequestParams,
    service::RunningService,
    transport::{
        StreamableHttpClientTransport, streamable_http_client::StreamableHttpClientTransportConfig,
    },
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const FIXTURE: &str = env!("CARGO_BIN_EXE_airlock-fixture-mcp");
const BOUND: Duration = Duration::from_secs(60);

/// Tokens of the tests: token → (server id, access).
#[derive(Default)]
struct Grants {
    tokens: Mutex<HashMap<String, (String, Access)>>,
}

impl Grants {
    fn add(&self, token: &str, server: &str, scopes: Scopes, tools: Option<&[&str]>) {
        let access = Access {
            grant_id: format!("grant-{token}"),
            client_id: format!("client-{token}"),
            client_name: "Test <b>client</b>".into(),
            scopes,
            tools: tools.map(|t| t.iter().map(|s| s.to_string()).collect()),
        };
        self.tokens
            .lock()
            .unwrap()
            .insert(token.into(), (server.into(), access));
    }
}

impl AccessVerifier for Grants {
    fn verify(&self, server_id: &str, token: &str) -> Result<Access, TokenRejection> {
        match token {
            "expired" => return Err(TokenRejection::Expired),
            "revoked" => return Err(TokenRejection::Revoked),
            _ => {}
        }
        match self.tokens.lock().unwrap().get(token) {
            Some((server, access)) if server == server_id => Ok(access.clone()),
            Some(_) => Err(TokenRejection::WrongResource),
            None => Err(TokenRejection::Invalid),
        }
    }
}

/// Records what reached the authorization-server side and answers with a JSON echo of the context.
#[derive(Default)]
struct Endpoints {
    seen: Mutex<Vec<(EndpointContext, String, Option<String>)>>,
}

impl AuthEndpoints for Endpoints {
    fn handle(
        &self,
        ctx: EndpointContext,
        req: http::Request<Body>,
    ) -> BoxFuture<'static, http::Response<Body>> {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.seen.lock().unwrap().push((ctx.clone(), pq, auth));
        Box::pin(async move {
            let body = json!({"endpoint": format!("{:?}", ctx.endpoint), "issuer": ctx.issuer});
            http::Response::builder()
                .status(299)
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap()
        })
    }
}

#[derive(Default)]
struct Audit {
    calls: Mutex<Vec<McpCall>>,
}

impl AuditSink for Audit {
    fn mcp_call(&self, call: McpCall) {
        self.calls.lock().unwrap().push(call);
    }
}

struct Harness {
    gateway: Gateway,
    port: u16,
    grants: Arc<Grants>,
    endpoints: Arc<Endpoints>,
    audit: Arc<Audit>,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

impl Harness {
    async fn start() -> Self {
        let gateway = Gateway::new(GatewayOptions {
            drain_timeout: Duration::from_secs(2),
            ..GatewayOptions::default()
        });
        let grants = Arc::new(Grants::default());
        let endpoints = Arc::new(Endpoints::default());
        let audit = Arc::new(Audit::default());
        let rs = ResourceServer::new(grants.clone(), endpoints.clone(), audit.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = CancellationToken::new();
        tokio::spawn(serve_loopback(
            gateway.clone(),
            listener,
            rs,
            shutdown.clone(),
        ));
        Self {
            gateway,
            port,
            grants,
            endpoints,
            audit,
            shutdown,
            http: reqwest::Client::new(),
        }
    }

    fn origin(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn url(&self, slug: &str) -> String {
        format!("{}/{slug}/mcp", self.origin())
    }

    async fn expose_fixture(&self, id: &str, slug: &str) {
        self.gateway
            .expose(Route {
                id: id.into(),
                slug: slug.into(),
                upstream: UpstreamSpec::Stdio {
                    command: FIXTURE.into(),
                    args: vec![],
                    env: BTreeMap::new(),
                    cwd: None,
                },
            })
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let ready = self
                .gateway
                .routes()
                .into_iter()
                .any(|r: RouteStatus| r.id == id && matches!(r.health, Health::Ready { .. }));
            if ready {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{id} never ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn post(&self, url: &str, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut req = self
            .http
            .post(url)
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .body(body.to_string());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        tokio::time::timeout(BOUND, req.send())
            .await
            .unwrap()
            .unwrap()
    }

    async fn get(&self, url: &str) -> reqwest::Response {
        tokio::time::timeout(BOUND, self.http.get(url).send())
            .await
            .unwrap()
            .unwrap()
    }

    async fn wait_calls(&self, n: usize) -> Vec<McpCall> {
        let deadline = tokio::time::Instant::now() + BOUND;
        loop {
            let calls = self.audit.calls.lock().unwrap().clone();
            if calls.len() >= n {
                return calls;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "expected {n} audit records, got {calls:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.gateway.shutdown().await;
    }
}

/// The parameters of a `Bearer` challenge (`key="value"` pairs, commas inside quotes allowed).
fn challenge(resp: &reqwest::Response) -> HashMap<String, String> {
    let value = resp
        .headers()
        .get("www-authenticate")
        .expect("WWW-Authenticate header")
        .to_str()
        .unwrap();
    let rest = value.strip_prefix("Bearer ").expect("Bearer scheme");
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ' ' || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        assert_eq!(chars.next(), Some('"'), "quoted value for {key} in {value}");
        let mut v = String::new();
        for c in chars.by_ref() {
            if c == '"' {
                break;
            }
            v.push(c);
        }
        params.insert(key.trim().to_string(), v);
    }
    params
}

fn init_body() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"1"}}})
}

fn client(url: &str, token: &str) -> StreamableHttpClientTransport<reqwest::Client> {
    StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token),
    )
}

async fn connect(url: &str, token: &str) -> RunningService<RoleClient, ()> {
    tokio::time::timeout(BOUND, ().serve(client(url, token)))
        .await
        .unwrap()
        .unwrap()
}

async fn call(
    c: &RunningService<RoleClient, ()>,
    tool: &str,
    args: Value,
) -> Result<String, rmcp::ServiceError> {
    let Value::Object(args) = args else {
        panic!("object arguments")
    };
    let r = tokio::time::timeout(
        BOUND,
        c.peer()
            .call_tool(CallToolRequestParams::new(tool.to_owned()).with_arguments(args)),
    )
    .await
    .unwrap()?;
    Ok(r.content
        .first()
        .and_then(|c| c.as_text())
        .map(|t| t.text.clone())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn challenge_names_metadata_that_names_the_url_used() {
    let h = Harness::start().await;
    h.expose_fixture("fx-id", "fx").await;

    let r = h.post(&h.url("fx"), None, &init_body()).await;
    assert_eq!(r.status(), 401);
    let c = challenge(&r);
    let prm_url = format!("{}/.well-known/oauth-protected-resource/fx/mcp", h.origin());
    assert_eq!(c["resource_metadata"], prm_url, "absolute metadata URL");
    assert_eq!(c["scope"], "mcp:read mcp:call");
    assert!(!c.contains_key("error"), "no error without a token: {c:?}");

    // Fetchable without credentials; names the URL the client used and the server's issuer.
    let r = h.get(&prm_url).await;
    assert_eq!(r.status(), 200);
    let prm: Value = r.json().await.unwrap();
    assert_eq!(prm["resource"], h.url("fx"));
    assert_eq!(
        prm["authorization_servers"],
        json!([format!("{}/fx", h.origin())])
    );
    assert_eq!(prm["scopes_supported"], json!(["mcp:read", "mcp:call"]));
    assert_eq!(prm["bearer_methods_supported"], json!(["header"]));

    // A client that wrote `localhost` gets metadata naming `localhost` (RFC 9728 §3.3).
    let r = h
        .http
        .post(h.url("fx"))
        .header("host", format!("localhost:{}", h.port))
        .body(init_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let local_prm = challenge(&r)["resource_metadata"].clone();
    assert_eq!(
        local_prm,
        format!(
            "http://localhost:{}/.well-known/oauth-protected-resource/fx/mcp",
            h.port
        )
    );
    let prm: Value = h
        .http
        .get(&prm_url)
        .header("host", format!("localhost:{}", h.port))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        prm["resource"],
        format!("http://localhost:{}/fx/mcp", h.port)
    );

    // Presented but refused tokens: 401 invalid_token, with the same metadata pointer.
    for token in ["nope", "expired", "revoked"] {
        let r = h.post(&h.url("fx"), Some(token), &init_body()).await;
        assert_eq!(r.status(), 401, "{token}");
        let c = challenge(&r);
        assert_eq!(c["error"], "invalid_token", "{token}");
        assert_eq!(c["resource_metadata"], prm_url);
        assert_eq!(c["scope"], "mcp:read mcp:call");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"], "invalid_token");
    }
    // Not a bearer scheme; a token in the query string is not a credential.
    let r = h
        .http
        .post(h.url("fx"))
        .header("authorization", "Basic Zm9vOmJhcg==")
        .body(init_body().to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    h.grants.add("good", "fx-id", Scopes::ALL, None);
    let r = h
        .post(
            &format!("{}?access_token=good", h.url("fx")),
            None,
            &init_body(),
        )
        .await;
    assert_eq!(r.status(), 401);
    let r = h.post(&h.url("fx"), Some("good"), &init_body()).await;
    assert_eq!(r.status(), 200);

    // Metadata only exists for exposed servers and their MCP path; no root metadata on loopback.
    for path in [
        "/.well-known/oauth-protected-resource/nope/mcp",
        "/.well-known/oauth-protected-resource/fx/other",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = h.get(&format!("{}{path}", h.origin())).await;
        assert_eq!(r.status(), 404, "{path}");
    }
    assert!(
        h.audit
            .calls
            .lock()
            .unwrap()
            .iter()
            .all(|c| c.status != 401)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_works_only_for_its_server() {
    let h = Harness::start().await;
    h.expose_fixture("a-id", "a").await;
    h.expose_fixture("b-id", "b").await;
    h.grants.add("token-a", "a-id", Scopes::ALL, None);
    let a = connect(&h.url("a"), "token-a").await;
    assert_eq!(call(&a, "add", json!({"a": 2, "b": 3})).await.unwrap(), "5");
    let r = h.post(&h.url("b"), Some("token-a"), &init_body()).await;
    assert_eq!(r.status(), 401);
    let c = challenge(&r);
    assert_eq!(c["error"], "invalid_token");
    assert_eq!(
        c["resource_metadata"],
        format!("{}/.well-known/oauth-protected-resource/b/mcp", h.origin())
    );
    // The rmcp client gets no session on b with a's token.
    let refused = tokio::time::timeout(BOUND, ().serve(client(&h.url("b"), "token-a")))
        .await
        .unwrap();
    assert!(refused.is_err());
    let _ = a.cancel().await;
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_and_tool_lists_are_enforced_per_request() {
    let h = Harness::start().await;
    h.expose_fixture("fx-id", "fx").await;
    h.grants.add("reader", "fx-id", Scopes::READ, None);
    h.grants
        .add("echo-only", "fx-id", Scopes::ALL, Some(&["echo"]));
    h.grants.add("caller", "fx-id", Scopes::CALL, None);

    // Read-only: initialize and list work, calling does not.
    let reader = connect(&h.url("fx"), "reader").await;
    let tools = tokio::time::timeout(BOUND, reader.peer().list_tools(None))
        .await
        .unwrap()
        .unwrap();
    assert!(tools.tools.iter().any(|t| t.name == "echo"));
    assert!(call(&reader, "echo", json!({"text": "hi"})).await.is_err());
    let _ = reader.cancel().await;

    let prm_url = format!("{}/.well-known/oauth-protected-resource/fx/mcp", h.origin());
    let call_body = |tool: &str| json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":tool,"arguments":{"text":"x"}}});
    let r = h
        .post(&h.url("fx"), Some("reader"), &call_body("echo"))
        .await;
    assert_eq!(r.status(), 403);
    let c = challenge(&r);
    assert_eq!(c["error"], "insufficient_scope");
    assert_eq!(c["scope"], "mcp:read mcp:call");
    assert_eq!(c["resource_metadata"], prm_url);

    // A batch that hides a tools/call behind a list is refused as a whole.
    let batch = json!([
        {"jsonrpc":"2.0","id":1,"method":"tools/list"},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"}}}
    ]);
    let r = h.post(&h.url("fx"), Some("reader"), &batch).await;
    assert_eq!(r.status(), 403);
    assert_eq!(challenge(&r)["error"], "insufficient_scope");
    // A batch of reads passes the scope check (what the server makes of a batch is its business).
    let reads = json!([{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]);
    let r = h.post(&h.url("fx"), Some("reader"), &reads).await;
    assert!(![401, 403].contains(&r.status().as_u16()), "{}", r.status());
    // A body that is not JSON-RPC needs the call scope (it could be anything).
    let r = h
        .http
        .post(h.url("fx"))
        .bearer_auth("reader")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // mcp:call alone cannot open a session (initialize is a read), and GET/DELETE need mcp:read.
    let r = h.post(&h.url("fx"), Some("caller"), &init_body()).await;
    assert_eq!(r.status(), 403);
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = h
            .http
            .request(method.clone(), h.url("fx"))
            .bearer_auth("caller")
            .header("accept", "text/event-stream")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{method}");
    }

    // Tool-narrowed grant: echo yes, add no (403 insufficient_scope naming the tool).
    let narrow = connect(&h.url("fx"), "echo-only").await;
    // Its tools/list shows only the granted tools.
    let listed = tokio::time::timeout(BOUND, narrow.peer().list_tools(None))
        .await
        .unwrap()
        .unwrap();
    let names: Vec<String> = listed.tools.iter().map(|t| t.name.to_string()).collect();
    assert_eq!(names, ["echo"]);
    assert_eq!(
        call(&narrow, "echo", json!({"text": "hello"}))
            .await
            .unwrap(),
        "hello"
    );
    assert!(call(&narrow, "add", json!({"a": 1, "b": 2})).await.is_err());
    let _ = narrow.cancel().await;
    let r = h
        .post(&h.url("fx"), Some("echo-only"), &call_body("add"))
        .await;
    assert_eq!(r.status(), 403);
    let c = challenge(&r);
    assert_eq!(c["error"], "insufficient_scope");
    assert!(c["error_description"].contains("`add`"), "{c:?}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "insufficient_scope");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_is_audited_without_arguments() {
    let h = Harness::start().await;
    h.expose_fixture("fx-id", "fx").await;
    h.grants
        .add("t1", "fx-id", Scopes::ALL, Some(&["echo", "slow"]));
    let secret = "top-secret-argument-7f3a";

    // initialize, notifications/initialized, tools/call echo → 3 records, in order.
    let r = h.post(&h.url("fx"), Some("t1"), &init_body()).await;
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let init_len = r.bytes().await.unwrap().len() as u64;
    let with_session = |body: &Value| {
        h.http
            .post(h.url("fx"))
            .bearer_auth("t1")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", sid.clone())
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string())
    };
    let r = with_session(&json!({"jsonrpc":"2.0","method":"notifications/initialized"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let _ = r.bytes().await;
    let call_body = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text": secret}}});
    let r = with_session(&call_body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let call_resp = r.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&call_resp).contains(secret),
        "the call worked"
    );
    // A refused call is audited too (403), a call to a tool outside the grant as well.
    let r = with_session(&json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"add","arguments":{"a": secret, "b": 1}}}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 403);
    let refused_len = r.bytes().await.unwrap().len() as u64;

    let calls = h.wait_calls(4).await;
    assert_eq!(calls.len(), 4, "{calls:?}");
    let methods: Vec<&str> = calls.iter().map(|c| c.method.as_str()).collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "notifications/initialized",
            "tools/call",
            "tools/call"
        ]
    );
    for c in &calls {
        assert_eq!(c.server_id, "fx-id");
        assert_eq!(c.client_id.as_deref(), Some("client-t1"));
        assert_eq!(c.grant_id.as_deref(), Some("grant-t1"));
        assert_eq!(c.ingress, IngressKind::Loopback);
        assert!(c.duration < BOUND);
    }
    assert_eq!(calls[0].status, 200);
    assert_eq!(calls[0].bytes_in, init_body().to_string().len() as u64);
    assert_eq!(calls[0].bytes_out, init_len);
    assert_eq!((calls[1].status, calls[1].tool.as_deref()), (202, None));
    assert_eq!(calls[2].tool.as_deref(), Some("echo"));
    assert_eq!(calls[2].status, 200);
    assert_eq!(calls[2].bytes_in, call_body.to_string().len() as u64);
    assert_eq!(calls[2].bytes_out, call_resp.len() as u64);
    assert_eq!(calls[3].tool.as_deref(), Some("add"));
    assert_eq!((calls[3].status, calls[3].bytes_out), (403, refused_len));
    let dump = format!("{calls:?} {}", serde_json::to_string(&calls).unwrap());
    assert!(
        !dump.contains(secret),
        "arguments never reach the audit log"
    );

    // Streaming: a slow call's SSE response is reported once it ends, with every byte counted.
    let r = with_session(&json!({"jsonrpc":"2.0","id":4,"method":"tools/call",
        "params":{"name":"slow","arguments":{"ms": 300, "steps": 3}}}))
    .send()
    .await
    .unwrap();
    assert_eq!(r.status(), 200);
    let mut total = 0u64;
    let mut r = r;
    while let Some(chunk) = tokio::time::timeout(BOUND, r.chunk())
        .await
        .unwrap()
        .unwrap()
    {
        total += chunk.len() as u64;
    }
    let calls = h.wait_calls(5).await;
    assert_eq!(calls[4].tool.as_deref(), Some("slow"));
    assert_eq!(calls[4].bytes_out, total);
    assert!(
        calls[4].duration >= Duration::from_millis(300),
        "{:?}",
        calls[4].duration
    );

    // Unauthenticated requests and metadata reads are not MCP calls.
    let _ = h.post(&h.url("fx"), None, &init_body()).await.bytes().await;
    let _ = h
        .get(&format!(
            "{}/.well-known/oauth-protected-resource/fx/mcp",
            h.origin()
        ))
        .await
        .bytes()
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(h.audit.calls.lock().unwrap().len(), 5);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_server_paths_reach_the_endpoints_with_their_context() {
    let h = Harness::start().await;
    h.expose_fixture("fx-id", "fx").await;
    let o = h.origin();
    let cases = [
        (
            "GET",
            "/.well-known/oauth-authorization-server/fx",
            AuthEndpoint::AuthorizationServerMetadata,
        ),
        (
            "GET",
            "/.well-known/openid-configuration/fx",
            AuthEndpoint::OpenIdConfiguration,
        ),
        (
            "GET",
            "/fx/.well-known/openid-configuration",
            AuthEndpoint::OpenIdConfiguration,
        ),
        (
            "GET",
            "/fx/.well-known/oauth-authorization-server",
            AuthEndpoint::AuthorizationServerMetadata,
        ),
        ("POST", "/fx/token", AuthEndpoint::Token),
        ("POST", "/fx/register", AuthEndpoint::Register),
        ("POST", "/fx/revoke", AuthEndpoint::Revoke),
    ];
    for (method, path, endpoint) in cases {
        let r = h
            .http
            .request(method.parse().unwrap(), format!("{o}{path}?q=1"))
            .body("grant_type=x")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 299, "{path} reached the endpoints");
        let seen = h.endpoints.seen.lock().unwrap().pop().unwrap();
        let (ctx, pq, _) = seen;
        assert_eq!(pq, format!("{path}?q=1"), "request handed over unchanged");
        assert_eq!(ctx.endpoint, endpoint, "{path}");
        assert_eq!(ctx.server_id.as_deref(), Some("fx-id"));
        assert_eq!(ctx.issuer, format!("{o}/fx"));
        assert_eq!(ctx.resource, format!("{o}/fx/mcp"));
        assert_eq!(ctx.origin, o);
        assert_eq!(ctx.ingress, IngressKind::Loopback);
        assert!(ctx.peer.is_some_and(|p: SocketAddr| p.ip().is_loopback()));
    }
    // Approval pages: no server, issuer = the loopback origin.
    let r = h
        .get(&format!(
            "{o}/_airlock/oauth/authorize?client_id=c&resource=r"
        ))
        .await;
    assert_eq!(r.status(), 299);
    let (ctx, pq, _) = h.endpoints.seen.lock().unwrap().pop().unwrap();
    assert_eq!(ctx.endpoint, AuthEndpoint::Pages);
    assert_eq!(ctx.server_id, None);
    assert_eq!(ctx.issuer, o);
    assert_eq!(pq, "/_airlock/oauth/authorize?client_id=c&resource=r");
    // The loopback Host/Origin rules still apply in front of them.
    let r = h
        .http
        .post(format!("{o}/_airlock/oauth/decision"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = h
        .http
        .get(format!("{o}/_airlock/oauth/authorize"))
        .header("host", format!("evil.example:{}", h.port))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Unknown slugs and unknown well-knowns are 404, never handed over.
    for path in [
        "/.well-known/oauth-authorization-server/nope",
        "/.well-known/oauth-authorization-server",
        "/.well-known/openid-configuration",
        "/nope/token",
    ] {
        assert_eq!(h.get(&format!("{o}{path}")).await.status(), 404, "{path}");
    }
    assert!(h.endpoints.seen.lock().unwrap().is_empty());
    // Nothing of this is an MCP call; `/fx/other` is the server's and needs a token.
    assert_eq!(h.get(&format!("{o}/fx/other")).await.status(), 401);
    assert!(h.audit.calls.lock().unwrap().is_empty());
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_urls_resolve_to_their_server() {
    let h = Harness::start().await;
    h.expose_fixture("fx-id", "fx").await;
    let o = h.origin();
    let r = h.gateway.resolve_resource(&format!("{o}/fx/mcp")).unwrap();
    assert_eq!(r.server_id, "fx-id");
    assert_eq!(r.issuer, format!("{o}/fx"));
    assert_eq!(r.ingress, IngressKind::Loopback);
    let r = h
        .gateway
        .resolve_resource(&format!("http://localhost:{}/fx/mcp", h.port))
        .unwrap();
    assert_eq!(r.issuer, format!("http://localhost:{}/fx", h.port));
    for bad in [
        format!("{o}/fx"),
        format!("{o}/fx/mcp/"),
        format!("{o}/fx/mcp?x=1"),
        format!("{o}/fx/mcp#f"),
        format!("{o}/nope/mcp"),
        format!("http://127.0.0.1:{}/fx/mcp", h.port.wrapping_add(1)),
        format!("https://127.0.0.1:{}/fx/mcp", h.port),
        format!("http://10.0.0.1:{}/fx/mcp", h.port),
        "not a url".to_string(),
    ] {
        assert_eq!(h.gateway.resolve_resource(&bad), None, "{bad}");
    }
    assert_eq!(h.gateway.loopback_origin(), Some(o));
    h.stop().await;
}

/// In-process MCP server behind a header-recording layer, used as an HTTP upstream at `/api/mcp`.
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
            _r: CallToolRequestParams,
            _c: RequestContext<RoleServer>,
        ) -> Result<CallToolResponse, McpError> {
            Ok(CallToolResponse::Complete(CallToolResult::success(vec![
                ContentBlock::text("upstream"),
            ])))
        }
    }

    pub type Seen = Arc<Mutex<Vec<(String, http::HeaderMap)>>>;

    pub async fn start() -> (u16, Seen) {
        let seen: Seen = Arc::default();
        let service = StreamableHttpService::new(
            || Ok(Upstream),
            Arc::new(LocalSessionManager::default()),
            StreamableHttpServerConfig::default(),
        );
        let record = seen.clone();
        let router = axum::Router::new().fallback(move |req: http::Request<Body>| {
            let service = service.clone();
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push((req.uri().path().to_owned(), req.headers().clone()));
                service.handle(req).await.map(Body::new)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        (port, seen)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_upstream_gets_no_token_and_its_path_is_the_resource() {
    let h = Harness::start().await;
    let (port, seen) = upstream::start().await;
    h.gateway
        .expose(Route {
            id: "up-id".into(),
            slug: "up".into(),
            upstream: UpstreamSpec::Http {
                url: format!("http://127.0.0.1:{port}/api/mcp"),
            },
        })
        .await
        .unwrap();
    let url = format!("{}/up/api/mcp", h.origin());
    let r = h.post(&url, None, &init_body()).await;
    assert_eq!(r.status(), 401);
    let prm_url = challenge(&r)["resource_metadata"].clone();
    assert_eq!(
        prm_url,
        format!(
            "{}/.well-known/oauth-protected-resource/up/api/mcp",
            h.origin()
        )
    );
    let prm: Value = h.get(&prm_url).await.json().await.unwrap();
    assert_eq!(prm["resource"], url);
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing reached the upstream"
    );

    h.grants.add("up-token", "up-id", Scopes::ALL, None);
    let c = connect(&url, "up-token").await;
    assert_eq!(call(&c, "whoami", json!({})).await.unwrap(), "upstream");
    let _ = c.cancel().await;
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 3, "upstream saw {} requests", seen.len());
    assert!(seen.iter().all(|(path, _)| path == "/api/mcp"));
    assert!(
        seen.iter().all(|(_, h)| h.get("authorization").is_none()),
        "the client's token reached the upstream"
    );
    assert!(
        seen.iter()
            .all(|(_, h)| !format!("{h:?}").contains("up-token")),
        "the token leaked in another header"
    );
    let calls = h.wait_calls(3).await;
    assert!(
        calls
            .iter()
            .any(|c| c.tool.as_deref() == Some("whoami") && c.status == 200)
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_stream_is_audited_when_it_closes_with_every_streamed_byte() {
    let h = Harness::start().await;
    h.expose_fixture("fx-id", "fx").await;
    h.grants.add("t", "fx-id", Scopes::ALL, None);
    let r = h.post(&h.url("fx"), Some("t"), &init_body()).await;
    let sid = r.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let _ = r.bytes().await;
    let session_req = |method: reqwest::Method| {
        h.http
            .request(method, h.url("fx"))
            .bearer_auth("t")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-session-id", sid.clone())
            .header("mcp-protocol-version", "2025-11-25")
    };
    let r = session_req(reqwest::Method::POST)
        .body(json!({"jsonrpc":"2.0","method":"notifications/initialized"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let _ = r.bytes().await;
    // The GET stream stays open; a list_changed notification arrives on it.
    let mut stream = session_req(reqwest::Method::GET).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let r = session_req(reqwest::Method::POST)
        .body(
            json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
                "params":{"name":"notify_tools_changed","arguments":{}}})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let _ = r.bytes().await;
    let mut received = Vec::new();
    while !String::from_utf8_lossy(&received).contains("notifications/tools/list_changed") {
        let chunk = tokio::time::timeout(BOUND, stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream stays open");
        received.extend_from_slice(&chunk);
    }
    // Still open: no record for the GET yet (initialize, initialized, tools/call).
    let before = h.wait_calls(3).await;
    assert!(before.iter().all(|c| c.method != "GET"), "{before:?}");
    drop(stream);
    // Closing the stream ends the response: one GET record, at least every byte the client saw.
    let deadline = tokio::time::Instant::now() + BOUND;
    let get = loop {
        let calls = h.audit.calls.lock().unwrap().clone();
        if let Some(c) = calls.iter().find(|c| c.method == "GET") {
            break c.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no GET record: {calls:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (get.status, get.bytes_in, get.tool.as_deref()),
        (200, 0, None)
    );
    assert!(
        get.bytes_out >= received.len() as u64,
        "{} < {}",
        get.bytes_out,
        received.len()
    );
    // DELETE closes the session (a read).
    let r = session_req(reqwest::Method::DELETE).send().await.unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    let _ = r.bytes().await;
    let calls = h.wait_calls(5).await;
    assert_eq!(calls.iter().filter(|c| c.method == "DELETE").count(), 1);
    h.stop().await;
}
