//! bash tool round trip (`true`) inside the bubblewrap sandbox vs unconfined, in one run.
//! `cargo bench -p airlock-sandbox --bench roundtrip` (bench/sandbox.sh wraps it).
//!
//! Prints one JSON line per measurement:
//! * `warm_*`: a `true` through the persistent shell (what every tool call after the first pays);
//! * `cold_*`: opening the sandbox plus the first call (shell start inside bwrap, cgroup);
//! * `spawn_unconfined`: a plain `bash -c true` spawn, the baseline of a fresh process per call.

use std::time::{Duration, Instant};

use airlock_sandbox::{Mechanism, Sandbox, SandboxConfig};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn stats(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(v[v.len() / 2]);
    let p95 = ms(v[(v.len() * 95 / 100).min(v.len() - 1)]);
    let mean = v.iter().map(|d| ms(*d)).sum::<f64>() / v.len() as f64;
    (median, p95, mean)
}

fn config(dir: &std::path::Path, mechanism: Mechanism) -> SandboxConfig {
    let mut cfg = SandboxConfig::new(dir.join(format!("wd-{}", mechanism.as_str())));
    cfg.helper = Some(env!("CARGO_BIN_EXE_airlock-sandbox-exec").into());
    cfg.mechanism = mechanism;
    cfg.unconfined = mechanism == Mechanism::Unconfined;
    cfg
}

async fn call(sb: &Sandbox) -> Duration {
    let t = Instant::now();
    let out = sb
        .run_tool("bash", json!({"command": "true"}), CancellationToken::new())
        .await;
    let d = t.elapsed();
    assert!(!out.is_error, "{out:?}");
    d
}

fn report(name: &str, v: Vec<Duration>) -> f64 {
    let n = v.len();
    let (median, p95, mean) = stats(v);
    println!(
        "{}",
        json!({"measure": name, "n": n, "median_ms": (median * 1000.0).round() / 1000.0,
               "p95_ms": (p95 * 1000.0).round() / 1000.0, "mean_ms": (mean * 1000.0).round() / 1000.0})
    );
    median
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let cold_n: usize = std::env::var("COLD_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut warm = Vec::new();
    for mechanism in [Mechanism::Bubblewrap, Mechanism::Unconfined] {
        let sb = Sandbox::open(config(dir.path(), mechanism))
            .await
            .expect("open");
        for _ in 0..20 {
            call(&sb).await;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(call(&sb).await);
        }
        warm.push(report(&format!("warm_{}", mechanism.as_str()), v));
        sb.close().await;
    }
    let mut cold = Vec::new();
    for mechanism in [Mechanism::Bubblewrap, Mechanism::Unconfined] {
        let mut v = Vec::with_capacity(cold_n);
        for _ in 0..cold_n {
            let t = Instant::now();
            let sb = Sandbox::open(config(dir.path(), mechanism))
                .await
                .expect("open");
            call(&sb).await;
            v.push(t.elapsed());
            sb.close().await;
        }
        cold.push(report(&format!("cold_{}", mechanism.as_str()), v));
    }
    let mut v = Vec::with_capacity(n);
    for _ in 0..n.min(200) {
        let t = Instant::now();
        let s = tokio::process::Command::new("/bin/bash")
            .args(["--noprofile", "--norc", "-c", "true"])
            .env_clear()
            .status()
            .await
            .expect("spawn");
        assert!(s.success());
        v.push(t.elapsed());
    }
    let spawn = report("spawn_unconfined", v);
    println!(
        "{}",
        json!({"summary": "bash `true` round trip",
               "warm_added_ms": ((warm[0] - warm[1]) * 1000.0).round() / 1000.0,
               "sandboxed_warm_vs_unconfined_spawn_ms": ((warm[0] - spawn) * 1000.0).round() / 1000.0,
               "cold_added_ms": ((cold[0] - cold[1]) * 1000.0).round() / 1000.0,
               "goal_ms": 15})
    );
}
