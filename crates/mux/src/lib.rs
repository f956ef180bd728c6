//! Tokio driver for [`airlock_proto`]: the agent↔relay stream multiplexer.
//!
//! One spawned task owns the sans-IO [`Connection`] (behind a short-lived mutex that is never
//! held across an `.await`): it reads the transport into `handle_input`, writes what
//! `poll_transmit` produces, drives the keepalive / idle timers with `tokio::time` (so tests can
//! pause the clock) and dispatches events. Streams are [`MuxStream`]s (`AsyncRead +
//! AsyncWrite`) that call `recv` / `send` on the shared connection directly, so the only
//! buffers are the protocol's own (per-stream receive window, bounded send queue): a slow
//! reader stops granting credit and the writer on the far side waits.
//!
//! * Agent: [`connect_agent`] sends HELLO and waits for WELCOME / REJECT; incoming streams
//!   arrive on [`Incoming`].
//! * Relay: [`accept_agent`] waits for the HELLO and returns a [`PendingAgent`] to
//!   [`accept`](PendingAgent::accept) or [`reject`](PendingAgent::reject); the relay opens
//!   streams with [`MuxHandle::open_stream`].
//! * [`MuxHandle::go_away`] drains gracefully; when the connection closes or the transport
//!   fails every stream errors promptly.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use airlock_proto::frame::{SESSION_ID_LEN, code};
use airlock_proto::{Config, Connection, Event, ProtoError, Role, StreamId, Token, UsageError};
use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{Notify, mpsc, oneshot, watch};

pub use airlock_proto;

/// How long the driver tries to flush its last bytes (REJECT, GOAWAY) after the connection
/// closed before dropping the transport.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Errors of the mux layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MuxError {
    /// The relay refused the agent (bad token, ...).
    #[error("relay rejected the connection (code {code}): {reason}")]
    Rejected { code: u16, reason: String },
    /// The peer violated the protocol, went away with an error or timed out.
    #[error("protocol error: {0}")]
    Protocol(ProtoError),
    /// Reading or writing the transport failed.
    #[error("transport error: {0}")]
    Io(String),
    /// The peer closed the transport without a protocol-level goodbye.
    #[error("the peer closed the connection")]
    PeerClosed,
    /// The connection is closed (gracefully); no new streams.
    #[error("the connection is closed")]
    Closed,
    /// The connection is draining (GOAWAY sent or received); no new streams.
    #[error("the connection is draining (GOAWAY); open the stream on another connection")]
    GoingAway,
    /// A local call could not be honoured (e.g. stream limit reached).
    #[error("{0}")]
    Usage(UsageError),
    /// The handshake did not complete in time.
    #[error("the handshake did not complete within {0:?}")]
    HandshakeTimeout(Duration),
}

impl From<UsageError> for MuxError {
    fn from(e: UsageError) -> Self {
        match e {
            UsageError::GoingAway => MuxError::GoingAway,
            UsageError::Closed => MuxError::Closed,
            other => MuxError::Usage(other),
        }
    }
}

/// Lifecycle of a mux connection, published on a watch channel ([`MuxHandle::state`]).
#[derive(Debug, Clone, PartialEq)]
pub enum MuxState {
    /// HELLO / WELCOME not exchanged yet.
    Handshaking,
    /// Streams may flow.
    Established,
    /// GOAWAY sent or received: in-flight streams finish, no new ones.
    Draining,
    /// Closed; `None` = graceful.
    Closed(Option<CloseError>),
}

/// Why a connection closed (cloneable so it can live in the watch channel).
#[derive(Debug, Clone, PartialEq)]
pub struct CloseError(pub String, pub Option<ProtoError>);

impl std::fmt::Display for CloseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the agent said in its HELLO (relay side).
#[derive(Debug, Clone)]
pub struct AgentHello {
    pub version: u16,
    pub agent_name: String,
    pub token: Token,
}

/// What the relay said in its WELCOME (agent side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    pub version: u16,
    pub tunnel_domain: String,
    pub session_id: [u8; SESSION_ID_LEN],
    pub max_streams: u32,
}

