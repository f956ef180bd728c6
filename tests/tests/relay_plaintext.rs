//! The relay never sees plaintext. A unique marker travels in a request and in its response
//! through a real `airlock relay` process to an agent process (`relay-load agent`: a
//! RelayLink with an inner-TLS echo server behind it). While the request carrying the marker is
//! in flight (the agent holds it), `gcore` dumps both processes: the relay's core and its log do
//! not contain the marker, the agent's core does (so the scan can fail). The relay's core does
//! contain the SNI it routed (so the scan of the relay's memory works).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_e2e::relay::{
    RelayProcess, client_trusting, file_contains, gcore, inner_tls, request_line,
};
use airlock_e2e::{KillOnDrop, TestHome};
use tokio::io::AsyncWriteExt;

const DOMAIN: &str = "relay.test";
const STEP: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_core_and_log_hold_no_plaintext_while_the_agent_core_does() {
    let home = TestHome::new();
    let scratch = home.scratch();
    let (relay, tok) = tokio::task::block_in_place(|| {
        let relay = RelayProcess::start(&home, DOMAIN);
        let tok = relay.create_token(&home, "plaintext");
        (relay, tok)
    });
    let ca_file = scratch.join("agent-ca.pem");
    let mut agent = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_relay-load"))
            .arg("agent")
            .arg("--tunnel")
            .arg(relay.tunnel.to_string())
            .arg("--pin")
            .arg(&relay.pin)
            .arg("--domain")
            .arg(&tok.tunnel_domain)
            .arg("--ca-out")
            .arg(&ca_file)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn relay-load agent"),
    );
    let agent_pid = agent.0.id();
    let mut stdin = agent.0.stdin.take().unwrap();
    writeln!(stdin, "{}", tok.token).unwrap();
    stdin.flush().unwrap();
    let stdout = agent.0.stdout.take().unwrap();
    let ready = tokio::task::block_in_place(|| {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    });
    let ready: serde_json::Value =
        serde_json::from_str(&ready).unwrap_or_else(|e| panic!("agent ready line {ready:?}: {e}"));
    let host = ready["host"].as_str().unwrap().to_string();
    let tls = client_trusting(&std::fs::read_to_string(&ca_file).unwrap());

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let marker = format!("PLAINTEXT-MARKER-{nanos:x}-{:x}", std::process::id());

    let mut s = inner_tls(relay.public, &host, tls, None).await.unwrap();
    s.write_all(format!("HOLD {marker}\n").as_bytes())
        .await
        .unwrap();
    // The reply to this proves the agent has read (and holds) the marker line.
    assert_eq!(
        request_line(&mut s, "ECHO sync", STEP).await.unwrap(),
        "sync"
    );

    let (relay_core, agent_core) = tokio::task::block_in_place(|| {
        (
            gcore(relay.pid(), &scratch, "relay-core"),
            gcore(agent_pid, &scratch, "agent-core"),
        )
    });
    let sizes = (
        std::fs::metadata(&relay_core).unwrap().len(),
        std::fs::metadata(&agent_core).unwrap().len(),
    );
    eprintln!("cores: relay {} B, agent {} B", sizes.0, sizes.1);
    assert!(
        file_contains(&agent_core, marker.as_bytes()),
        "the agent's core must contain the marker it holds (else the scan proves nothing)"
    );
    assert!(
        file_contains(&relay_core, host.as_bytes()),
        "the relay's core must contain the SNI it routed (else the scan proves nothing)"
    );
    assert!(
        !file_contains(&relay_core, marker.as_bytes()),
        "the relay's memory holds the plaintext marker"
    );
    std::fs::remove_file(&agent_core).unwrap();
    std::fs::remove_file(&relay_core).unwrap();

    // The response carries the marker back; the relay has still never seen it.
    assert_eq!(request_line(&mut s, "GO", STEP).await.unwrap(), marker);
    let relay_core = tokio::task::block_in_place(|| gcore(relay.pid(), &scratch, "relay-core2"));
    assert!(
        !file_contains(&relay_core, marker.as_bytes()),
        "the relay's memory holds the plaintext marker after the response"
    );
    std::fs::remove_file(&relay_core).unwrap();
    drop(s);

    // The relay logs the finished connection's metadata (SNI, bytes, duration).
    let log = tokio::task::block_in_place(|| {
        airlock_e2e::wait_for(STEP, "the relay to log the connection's SNI", || {
            let log = relay.log();
            log.contains(&host).then_some(log)
        })
    });
    assert!(!log.contains(&marker), "the relay's log holds the marker");
    drop(stdin);
    let _ = agent.0.wait();
}
