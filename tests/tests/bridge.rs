//! The stdio bridge end to end: a Claude Desktop config names real stdio servers
//! (`mcp-server-time` from the venv, `server-everything` on Node 22), `airlock expose --yes`
//! serves them on the loopback gateway, and the official Python SDK talks to them through it.

use std::time::{Duration, Instant};

use airlock_e2e::{
    Agent, Exposed, LineProcess, NodeTools, TestHome, descendants_matching, py_script, raw_http,
    run_python, send_signal, split_url, venv_bin, venv_python, wait_for,
};
use serde_json::{Value, json};

const PY_TIMEOUT: Duration = Duration::from_secs(180);

/// A temp home whose Claude Desktop config names `time` and `everything`.
fn home_with_claude_desktop() -> (TestHome, NodeTools) {
    let node = NodeTools::locate();
    let home = TestHome::new();
    let time = venv_bin("mcp-server-time");
    let cfg = json!({
        "mcpServers": {
            "time": {
                "command": time,
                "args": ["--local-timezone", "UTC"]
            },
            "everything": {
                "command": node.node,
                "args": [node.server_everything(), "stdio"]
            }
        }
    });
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&cfg).expect("serialize config"),
    );
    (home, node)
}

fn start_and_expose(names: &[&str]) -> (Agent, NodeTools, Vec<Exposed>) {
    let (home, node) = home_with_claude_desktop();
    let agent = Agent::start(home);
    let mut exposed = Vec::new();
    for name in names {
        agent.wait_server(name, Duration::from_secs(30));
        exposed.push(agent.expose(name));
    }
    (agent, node, exposed)
}

fn smoke(e: &Exposed, mode: &str, tool: &str, args: &str) -> Value {
    let out = run_python(
        "mcp_client.py",
        &[
            "smoke", "--url", &e.url, "--token", &e.token, "--mode", mode, "--tool", tool,
            "--args", args,
        ],
        PY_TIMEOUT,
    );
    let v = out.last_json_line();
    println!("smoke {mode} {tool} via {}: {v}", e.url);
    v
}

#[test]
fn discovered_stdio_servers_are_listed_with_their_claude_desktop_source() {
    let (home, node) = home_with_claude_desktop();
    let cfg_path = home
        .home()
        .join(".config/Claude/claude_desktop_config.json");
    let agent = Agent::start(home);
    let time = agent.wait_server("time", Duration::from_secs(30));
    let every = agent.wait_server("everything", Duration::from_secs(30));

    assert_eq!(time["transport"]["type"], "stdio", "{time}");
    assert_eq!(
        time["transport"]["command"],
        venv_bin("mcp-server-time").to_string_lossy().as_ref(),
        "{time}"
    );
    assert_eq!(
        time["transport"]["args"],
        json!(["--local-timezone", "UTC"]),
        "{time}"
    );
    assert_eq!(every["transport"]["type"], "stdio", "{every}");
    assert_eq!(
        every["transport"]["command"],
        node.node.to_string_lossy().as_ref(),
        "{every}"
    );
    for s in [&time, &every] {
        let id = s["id"].as_str().unwrap_or_default();
        assert!(
            id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "id must be 12 hex chars: {s}"
        );
        let sources = s["sources"].as_array().cloned().unwrap_or_default();
        assert!(
            sources.iter().any(|src| src["client"] == "claude-desktop"
                && src["path"] == cfg_path.to_string_lossy().as_ref()
                && src["scope"] == "user"
                && src["disabled"] == false),
            "claude-desktop source missing: {s}"
        );
        assert_eq!(s["exposable"], true, "{s}");
        assert_eq!(
            s["exposed"], false,
            "not exposed before `airlock expose`: {s}"
        );
    }

    // An id prefix (>= 4) is a valid reference and resolves to the same server.
    let id = time["id"].as_str().unwrap_or_default().to_string();
    let e = agent.expose(&id[..6]);
    assert_eq!(e.url_json["id"], id.as_str(), "{}", e.url_json);
    assert_eq!(e.url_json["name"], "time", "{}", e.url_json);
    // expose shows the exact command that will run.
    assert!(
        e.expose_output
            .contains(venv_bin("mcp-server-time").to_string_lossy().as_ref()),
        "`airlock expose` must print the exact command; printed:\n{}",
        e.expose_output
    );
    let listed = agent.server_named("time").expect("time still listed");
    assert_eq!(listed["exposed"], true, "{listed}");
    assert_eq!(listed["url"], e.url.as_str(), "{listed}");
}

