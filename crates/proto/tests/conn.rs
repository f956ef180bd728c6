#![allow(clippy::unwrap_used)] // tests: a panic is the failure report
//! Two `Connection`s wired together in memory.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use airlock_proto::frame::{self, code, reject};
use airlock_proto::{
    Config, Connection, Event, Frame, ProtoError, Role, State, StreamId, Token, UsageError, encode,
};
use bytes::{Bytes, BytesMut};

const SESSION: [u8; 16] = [9; 16];

fn addr(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::new(198, 51, 100, 7).into(), port)
}

/// An agent and a relay joined by an in-memory pipe, with an injected clock.
struct Pair {
    agent: Connection,
    relay: Connection,
    now: Instant,
    agent_events: Vec<Event>,
    relay_events: Vec<Event>,
    agent_errors: Vec<ProtoError>,
    relay_errors: Vec<ProtoError>,
}

impl Pair {
    fn new(agent_cfg: Config, relay_cfg: Config) -> Self {
        let now = Instant::now();
        Self {
            agent: Connection::new(Role::Agent, agent_cfg, now).unwrap(),
            relay: Connection::new(Role::Relay, relay_cfg, now).unwrap(),
            now,
            agent_events: Vec::new(),
            relay_events: Vec::new(),
            agent_errors: Vec::new(),
            relay_errors: Vec::new(),
        }
    }

    /// Shuttles bytes both ways until neither side has anything to send; collects events.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut buf = BytesMut::new();
            let a = self.agent.poll_transmit(&mut buf);
            if a > 0
                && let Err(e) = self.relay.handle_input(&buf, self.now)
            {
                self.relay_errors.push(e);
            }
            let mut buf = BytesMut::new();
            let r = self.relay.poll_transmit(&mut buf);
            if r > 0
                && let Err(e) = self.agent.handle_input(&buf, self.now)
            {
                self.agent_errors.push(e);
            }
            self.drain_events();
            if a == 0 && r == 0 {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.agent.poll_event() {
            self.agent_events.push(e);
        }
        while let Some(e) = self.relay.poll_event() {
            self.relay_events.push(e);
        }
    }

    /// Handshake with the relay accepting.
    fn established(agent_cfg: Config, relay_cfg: Config) -> Self {
        let mut p = Self::new(agent_cfg, relay_cfg);
        p.pump();
        p.relay.accept("alice.relay.example", SESSION).unwrap();
        p.pump();
        assert!(p.agent.is_established() && p.relay.is_established());
        p.agent_events.clear();
        p.relay_events.clear();
        p
    }

    fn open(&mut self, sni: &str) -> StreamId {
        let id = self.relay.open_stream(sni, addr(40_000)).unwrap();
        self.pump();
        id
    }
}

fn recv_all(c: &mut Connection, id: StreamId) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let mut buf = [0u8; 1000];
    loop {
        match c.recv(id, &mut buf) {
            Ok(0) => return (out, true),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(UsageError::WouldBlock(_)) => return (out, false),
            Err(e) => panic!("recv: {e}"),
        }
    }
}

fn small(window: u32) -> Config {
    Config {
        initial_window: window,
        ..Config::default()
    }
}

#[test]
fn handshake_negotiates_highest_common_version() {
    let agent = Config {
        versions: vec![1, 2, 3],
        token: Token::new(Bytes::from_static(b"tok")),
        agent_name: "laptop".to_owned(),
        ..Config::default()
    };
    let relay = Config {
        versions: vec![2, 3, 4],
        max_streams: 7,
        ..Config::default()
    };
    let mut p = Pair::new(agent, relay);
    assert_eq!(p.agent.state(), State::AwaitingWelcome);
    p.pump();
    assert_eq!(p.relay.state(), State::AwaitingAccept);
    assert_eq!(
        p.relay_events,
        vec![Event::HelloReceived {
            version: 3,
            agent_name: "laptop".to_owned(),
            token: Token::new(Bytes::from_static(b"tok")),
        }]
    );
    // Nothing can happen on streams before the relay accepts.
    assert_eq!(
        p.relay.open_stream("a.example", addr(1)),
        Err(UsageError::NotEstablished)
    );
    p.relay.accept("alice.relay.example", SESSION).unwrap();
    p.pump();
    let done = Event::HandshakeDone {
        version: 3,
        tunnel_domain: "alice.relay.example".to_owned(),
        session_id: SESSION,
        max_streams: 7,
    };
    assert_eq!(p.agent_events, vec![done.clone()]);
    assert_eq!(p.relay_events.last(), Some(&done));
    assert_eq!((p.agent.version(), p.relay.version()), (3, 3));
    assert!(p.agent_errors.is_empty() && p.relay_errors.is_empty());
}

