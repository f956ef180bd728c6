//! The loopback probe finds MCP servers (legacy JSON, legacy SSE, modern discover) and nothing
//! else, and only ever talks to 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_discovery::{ClientKind, ProbeOptions, Scope, TransportSpec, probe_running};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[derive(Clone, Debug)]
struct Req {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Req {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Legacy MCP on /mcp answering JSON with a session id.
    LegacyJson,
    /// Legacy MCP on / answering SSE and keeping the stream open.
    LegacySse,
    /// Modern-only: initialize → 400, server/discover → result.
    Modern,
    /// 404 for everything.
    NotFound,
    /// 200 JSON that is not MCP.
    NotMcp,
    /// Accept and never answer.
    Hang,
}

type Log = Arc<Mutex<Vec<Req>>>;

async fn read_request(s: &mut TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Req {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn response(status: &str, ctype: &str, extra: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n{extra}connection: close\r\n\r\n{body}",
        body.len()
    )
}

async fn handle(mut s: TcpStream, b: Behaviour, log: Log) {
    let Some(req) = read_request(&mut s).await else {
        return;
    };
    if let Ok(mut l) = log.lock() {
        l.push(req.clone());
    }
    let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
    let id = body.get("id").cloned().unwrap_or_default();
    let method = body.get("method").and_then(|m| m.as_str()).unwrap_or("");
    let not_found = response("404 Not Found", "text/plain", "", "nope");
    let out = match b {
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        Behaviour::NotFound => not_found,
        Behaviour::NotMcp => response("200 OK", "application/json", "", r#"{"ok":true,"id":1}"#),
        Behaviour::LegacyJson => match (req.method.as_str(), req.path.as_str(), method) {
            ("POST", "/mcp", "initialize") => {
                let r = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": "2025-06-18", "capabilities": {},
                    "serverInfo": {"name": "legacy-json", "version": "1.0"}}});
                response(
                    "200 OK",
                    "application/json",
                    "mcp-session-id: sess-42\r\n",
                    &r.to_string(),
                )
            }
            ("DELETE", "/mcp", _) => response("200 OK", "text/plain", "", ""),
            _ => not_found,
        },
        Behaviour::LegacySse => match (req.method.as_str(), req.path.as_str(), method) {
            ("POST", "/", "initialize") => {
                let r = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                    "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                    "serverInfo": {"name": "legacy-sse", "version": "1.0"}}});
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n\r\n";
                let events = format!("id: 0\ndata:\n\nevent: message\nid: 1\ndata: {r}\n\n");
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(events.as_bytes()).await;
                // Keep the stream open like a real server would.
                tokio::time::sleep(Duration::from_secs(60)).await;
                return;
            }
            _ => not_found,
        },
        Behaviour::Modern => match (req.method.as_str(), method, req.header("mcp-method")) {
            ("POST", "server/discover", Some("server/discover")) => {
                let r = serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {
                    "supportedVersions": ["2026-07-28"], "capabilities": {},
                    "serverInfo": {"name": "modern-only", "version": "2.0"},
                    "resultType": "complete"}});
                response("200 OK", "application/json", "", &r.to_string())
            }
            ("POST", _, _) => {
                let r = serde_json::json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32022, "message": "unsupported protocol version",
                              "data": {"supported": ["2026-07-28"]}}});
                response("400 Bad Request", "application/json", "", &r.to_string())
            }
            _ => response("405 Method Not Allowed", "text/plain", "", ""),
        },
    };
    let _ = s.write_all(out.as_bytes()).await;
    let _ = s.shutdown().await;
}

/// Serve `b` on `ip` (port 0 = any); returns the port and the request log.
async fn spawn_server(ip: Ipv4Addr, port: u16, b: Behaviour) -> std::io::Result<(u16, Log)> {
    let listener = TcpListener::bind(SocketAddr::new(IpAddr::V4(ip), port)).await?;
    let port = listener.local_addr()?.port();
    let log: Log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(handle(s, b, log2.clone()));
        }
    });
    Ok((port, log))
}

fn reqs(log: &Log) -> Vec<Req> {
    log.lock().map(|l| l.clone()).unwrap_or_default()
}

