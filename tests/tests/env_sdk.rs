//! Must-show: the official `anthropic` Python SDK's `EnvironmentWorker` runs a scripted session against the work
//! queue that `airlock relay --api` serves, to completion (the queue speaks the real protocol), and Airlock's worker
//! runs the same script against the same server to the same results (the worker speaks it too).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_e2e::{TestHome, free_port, py_script, send_signal, venv_python};
use airlock_worker::{
    SessionContext, SessionTools, ToolExecutor, ToolOutput, Worker, WorkerConfig,
};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
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

#[derive(Clone)]
struct Env {
    base: String,
    id: String,
    key: String,
    api_key: String,
    http: reqwest::Client,
}

impl Env {
    fn create(home: &TestHome, state: &str, base: &str, name: &str) -> Self {
        let out = home.cli(&["relay", "env", "create", "--name", name, "--state", state]);
        out.assert_success("airlock relay env create");
        let v = out.json();
        for k in ["environment_id", "environment_key", "api_key"] {
            assert!(
                v[k].as_str().is_some_and(|s| !s.is_empty()),
                "{k} missing: {v}"
            );
        }
        assert!(
            !out.stderr.contains(v["environment_key"].as_str().unwrap()),
            "keys are printed once, on stdout"
        );
        Self {
            base: base.into(),
            id: v["environment_id"].as_str().unwrap().into(),
            key: v["environment_key"].as_str().unwrap().into(),
            api_key: v["api_key"].as_str().unwrap().into(),
            http: reqwest::Client::new(),
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut rb = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.api_key)
            .header("anthropic-version", "2023-06-01")
            .header("anthropic-beta", "managed-agents-2026-04-01");
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let r = rb.send().await.unwrap();
        let status = r.status();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert!(status.is_success(), "{path}: {status} {v}");
        v
    }

    async fn results(&self, sid: &str) -> Vec<Value> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/sessions/{sid}/events?limit=1000"),
                None,
            )
            .await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "user.tool_result" || e["type"] == "user.custom_tool_result")
            .cloned()
            .collect()
    }

    async fn wait_results(&self, sid: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = self.results(sid).await;
            if r.len() >= n {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {n} results, have {r:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn work_state(&self, sid: &str) -> Option<String> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/environments/{}/work?limit=100", self.id),
                None,
            )
            .await;
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["data"]["id"] == sid)
            .and_then(|w| w["state"].as_str().map(str::to_string))
    }
}

