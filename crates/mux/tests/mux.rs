#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use airlock_mux::airlock_proto::{Config, Token};
use airlock_mux::{
    Incoming, IncomingStream, MuxError, MuxHandle, MuxState, accept_agent, connect_agent,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

const T: Duration = Duration::from_secs(30);

fn addr() -> SocketAddr {
    "203.0.113.7:4242".parse().unwrap()
}

fn agent_cfg(token: &str) -> Config {
    Config {
        token: Token::new(token.as_bytes().to_vec()),
        agent_name: "test-agent".into(),
        initial_window: 16 * 1024,
        max_send_queue: 32 * 1024,
        ..Config::default()
    }
}

fn relay_cfg() -> Config {
    Config {
        initial_window: 16 * 1024,
        max_send_queue: 32 * 1024,
        ..Config::default()
    }
}

async fn pair_with(
    agent: Config,
    relay: Config,
) -> (MuxHandle, MuxHandle, Incoming, DuplexStream, DuplexStream) {
    let (a_io, r_io) = tokio::io::duplex(64 * 1024);
    pair_over(a_io, r_io, agent, relay).await
}

async fn pair_over(
    a_io: DuplexStream,
    r_io: DuplexStream,
    agent: Config,
    relay: Config,
) -> (MuxHandle, MuxHandle, Incoming, DuplexStream, DuplexStream) {
    let relay_task = tokio::spawn(async move {
        let pending = accept_agent(r_io, relay, T).await.unwrap();
        assert_eq!(pending.hello.token.as_bytes(), b"good");
        assert_eq!(pending.hello.agent_name, "test-agent");
        pending.accept("t1.relay.test", [7; 16]).unwrap()
    });
    let (agent, incoming, welcome) = connect_agent(a_io, agent, T).await.unwrap();
    assert_eq!(welcome.tunnel_domain, "t1.relay.test");
    assert_eq!(welcome.session_id, [7; 16]);
    let relay = relay_task.await.unwrap();
    // Dummy duplex ends so callers that don't need them can ignore them.
    let (x, y) = tokio::io::duplex(1);
    (agent, relay, incoming, x, y)
}

async fn pair() -> (MuxHandle, MuxHandle, Incoming) {
    let (a, r, i, _, _) = pair_with(agent_cfg("good"), relay_cfg()).await;
    (a, r, i)
}

/// Agent side: echo every incoming stream.
fn spawn_echo_server(mut incoming: Incoming) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut n = 0;
        while let Some(IncomingStream {
            mut stream,
            sni,
            client_addr,
        }) = incoming.recv().await
        {
            assert!(sni.ends_with(".t1.relay.test"));
            assert_eq!(client_addr, addr());
            n += 1;
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(&mut stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
        n
    })
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (x >> 33) as u8
        })
        .collect()
}

