//! Test harness: the reference queue served on loopback, an orchestrator client, a recording
//! test-double executor and a TCP proxy that can cut every connection.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_envqueue::{EnvironmentCredentials, Store, StoreOptions};
use airlock_worker::{SessionContext, SessionTools, ToolExecutor, ToolOutput};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub struct Queue {
    pub base: String,
    pub store: Store,
    pub creds: EnvironmentCredentials,
}

pub async fn serve(opts: StoreOptions) -> Queue {
    let store = Store::in_memory(opts).unwrap();
    let creds = store.create_environment("test").await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = airlock_envqueue::router(store.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Queue {
        base: format!("http://{addr}"),
        store,
        creds,
    }
}

/// Plays the brain over HTTP with the API key (and raw worker calls with other credentials).
#[derive(Clone)]
pub struct Orchestrator {
    pub http: reqwest::Client,
    pub base: String,
    pub api_key: String,
    pub env: String,
}

impl Orchestrator {
    pub fn new(q: &Queue) -> Self {
        Self {
            http: reqwest::Client::new(),
            base: q.base.clone(),
            api_key: q.creds.api_key.clone(),
            env: q.creds.environment_id.clone(),
        }
    }

    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01")
    }

    pub async fn json(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    pub async fn create_session(&self) -> String {
        let (st, v) = self
            .json(
                self.req(reqwest::Method::POST, "/v1/sessions")
                    .json(&json!({"agent": "agent_test", "environment_id": self.env})),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Posts events; returns their server ids.
    pub async fn post(&self, sid: &str, events: Vec<Value>) -> Vec<String> {
        let (st, v) = self
            .json(
                self.req(reqwest::Method::POST, &format!("/v1/sessions/{sid}/events"))
                    .json(&json!({ "events": events })),
            )
            .await;
        assert_eq!(st, 200, "{v}");
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect()
    }

    pub async fn tool_use(&self, sid: &str, name: &str, input: Value) -> String {
        self.post(
            sid,
            vec![json!({"type": "agent.tool_use", "name": name, "input": input})],
        )
        .await
        .remove(0)
    }

    pub async fn events(&self, sid: &str) -> Vec<Value> {
        let (st, v) = self
            .json(self.req(
                reqwest::Method::GET,
                &format!("/v1/sessions/{sid}/events?limit=1000"),
            ))
            .await;
        assert_eq!(st, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    /// Results by tool_use_id.
    pub async fn results(&self, sid: &str) -> Vec<Value> {
        self.events(sid)
            .await
            .into_iter()
            .filter(|e| e["type"] == "user.tool_result" || e["type"] == "user.custom_tool_result")
            .collect()
    }

    pub async fn wait_results(&self, sid: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let r = self.results(sid).await;
            if r.len() >= n {
                return r;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} results, have {}: {r:?}",
                r.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn work_items(&self) -> Vec<Value> {
        let (st, v) = self
            .json(self.req(
                reqwest::Method::GET,
                &format!("/v1/environments/{}/work?limit=100", self.env),
            ))
            .await;
        assert_eq!(st, 200, "{v}");
        v["data"].as_array().unwrap().clone()
    }

    pub async fn wait_work_state(&self, state: &str, timeout: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(w) = self
                .work_items()
                .await
                .into_iter()
                .find(|w| w["state"] == state)
            {
                return w;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no work item reached {state}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One recorded execution.
#[derive(Debug, Clone)]
pub struct Exec {
    pub worker: String,
    pub session: String,
    pub name: String,
    pub input: Value,
}

/// Test double of the sandbox's executor: `bash` runs `/bin/bash -c`, `sleep` waits (honouring
/// cancel); every other name is not owned.
#[derive(Clone)]
pub struct RecordingExecutor {
    pub tag: String,
    pub log: Arc<Mutex<Vec<Exec>>>,
    pub closed: Arc<Mutex<u32>>,
}

impl RecordingExecutor {
    pub fn new(tag: &str, log: Arc<Mutex<Vec<Exec>>>) -> Self {
        Self {
            tag: tag.into(),
            log,
            closed: Arc::new(Mutex::new(0)),
        }
    }
}

struct RecTools {
    tag: String,
    session: String,
    log: Arc<Mutex<Vec<Exec>>>,
    closed: Arc<Mutex<u32>>,
}

impl ToolExecutor for RecordingExecutor {
    fn open_session(
        &self,
        ctx: SessionContext,
    ) -> BoxFuture<'_, Result<Box<dyn SessionTools>, String>> {
        Box::pin(async move {
            Ok(Box::new(RecTools {
                tag: self.tag.clone(),
                session: ctx.session_id,
                log: self.log.clone(),
                closed: self.closed.clone(),
            }) as Box<dyn SessionTools>)
        })
    }
}

impl SessionTools for RecTools {
    fn owns(&self, name: &str) -> bool {
        name == "bash" || name == "sleep"
    }

    fn run_tool<'a>(
        &'a mut self,
        name: &'a str,
        input: &'a Value,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            self.log.lock().unwrap().push(Exec {
                worker: self.tag.clone(),
                session: self.session.clone(),
                name: name.to_string(),
                input: input.clone(),
            });
            match name {
                "sleep" => {
                    let ms = input["ms"].as_u64().unwrap_or(0);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(ms)) => ToolOutput::text(format!("slept {ms}")),
                        _ = cancel.cancelled() => ToolOutput::error("cancelled"),
                    }
                }
                _ => {
                    let cmd = input["command"].as_str().unwrap_or("").to_string();
                    let out = tokio::process::Command::new("/bin/bash")
                        .arg("-c")
                        .arg(&cmd)
                        .output()
                        .await
                        .unwrap();
                    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
                    text.push_str(&String::from_utf8_lossy(&out.stderr));
                    let text = text.trim_end_matches('\n').to_string();
                    if out.status.success() {
                        ToolOutput::text(text)
                    } else {
                        ToolOutput::error(text)
                    }
                }
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            *self.closed.lock().unwrap() += 1;
        })
    }
}

/// A TCP proxy whose connections can all be cut at once (to force reconnects).
pub struct CutProxy {
    pub addr: SocketAddr,
    generation: Arc<Mutex<CancellationToken>>,
    /// Connections accepted so far.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl CutProxy {
    pub async fn start(upstream: &str) -> Self {
        let upstream: SocketAddr = upstream.trim_start_matches("http://").parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let generation = Arc::new(Mutex::new(CancellationToken::new()));
        let g2 = generation.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let a2 = accepted.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                a2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let token = g2.lock().unwrap().clone();
                tokio::spawn(async move {
                    let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Self {
            addr,
            generation,
            accepted,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes every open connection.
    pub fn cut(&self) {
        let mut g = self.generation.lock().unwrap();
        g.cancel();
        *g = CancellationToken::new();
    }
}

pub fn quick_config(base: &str, q: &Queue, tag: &str) -> airlock_worker::WorkerConfig {
    let mut cfg = airlock_worker::WorkerConfig::new(
        q.creds.environment_id.clone(),
        airlock_worker::Secret::new(q.creds.environment_key.clone()),
    );
    cfg.base_url = base.to_string();
    cfg.worker_id = format!("test-{tag}");
    cfg.empty_poll_sleep = (Duration::from_millis(20), Duration::from_millis(60));
    cfg.max_idle = Some(Duration::from_millis(500));
    cfg
}