#[test]
fn python_sdk_calls_tools_through_the_bridge_in_both_eras() {
    let (agent, _node, exposed) = start_and_expose(&["time", "everything"]);
    let (time, every) = (&exposed[0], &exposed[1]);
    for e in &exposed {
        let (addr, path) = split_url(&e.url);
        assert_eq!(
            addr.port(),
            agent.gateway_port,
            "URL must be on the gateway: {}",
            e.url
        );
        assert!(
            path.ends_with("/mcp"),
            "stdio server URL path is /<sub>/mcp: {}",
            e.url
        );
    }

    // Legacy era (initialize handshake + Mcp-Session-Id).
    let v = smoke(time, "legacy", "get_current_time", r#"{"timezone": "UTC"}"#);
    assert_eq!(v["ok"], true, "legacy time: {v}");
    assert!(
        v["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n == "get_current_time")),
        "{v}"
    );
    assert_eq!(v["call"]["is_error"], false, "{v}");
    let text = v["call"]["text"].as_str().unwrap_or_default();
    let answer: Value = serde_json::from_str(text)
        .unwrap_or_else(|e| panic!("get_current_time result is not JSON ({e}): {text}"));
    assert_eq!(answer["timezone"], "UTC", "{answer}");
    let dt = answer["datetime"].as_str().unwrap_or_default();
    assert!(dt.len() >= 19 && dt.starts_with("20"), "datetime: {answer}");

    let v = smoke(every, "legacy", "echo", r#"{"message": "hello airlock"}"#);
    assert_eq!(v["ok"], true, "legacy everything: {v}");
    assert_eq!(v["call"]["text"], "Echo: hello airlock", "{v}");
    assert!(
        v["tools"]
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n == "trigger-long-running-operation")),
        "{v}"
    );

    // Modern era (2026-07-28: no initialize, per-request _meta) against both children:
    // `mcp-server-time` runs on the dual-era Python SDK, `server-everything` is handshake-era
    // only, so the bridge has to translate for it.
    for (e, tool, args, expect) in [
        (
            time,
            "get_current_time",
            r#"{"timezone": "UTC"}"#,
            "\"timezone\": \"UTC\"",
        ),
        (
            every,
            "echo",
            r#"{"message": "modern hello"}"#,
            "Echo: modern hello",
        ),
    ] {
        let v = smoke(e, "2026-07-28", tool, args);
        assert_eq!(v["ok"], true, "2026-07-28 client via {}: {v}", e.url);
        assert_eq!(v["protocol_version"], "2026-07-28", "{v}");
        assert!(
            v["call"]["text"]
                .as_str()
                .is_some_and(|t| t.contains(expect)),
            "2026-07-28 tools/call via {}: {v}",
            e.url
        );
    }

    // The gateway refuses calls without the bearer token and with a foreign Host/Origin.
    let (addr, path) = split_url(&time.url);
    let host = format!("127.0.0.1:{}", addr.port());
    let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
    let base = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let mut h = base.to_vec();
    h.push(("Host", &host));
    let r = raw_http(addr, "POST", &path, &h, Some(init));
    assert_eq!(r.status, 401, "gateway without token: {r:?}");
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
        "401 must carry WWW-Authenticate: Bearer: {r:?}"
    );
    let bearer = format!("Bearer {}", time.token);
    let wrong = format!("Bearer {}x", time.token);
    let mut h = base.to_vec();
    h.extend([("Host", host.as_str()), ("Authorization", wrong.as_str())]);
    let r = raw_http(addr, "POST", &path, &h, Some(init));
    assert_eq!(r.status, 401, "gateway with wrong token: {r:?}");
    let mut h = base.to_vec();
    h.extend([
        ("Host", "evil.example.com"),
        ("Authorization", bearer.as_str()),
    ]);
    let r = raw_http(addr, "POST", &path, &h, Some(init));
    assert_eq!(r.status, 403, "gateway with foreign Host: {r:?}");
    let mut h = base.to_vec();
    h.extend([
        ("Host", host.as_str()),
        ("Authorization", bearer.as_str()),
        ("Origin", "http://evil.example.com"),
    ]);
    let r = raw_http(addr, "POST", &path, &h, Some(init));
    assert_eq!(r.status, 403, "gateway with foreign Origin: {r:?}");
    let mut h = base.to_vec();
    h.extend([("Host", host.as_str()), ("Authorization", bearer.as_str())]);
    let r = raw_http(addr, "POST", &path, &h, Some(init));
    assert_eq!(r.status, 200, "gateway with token: {r:?}");
    assert!(
        r.body.contains("\"protocolVersion\""),
        "initialize result expected: {r:?}"
    );

    // Unexpose: the URL stops answering; the server is still listed, not exposed.
    let out = agent.cli(&["unexpose", "time"]);
    out.assert_success("airlock unexpose time");
    let r = raw_http(addr, "POST", &path, &h, Some(init));
    assert!(
        r.status == 404 || r.status == 410 || r.status == 503,
        "unexposed URL must not serve: {r:?}"
    );
    let listed = agent.server_named("time").expect("time still listed");
    assert_eq!(listed["exposed"], false, "{listed}");
}

