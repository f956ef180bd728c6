//! `mcp-load`: a fixed-concurrency, bounded-duration `tools/call` load generator for a
//! Streamable HTTP MCP endpoint on loopback (used by `bench/bridge.sh`).
//!
//! Each worker opens its own legacy session (`initialize` + `notifications/initialized`),
//! then calls one tool in a closed loop until the duration ends (for `echo`, each call has
//! a distinct message that must come back exactly). Prints one JSON line:
//! `{"label", "url", "concurrency", "secs", "ok", "errors", "rps", "p50_ms", "p99_ms"}`.
//!
//! usage: mcp-load --url URL [--token T] [--concurrency 8] [--duration 10] [--warmup 1]
//!                 [--tool echo] [--args '{"message":"bench"}'] [--expect 'Echo: bench']
//!                 [--label NAME]

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

#[derive(Debug, Clone)]
struct Args {
    url: String,
    token: Option<String>,
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    tool: String,
    args: Value,
    expect: String,
    label: String,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        token: None,
        concurrency: 8,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(1),
        tool: "echo".into(),
        args: json!({"message": "bench"}),
        expect: "Echo: bench".into(),
        label: "target".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?,
            "--token" => a.token = Some(val()?),
            "--concurrency" => {
                a.concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--duration" => {
                a.duration =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--duration: {e}"))?)
            }
            "--warmup" => {
                a.warmup =
                    Duration::from_secs_f64(val()?.parse().map_err(|e| format!("--warmup: {e}"))?)
            }
            "--tool" => a.tool = val()?,
            "--args" => {
                a.args = serde_json::from_str(&val()?).map_err(|e| format!("--args: {e}"))?
            }
            "--expect" => a.expect = val()?,
            "--label" => a.label = val()?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if !a.url.starts_with("http://127.") && !a.url.starts_with("http://localhost") {
        return Err(format!(
            "--url must be a loopback http:// URL (got {:?})",
            a.url
        ));
    }
    if a.concurrency == 0 || a.concurrency > 256 {
        return Err("--concurrency must be 1..=256".into());
    }
    if a.duration > Duration::from_secs(300) {
        return Err("--duration is capped at 300 s".into());
    }
    Ok(a)
}

struct Session {
    id: Option<String>,
    version: String,
}

async fn post(
    client: &HttpClient,
    a: &Args,
    session: Option<&Session>,
    body: &Value,
) -> Result<(u16, Option<String>, String), String> {
    let session = session.map(|s| (s.id.as_deref(), s.version.as_str()));
    let req = airlock_e2e::mcp_post_request(&a.url, None, a.token.as_deref(), session, body)?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("send: {e}"))?;
    airlock_e2e::read_mcp_response(resp).await
}

async fn open_session(client: &HttpClient, a: &Args) -> Result<Session, String> {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "mcp-load", "version": "0"}}});
    let (status, sid, body) = post(client, a, None, &init).await?;
    let resp = airlock_e2e::jsonrpc_response_for(&body, 0)
        .ok_or_else(|| format!("initialize: HTTP {status}, no response in {body:?}"))?;
    let version = resp["result"]["protocolVersion"]
        .as_str()
        .ok_or_else(|| format!("initialize failed: {resp}"))?
        .to_string();
    let s = Session { id: sid, version };
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let (status, _, body) = post(client, a, Some(&s), &note).await?;
    if !(200..300).contains(&status) {
        return Err(format!("notifications/initialized: HTTP {status} {body}"));
    }
    Ok(s)
}

struct Stats {
    ok: AtomicU64,
    errors: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

async fn worker(
    worker_no: usize,
    client: HttpClient,
    a: Arc<Args>,
    stats: Arc<Stats>,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Vec<u32> {
    let mut lat_us = Vec::with_capacity(1 << 14);
    let session = match open_session(&client, &a).await {
        Ok(s) => s,
        Err(e) => {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = stats.first_error.lock() {
                g.get_or_insert(e);
            }
            return lat_us;
        }
    };
    let mut id: u64 = 1;
    // For `echo`, every call carries a distinct message and must get exactly it back, so a
    // cached or misrouted answer counts as an error.
    let unique = a.tool == "echo";
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let (args, expect) = if unique {
            let msg = format!("bench-{worker_no}-{id}");
            (json!({"message": msg}), format!("Echo: {msg}"))
        } else {
            (a.args.clone(), a.expect.clone())
        };
        let call = json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": {"name": a.tool, "arguments": args}});
        let t0 = Instant::now();
        let res = post(&client, &a, Some(&session), &call).await;
        let took = t0.elapsed();
        let good = match &res {
            Ok((200, _, body)) => airlock_e2e::jsonrpc_response_for(body, id).is_some_and(|v| {
                v["result"]["content"][0]["text"].as_str().is_some_and(|t| {
                    if unique {
                        t == expect
                    } else {
                        t.contains(&expect)
                    }
                })
            }),
            _ => false,
        };
        if !measuring.load(Ordering::Relaxed) {
            continue;
        }
        if good {
            stats.ok.fetch_add(1, Ordering::Relaxed);
            lat_us.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        } else {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut g) = stats.first_error.lock() {
                g.get_or_insert_with(|| format!("{res:?}"));
            }
        }
    }
    lat_us
}

fn main() -> ExitCode {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("mcp-load: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mcp-load: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(run(a))
}

async fn run(a: Args) -> ExitCode {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(a.concurrency)
        .build(connector);
    let a = Arc::new(a);
    let stats = Arc::new(Stats {
        ok: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: std::sync::Mutex::new(None),
    });
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for worker_no in 0..a.concurrency {
        handles.push(tokio::spawn(worker(
            worker_no,
            client.clone(),
            a.clone(),
            stats.clone(),
            measuring.clone(),
            stop.clone(),
        )));
    }
    tokio::time::sleep(a.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let start = Instant::now();
    tokio::time::sleep(a.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut lat: Vec<u32> = Vec::new();
    for h in handles {
        if let Ok(Ok(mut v)) = tokio::time::timeout(Duration::from_secs(30), h).await {
            lat.append(&mut v);
        }
    }
    lat.sort_unstable();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        f64::from(lat[i.min(lat.len() - 1)]) / 1000.0
    };
    let ok = stats.ok.load(Ordering::Relaxed);
    let errors = stats.errors.load(Ordering::Relaxed);
    let first_error = stats.first_error.lock().ok().and_then(|g| g.clone());
    let out = json!({
        "label": a.label,
        "url": a.url,
        "concurrency": a.concurrency,
        "secs": secs,
        "ok": ok,
        "errors": errors,
        "rps": ok as f64 / secs,
        "p50_ms": pct(0.5),
        "p99_ms": pct(0.99),
        "first_error": first_error,
    });
    println!("{out}");
    if ok == 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
