//! Agent side: connect to relay nodes, keep one connection per node, hand incoming streams to
//! a handler.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use airlock_mux::airlock_proto::{Config, Token};
use airlock_mux::{Incoming, MuxError, MuxHandle, MuxState, MuxStream, Welcome, connect_agent};
use rand::Rng;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::tls::{self, Identity};

/// Agent connection errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to relay {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS with relay {addr} failed (wrong SPKI pin?): {source}")]
    Tls {
        addr: String,
        source: std::io::Error,
    },
    #[error("TLS setup: {0}")]
    Config(#[from] tls::TlsError),
    #[error("relay {addr}: {source}")]
    Mux { addr: String, source: MuxError },
    #[error("connecting to relay {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
}

/// An established connection to one relay node.
#[derive(Debug)]
pub struct RelaySession {
    pub handle: MuxHandle,
    /// Streams the relay opens (one per public connection).
    pub incoming: Incoming,
    /// What the relay said: tunnel domain, session id, limits.
    pub welcome: Welcome,
}

/// Connection options (defaults are fine).
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub agent_name: String,
    pub connect_timeout: Duration,
    pub mux: Config,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            agent_name: "airlock-agent".into(),
            connect_timeout: Duration::from_secs(15),
            mux: Config::default(),
        }
    }
}

/// One-shot connector.
#[derive(Debug)]
pub struct RelayClient;

impl RelayClient {
    /// Dials `addr` (`host:port`), runs TLS 1.3 with `identity` as client certificate and
    /// checks the relay's key against `pinned_spki_sha256` (`None` = accept any relay key;
    /// only for tests or first contact), then HELLO with `token`.
    pub async fn connect(
        addr: &str,
        pinned_spki_sha256: Option<[u8; 32]>,
        token: &str,
        identity: &Identity,
        options: &ClientOptions,
    ) -> Result<RelaySession, ClientError> {
        let cfg = tls::client_config(identity, pinned_spki_sha256)?;
        let connector = TlsConnector::from(Arc::new(cfg));
        let host = addr
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
            .unwrap_or(addr);
        let name = tls::server_name(host);
        let t = options.connect_timeout;
        let timeout = || ClientError::Timeout {
            addr: addr.to_owned(),
            after: t,
        };
        let tcp = tokio::time::timeout(t, TcpStream::connect(addr))
            .await
            .map_err(|_| timeout())?
            .map_err(|source| ClientError::Connect {
                addr: addr.to_owned(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio::time::timeout(t, connector.connect(name, tcp))
            .await
            .map_err(|_| timeout())?
            .map_err(|source| ClientError::Tls {
                addr: addr.to_owned(),
                source,
            })?;
        let mut mux = options.mux.clone();
        mux.token = Token::new(token.trim().as_bytes().to_vec());
        mux.agent_name = options.agent_name.clone();
        let (handle, incoming, welcome) =
            connect_agent(tls, mux, t)
                .await
                .map_err(|source| ClientError::Mux {
                    addr: addr.to_owned(),
                    source,
                })?;
        Ok(RelaySession {
            handle,
            incoming,
            welcome,
        })
    }
}

/// A relay node the agent keeps a connection to.
#[derive(Debug, Clone)]
pub struct RelayNode {
    /// `host:port` of the relay's tunnel listener.
    pub addr: String,
    /// SHA-256 of the relay's tunnel certificate SPKI (`None` = not pinned: insecure).
    pub spki_sha256: Option<[u8; 32]>,
    /// The tunnel token.
    pub token: String,
}

/// Reconnect policy: jittered exponential backoff.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    pub client: ClientOptions,
    /// First retry delay (before jitter).
    pub initial_backoff: Duration,
    /// Longest retry delay.
    pub max_backoff: Duration,
    /// A connection that lived this long resets the backoff.
    pub stable_after: Duration,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            client: ClientOptions::default(),
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(30),
        }
    }
}

/// Per-node connection state (serialises as `{"state": "connected", ...}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeState {
    Connecting,
    Connected {
        tunnel_domain: String,
        /// Unix milliseconds.
        since: u64,
    },
    Backoff {
        /// Unix milliseconds of the next attempt.
        until: u64,
        attempt: u32,
        last_error: String,
    },
    Stopped,
}

/// Status of one configured node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub addr: String,
    #[serde(flatten)]
    pub state: NodeState,
}

/// Keeps one connection per relay node and hands every incoming stream to the handler.
#[derive(Debug)]
pub struct RelayLink {
    status: watch::Receiver<Vec<NodeStatus>>,
    cancel: CancellationToken,
    tracker: TaskTracker,
}

/// Called for each public connection: the stream carries the client's raw TLS bytes.
pub type StreamHandler = Arc<dyn Fn(MuxStream, String, SocketAddr) + Send + Sync>;

impl RelayLink {
    /// Starts one supervisor task per node (must be called inside a tokio runtime).
    pub fn start<H>(
        nodes: Vec<RelayNode>,
        identity: Identity,
        options: LinkOptions,
        handler: H,
    ) -> Self
    where
        H: Fn(MuxStream, String, SocketAddr) + Send + Sync + 'static,
    {
        let handler: StreamHandler = Arc::new(handler);
        let initial = nodes
            .iter()
            .map(|n| NodeStatus {
                addr: n.addr.clone(),
                state: NodeState::Connecting,
            })
            .collect();
        let (tx, rx) = watch::channel(initial);
        let tx = Arc::new(tx);
        let cancel = CancellationToken::new();
        let tracker = TaskTracker::new();
        for (i, node) in nodes.into_iter().enumerate() {
            tracker.spawn(supervise(
                i,
                node,
                identity.clone(),
                options.clone(),
                handler.clone(),
                tx.clone(),
                cancel.clone(),
            ));
        }
        tracker.close();
        Self {
            status: rx,
            cancel,
            tracker,
        }
    }

