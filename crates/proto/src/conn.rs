//! The connection state machine: handshake, stream multiplexing, flow control, keepalive and
//! graceful drain. Sans-IO: feed received bytes to [`Connection::handle_input`], write what
//! [`Connection::poll_transmit`] produces, react to [`Connection::poll_event`], and drive timers
//! with [`Connection::poll_timeout`] / [`Connection::handle_timeout`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};

use crate::error::{ProtoError, UsageError};
use crate::frame::{
    self, Decoder, Frame, Hello, MAX_AGENT_NAME_LEN, MAX_DATA_PAYLOAD, MAX_REASON_LEN, MAX_STREAMS,
    MAX_TOKEN_LEN, MAX_VERSIONS, MAX_WINDOW, MIN_WINDOW, SESSION_ID_LEN, StreamId, Token, Welcome,
    code, reject,
};

/// Control frames (RESET for refused streams, GOAWAY, ...) may push the output buffer this far
/// past [`Config::max_send_queue`] before the connection gives up on a peer that keeps sending
/// while our output is not being drained.
pub const CONTROL_HEADROOM: usize = 64 * 1024;

/// Which end of the relay tunnel this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connects out to the relay, sends HELLO, accepts streams.
    Agent,
    /// Accepts agents, answers WELCOME/REJECT, opens streams (odd ids).
    Relay,
}

/// Connection settings. Both roles use the flow-control, limit and timer fields; `token` and
/// `agent_name` are only sent by the agent.
#[derive(Debug, Clone)]
pub struct Config {
    /// Protocol versions we speak (1..=16 entries). The relay picks the highest common one.
    pub versions: Vec<u16>,
    /// Most concurrent streams: the relay will not open more, the agent refuses more.
    pub max_streams: u32,
    /// Per-stream receive window we grant the peer (= our per-stream receive buffer bound).
    pub initial_window: u32,
    /// Most bytes of DATA `send` will queue in the output buffer before returning short.
    pub max_send_queue: usize,
    /// Send a PING after this long without receiving anything.
    pub keepalive_interval: Duration,
    /// Declare the connection dead after this long without receiving anything (this also
    /// bounds the handshake).
    pub idle_timeout: Duration,
    /// Agent only: credential sent in HELLO.
    pub token: Token,
    /// Agent only: name sent in HELLO.
    pub agent_name: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            versions: vec![1],
            max_streams: 256,
            initial_window: 256 * 1024,
            max_send_queue: 256 * 1024,
            keepalive_interval: Duration::from_secs(15),
            idle_timeout: Duration::from_secs(45),
            token: Token::default(),
            agent_name: "agent".to_owned(),
        }
    }
}

impl Config {
    fn validate(&self, role: Role) -> Result<(), UsageError> {
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return Err(UsageError::InvalidConfig(
                "versions must list between 1 and 16 versions",
            ));
        }
        if self.max_streams == 0 || self.max_streams > MAX_STREAMS {
            return Err(UsageError::InvalidConfig(
                "max_streams must be between 1 and 65536",
            ));
        }
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&self.initial_window) {
            return Err(UsageError::InvalidConfig(
                "initial_window must be between 1024 bytes and 16 MiB",
            ));
        }
        if self.max_send_queue == 0 {
            return Err(UsageError::InvalidConfig("max_send_queue must be non-zero"));
        }
        if self.idle_timeout > Duration::from_secs(86_400) {
            return Err(UsageError::InvalidConfig(
                "idle_timeout must be at most one day",
            ));
        }
        if self.keepalive_interval.is_zero() || self.idle_timeout <= self.keepalive_interval {
            return Err(UsageError::InvalidConfig(
                "keepalive_interval must be non-zero and shorter than idle_timeout",
            ));
        }
        if role == Role::Agent {
            if self.token.len() > MAX_TOKEN_LEN {
                return Err(UsageError::InvalidConfig("token must be at most 4 KiB"));
            }
            if self.agent_name.is_empty() || self.agent_name.len() > MAX_AGENT_NAME_LEN {
                return Err(UsageError::InvalidConfig(
                    "agent_name must be 1..=128 bytes of UTF-8",
                ));
            }
        }
        Ok(())
    }
}