#[test]
fn relay_reject_closes_the_agent_with_the_reason() {
    let mut p = Pair::new(Config::default(), Config::default());
    p.pump();
    p.relay
        .reject(reject::UNAUTHORIZED, "token expired")
        .unwrap();
    p.pump();
    let err = ProtoError::Rejected {
        code: reject::UNAUTHORIZED,
        reason: "token expired".to_owned(),
    };
    assert_eq!(p.agent_errors, vec![err.clone()]);
    assert_eq!(p.agent_events, vec![Event::Closed { error: Some(err) }]);
    assert!(p.agent.is_closed() && p.relay.is_closed());
    assert_eq!(p.agent.poll_timeout(), None);
}

#[test]
fn no_common_version_is_rejected_automatically() {
    let agent = Config {
        versions: vec![1],
        ..Config::default()
    };
    let relay = Config {
        versions: vec![2],
        ..Config::default()
    };
    let mut p = Pair::new(agent, relay);
    p.pump();
    assert!(p.relay.is_closed() && p.agent.is_closed());
    assert!(matches!(
        p.agent_errors.as_slice(),
        [ProtoError::Rejected { code: reject::UNSUPPORTED_VERSION, reason }] if reason.contains("no common protocol version")
    ));
}

#[test]
fn frames_out_of_order_in_the_handshake_are_protocol_errors() {
    let now = Instant::now();
    let mut relay = Connection::new(Role::Relay, Config::default(), now).unwrap();
    let mut bytes = BytesMut::new();
    encode(&Frame::Ping { opaque: 1 }, &mut bytes).unwrap();
    let err = relay.handle_input(&bytes, now).unwrap_err();
    assert!(matches!(
        err,
        ProtoError::UnexpectedFrame { frame: "PING", .. }
    ));
    // The relay tells the agent why with a REJECT.
    let mut out = BytesMut::new();
    relay.poll_transmit(&mut out);
    let mut input = &out[..];
    assert!(matches!(
        frame::Decoder::new().decode(&mut input),
        Ok(Some(Frame::Reject {
            code: reject::PROTOCOL_ERROR,
            ..
        }))
    ));
}

#[test]
fn many_concurrent_streams_with_interleaved_data() {
    let mut p = Pair::established(small(4096), small(4096));
    let ids: Vec<StreamId> = (0..40).map(|i| p.open(&format!("s{i}.example"))).collect();
    let opened: Vec<_> = p
        .agent_events
        .iter()
        .filter_map(|e| match e {
            Event::StreamOpened {
                stream,
                sni,
                client_addr,
            } => Some((*stream, sni.clone(), *client_addr)),
            _ => None,
        })
        .collect();
    assert_eq!(opened.len(), 40);
    for (i, (id, sni, a)) in opened.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(id.0 % 2, 1, "relay streams are odd");
        assert_eq!(sni, &format!("s{i}.example"));
        assert_eq!(*a, addr(40_000));
    }
    let payload = |id: StreamId, dir: u8, len: usize| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u32 ^ id.0.wrapping_mul(31) ^ u32::from(dir)) as u8)
            .collect()
    };
    let total = 20_000;
    let mut sent_up = vec![0usize; ids.len()];
    let mut sent_down = vec![0usize; ids.len()];
    let mut got_up = vec![Vec::new(); ids.len()];
    let mut got_down = vec![Vec::new(); ids.len()];
    for _round in 0..2000 {
        if got_up.iter().chain(&got_down).all(|g| g.len() == total) {
            break;
        }
        for (i, &id) in ids.iter().enumerate() {
            let chunk = 97 + i * 13;
            let down = payload(id, 0, total);
            let end = (sent_down[i] + chunk).min(total);
            sent_down[i] += p.relay.send(id, &down[sent_down[i]..end]).unwrap();
            let up = payload(id, 1, total);
            let end = (sent_up[i] + chunk).min(total);
            sent_up[i] += p.agent.send(id, &up[sent_up[i]..end]).unwrap();
        }
        p.pump();
        for (i, &id) in ids.iter().enumerate() {
            got_down[i].extend(recv_all(&mut p.agent, id).0);
            got_up[i].extend(recv_all(&mut p.relay, id).0);
        }
        p.pump();
    }
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(got_down[i].len(), total, "stream {id} relay->agent length");
        assert_eq!(got_up[i].len(), total, "stream {id} agent->relay length");
        assert!(
            got_down[i] == payload(id, 0, total),
            "stream {id} relay->agent bytes"
        );
        assert!(
            got_up[i] == payload(id, 1, total),
            "stream {id} agent->relay bytes"
        );
    }
    assert!(p.agent_errors.is_empty() && p.relay_errors.is_empty());
}

