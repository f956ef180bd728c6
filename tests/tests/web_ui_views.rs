//! The web UI's Approvals, Clients, Audit, Hostnames (minted token) and Sandbox views end to
//! end: a real agent with a real discovered stdio server whose name is markup, exposed; a
//! real OAuth client (`tests/ui/views.test.mjs`, plain `fetch`) registers under a
//! script-bearing name and opens the loopback authorize URL, and headless Chromium approves
//! and denies by clicking. The status URL must redirect with a code that becomes a working
//! token; the grant is revoked by clicking and the token stops working; minted tokens work;
//! the audit log filters; the sandbox switch is clicked and `GET /v1/sandbox` follows, and a
//! session on a real work queue (`airlock relay --api`) shows up live with its tool calls. No name
//! ever becomes markup or runs. Screenshots land in `tests/artifacts/ui-views/`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_e2e::{
    Agent, KillOnDrop, NodeTools, TestHome, free_port, repo_root, run_with_timeout, venv_bin,
};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(300);
const XSS_SERVER: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_CLIENT: &str = r#""><script>window.__xss=2</script><b>Claude</b>"#;

fn ui_test_dir() -> PathBuf {
    repo_root().join("tests/ui")
}

fn require_browser_tools() {
    assert!(
        std::path::Path::new(CHROMIUM).is_file(),
        "{CHROMIUM} is missing: run `scripts/test` once (it runs `apt-get install chromium`)"
    );
    let pw = ui_test_dir().join("node_modules/playwright-core/package.json");
    assert!(
        pw.is_file(),
        "{} is missing: run `scripts/test` once (it runs `npm ci` in tests/ui)",
        pw.display()
    );
}

fn home() -> TestHome {
    let home = TestHome::new();
    let time = venv_bin("mcp-server-time");
    let cfg = json!({
        "mcpServers": {
            XSS_SERVER: { "command": time, "args": ["--local-timezone", "UTC"] }
        }
    });
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &serde_json::to_string_pretty(&cfg).expect("serialize config"),
    );
    home
}