/// Handshake / lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Agent: HELLO sent, waiting for WELCOME or REJECT.
    AwaitingWelcome,
    /// Relay: waiting for the agent's HELLO.
    AwaitingHello,
    /// Relay: HELLO received ([`Event::HelloReceived`]); call [`Connection::accept`] or
    /// [`Connection::reject`].
    AwaitingAccept,
    /// Handshake done; streams may flow.
    Established,
    /// Closed (locally, by the peer, by error or timeout). Drain `poll_transmit` one last time.
    Closed,
}

/// Something the application should react to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Relay: an agent said HELLO. Validate `token` / `agent_name`, then `accept` or `reject`.
    HelloReceived {
        version: u16,
        agent_name: String,
        token: Token,
    },
    /// The handshake completed (agent: WELCOME received; relay: `accept` called).
    HandshakeDone {
        version: u16,
        tunnel_domain: String,
        session_id: [u8; SESSION_ID_LEN],
        max_streams: u32,
    },
    /// Agent: the relay opened a stream for one public connection.
    StreamOpened {
        stream: StreamId,
        sni: String,
        client_addr: SocketAddr,
    },
    /// Data is buffered on the stream; call `recv` until it returns `WouldBlock`.
    StreamReadable { stream: StreamId },
    /// A stream that `send` returned short on can accept data again.
    StreamWritable { stream: StreamId },
    /// The peer half-closed the stream; `recv` returns the rest, then `Ok(0)`.
    StreamFinished { stream: StreamId },
    /// The stream was reset by the peer (or refused by its GOAWAY); it is gone. Exception: a
    /// RESET that arrives after the peer's FIN only means the peer reads no more (it closed
    /// after shutting down its sending side): the stream stays until `recv` has returned the
    /// data the peer sent and then `Ok(0)`; `send` fails with [`UsageError::StreamReset`].
    StreamReset { stream: StreamId, code: u32 },
    /// The peer is draining: no new streams; in-flight ones may finish.
    GoAwayReceived {
        last_stream: StreamId,
        code: u32,
        reason: String,
    },
    /// Answer to our most recent `ping`.
    Pong { rtt: Duration },
    /// The connection is closed. `None` = graceful (drained or locally closed).
    Closed { error: Option<ProtoError> },
}

#[derive(Debug)]
struct Stream {
    /// Bytes we may still send (peer's credit to us).
    send_credit: u32,
    /// We sent FIN.
    send_fin: bool,
    /// Received data not yet read by the application (≤ our initial window).
    recv_buf: BytesMut,
    /// Bytes the peer may still send before we grant more.
    recv_credit: u32,
    /// Bytes the application consumed that have not been returned as credit yet.
    consumed: u32,
    /// Peer sent FIN.
    recv_fin: bool,
    /// `recv` returned `Ok(0)` (application saw end of stream).
    eof_seen: bool,
    /// A `StreamReadable` event is pending since the last `recv`.
    readable_notified: bool,
    /// The peer reset the stream after its FIN (code): it reads no more, but what it sent
    /// before the FIN stays readable.
    peer_reset: Option<u32>,
}

/// One end of an agent↔relay connection.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: Config,
    state: State,
    version: u16,
    /// Peer's per-stream window (our initial send credit per stream).
    peer_window: u32,
    decoder: Decoder,
    out: BytesMut,
    pending_pong: Option<u64>,
    events: VecDeque<Event>,
    streams: BTreeMap<StreamId, Stream>,
    blocked: BTreeSet<StreamId>,
    next_local_stream: u64,
    last_peer_stream: u32,
    local_go_away: bool,
    peer_go_away: bool,
    last_rx: Instant,
    ping_outstanding: Option<(u64, Instant)>,
    next_ping: u64,
}