#[test]
fn sender_blocks_on_window_and_resumes_after_window_update() {
    let mut p = Pair::established(small(4096), Config::default());
    let id = p.open("a.example");
    let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(p.relay.send_credit(id), Some(4096));
    assert_eq!(p.relay.send(id, &data).unwrap(), 4096);
    assert_eq!(
        p.relay.send(id, &data[4096..]).unwrap(),
        0,
        "no credit left"
    );
    p.pump();
    assert_eq!(p.agent.recv_buffered(id), Some(4096));
    assert!(
        !p.relay_events
            .iter()
            .any(|e| matches!(e, Event::StreamWritable { .. })),
        "no credit returned yet"
    );
    // Consuming less than half the window returns no credit.
    let mut buf = vec![0u8; 1000];
    assert_eq!(p.agent.recv(id, &mut buf).unwrap(), 1000);
    p.pump();
    assert_eq!(p.relay.send_credit(id), Some(0));
    // Crossing half the window sends a WINDOW_UPDATE; the relay is told it may write.
    let mut buf = vec![0u8; 1048];
    assert_eq!(p.agent.recv(id, &mut buf).unwrap(), 1048);
    p.pump();
    assert_eq!(p.relay.send_credit(id), Some(2048));
    assert_eq!(p.relay_events, vec![Event::StreamWritable { stream: id }]);
    let mut sent = 4096;
    let mut got = Vec::new();
    while sent < data.len() || got.len() < data.len() - 2048 {
        if sent < data.len() {
            sent += p.relay.send(id, &data[sent..]).unwrap();
        }
        p.pump();
        assert!(p.agent.recv_buffered(id).unwrap() <= 4096);
        got.extend(recv_all(&mut p.agent, id).0);
        p.pump();
    }
    assert!(
        got[..] == data[2048..],
        "data arrives intact after the stall"
    );
}

#[test]
fn send_is_bounded_by_the_output_queue() {
    let cfg = Config {
        max_send_queue: 10_000,
        ..Config::default()
    };
    let mut p = Pair::established(Config::default(), cfg);
    let id = p.open("a.example");
    let data = vec![1u8; 100_000];
    let n = p.relay.send(id, &data).unwrap();
    assert_eq!(n, 10_000);
    assert_eq!(p.relay.send(id, &data).unwrap(), 0);
    assert!(p.relay.pending_output() <= 10_000 + 64);
    let mut out = BytesMut::new();
    p.relay.poll_transmit(&mut out);
    assert_eq!(
        p.relay.poll_event(),
        Some(Event::StreamWritable { stream: id })
    );
    assert_eq!(p.relay.send(id, &data).unwrap(), 10_000);
}

#[test]
fn peer_exceeding_its_window_is_a_connection_error() {
    let mut p = Pair::established(small(1024), Config::default());
    let id = p.open("a.example");
    // Forge a DATA frame bigger than the agent's window, as a broken relay would.
    let mut bytes = BytesMut::new();
    encode(
        &Frame::Data {
            stream: id,
            data: Bytes::from(vec![0; 1025]),
        },
        &mut bytes,
    )
    .unwrap();
    let err = p.agent.handle_input(&bytes, p.now).unwrap_err();
    assert_eq!(
        err,
        ProtoError::FlowControl {
            stream: id,
            len: 1025,
            credit: 1024
        }
    );
    assert!(p.agent.is_closed());
    // The agent's GOAWAY(FLOW_CONTROL_ERROR) closes the relay too.
    p.pump();
    assert!(p.relay.is_closed());
    assert!(p.relay_events.iter().any(|e| matches!(
        e,
        Event::Closed {
            error: Some(ProtoError::PeerError {
                code: code::FLOW_CONTROL_ERROR,
                ..
            })
        }
    )));
}

