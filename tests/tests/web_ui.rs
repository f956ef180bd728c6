//! The web UI end to end: a real agent serves `ui/`, `airlock ui --print` hands out a one-time
//! login link, and Debian's headless Chromium (driven by `playwright-core` from `tests/ui`)
//! logs in, lists the servers, exposes one with its switch, watches a second tab learn about
//! it through the event stream, copies the URL / `claude mcp add` line / Messages API snippet,
//! visits every view and proves script-bearing server names stay text. Screenshots land in
//! `tests/artifacts/ui/`.

use std::time::Duration;

use airlock_e2e::{Agent, TestHome, browser, raw_http, split_url};
use serde_json::{Value, json};

const XSS_IMG: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_SCRIPT: &str = r#""><script>window.__xss=2</script>"#;

/// A home whose Claude Desktop config holds the real `time` server and two servers whose
/// names are markup, next to a Cursor config that does not parse.
fn home() -> TestHome {
    let home = browser::time_servers_home(&[
        ("time", &["--local-timezone", "UTC"]),
        (XSS_IMG, &["--local-timezone", "Europe/Paris"]),
        (
            XSS_SCRIPT,
            &["--local-timezone", "Asia/Tokyo", "\"><b>x</b>"],
        ),
    ]);
    home.write(
        ".cursor/mcp.json",
        "{\n  \"mcpServers\": {\n    \"broken\": { \"command\": \"x\" }\n    \"next\": {}\n  }\n}\n",
    );
    home
}