fn login_url(agent: &Agent) -> String {
    let out = agent.cli(&["ui", "--print"]);
    out.assert_success("airlock ui --print");
    out.stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn run_ui_script(agent: &Agent, args: &[&str], envs: &[(&str, &str)]) -> Value {
    let node = NodeTools::locate();
    let mut cmd = node.command(&ui_test_dir().join("views.test.mjs"));
    cmd.current_dir(repo_root()).args(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let run = run_with_timeout(cmd, BROWSER_TIMEOUT);
    eprintln!("--- views.test.mjs stderr\n{}", run.stderr);
    let summary: Value = serde_json::from_str(
        run.stdout
            .lines()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .unwrap_or_default(),
    )
    .unwrap_or_else(|e| {
        panic!(
            "views.test.mjs printed no JSON summary ({e}; code {:?}, timed out {}):\n--- stdout\n{}\n--- agent stderr\n{}",
            run.code,
            run.timed_out,
            run.stdout,
            agent.stderr_log()
        )
    });
    println!("views.test.mjs summary: {summary}");
    assert!(
        run.code == Some(0) && summary["ok"] == true,
        "views.test.mjs failed (code {:?}): {}\n--- agent stderr\n{}",
        run.code,
        summary["failures"],
        agent.stderr_log()
    );
    summary
}

#[test]
fn browser_approves_denies_revokes_mints_and_names_stay_inert() {
    require_browser_tools();
    let agent = Agent::start(home());
    let server = agent.wait_server(XSS_SERVER, Duration::from_secs(30));
    let id = server["id"]
        .as_str()
        .unwrap_or_else(|| panic!("server without id: {server}"))
        .to_string();
    agent.expose(&id);

    let url = login_url(&agent);
    let artifacts = repo_root().join("tests/artifacts/ui-views");
    let summary = run_ui_script(
        &agent,
        &[
            url.as_str(),
            "--server",
            XSS_SERVER,
            "--client-name",
            XSS_CLIENT,
            "--out",
            artifacts.to_string_lossy().as_ref(),
        ],
        &[],
    );

    assert_eq!(summary["approval_seen"], 1, "{summary}");
    assert_eq!(summary["token_works"], true, "{summary}");
    assert_eq!(summary["denied_redirect"], "access_denied", "{summary}");
    assert_eq!(summary["minted_token_works"], true, "{summary}");
    assert_eq!(summary["revoked_token_refused"], true, "{summary}");
    assert_eq!(summary["snippet_token_works"], true, "{summary}");
    assert_eq!(
        summary["audit_filtered_kinds"],
        json!(["grant_approved"]),
        "{summary}"
    );
    for label in [
        "approval client name",
        "approval server name",
        "clients client name",
        "clients server name",
        "audit client name",
        "audit server name",
    ] {
        assert_eq!(summary["names_inert"][label], true, "{label}: {summary}");
    }
    assert_eq!(summary["window_xss"], "undefined", "{summary}");

    // The agent agrees with what the browser did: the approved grant is revoked, the denied
    // request left no grant, and the audit log holds both decisions.
    let clients = agent.cli_json(&["clients", "--json"]);
    let text = clients.to_string();
    assert!(
        text.contains("revoked_ms"),
        "`airlock clients --json` should list the revoked grant: {clients}"
    );
    for shot in summary["screenshots"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let p = PathBuf::from(shot.as_str().unwrap_or_default());
        let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        assert!(
            len > 5_000,
            "screenshot {} is missing or empty",
            p.display()
        );
    }
}

/// `airlock relay --api` on loopback: a real environments work queue for the worker to poll.
fn start_queue(home: &TestHome, state: &str, port: u16) -> KillOnDrop {
    let mut cmd = home.airlock();
    cmd.args([
        "--log-format",
        "json",
        "relay",
        "--api",
        &format!("127.0.0.1:{port}"),
        "--state",
        state,
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = KillOnDrop(cmd.spawn().expect("spawn airlock relay --api"));
    let stderr = child.0.stderr.take().expect("relay stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut log = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) if l.contains("work queue API ready") => break,
            Ok(l) => log.push(l),
            Err(_) => {}
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "relay --api did not start: {log:?}"
        );
    }
    // Keep draining so the queue never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    child
}

#[test]
fn browser_toggles_the_sandbox_and_the_api_follows() {
    require_browser_tools();
    let home = home();
    let state = home.scratch().join("queue-state");
    let state_s = state.to_string_lossy().to_string();
    let port = free_port();
    let _queue = start_queue(&home, &state_s, port);
    let env = home.cli(&[
        "relay", "env", "create", "--name", "ui", "--state", &state_s,
    ]);
    env.assert_success("airlock relay env create");
    let env = env.json();
    let env_id = env["environment_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let env_key = env["environment_key"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let api_key = env["api_key"].as_str().unwrap_or_default().to_string();
    assert!(!env_id.is_empty() && !env_key.is_empty(), "{env}");

    // The key goes in on stdin, as a person would pipe it.
    let mut login = home.airlock();
    login
        .args([
            "sandbox",
            "login",
            "--base-url",
            &format!("http://127.0.0.1:{port}"),
            "--environment-id",
            &env_id,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = login.spawn().expect("spawn airlock sandbox login");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{env_key}\n").as_bytes())
        .expect("write the key");
    let out = child.wait_with_output().expect("airlock sandbox login");
    assert!(
        out.status.success(),
        "airlock sandbox login: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let agent = Agent::start(home);
    agent.wait_server(XSS_SERVER, Duration::from_secs(30));
    let url = login_url(&agent);
    let artifacts = repo_root().join("tests/artifacts/ui-views");
    let summary = run_ui_script(
        &agent,
        &[
            url.as_str(),
            "--sandbox",
            "--queue",
            &format!("http://127.0.0.1:{port}"),
            "--environment-id",
            &env_id,
            "--out",
            artifacts.to_string_lossy().as_ref(),
        ],
        // The queue's API key goes in the environment, never argv.
        &[("AIRLOCK_TEST_QUEUE_API_KEY", api_key.as_str())],
    );
    let sb = &summary["sandbox"];
    assert_eq!(sb["initial"], false, "{summary}");
    assert_eq!(sb["after"], true, "{summary}");
    assert_eq!(sb["back"], false, "{summary}");
    assert_eq!(sb["confined"], true, "bubblewrap works here: {summary}");
    // A real session through the queue showed up live: current session, a call in flight,
    // both calls finished.
    let run = &summary["sandbox_session"];
    assert_eq!(run["current_shown"], true, "{summary}");
    assert_eq!(run["in_flight_shown"], true, "{summary}");
    assert!(
        run["recent_rows"].as_u64().is_some_and(|n| n >= 2),
        "{summary}"
    );
    assert!(
        run["sandbox_events"].as_u64().is_some_and(|n| n >= 2),
        "the view must have been driven by sandbox events: {summary}"
    );
    assert_eq!(summary["window_xss"], "undefined", "{summary}");
}
