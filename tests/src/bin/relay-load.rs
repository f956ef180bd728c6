//! `relay-load`: processes for relay tests and `bench/relay.sh` (loopback only).
//!
//! usage:
//!   relay-load agent   --tunnel ADDR --pin HEX --domain TUNNEL_DOMAIN --ca-out FILE [--connections 1]
//!       Token on stdin (first line); `--connections` to the node (streams spread over them).
//!       An echo agent (see `airlock_e2e::relay`): prints
//!       `{"direct": ADDR}` once connected to the relay, runs until stdin closes.
//!   relay-load tunnels --tunnel ADDR --pin HEX --state DIR --domain BASE --count N
//!       N idle agent connections, one new tunnel token each (signed with the operator key in
//!       DIR); prints `{"tunnels": N, "secs": S}` once all are up, holds them until stdin closes.
//!   relay-load streams --connect ADDR --host H --ca FILE --count N [--per-ip 50]
//!       N concurrent inner-TLS sessions through the relay (`WAIT`), from 127.0.0.2 and up
//!       (`--per-ip` each); prints `{"streams": N, "secs": S}`, holds them until stdin closes.
//!   relay-load bulk    --connect ADDR --host H --ca FILE --bytes N [--parallel 1] [--label L]
//!       Downloads N bytes per connection (`BULK N`); prints `{"label", "bytes", "secs", "mbit_s"}`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_e2e::relay::{
    EchoAgent, EchoAgentOptions, client_trusting, hex_decode, inner_tls, loopback_source,
    request_line,
};
use airlock_relay::{ClientOptions, Identity, RelayClient, TokenAuthority};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Flags(Vec<(String, String)>);

