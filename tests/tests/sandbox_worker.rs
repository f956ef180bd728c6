//! The sandbox worker end to end, real processes only: `airlock relay --api` serves the environments work queue,
//! `airlock up` runs the agent (file keystore, throwaway HOME), `airlock sandbox login` stores the environment key
//! from standard input, `airlock sandbox on` starts the worker in the running agent. The test plays the orchestrating
//! side: it creates a session and posts `agent.tool_use` events — a bash call, a write + read, and escape attempts
//! (the agent HOME's `~/.ssh/id_rsa`, the control-API token, `curl` to a loopback service, writes outside the
//! workdir) — and reads the `user.tool_result` events back. `airlock sandbox status --json` and the event stream show
//! the session and its calls; `airlock sandbox off` stops the worker.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use airlock_e2e::queue::{Orchestrator, Queue, result_text, sandbox_agent_config, sandbox_login};
use airlock_e2e::{Agent, TestHome, descendants_matching};
use serde_json::{Value, json};

const FAKE_KEY: &str = "FAKE-PRIVATE-KEY-MATERIAL-3f9a";

/// `tool_use_id -> (is_error, text of the content)` of the session's tool results.
async fn results_by_id(o: &Orchestrator, sid: &str) -> HashMap<String, (bool, String)> {
    o.results(sid)
        .await
        .iter()
        .filter(|e| e["type"] == "user.tool_result")
        .map(|e| {
            (
                e["tool_use_id"].as_str().unwrap().to_string(),
                (e["is_error"].as_bool().unwrap(), result_text(e)),
            )
        })
        .collect()
}