/// The scripted session; returns `index of the tool call -> (is_error, content)` for every result.
async fn run_script(env: &Env) -> Vec<(usize, bool, Value)> {
    let s = env
        .call(
            reqwest::Method::POST,
            "/v1/sessions",
            Some(json!({"agent": "scripted", "environment_id": env.id, "metadata": {"case": "conformance"}})),
        )
        .await;
    let sid = s["id"].as_str().unwrap().to_string();
    let calls = vec![
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo hello"}}),
        json!({"type": "agent.tool_use", "name": "write", "input": {"file_path": "notes.txt", "content": "alpha\nbeta\n"}}),
        json!({"type": "agent.tool_use", "name": "read", "input": {"file_path": "notes.txt"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo oops >&2; false"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "printf 'x\\ny\\n' | wc -l"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo gated"}, "evaluated_permission": "ask"}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo never"}, "evaluated_permission": "deny"}),
        json!({"type": "agent.custom_tool_use", "name": "lookup", "input": {"q": "served by the app backend"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo rejected"}, "evaluated_permission": "ask"}),
    ];
    let posted = env
        .call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{sid}/events"),
            Some(json!({ "events": calls })),
        )
        .await;
    let ids: Vec<String> = posted["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    env.wait_results(&sid, 5).await;
    // The gated calls wait for their confirmations.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        env.results(&sid).await.len(),
        5,
        "an `ask` call ran unconfirmed"
    );
    env.call(
        reqwest::Method::POST,
        &format!("/v1/sessions/{sid}/events"),
        Some(json!({"events": [
            {"type": "user.tool_confirmation", "tool_use_id": ids[5], "result": "allow"},
            {"type": "user.tool_confirmation", "tool_use_id": ids[8], "result": "deny"},
        ]})),
    )
    .await;
    env.wait_results(&sid, 6).await;
    // The turn ends; after max_idle the worker lets go of the item and force-stops it.
    env.call(
        reqwest::Method::POST,
        &format!("/v1/sessions/{sid}/events"),
        Some(json!({"events": [{"type": "session.status_idle", "stop_reason": {"type": "end_turn"}}]})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while env.work_state(&sid).await.as_deref() != Some("stopped") {
        assert!(Instant::now() < deadline, "the work item never stopped");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let results = env.results(&sid).await;
    let mut out: Vec<(usize, bool, Value)> = results
        .iter()
        .map(|r| {
            let id = r["tool_use_id"]
                .as_str()
                .or(r["custom_tool_use_id"].as_str())
                .unwrap();
            let idx = ids.iter().position(|i| i == id).unwrap();
            (idx, r["is_error"].as_bool().unwrap(), r["content"].clone())
        })
        .collect();
    out.sort_by_key(|(i, _, _)| *i);
    out
}

/// Test double of the sandbox executor with the reference tools' observable behaviour for this script
/// (the sandbox crate implements the real ones).
#[derive(Clone)]
struct ScriptTools {
    workdir: std::path::PathBuf,
}

impl ToolExecutor for ScriptTools {
    fn open_session(
        &self,
        _ctx: SessionContext,
    ) -> BoxFuture<'_, Result<Box<dyn SessionTools>, String>> {
        let t = self.clone();
        Box::pin(async move { Ok(Box::new(t) as Box<dyn SessionTools>) })
    }
}

impl SessionTools for ScriptTools {
    fn owns(&self, name: &str) -> bool {
        matches!(name, "bash" | "read" | "write")
    }
    fn run_tool<'a>(
        &'a mut self,
        name: &'a str,
        input: &'a Value,
        _c: CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            let path = |k: &str| self.workdir.join(input[k].as_str().unwrap_or_default());
            match name {
                "write" => {
                    let content = input["content"].as_str().unwrap_or_default();
                    std::fs::write(path("file_path"), content).unwrap();
                    ToolOutput::text(format!(
                        "wrote {} bytes to {}",
                        content.chars().count(),
                        input["file_path"].as_str().unwrap_or_default()
                    ))
                }
                "read" => ToolOutput::text(std::fs::read_to_string(path("file_path")).unwrap()),
                _ => {
                    let cmd = format!(
                        "{{ {}\n}} 2>&1",
                        input["command"].as_str().unwrap_or_default()
                    );
                    let out = tokio::process::Command::new("/bin/bash")
                        .arg("-c")
                        .arg(cmd)
                        .current_dir(&self.workdir)
                        .output()
                        .await
                        .unwrap();
                    let text = String::from_utf8_lossy(&out.stdout)
                        .trim_end_matches('\n')
                        .to_string();
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
        Box::pin(async {})
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_worker_and_airlock_worker_run_the_same_session_to_the_same_results() {
    let home = TestHome::new();
    let state = home.scratch().join("relay-state");
    let state_s = state.to_str().unwrap().to_string();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");

    // The queue: `airlock relay --api` (no --domain: only the queue runs).
    let mut cmd = home.airlock();
    cmd.args([
        "--log-format",
        "json",
        "relay",
        "--api",
        &format!("127.0.0.1:{port}"),
        "--state",
        &state_s,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut relay = KillOnDrop(cmd.spawn().unwrap());
    let stderr = relay.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let ready = Instant::now();
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains("work queue API ready") => break,
            Ok(l) => log.push(l),
            Err(_) => {}
        }
        assert!(
            ready.elapsed() < Duration::from_secs(30),
            "relay --api did not start: {log:?}"
        );
    }

    // 1. The official SDK worker.
    let sdk_env = Env::create(&home, &state_s, &base, "sdk");
    let sdk_workdir = home.scratch().join("sdk-workdir");
    std::fs::create_dir_all(&sdk_workdir).unwrap();
    let mut py = std::process::Command::new(venv_python());
    py.arg(py_script("env_sdk_worker.py"))
        .args([&base, &sdk_env.id, sdk_workdir.to_str().unwrap(), "1.0"])
        .env("ANTHROPIC_ENVIRONMENT_KEY", &sdk_env.key)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(home.scratch().join("sdk-worker.log")).unwrap(),
        ));
    let mut sdk = KillOnDrop(py.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(sdk.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("ready "),
        "the SDK worker did not start: {first:?}"
    );
    println!("anthropic SDK {}", first.trim());
    let sdk_results = run_script(&sdk_env).await;
    drop(sdk);
    assert!(std::fs::read_to_string(sdk_workdir.join("notes.txt")).unwrap() == "alpha\nbeta\n");

    // 2. Airlock's worker, same script, same server.
    let air_env = Env::create(&home, &state_s, &base, "airlock");
    let air_workdir = home.scratch().join("airlock-workdir");
    std::fs::create_dir_all(&air_workdir).unwrap();
    let mut cfg = WorkerConfig::new(
        air_env.id.clone(),
        airlock_worker::Secret::new(air_env.key.clone()),
    );
    cfg.base_url = base.clone();
    cfg.max_idle = Some(Duration::from_secs(1));
    let worker = Arc::new(
        Worker::new(
            cfg,
            Arc::new(ScriptTools {
                workdir: air_workdir.clone(),
            }),
        )
        .unwrap(),
    );
    let cancel = CancellationToken::new();
    let w = worker.clone();
    let c = cancel.clone();
    let task = tokio::spawn(async move { w.run(c).await });
    let air_results = run_script(&air_env).await;
    cancel.cancel();
    task.await.unwrap().unwrap();

    let expected_indexes: Vec<usize> = vec![0, 1, 2, 3, 4, 5];
    assert_eq!(
        sdk_results.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected_indexes,
        "the SDK answered exactly the owned, allowed calls: {sdk_results:?}"
    );
    assert_eq!(sdk_results[0].2, json!([{"type": "text", "text": "hello"}]));
    assert!(sdk_results[3].1, "a failing command is a tool error");
    assert_eq!(
        air_results, sdk_results,
        "Airlock's worker produced other results than the SDK's"
    );
    let recent = worker.status().borrow().recent.clone();
    assert_eq!(recent.iter().filter(|r| r.posted).count(), 6, "{recent:?}");
}
