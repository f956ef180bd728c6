//! Handshake + multiplexing driven by an arbitrary sequence of operations on a connected
//! agent/relay pair, interleaved with arbitrary raw bytes injected on either side.
//!
//! Invariants checked after every operation:
//! * no panic;
//! * every buffer stays within its configured cap (output queue, decoder, per-stream receive
//!   buffer, pending events, stream count, send credit);
//! * while no garbage has been injected: no protocol error on either side, and every byte read
//!   from a stream is exactly the byte the peer wrote at that offset.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use airlock_proto::conn::CONTROL_HEADROOM;
use airlock_proto::frame::{HEADER_LEN, MAX_DATA_PAYLOAD, MAX_WINDOW, code};
use airlock_proto::{Config, Connection, Event, ProtoError, Role, StreamId, UsageError};
use arbitrary::Arbitrary;
use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Agent,
    Relay,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    agent_window: u16,
    relay_window: u16,
    agent_streams: u8,
    relay_streams: u8,
    agent_queue: u16,
    relay_queue: u16,
    agent_v2: bool,
    relay_v1: bool,
    accept: bool,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Open {
        port: u16,
    },
    Send {
        side: Side,
        stream: u8,
        len: u16,
    },
    Recv {
        side: Side,
        stream: u8,
        max: u16,
    },
    Finish {
        side: Side,
        stream: u8,
    },
    Reset {
        side: Side,
        stream: u8,
        code: u8,
    },
    GoAway {
        side: Side,
        graceful: bool,
    },
    Ping {
        side: Side,
    },
    /// Move up to `max` bytes of `from`'s output to the other side.
    Deliver {
        from: Side,
        max: u16,
    },
    /// Deliver everything both ways until quiet.
    Flush,
    Advance {
        ms: u16,
    },
    Timeout {
        side: Side,
    },
    Inject {
        to: Side,
        bytes: Vec<u8>,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// One direction of one stream, as seen by the harness.
#[derive(Default)]
struct Dir {
    sent: u64,
    got: u64,
}

struct Tracked {
    id: StreamId,
    down: Dir, // relay -> agent
    up: Dir,   // agent -> relay
}

fn pattern(id: StreamId, up: bool, pos: u64) -> u8 {
    (pos.wrapping_mul(0x9e37_79b9) ^ u64::from(id.0).wrapping_mul(131) ^ (u64::from(up) << 5)) as u8
}

struct End {
    conn: Connection,
    /// Bytes taken from `poll_transmit` and not yet delivered to the peer.
    wire: BytesMut,
    errored: Option<ProtoError>,
}

impl End {
    /// Records an error from `handle_input`. Closures the peer asked for (REJECT, a GOAWAY
    /// with an error code, a timeout GOAWAY) or a version mismatch are legitimate; anything
    /// else is a protocol violation that must not happen between two honest endpoints.
    fn note(&mut self, e: ProtoError) {
        match e {
            ProtoError::Rejected { .. }
            | ProtoError::PeerError { .. }
            | ProtoError::NoCommonVersion { .. }
            | ProtoError::Timeout { .. } => {}
            other => self.errored = Some(other),
        }
    }
}

struct Harness {
    agent: End,
    relay: End,
    now: Instant,
    tainted: bool,
    accept: bool,
    streams: Vec<Tracked>,
}

fn config(window: u16, streams: u8, queue: u16, versions: Vec<u16>) -> Config {
    Config {
        versions,
        max_streams: u32::from(streams % 16) + 1,
        initial_window: 1024 + u32::from(window),
        max_send_queue: 256 + usize::from(queue),
        keepalive_interval: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(2000),
        token: airlock_proto::Token::new(&b"fuzz-token"[..]),
        agent_name: "fuzz".to_owned(),
    }
}

impl Harness {
    fn end(&mut self, side: Side) -> &mut End {
        match side {
            Side::Agent => &mut self.agent,
            Side::Relay => &mut self.relay,
        }
    }

    fn stream(&self, idx: u8) -> Option<usize> {
        if self.streams.is_empty() {
            None
        } else {
            Some(usize::from(idx) % self.streams.len())
        }
    }

    fn deliver(&mut self, from: Side, max: usize) -> usize {
        let now = self.now;
        let (src, dst) = match from {
            Side::Agent => (&mut self.agent, &mut self.relay),
            Side::Relay => (&mut self.relay, &mut self.agent),
        };
        src.conn.poll_transmit(&mut src.wire);
        let n = max.min(src.wire.len());
        if n == 0 {
            return 0;
        }
        let chunk = src.wire.split_to(n);
        if let Err(e) = dst.conn.handle_input(&chunk, now) {
            dst.note(e);
        }
        n
    }

    fn flush(&mut self) {
        for _ in 0..64 {
            let a = self.deliver(Side::Agent, usize::MAX);
            let r = self.deliver(Side::Relay, usize::MAX);
            self.events();
            if a == 0 && r == 0 {
                return;
            }
        }
    }

    fn events(&mut self) {
        while let Some(ev) = self.relay.conn.poll_event() {
            if let Event::HelloReceived { .. } = ev {
                let _ = if self.accept {
                    self.relay.conn.accept("tunnel.example", [1; 16])
                } else {
                    self.relay.conn.reject(1, "fuzz says no")
                };
            }
        }
        while self.agent.conn.poll_event().is_some() {}
    }

    fn check(&self) {
        for end in [&self.agent, &self.relay] {
            let c = &end.conn;
            let cfg = c.config();
            let out_cap = cfg.max_send_queue
                + CONTROL_HEADROOM
                + cfg.max_streams as usize * 64
                + 2 * (HEADER_LEN + MAX_DATA_PAYLOAD);
            assert!(
                c.pending_output() <= out_cap,
                "output {} > {out_cap}",
                c.pending_output()
            );
            assert!(c.decoder_buffered() <= HEADER_LEN + MAX_DATA_PAYLOAD);
            assert!(c.pending_events() <= c.max_pending_events() + 8);
            assert!(c.stream_count() <= cfg.max_streams as usize);
            for id in c.streams() {
                let buffered = c.recv_buffered(id).unwrap_or(0);
                assert!(
                    buffered <= cfg.initial_window as usize,
                    "recv buffer over window"
                );
                assert!(c.send_credit(id).unwrap_or(0) <= MAX_WINDOW);
            }
            if !self.tainted {
                assert_eq!(end.errored, None, "protocol error without injected garbage");
            }
        }
    }

    fn send(&mut self, side: Side, idx: u8, len: u16) {
        let Some(i) = self.stream(idx) else { return };
        let up = side == Side::Agent;
        let id = self.streams[i].id;
        let dir = if up {
            &self.streams[i].up
        } else {
            &self.streams[i].down
        };
        let data: Vec<u8> = (dir.sent..dir.sent + u64::from(len))
            .map(|p| pattern(id, up, p))
            .collect();
        if let Ok(n) = self.end(side).conn.send(id, &data) {
            assert!(n <= data.len());
            let t = &mut self.streams[i];
            if up {
                t.up.sent += n as u64
            } else {
                t.down.sent += n as u64
            }
        }
    }

    fn recv(&mut self, side: Side, idx: u8, max: u16) {
        let Some(i) = self.stream(idx) else { return };
        let up = side == Side::Relay; // the relay reads what the agent wrote
        let id = self.streams[i].id;
        let mut buf = vec![0u8; usize::from(max) + 1];
        match self.end(side).conn.recv(id, &mut buf) {
            Ok(n) => {
                let tainted = self.tainted;
                let t = &mut self.streams[i];
                let dir = if up { &mut t.up } else { &mut t.down };
                if !tainted {
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(
                            *b,
                            pattern(id, up, dir.got + k as u64),
                            "stream data corrupted"
                        );
                    }
                    assert!(
                        dir.got + n as u64 <= dir.sent,
                        "received more than was sent"
                    );
                }
                dir.got += n as u64;
            }
            Err(UsageError::WouldBlock(_) | UsageError::UnknownStream(_) | UsageError::Closed) => {}
            Err(e) => panic!("unexpected recv error: {e}"),
        }
    }
}

