//! An independent OAuth client against the real agent: `mcp-remote` (npm, pinned in tests/node) bridges its stdio side
//! to an exposed server's loopback URL. It discovers the authorization server, registers itself, and opens the
//! authorization URL in "the browser" — here `tests/node/fake-browser.mjs`, reached through `$BROWSER` the way
//! xdg-open finds a browser, which loads the page (raising the pending approval) and follows its meta refresh to
//! the status URL and from there to mcp-remote's loopback callback. The person at the machine approves with
//! `airlock approve`; mcp-remote exchanges the code, and `tools/list` / `tools/call` sent on its stdin reach the
//! real stdio server. The audit log records the call under mcp-remote's client.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use airlock_e2e::{Agent, LineProcess, NodeTools, TestHome, free_port, venv_bin};
use serde_json::{Value, json};

fn agent_with_time() -> Agent {
    let home = TestHome::new();
    let cfg = json!({"mcpServers": {"time": {
        "command": venv_bin("mcp-server-time"), "args": ["--local-timezone", "UTC"]}}});
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &cfg.to_string(),
    );
    let agent = Agent::start(home);
    agent.wait_server("time", Duration::from_secs(30));
    agent
}

/// Reads stdout lines until the JSON-RPC response with `id` (notifications and other ids are skipped).
fn response(p: &mut LineProcess, id: u64, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let v = p.next_json(left)?;
        if v["id"] == id {
            return Some(v);
        }
    }
}

#[test]
fn mcp_remote_registers_is_approved_at_the_device_and_calls_a_tool() {
    let agent = agent_with_time();
    let e = agent.expose("time");
    let node = NodeTools::locate();
    let scratch = agent.home.scratch();
    let config_dir = scratch.join("mcp-auth");
    std::fs::create_dir_all(&config_dir).unwrap();
    let browser_log = scratch.join("fake-browser.log");
    let browser = node.dir.join("fake-browser.mjs");
    let callback_port = free_port();

    let mut cmd = node.command(&node.module_file("mcp-remote/dist/proxy.js"));
    cmd.arg(&e.url)
        .arg(callback_port.to_string())
        .arg("--allow-http")
        .env("HOME", agent.home.home())
        .env("MCP_REMOTE_CONFIG_DIR", &config_dir)
        .env("BROWSER", &browser)
        .env("FAKE_BROWSER_LOG", &browser_log);
    // No desktop: xdg-open takes its generic path, which runs $BROWSER.
    for var in [
        "DISPLAY",
        "WAYLAND_DISPLAY",
        "XDG_CURRENT_DESKTOP",
        "DESKTOP_SESSION",
        "KDE_FULL_SESSION",
        "GNOME_DESKTOP_SESSION_ID",
        "MATE_DESKTOP_SESSION_ID",
    ] {
        cmd.env_remove(var);
    }
    let mut p = LineProcess::spawn(cmd);
    let diag = |agent: &Agent, log: &std::path::Path| {
        format!(
            "browser log:\n{}\nagent log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            agent.stderr_log()
        )
    };

    // The person at the machine: mcp-remote's request shows up among the pending approvals, with its own client
    // name and the loopback callback it registered.
    let start = Instant::now();
    let approval = loop {
        let pending = agent.cli_json(&["approvals", "--json"]);
        if let Some(a) = pending
            .as_array()
            .and_then(|l| l.iter().find(|a| a["client_name"] == "MCP CLI Proxy"))
        {
            break a.clone();
        }
        if start.elapsed() > Duration::from_secs(90) {
            let seen = p.finish();
            panic!(
                "no pending approval from mcp-remote: {pending}\n{seen}\n{}",
                diag(&agent, &browser_log)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        approval["redirect_host"],
        format!("localhost:{callback_port}"),
        "{approval}"
    );
    assert_eq!(approval["resource"], e.url.as_str(), "{approval}");
    let client_id = approval["client_id"].as_str().unwrap().to_owned();
    let id = approval["id"].as_str().unwrap().to_owned();
    let approved = agent.cli(&["approve", &id]);
    assert_eq!(approved.code, Some(0), "{approved:?}");

    // The MCP client on mcp-remote's stdio side.
    let t = Duration::from_secs(90);
    p.send_line(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e stdio host", "version": "0"}}})
        .to_string(),
    );
    let init = response(&mut p, 1, t);
    let Some(init) = init else {
        let seen = p.finish();
        panic!(
            "no initialize response through mcp-remote\n{seen}\n{}",
            diag(&agent, &browser_log)
        );
    };
    assert!(init["result"]["serverInfo"].is_object(), "{init}");
    p.send_line(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());

    p.send_line(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string());
    let list = response(&mut p, 2, t).unwrap_or(Value::Null);
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .map(|a| a.iter().filter_map(|t| t["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(names.contains(&"get_current_time"), "{list}");

    p.send_line(
        &json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {
            "name": "get_current_time", "arguments": {"timezone": "UTC"}}})
        .to_string(),
    );
    let call = response(&mut p, 3, t).unwrap_or(Value::Null);
    assert_eq!(call["result"]["isError"], false, "{call}");
    assert!(
        call["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("")
            .contains("UTC"),
        "{call}"
    );
    let seen = p.finish();

    // The browser stand-in went page → status → callback; mcp-remote kept its tokens in the temp config dir.
    let trace = std::fs::read_to_string(&browser_log).unwrap_or_default();
    assert!(
        trace.contains(&format!("localhost:{callback_port}/oauth/callback")),
        "{trace}\n{seen}"
    );
    let cached = walk(&config_dir);
    assert!(
        cached.iter().any(|f| f.ends_with("tokens.json")),
        "{cached:?}\n{seen}"
    );

    // The audit log has the call under mcp-remote's client, not the harness's.
    let calls = agent.cli_json(&[
        "audit", "--json", "--kind", "mcp_call", "--client", &client_id,
    ]);
    let tools: Vec<&str> = calls
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["tool"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(tools, ["get_current_time"], "{calls}");
    let methods: Vec<&str> = calls
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["method"].as_str()).collect())
        .unwrap_or_default();
    assert!(methods.contains(&"tools/call"), "{calls}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for entry in rd.flatten() {
            let p = entry.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p.to_string_lossy().into_owned());
            }
        }
    }
    out
}