#[test]
fn window_update_beyond_the_initial_window_is_an_error() {
    let mut p = Pair::established(Config::default(), Config::default());
    let id = p.open("a.example");
    let mut bytes = BytesMut::new();
    encode(
        &Frame::WindowUpdate {
            stream: id,
            increment: 1,
        },
        &mut bytes,
    )
    .unwrap();
    let err = p.relay.handle_input(&bytes, p.now).unwrap_err();
    assert!(matches!(err, ProtoError::WindowOverflow { .. }), "{err}");
}

#[test]
fn half_close_in_each_direction() {
    let mut p = Pair::established(Config::default(), Config::default());
    let id = p.open("a.example");
    p.relay.send(id, b"request").unwrap();
    p.relay.finish(id).unwrap();
    assert_eq!(p.relay.send(id, b"x"), Err(UsageError::SendAfterFinish(id)));
    p.pump();
    assert!(
        p.agent_events
            .contains(&Event::StreamFinished { stream: id })
    );
    assert_eq!(recv_all(&mut p.agent, id), (b"request".to_vec(), true));
    // The agent can still answer on its half.
    p.agent.send(id, b"response part 1, ").unwrap();
    p.pump();
    p.agent.send(id, b"part 2").unwrap();
    p.agent.finish(id).unwrap();
    assert_eq!(
        p.agent.stream_count(),
        0,
        "both halves done: stream released"
    );
    p.pump();
    assert_eq!(
        recv_all(&mut p.relay, id),
        (b"response part 1, part 2".to_vec(), true)
    );
    assert_eq!(p.relay.stream_count(), 0);
    assert_eq!(
        p.relay.recv(id, &mut [0; 4]),
        Err(UsageError::UnknownStream(id))
    );
}

#[test]
fn reset_removes_the_stream_and_late_frames_are_ignored() {
    let mut p = Pair::established(small(4096), Config::default());
    let a = p.open("a.example");
    let b = p.open("b.example");
    p.relay.send(a, &[1; 100]).unwrap();
    p.agent.reset(a, code::CANCEL).unwrap();
    // The relay's DATA crosses the agent's RESET: the late DATA must be ignored.
    p.pump();
    assert!(p.agent_errors.is_empty() && p.relay_errors.is_empty());
    assert_eq!(
        p.relay_events,
        vec![Event::StreamReset {
            stream: a,
            code: code::CANCEL
        }]
    );
    assert_eq!(p.relay.send(a, b"x"), Err(UsageError::UnknownStream(a)));
    assert_eq!(
        p.agent.recv(a, &mut [0; 4]),
        Err(UsageError::UnknownStream(a))
    );
    // The other stream is unaffected.
    p.relay.send(b, b"still here").unwrap();
    p.pump();
    assert_eq!(recv_all(&mut p.agent, b).0, b"still here");
    // A frame for a stream that never existed is a protocol error.
    let mut bytes = BytesMut::new();
    encode(
        &Frame::Fin {
            stream: StreamId(999),
        },
        &mut bytes,
    )
    .unwrap();
    assert!(matches!(
        p.agent.handle_input(&bytes, p.now),
        Err(ProtoError::BadStreamId { id: 999, .. })
    ));
}

#[test]
fn excess_streams_are_refused() {
    let agent = Config {
        max_streams: 2,
        ..Config::default()
    };
    let mut p = Pair::established(agent, Config::default());
    let a = p.open("a.example");
    let b = p.open("b.example");
    let c = p.open("c.example");
    assert_eq!(
        p.relay_events,
        vec![Event::StreamReset {
            stream: c,
            code: code::REFUSED
        }]
    );
    assert_eq!(p.agent.stream_count(), 2);
    assert_eq!(p.relay.streams().collect::<Vec<_>>(), vec![a, b]);

    // The relay enforces its own limit locally.
    let relay = Config {
        max_streams: 1,
        ..Config::default()
    };
    let mut p = Pair::established(Config::default(), relay);
    p.open("a.example");
    assert_eq!(
        p.relay.open_stream("b.example", addr(1)),
        Err(UsageError::TooManyStreams { max: 1 })
    );
}

fn frames(fs: &[Frame]) -> BytesMut {
    let mut b = BytesMut::new();
    for f in fs {
        encode(f, &mut b).unwrap();
    }
    b
}