/// Collects the agent's `sandbox` events (SSE on the control API).
fn watch_events(api_url: String, token: String) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut resp = http
            .get(format!("{api_url}/v1/events"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let mut buf = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(i) = buf.find('\n') {
                let line = buf[..i].trim().to_string();
                buf.drain(..=i);
                if let Some(data) = line.strip_prefix("data:")
                    && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                    && v["type"] == "sandbox"
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandbox_worker_runs_a_session_in_the_agent_and_contains_escapes() {
    let home = TestHome::new();
    let queue = Queue::start(&home);
    let base = queue.base.clone();
    let env = queue.create_env(&home, Some("laptop"));
    let (env_id, env_key) = (env.id.clone(), env.key.clone());
    let orchestrator = env.orchestrator.clone();

    // The user's secrets the tools must not reach.
    let id_rsa = home.write(
        ".ssh/id_rsa",
        &format!("-----BEGIN OPENSSH PRIVATE KEY-----\n{FAKE_KEY}\n"),
    );
    home.write_airlock_config(&sandbox_agent_config(""));
    let agent = Agent::start(home);
    let user_home = agent.home.home();
    let airlock_home = agent.home.airlock_home();
    let info = agent.info();

    // Not logged in yet: `on` says what to do.
    let refused = agent.cli(&["sandbox", "on"]);
    assert_eq!(refused.code, Some(1), "{refused:?}");
    assert!(
        refused.stderr.contains("airlock sandbox login"),
        "{}",
        refused.stderr
    );

    // Login: the key from stdin, never argv; it lands in the keystore, not in config.toml or the output.
    sandbox_login(&agent.home, &base, &env_id, &env_key);
    let config_text = std::fs::read_to_string(airlock_home.join("config.toml")).unwrap();
    assert!(config_text.contains(&env_id), "{config_text}");
    assert!(
        !config_text.contains(&env_key),
        "the key went to config.toml"
    );

    // The egress allowlist edit.
    let bad = agent.cli(&["sandbox", "allow-domain", "http://example.com/x"]);
    assert_eq!(bad.code, Some(2), "{bad:?}");
    agent
        .cli(&["sandbox", "allow-domain", "Example.COM"])
        .assert_success("allow-domain");

    let mut events = watch_events(info.api_url.clone(), info.token.clone());
    let on = agent.cli_json(&["sandbox", "on", "--json"]);
    assert_eq!(on["running"], true, "{on}");
    assert_eq!(on["enabled"], true, "{on}");
    assert_eq!(on["confined"], true, "bubblewrap works here: {on}");
    assert_eq!(on["mechanism"], "bubblewrap", "{on}");
    assert_eq!(on["allowed_domains"], json!(["example.com"]), "{on}");
    assert!(on["warning"].is_null(), "{on}");
    assert!(
        !agent.stderr_log().contains(&env_key),
        "the environment key was logged"
    );

    // A loopback service the sandbox must not reach.
    let service = TcpListener::bind("127.0.0.1:0").unwrap();
    service.set_nonblocking(true).unwrap();
    let service_port = service.local_addr().unwrap().port();

    let sid = orchestrator.create_session(&env_id, Value::Null).await;
    let escape_write = user_home.join("escape.txt");
    let escape_bash = user_home.join("escape-bash.txt");
    let agent_json = airlock_home.join("run/agent.json");
    let calls = vec![
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo hello; pwd"}}),
        json!({"type": "agent.tool_use", "name": "write", "input": {"file_path": "notes.txt", "content": "alpha\nbeta\n"}}),
        json!({"type": "agent.tool_use", "name": "read", "input": {"file_path": "notes.txt"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("cat {}", id_rsa.display())}}),
        json!({"type": "agent.tool_use", "name": "read", "input": {"file_path": id_rsa.display().to_string()}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("curl -fsS --max-time 5 http://127.0.0.1:{service_port}/")}}),
        json!({"type": "agent.tool_use", "name": "write", "input": {"file_path": escape_write.display().to_string(), "content": "x"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("echo x > {}", escape_bash.display())}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("cat {}", agent_json.display())}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "sleep 3; echo slept"}}),
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": format!("curl -sS --noproxy '*' --max-time 5 http://127.0.0.1:{service_port}/")}}),
    ];
    let ids = orchestrator.post_events(&sid, calls).await;

    // While the slow call runs, the status shows it in flight.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let st = agent.cli_json(&["sandbox", "status", "--json"]);
        let in_flight = st["worker"]["in_flight"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if in_flight.iter().any(|c| c["tool_use_id"] == ids[9]) {
            assert_eq!(st["worker"]["current"]["session_id"], sid.as_str(), "{st}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the slow call never showed in flight: {st}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let results = loop {
        let r = results_by_id(&orchestrator, &sid).await;
        if r.len() >= ids.len() {
            break r;
        }
        assert!(Instant::now() < deadline, "results so far: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let get = |i: usize| results.get(&ids[i]).cloned().unwrap();

    let (err, text) = get(0);
    assert!(!err, "{text}");
    assert!(text.starts_with("hello"), "{text}");
    assert!(
        text.contains(&format!("sandbox/sessions/{sid}")),
        "bash runs in the session's workdir: {text}"
    );
    let workdir = airlock_home.join("sandbox/sessions").join(&sid);
    assert_eq!(
        std::fs::read_to_string(workdir.join("notes.txt")).unwrap(),
        "alpha\nbeta\n"
    );
    assert!(!get(1).0, "{:?}", get(1));
    let (err, text) = get(2);
    assert!(
        !err && text.contains("alpha") && text.contains("beta"),
        "{text}"
    );
    for i in [3, 4] {
        let (err, text) = get(i);
        assert!(err, "reading ~/.ssh/id_rsa must fail: {text}");
        assert!(!text.contains(FAKE_KEY), "the key leaked: {text}");
    }
    // Through the proxy (refused: not allowlisted) and directly (no network at all).
    for i in [5, 10] {
        let (err, text) = get(i);
        assert!(err, "curl to a loopback service must fail: {text}");
    }
    // The refusal came from the egress proxy, reached through the in-sandbox forwarder (`airlock sandbox-exec`).
    assert!(get(5).1.contains("403"), "{:?}", get(5));
    assert!(
        matches!(service.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the loopback service received a connection from the sandbox"
    );
    for (i, path) in [(6, &escape_write), (7, &escape_bash)] {
        let (err, text) = get(i);
        assert!(err, "a write outside the workdir must fail: {text}");
        assert!(!path.exists(), "{} was written", path.display());
    }
    let (err, text) = get(8);
    assert!(
        err,
        "the control-API token file must be out of reach: {text}"
    );
    assert!(!text.contains(&info.token), "the control-API token leaked");
    assert_eq!(get(9), (false, "slept".to_string()));

    // Status: the session, its sandbox and the calls.
    let st = agent.cli_json(&["sandbox", "status", "--json"]);
    assert_eq!(st["running"], true, "{st}");
    assert_eq!(st["worker"]["current"]["session_id"], sid.as_str(), "{st}");
    let recent = st["worker"]["recent"].as_array().unwrap();
    assert_eq!(recent.len(), ids.len(), "{st}");
    assert!(recent.iter().all(|r| r["posted"] == true), "{st}");
    assert_eq!(
        recent.iter().filter(|r| r["is_error"] == true).count(),
        7,
        "{st}"
    );
    let sessions = st["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{st}");
    assert_eq!(sessions[0]["session_id"], sid.as_str());
    assert_eq!(sessions[0]["status"]["mechanism"], "bubblewrap");
    assert_eq!(
        sessions[0]["status"]["workdir"],
        workdir.display().to_string()
    );
    let human = agent.cli(&["sandbox", "status"]);
    human.assert_success("sandbox status");
    assert!(
        human.stdout.contains(&sid) && human.stdout.contains("bubblewrap"),
        "{}",
        human.stdout
    );

    // The event stream told the same story.
    let mut seen = Vec::new();
    let ev_deadline = Instant::now() + Duration::from_secs(10);
    while !seen
        .iter()
        .any(|e: &Value| e["last_call"]["tool_use_id"] == ids[9])
    {
        let left = ev_deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Some(e)) => seen.push(e),
            _ => panic!("no sandbox event for the last call; saw {seen:?}"),
        }
    }
    assert!(
        seen.iter()
            .any(|e| e["current"]["session_id"] == sid.as_str()),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| e["in_flight"].as_array().is_some_and(|a| !a.is_empty())),
        "{seen:?}"
    );

    // Off: the worker stops, the session's sandbox is closed, later calls are not served.
    let off = agent.cli_json(&["sandbox", "off", "--json"]);
    assert_eq!(off["running"], false, "{off}");
    assert_eq!(off["enabled"], false, "{off}");
    assert!(off["sessions"].as_array().unwrap().is_empty(), "{off}");
    assert!(
        std::fs::read_to_string(airlock_home.join("config.toml"))
            .unwrap()
            .contains("enabled = false")
    );
    let late = orchestrator
        .post_events(
            &sid,
            vec![json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo late"}})],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !results_by_id(&orchestrator, &sid)
            .await
            .contains_key(&late[0]),
        "a stopped worker served a call"
    );
    assert!(
        descendants_matching(agent.pid(), "bwrap").is_empty(),
        "a sandbox outlived `sandbox off`"
    );
    let st = agent.cli_json(&["sandbox", "status", "--json"]);
    assert_eq!(st["running"], false, "{st}");
    assert_eq!(st["worker"]["state"], "stopped", "{st}");
}

fn wait_status(agent: &Agent, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = agent.cli_json(&["sandbox", "status", "--json"]);
        if f(&st) {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}: {st}");
        std::thread::sleep(Duration::from_millis(150));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_worker_starts_with_the_agent_scrubs_the_environment_and_reports_a_rejected_key() {
    let mut home = TestHome::new();
    let queue = Queue::start(&home);
    let base = queue.base.clone();
    let env = queue.create_env(&home, None);
    let env_id = env.id.clone();
    let orchestrator = env.orchestrator.clone();
    // Secrets in the agent's own environment must not reach the tools.
    home.set_env("ANTHROPIC_API_KEY", "sk-ant-agent-secret-7c1e");
    home.set_env("AWS_SECRET_ACCESS_KEY", "aws-agent-secret-51d0");
    home.write_airlock_config(&sandbox_agent_config("[sandbox]\nenabled = true\n"));
    // Logged in before the agent runs (the keystore is shared), enabled in config.toml: the worker starts with it.
    sandbox_login(&home, &base, &env_id, &env.key);
    let agent = Agent::start(home);
    wait_status(&agent, "the enabled worker never started", |st| {
        st["running"] == true && st["worker"]["state"] == "polling"
    });

    let sid = orchestrator.create_session(&env_id, Value::Null).await;
    let ids = orchestrator
        .post_events(
            &sid,
            vec![json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "env; echo home=$HOME"}})],
        )
        .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let (err, text) = loop {
        if let Some(r) = results_by_id(&orchestrator, &sid).await.get(&ids[0]) {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "no result");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(!err, "{text}");
    let workdir = agent
        .home
        .airlock_home()
        .join("sandbox/sessions")
        .join(&sid);
    assert!(
        text.contains(&format!("home={}", workdir.display())),
        "HOME is the workdir: {text}"
    );
    for leaked in [
        "ANTHROPIC",
        "sk-ant-agent-secret",
        "aws-agent-secret",
        "DBUS_SESSION",
        "XDG_RUNTIME_DIR",
        "AIRLOCK_HOME",
    ] {
        assert!(
            !text.contains(leaked),
            "{leaked} reached the sandbox: {text}"
        );
    }

    // A key the queue rejects: the worker stops by itself and says why.
    sandbox_login(&agent.home, &base, &env_id, "not-the-environment-key");
    agent.cli(&["sandbox", "off"]).assert_success("sandbox off");
    let on = agent.cli_json(&["sandbox", "on", "--json"]);
    assert_eq!(on["enabled"], true, "{on}");
    let st = wait_status(&agent, "the rejected key never showed", |st| {
        st["worker"]["state"] == "failed"
    });
    assert_eq!(st["running"], false, "{st}");
    let why = st["last_error"].as_str().unwrap_or_default();
    assert!(why.contains("rejected"), "{st}");
    assert!(
        !why.contains("not-the-environment-key"),
        "the key is in the status: {st}"
    );
    assert!(
        !agent.stderr_log().contains("not-the-environment-key"),
        "the key was logged"
    );
}
