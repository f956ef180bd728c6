//! Finding MCP servers already running on loopback.
//!
//! The probe only ever connects to `127.0.0.1`: it takes port numbers, never addresses, and the
//! single function that opens a connection ([`connect_loopback`]) hard-codes the address.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::clients::Found;
use crate::identity::merge;
use crate::model::{ClientKind, DiscoveredServer, Scope, TransportSpec};

/// Legacy-era protocol version sent with `initialize`.
const LEGACY_VERSION: &str = "2025-11-25";
/// Modern-era protocol version sent with `server/discover`.
const MODERN_VERSION: &str = "2026-07-28";
/// Most bytes read from one probe response.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// What to probe and how hard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeOptions {
    /// Ports on 127.0.0.1 to try. `None` = the current user's listening TCP ports on
    /// 127.0.0.1/::1/0.0.0.0/:: from `/proc/net/tcp{,6}` (empty on non-Linux).
    pub ports: Option<Vec<u16>>,
    /// Ports never to touch (e.g. Airlock's own gateway and control API).
    pub exclude_ports: Vec<u16>,
    /// URL paths to try on each port, in order; the first MCP answer wins.
    pub paths: Vec<String>,
    /// Bound on each HTTP exchange.
    pub per_probe_timeout: Duration,
    /// Bound on the whole probe; ports not finished by then are abandoned.
    pub deadline: Duration,
    /// Ports probed at the same time.
    pub concurrency: usize,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            ports: None,
            exclude_ports: Vec::new(),
            paths: vec!["/mcp".to_string(), "/".to_string()],
            per_probe_timeout: Duration::from_secs(1),
            deadline: Duration::from_secs(5),
            concurrency: 16,
        }
    }
}

/// Probe loopback ports for MCP servers (Streamable HTTP, legacy `initialize` or modern
/// `server/discover`). Bounded by `opts.deadline`; never fails, unreachable ports are skipped.
pub async fn probe_running(opts: &ProbeOptions) -> Vec<DiscoveredServer> {
    let deadline = tokio::time::Instant::now() + opts.deadline;
    let mut ports = match &opts.ports {
        Some(p) => p.clone(),
        None => tokio::task::spawn_blocking(listening_ports)
            .await
            .unwrap_or_default(),
    };
    ports.retain(|p| *p != 0 && !opts.exclude_ports.contains(p));
    ports.sort_unstable();
    ports.dedup();
    let paths: Arc<Vec<String>> = Arc::new(
        opts.paths
            .iter()
            .map(|p| {
                if p.starts_with('/') {
                    p.clone()
                } else {
                    format!("/{p}")
                }
            })
            .collect(),
    );
    let sem = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let timeout = opts.per_probe_timeout;
    let mut set = JoinSet::new();
    for port in ports {
        let sem = sem.clone();
        let paths = paths.clone();
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.ok()?;
            for path in paths.iter() {
                if let Some(found) = probe_endpoint(port, path, timeout).await {
                    return Some(found);
                }
            }
            None
        });
    }
    let mut found = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(Some(f)))) => found.push(f),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(_) => {
                set.abort_all();
                break;
            }
        }
    }
    merge(found)
}