fn opts(ports: Vec<u16>) -> ProbeOptions {
    ProbeOptions {
        ports: Some(ports),
        per_probe_timeout: Duration::from_secs(3),
        deadline: Duration::from_secs(20),
        ..ProbeOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finds_only_mcp_servers() -> TestResult {
    let lo = Ipv4Addr::LOCALHOST;
    let (json_port, json_log) = spawn_server(lo, 0, Behaviour::LegacyJson).await?;
    let (sse_port, _) = spawn_server(lo, 0, Behaviour::LegacySse).await?;
    let (modern_port, modern_log) = spawn_server(lo, 0, Behaviour::Modern).await?;
    let (nf_port, nf_log) = spawn_server(lo, 0, Behaviour::NotFound).await?;
    let (plain_port, _) = spawn_server(lo, 0, Behaviour::NotMcp).await?;

    let found = probe_running(&opts(vec![
        json_port,
        sse_port,
        modern_port,
        nf_port,
        plain_port,
    ]))
    .await;
    let mut got: Vec<(String, String)> = found
        .iter()
        .map(|s| match &s.transport {
            TransportSpec::StreamableHttp { url, headers } if headers.is_empty() => {
                (s.name.clone(), url.clone())
            }
            other => (s.name.clone(), format!("unexpected transport {other:?}")),
        })
        .collect();
    got.sort();
    let mut want = vec![
        (
            "legacy-json".to_string(),
            format!("http://127.0.0.1:{json_port}/mcp"),
        ),
        (
            "legacy-sse".to_string(),
            format!("http://127.0.0.1:{sse_port}"),
        ),
        (
            "modern-only".to_string(),
            format!("http://127.0.0.1:{modern_port}/mcp"),
        ),
    ];
    want.sort();
    assert_eq!(got, want);
    for s in &found {
        assert_eq!(s.sources.len(), 1);
        let src = &s.sources[0];
        assert_eq!(
            (src.client, src.scope, src.disabled),
            (ClientKind::Running, Scope::Running, false)
        );
        let TransportSpec::StreamableHttp { url, .. } = &s.transport else {
            return Err("transport".into());
        };
        assert_eq!(src.path.to_string_lossy(), url.as_str());
        assert_eq!(s.id.len(), 12);
    }

    // The legacy server got a proper initialize, then a DELETE for its session.
    let log = reqs(&json_log);
    let init = log.iter().find(|r| r.method == "POST").ok_or("no POST")?;
    let host = format!("127.0.0.1:{json_port}");
    assert_eq!(init.header("host"), Some(host.as_str()));
    let accept = init.header("accept").unwrap_or("");
    assert!(
        accept.contains("application/json") && accept.contains("text/event-stream"),
        "{accept}"
    );
    assert!(init.header("mcp-protocol-version").is_some());
    assert!(init.body.contains("\"initialize\""));
    let del = log
        .iter()
        .find(|r| r.method == "DELETE")
        .ok_or("no DELETE for the session")?;
    assert_eq!(del.header("mcp-session-id"), Some("sess-42"));
    assert_eq!(del.path, "/mcp");

    // The modern server was asked with server/discover and the Mcp-Method header.
    assert!(
        reqs(&modern_log)
            .iter()
            .any(|r| r.header("mcp-method") == Some("server/discover")
                && r.header("mcp-protocol-version") == Some("2026-07-28"))
    );
    // The 404 server was tried on both paths and never got a DELETE.
    let nf = reqs(&nf_log);
    assert!(nf.iter().any(|r| r.path == "/mcp") && nf.iter().any(|r| r.path == "/"));
    assert!(nf.iter().all(|r| r.method == "POST"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_dials_other_addresses() -> TestResult {
    // An MCP server on 127.0.0.2 (another loopback address) on a port that is free on
    // 127.0.0.1: probing that port must not reach it.
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let mut attempt = None;
    for _ in 0..20 {
        let (port, log) = spawn_server(other, 0, Behaviour::LegacyJson).await?;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            attempt = Some((port, log));
            break;
        }
    }
    let (port, log) = attempt.ok_or("no port free on both 127.0.0.1 and 127.0.0.2")?;
    let found = probe_running(&opts(vec![port])).await;
    assert!(found.is_empty(), "{found:?}");
    assert!(reqs(&log).is_empty(), "the probe reached 127.0.0.2");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_ports_are_not_touched_and_deadline_holds() -> TestResult {
    let lo = Ipv4Addr::LOCALHOST;
    let (mcp_port, mcp_log) = spawn_server(lo, 0, Behaviour::LegacyJson).await?;
    let mut o = opts(vec![mcp_port]);
    o.exclude_ports = vec![mcp_port];
    assert!(probe_running(&o).await.is_empty());
    assert!(reqs(&mcp_log).is_empty());

    // Hanging servers are cut off by the per-probe timeout and the overall deadline.
    let mut hang_ports = Vec::new();
    for _ in 0..4 {
        hang_ports.push(spawn_server(lo, 0, Behaviour::Hang).await?.0);
    }
    let o = ProbeOptions {
        ports: Some(hang_ports),
        per_probe_timeout: Duration::from_millis(300),
        deadline: Duration::from_millis(800),
        concurrency: 2,
        ..ProbeOptions::default()
    };
    let start = Instant::now();
    let found = probe_running(&o).await;
    assert!(found.is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    Ok(())
}
