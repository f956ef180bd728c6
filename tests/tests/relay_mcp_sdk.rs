//! The relay path end to end with the real pieces: `airlock relay` (its own process and home),
//! `airlock tunnel login --relay … --relay-fingerprint …` (token on stdin) + `airlock up`, a real
//! stdio MCP server (server-everything on Node 22) exposed, and the official Python MCP SDK
//! connecting to `https://<hostname>.<tunnel domain>:<relay public port>/mcp` THROUGH THE RELAY,
//! trusting only the Airlock CA (`ssl.create_default_context(cafile=…)`), with the name pinned to
//! 127.0.0.1 inside the client (an httpcore network backend) so the SNI and certificate check use
//! the real hostname → `tools/call echo` with a unique marker.
//!
//! Then: the agent is restarted → same hostname, same tunnel domain, same CA fingerprint, and
//! the relay URL works again; the relay's ops metrics show the streams it carried.
#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_e2e::relay::RelayProcess;
use airlock_e2e::{Agent, NodeTools, TestHome, run_with_timeout, venv_python, wait_for};
use serde_json::{Value, json};

const DOMAIN: &str = "relay.test";

/// The client: official MCP SDK over httpx2, CA-only trust, hostname pinned to 127.0.0.1.
const CLIENT: &str = r#"
import json, ssl, sys
import anyio, httpcore2, httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

url, ca_file, token, message = sys.argv[1:5]

class PinnedBackend(httpcore2.AsyncNetworkBackend):
    """Resolves every name to 127.0.0.1 (the TLS layer still sees the real hostname)."""
    def __init__(self):
        self.inner = httpcore2.AnyIOBackend()
        self.dialed = []
    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.dialed.append([host, port])
        return await self.inner.connect_tcp("127.0.0.1", port, timeout=timeout,
                                            local_address=local_address, socket_options=socket_options)
    async def connect_unix_socket(self, *a, **k):
        raise OSError("no unix sockets here")
    async def sleep(self, seconds):
        await self.inner.sleep(seconds)

async def main():
    out = {"ok": False}
    ctx = ssl.create_default_context(cafile=ca_file)  # with cafile: no system roots
    out["trusted_roots"] = len(ctx.get_ca_certs())
    backend = PinnedBackend()
    transport = httpx2.AsyncHTTPTransport(verify=ctx)
    transport._pool = httpcore2.AsyncConnectionPool(ssl_context=ctx, network_backend=backend)
    try:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"},
                                      transport=transport,
                                      timeout=httpx2.Timeout(60, read=120)) as http:
            async with Client(streamable_http_client(url, http_client=http),
                              read_timeout_seconds=120) as c:
                tools = await c.list_tools()
                out["tools"] = sorted(t.name for t in tools.tools)
                res = await c.call_tool("echo", {"message": message})
                out["is_error"] = bool(res.is_error)
                out["text"] = "\n".join(getattr(p, "text", "") for p in (res.content or []))
                out["ok"] = True
    except BaseException as e:
        out["error"] = f"{type(e).__name__}: {e!r}"
    out["dialed"] = backend.dialed
    print(json.dumps(out), flush=True)

anyio.run(main)
"#;

fn marker(tag: &str) -> String {
    let n = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("relay-sdk-{tag}-{n:x}")
}

fn sdk_call(url: &str, ca_file: &str, token: &str, message: &str) -> Value {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c")
        .arg(CLIENT)
        .args([url, ca_file, token, message])
        .env("PYTHONUNBUFFERED", "1");
    let out = run_with_timeout(cmd, Duration::from_secs(180));
    let line = out.stdout.lines().last().unwrap_or("").to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "the SDK client printed no JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout, out.stderr
        )
    })
}

/// `airlock url everything --json` → (relay URL, CA file, an access token through the OAuth flow).
fn relay_url(agent: &Agent) -> (String, String, String) {
    let v = agent.cli_json(&["url", "everything", "--json"]);
    let url = v["relay_url"]
        .as_str()
        .unwrap_or_else(|| panic!("no relay_url in `airlock url --json`: {v}"))
        .to_string();
    let ca = v["relay_ca_file"]
        .as_str()
        .unwrap_or_else(|| panic!("no relay_ca_file: {v}"))
        .to_string();
    let token = airlock_e2e::oauth::obtain_token(agent, v["url"].as_str().unwrap()).access_token;
    (url, ca, token)
}

fn relay_status(agent: &Agent) -> Value {
    agent.cli_json(&["status", "--json"])["relay"].clone()
}

