//! The official MCP conformance suite (npm `@modelcontextprotocol/conformance` 0.1.16 on
//! Node 22) against `server-everything` served natively over Streamable HTTP and against the
//! same server (stdio) bridged by Airlock. The bridge must pass every scenario the native
//! server passes, and `dns-rebinding-protection` completely.
//!
//! The suite sends no credentials, so it talks to a tiny proxy that adds the gateway's
//! `Authorization: Bearer` header and changes nothing else (`Host` passes through).

use std::collections::BTreeMap;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use airlock_e2e::proxy::AuthProxy;
use airlock_e2e::{Agent, NodeTools, Output, TestHome, free_port, run_with_timeout, split_url};
use serde_json::json;

const SUITE_TIMEOUT: Duration = Duration::from_secs(600);

/// scenario -> (checks passed, checks failed), from the suite's `=== SUMMARY ===` block.
type Results = BTreeMap<String, (u32, u32)>;

fn parse_summary(out: &Output) -> Results {
    let mut results = Results::new();
    let Some((_, summary)) = out.stdout.split_once("=== SUMMARY ===") else {
        return results;
    };
    for line in summary.lines() {
        let line = line.trim();
        let Some(rest) = line
            .strip_prefix('✓')
            .or_else(|| line.strip_prefix('✗'))
            .map(str::trim)
        else {
            continue;
        };
        let Some((name, counts)) = rest.rsplit_once(": ") else {
            continue;
        };
        let mut nums = counts
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse::<u32>().ok());
        if let (Some(p), Some(f)) = (nums.next(), nums.next()) {
            results.insert(name.trim().to_string(), (p, f));
        }
    }
    results
}

fn passed((p, f): (u32, u32)) -> bool {
    p > 0 && f == 0
}

fn run_suite(node: &NodeTools, url: &str, out_dir: &Path) -> (Output, Results) {
    let mut cmd = node.command(&node.conformance());
    cmd.args(["server", "--url", url, "-o"]).arg(out_dir);
    let out = run_with_timeout(cmd, SUITE_TIMEOUT);
    assert!(
        !out.timed_out,
        "conformance suite against {url} did not finish in {SUITE_TIMEOUT:?}:\n{}\n{}",
        out.stdout, out.stderr
    );
    let results = parse_summary(&out);
    assert!(
        results.len() >= 10,
        "could not read the suite's summary against {url} (exit {:?}):\n--- stdout\n{}\n--- stderr\n{}",
        out.code,
        out.stdout,
        out.stderr
    );
    (out, results)
}

fn mark(r: Option<&(u32, u32)>) -> String {
    match r {
        Some(&(p, f)) => format!(
            "{} {p} passed, {f} failed",
            if passed((p, f)) { "PASS" } else { "FAIL" }
        ),
        None => "-- not run".to_string(),
    }
}

#[test]
fn bridged_server_everything_passes_what_native_passes_and_dns_rebinding() {
    let node = NodeTools::locate();
    let home = TestHome::new();
    let scratch = home.scratch();

    // Native: server-everything over Streamable HTTP.
    let port = free_port();
    let native = node.spawn_everything_http(port, &scratch.join("native-everything.log"));
    let native_url = format!("http://127.0.0.1:{port}/mcp");
    let (_native_out, native_res) = run_suite(&node, &native_url, &scratch.join("native"));
    drop(native);

    // Bridged: the same server as a stdio child of Airlock, found in a Claude Desktop config.
    let cfg = json!({
        "mcpServers": {
            "everything": { "command": node.node, "args": [node.server_everything(), "stdio"] }
        }
    });
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&cfg).expect("serialize config"),
    );
    let agent = Agent::start(home);
    agent.wait_server("everything", Duration::from_secs(30));
    let exposed = agent.expose("everything");
    let (gateway, path) = split_url(&exposed.url);
    // The gateway accepts Host 127.0.0.1:P, localhost:P and [::1]:P for its own port P only,
    // so the proxy listens on [::1]:P (the gateway binds 127.0.0.1): the suite's Host and
    // Origin then name the gateway's port and reach it untouched.
    let proxy = match AuthProxy::start_on(
        SocketAddr::from((Ipv6Addr::LOCALHOST, gateway.port())),
        gateway,
        &exposed.token,
    ) {
        Ok(p) => p,
        Err(e) => {
            println!(
                "note: cannot listen on [::1]:{} ({e}); using 127.0.0.1:<random>",
                gateway.port()
            );
            AuthProxy::start(gateway, &exposed.token)
        }
    };
    let bridged_url = proxy.url(&path);
    println!("bridged suite URL (auth proxy -> {gateway}): {bridged_url}");
    let (bridged_out, bridged_res) = run_suite(&node, &bridged_url, &scratch.join("bridged"));

    // Both tables, side by side.
    let mut names: Vec<&String> = native_res.keys().chain(bridged_res.keys()).collect();
    names.sort();
    names.dedup();
    println!(
        "{:<34} | {:<24} | {:<24}",
        "scenario", "native (streamableHttp)", "bridged by airlock"
    );
    println!("{}", "-".repeat(88));
    for n in &names {
        println!(
            "{n:<34} | {:<24} | {:<24}",
            mark(native_res.get(*n)),
            mark(bridged_res.get(*n))
        );
    }

    let mut regressions = Vec::new();
    for (name, r) in &native_res {
        if passed(*r) && !bridged_res.get(name).copied().is_some_and(passed) {
            regressions.push(format!("{name}: bridged {}", mark(bridged_res.get(name))));
        }
    }
    let dns = bridged_res.get("dns-rebinding-protection").copied();
    if regressions.is_empty() && dns.is_some_and(passed) {
        return;
    }
    panic!(
        "bridged run regressed against native: {regressions:?}; dns-rebinding-protection bridged: {}\n\
         --- bridged suite output\n{}\n{}\n--- agent stderr (tail)\n{}",
        mark(dns.as_ref()),
        bridged_out.stdout,
        bridged_out.stderr,
        tail(&agent.stderr_log(), 80)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn summary_parser_reads_the_suite_format() {
    let out = Output {
        code: Some(1),
        stdout: "noise\n\n=== SUMMARY ===\n✓ server-initialize: 1 passed, 0 failed\n\
                 ✗ dns-rebinding-protection: 1 passed, 1 failed\n✗ tools-call-image: 0 passed, 1 failed\n\n\
                 Total: 2 passed, 2 failed\n"
            .to_string(),
        stderr: String::new(),
        timed_out: false,
    };
    let r = parse_summary(&out);
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r["server-initialize"], (1, 0));
    assert_eq!(r["dns-rebinding-protection"], (1, 1));
    assert!(passed(r["server-initialize"]));
    assert!(!passed(r["dns-rebinding-protection"]));
    assert!(!passed(r["tools-call-image"]));
}
