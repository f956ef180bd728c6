//! Control API refusals (raw HTTP against `api_url` from agent.json) and the agent's
//! lifecycle files.

use std::os::unix::fs::PermissionsExt;

use airlock_e2e::{Agent, TestHome, raw_http};
use serde_json::Value;

#[test]
fn control_api_refuses_bad_token_foreign_origin_and_foreign_host() {
    let agent = Agent::start(TestHome::new());
    let info = agent.info();
    let addr = info.api_addr();
    let host = format!("127.0.0.1:{}", addr.port());
    let bearer = format!("Bearer {}", info.token);

    // agent.json: mode 0600, pid of the agent.
    let mode = std::fs::metadata(agent.agent_json_path())
        .expect("agent.json exists while the agent runs")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "agent.json must be 0600, is {mode:o}");
    assert_eq!(info.pid, u64::from(agent.pid()), "agent.json pid");
    assert!(
        info.api_url.starts_with("http://127.0.0.1:"),
        "api_url must be loopback: {}",
        info.api_url
    );

    // Sanity: the right token, Host and no Origin work.
    let ok = raw_http(
        addr,
        "GET",
        "/v1/status",
        &[("Host", &host), ("Authorization", &bearer)],
        None,
    );
    assert_eq!(ok.status, 200, "valid request refused: {ok:?}");
    let status: Value = serde_json::from_str(&ok.body)
        .unwrap_or_else(|e| panic!("/v1/status is not JSON ({e}): {}", ok.body));
    assert_eq!(status["running"], true, "{status}");
    assert_eq!(status["ready"], true, "{status}");

    // localhost:P is an accepted Host too, and a same-origin Origin is fine.
    let lh = format!("localhost:{}", addr.port());
    let r = raw_http(
        addr,
        "GET",
        "/v1/status",
        &[("Host", &lh), ("Authorization", &bearer)],
        None,
    );
    assert_eq!(r.status, 200, "Host localhost:P refused: {r:?}");
    let same_origin = format!("http://127.0.0.1:{}", addr.port());
    let r = raw_http(
        addr,
        "GET",
        "/v1/status",
        &[
            ("Host", &host),
            ("Authorization", &bearer),
            ("Origin", &same_origin),
        ],
        None,
    );
    assert_eq!(r.status, 200, "same-origin Origin refused: {r:?}");

    // 401: missing token, wrong token, wrong scheme — on reads and on writes.
    let wrong = format!("Bearer {}", "0".repeat(info.token.len().max(8)));
    let basic = format!("Basic {}", info.token);
    for (path, method) in [
        ("/v1/status", "GET"),
        ("/v1/servers", "GET"),
        ("/v1/servers/anything/expose", "POST"),
        ("/v1/events", "GET"),
    ] {
        let body = (method == "POST").then_some("{}");
        let mut base = vec![("Host", host.as_str())];
        if body.is_some() {
            base.push(("Content-Type", "application/json"));
        }
        let r = raw_http(addr, method, path, &base, body);
        assert_eq!(r.status, 401, "{method} {path} without token: {r:?}");
        for auth in [wrong.as_str(), basic.as_str()] {
            let mut h = base.clone();
            h.push(("Authorization", auth));
            let r = raw_http(addr, method, path, &h, body);
            assert_eq!(r.status, 401, "{method} {path} with {auth:?}: {r:?}");
        }
    }

    // 403: foreign Origin (even with the right token).
    for origin in [
        "http://evil.example.com",
        "http://127.0.0.1:1",
        "https://127.0.0.1",
        "null",
    ] {
        let r = raw_http(
            addr,
            "GET",
            "/v1/status",
            &[
                ("Host", &host),
                ("Authorization", &bearer),
                ("Origin", origin),
            ],
            None,
        );
        assert_eq!(r.status, 403, "Origin {origin}: {r:?}");
    }

    // 403: Host not loopback (DNS rebinding), even with the right token.
    for bad_host in [
        format!("evil.example.com:{}", addr.port()),
        "evil.example.com".to_string(),
        format!("127.0.0.1.nip.io:{}", addr.port()),
    ] {
        let r = raw_http(
            addr,
            "GET",
            "/v1/status",
            &[("Host", &bad_host), ("Authorization", &bearer)],
            None,
        );
        assert_eq!(r.status, 403, "Host {bad_host}: {r:?}");
    }

    // The refusals did not change anything: the agent still answers normally.
    let st = agent.cli_json(&["status", "--json"]);
    assert_eq!(st["ready"], true, "{st}");
}

#[test]
fn status_reports_not_running_and_agent_json_is_removed_on_clean_exit() {
    let home = TestHome::new();
    // No agent yet: exit 1, running false.
    let out = home.cli(&["status", "--json"]);
    assert_eq!(out.code, Some(1), "status without agent: {out:?}");
    let v = out.json();
    assert_eq!(v["running"], false, "{v}");
    assert_eq!(v["ready"], false, "{v}");

    let mut agent = Agent::start(home);
    let st = &agent.ready_status;
    assert_eq!(st["pid"].as_u64(), Some(u64::from(agent.pid())), "{st}");
    let gw = st["gateway"]["url"].as_str().unwrap_or_default();
    assert_eq!(
        gw,
        format!("http://127.0.0.1:{}", agent.gateway_port),
        "status gateway.url must honour --gateway-port: {st}"
    );
    assert!(st["version"].is_string(), "{st}");
    assert!(st["servers"]["discovered"].is_u64(), "{st}");
    assert!(st["servers"]["exposed"].is_u64(), "{st}");
    assert!(agent.agent_json_path().exists());

    // An open event stream (a browser tab, the tray) must not hold the agent up: it ends on shutdown.
    let info = agent.info();
    let mut events = std::net::TcpStream::connect(info.api_addr()).unwrap();
    let request = format!(
        "GET /v1/events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        info.api_addr(),
        info.token
    );
    std::io::Write::write_all(&mut events, request.as_bytes()).unwrap();
    events
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(r#"{"type":"hello"}"#) {
        let n = std::io::Read::read(&mut events, &mut buf).unwrap();
        assert!(
            n > 0,
            "event stream closed before hello: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }

    let exit = agent.stop().expect("agent exits on SIGTERM within 20 s");
    // The stream was ended by the agent (EOF), not left hanging.
    loop {
        match std::io::Read::read(&mut events, &mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) => panic!("event stream did not end on shutdown: {e}"),
        }
    }
    assert!(exit.success(), "SIGTERM should be a clean exit, got {exit}");
    assert!(
        !agent.agent_json_path().exists(),
        "agent.json must be removed on clean exit"
    );
    let out = agent.cli(&["status", "--json"]);
    assert_eq!(out.code, Some(1), "status after stop: {out:?}");
    assert_eq!(out.json()["running"], false);
}

#[test]
fn cli_usage_and_runtime_errors_have_contract_exit_codes() {
    let agent = Agent::start(TestHome::new());
    // Unknown server: runtime error, exit 1.
    let out = agent.cli(&["url", "no-such-server-xyz", "--json"]);
    assert_eq!(out.code, Some(1), "unknown server: {out:?}");
    let out = agent.cli(&["expose", "no-such-server-xyz", "--yes"]);
    assert_eq!(out.code, Some(1), "expose unknown server: {out:?}");
    // Bad flag: usage error, exit 2.
    let out = agent.cli(&["servers", "--no-such-flag"]);
    assert_eq!(out.code, Some(2), "bad flag: {out:?}");
}
