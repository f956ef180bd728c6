//! The browser tests' common ground: the web UI is driven by Node scripts in `tests/ui`
//! (`playwright-core` on Debian's headless Chromium, both provisioned by `scripts/test`)
//! against a real agent, and each script prints a JSON summary as its last stdout line.
//!
//! Every script takes the one-time login link as its first argument and `--out DIR` for its
//! screenshots. A browser test typically reads:
//!
//! ```no_run
//! use airlock_e2e::{Agent, browser};
//!
//! browser::require_tools();
//! let agent = Agent::start(browser::time_servers_home(&[("time", &["--local-timezone", "UTC"])]));
//! // tests/ui/web-ui.test.mjs <login link> --expose time --out tests/artifacts/ui
//! let summary = browser::run_script(&agent, "web-ui.test.mjs", "ui", &["--expose", "time"], &[]);
//! assert_eq!(summary["code_removed_from_url"], true, "{summary}");
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::{Agent, NodeTools, TestHome, repo_root, run_with_timeout, venv_bin};

/// The browser the scripts drive (Debian's `chromium` package).
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// How long one script may run (it starts a browser and walks several views on a loaded
/// 2-core machine).
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);

/// `tests/ui`: the scripts and their `node_modules`.
pub fn ui_dir() -> PathBuf {
    repo_root().join("tests/ui")
}

/// Fails (never skips) when the browser or the npm driver is missing.
pub fn require_tools() {
    assert!(
        Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run `scripts/test` once (it runs `apt-get install chromium`)"
    );
    let pw = ui_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "{} is missing: run `scripts/test` once (it runs `npm ci` in tests/ui)",
        pw.display()
    );
}

/// A home whose Claude Desktop config lists the real `mcp-server-time` once per entry, under
/// the entry's name (which may be markup) with the entry's arguments.
pub fn time_servers_home(servers: &[(&str, &[&str])]) -> TestHome {
    let home = TestHome::new();
    let time = venv_bin("mcp-server-time");
    let servers: serde_json::Map<String, Value> = servers
        .iter()
        .map(|(name, args)| {
            (
                (*name).to_string(),
                json!({ "command": time, "args": args }),
            )
        })
        .collect();
    let cfg = json!({ "mcpServers": servers });
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&cfg).expect("serialize config"),
    );
    home
}

/// `airlock ui --print`: the one-time login link, checked to be `<api url>/#code=…` on the
/// agent's API origin.
pub fn login_url(agent: &Agent) -> String {
    let info = agent.info();
    let out = agent.cli(&["ui", "--print"]);
    out.assert_success("airlock ui --print");
    let url = out
        .stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string();
    assert!(
        url.starts_with(&format!("{}/#code=", info.api_url.trim_end_matches('/'))),
        "`airlock ui --print` must print {}/#code=…, printed {:?}",
        info.api_url,
        out.stdout
    );
    url
}

/// Logs in for the script and runs `tests/ui/<script> <login link> <args> --out
/// tests/artifacts/<out>` on the pinned Node 22 (working directory: the repository root; `envs`
/// added to its environment: secrets go there, never in `args`), returning its JSON summary.
/// Panics, with the script's output and the agent's log, unless the script exited 0 within
/// [`SCRIPT_TIMEOUT`] and its summary says `"ok": true`.
pub fn run_script(
    agent: &Agent,
    script: &str,
    out: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Value {
    let url = login_url(agent);
    let node = NodeTools::locate();
    let mut cmd = node.command(&ui_dir().join(script));
    cmd.current_dir(repo_root())
        .arg(url)
        .args(args)
        .arg("--out")
        .arg(repo_root().join("tests/artifacts").join(out));
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let run = run_with_timeout(cmd, SCRIPT_TIMEOUT);
    eprintln!("--- {script} stderr\n{}", run.stderr);
    let summary: Value = serde_json::from_str(
        run.stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "{script} printed no JSON summary ({e}; code {:?}, timed out {}):\n--- stdout\n{}\n--- agent stderr\n{}",
            run.code,
            run.timed_out,
            run.stdout,
            agent.stderr_log()
        )
    });
    println!("{script} summary: {summary}");
    assert!(
        run.code == Some(0) && summary["ok"] == true,
        "{script} failed (code {:?}, timed out {}): {}\n--- agent stderr\n{}",
        run.code,
        run.timed_out,
        summary["failures"],
        agent.stderr_log()
    );
    summary
}

/// Asserts every file in the summary's `screenshots` list exists and holds more than
/// `min_bytes` bytes (a blank or failed capture is smaller).
pub fn assert_screenshots(summary: &Value, min_bytes: u64) {
    for shot in summary["screenshots"].as_array().into_iter().flatten() {
        let p = PathBuf::from(shot.as_str().unwrap_or_default());
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > min_bytes,
            "screenshot {} is missing or empty ({len} bytes, want more than {min_bytes})",
            p.display()
        );
    }
}
