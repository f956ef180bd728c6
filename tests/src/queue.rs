//! The environments work queue end to end: `airlock relay --api` serving the queue on loopback, environments made
//! with `airlock relay env create`, the orchestrating side's HTTP client (sessions, events, work items) and
//! `airlock sandbox login` with the environment key on standard input.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use crate::{TestHome, free_port, send_signal};

/// The `anthropic-beta` value of the Managed Agents endpoints.
pub const MANAGED_AGENTS_BETA: &str = "managed-agents-2026-04-01";

/// A child process stopped on drop: SIGTERM, up to 5 s to exit, then SIGKILL (and reaped).
#[derive(Debug)]
pub struct StopOnDrop(pub Child);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = send_signal(self.0.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `airlock relay --api 127.0.0.1:PORT --state DIR` (no `--domain`: only the queue runs), stopped on drop.
pub struct Queue {
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The relay's state directory (`relay env create --state` writes to it).
    pub state: PathBuf,
    _process: StopOnDrop,
}

impl Queue {
    /// Starts the queue with its state in `<scratch>/relay-state` and waits for `work queue API ready`.
    pub fn start(home: &TestHome) -> Self {
        let state = home.scratch().join("relay-state");
        let port = free_port();
        let mut cmd = home.airlock();
        cmd.args(["--log-format", "json", "relay", "--api"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--state")
            .arg(&state)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = StopOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start airlock relay --api: {e}")),
        );
        let stderr = process
            .0
            .stderr
            .take()
            .unwrap_or_else(|| panic!("relay --api has no stderr pipe"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining so the relay never blocks on a full pipe.
                    continue;
                }
            }
        });
        let started = Instant::now();
        let mut log = Vec::new();
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(l) if l.contains("work queue API ready") => break,
                Ok(l) => log.push(l),
                Err(_) => {}
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "relay --api did not start: {log:?}"
            );
        }
        Self {
            base: format!("http://127.0.0.1:{port}"),
            state,
            _process: process,
        }
    }

    /// `airlock relay env create [--name NAME] --state DIR`: a new environment, its key and an API key for the
    /// orchestrating side. The keys are printed once, on stdout (asserted).
    pub fn create_env(&self, home: &TestHome, name: Option<&str>) -> QueueEnv {
        let state = self.state.to_string_lossy().into_owned();
        let mut args = vec!["relay", "env", "create"];
        if let Some(n) = name {
            args.extend(["--name", n]);
        }
        args.extend(["--state", &state]);
        let out = home.cli(&args);
        out.assert_success("airlock relay env create");
        let v = out.json();
        let field = |k: &str| -> String {
            v[k].as_str()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| panic!("`relay env create` printed no {k}: {v}"))
                .to_string()
        };
        let (id, key, api_key) = (
            field("environment_id"),
            field("environment_key"),
            field("api_key"),
        );
        assert!(
            !out.stderr.contains(&key) && !out.stderr.contains(&api_key),
            "keys are printed once, on stdout"
        );
        QueueEnv {
            orchestrator: Orchestrator::new(&self.base, &api_key),
            id,
            key,
        }
    }
}

/// One environment of the queue.
pub struct QueueEnv {
    /// `env_…`.
    pub id: String,
    /// The environment key (the worker's credential).
    pub key: String,
    /// The orchestrating side, authenticated with the environment's API key.
    pub orchestrator: Orchestrator,
}