/// A stream the relay opened toward this agent.
#[derive(Debug)]
pub struct IncomingStream {
    pub stream: MuxStream,
    /// SNI of the public connection.
    pub sni: String,
    /// Address of the public client.
    pub client_addr: SocketAddr,
}

/// Agent side: receiver of relay-opened streams. Ends (`None`) when the connection closes.
pub type Incoming = mpsc::Receiver<IncomingStream>;

#[derive(Default)]
struct Slot {
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    reset: Option<u32>,
    /// `recv` returned end of stream (the proto may have released the stream).
    eof: bool,
}

struct Inner {
    conn: Connection,
    slots: HashMap<StreamId, Slot>,
    /// Set once the driver stopped (connection closed or transport failed).
    dead: Option<MuxError>,
    hello_tx: Option<oneshot::Sender<AgentHello>>,
    welcome: Option<Welcome>,
    incoming_tx: Option<mpsc::Sender<IncomingStream>>,
    /// Streams the relay opened, waiting to be wrapped into `MuxStream`s by the driver.
    opened: Vec<(StreamId, String, SocketAddr)>,
}

struct Shared {
    inner: Mutex<Inner>,
    notify: Notify,
    state: watch::Sender<MuxState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock would be a bug in this crate; keep going with the
        // state as it is rather than poisoning every stream.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Handle to a running mux connection (cheap to clone).
#[derive(Clone)]
pub struct MuxHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MuxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxHandle")
            .field("state", &*self.shared.state.borrow())
            .finish()
    }
}

/// Spawns the driver task for `conn` over `io`.
///
/// Returns the handle plus, for the agent role, the receiver of incoming streams (for the relay
/// it never yields anything). Most callers want [`connect_agent`] / [`accept_agent`] instead.
pub fn spawn<T>(io: T, conn: Connection) -> (MuxHandle, Incoming)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    spawn_inner(io, conn, None)
}

fn spawn_inner<T>(
    io: T,
    conn: Connection,
    hello_tx: Option<oneshot::Sender<AgentHello>>,
) -> (MuxHandle, Incoming)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let cap = (conn.config().max_streams as usize).clamp(1, 4096);
    let (tx, rx) = mpsc::channel(cap);
    let (state, _) = watch::channel(MuxState::Handshaking);
    let shared = Arc::new(Shared {
        inner: Mutex::new(Inner {
            conn,
            slots: HashMap::new(),
            dead: None,
            hello_tx,
            welcome: None,
            incoming_tx: Some(tx),
            opened: Vec::new(),
        }),
        notify: Notify::new(),
        state,
    });
    tokio::spawn(drive(io, shared.clone()));
    (MuxHandle { shared }, rx)
}

/// Agent: spawns the connection (HELLO is sent at once) and waits for WELCOME, REJECT or
/// `timeout`.
pub async fn connect_agent<T>(
    io: T,
    config: Config,
    timeout: Duration,
) -> Result<(MuxHandle, Incoming, Welcome), MuxError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = Connection::new(Role::Agent, config, now())?;
    let (handle, incoming) = spawn(io, conn);
    let mut rx = handle.state();
    let res = tokio::time::timeout(timeout, async {
        loop {
            let st = rx.borrow_and_update().clone();
            match st {
                MuxState::Handshaking => {}
                MuxState::Closed(err) => return Err(close_to_error(err)),
                _ => return Ok(()),
            }
            if rx.changed().await.is_err() {
                return Err(MuxError::Closed);
            }
        }
    })
    .await;
    match res {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            handle.abort();
            return Err(MuxError::HandshakeTimeout(timeout));
        }
    }
    let welcome = handle
        .shared
        .lock()
        .welcome
        .clone()
        .ok_or(MuxError::Closed)?;
    Ok((handle, incoming, welcome))
}

fn close_to_error(err: Option<CloseError>) -> MuxError {
    match err {
        None => MuxError::Closed,
        Some(CloseError(_, Some(ProtoError::Rejected { code, reason }))) => {
            MuxError::Rejected { code, reason }
        }
        Some(CloseError(_, Some(p))) => MuxError::Protocol(p),
        Some(CloseError(msg, None)) => MuxError::Io(msg),
    }
}