/// Try one `http://127.0.0.1:port/path`: legacy `initialize`, then modern `server/discover`.
async fn probe_endpoint(port: u16, path: &str, timeout: Duration) -> Option<Found> {
    let url = format!(
        "http://127.0.0.1:{port}{}",
        if path == "/" { "" } else { path }
    );
    let init = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": LEGACY_VERSION,
            "capabilities": {},
            "clientInfo": {"name": "airlock-probe", "version": env!("CARGO_PKG_VERSION")}
        }
    });
    let legacy = tokio::time::timeout(
        timeout,
        post(
            port,
            path,
            &init,
            &[("mcp-protocol-version", LEGACY_VERSION)],
        ),
    )
    .await
    .ok()
    .flatten();
    let mut name = None;
    let mut is_mcp = false;
    if let Some(resp) = legacy {
        if let Some(n) = mcp_result(&resp.json, 1) {
            is_mcp = true;
            name = n;
        }
        // End any session we were handed, whatever the answer was.
        if let Some(session) = &resp.session {
            let negotiated = resp
                .json
                .pointer("/result/protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(LEGACY_VERSION);
            let _ = tokio::time::timeout(timeout, delete_session(port, path, session, negotiated))
                .await;
        }
    }
    if !is_mcp {
        let discover = json!({
            "jsonrpc": "2.0",
            "id": 2,
            "method": "server/discover",
            "params": {"_meta": {
                "io.modelcontextprotocol/protocolVersion": MODERN_VERSION,
                "io.modelcontextprotocol/clientCapabilities": {},
                "io.modelcontextprotocol/clientInfo":
                    {"name": "airlock-probe", "version": env!("CARGO_PKG_VERSION")}
            }}
        });
        let modern = tokio::time::timeout(
            timeout,
            post(
                port,
                path,
                &discover,
                &[
                    ("mcp-protocol-version", MODERN_VERSION),
                    ("mcp-method", "server/discover"),
                ],
            ),
        )
        .await
        .ok()
        .flatten()?;
        name = mcp_result(&modern.json, 2)?;
    }
    let name = name.unwrap_or_else(|| format!("localhost-{port}"));
    Some(Found {
        client: ClientKind::Running,
        path: PathBuf::from(&url),
        name,
        scope: Scope::Running,
        disabled: false,
        transport: TransportSpec::StreamableHttp {
            url,
            headers: Default::default(),
        },
    })
}

/// If `v` is a JSON-RPC result for `id` that looks like an MCP initialize/discover result,
/// returns `Some(server name if given)`.
fn mcp_result(v: &Value, id: i64) -> Option<Option<String>> {
    if v.get("jsonrpc").and_then(Value::as_str) != Some("2.0")
        || v.get("id").and_then(Value::as_i64) != Some(id)
    {
        return None;
    }
    let result = v.get("result")?.as_object()?;
    let info = result
        .get("serverInfo")
        .or_else(|| {
            result
                .get("_meta")
                .and_then(|m| m.get("io.modelcontextprotocol/serverInfo"))
        })
        .filter(|i| i.is_object());
    let looks_mcp = info.is_some()
        || result.get("protocolVersion").is_some_and(Value::is_string)
        || result.get("supportedVersions").is_some_and(Value::is_array);
    if !looks_mcp {
        return None;
    }
    Some(
        info.and_then(|i| i.get("name"))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string),
    )
}

struct Response {
    json: Value,
    session: Option<String>,
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// Open an HTTP/1.1 connection to 127.0.0.1:port. The only place the probe dials.
async fn connect_loopback(port: u16) -> Option<(Sender, tokio::task::JoinHandle<()>)> {
    let stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    Some((sender, task))
}

fn request(
    method: Method,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Option<Request<Full<Bytes>>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, format!("127.0.0.1:{port}"))
        .header(
            header::USER_AGENT,
            concat!("airlock-probe/", env!("CARGO_PKG_VERSION")),
        );
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(body)).ok()
}

async fn post(port: u16, path: &str, body: &Value, extra: &[(&str, &str)]) -> Option<Response> {
    let (mut sender, conn) = connect_loopback(port).await?;
    let result = async {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("accept", "application/json, text/event-stream"),
        ];
        headers.extend_from_slice(extra);
        let req = request(
            Method::POST,
            port,
            path,
            &headers,
            Bytes::from(body.to_string()),
        )?;
        let resp = sender.send_request(req).await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let session = resp
            .headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let sse = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with("text/event-stream"));
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            if let Some(data) = frame.data_ref() {
                if buf.len() + data.len() > MAX_RESPONSE_BYTES {
                    return None;
                }
                buf.extend_from_slice(data);
                if sse && let Some(json) = sse_response(&buf) {
                    return Some(Response { json, session });
                }
            }
        }
        let json = if sse {
            sse_response(&buf)?
        } else {
            serde_json::from_slice(&buf).ok()?
        };
        Some(Response { json, session })
    }
    .await;
    conn.abort();
    result
}

async fn delete_session(port: u16, path: &str, session: &str, version: &str) -> Option<StatusCode> {
    let (mut sender, conn) = connect_loopback(port).await?;
    let status = async {
        let req = request(
            Method::DELETE,
            port,
            path,
            &[
                ("mcp-session-id", session),
                ("mcp-protocol-version", version),
            ],
            Bytes::new(),
        )?;
        let resp = sender.send_request(req).await.ok()?;
        Some(resp.status())
    }
    .await;
    conn.abort();
    status
}

