//! The web UI's Approvals, Clients, Audit, Hostnames (minted token) and Sandbox views end to
//! end: a real agent with a real discovered stdio server whose name is markup, exposed; a
//! real OAuth client (`tests/ui/views.test.mjs`, plain `fetch`) registers under a
//! script-bearing name and opens the loopback authorize URL, and headless Chromium approves
//! and denies by clicking. The status URL must redirect with a code that becomes a working
//! token; the grant is revoked by clicking and the token stops working; minted tokens work;
//! the audit log filters; the sandbox switch is clicked and `GET /v1/sandbox` follows, and a
//! session on a real work queue (`airlock relay --api`) shows up live with its tool calls. No name
//! ever becomes markup or runs. Screenshots land in `tests/artifacts/ui-views/`.

use std::time::Duration;

use airlock_e2e::queue::{Queue, sandbox_login};
use airlock_e2e::{Agent, TestHome, browser};
use serde_json::json;

const XSS_SERVER: &str = r#"<img src=x onerror="window.__xss=1">"#;
const XSS_CLIENT: &str = r#""><script>window.__xss=2</script><b>Claude</b>"#;

fn home() -> TestHome {
    browser::time_servers_home(&[(XSS_SERVER, &["--local-timezone", "UTC"])])
}

#[test]
fn browser_approves_denies_revokes_mints_and_names_stay_inert() {
    browser::require_tools();
    let agent = Agent::start(home());
    let server = agent.wait_server(XSS_SERVER, Duration::from_secs(30));
    let id = server["id"]
        .as_str()
        .unwrap_or_else(|| panic!("server without id: {server}"))
        .to_string();
    agent.expose(&id);

    let summary = browser::run_script(
        &agent,
        "views.test.mjs",
        "ui-views",
        &["--server", XSS_SERVER, "--client-name", XSS_CLIENT],
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
    browser::assert_screenshots(&summary, 5_000);
}

#[test]
fn browser_toggles_the_sandbox_and_the_api_follows() {
    browser::require_tools();
    let home = home();
    // `airlock relay --api` on loopback: a real environments work queue for the worker to poll.
    let queue = Queue::start(&home);
    let state = queue.state.to_string_lossy().into_owned();
    let env = home.cli(&["relay", "env", "create", "--name", "ui", "--state", &state]);
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
    sandbox_login(&home, &queue.base, &env_id, &env_key);

    let agent = Agent::start(home);
    agent.wait_server(XSS_SERVER, Duration::from_secs(30));
    let summary = browser::run_script(
        &agent,
        "views.test.mjs",
        "ui-views",
        &[
            "--sandbox",
            "--queue",
            &queue.base,
            "--environment-id",
            &env_id,
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