/// Relay: an agent whose HELLO arrived; decide with [`accept`](Self::accept) or
/// [`reject`](Self::reject).
#[derive(Debug)]
pub struct PendingAgent {
    handle: MuxHandle,
    pub hello: AgentHello,
}

impl PendingAgent {
    /// Sends WELCOME; streams may be opened on the returned handle.
    pub fn accept(
        self,
        tunnel_domain: &str,
        session_id: [u8; SESSION_ID_LEN],
    ) -> Result<MuxHandle, MuxError> {
        {
            let mut g = self.handle.shared.lock();
            if let Some(e) = &g.dead {
                return Err(e.clone());
            }
            g.conn.accept(tunnel_domain, session_id)?;
        }
        self.handle.shared.notify.notify_one();
        Ok(self.handle)
    }

    /// Sends REJECT (see `airlock_proto::frame::reject` for codes) and waits (bounded) until
    /// it is flushed and the transport closed.
    pub async fn reject(self, code: u16, reason: &str) {
        {
            let mut g = self.handle.shared.lock();
            if g.dead.is_none() {
                let _ = g.conn.reject(code, reason);
            }
        }
        self.handle.shared.notify.notify_one();
        let _ =
            tokio::time::timeout(FINAL_FLUSH + Duration::from_secs(1), self.handle.closed()).await;
    }
}

/// Relay: spawns the connection and waits (at most `timeout`) for the agent's HELLO.
pub async fn accept_agent<T>(
    io: T,
    config: Config,
    timeout: Duration,
) -> Result<PendingAgent, MuxError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = Connection::new(Role::Relay, config, now())?;
    let (hello_tx, hello_rx) = oneshot::channel();
    let (handle, _incoming) = spawn_inner(io, conn, Some(hello_tx));
    match tokio::time::timeout(timeout, hello_rx).await {
        Ok(Ok(hello)) => Ok(PendingAgent { handle, hello }),
        Ok(Err(_)) => {
            let st = handle.shared.state.borrow().clone();
            Err(match st {
                MuxState::Closed(e) => close_to_error(e),
                _ => MuxError::Closed,
            })
        }
        Err(_) => {
            handle.abort();
            Err(MuxError::HandshakeTimeout(timeout))
        }
    }
}

impl MuxHandle {
    /// Relay: opens a stream for one public connection.
    pub fn open_stream(&self, sni: &str, client_addr: SocketAddr) -> Result<MuxStream, MuxError> {
        let id = {
            let mut g = self.shared.lock();
            if let Some(e) = &g.dead {
                return Err(e.clone());
            }
            let id = g.conn.open_stream(sni, client_addr)?;
            g.slots.insert(id, Slot::default());
            id
        };
        self.shared.notify.notify_one();
        Ok(MuxStream {
            shared: self.shared.clone(),
            id,
            finished: false,
        })
    }

    /// Starts a graceful drain: GOAWAY, no new streams either way, the connection closes once
    /// the in-flight streams are done. Idempotent.
    pub fn go_away(&self, reason: &str) {
        {
            let mut g = self.shared.lock();
            if g.dead.is_some() {
                return;
            }
            let _ = g.conn.go_away(code::NO_ERROR, reason);
        }
        self.shared.state.send_if_modified(|s| {
            if *s == MuxState::Established {
                *s = MuxState::Draining;
                true
            } else {
                false
            }
        });
        self.shared.notify.notify_one();
    }

    /// Closes the connection at once (abortive GOAWAY); every stream errors.
    pub fn abort(&self) {
        {
            let mut g = self.shared.lock();
            if g.dead.is_some() {
                return;
            }
            if g.conn.go_away(code::CANCEL, "closed").is_err() {
                // Not established yet: just stop the driver.
                g.kill(
                    MuxError::Closed,
                    Some(CloseError("aborted locally".into(), None)),
                    &self.shared.state,
                );
            }
        }
        self.shared.notify.notify_one();
    }

    /// Watch channel of the connection's lifecycle.
    pub fn state(&self) -> watch::Receiver<MuxState> {
        self.shared.state.subscribe()
    }

    /// Current lifecycle state.
    pub fn current_state(&self) -> MuxState {
        self.shared.state.borrow().clone()
    }