async fn echo_roundtrip(relay: &MuxHandle, seed: u64, len: usize) {
    let s = relay
        .open_stream(&format!("s{seed}.t1.relay.test"), addr())
        .unwrap();
    let data = pattern(seed, len);
    let (mut r, mut w) = tokio::io::split(s);
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await.unwrap();
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    let _w = writer.await.unwrap();
    assert_eq!(got.len(), data.len(), "stream {seed}");
    assert!(got == data, "stream {seed} corrupted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_streams_echo() {
    let (_agent, relay, incoming) = pair().await;
    let server = spawn_echo_server(incoming);
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let relay = relay.clone();
        tasks.push(tokio::spawn(async move {
            echo_roundtrip(&relay, i, 1000 + (i as usize) * 997).await
        }));
    }
    for t in tasks {
        tokio::time::timeout(T, t).await.unwrap().unwrap();
    }
    relay.go_away("done");
    let n = tokio::time::timeout(T, server).await.unwrap().unwrap();
    assert_eq!(n, 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transfer_under_flow_control() {
    // 8 MiB through a 16 KiB window and a 64 KiB duplex pipe: needs many WINDOW_UPDATEs.
    let (_agent, relay, incoming) = pair().await;
    let _server = spawn_echo_server(incoming);
    tokio::time::timeout(T, echo_roundtrip(&relay, 99, 8 * 1024 * 1024))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_applies_backpressure() {
    let (_agent, relay, mut incoming) = pair().await;
    let mut s = relay.open_stream("x.t1.relay.test", addr()).unwrap();
    let inc = incoming.recv().await.unwrap();
    // The agent does not read: the writer must stall at about the window, not buffer freely.
    let writer = tokio::spawn(async move {
        let chunk = vec![1u8; 4096];
        let mut sent = 0usize;
        loop {
            match tokio::time::timeout(Duration::from_millis(500), s.write(&chunk)).await {
                Ok(Ok(n)) => sent += n,
                Ok(Err(e)) => panic!("write failed: {e}"),
                Err(_) => return (sent, s),
            }
        }
    });
    let (sent, _s) = tokio::time::timeout(T, writer).await.unwrap().unwrap();
    assert!(sent <= 16 * 1024, "sent {sent} bytes past a 16 KiB window");
    assert!(sent >= 8 * 1024, "only {sent} bytes sent");
    drop(inc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_away_drains_in_flight_streams() {
    let (agent, relay, mut incoming) = pair().await;
    let s = relay.open_stream("a.t1.relay.test", addr()).unwrap();
    let IncomingStream { stream: mut a, .. } = incoming.recv().await.unwrap();
    relay.go_away("shutting down");
    // No new streams after GOAWAY.
    assert!(matches!(
        relay.open_stream("b.t1.relay.test", addr()),
        Err(MuxError::GoingAway)
    ));
    // The agent sees the drain.
    let mut st = agent.state();
    tokio::time::timeout(T, st.wait_for(|s| *s == MuxState::Draining))
        .await
        .unwrap()
        .unwrap();
    // In-flight stream still works both ways.
    let (mut rr, mut rw) = tokio::io::split(s);
    rw.write_all(b"ping").await.unwrap();
    rw.shutdown().await.unwrap();
    let mut buf = Vec::new();
    a.read_to_end(&mut buf).await.unwrap();
    assert_eq!(buf, b"ping");
    a.write_all(b"pong").await.unwrap();
    a.shutdown().await.unwrap();
    let mut back = Vec::new();
    rr.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, b"pong");
    drop((rr, rw, a));
    // Then both sides close gracefully.
    assert_eq!(tokio::time::timeout(T, relay.closed()).await.unwrap(), None);
    assert_eq!(tokio::time::timeout(T, agent.closed()).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_death_errors_streams() {
    let (a_io, r_io) = tokio::io::duplex(64 * 1024);
    let (a_io, kill) = killable(a_io);
    let (_agent, relay, mut incoming, _, _) =
        pair_over(a_io, r_io, agent_cfg("good"), relay_cfg()).await;
    let mut s = relay.open_stream("a.t1.relay.test", addr()).unwrap();
    let mut inc = incoming.recv().await.unwrap();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        s.read(&mut buf).await
    });
    let agent_reader = tokio::spawn(async move {
        let mut buf = [0u8; 16];
        inc.stream.read(&mut buf).await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    kill.send(()).unwrap();
    let r = tokio::time::timeout(T, reader).await.unwrap().unwrap();
    assert!(r.is_err(), "relay-side read must fail, got {r:?}");
    let r = tokio::time::timeout(T, agent_reader)
        .await
        .unwrap()
        .unwrap();
    assert!(r.is_err(), "agent-side read must fail, got {r:?}");
    assert!(matches!(relay.current_state(), MuxState::Closed(Some(_))));
    assert!(relay.open_stream("b.t1.relay.test", addr()).is_err());
    // The agent's incoming channel ends.
    assert!(
        tokio::time::timeout(T, incoming.recv())
            .await
            .unwrap()
            .is_none()
    );
}

/// Wraps the agent's side of the pipe so the test can cut it (both directions) on demand.
fn killable(io: DuplexStream) -> (DuplexStream, tokio::sync::oneshot::Sender<()>) {
    let (mine, theirs) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut io = io;
        let mut theirs = theirs;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut io, &mut theirs) => {}
            _ = rx => {}
        }
        // Dropping both ends closes both directions.
    });
    (mine, tx)
}

#[tokio::test(start_paused = true)]
async fn keepalive_timeout_with_paused_clock() {
    let cfg = |c: Config| Config {
        keepalive_interval: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(15),
        ..c
    };
    let (a_io, r_io) = tokio::io::duplex(64 * 1024);
    // A pipe that silently swallows everything after the handshake: no EOF, no data.
    let (a_io, freeze) = freezable(a_io);
    let (agent, relay, _incoming, _, _) =
        pair_over(a_io, r_io, cfg(agent_cfg("good")), cfg(relay_cfg())).await;
    // With a healthy link, keepalive PINGs keep it up well past the idle timeout.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(relay.current_state(), MuxState::Established);
    assert_eq!(agent.current_state(), MuxState::Established);
    freeze.send(()).unwrap();
    let started = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(60), relay.closed())
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        matches!(
            &err,
            Some(e) if e.1.as_ref().is_some_and(|p| matches!(p, airlock_mux::airlock_proto::ProtoError::Timeout { .. }))
        ),
        "expected a keepalive timeout, got {err:?}"
    );
    assert!(
        waited >= Duration::from_secs(9) && waited <= Duration::from_secs(16),
        "timed out after {waited:?}"
    );
}