/// The orchestrating side of the queue over plain HTTP: what the Managed Agents backend does (create sessions, post
/// agent events) and what its users read (events, work items). Every call asserts a 2xx answer.
#[derive(Clone)]
pub struct Orchestrator {
    base: String,
    api_key: String,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Orchestrator {
    pub fn new(base: &str, api_key: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// `method path` with the API key and the beta header; the JSON answer (`null` when there is none).
    pub async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = http::Request::builder()
            .method(method.clone())
            .uri(format!("{}{path}", self.base))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", MANAGED_AGENTS_BETA);
        let body = match body {
            Some(b) => {
                rb = rb.header("content-type", "application/json");
                Bytes::from(b.to_string())
            }
            None => Bytes::new(),
        };
        let req = rb
            .body(Full::new(body))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: no answer in 30 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = resp.status();
        let bytes = tokio::time::timeout(Duration::from_secs(30), resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{method} {path}: the body did not end in 30 s"))
            .unwrap_or_else(|e| panic!("{method} {path}: body: {e}"))
            .to_bytes();
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "{method} {path}: {status} {}",
            String::from_utf8_lossy(&bytes)
        );
        v
    }

    /// `POST /v1/sessions` for `environment_id`; the session id.
    pub async fn create_session(&self, environment_id: &str, metadata: Value) -> String {
        let mut body = json!({"agent": "scripted", "environment_id": environment_id});
        if !metadata.is_null() {
            body["metadata"] = metadata;
        }
        let s = self
            .call(http::Method::POST, "/v1/sessions", Some(body))
            .await;
        s["id"]
            .as_str()
            .unwrap_or_else(|| panic!("a session without an id: {s}"))
            .to_string()
    }

    /// Posts `events` to the session; the ids the queue gave them, in order.
    pub async fn post_events(&self, sid: &str, events: Vec<Value>) -> Vec<String> {
        let n = events.len();
        let posted = self
            .call(
                http::Method::POST,
                &format!("/v1/sessions/{sid}/events"),
                Some(json!({ "events": events })),
            )
            .await;
        let ids: Vec<String> = posted["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|e| e["id"].as_str().map(str::to_string))
            .collect();
        assert_eq!(ids.len(), n, "posted {n} events, got back {posted}");
        ids
    }

    /// The session's events, oldest first (one page of up to 1000).
    pub async fn events(&self, sid: &str) -> Vec<Value> {
        let v = self
            .call(
                http::Method::GET,
                &format!("/v1/sessions/{sid}/events?limit=1000"),
                None,
            )
            .await;
        v["data"]
            .as_array()
            .unwrap_or_else(|| panic!("no event list: {v}"))
            .clone()
    }

    /// The `user.tool_result` and `user.custom_tool_result` events of the session, oldest first.
    pub async fn results(&self, sid: &str) -> Vec<Value> {
        self.events(sid)
            .await
            .into_iter()
            .filter(|e| e["type"] == "user.tool_result" || e["type"] == "user.custom_tool_result")
            .collect()
    }

    /// Waits (up to `timeout`) until the session has at least `n` results; returns them.
    pub async fn wait_results(&self, sid: &str, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.results(sid).await;
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "waited {timeout:?} for {n} results, have {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The state of the session's work item in the environment (`queued`, `active`, `stopped`, …).
    pub async fn work_state(&self, environment_id: &str, sid: &str) -> Option<String> {
        let v = self
            .call(
                http::Method::GET,
                &format!("/v1/environments/{environment_id}/work?limit=100"),
                None,
            )
            .await;
        v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|w| w["data"]["id"] == sid)
            .and_then(|w| w["state"].as_str().map(str::to_string))
    }
}

/// The text blocks of a result's `content`, joined with newlines.
pub fn result_text(result: &Value) -> String {
    result["content"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["text"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `airlock sandbox login --base-url BASE --environment-id ID` in `home` with `key` on standard input (never argv).
/// Asserts success and that the key shows in neither stdout nor stderr; returns the output.
pub fn sandbox_login(
    home: &TestHome,
    base: &str,
    environment_id: &str,
    key: &str,
) -> crate::Output {
    let mut cmd = home.airlock();
    cmd.args([
        "sandbox",
        "login",
        "--base-url",
        base,
        "--environment-id",
        environment_id,
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run airlock sandbox login: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(format!("{key}\n").as_bytes())
            .unwrap_or_else(|e| panic!("writing the key to sandbox login: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("airlock sandbox login: {e}"));
    let out = crate::Output {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        timed_out: false,
    };
    out.assert_success("airlock sandbox login");
    assert!(
        !out.stdout.contains(key) && !out.stderr.contains(key),
        "sandbox login printed the key"
    );
    out
}

/// config.toml of an agent that runs only the sandbox worker's prerequisites: no discovery probing, the file
/// keystore, no embedded relay; `extra` is appended (e.g. a `[sandbox]` section).
pub fn sandbox_agent_config(extra: &str) -> String {
    format!(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n\n[relay]\nembedded = false\n{}{extra}",
        if extra.is_empty() { "" } else { "\n" }
    )
}