#[test]
fn killing_the_child_mid_call_errors_the_call_and_later_calls_work_again() {
    let (agent, node, exposed) = start_and_expose(&["everything"]);
    let e = &exposed[0];
    let needle = node.server_everything().to_string_lossy().into_owned();

    let mut cmd = std::process::Command::new(venv_python());
    cmd.arg(py_script("mcp_client.py")).args([
        "kill",
        "--url",
        &e.url,
        "--token",
        &e.token,
        "--tool",
        "trigger-long-running-operation",
        "--args",
        r#"{"duration": 30, "steps": 30}"#,
        "--timeout",
        "90",
        "--recover-secs",
        "45",
    ]);
    cmd.env("PYTHONUNBUFFERED", "1");
    let mut py = LineProcess::spawn(cmd);

    let started = py.next_json(Duration::from_secs(90));
    if started
        .as_ref()
        .map(|v| v["event"] != "started")
        .unwrap_or(true)
    {
        panic!(
            "client never started the long call (got {started:?})\n{}",
            py.finish()
        );
    }
    let victims = descendants_matching(agent.pid(), &needle);
    if victims.is_empty() {
        panic!(
            "no server-everything child of the agent (pid {}) found mid-call\n{}",
            agent.pid(),
            py.finish()
        );
    }
    let killed_at = Instant::now();
    for v in &victims {
        println!("killing bridged child pid {} ({})", v.pid, v.cmdline);
        send_signal(v.pid, "KILL");
    }

    let Some(finished) = py.next_json(Duration::from_secs(120)) else {
        panic!("client never reported the end of the call\n{}", py.finish());
    };
    let error_latency = killed_at.elapsed();
    println!("call outcome after kill: {finished} (reported {error_latency:?} after the kill)");
    assert_eq!(
        finished["event"], "call_finished",
        "{finished}\n{}",
        "unexpected event"
    );
    assert_eq!(
        finished["outcome"], "error",
        "the in-flight call must fail when its child dies (not time out, not complete): {finished}"
    );
    let elapsed = finished["elapsed"].as_f64().unwrap_or(f64::MAX);
    assert!(
        elapsed < 29.0,
        "the call ended after {elapsed}s: the error came too late (the operation itself takes 30 s)"
    );

    let Some(after) = py.next_json(Duration::from_secs(120)) else {
        panic!(
            "client never reported the call after re-initialize\n{}",
            py.finish()
        );
    };
    println!("after restart: {after}");
    let log = py.finish();
    assert_eq!(after["event"], "after", "{after}\n{log}");
    assert_eq!(
        after["ok"], true,
        "calls must work again after re-initialize: {after}\n{log}"
    );
    assert_eq!(after["text"], "Echo: after-restart", "{after}");

    // A new child is serving (none of the killed pids).
    let now = wait_for(
        Duration::from_secs(30),
        "a new server-everything child",
        || {
            let d = descendants_matching(agent.pid(), &needle);
            (!d.is_empty()).then_some(d)
        },
    );
    for p in &now {
        assert!(
            victims.iter().all(|v| v.pid != p.pid),
            "killed pid {} still listed as a child",
            p.pid
        );
    }
}