/// The first JSON-RPC response (object with `id` and `result`/`error`) among the complete SSE
/// events in `buf`.
fn sse_response(buf: &[u8]) -> Option<Value> {
    let text = String::from_utf8_lossy(buf).replace("\r\n", "\n");
    let mut events: Vec<&str> = text.split("\n\n").collect();
    // The last piece is an incomplete event unless the buffer ended with a blank line.
    events.pop();
    for event in events {
        let data: Vec<&str> = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect();
        if data.is_empty() {
            continue;
        }
        if let Ok(v) = serde_json::from_str::<Value>(&data.join("\n"))
            && v.get("id").is_some()
            && (v.get("result").is_some() || v.get("error").is_some())
        {
            return Some(v);
        }
    }
    None
}

/// Listening TCP ports owned by the current user on 127.0.0.1, ::1, 0.0.0.0 or ::.
#[cfg(target_os = "linux")]
fn listening_ports() -> Vec<u16> {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata("/proc/self").map(|m| m.uid()) else {
        return Vec::new();
    };
    let mut ports = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            ports.extend(parse_proc_net_tcp(&text, uid));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(not(target_os = "linux"))]
fn listening_ports() -> Vec<u16> {
    Vec::new()
}

/// Parse `/proc/net/tcp` or `/proc/net/tcp6` text: LISTEN sockets of `uid` on a loopback or
/// wildcard address.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub(crate) fn parse_proc_net_tcp(text: &str, uid: u32) -> Vec<u16> {
    const ADDRS: [&str; 7] = [
        "0100007F",                         // 127.0.0.1 (little-endian host)
        "7F000001",                         // 127.0.0.1 (big-endian host)
        "00000000",                         // 0.0.0.0
        "00000000000000000000000001000000", // ::1 (little-endian)
        "00000000000000000000000000000001", // ::1 (big-endian)
        "00000000000000000000000000000000", // ::
        "0000000000000000FFFF00000100007F", // ::ffff:127.0.0.1
    ];
    let mut out = Vec::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 || f[3] != "0A" {
            continue;
        }
        let Some((addr, port)) = f[1].split_once(':') else {
            continue;
        };
        if !ADDRS.iter().any(|a| a.eq_ignore_ascii_case(addr)) {
            continue;
        }
        if f[7].parse::<u32>().ok() != Some(uid) {
            continue;
        }
        if let Ok(p) = u16::from_str_radix(port, 16) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_net_tcp() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1\n\
   1: 0200007F:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 2 1\n\
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1\n\
   3: 0100007F:1F92 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4 1\n\
   4: 00000000:1F93 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 5 1\n";
        assert_eq!(parse_proc_net_tcp(text, 1000), vec![0x1F90, 0x1F93]);
        assert_eq!(parse_proc_net_tcp(text, 0), vec![0x50]);
    }

    #[test]
    fn sse_parsing() {
        let buf = b"id: 1\ndata:\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}\n\ndata: {\"partial";
        let v = sse_response(buf).unwrap_or_default();
        assert_eq!(v["id"], 1);
        assert!(sse_response(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}").is_none());
    }

    #[test]
    fn recognises_mcp_results() {
        let init = json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-06-18","serverInfo":{"name":"x"},"capabilities":{}}});
        assert_eq!(mcp_result(&init, 1), Some(Some("x".into())));
        assert_eq!(mcp_result(&init, 2), None);
        let other = json!({"jsonrpc":"2.0","id":1,"result":{"ok":true}});
        assert_eq!(mcp_result(&other, 1), None);
        let modern = json!({"jsonrpc":"2.0","id":2,"result":{"supportedVersions":["2026-07-28"],"capabilities":{}}});
        assert_eq!(mcp_result(&modern, 2), Some(None));
    }
}

#[cfg(all(test, target_os = "linux"))]
mod linux_tests {
    #[test]
    fn own_listening_port_is_listed() -> std::io::Result<()> {
        let l = std::net::TcpListener::bind(("127.0.0.1", 0))?;
        let port = l.local_addr()?.port();
        assert!(super::listening_ports().contains(&port));
        drop(l);
        Ok(())
    }
}