    /// True while new streams can be opened.
    pub fn is_open(&self) -> bool {
        *self.shared.state.borrow() == MuxState::Established
    }

    /// Streams currently alive in the protocol state machine.
    pub fn stream_count(&self) -> usize {
        self.shared.lock().conn.stream_count()
    }

    /// Sends a PING (the RTT is not reported; keepalive runs automatically).
    pub fn ping(&self) {
        let _ = self.shared.lock().conn.ping(now());
        self.shared.notify.notify_one();
    }

    /// Resolves when the connection is closed; `None` = graceful.
    pub async fn closed(&self) -> Option<CloseError> {
        let mut rx = self.shared.state.subscribe();
        loop {
            if let MuxState::Closed(e) = &*rx.borrow_and_update() {
                return e.clone();
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    }
}

impl Inner {
    fn dispatch(&mut self, shared_state: &watch::Sender<MuxState>) {
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::HelloReceived {
                    version,
                    agent_name,
                    token,
                } => {
                    if let Some(tx) = self.hello_tx.take() {
                        let _ = tx.send(AgentHello {
                            version,
                            agent_name,
                            token,
                        });
                    }
                }
                Event::HandshakeDone {
                    version,
                    tunnel_domain,
                    session_id,
                    max_streams,
                } => {
                    self.welcome = Some(Welcome {
                        version,
                        tunnel_domain,
                        session_id,
                        max_streams,
                    });
                    shared_state.send_if_modified(|s| {
                        if *s == MuxState::Handshaking {
                            *s = MuxState::Established;
                            true
                        } else {
                            false
                        }
                    });
                }
                Event::StreamOpened {
                    stream,
                    sni,
                    client_addr,
                } => {
                    // Needs the Arc; handled by the caller via `pending_open`.
                    self.slots.insert(stream, Slot::default());
                    self.pending_open(stream, sni, client_addr);
                }
                Event::StreamReadable { stream } | Event::StreamFinished { stream } => {
                    if let Some(w) = self
                        .slots
                        .get_mut(&stream)
                        .and_then(|s| s.read_waker.take())
                    {
                        w.wake();
                    }
                }
                Event::StreamWritable { stream } => {
                    if let Some(w) = self
                        .slots
                        .get_mut(&stream)
                        .and_then(|s| s.write_waker.take())
                    {
                        w.wake();
                    }
                }
                Event::StreamReset { stream, code } => {
                    if let Some(s) = self.slots.get_mut(&stream) {
                        s.reset = Some(code);
                        wake_slot(s);
                    }
                }
                Event::GoAwayReceived { .. } => {
                    shared_state.send_if_modified(|s| {
                        if *s == MuxState::Established {
                            *s = MuxState::Draining;
                            true
                        } else {
                            false
                        }
                    });
                }
                Event::Pong { .. } => {}
                Event::Closed { error } => {
                    let (dead, close) = match error {
                        None => (MuxError::Closed, None),
                        Some(e) => {
                            let me = match &e {
                                ProtoError::Rejected { code, reason } => MuxError::Rejected {
                                    code: *code,
                                    reason: reason.clone(),
                                },
                                other => MuxError::Protocol(other.clone()),
                            };
                            (me, Some(CloseError(e.to_string(), Some(e))))
                        }
                    };
                    self.kill(dead, close, shared_state);
                }
            }
        }
    }

    fn pending_open(&mut self, stream: StreamId, sni: String, client_addr: SocketAddr) {
        // Streams are materialised by the driver, which owns an Arc (see `drive`).
        self.opened.push((stream, sni, client_addr));
    }

    fn kill(
        &mut self,
        dead: MuxError,
        close: Option<CloseError>,
        shared_state: &watch::Sender<MuxState>,
    ) {
        if self.dead.is_none() {
            self.dead = Some(dead);
        }
        for s in self.slots.values_mut() {
            wake_slot(s);
        }
        self.hello_tx = None;
        self.incoming_tx = None;
        shared_state.send_if_modified(|s| {
            if matches!(s, MuxState::Closed(_)) {
                false
            } else {
                *s = MuxState::Closed(close.clone());
                true
            }
        });
    }
}