#[test]
fn concurrent_legacy_sessions_with_colliding_ids_get_their_own_results() {
    let (_agent, _node, exposed) = start_and_expose(&["everything"]);
    let e = &exposed[0];
    let n = 25;
    let out = run_python(
        "mcp_client.py",
        &[
            "concurrent",
            "--url",
            &e.url,
            "--token",
            &e.token,
            "-n",
            &n.to_string(),
        ],
        PY_TIMEOUT,
    );
    let v = out.last_json_line();
    println!("concurrent sessions: {v}");
    for label in ["A", "B"] {
        let s = &v["sessions"][label];
        assert!(
            s.get("session_error").is_none(),
            "session {label} failed: {s}\n--- stderr\n{}",
            out.stderr
        );
        assert_eq!(
            s["wrong"],
            json!([]),
            "session {label} got another session's results: {s}"
        );
        assert_eq!(s["errors"], json!([]), "session {label} had errors: {s}");
        assert_eq!(s["ok"], n, "session {label}: {s}");
    }
}

#[test]
fn raw_legacy_sessions_sending_the_same_id_at_once_are_kept_apart() {
    let (_agent, _node, exposed) = start_and_expose(&["everything"]);
    let e = &exposed[0];
    let (addr, path) = split_url(&e.url);
    let host = format!("127.0.0.1:{}", addr.port());
    let bearer = format!("Bearer {}", e.token);
    let headers = |sid: Option<&str>| {
        let mut h = vec![
            ("Host".to_string(), host.clone()),
            ("Authorization".to_string(), bearer.clone()),
            ("Content-Type".to_string(), "application/json".to_string()),
            (
                "Accept".to_string(),
                "application/json, text/event-stream".to_string(),
            ),
        ];
        if let Some(s) = sid {
            h.push(("Mcp-Session-Id".to_string(), s.to_string()));
            h.push(("MCP-Protocol-Version".to_string(), "2025-11-25".to_string()));
        }
        h
    };
    let post = |sid: Option<&str>, body: &str| {
        let h = headers(sid);
        let hr: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        raw_http(addr, "POST", &path, &hr, Some(body))
    };
    let open = || {
        let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}"#;
        let r = post(None, init);
        assert_eq!(r.status, 200, "initialize: {r:?}");
        let sid = r
            .header("mcp-session-id")
            .unwrap_or_else(|| panic!("legacy initialize must return Mcp-Session-Id: {r:?}"))
            .to_string();
        let r = post(
            Some(&sid),
            r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        );
        assert!(
            (200..300).contains(&r.status),
            "notifications/initialized: {r:?}"
        );
        sid
    };
    let sessions = [("A", open()), ("B", open())];
    assert_ne!(sessions[0].1, sessions[1].1, "distinct session ids");

    let rounds = 20;
    let results: Vec<Vec<String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = sessions
            .iter()
            .map(|(label, sid)| {
                let post = &post;
                scope.spawn(move || {
                    let mut problems = Vec::new();
                    for i in 0..rounds {
                        let msg = format!("{label}-{i}");
                        let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"message": msg}}})
                        .to_string();
                        let r = post(Some(sid), &body);
                        let got = airlock_e2e::jsonrpc_response_for(&r.body, 7);
                        let text = got
                            .as_ref()
                            .and_then(|v| v["result"]["content"][0]["text"].as_str())
                            .unwrap_or_default()
                            .to_string();
                        if r.status != 200 || text != format!("Echo: {msg}") {
                            problems.push(format!("sent {msg}: HTTP {} {:?}", r.status, r.body));
                        }
                    }
                    problems
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| vec!["thread panicked".into()]))
            .collect()
    });
    for ((label, _), problems) in sessions.iter().zip(&results) {
        assert!(
            problems.is_empty(),
            "session {label} (every request id 7): {problems:#?}"
        );
    }
}
