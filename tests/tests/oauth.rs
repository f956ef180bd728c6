//! OAuth 2.1 end to end through the real agent: the official Python SDK's OAuth client registers, the person
//! approves with `airlock approve`, the SDK gets a token, calls a tool on the loopback gateway, refreshes, and is
//! refused after `airlock revoke`; every call is in the audit log. `airlock token create` mints a token for callers
//! without a browser.

use std::time::Duration;

use airlock_e2e::{Agent, TestHome, airlock_bin, raw_http, run_python, split_url, venv_bin};
use serde_json::json;

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

#[test]
fn python_sdk_is_approved_at_the_device_calls_refreshes_and_is_revoked() {
    let agent = agent_with_time();
    let e = agent.expose("time");
    let bin = airlock_bin();
    let home = agent.home.airlock_home();
    let out = run_python(
        "oauth_flow.py",
        &[&e.url, &bin.to_string_lossy(), &home.to_string_lossy()],
        Duration::from_secs(120),
    );
    let v = out.last_json_line();
    assert_eq!(v["ok"], true, "{v}\nagent log:\n{}", agent.stderr_log());
    assert!(
        v["first_call"].as_str().unwrap_or("").contains("UTC"),
        "{v}"
    );
    assert!(
        v["second_call"].as_str().unwrap_or("").contains("UTC"),
        "{v}"
    );
    assert_eq!(v["refreshed"], true, "{v}");
    assert_eq!(v["after_revoke"], 401, "{v}");
    assert_eq!(v["approval"]["client_name"], "e2e python sdk", "{v}");
    assert_eq!(v["approval"]["redirect_host"], "localhost:3030", "{v}");
    let client_id = v["client_id"].as_str().unwrap_or_default();
    let calls = agent.cli_json(&[
        "audit", "--json", "--kind", "mcp_call", "--client", client_id,
    ]);
    let tools: Vec<&str> = calls
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["tool"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(tools, ["get_current_time", "get_current_time"], "{calls}");
}

#[test]
fn minted_tokens_reach_only_their_server_until_revoked() {
    let agent = agent_with_time();
    let e = agent.expose("time");
    let minted = agent.cli_json(&[
        "token", "create", "time", "--scope", "mcp:read", "--ttl", "1h", "--json",
    ]);
    let token = minted["token"].as_str().unwrap_or_default().to_owned();
    assert!(token.starts_with("alk_at_"), "{minted}");
    let out = run_python(
        "mcp_client.py",
        &[
            "smoke",
            "--url",
            &e.url,
            "--token",
            &token,
            "--mode",
            "legacy",
            "--tool",
            "get_current_time",
            "--args",
            r#"{"timezone": "UTC"}"#,
        ],
        Duration::from_secs(60),
    );
    let v = out.last_json_line();
    // mcp:read lists tools but may not call them.
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["tools"].as_array().is_some_and(|t| !t.is_empty())
            || v["error"].as_str().unwrap_or("").contains("403"),
        "{v}"
    );
    let clients = agent.cli_json(&["clients", "--json"]);
    assert!(
        clients
            .to_string()
            .contains(minted["token_id"].as_str().unwrap_or("?")),
        "{clients}"
    );
    assert!(
        !clients.to_string().contains(&token),
        "listing never shows the token"
    );
    assert_eq!(
        initialize(&e.url, &token).status,
        200,
        "mcp:read may initialize"
    );
    let revoked = agent.cli(&["revoke", minted["token_id"].as_str().unwrap_or_default()]);
    assert_eq!(revoked.code, Some(0), "{revoked:?}");
    // The same request that worked before the revocation is now refused.
    assert_eq!(initialize(&e.url, &token).status, 401);
}

fn initialize(url: &str, token: &str) -> airlock_e2e::RawResponse {
    let (addr, path) = split_url(url);
    let host = addr.to_string();
    let bearer = format!("Bearer {token}");
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"e2e","version":"0"}}}"#;
    raw_http(
        addr,
        "POST",
        &path,
        &[
            ("Host", host.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
            ("Authorization", bearer.as_str()),
        ],
        Some(body),
    )
}