#[test]
fn refused_open_flood_hits_the_output_bound_not_memory() {
    let agent = Config {
        max_streams: 1,
        max_send_queue: 4096,
        ..Config::default()
    };
    let mut p = Pair::established(agent, Config::default());
    // A hostile relay opens stream after stream while the agent's output is never drained:
    // each refusal queues a RESET; the connection gives up at the documented bound.
    let opens: Vec<Frame> = (0..20_000u32)
        .map(|i| Frame::Open {
            stream: StreamId(2 * i + 1),
            sni: "x.example".to_owned(),
            client_addr: addr(1),
        })
        .collect();
    let err = p.agent.handle_input(&frames(&opens), p.now).unwrap_err();
    let max = 4096 + airlock_proto::conn::CONTROL_HEADROOM;
    // Checked after every frame: at most one RESET (14 bytes) past the limit.
    assert!(
        matches!(err, ProtoError::Backlog { what: "output", len, max: m } if m == max && len > max && len <= max + 14),
        "{err:?}"
    );
    assert!(p.agent.is_closed());
}

#[test]
fn undrained_events_are_bounded() {
    let agent = Config {
        max_streams: 4,
        ..Config::default()
    };
    let mut p = Pair::established(agent, Config::default());
    let limit = p.agent.max_pending_events();
    assert_eq!(limit, 4 * 4 + 64);
    // Open+reset pairs never exceed max_streams but each leaves two events behind.
    let mut fs = Vec::new();
    for i in 0..100u32 {
        let stream = StreamId(2 * i + 1);
        fs.push(Frame::Open {
            stream,
            sni: "x.example".to_owned(),
            client_addr: addr(1),
        });
        fs.push(Frame::Reset { stream, code: 5 });
    }
    let err = p.agent.handle_input(&frames(&fs), p.now).unwrap_err();
    assert!(
        matches!(err, ProtoError::Backlog { what: "event", max, .. } if max == limit),
        "{err}"
    );
}

#[test]
fn roles_are_enforced() {
    let mut p = Pair::established(Config::default(), Config::default());
    assert!(matches!(
        p.agent.open_stream("a.example", addr(1)),
        Err(UsageError::WrongRole { .. })
    ));
    assert!(matches!(
        p.relay.open_stream("not_a_host", addr(1)),
        Err(UsageError::Invalid(ProtoError::InvalidHostname { .. }))
    ));
    // An agent may not send OPEN.
    let mut bytes = BytesMut::new();
    encode(
        &Frame::Open {
            stream: StreamId(2),
            sni: "a.example".to_owned(),
            client_addr: addr(1),
        },
        &mut bytes,
    )
    .unwrap();
    assert!(matches!(
        p.relay.handle_input(&bytes, p.now),
        Err(ProtoError::UnexpectedFrame { frame: "OPEN", .. })
    ));
}

#[test]
fn go_away_drains_in_flight_streams_and_refuses_new_ones() {
    let mut p = Pair::established(Config::default(), Config::default());
    let a = p.open("a.example");
    let b = p.open("b.example");
    p.agent_events.clear();
    p.relay.go_away(code::NO_ERROR, "relay restarting").unwrap();
    assert_eq!(
        p.relay.open_stream("c.example", addr(1)),
        Err(UsageError::GoingAway)
    );
    p.pump();
    assert_eq!(
        p.agent_events,
        vec![Event::GoAwayReceived {
            last_stream: StreamId(0),
            code: code::NO_ERROR,
            reason: "relay restarting".to_owned()
        }]
    );
    // In-flight streams keep working.
    p.relay.send(a, b"late data").unwrap();
    p.agent.send(b, b"reply").unwrap();
    p.pump();
    assert_eq!(recv_all(&mut p.agent, a).0, b"late data");
    assert_eq!(recv_all(&mut p.relay, b).0, b"reply");
    for id in [a, b] {
        p.relay.finish(id).unwrap();
        p.agent.finish(id).unwrap();
    }
    p.pump();
    assert!(!p.agent.is_closed(), "EOF on a and b not read yet");
    for id in [a, b] {
        assert!(recv_all(&mut p.agent, id).1);
        assert!(recv_all(&mut p.relay, id).1);
    }
    p.pump();
    assert!(p.agent.is_closed() && p.relay.is_closed());
    assert_eq!(p.agent_events.last(), Some(&Event::Closed { error: None }));
    assert_eq!(p.relay_events.last(), Some(&Event::Closed { error: None }));
}