fn wake_slot(s: &mut Slot) {
    if let Some(w) = s.read_waker.take() {
        w.wake();
    }
    if let Some(w) = s.write_waker.take() {
        w.wake();
    }
}

async fn drive<T>(io: T, shared: Arc<Shared>)
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(io);
    let mut rbuf = vec![0u8; 32 * 1024];
    let mut out = BytesMut::new();
    loop {
        let (deadline, stop) = {
            let mut g = shared.lock();
            if out.is_empty() {
                g.conn.poll_transmit(&mut out);
            }
            g.dispatch(&shared.state);
            materialise(&mut g, &shared);
            (g.conn.poll_timeout(), g.dead.is_some())
        };
        if stop {
            break;
        }
        let sleep_at = deadline.map(tokio::time::Instant::from_std);
        tokio::select! {
            r = rd.read(&mut rbuf) => match r {
                Ok(0) => {
                    // During a drain the peer closes its transport as soon as its last stream
                    // is released, possibly before we consumed the final FIN ourselves: that
                    // is a graceful end (data already received stays readable).
                    let graceful = *shared.state.borrow() == MuxState::Draining;
                    let close = if graceful {
                        None
                    } else {
                        Some(CloseError("the peer closed the connection".into(), None))
                    };
                    let mut g = shared.lock();
                    g.kill(MuxError::PeerClosed, close, &shared.state);
                }
                Ok(n) => {
                    let mut g = shared.lock();
                    let _ = g.conn.handle_input(&rbuf[..n], now());
                }
                Err(e) => {
                    let mut g = shared.lock();
                    g.kill(
                        MuxError::Io(e.to_string()),
                        Some(CloseError(format!("transport read failed: {e}"), None)),
                        &shared.state,
                    );
                }
            },
            r = wr.write(&out), if !out.is_empty() => match r {
                Ok(0) | Err(_) => {
                    let msg = match r {
                        Err(e) => format!("transport write failed: {e}"),
                        _ => "transport write returned 0".to_owned(),
                    };
                    let mut g = shared.lock();
                    g.kill(MuxError::Io(msg.clone()), Some(CloseError(msg, None)), &shared.state);
                }
                Ok(n) => out.advance(n),
            },
            _ = shared.notify.notified() => {}
            _ = sleep_until_opt(sleep_at) => {
                let mut g = shared.lock();
                g.conn.handle_timeout(now());
            }
        }
    }
    // Last words (REJECT, GOAWAY) are flushed best-effort, bounded.
    {
        let mut g = shared.lock();
        g.conn.poll_transmit(&mut out);
        g.dispatch(&shared.state);
        g.opened.clear();
    }
    let _ = tokio::time::timeout(FINAL_FLUSH, async {
        if !out.is_empty() {
            wr.write_all(&out).await?;
        }
        wr.shutdown().await
    })
    .await;
}

async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn materialise(g: &mut Inner, shared: &Arc<Shared>) {
    for (id, sni, client_addr) in std::mem::take(&mut g.opened) {
        let stream = MuxStream {
            shared: shared.clone(),
            id,
            finished: false,
        };
        let incoming = IncomingStream {
            stream,
            sni,
            client_addr,
        };
        let refused = match &g.incoming_tx {
            Some(tx) => tx.try_send(incoming).err().map(|e| match e {
                mpsc::error::TrySendError::Full(s) | mpsc::error::TrySendError::Closed(s) => s,
            }),
            None => Some(incoming),
        };
        if let Some(mut s) = refused {
            // Nobody accepts streams (or too many queued): refuse. Dropping the MuxStream
            // while holding the lock would deadlock, so reset here and disarm it.
            let _ = g.conn.reset(id, code::REFUSED);
            g.slots.remove(&id);
            s.stream.finished = true;
            s.stream.id = StreamId(0);
        }
    }
}

/// One multiplexed stream: `AsyncRead + AsyncWrite`.
///
/// `shutdown` sends FIN (half close); dropping the stream before both directions finished
/// resets it (`RESET{CANCEL}`). As with TCP, a reset after `shutdown` does not take back what
/// was sent: the peer still reads every byte up to the FIN, then end-of-stream (the reset only
/// tells it we read no more). When the connection dies every pending and future operation
/// fails with an I/O error.
pub struct MuxStream {
    shared: Arc<Shared>,
    id: StreamId,
    /// Disarmed: the stream needs no reset on drop.
    finished: bool,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MuxStream").field("id", &self.id).finish()
    }
}

