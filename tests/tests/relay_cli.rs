//! `airlock relay`: a relay node started from the CLI serves the pin that `airlock relay fingerprint` prints, and
//! tokens come out with the tunnel domain they are bound to.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_e2e::{TestHome, send_signal};

#[test]
fn relay_node_runs_and_tokens_name_their_tunnel_domain() {
    let home = TestHome::new();
    let created = home.cli(&[
        "relay",
        "token",
        "create",
        "--domain",
        "relay.test",
        "--name",
        "laptop",
    ]);
    assert_eq!(created.code, Some(0), "{created:?}");
    let token = created.json();
    let id = token["tunnel_id"].as_str().expect("tunnel_id");
    assert_eq!(
        token["tunnel_domain"],
        format!("{id}.relay.test").as_str(),
        "{token}"
    );
    assert!(
        token["token"].as_str().is_some_and(|t| t.contains('.')),
        "{token}"
    );
    assert!(
        !created
            .stderr
            .contains(token["token"].as_str().unwrap_or("-")),
        "the token is printed once, on stdout"
    );

    let pin = home.cli(&["relay", "fingerprint"]);
    assert_eq!(pin.code, Some(0), "{pin:?}");
    let pin = pin.stdout.trim().to_string();
    assert_eq!(pin.len(), 64, "a hex SHA-256: {pin}");
    assert_eq!(
        home.cli(&["relay", "fingerprint"]).stdout.trim(),
        pin,
        "the pinned key is stable"
    );

    let usage = home.cli(&["relay"]);
    assert_eq!(
        usage.code,
        Some(2),
        "running a node needs --domain: {usage:?}"
    );

    // The node itself logs the same pin when it is ready, and stops on SIGTERM.
    let mut cmd = home.airlock();
    cmd.args([
        "relay",
        "--domain",
        "relay.test",
        "--public",
        "127.0.0.1:0",
        "--tunnel",
        "127.0.0.1:0",
    ])
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn airlock relay");
    let stderr = child.stderr.take().expect("stderr");
    // Drain stderr for the whole run (a closed pipe must not be what the node trips over).
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let drain = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut ready = None;
    while ready.is_none() && Instant::now() < deadline {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200))
            && line.contains("relay node ready")
        {
            ready = Some(line);
        }
    }
    let ready = ready.expect("the relay logs when it is ready");
    assert!(
        ready.contains(&pin),
        "ready line names the pin {pin}: {ready}"
    );
    assert!(send_signal(child.id(), "TERM"));
    let status = child.wait().expect("wait");
    let _ = drain.join();
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        status.success(),
        "graceful exit on SIGTERM: {status:?}\n{}",
        rest.join("\n")
    );
}