impl Flags {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        let mut it = args.iter();
        while let Some(f) = it.next() {
            let k = f
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {f:?}"))?;
            let v = it.next().ok_or_else(|| format!("{f} needs a value"))?;
            out.push((k.to_string(), v.clone()));
        }
        Ok(Self(out))
    }
    fn get(&self, k: &str) -> Result<String, String> {
        self.0
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .ok_or_else(|| format!("--{k} is required"))
    }
    fn num(&self, k: &str, default: u64) -> Result<u64, String> {
        match self.get(k) {
            Ok(v) => v.parse().map_err(|e| format!("--{k}: {e}")),
            Err(_) => Ok(default),
        }
    }
    fn addr(&self, k: &str) -> Result<SocketAddr, String> {
        let a: SocketAddr = self
            .get(k)?
            .parse()
            .map_err(|e| format!("--{k}: not IP:PORT: {e}"))?;
        if !a.ip().is_loopback() {
            return Err(format!("--{k} must be a loopback address"));
        }
        Ok(a)
    }
    fn pin(&self) -> Result<[u8; 32], String> {
        let p = self.get("pin")?;
        if p.len() != 64 || !p.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("--pin must be 64 hex digits".into());
        }
        hex_decode(&p)
            .try_into()
            .map_err(|_| "--pin must be 32 bytes".into())
    }
    fn tls(&self) -> Result<Arc<rustls::ClientConfig>, String> {
        let f = self.get("ca")?;
        let pem = std::fs::read_to_string(&f).map_err(|e| format!("--ca {f}: {e}"))?;
        if !pem.contains("BEGIN CERTIFICATE") {
            return Err(format!("--ca {f}: no PEM certificate"));
        }
        Ok(client_trusting(&pem))
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: relay-load agent|tunnels|streams|bulk --flag value … (see the source)");
        return ExitCode::from(2);
    };
    let flags = match Flags::parse(rest) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("relay-load: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("relay-load: cannot raise the open-file limit: {e}");
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(async {
        match cmd.as_str() {
            "agent" => agent(&flags).await,
            "tunnels" => tunnels(&flags).await,
            "streams" => streams(&flags).await,
            "bulk" => bulk(&flags).await,
            other => Err(format!("unknown command {other:?}")),
        }
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay-load {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Reads stdin until EOF (the parent closing it = stop), on a blocking thread.
async fn until_stdin_closes() {
    let _ = tokio::task::spawn_blocking(|| {
        let mut buf = [0u8; 256];
        let mut stdin = std::io::stdin().lock();
        while matches!(std::io::Read::read(&mut stdin, &mut buf), Ok(n) if n > 0) {}
    })
    .await;
}

fn say(v: serde_json::Value) {
    println!("{v}");
}

async fn agent(f: &Flags) -> Result<(), String> {
    let tunnel = f.addr("tunnel")?;
    let pin = f.pin()?;
    let domain = f.get("domain")?;
    let ca_out = f.get("ca-out")?;
    let token = tokio::task::spawn_blocking(|| {
        let mut token = String::new();
        std::io::stdin().read_line(&mut token).map(|_| token)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("reading the token from stdin: {e}"))?;
    let token = token.trim();
    if token.is_empty() {
        return Err("no token on stdin".into());
    }
    let opts = EchoAgentOptions {
        connections: f.num("connections", 1)?.clamp(1, 512) as usize,
        ..EchoAgentOptions::default()
    };
    let agent = EchoAgent::start(tunnel, pin, token, &domain, opts).await;
    std::fs::write(&ca_out, &agent.pki.ca_pem).map_err(|e| format!("--ca-out {ca_out}: {e}"))?;
    agent.connected(Duration::from_secs(60)).await;
    say(json!({"direct": agent.direct.to_string(), "host": agent.host()}));
    until_stdin_closes().await;
    agent.stop().await;
    Ok(())
}

async fn tunnels(f: &Flags) -> Result<(), String> {
    let tunnel = f.addr("tunnel")?;
    let pin = f.pin()?;
    let state = std::path::PathBuf::from(f.get("state")?);
    let base = f.get("domain")?;
    let count = f.num("count", 1000)? as usize;
    let auth =
        TokenAuthority::open(&state, &base).map_err(|e| format!("operator key in --state: {e}"))?;
    let identity = Identity::generate_self_signed(vec!["load.invalid".into()])
        .map_err(|e| format!("agent identity: {e}"))?
        .0;
    let started = Instant::now();
    let mut sessions = Vec::with_capacity(count);
    let opts = ClientOptions {
        agent_name: "relay-load".into(),
        connect_timeout: Duration::from_secs(60),
        ..ClientOptions::default()
    };
    // A few at a time: this is about the relay's memory per idle tunnel, not connect storms.
    let mut set = tokio::task::JoinSet::new();
    let addr = tunnel.to_string();
    for i in 0..count {
        let (token, _) = auth
            .create(&format!("load-{i}"), None)
            .map_err(|e| format!("token: {e}"))?;
        let (addr, identity, opts) = (addr.clone(), identity.clone(), opts.clone());
        set.spawn(
            async move { RelayClient::connect(&addr, Some(pin), &token, &identity, &opts).await },
        );
        if set.len() >= 32
            && let Some(r) = set.join_next().await
        {
            sessions.push(
                r.map_err(|e| e.to_string())?
                    .map_err(|e| format!("tunnel: {e}"))?,
            );
        }
    }
    while let Some(r) = set.join_next().await {
        sessions.push(
            r.map_err(|e| e.to_string())?
                .map_err(|e| format!("tunnel: {e}"))?,
        );
    }
    say(json!({"tunnels": sessions.len(), "secs": started.elapsed().as_secs_f64()}));
    until_stdin_closes().await;
    drop(sessions);
    Ok(())
}

async fn streams(f: &Flags) -> Result<(), String> {
    let public = f.addr("connect")?;
    let host = f.get("host")?;
    let tls = f.tls()?;
    let count = f.num("count", 10_000)? as usize;
    let per_ip = f.num("per-ip", 50)?.max(1) as usize;
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let mut open = Vec::with_capacity(count);
    for i in 0..count {
        let src = loopback_source((i / per_ip) as u32);
        let (host, tls) = (host.clone(), tls.clone());
        set.spawn(async move {
            let mut s = inner_tls(public, &host, tls, Some(src))
                .await
                .map_err(|e| format!("stream {i} from {src}: {e}"))?;
            s.write_all(b"WAIT\n")
                .await
                .map_err(|e| format!("stream {i}: {e}"))?;
            s.flush().await.map_err(|e| format!("stream {i}: {e}"))?;
            Ok::<_, String>(s)
        });
        if set.len() >= 64
            && let Some(r) = set.join_next().await
        {
            open.push(r.map_err(|e| e.to_string())??);
        }
    }
    while let Some(r) = set.join_next().await {
        open.push(r.map_err(|e| e.to_string())??);
    }
    say(json!({"streams": open.len(), "secs": started.elapsed().as_secs_f64()}));
    until_stdin_closes().await;
    drop(open);
    Ok(())
}

async fn bulk(f: &Flags) -> Result<(), String> {
    let addr = f.addr("connect")?;
    let host = f.get("host")?;
    let tls = f.tls()?;
    let bytes = f.num("bytes", 256 << 20)?;
    let parallel = f.num("parallel", 1)?.max(1);
    let label = f.get("label").unwrap_or_else(|_| "bulk".into());
    // Connect (and finish the handshakes) first; time only the transfer.
    let mut conns = Vec::new();
    for _ in 0..parallel {
        let mut s = inner_tls(addr, &host, tls.clone(), None)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let pong = request_line(&mut s, "ECHO ready", Duration::from_secs(30))
            .await
            .map_err(|e| format!("first round trip: {e}"))?;
        if pong != "ready" {
            return Err(format!("unexpected reply {pong:?}"));
        }
        conns.push(s);
    }
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for mut s in conns {
        set.spawn(async move {
            s.write_all(format!("BULK {bytes}\n").as_bytes()).await?;
            s.flush().await?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            while got < bytes {
                let n = s.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            // Hang up first (the server closes after us).
            let _ = s.shutdown().await;
            Ok::<u64, std::io::Error>(got)
        });
    }
    let mut total = 0;
    while let Some(r) = set.join_next().await {
        let got = r
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("transfer: {e}"))?;
        if got != bytes {
            return Err(format!("received {got} of {bytes} bytes"));
        }
        total += got;
    }
    let secs = started.elapsed().as_secs_f64();
    say(json!({
        "label": label,
        "bytes": total,
        "parallel": parallel,
        "secs": secs,
        "mbit_s": (total as f64 * 8.0 / 1e6) / secs,
    }));
    Ok(())
}