/// Pipe between the agent and the relay that can be frozen (stops forwarding, stays open).
fn freezable(io: DuplexStream) -> (DuplexStream, tokio::sync::oneshot::Sender<()>) {
    let (mine, theirs) = tokio::io::duplex(64 * 1024);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let mut io = io;
        let mut theirs = theirs;
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut io, &mut theirs) => {}
            _ = rx => {}
        }
        std::future::pending::<()>().await;
        drop((io, theirs));
    });
    (mine, tx)
}

#[tokio::test]
async fn rejected_agent_gets_reason() {
    let (a_io, r_io) = tokio::io::duplex(64 * 1024);
    let relay = tokio::spawn(async move {
        let p = accept_agent(r_io, relay_cfg(), T).await.unwrap();
        p.reject(1, "token revoked").await;
    });
    let err = connect_agent(a_io, agent_cfg("bad"), T).await.unwrap_err();
    match err {
        MuxError::Rejected { code, reason } => {
            assert_eq!(code, 1);
            assert_eq!(reason, "token revoked");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    relay.await.unwrap();
}

#[tokio::test]
async fn dropping_a_stream_resets_it() {
    let (_agent, relay, mut incoming) = pair().await;
    let s = relay.open_stream("a.t1.relay.test", addr()).unwrap();
    let mut inc = incoming.recv().await.unwrap();
    drop(s);
    let mut buf = [0u8; 8];
    let r = tokio::time::timeout(T, inc.stream.read(&mut buf))
        .await
        .unwrap();
    assert!(r.is_err(), "read after peer drop must fail, got {r:?}");
    assert_eq!(relay.stream_count(), 0);
}

/// Reads to end of stream; the read must not fail.
async fn read_to_eof(stream: &mut airlock_mux::MuxStream) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(T, stream.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_then_drop_delivers_every_byte_then_eof() {
    let (_agent, relay, mut incoming) = pair().await;

    // 1. The whole response sits in the reader's receive buffer when the writer's RESET
    //    arrives (N = the relay's 16 KiB window, nothing read yet).
    let mut reader = relay.open_stream("a.t1.relay.test", addr()).unwrap();
    let mut writer = incoming.recv().await.unwrap().stream;
    let body = pattern(1, 16 * 1024);
    tokio::time::timeout(T, writer.write_all(&body))
        .await
        .unwrap()
        .unwrap();
    writer.shutdown().await.unwrap();
    drop(writer);
    // Frames arrive in order: once a later stream's data is here, so is the RESET.
    let mut probe = relay.open_stream("b.t1.relay.test", addr()).unwrap();
    let mut probe_peer = incoming.recv().await.unwrap().stream;
    probe_peer.write_all(b"x").await.unwrap();
    let mut one = [0u8; 1];
    tokio::time::timeout(T, probe.read_exact(&mut one))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_to_eof(&mut reader).await, body);
    // The peer reads no more: writing fails, shutting down does not.
    assert!(reader.write_all(b"late").await.is_err());
    reader.shutdown().await.unwrap();
    drop(reader);

    // 2. A bulk transfer many windows long, read while it is written.
    let mut reader = relay.open_stream("c.t1.relay.test", addr()).unwrap();
    let mut writer = incoming.recv().await.unwrap().stream;
    let body = pattern(2, 1024 * 1024 + 17);
    let expect = body.clone();
    let w = tokio::spawn(async move {
        writer.write_all(&body).await.unwrap();
        writer.shutdown().await.unwrap();
    });
    let got = read_to_eof(&mut reader).await;
    assert_eq!(got.len(), expect.len());
    assert!(got == expect, "bulk transfer corrupted");
    tokio::time::timeout(T, w).await.unwrap().unwrap();
    drop(reader);
    drop((probe, probe_peer));
    tokio::time::timeout(T, async {
        while relay.stream_count() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
}
