//! The web UI's Approvals, Clients, Audit, Hostnames (minted token) and Sandbox views end to
//! end: a real agent with a real discovered stdio server whose name is markup, exposed; a
//! real OAuth client (`tests/ui/views.test.mjs`, plain `fetch`) registers under a
//! script-bearing name and opens the loopback authorize URL, and headless Chromium approves
//! and denies by clicking. The status URL must redirect with a code that becomes a working
//! token; the grant is revoked by clicking and the token stops working; minted tokens work;
//! the audit log filters; the sandbox switch is clicked and `GET /v1/sandbox` follows. No name
//! ever becomes markup or runs. Screenshots land in `tests/artifacts/ui-views/`.

use std::path::PathBuf;
use std::time::Duration;

use airlock_e2e::{Agent, NodeTools, TestHome, repo_root, run_with_timeout, venv_bin};
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

fn run_ui_script(agent: &Agent, args: &[&str]) -> Value {
    let node = NodeTools::locate();
    let mut cmd = node.command(&ui_test_dir().join("views.test.mjs"));
    cmd.current_dir(repo_root()).args(args);
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