    /// Watch channel of every node's state (same order as the nodes given to `start`).
    pub fn status(&self) -> watch::Receiver<Vec<NodeStatus>> {
        self.status.clone()
    }

    /// Stops reconnecting and closes every connection (streams error).
    pub async fn stop(self) {
        self.cancel.cancel();
        self.tracker.wait().await;
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn set(tx: &watch::Sender<Vec<NodeStatus>>, i: usize, state: NodeState) {
    tx.send_modify(|v| {
        if let Some(n) = v.get_mut(i) {
            n.state = state;
        }
    });
}

/// Delay before retry number `attempt` (1-based): `initial * 2^(attempt-1)` capped, with
/// "equal jitter" (uniform in [d/2, d]).
pub fn backoff_delay(opts: &LinkOptions, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(20);
    let d = opts
        .initial_backoff
        .saturating_mul(1u32 << exp)
        .min(opts.max_backoff);
    let half = d / 2;
    half + d.saturating_sub(half).mul_f64(rand::rng().random::<f64>())
}

async fn supervise(
    i: usize,
    node: RelayNode,
    identity: Identity,
    opts: LinkOptions,
    handler: StreamHandler,
    tx: Arc<watch::Sender<Vec<NodeStatus>>>,
    cancel: CancellationToken,
) {
    let mut attempt: u32 = 0;
    loop {
        set(&tx, i, NodeState::Connecting);
        let res = tokio::select! {
            _ = cancel.cancelled() => break,
            r = RelayClient::connect(&node.addr, node.spki_sha256, &node.token, &identity, &opts.client) => r,
        };
        let last_error = match res {
            Ok(session) => {
                let started = tokio::time::Instant::now();
                set(
                    &tx,
                    i,
                    NodeState::Connected {
                        tunnel_domain: session.welcome.tunnel_domain.clone(),
                        since: unix_ms(SystemTime::now()),
                    },
                );
                tracing::info!(relay = %node.addr, tunnel = %session.welcome.tunnel_domain, "connected to relay");
                let why = serve(session, &handler, &cancel).await;
                if cancel.is_cancelled() {
                    break;
                }
                if started.elapsed() >= opts.stable_after {
                    attempt = 0;
                }
                tracing::info!(relay = %node.addr, reason = %why, "relay connection ended; reconnecting");
                why
            }
            Err(e) => {
                tracing::info!(relay = %node.addr, error = %e, "relay connection failed");
                e.to_string()
            }
        };
        attempt = attempt.saturating_add(1);
        let delay = backoff_delay(&opts, attempt);
        set(
            &tx,
            i,
            NodeState::Backoff {
                until: unix_ms(SystemTime::now() + delay),
                attempt,
                last_error,
            },
        );
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tokio::time::sleep(delay) => {}
        }
    }
    set(&tx, i, NodeState::Stopped);
}

/// Hands out streams until the connection ends, drains (GOAWAY) or the link stops.
async fn serve(
    mut session: RelaySession,
    handler: &StreamHandler,
    cancel: &CancellationToken,
) -> String {
    let mut state = session.handle.state();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                session.handle.abort();
                return "stopped".into();
            }
            s = session.incoming.recv() => match s {
                Some(s) => handler(s.stream, s.sni, s.client_addr),
                None => break,
            },
            r = state.changed() => {
                if r.is_err() {
                    break;
                }
                let st = state.borrow_and_update().clone();
                match st {
                    // The relay is draining: in-flight streams finish on their own (the
                    // connection stays up until they do), and we reconnect for new ones.
                    MuxState::Draining => return "relay sent GOAWAY".into(),
                    MuxState::Closed(_) => break,
                    _ => {}
                }
            }
        }
    }
    match session.handle.current_state() {
        MuxState::Closed(Some(e)) => e.to_string(),
        MuxState::Closed(None) => "closed".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_jittered_and_grows() {
        let o = LinkOptions::default();
        for _ in 0..200 {
            let d1 = backoff_delay(&o, 1);
            assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(200));
            let d4 = backoff_delay(&o, 4);
            assert!(d4 >= Duration::from_millis(800) && d4 <= Duration::from_millis(1600));
            let big = backoff_delay(&o, 1000);
            assert!(big >= Duration::from_secs(15) && big <= Duration::from_secs(30));
        }
        let spread: std::collections::HashSet<u128> =
            (0..50).map(|_| backoff_delay(&o, 5).as_micros()).collect();
        assert!(spread.len() > 10, "no jitter");
    }

    #[test]
    fn node_state_serialises_for_status() {
        let s = NodeStatus {
            addr: "relay.example:7443".into(),
            state: NodeState::Backoff {
                until: 5,
                attempt: 2,
                last_error: "refused".into(),
            },
        };
        let v = serde_json::to_value(&s).unwrap_or_default();
        assert_eq!(v["state"], "backoff");
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["addr"], "relay.example:7443");
    }
}