fn wait_connected(agent: &Agent) -> Value {
    wait_for(
        Duration::from_secs(60),
        "the agent's relay node to be connected",
        || {
            let r = relay_status(agent);
            (r["nodes"][0]["state"] == "connected").then_some(r)
        },
    )
}

fn assert_call(out: &Value, url: &str, message: &str, relay: &RelayProcess) {
    assert_eq!(
        out["ok"],
        true,
        "SDK call through the relay: {out}\n{}",
        relay.log()
    );
    assert_eq!(
        out["trusted_roots"], 1,
        "only the Airlock CA is trusted: {out}"
    );
    assert_eq!(out["is_error"], false, "{out}");
    assert_eq!(out["text"], format!("Echo: {message}"), "{out}");
    let host = url
        .trim_start_matches("https://")
        .split([':', '/'])
        .next()
        .unwrap();
    let dialed = out["dialed"].as_array().unwrap();
    assert!(
        !dialed.is_empty()
            && dialed
                .iter()
                .all(|d| d[0] == host && d[1] == u64::from(relay.public.port())),
        "the client dialed {dialed:?}, expected {host}:{} (the relay's public port)",
        relay.public.port()
    );
}

#[test]
fn official_sdk_reaches_a_stdio_server_through_airlock_relay() {
    let relay_home = TestHome::new();
    let relay = RelayProcess::start(&relay_home, DOMAIN);
    let tok = relay.create_token(&relay_home, "laptop");

    let home = TestHome::new();
    let node = NodeTools::locate();
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&json!({
            "mcpServers": {
                "everything": {"command": node.node, "args": [node.server_everything(), "stdio"]}
            }
        }))
        .unwrap(),
    );
    home.write_airlock_config(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n",
    );

    // The token goes in on stdin, never argv.
    let mut login = home.airlock();
    login
        .args(["tunnel", "login", "--relay"])
        .arg(relay.tunnel.to_string())
        .arg("--relay-fingerprint")
        .arg(&relay.pin)
        .arg("--relay-public-port")
        .arg(relay.public.port().to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().unwrap();
    writeln!(child.stdin.take().unwrap(), "{}", tok.token).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "airlock tunnel login: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(&tok.token)
            && !String::from_utf8_lossy(&out.stderr).contains(&tok.token),
        "tunnel login must not echo the token"
    );

    let mut agent = Agent::start(home);
    agent.wait_server("everything", Duration::from_secs(90));
    let out = agent.cli(&["expose", "everything", "--yes"]);
    assert_eq!(out.code, Some(0), "{out:?}");
    let status = wait_connected(&agent);
    assert_eq!(
        status["tunnel_domain"],
        tok.tunnel_domain.as_str(),
        "{status}"
    );
    let ca_fp = status["ca_fingerprint"].as_str().unwrap().to_string();

    let (url, ca_file, token) = relay_url(&agent);
    assert!(
        url.starts_with("https://")
            && url.contains(&format!(".{}:{}/", tok.tunnel_domain, relay.public.port())),
        "relay URL https://<sub>.<tunnel domain>:<public port>/…: {url}"
    );
    let m = marker("first");
    let out = sdk_call(&url, &ca_file, &token, &m);
    assert_call(&out, &url, &m, &relay);
    assert!(
        out["tools"].as_array().unwrap().iter().any(|t| t == "echo"),
        "{out}"
    );
    assert!(!relay.log().contains(&m), "the relay logged the payload");

    // The agent restarts: same hostname, tunnel domain and CA; the relay URL works again.
    agent.stop();
    let home = std::mem::take(&mut agent.home);
    drop(agent);
    let agent = Agent::start(home);
    let status = wait_connected(&agent);
    assert_eq!(
        status["tunnel_domain"],
        tok.tunnel_domain.as_str(),
        "{status}"
    );
    assert_eq!(
        status["ca_fingerprint"],
        ca_fp.as_str(),
        "the CA survives a restart"
    );
    let (url2, ca_file2, token2) = relay_url(&agent);
    assert_eq!(url2, url, "the relay URL (hostname) survives a restart");
    assert_eq!(ca_file2, ca_file);
    let m = marker("after-restart");
    let out = wait_for(
        Duration::from_secs(90),
        "the relay URL to work after the agent restarted",
        || {
            let out = sdk_call(&url2, &ca_file2, &token2, &m);
            (out["ok"] == true).then_some(out)
        },
    );
    assert_call(&out, &url2, &m, &relay);

    let metrics = relay.metrics();
    assert!(
        metrics
            .get("airlock_relay_streams_total")
            .copied()
            .unwrap_or(0.0)
            >= 2.0,
        "{metrics:?}"
    );
}