fuzz_target!(|input: Input| {
    let s = &input.setup;
    let start = Instant::now();
    let agent_versions = if s.agent_v2 { vec![1, 2] } else { vec![1] };
    let relay_versions = if s.relay_v1 { vec![1] } else { vec![2, 3] };
    let agent = Connection::new(
        Role::Agent,
        config(
            s.agent_window,
            s.agent_streams,
            s.agent_queue,
            agent_versions,
        ),
        start,
    )
    .expect("valid agent config");
    let relay = Connection::new(
        Role::Relay,
        config(
            s.relay_window,
            s.relay_streams,
            s.relay_queue,
            relay_versions,
        ),
        start,
    )
    .expect("valid relay config");
    let mut h = Harness {
        agent: End {
            conn: agent,
            wire: BytesMut::new(),
            errored: None,
        },
        relay: End {
            conn: relay,
            wire: BytesMut::new(),
            errored: None,
        },
        now: start,
        tainted: false,
        accept: s.accept,
        streams: Vec::new(),
    };
    for op in input.ops.into_iter().take(512) {
        match op {
            Op::Open { port } => {
                let addr = SocketAddr::new(Ipv4Addr::new(192, 0, 2, 1).into(), port);
                if let Ok(id) = h.relay.conn.open_stream("svc.tunnel.example", addr) {
                    h.streams.push(Tracked {
                        id,
                        down: Dir::default(),
                        up: Dir::default(),
                    });
                }
            }
            Op::Send { side, stream, len } => h.send(side, stream, len),
            Op::Recv { side, stream, max } => h.recv(side, stream, max),
            Op::Finish { side, stream } => {
                if let Some(i) = h.stream(stream) {
                    let id = h.streams[i].id;
                    let _ = h.end(side).conn.finish(id);
                }
            }
            Op::Reset { side, stream, code } => {
                if let Some(i) = h.stream(stream) {
                    let id = h.streams[i].id;
                    let _ = h.end(side).conn.reset(id, u32::from(code));
                }
            }
            Op::GoAway { side, graceful } => {
                let c = if graceful {
                    code::NO_ERROR
                } else {
                    code::INTERNAL
                };
                let _ = h.end(side).conn.go_away(c, "fuzz drain");
            }
            Op::Ping { side } => {
                let now = h.now;
                let _ = h.end(side).conn.ping(now);
            }
            Op::Deliver { from, max } => {
                h.deliver(from, usize::from(max));
            }
            Op::Flush => h.flush(),
            Op::Advance { ms } => {
                h.now += Duration::from_millis(u64::from(ms % 3000));
            }
            Op::Timeout { side } => {
                let now = h.now;
                let end = h.end(side);
                if end.conn.poll_timeout().is_some_and(|t| t <= now) {
                    end.conn.handle_timeout(now);
                }
            }
            Op::Inject { to, bytes } => {
                if bytes.is_empty() {
                    continue;
                }
                h.tainted = true;
                let now = h.now;
                let end = h.end(to);
                let _ = end.conn.handle_input(&bytes, now);
            }
        }
        h.events();
        h.check();
        // Bound the harness's own wires so a long undelivered backlog cannot grow forever.
        for end in [&mut h.agent, &mut h.relay] {
            if end.wire.len() > 4 * 1024 * 1024 {
                end.wire.advance(end.wire.len());
                h.tainted = true;
            }
        }
    }
});
