//! Local HTTP MCP servers found in a client config are reverse-proxied by the gateway:
//! `http://127.0.0.1:P/mcp` upstream → `http://127.0.0.1:GATEWAY/<sub>/mcp`, driven by the
//! official Python SDK. Public (https) servers are listed but not exposable.

use std::time::Duration;

use airlock_e2e::{Agent, NodeTools, TestHome, free_port, run_python, split_url};
use serde_json::json;

#[test]
fn local_http_server_is_proxied_and_public_ones_are_not_exposable() {
    let node = NodeTools::locate();
    let home = TestHome::new();
    let port = free_port();
    let _upstream = node.spawn_everything_http(port, &home.scratch().join("upstream.log"));
    let upstream_url = format!("http://127.0.0.1:{port}/mcp");
    home.write(
        ".cursor/mcp.json",
        &json!({"mcpServers": {
            "local-everything": {"url": upstream_url},
            "public-remote": {"url": "https://mcp.example.org/mcp"}
        }})
        .to_string(),
    );
    let agent = Agent::start(home);

    let local = agent.wait_server("local-everything", Duration::from_secs(30));
    assert_eq!(local["transport"]["type"], "streamable_http", "{local}");
    assert_eq!(local["transport"]["url"], upstream_url.as_str(), "{local}");
    assert_eq!(local["sources"][0]["client"], "cursor", "{local}");
    assert_eq!(local["exposable"], true, "{local}");

    let public = agent.wait_server("public-remote", Duration::from_secs(30));
    assert_eq!(
        public["exposable"], false,
        "public servers are not exposable: {public}"
    );
    let out = agent.cli(&["expose", "public-remote", "--yes"]);
    assert_eq!(
        out.code,
        Some(1),
        "exposing a public server must fail: {out:?}"
    );

    let e = agent.expose("local-everything");
    let (addr, path) = split_url(&e.url);
    assert_eq!(addr.port(), agent.gateway_port, "{}", e.url);
    assert!(
        path.ends_with("/mcp") && path.len() > "/mcp".len(),
        "HTTP upstream /mcp is served at /<sub>/mcp: {}",
        e.url
    );
    assert!(
        e.expose_output.contains(&upstream_url),
        "`airlock expose` must show the URL it will proxy to:\n{}",
        e.expose_output
    );

    let out = run_python(
        "mcp_client.py",
        &[
            "smoke",
            "--url",
            &e.url,
            "--token",
            &e.token,
            "--mode",
            "legacy",
            "--tool",
            "echo",
            "--args",
            r#"{"message": "via proxy"}"#,
        ],
        Duration::from_secs(120),
    );
    let v = out.last_json_line();
    println!("proxied smoke: {v}");
    assert_eq!(v["ok"], true, "{v}\n{}", out.stderr);
    assert_eq!(v["call"]["text"], "Echo: via proxy", "{v}");
}
