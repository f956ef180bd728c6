//! The web UI's admin actions end to end (`tests/ui/admin.test.mjs` in headless Chromium) against
//! a real agent running the embedded relay, with a real discovered stdio server exposed: the CA is
//! rotated and activated from the Tunnel view (`airlock ca list` agrees), a cloudflared token and
//! an environment key typed into password fields are stored (the agent says so; neither is ever
//! echoed by the API, the page or the agent's log), and an MCP call shows up in the open Audit
//! view without a reload. Screenshots land in `tests/artifacts/ui-admin/`.

use std::time::Duration;

use airlock_e2e::{Agent, TestHome, browser, wait_for};
use serde_json::{Value, json};

const CF_TOKEN: &str = "eyJhIjoiY2YtdGVzdC10b2tlbi1mb3ItdGhlLXVpIn0";
const ENV_KEY: &str = "envkey_ui_admin_8c1f0e5a2b7d4c39";

fn home() -> TestHome {
    browser::time_servers_home(&[("time", &["--local-timezone", "UTC"])])
}

fn active_fingerprint(list: &Value) -> String {
    list["cas"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["role"] == "active")
        .and_then(|c| c["fingerprint"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[test]
fn browser_rotates_the_ca_stores_secrets_and_sees_audit_live() {
    browser::require_tools();
    let agent = Agent::start(home());
    agent.wait_server("time", Duration::from_secs(30));
    let exposed = agent.expose("time");
    // The embedded relay assigns its tunnel domain on its first connection.
    wait_for(Duration::from_secs(30), "the relay's tunnel domain", || {
        let st = agent.cli_json(&["status", "--json"]);
        st["relay"]["tunnel_domain"].as_str().map(str::to_string)
    });
    let before = agent.cli_json(&["ca", "list", "--json"]);
    let status = agent.cli_json(&["status", "--json"]);
    assert_eq!(status["cloudflared_token_stored"], false, "{status}");

    let summary = browser::run_script(
        &agent,
        "admin.test.mjs",
        "ui-admin",
        &[
            "--mcp-url",
            exposed.url.as_str(),
            "--base-url",
            "http://127.0.0.1:9",
            "--environment-id",
            "env_ui_admin",
        ],
        // Secrets in the environment, never argv.
        &[
            ("AIRLOCK_TEST_CF_TOKEN", CF_TOKEN),
            ("AIRLOCK_TEST_ENV_KEY", ENV_KEY),
            ("AIRLOCK_TEST_MCP_TOKEN", exposed.token.as_str()),
        ],
    );

    // CA: the page's before/after agree with `airlock ca list`; the old CA stays listed as previous.
    let ca = &summary["ca"];
    assert_eq!(
        ca["before"],
        active_fingerprint(&before).as_str(),
        "{summary}"
    );
    let after = agent.cli_json(&["ca", "list", "--json"]);
    let active = active_fingerprint(&after);
    assert_ne!(active, active_fingerprint(&before), "{after}");
    assert_eq!(ca["after"], active.as_str(), "{summary}\n{after}");
    assert_eq!(ca["pending"], active.as_str(), "{summary}");
    assert_eq!(ca["relay_after"], active.as_str(), "{summary}");
    assert!(
        after["cas"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["role"] == "previous" && c["fingerprint"] == ca["before"]),
        "{after}"
    );
    let fp = agent.cli(&["ca", "fingerprint"]);
    fp.assert_success("airlock ca fingerprint");
    assert_eq!(fp.stdout.trim(), active, "airlock ca fingerprint");

    // The cloudflared token: stored, reported, never echoed.
    assert_eq!(summary["token"]["field_type"], "password", "{summary}");
    assert_eq!(summary["token"]["before"], "none", "{summary}");
    assert_eq!(summary["token"]["after"], "stored", "{summary}");
    let status = agent.cli(&["status", "--json"]);
    status.assert_success("airlock status --json");
    assert_eq!(
        status.json()["cloudflared_token_stored"],
        true,
        "{}",
        status.stdout
    );
    assert!(!status.stdout.contains(CF_TOKEN), "status echoes the token");

    // The environment key: stored, reported, never echoed.
    assert_eq!(
        summary["sandbox"]["key_field_type"], "password",
        "{summary}"
    );
    assert_eq!(summary["sandbox"]["before"], "missing", "{summary}");
    assert_eq!(summary["sandbox"]["after"], "stored", "{summary}");
    let sandbox = agent.cli(&["sandbox", "status", "--json"]);
    sandbox.assert_success("airlock sandbox status --json");
    let sb = sandbox.json();
    assert_eq!(sb["environment_key_stored"], true, "{sb}");
    assert_eq!(sb["environment_id"], "env_ui_admin", "{sb}");
    assert_eq!(sb["base_url"], "http://127.0.0.1:9", "{sb}");
    assert!(
        !sandbox.stdout.contains(ENV_KEY),
        "sandbox status echoes the key"
    );

    // Neither secret reached the agent's log or a plain config file.
    let log = agent.stderr_log();
    assert!(
        !log.contains(CF_TOKEN) && !log.contains(ENV_KEY),
        "a secret was logged"
    );
    let config =
        std::fs::read_to_string(agent.home.airlock_home().join("config.toml")).unwrap_or_default();
    assert!(
        !config.contains(ENV_KEY) && !config.contains(CF_TOKEN),
        "{config}"
    );

    // Audit: the call appeared without a reload, driven by audit events.
    let audit = &summary["audit"];
    assert!(
        audit["rows_after"].as_u64() > audit["rows_before"].as_u64(),
        "{summary}"
    );
    assert_eq!(audit["reloads"], 0, "{summary}");
    assert!(
        audit["events_after"].as_u64() > audit["events_before"].as_u64(),
        "the Audit view must be driven by audit events: {summary}"
    );
    assert_eq!(summary["window_xss"], "undefined", "{summary}");
}

/// The control API validates what the UI sends and never echoes a secret.
#[test]
fn admin_endpoints_validate_and_do_not_echo() {
    let agent = Agent::start(home());
    agent.wait_server("time", Duration::from_secs(30));
    let post = |path: &str, body: &str| airlock_e2e::oauth::api(&agent, "POST", path, Some(body));

    let r = post("/v1/tunnel/token", r#"{"token":"  "}"#);
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post("/v1/tunnel/token", r#"{"token":"has space"}"#);
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post("/v1/tunnel/token", r#"{"tokn":"x"}"#);
    assert!(
        r.status == 400 || r.status == 422,
        "{} {}",
        r.status,
        r.body
    );
    let r = post("/v1/tunnel/token", &format!(r#"{{"token":"{CF_TOKEN}"}}"#));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(CF_TOKEN), "{}", r.body);

    let r = post(
        "/v1/sandbox/login",
        r#"{"base_url":"ftp://x","environment_id":"env_1","environment_key":"k"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(
        "/v1/sandbox/login",
        r#"{"base_url":"https://api.anthropic.com","environment_id":"env 1","environment_key":"k"}"#,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(
        "/v1/sandbox/login",
        r#"{"environment_id":"env_1","environment_key":""}"#,
    );
    assert_eq!(r.status, 422, "{}", r.body);
    let r = post(
        "/v1/sandbox/login",
        &format!(r#"{{"environment_id":"env_1","environment_key":"{ENV_KEY}"}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(!r.body.contains(ENV_KEY), "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
    assert_eq!(v["environment_key_stored"], true, "{v}");
    assert_eq!(v["base_url"], "https://api.anthropic.com", "{v}");

    // Activation without a pending rotation is a conflict, not a change.
    wait_for(Duration::from_secs(30), "the relay's tunnel domain", || {
        let st = agent.cli_json(&["status", "--json"]);
        st["relay"]["tunnel_domain"].as_str().map(str::to_string)
    });
    let before = agent.cli_json(&["ca", "list", "--json"]);
    let r = post("/v1/pki/activate", "{}");
    assert_eq!(r.status, 409, "{}", r.body);
    let r = post("/v1/pki/rotate", "{}");
    assert_eq!(r.status, 200, "{}", r.body);
    let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
    // Rotating twice returns the same pending CA.
    let again = post("/v1/pki/rotate", "{}");
    let w: Value = serde_json::from_str(&again.body).unwrap_or_default();
    assert_eq!(
        v["pending"]["fingerprint"], w["pending"]["fingerprint"],
        "{v}\n{w}"
    );
    assert_eq!(
        active_fingerprint(&agent.cli_json(&["ca", "list", "--json"])),
        active_fingerprint(&before),
        "rotate alone changes nothing that signs"
    );
}

/// With the Anthropic tunnel configured, a token posted to the control API (as the Tunnel view
/// does) starts cloudflared right away with that token in its environment, and a second token
/// restarts it. The `cloudflared` here is a stand-in on `PATH` that records the token it got
/// (the real connector needs Cloudflare's network).
#[test]
fn a_new_cloudflared_token_restarts_the_connector() {
    use std::os::unix::fs::PermissionsExt;
    let mut home = TestHome::new();
    let bin = home.scratch().join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let seen = home.scratch().join("tokens-seen");
    let fake = bin.join("cloudflared");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$TUNNEL_TOKEN\" >> '{}'\nexec sleep 600\n",
            seen.display()
        ),
    )
    .expect("write the stand-in");
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    home.set_env("PATH", &path);
    home.write_airlock_config(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n\n\
         [anthropic]\ntunnel_domain = \"abcd1234.tunnel.example\"\nlisten_addr = \"127.0.0.1:0\"\n",
    );
    let agent = Agent::start(home);
    let status = agent.cli_json(&["status", "--json"]);
    assert!(status["anthropic"]["cloudflared"].is_null(), "{status}");
    assert_eq!(status["cloudflared_token_stored"], false, "{status}");

    let post = |token: &str| {
        let r = airlock_e2e::oauth::api(
            &agent,
            "POST",
            "/v1/tunnel/token",
            Some(&json!({ "token": token }).to_string()),
        );
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains(token), "the token was echoed: {}", r.body);
        let v: Value = serde_json::from_str(&r.body).unwrap_or_default();
        assert_eq!(v["cloudflared_restarted"], true, "{v}");
    };
    let seen_lines = || -> Vec<String> {
        std::fs::read_to_string(&seen)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    post(CF_TOKEN);
    wait_for(
        Duration::from_secs(30),
        "cloudflared started with the token",
        || (seen_lines() == [CF_TOKEN]).then_some(()),
    );
    let status = agent.cli(&["status", "--json"]);
    let v = status.json();
    assert_eq!(v["cloudflared_token_stored"], true, "{v}");
    assert!(!v["anthropic"]["cloudflared"].is_null(), "{v}");
    assert!(!status.stdout.contains(CF_TOKEN), "status echoes the token");

    let second = "eyJhIjoic2Vjb25kLXRva2VuIn0";
    post(second);
    wait_for(
        Duration::from_secs(30),
        "cloudflared restarted with the new token",
        || (seen_lines() == [CF_TOKEN, second]).then_some(()),
    );
    // One connector at a time: the first stand-in is gone.
    let running: Vec<_> = airlock_e2e::descendants_matching(agent.pid(), "sleep 600");
    assert_eq!(running.len(), 1, "{running:?}");

    // The CLI hands a token to the running agent, which restarts cloudflared with it too.
    let third = "eyJhIjoidGhpcmQtdG9rZW4ifQ";
    let mut cmd = agent.home.airlock();
    cmd.args(["tunnel", "set-token"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().expect("airlock tunnel set-token");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("stdin");
        writeln!(stdin, "{third}").expect("write the token");
    }
    let out = child.wait_with_output().expect("set-token output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("restarted cloudflared"), "{stdout}");
    assert!(!stdout.contains(third), "the CLI echoed the token");
    wait_for(
        Duration::from_secs(30),
        "cloudflared restarted with the token from the CLI",
        || (seen_lines() == [CF_TOKEN, second, third]).then_some(()),
    );
    let log = agent.stderr_log();
    assert!(
        !log.contains(CF_TOKEN) && !log.contains(second) && !log.contains(third),
        "a token was logged"
    );
}