#[test]
fn agent_go_away_refuses_opens_that_cross_it() {
    let mut p = Pair::established(Config::default(), Config::default());
    let a = p.open("a.example");
    p.agent_events.clear();
    p.agent
        .go_away(code::NO_ERROR, "agent shutting down")
        .unwrap();
    // The relay opens one more stream before it sees the GOAWAY.
    let late = p.relay.open_stream("b.example", addr(1)).unwrap();
    p.pump();
    assert!(p.agent_errors.is_empty() && p.relay_errors.is_empty());
    assert!(p.relay_events.contains(&Event::StreamReset {
        stream: late,
        code: code::REFUSED
    }));
    assert!(p.relay_events.contains(&Event::GoAwayReceived {
        last_stream: a,
        code: code::NO_ERROR,
        reason: "agent shutting down".to_owned()
    }));
    assert!(
        !p.agent_events
            .iter()
            .any(|e| matches!(e, Event::StreamOpened { .. }))
    );
    p.relay.reset(a, code::CANCEL).unwrap();
    p.pump();
    assert!(p.agent.is_closed() && p.relay.is_closed());
}

#[test]
fn ping_reports_rtt_with_the_injected_clock() {
    let mut p = Pair::established(Config::default(), Config::default());
    p.agent.ping(p.now).unwrap();
    let mut buf = BytesMut::new();
    p.agent.poll_transmit(&mut buf);
    p.relay.handle_input(&buf, p.now).unwrap();
    p.now += Duration::from_millis(37);
    p.pump();
    assert_eq!(
        p.agent_events,
        vec![Event::Pong {
            rtt: Duration::from_millis(37)
        }]
    );
}