impl MuxStream {
    /// Protocol stream id.
    pub fn id(&self) -> u32 {
        self.id.0
    }
}

fn dead_err(e: &MuxError) -> io::Error {
    let kind = match e {
        MuxError::Closed => io::ErrorKind::ConnectionAborted,
        MuxError::PeerClosed => io::ErrorKind::ConnectionAborted,
        _ => io::ErrorKind::ConnectionReset,
    };
    io::Error::new(kind, format!("mux connection is gone: {e}"))
}

fn reset_err(code: u32) -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionReset,
        format!("stream reset by peer (code {code})"),
    )
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut g = this.shared.lock();
        let Some(slot) = g.slots.get(&this.id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stream is closed",
            )));
        };
        if slot.eof {
            return Poll::Ready(Ok(()));
        }
        // A reset that followed the peer's FIN leaves the stream in the protocol until we
        // have read what the peer sent: only a stream that is gone reads as reset.
        if let Some(code) = slot.reset
            && g.conn.recv_buffered(this.id).is_none()
        {
            return Poll::Ready(Err(reset_err(code)));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let dead = g.dead.clone();
        let res = g.conn.recv(this.id, buf.initialize_unfilled());
        match res {
            Ok(0) => {
                if let Some(s) = g.slots.get_mut(&this.id) {
                    s.eof = true;
                }
                drop(g);
                this.shared.notify.notify_one();
                Poll::Ready(Ok(()))
            }
            Ok(n) => {
                buf.advance(n);
                drop(g);
                // A WINDOW_UPDATE may be queued.
                this.shared.notify.notify_one();
                Poll::Ready(Ok(()))
            }
            Err(UsageError::WouldBlock(_)) => {
                if let Some(e) = dead {
                    return Poll::Ready(Err(dead_err(&e)));
                }
                if let Some(s) = g.slots.get_mut(&this.id) {
                    s.read_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Err(e) => Poll::Ready(Err(match dead {
                Some(d) => dead_err(&d),
                None => io::Error::new(io::ErrorKind::ConnectionReset, e.to_string()),
            })),
        }
    }
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let mut g = this.shared.lock();
        let Some(slot) = g.slots.get(&this.id) else {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "stream is closed",
            )));
        };
        if let Some(code) = slot.reset {
            return Poll::Ready(Err(reset_err(code)));
        }
        if let Some(e) = &g.dead {
            return Poll::Ready(Err(dead_err(e)));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match g.conn.send(this.id, data) {
            Ok(0) => {
                if let Some(s) = g.slots.get_mut(&this.id) {
                    s.write_waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            Ok(n) => {
                drop(g);
                this.shared.notify.notify_one();
                Poll::Ready(Ok(n))
            }
            Err(UsageError::SendAfterFinish(_)) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            ))),
            Err(e) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                e.to_string(),
            ))),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are already queued in the connection; the driver writes them.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let mut g = this.shared.lock();
        if let Some(slot) = g.slots.get(&this.id)
            && let Some(code) = slot.reset
        {
            // The peer finished before it reset (it only reads no more): there is nothing
            // left to tell it, and a copy loop must not fail while the tail is delivered.
            if slot.eof || g.conn.recv_buffered(this.id).is_some() {
                return Poll::Ready(Ok(()));
            }
            return Poll::Ready(Err(reset_err(code)));
        }
        if let Some(e) = &g.dead {
            return Poll::Ready(Err(dead_err(e)));
        }
        match g.conn.finish(this.id) {
            Ok(()) | Err(UsageError::UnknownStream(_)) => {
                drop(g);
                this.shared.notify.notify_one();
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                e.to_string(),
            ))),
        }
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut g = self.shared.lock();
        g.slots.remove(&self.id);
        if g.dead.is_none() && g.conn.streams().any(|s| s == self.id) {
            let _ = g.conn.reset(self.id, code::CANCEL);
            drop(g);
            self.shared.notify.notify_one();
        }
    }
}