#[test]
fn browser_logs_in_exposes_copies_and_never_runs_server_names() {
    browser::require_tools();
    let agent = Agent::start(home());
    for name in ["time", XSS_IMG, XSS_SCRIPT] {
        agent.wait_server(name, Duration::from_secs(30));
    }
    let listed = agent.cli_json(&["servers", "--json"]);
    let diagnostics = listed["diagnostics"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        diagnostics.iter().any(|d| d["path"]
            .as_str()
            .is_some_and(|p| p.ends_with(".cursor/mcp.json"))),
        "the malformed Cursor config must produce a diagnostic: {listed}"
    );

    // The page itself: served from the API origin under the strict CSP, no inline script.
    let info = agent.info();
    let (api_addr, _) = split_url(&info.api_url);
    let host = api_addr.to_string();
    let index = raw_http(api_addr, "GET", "/", &[("Host", host.as_str())], None);
    assert_eq!(index.status, 200, "GET / : {}", index.body);
    let csp = index.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "GET / must carry the strict CSP, got {csp:?}"
    );
    assert!(
        index
            .body
            .contains(r#"<script type="module" src="/ui/app.js">"#),
        "index.html must load /ui/app.js: {}",
        index.body
    );

    let summary = browser::run_script(
        &agent,
        "web-ui.test.mjs",
        "ui",
        &[
            "--expose",
            "time",
            "--xss-name",
            XSS_IMG,
            "--xss-name",
            XSS_SCRIPT,
            "--diagnostic",
            ".cursor/mcp.json",
        ],
        &[],
    );

    // What the browser saw and copied, against the agent's own answers.
    assert_eq!(summary["code_removed_from_url"], true, "{summary}");
    assert_eq!(summary["sse_other_tab_updated"], true, "{summary}");
    assert_eq!(summary["reused_code_shows_login"], true, "{summary}");
    assert_eq!(summary["xss"][XSS_IMG], true, "{summary}");
    assert_eq!(summary["xss"][XSS_SCRIPT], true, "{summary}");
    assert_eq!(summary["xss"]["window_xss"], "undefined", "{summary}");
    let views: Vec<&str> = summary["views"]
        .as_array()
        .map(|v| v.iter().filter_map(|x| x["view"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(
        views,
        [
            "servers",
            "hostnames",
            "tunnel",
            "approvals",
            "clients",
            "sandbox",
            "audit"
        ],
        "{summary}"
    );
    browser::assert_screenshots(&summary, 1000);

    let time = agent.cli_json(&["url", "time", "--json"]);
    let local = time["url"].as_str().unwrap_or_default();
    let hostname = time["hostname"].as_str().unwrap_or_default();
    assert!(!local.is_empty(), "{time}");
    assert_eq!(summary["exposed"], local, "{summary}");
    assert_eq!(summary["clipboard"]["url"], local, "{summary}");
    assert_eq!(
        summary["clipboard"]["claude"],
        format!("claude mcp add --transport http {hostname} {local}").as_str(),
        "{summary}"
    );
    let snippet: Value =
        serde_json::from_str(summary["clipboard"]["snippet"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("copied snippet is not JSON ({e}): {summary}"));
    // The snippet carries a token minted for `time` when it was copied; it works on the server.
    let token = snippet["mcp_servers"][0]["authorization_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(token_status(local, &token), 200, "{summary}");
    assert_eq!(
        snippet,
        json!({
            "mcp_servers": [{ "type": "url", "url": local, "name": hostname, "authorization_token": token }],
            "tools": [{ "type": "mcp_toolset", "mcp_server_name": hostname }]
        }),
        "{summary}"
    );

    // Asking for `time`'s hostname for another server is refused by the agent, and the page
    // shows the agent's own message.
    let refusal = summary["refusal"].as_str().unwrap_or_default();
    assert!(
        refusal.contains(hostname),
        "the refusal should name the taken hostname {hostname:?}: {summary}"
    );

    // The switch really exposed the server (and only that one).
    let time = agent.server_named("time").expect("time still listed");
    assert_eq!(time["exposed"], true, "{time}");
    for name in [XSS_IMG, XSS_SCRIPT] {
        let s = agent
            .server_named(name)
            .expect("script-bearing server still listed");
        assert_eq!(s["exposed"], false, "{s}");
    }
}

const DOMAIN: &str = "abcd1234.tunnel.example";

#[test]
fn tunnel_view_shows_the_ca_and_tunnel_urls_the_cli_reports() {
    browser::require_tools();
    let home = browser::time_servers_home(&[("time", &["--local-timezone", "UTC"])]);
    home.write_airlock_config(&format!(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n\n\
         [anthropic]\ntunnel_domain = \"{DOMAIN}\"\nlisten_addr = \"127.0.0.1:0\"\n"
    ));
    let agent = Agent::start(home);
    agent.wait_server("time", Duration::from_secs(60));
    agent
        .cli(&["expose", "time", "--yes", "--hostname", "time"])
        .assert_success("airlock expose time");

    let summary = browser::run_script(
        &agent,
        "tunnel-view.test.mjs",
        "ui",
        &["--domain", DOMAIN, "--server", "time"],
        &[],
    );

    let status = agent.cli_json(&["status", "--json"]);
    assert_eq!(
        summary["tunnel"]["listen_addr"], status["anthropic"]["listen_addr"],
        "{summary}\n{status}"
    );
    assert_eq!(summary["tunnel"]["keystore"], "file", "{summary}");
    assert_eq!(
        summary["tunnel"]["keystore_warning"], 1,
        "the file keystore must be flagged: {summary}"
    );
    let fingerprint = agent.cli(&["ca", "fingerprint"]);
    fingerprint.assert_success("airlock ca fingerprint");
    let fingerprint = fingerprint.stdout.trim();
    assert_eq!(summary["tunnel"]["fingerprint"], fingerprint, "{summary}");
    assert_eq!(
        summary["clipboard"]["fingerprint"], fingerprint,
        "{summary}"
    );
    let pem = agent.cli(&["ca", "export"]);
    pem.assert_success("airlock ca export");
    assert_eq!(
        summary["clipboard"]["pem"].as_str().map(str::trim),
        Some(pem.stdout.trim()),
        "{summary}"
    );
    let time = agent.cli_json(&["url", "time", "--json"]);
    assert_eq!(
        time["tunnel_url"],
        format!("https://time.{DOMAIN}/mcp").as_str(),
        "{time}"
    );
    assert_eq!(
        summary["clipboard"]["tunnel_url"], time["tunnel_url"],
        "{summary}"
    );
    let snippet: Value =
        serde_json::from_str(summary["clipboard"]["snippet"].as_str().unwrap_or(""))
            .unwrap_or_else(|e| panic!("copied snippet is not JSON ({e}): {summary}"));
    assert_eq!(
        snippet["mcp_servers"][0]["url"], time["tunnel_url"],
        "{snippet}"
    );
    let token = snippet["mcp_servers"][0]["authorization_token"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        token_status(time["url"].as_str().unwrap_or_default(), token),
        200,
        "the snippet's minted token must work: {snippet}"
    );
}

/// Status of an MCP `initialize` with `token` on the server's loopback URL.
fn token_status(url: &str, token: &str) -> u16 {
    let (addr, path) = airlock_e2e::split_url(url);
    let host = addr.to_string();
    let bearer = format!("Bearer {token}");
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": {"name": "web-ui-test", "version": "0"}}})
    .to_string();
    airlock_e2e::raw_http(
        addr,
        "POST",
        &path,
        &[
            ("Host", host.as_str()),
            ("Authorization", bearer.as_str()),
            ("Content-Type", "application/json"),
            ("Accept", "application/json, text/event-stream"),
        ],
        Some(&body),
    )
    .status
}