#[test]
fn keepalive_pings_when_idle_and_times_out_a_dead_peer() {
    let cfg = || Config {
        keepalive_interval: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let mut p = Pair::established(cfg(), cfg());
    let start = p.now;
    assert_eq!(
        p.agent.poll_timeout(),
        Some(start + Duration::from_secs(10))
    );
    // Idle for 10 s: the agent pings, the relay answers, and the timer restarts.
    p.now = start + Duration::from_secs(10);
    p.agent.handle_timeout(p.now);
    p.relay.handle_timeout(p.now);
    p.pump();
    assert!(
        p.agent_events
            .iter()
            .any(|e| matches!(e, Event::Pong { .. }))
    );
    assert!(
        p.relay_events
            .iter()
            .any(|e| matches!(e, Event::Pong { .. }))
    );
    assert_eq!(
        p.agent.poll_timeout(),
        Some(p.now + Duration::from_secs(10))
    );
    // Now the relay goes silent (its output is dropped).
    let silent_since = p.now;
    p.now += Duration::from_secs(10);
    p.agent.handle_timeout(p.now);
    let mut out = BytesMut::new();
    assert!(p.agent.poll_transmit(&mut out) > 0, "keepalive ping sent");
    // With a ping outstanding only the dead-peer deadline remains.
    assert_eq!(
        p.agent.poll_timeout(),
        Some(silent_since + Duration::from_secs(30))
    );
    p.now = silent_since + Duration::from_secs(29);
    p.agent.handle_timeout(p.now);
    assert!(!p.agent.is_closed());
    p.now = silent_since + Duration::from_secs(30);
    p.agent.handle_timeout(p.now);
    assert!(p.agent.is_closed());
    assert!(matches!(
        p.agent.poll_event(),
        Some(Event::Closed {
            error: Some(ProtoError::Timeout {
                idle_ms: 30_000,
                phase: "keepalive"
            })
        })
    ));
}

#[test]
fn handshake_times_out_without_hello() {
    let now = Instant::now();
    let cfg = Config {
        keepalive_interval: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let mut relay = Connection::new(Role::Relay, cfg, now).unwrap();
    assert_eq!(relay.poll_timeout(), Some(now + Duration::from_secs(5)));
    relay.handle_timeout(now + Duration::from_secs(4));
    assert!(!relay.is_closed());
    relay.handle_timeout(now + Duration::from_secs(5));
    assert!(matches!(
        relay.poll_event(),
        Some(Event::Closed {
            error: Some(ProtoError::Timeout {
                phase: "handshake",
                ..
            })
        })
    ));
}

#[test]
fn invalid_configs_are_rejected() {
    let now = Instant::now();
    for cfg in [
        Config {
            versions: vec![],
            ..Config::default()
        },
        Config {
            initial_window: 10,
            ..Config::default()
        },
        Config {
            max_streams: 0,
            ..Config::default()
        },
        Config {
            idle_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(2),
            ..Config::default()
        },
        Config {
            agent_name: String::new(),
            ..Config::default()
        },
    ] {
        assert!(matches!(
            Connection::new(Role::Agent, cfg, now),
            Err(UsageError::InvalidConfig(_))
        ));
    }
}

/// xorshift64*: a tiny deterministic generator so failures reproduce from the seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Randomised op sequences: whatever is sent on a stream arrives intact and in order.
#[test]
fn random_op_sequences_preserve_stream_data() {
    let mut verified_bytes = 0u64;
    for seed in 1..=60u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let window = 1024 + rng.below(8192) as u32;
        let queue = 512 + rng.below(20_000) as usize;
        let cfg = |w: u32| Config {
            initial_window: w,
            max_send_queue: queue,
            max_streams: 8,
            ..Config::default()
        };
        let mut p = Pair::established(cfg(window), cfg(2048 + window / 2));
        // Per stream: (bytes sent, bytes received) for each direction; finished flags.
        struct S {
            id: StreamId,
            down_sent: u64,
            down_got: u64,
            up_sent: u64,
            up_got: u64,
            down_fin: bool,
            up_fin: bool,
        }
        let byte = |id: StreamId, dir: u64, pos: u64| {
            (pos.wrapping_mul(2_654_435_761) ^ u64::from(id.0) ^ (dir << 7)) as u8
        };
        let mut streams: Vec<S> = Vec::new();
        for _ in 0..400 {
            match rng.below(10) {
                0 => {
                    if let Ok(id) = p.relay.open_stream("r.example", addr(1)) {
                        streams.push(S {
                            id,
                            down_sent: 0,
                            down_got: 0,
                            up_sent: 0,
                            up_got: 0,
                            down_fin: false,
                            up_fin: false,
                        });
                    }
                }
                1..=3 if !streams.is_empty() => {
                    let i = rng.below(streams.len() as u64) as usize;
                    let len = rng.below(5000);
                    let up = rng.below(2) == 0;
                    let s = &mut streams[i];
                    let (conn, sent, dir, fin) = if up {
                        (&mut p.agent, &mut s.up_sent, 1, s.up_fin)
                    } else {
                        (&mut p.relay, &mut s.down_sent, 0, s.down_fin)
                    };
                    if fin {
                        continue;
                    }
                    let data: Vec<u8> = (*sent..*sent + len).map(|k| byte(s.id, dir, k)).collect();
                    match conn.send(s.id, &data) {
                        Ok(n) => *sent += n as u64,
                        Err(UsageError::UnknownStream(_)) => {}
                        Err(e) => panic!("seed {seed}: send: {e}"),
                    }
                }
                4..=6 if !streams.is_empty() => {
                    let i = rng.below(streams.len() as u64) as usize;
                    let up = rng.below(2) == 0;
                    let max = 1 + rng.below(3000) as usize;
                    let s = &mut streams[i];
                    let (conn, got, dir) = if up {
                        (&mut p.relay, &mut s.up_got, 1)
                    } else {
                        (&mut p.agent, &mut s.down_got, 0)
                    };
                    let mut buf = vec![0u8; max];
                    if let Ok(n) = conn.recv(s.id, &mut buf) {
                        for (k, b) in buf[..n].iter().enumerate() {
                            assert_eq!(
                                *b,
                                byte(s.id, dir, *got + k as u64),
                                "seed {seed}: stream {} dir {dir} byte {}",
                                s.id,
                                *got + k as u64
                            );
                        }
                        *got += n as u64;
                    }
                }
                7 if !streams.is_empty() => {
                    let i = rng.below(streams.len() as u64) as usize;
                    let s = &mut streams[i];
                    if rng.below(2) == 0 {
                        if p.relay.finish(s.id).is_ok() {
                            s.down_fin = true;
                        }
                    } else if p.agent.finish(s.id).is_ok() {
                        s.up_fin = true;
                    }
                }
                _ => p.pump(),
            }
            for c in [&p.agent, &p.relay] {
                assert!(c.pending_output() <= queue + 64 * 1024 + 64);
                for id in c.streams() {
                    assert!(c.recv_buffered(id).unwrap() <= c.config().initial_window as usize);
                }
            }
        }
        // Drain everything that is left and check totals.
        for _ in 0..1000 {
            p.pump();
            let mut progress = false;
            for s in &mut streams {
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = p.agent.recv(s.id, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, byte(s.id, 0, s.down_got + k as u64), "seed {seed}");
                    }
                    s.down_got += n as u64;
                    progress = true;
                }
                while let Ok(n) = p.relay.recv(s.id, &mut buf) {
                    if n == 0 {
                        break;
                    }
                    for (k, b) in buf[..n].iter().enumerate() {
                        assert_eq!(*b, byte(s.id, 1, s.up_got + k as u64), "seed {seed}");
                    }
                    s.up_got += n as u64;
                    progress = true;
                }
            }
            if !progress {
                break;
            }
        }
        // Streams the agent refused (its count can lag the relay's) or that were reset lose
        // in-flight data by design; everything else must arrive in full.
        let reset: Vec<StreamId> = p
            .relay_events
            .iter()
            .chain(&p.agent_events)
            .filter_map(|e| match e {
                Event::StreamReset { stream, .. } => Some(*stream),
                _ => None,
            })
            .collect();
        for s in streams.iter().filter(|s| !reset.contains(&s.id)) {
            assert_eq!(s.down_got, s.down_sent, "seed {seed}: stream {} down", s.id);
            assert_eq!(s.up_got, s.up_sent, "seed {seed}: stream {} up", s.id);
            verified_bytes += s.down_got + s.up_got;
        }
        assert!(
            p.agent_errors.is_empty() && p.relay_errors.is_empty(),
            "seed {seed}"
        );
    }
    assert!(
        verified_bytes > 1_000_000,
        "only {verified_bytes} bytes verified"
    );
}