impl Connection {
    /// Creates a connection. The agent immediately queues its HELLO (see `poll_transmit`).
    /// `now` starts the idle / handshake timer.
    pub fn new(role: Role, config: Config, now: Instant) -> Result<Self, UsageError> {
        config.validate(role)?;
        let mut c = Self {
            role,
            state: match role {
                Role::Agent => State::AwaitingWelcome,
                Role::Relay => State::AwaitingHello,
            },
            version: 0,
            peer_window: 0,
            decoder: Decoder::new(),
            out: BytesMut::new(),
            pending_pong: None,
            events: VecDeque::new(),
            streams: BTreeMap::new(),
            blocked: BTreeSet::new(),
            next_local_stream: match role {
                Role::Relay => 1,
                Role::Agent => 2,
            },
            last_peer_stream: 0,
            local_go_away: false,
            peer_go_away: false,
            last_rx: now,
            ping_outstanding: None,
            next_ping: 1,
            config,
        };
        if role == Role::Agent {
            let hello = Frame::Hello(Hello {
                versions: c.config.versions.clone(),
                initial_window: c.config.initial_window,
                token: c.config.token.clone(),
                agent_name: c.config.agent_name.clone(),
            });
            frame::encode(&hello, &mut c.out)?;
        }
        Ok(c)
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The negotiated protocol version (0 before the handshake).
    pub fn version(&self) -> u16 {
        self.version
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Bytes waiting in the output buffer.
    pub fn pending_output(&self) -> usize {
        self.out.len()
    }

    /// Events not yet taken with `poll_event`.
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// The most events that may queue up before the connection fails with a backlog error.
    pub fn max_pending_events(&self) -> usize {
        4 * self.config.max_streams as usize + 64
    }

    /// Bytes held by the decoder for a partial frame.
    pub fn decoder_buffered(&self) -> usize {
        self.decoder.buffered()
    }

    /// Number of streams currently tracked (open or half-closed).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Ids of all tracked streams.
    pub fn streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.streams.keys().copied()
    }

    /// Received bytes buffered on a stream (always ≤ `config.initial_window`).
    pub fn recv_buffered(&self, stream: StreamId) -> Option<usize> {
        self.streams.get(&stream).map(|s| s.recv_buf.len())
    }

    /// Bytes `send` may currently put on a stream as far as flow control is concerned.
    pub fn send_credit(&self, stream: StreamId) -> Option<u32> {
        self.streams.get(&stream).map(|s| s.send_credit)
    }

    // ----------------------------------------------------------------------------------
    // Output / events / timers
    // ----------------------------------------------------------------------------------

    /// Moves all bytes to be written to the transport into `buf`; returns how many.
    pub fn poll_transmit(&mut self, buf: &mut BytesMut) -> usize {
        if let Some(opaque) = self.pending_pong.take()
            && self.state != State::Closed
        {
            self.push_frame(&Frame::Pong { opaque });
        }
        let n = self.out.len();
        buf.extend_from_slice(&self.out);
        self.out.clear();
        self.wake_writable();
        n
    }

    /// Next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When `handle_timeout` should next be called (`None` once closed).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state == State::Closed {
            return None;
        }
        let dead = self.last_rx + self.config.idle_timeout;
        if self.state == State::Established && self.ping_outstanding.is_none() {
            Some(dead.min(self.last_rx + self.config.keepalive_interval))
        } else {
            Some(dead)
        }
    }

    /// Fires due timers: sends a keepalive PING after `keepalive_interval` of silence and
    /// closes the connection with [`ProtoError::Timeout`] after `idle_timeout`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        let idle = now.saturating_duration_since(self.last_rx);
        if idle >= self.config.idle_timeout {
            let phase = if self.state == State::Established {
                "keepalive"
            } else {
                "handshake"
            };
            self.fail(ProtoError::Timeout {
                idle_ms: idle.as_millis(),
                phase,
            });
            return;
        }
        if self.state == State::Established
            && self.ping_outstanding.is_none()
            && idle >= self.config.keepalive_interval
        {
            self.send_ping(now);
        }
    }

    // ----------------------------------------------------------------------------------
    // Handshake
    // ----------------------------------------------------------------------------------

    /// Relay: accepts the agent after [`Event::HelloReceived`] and sends WELCOME.
    pub fn accept(
        &mut self,
        tunnel_domain: &str,
        session_id: [u8; SESSION_ID_LEN],
    ) -> Result<(), UsageError> {
        if self.role != Role::Relay {
            return Err(UsageError::WrongRole {
                op: "accept an agent",
                allowed: "relay",
            });
        }
        match self.state {
            State::AwaitingAccept => {}
            State::Closed => return Err(UsageError::Closed),
            _ => return Err(UsageError::NotEstablished),
        }
        let welcome = Welcome {
            version: self.version,
            tunnel_domain: tunnel_domain.to_owned(),
            session_id,
            max_streams: self.config.max_streams,
            initial_window: self.config.initial_window,
        };
        frame::encode(&Frame::Welcome(welcome), &mut self.out)?;
        self.state = State::Established;
        self.events.push_back(Event::HandshakeDone {
            version: self.version,
            tunnel_domain: tunnel_domain.to_owned(),
            session_id,
            max_streams: self.config.max_streams,
        });
        Ok(())
    }

    /// Relay: refuses the agent (see [`frame::reject`] for codes) and closes.
    pub fn reject(&mut self, code: u16, reason: &str) -> Result<(), UsageError> {
        if self.role != Role::Relay {
            return Err(UsageError::WrongRole {
                op: "reject an agent",
                allowed: "relay",
            });
        }
        match self.state {
            State::AwaitingAccept | State::AwaitingHello => {}
            State::Closed => return Err(UsageError::Closed),
            _ => return Err(UsageError::NotEstablished),
        }
        frame::encode(
            &Frame::Reject {
                code,
                reason: reason.to_owned(),
            },
            &mut self.out,
        )?;
        self.close_now(None);
        Ok(())
    }

    // ----------------------------------------------------------------------------------
    // Streams
    // ----------------------------------------------------------------------------------

    fn check_established(&self) -> Result<(), UsageError> {
        match self.state {
            State::Established => Ok(()),
            State::Closed => Err(UsageError::Closed),
            _ => Err(UsageError::NotEstablished),
        }
    }

    /// Relay: opens a stream toward the agent for one public connection.
    pub fn open_stream(
        &mut self,
        sni: &str,
        client_addr: SocketAddr,
    ) -> Result<StreamId, UsageError> {
        if self.role != Role::Relay {
            return Err(UsageError::WrongRole {
                op: "open streams",
                allowed: "relay",
            });
        }
        self.check_established()?;
        if self.local_go_away || self.peer_go_away {
            return Err(UsageError::GoingAway);
        }
        if self.streams.len() >= self.config.max_streams as usize {
            return Err(UsageError::TooManyStreams {
                max: self.config.max_streams,
            });
        }
        let id =
            u32::try_from(self.next_local_stream).map_err(|_| UsageError::StreamIdsExhausted)?;
        let stream = StreamId(id);
        frame::encode(
            &Frame::Open {
                stream,
                sni: sni.to_owned(),
                client_addr,
            },
            &mut self.out,
        )?;
        self.next_local_stream += 2;
        self.streams.insert(stream, self.new_stream());
        Ok(stream)
    }

    fn new_stream(&self) -> Stream {
        Stream {
            send_credit: self.peer_window,
            send_fin: false,
            recv_buf: BytesMut::new(),
            recv_credit: self.config.initial_window,
            consumed: 0,
            recv_fin: false,
            eof_seen: false,
            readable_notified: false,
            peer_reset: None,
        }
    }

    /// Queues up to `data.len()` bytes on the stream; returns how many were accepted
    /// (bounded by the peer's credit and by `max_send_queue`). A short count means a
    /// [`Event::StreamWritable`] will follow when more can be sent.
    pub fn send(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, UsageError> {
        self.check_established()?;
        let room = self.config.max_send_queue.saturating_sub(self.out.len());
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(UsageError::UnknownStream(stream))?;
        if let Some(code) = s.peer_reset {
            return Err(UsageError::StreamReset { stream, code });
        }
        if s.send_fin {
            return Err(UsageError::SendAfterFinish(stream));
        }
        let n = data.len().min(s.send_credit as usize).min(room);
        s.send_credit -= n as u32;
        if n < data.len() {
            self.blocked.insert(stream);
        }
        for chunk in data[..n].chunks(MAX_DATA_PAYLOAD) {
            frame::encode_data(stream, chunk, &mut self.out)?;
        }
        Ok(n)
    }

    /// Reads buffered data. `Ok(0)` (with a non-empty `buf`) means the peer finished the
    /// stream and everything was read; `Err(WouldBlock)` means nothing is buffered yet.
    pub fn recv(&mut self, stream: StreamId, buf: &mut [u8]) -> Result<usize, UsageError> {
        if self.state == State::Closed {
            return Err(UsageError::Closed);
        }
        let window = self.config.initial_window;
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(UsageError::UnknownStream(stream))?;
        s.readable_notified = false;
        if s.recv_buf.is_empty() {
            if s.recv_fin {
                s.eof_seen = true;
                self.maybe_remove(stream);
                return Ok(0);
            }
            return Err(UsageError::WouldBlock(stream));
        }
        let n = buf.len().min(s.recv_buf.len());
        buf[..n].copy_from_slice(&s.recv_buf[..n]);
        s.recv_buf.advance(n);
        s.consumed += n as u32;
        if !s.recv_fin && s.consumed >= window / 2 {
            let increment = s.consumed;
            s.recv_credit += increment;
            s.consumed = 0;
            self.push_frame(&Frame::WindowUpdate { stream, increment });
        }
        Ok(n)
    }

    /// Half-closes our sending side (FIN after all queued data). Idempotent.
    pub fn finish(&mut self, stream: StreamId) -> Result<(), UsageError> {
        self.check_established()?;
        let s = self
            .streams
            .get_mut(&stream)
            .ok_or(UsageError::UnknownStream(stream))?;
        if s.send_fin || s.peer_reset.is_some() {
            // Already finished, or the peer reads no more: nothing to tell it.
            return Ok(());
        }
        s.send_fin = true;
        self.blocked.remove(&stream);
        self.push_frame(&Frame::Fin { stream });
        self.maybe_remove(stream);
        Ok(())
    }

    /// Abruptly closes a stream in both directions (see [`frame::code`]). Data we already
    /// sent and finished with FIN stays readable for the peer (see [`Event::StreamReset`]).
    pub fn reset(&mut self, stream: StreamId, code: u32) -> Result<(), UsageError> {
        self.check_established()?;
        let Some(s) = self.streams.remove(&stream) else {
            return Err(UsageError::UnknownStream(stream));
        };
        self.blocked.remove(&stream);
        // A stream the peer already reset (after its FIN) is gone on its side: no frame.
        if s.peer_reset.is_none() {
            self.push_frame(&Frame::Reset { stream, code });
        }
        self.check_drained();
        Ok(())
    }

    /// Starts a graceful drain (with `code::NO_ERROR`): no new streams either way, in-flight
    /// streams finish, and the connection closes when the last one ends. Any other code is
    /// abortive: the GOAWAY is queued and the connection closes at once. Idempotent.
    pub fn go_away(&mut self, code: u32, reason: &str) -> Result<(), UsageError> {
        self.check_established()?;
        if self.local_go_away {
            return Ok(());
        }
        frame::encode(
            &Frame::GoAway {
                last_stream: StreamId(self.last_peer_stream),
                code,
                reason: reason.to_owned(),
            },
            &mut self.out,
        )?;
        self.local_go_away = true;
        if code != code::NO_ERROR {
            // A GOAWAY with an error code is abortive: the peer closes immediately.
            self.close_now(None);
            return Ok(());
        }
        self.check_drained();
        Ok(())
    }

    /// Sends a PING; the matching PONG yields [`Event::Pong`] with the round-trip time.
    /// At most one PING is in flight: while one is outstanding this does nothing.
    pub fn ping(&mut self, now: Instant) -> Result<(), UsageError> {
        self.check_established()?;
        if self.ping_outstanding.is_none() {
            self.send_ping(now);
        }
        Ok(())
    }

    fn send_ping(&mut self, now: Instant) {
        let opaque = self.next_ping;
        self.next_ping = self.next_ping.wrapping_add(1);
        self.ping_outstanding = Some((opaque, now));
        self.push_frame(&Frame::Ping { opaque });
    }

    // ----------------------------------------------------------------------------------
    // Input
    // ----------------------------------------------------------------------------------

    /// Processes bytes received from the transport (any chunking). A protocol violation
    /// closes the connection (a GOAWAY/REJECT carrying the reason is queued for the peer,
    /// [`Event::Closed`] is emitted) and is returned. Input after close is ignored.
    pub fn handle_input(&mut self, mut data: &[u8], now: Instant) -> Result<(), ProtoError> {
        if self.state == State::Closed {
            return Ok(());
        }
        if !data.is_empty() {
            self.last_rx = now;
        }
        loop {
            let frame = match self.decoder.decode(&mut data) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            };
            if let Err(e) = self.on_frame(frame, now) {
                return Err(self.fail(e));
            }
            if self.state == State::Closed {
                return match self.events.back() {
                    Some(Event::Closed { error: Some(e) }) => Err(e.clone()),
                    _ => Ok(()),
                };
            }
            let max_out = self.config.max_send_queue + CONTROL_HEADROOM;
            if self.out.len() > max_out {
                let len = self.out.len();
                return Err(self.fail(ProtoError::Backlog {
                    what: "output",
                    len,
                    max: max_out,
                }));
            }
            let max_ev = self.max_pending_events();
            if self.events.len() > max_ev {
                let len = self.events.len();
                return Err(self.fail(ProtoError::Backlog {
                    what: "event",
                    len,
                    max: max_ev,
                }));
            }
        }
    }

    fn on_frame(&mut self, f: Frame, now: Instant) -> Result<(), ProtoError> {
        let unexpected = |f: &Frame, state: &'static str| ProtoError::UnexpectedFrame {
            frame: f.name(),
            state,
        };
        match self.state {
            State::AwaitingHello => {
                return match f {
                    Frame::Hello(h) => self.on_hello(h),
                    other => Err(unexpected(&other, "waiting for HELLO")),
                };
            }
            State::AwaitingWelcome => {
                return match f {
                    Frame::Welcome(w) => self.on_welcome(w),
                    Frame::Reject { code, reason } => {
                        self.close_now(Some(ProtoError::Rejected { code, reason }));
                        Ok(())
                    }
                    other => Err(unexpected(&other, "waiting for WELCOME or REJECT")),
                };
            }
            State::AwaitingAccept => {
                return Err(unexpected(&f, "the relay is still validating HELLO"));
            }
            State::Closed => return Ok(()),
            State::Established => {}
        }
        match f {
            Frame::Hello(_) | Frame::Welcome(_) | Frame::Reject { .. } => {
                Err(unexpected(&f, "the handshake is already complete"))
            }
            Frame::Open {
                stream,
                sni,
                client_addr,
            } => self.on_open(stream, sni, client_addr),
            Frame::Data { stream, data } => self.on_data(stream, data),
            Frame::WindowUpdate { stream, increment } => {
                let peer_window = self.peer_window;
                let Some(s) = self.live_stream(stream, "WINDOW_UPDATE")? else {
                    return Ok(());
                };
                let window = u64::from(s.send_credit) + u64::from(increment);
                if window > u64::from(peer_window) {
                    return Err(ProtoError::WindowOverflow {
                        stream,
                        window,
                        max: peer_window,
                    });
                }
                s.send_credit = window as u32;
                self.wake_writable();
                Ok(())
            }
            Frame::Fin { stream } => {
                let Some(s) = self.live_stream(stream, "FIN")? else {
                    return Ok(());
                };
                if s.recv_fin {
                    return Err(ProtoError::AfterFin {
                        frame: "FIN",
                        stream,
                    });
                }
                s.recv_fin = true;
                self.events.push_back(Event::StreamFinished { stream });
                Ok(())
            }
            Frame::Reset { stream, code } => {
                let Some(s) = self.live_stream(stream, "RESET")? else {
                    return Ok(());
                };
                if s.peer_reset.is_some() {
                    // A second RESET changes nothing.
                    return Ok(());
                }
                // A RESET after the peer's FIN is the normal end of a connection that was
                // shut down for writing and then closed (HTTP/1.1 `Connection: close`): the
                // peer will read no more, but everything it sent up to its FIN is ours, as
                // with TCP's shutdown(WR) + close. Frames arrive in order, so that data is all
                // in `recv_buf` already; dropping it would cut the tail off the response.
                // Keep the stream (bounded by our receive window, released when the
                // application reads end-of-stream or drops it) and only refuse further sends.
                // Fixing it here rather than making the closing side linger needs no timer,
                // holds nothing for a peer that never finishes, and works whatever the
                // closing side does.
                if s.recv_fin && !s.eof_seen {
                    s.peer_reset = Some(code);
                    self.blocked.remove(&stream);
                    self.events.push_back(Event::StreamReset { stream, code });
                    return Ok(());
                }
                self.streams.remove(&stream);
                self.blocked.remove(&stream);
                self.events.push_back(Event::StreamReset { stream, code });
                self.check_drained();
                Ok(())
            }
            Frame::Ping { opaque } => {
                self.pending_pong = Some(opaque);
                Ok(())
            }
            Frame::Pong { opaque } => {
                if let Some((want, sent)) = self.ping_outstanding
                    && want == opaque
                {
                    self.ping_outstanding = None;
                    self.events.push_back(Event::Pong {
                        rtt: now.saturating_duration_since(sent),
                    });
                }
                Ok(())
            }
            Frame::GoAway {
                last_stream,
                code,
                reason,
            } => {
                self.peer_go_away = true;
                // Streams we opened above `last_stream` were never seen by the peer.
                let refused: Vec<StreamId> = self
                    .streams
                    .keys()
                    .copied()
                    .filter(|id| self.is_local(*id) && *id > last_stream)
                    .collect();
                for id in refused {
                    self.streams.remove(&id);
                    self.blocked.remove(&id);
                    self.events.push_back(Event::StreamReset {
                        stream: id,
                        code: code::REFUSED,
                    });
                }
                self.events.push_back(Event::GoAwayReceived {
                    last_stream,
                    code,
                    reason: reason.clone(),
                });
                if code != code::NO_ERROR {
                    // An error GOAWAY means the peer has already closed its side.
                    self.close_now(Some(ProtoError::PeerError { code, reason }));
                    return Ok(());
                }
                self.check_drained();
                Ok(())
            }
        }
    }

    fn on_hello(&mut self, h: Hello) -> Result<(), ProtoError> {
        let Some(version) = h
            .versions
            .iter()
            .copied()
            .filter(|v| self.config.versions.contains(v))
            .max()
        else {
            let err = ProtoError::NoCommonVersion {
                ours: self.config.versions.clone(),
                theirs: h.versions,
            };
            let reject = Frame::Reject {
                code: reject::UNSUPPORTED_VERSION,
                reason: truncate_reason(&err.to_string()),
            };
            self.push_frame(&reject);
            self.close_now(Some(err));
            return Ok(());
        };
        self.version = version;
        self.peer_window = h.initial_window;
        self.state = State::AwaitingAccept;
        self.events.push_back(Event::HelloReceived {
            version,
            agent_name: h.agent_name,
            token: h.token,
        });
        Ok(())
    }

    fn on_welcome(&mut self, w: Welcome) -> Result<(), ProtoError> {
        if !self.config.versions.contains(&w.version) {
            return Err(ProtoError::NoCommonVersion {
                ours: self.config.versions.clone(),
                theirs: vec![w.version],
            });
        }
        self.version = w.version;
        self.peer_window = w.initial_window;
        self.state = State::Established;
        self.events.push_back(Event::HandshakeDone {
            version: w.version,
            tunnel_domain: w.tunnel_domain,
            session_id: w.session_id,
            max_streams: w.max_streams,
        });
        Ok(())
    }

    fn on_open(
        &mut self,
        stream: StreamId,
        sni: String,
        client_addr: SocketAddr,
    ) -> Result<(), ProtoError> {
        if self.role != Role::Agent {
            return Err(ProtoError::UnexpectedFrame {
                frame: "OPEN",
                state: "acting as relay (only the relay opens streams)",
            });
        }
        if stream.0.is_multiple_of(2) {
            return Err(ProtoError::BadStreamId {
                frame: "OPEN",
                id: stream.0,
                reason: "but relay-opened streams must be odd",
            });
        }
        if stream.0 <= self.last_peer_stream {
            return Err(ProtoError::BadStreamId {
                frame: "OPEN",
                id: stream.0,
                reason: "but new stream ids must increase",
            });
        }
        self.last_peer_stream = stream.0;
        if self.local_go_away
            || self.peer_go_away
            || self.streams.len() >= self.config.max_streams as usize
        {
            self.push_frame(&Frame::Reset {
                stream,
                code: code::REFUSED,
            });
            return Ok(());
        }
        let s = self.new_stream();
        self.streams.insert(stream, s);
        self.events.push_back(Event::StreamOpened {
            stream,
            sni,
            client_addr,
        });
        Ok(())
    }

    fn on_data(&mut self, stream: StreamId, data: Bytes) -> Result<(), ProtoError> {
        let Some(s) = self.live_stream(stream, "DATA")? else {
            return Ok(());
        };
        if s.recv_fin {
            return Err(ProtoError::AfterFin {
                frame: "DATA",
                stream,
            });
        }
        if data.len() > s.recv_credit as usize {
            return Err(ProtoError::FlowControl {
                stream,
                len: data.len(),
                credit: s.recv_credit,
            });
        }
        if data.is_empty() {
            return Ok(());
        }
        s.recv_credit -= data.len() as u32;
        s.recv_buf.extend_from_slice(&data);
        if !s.readable_notified {
            s.readable_notified = true;
            self.events.push_back(Event::StreamReadable { stream });
        }
        Ok(())
    }

    fn is_local(&self, id: StreamId) -> bool {
        match self.role {
            Role::Relay => !id.0.is_multiple_of(2),
            Role::Agent => id.0.is_multiple_of(2),
        }
    }

    /// Looks up a stream a frame refers to. `Ok(None)` for a stream that existed and is
    /// gone (late frames after a reset are normal); an error for one that never existed.
    fn live_stream(
        &mut self,
        id: StreamId,
        frame: &'static str,
    ) -> Result<Option<&mut Stream>, ProtoError> {
        let existed = if self.is_local(id) {
            u64::from(id.0) < self.next_local_stream
        } else {
            id.0 <= self.last_peer_stream
        };
        if !existed {
            return Err(ProtoError::BadStreamId {
                frame,
                id: id.0,
                reason: "but no such stream was ever opened",
            });
        }
        Ok(self.streams.get_mut(&id))
    }

    // ----------------------------------------------------------------------------------
    // Helpers
    // ----------------------------------------------------------------------------------

    fn push_frame(&mut self, f: &Frame) {
        // Frames built here come from validated state; encoding them cannot fail. If it
        // ever did, dropping the frame is safer than panicking.
        let _ = frame::encode(f, &mut self.out);
    }

    fn wake_writable(&mut self) {
        if self.blocked.is_empty() || self.out.len() >= self.config.max_send_queue {
            return;
        }
        let ready: Vec<StreamId> = self
            .blocked
            .iter()
            .copied()
            .filter(|id| self.streams.get(id).is_none_or(|s| s.send_credit > 0))
            .collect();
        for id in ready {
            self.blocked.remove(&id);
            if self.streams.contains_key(&id) {
                self.events.push_back(Event::StreamWritable { stream: id });
            }
        }
    }

    fn maybe_remove(&mut self, id: StreamId) {
        if let Some(s) = self.streams.get(&id)
            && (s.send_fin || s.peer_reset.is_some())
            && s.recv_fin
            && s.eof_seen
        {
            self.streams.remove(&id);
            self.blocked.remove(&id);
            self.check_drained();
        }
    }

    fn check_drained(&mut self) {
        if (self.local_go_away || self.peer_go_away)
            && self.streams.is_empty()
            && self.state == State::Established
        {
            self.close_now(None);
        }
    }

    fn close_now(&mut self, error: Option<ProtoError>) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.streams.clear();
        self.blocked.clear();
        self.pending_pong = None;
        self.ping_outstanding = None;
        self.events.push_back(Event::Closed { error });
    }

    /// Closes the connection because of `err`, telling the peer why.
    fn fail(&mut self, err: ProtoError) -> ProtoError {
        if self.state == State::Closed {
            return err;
        }
        let reason = truncate_reason(&err.to_string());
        let wire = match (&self.state, self.role) {
            (State::Established, _) => Some(Frame::GoAway {
                last_stream: StreamId(self.last_peer_stream),
                code: match err {
                    ProtoError::FlowControl { .. } | ProtoError::WindowOverflow { .. } => {
                        code::FLOW_CONTROL_ERROR
                    }
                    ProtoError::Timeout { .. } => code::TIMEOUT,
                    _ => code::PROTOCOL_ERROR,
                },
                reason,
            }),
            (State::AwaitingHello | State::AwaitingAccept, Role::Relay) => Some(Frame::Reject {
                code: reject::PROTOCOL_ERROR,
                reason,
            }),
            _ => None,
        };
        if let Some(f) = wire {
            self.push_frame(&f);
        }
        self.close_now(Some(err.clone()));
        err
    }
}

fn truncate_reason(s: &str) -> String {
    let mut end = s.len().min(MAX_REASON_LEN);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}
