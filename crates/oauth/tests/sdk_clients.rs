//! The official MCP SDKs' OAuth clients complete the flow against the authorization server: Python (`mcp` 2.3.0,
//! `OAuthClientProvider`) and TypeScript (`@modelcontextprotocol/sdk`'s `auth()`, what mcp-remote and the Inspector
//! use). They come from the test tools `scripts/test` installs: `$AIRLOCK_E2E_PYTHON` (else
//! `<repo>/.cache/venv/bin/python`) and `$AIRLOCK_E2E_NODE_DIR` (else `<repo>/tests/node`).
#![allow(clippy::unwrap_used)]

mod support;

use std::path::PathBuf;
use std::time::Duration;

use support::*;

fn venv_python() -> PathBuf {
    let p = std::env::var_os("AIRLOCK_E2E_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.cache/venv/bin/python")
        });
    assert!(
        p.is_file(),
        "the test Python venv is missing ({}): run scripts/test once (it creates .cache/venv with the mcp SDK)",
        p.display()
    );
    p
}

async fn run_sdk(h: &Harness, cimd: Option<&str>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app: axum::Router = airlock_oauth::control_router(h.server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/py/sdk_flow.py");
    let mut cmd = tokio::process::Command::new(venv_python());
    cmd.arg(script).arg(&h.base).arg(&api).kill_on_drop(true);
    if let Some(url) = cimd {
        cmd.arg(url);
    }
    let run = cmd.output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Python client finishes within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("PYTHON SDK FLOW OK"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout.into_owned()
}

#[tokio::test]
async fn python_mcp_sdk_oauth_client_with_dynamic_registration() {
    let h = Harness::start().await;
    run_sdk(&h, None).await;
    // The server saw it: a dynamic client with one revoked grant, and the audit trail.
    let clients = h.server.clients().await.unwrap();
    let c = clients.iter().find(|c| c.name == "python mcp sdk").unwrap();
    assert_eq!(c.grants.len(), 1);
    assert!(c.grants[0].revoked_ms.is_some());
    let log = h.server.audit_log(Default::default()).await.unwrap();
    for kind in ["token_issued", "token_refreshed", "revoked"] {
        assert!(log.iter().any(|e| e.kind == kind), "{kind}");
    }
}

#[tokio::test]
async fn python_mcp_sdk_oauth_client_with_a_client_id_metadata_document() {
    let docs = DocServer::start(&["client.example"]).await;
    let url = "https://client.example/python-sdk";
    docs.put(
        "/python-sdk",
        200,
        serde_json::json!({"client_id": url, "client_name": "python via CIMD",
            "redirect_uris": ["http://localhost/callback", "http://localhost:3030/callback"],
            "token_endpoint_auth_method": "none"})
        .to_string(),
        Duration::ZERO,
    );
    let (fetcher, _) = docs.fetcher(&[("client.example", "203.0.113.30".parse().unwrap())]);
    let h = Harness::start_with(|_| {}, Some(fetcher)).await;
    let out = run_sdk(&h, Some(url)).await;
    assert!(out.contains(&format!("client {url} none")), "{out}");
    let clients = h.server.clients().await.unwrap();
    let c = clients.iter().find(|c| c.client_id == url).unwrap();
    assert_eq!(c.kind, "cimd");
    assert_eq!(c.name, "python via CIMD");
}

fn node_dir() -> PathBuf {
    let d = std::env::var_os("AIRLOCK_E2E_NODE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/node"));
    assert!(
        d.join("node_modules/@modelcontextprotocol/sdk/package.json")
            .is_file(),
        "the test Node tools are missing ({}): run scripts/test once (npm ci in tests/node)",
        d.display()
    );
    d
}

#[tokio::test]
async fn typescript_mcp_sdk_oauth_client_registers_authorizes_refreshes_and_is_revoked() {
    let h = Harness::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", listener.local_addr().unwrap());
    let app: axum::Router = airlock_oauth::control_router(h.server.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = node_dir();
    let pinned = dir.join("node_modules/.bin/node");
    let node = if pinned.is_file() {
        pinned
    } else {
        PathBuf::from("node")
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js/sdk_flow.mjs");
    let run = tokio::process::Command::new(node)
        .arg(script)
        .arg(dir.join("node_modules/@modelcontextprotocol/sdk"))
        .arg(&h.base)
        .arg(&api)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the Node client finishes within 120 s")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("TS SDK FLOW OK"),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clients = h.server.clients().await.unwrap();
    let c = clients
        .iter()
        .find(|c| c.name == "typescript mcp sdk")
        .unwrap();
    assert!(c.grants[0].revoked_ms.is_some());
}