#[test]
fn reset_after_fin_keeps_the_data_sent_before_the_fin() {
    let mut p = Pair::established(small(4096), small(4096));
    let a = p.open("a.example");
    // The agent answers, shuts down its sending side and closes (FIN, then RESET): the
    // normal end of an HTTP/1.1 `Connection: close` response.
    let body: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(p.agent.send(a, &body).unwrap(), body.len());
    p.agent.finish(a).unwrap();
    p.agent.reset(a, code::CANCEL).unwrap();
    assert_eq!(p.agent.stream_count(), 0);
    p.pump();
    assert!(p.agent_errors.is_empty() && p.relay_errors.is_empty());
    assert!(
        p.relay_events
            .contains(&Event::StreamFinished { stream: a })
    );
    assert!(p.relay_events.contains(&Event::StreamReset {
        stream: a,
        code: code::CANCEL
    }));
    // The peer reads no more: sending is refused, finishing is a no-op.
    assert_eq!(
        p.relay.send(a, b"late"),
        Err(UsageError::StreamReset {
            stream: a,
            code: code::CANCEL
        })
    );
    p.relay.finish(a).unwrap();
    // Every byte up to the FIN is still readable, then end of stream; then it is released.
    assert_eq!(recv_all(&mut p.relay, a), (body, true));
    assert_eq!(p.relay.stream_count(), 0);
    p.pump();
    assert!(p.agent_errors.is_empty() && p.relay_errors.is_empty());

    // Dropping such a stream unread releases it without a frame (the peer forgot it).
    let b = p.open("b.example");
    p.agent.send(b, b"unread").unwrap();
    p.agent.finish(b).unwrap();
    p.agent.reset(b, code::CANCEL).unwrap();
    p.pump();
    assert_eq!(p.relay.recv_buffered(b), Some(6));
    p.relay.reset(b, code::CANCEL).unwrap();
    assert_eq!(p.relay.pending_output(), 0);
    assert_eq!(p.relay.stream_count(), 0);

    // A RESET without a FIN still discards the stream at once.
    let c = p.open("c.example");
    p.agent.send(c, b"cut").unwrap();
    p.agent.reset(c, code::CANCEL).unwrap();
    p.pump();
    assert_eq!(p.relay.stream_count(), 0);
    assert_eq!(
        p.relay.recv(c, &mut [0; 8]),
        Err(UsageError::UnknownStream(c))
    );
}
