//! The tray's connection to the agent, without any UI types.
//!
//! [`Link::start`] runs on a tokio runtime the shell owns. It attaches to an
//! agent already running for the same `AIRLOCK_HOME` (found through
//! `run/agent.json`, like the CLI), or runs the agent in-process
//! ([`airlock_agent::run`], the same code as `airlock up`). While connected
//! it follows the agent's event stream (`GET /v1/events`) and refetches the
//! agent's state after every event, publishing a [`TrayState`] on a watch
//! channel and [`Notice`]s for the transitions worth a notification. The
//! shell sends user intents (expose, sandbox, login link) as [`Intent`]s.
//!
//! [`Link::shutdown`] stops the tray's own agent gracefully (requests drain,
//! children stop, the runtime file goes away); an attached agent is left
//! running.

use std::time::Duration;

use airlock_agent::client::{ClientError, ControlClient};
use airlock_agent::{AgentError, AgentOptions, AirlockHome};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_util::sync::CancellationToken;

use crate::menu::{AgentStatus, TrayState, TunnelStatus};
use crate::snapshot::{self, APPROVALS_PATH, Documents, Notice, OAUTH_EVENTS_PATH, SANDBOX_PATH};
use crate::sse::SseParser;

/// Events arriving this close together cause one refetch.
const DEBOUNCE: Duration = Duration::from_millis(150);
/// The agent sends a keep-alive every 15 s; a silent stream this long is dead.
const STREAM_IDLE: Duration = Duration::from_secs(45);
/// cloudflared's state has no event yet: refetch this often while a tunnel is
/// configured, so a lost tunnel is noticed.
const TUNNEL_REFRESH: Duration = Duration::from_secs(30);
/// How long "Quit" waits for the in-process agent to drain.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);
/// Longest wait between attempts to reach or restart the agent.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Queued notifications beyond this are dropped (the state still shows them).
const NOTICE_QUEUE: usize = 32;
/// Queued user intents beyond this are refused.
const INTENT_QUEUE: usize = 32;

/// How the tray finds its agent.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The agent's home (`AIRLOCK_HOME`).
    pub home: AirlockHome,
    /// Run the agent in-process when none runs for `home`. `false`: only
    /// attach (and wait for one to appear).
    pub start_agent: bool,
    /// Options of the in-process agent other than `home` (discovery
    /// environment, gateway port, keystore choice).
    pub agent: AgentTuning,
}

/// Settings of the in-process agent (`airlock up` flags).
#[derive(Debug, Clone, Default)]
pub struct AgentTuning {
    /// `--gateway-port`.
    pub gateway_port: Option<u16>,
    /// Where discovery looks; `None` = this process's HOME and environment.
    pub discovery_env: Option<airlock_discovery::DiscoveryEnv>,
}

/// What the shell asks the link to do.
#[derive(Debug)]
pub enum Intent {
    /// Expose the server with this id.
    Expose(String),
    /// Stop exposing the server with this id.
    Unexpose(String),
    /// Switch local sandbox execution on or off.
    SetSandbox(bool),
    /// A one-time login link for the web UI (`POST /v1/ui/code`), as
    /// `airlock ui` gets it.
    LoginUrl(oneshot::Sender<Result<String, LinkError>>),
    /// The "Start at login" state to show (`None`: not available).
    Autostart(Option<bool>),
}

/// Why an intent failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// No agent is reachable right now.
    #[error("the Airlock agent is not running")]
    NotRunning,
    /// The agent refused or failed the request.
    #[error("{0}")]
    Agent(String),
    /// The link has stopped (the tray is quitting).
    #[error("the tray is shutting down")]
    Closed,
}

/// Handle of a running link.
#[derive(Debug)]
pub struct Link {
    intents: mpsc::Sender<Intent>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// What a running link publishes.
#[derive(Debug)]
pub struct LinkOutput {
    /// The current tray state (starts at "connecting").
    pub state: watch::Receiver<TrayState>,
    /// Notifications to show, in order.
    pub notices: mpsc::Receiver<Notice>,
}

impl Link {
    /// Starts the link on `runtime`.
    pub fn start(opts: LinkOptions, runtime: &tokio::runtime::Handle) -> (Link, LinkOutput) {
        let initial = TrayState {
            agent: AgentStatus::Connecting,
            ..TrayState::default()
        };
        let (state_tx, state_rx) = watch::channel(initial);
        let (notice_tx, notice_rx) = mpsc::channel(NOTICE_QUEUE);
        let (intent_tx, intent_rx) = mpsc::channel(INTENT_QUEUE);
        let shutdown = CancellationToken::new();
        let driver = Driver {
            opts,
            state: state_tx,
            notices: notice_tx,
            intents: intent_rx,
            shutdown: shutdown.clone(),
            own: None,
            autostart: None,
        };
        let task = runtime.spawn(driver.run());
        (
            Link {
                intents: intent_tx,
                shutdown,
                task,
            },
            LinkOutput {
                state: state_rx,
                notices: notice_rx,
            },
        )
    }

    /// Sends an intent without waiting (refused when the queue is full).
    pub fn send(&self, intent: Intent) -> Result<(), LinkError> {
        self.intents.try_send(intent).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                LinkError::Agent("too many requests are waiting; try again".to_owned())
            }
            mpsc::error::TrySendError::Closed(_) => LinkError::Closed,
        })
    }

    /// A one-time login link for the web UI.
    pub async fn login_url(&self) -> Result<String, LinkError> {
        let (tx, rx) = oneshot::channel();
        self.send(Intent::LoginUrl(tx))?;
        rx.await.map_err(|_| LinkError::Closed)?
    }

    /// Stops following the agent; stops the tray's own agent gracefully and
    /// waits (bounded) until it has drained.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }

    /// A token cancelled when shutdown starts.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// The agent running inside this process.
struct OwnAgent {
    stop: CancellationToken,
    task: JoinHandle<Result<(), AgentError>>,
}

struct Driver {
    opts: LinkOptions,
    state: watch::Sender<TrayState>,
    notices: mpsc::Sender<Notice>,
    intents: mpsc::Receiver<Intent>,
    shutdown: CancellationToken,
    own: Option<OwnAgent>,
    autostart: Option<bool>,
}

/// How a connected session ended.
enum SessionEnd {
    Shutdown,
    Lost(String),
}

impl Driver {
    fn publish(&self, mut next: TrayState) {
        next.autostart = self.autostart;
        let prev = self.state.borrow().clone();
        for notice in snapshot::notices(&prev, &next) {
            tracing::info!(kind = ?notice.kind, "{}", notice.title);
            if self.notices.try_send(notice).is_err() {
                tracing::warn!("notification queue full; dropping a notification");
            }
        }
        self.state.send_if_modified(|current| {
            if *current == next {
                false
            } else {
                *current = next;
                true
            }
        });
    }

    /// The last known state with another agent status (servers stay listed,
    /// greyed out, while the agent is away).
    fn publish_status(&self, agent: AgentStatus) {
        let mut next = self.state.borrow().clone();
        if !agent.is_connected() {
            next.tunnel = TunnelStatus::NotConfigured;
            next.approvals = None;
        }
        next.agent = agent;
        self.publish(next);
    }

    async fn run(mut self) {
        let mut backoff = Duration::from_millis(500);
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            match ControlClient::connect(&self.opts.home) {
                Ok(client) => {
                    let attached = self
                        .opts
                        .home
                        .read_runtime()
                        .is_none_or(|info| info.pid != std::process::id());
                    let started = Instant::now();
                    match self.session(client, attached).await {
                        SessionEnd::Shutdown => break,
                        SessionEnd::Lost(why) => {
                            tracing::warn!("lost the agent: {why}");
                            self.publish_status(AgentStatus::Connecting);
                            if started.elapsed() > Duration::from_secs(10) {
                                backoff = Duration::from_millis(500);
                            }
                        }
                    }
                }
                Err(ClientError::NotRunning { .. }) => {
                    if let Some(done) = self.own_agent_result().await {
                        match done {
                            Err(AgentError::AlreadyRunning { pid, .. }) => {
                                tracing::info!(pid, "another agent started first; attaching");
                                continue;
                            }
                            Err(e) => {
                                tracing::error!("the agent stopped: {e}");
                                self.publish_status(AgentStatus::Failed {
                                    reason: e.to_string(),
                                });
                                backoff = (backoff * 2).min(MAX_BACKOFF);
                            }
                            Ok(()) => self.publish_status(AgentStatus::NotRunning),
                        }
                    } else if self.own.is_none() && self.opts.start_agent {
                        self.start_own_agent();
                        // Poll quickly for its runtime file while it starts.
                        if !self.wait(Duration::from_millis(100)).await {
                            break;
                        }
                        continue;
                    } else if self.own.is_some() {
                        // Starting: the runtime file appears once it is ready.
                        if !self.wait(Duration::from_millis(100)).await {
                            break;
                        }
                        continue;
                    } else {
                        self.publish_status(AgentStatus::NotRunning);
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot connect to the agent: {e}");
                    self.publish_status(AgentStatus::Connecting);
                }
            }
            if !self.wait(backoff).await {
                break;
            }
            backoff = (backoff * 2).min(Duration::from_secs(5)).max(backoff);
        }
        self.stop().await;
    }

    /// Waits `delay`, answering intents meanwhile; `false` on shutdown.
    async fn wait(&mut self, delay: Duration) -> bool {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return false,
                _ = sleep_until(deadline) => return true,
                intent = self.intents.recv() => match intent {
                    Some(intent) => self.refuse(intent),
                    None => return false,
                },
            }
        }
    }

    /// Answers an intent that needs an agent while none is connected.
    fn refuse(&mut self, intent: Intent) {
        match intent {
            Intent::LoginUrl(reply) => {
                let _ = reply.send(Err(LinkError::NotRunning));
            }
            Intent::Autostart(on) => {
                self.autostart = on;
                let current = self.state.borrow().clone();
                self.publish(current);
            }
            other => {
                tracing::warn!("{other:?}: the agent is not running");
                // Redraw: a native check item flips its mark on click.
                self.state.send_modify(|_| {});
            }
        }
    }

    fn start_own_agent(&mut self) {
        tracing::info!(home = %self.opts.home.root().display(), "starting the agent in-process");
        // After a failure the reason stays up while it retries.
        if !matches!(self.state.borrow().agent, AgentStatus::Failed { .. }) {
            self.publish_status(AgentStatus::Connecting);
        }
        let stop = CancellationToken::new();
        let opts = AgentOptions {
            home: self.opts.home.clone(),
            gateway_port: self.opts.agent.gateway_port,
            discovery_env: self.opts.agent.discovery_env.clone(),
            keystore: None,
        };
        let task = tokio::spawn(airlock_agent::run(opts, stop.clone()));
        self.own = Some(OwnAgent { stop, task });
    }

    /// The result of the in-process agent, if it has finished.
    async fn own_agent_result(&mut self) -> Option<Result<(), AgentError>> {
        if !self.own.as_ref().is_some_and(|own| own.task.is_finished()) {
            return None;
        }
        let own = self.own.take()?;
        Some(match own.task.await {
            Ok(result) => result,
            Err(join) => Err(AgentError::Invalid(format!(
                "the agent task failed: {join}"
            ))),
        })
    }

    async fn stop(&mut self) {
        if let Some(own) = self.own.take() {
            self.publish_status(AgentStatus::Stopping);
            own.stop.cancel();
            match timeout(SHUTDOWN_GRACE, own.task).await {
                Ok(Ok(Ok(()))) => tracing::info!("the agent stopped"),
                Ok(Ok(Err(e))) => tracing::warn!("the agent stopped with an error: {e}"),
                Ok(Err(e)) => tracing::warn!("the agent task failed: {e}"),
                Err(_) => tracing::warn!(
                    "the agent did not stop within {}s; exiting anyway",
                    SHUTDOWN_GRACE.as_secs()
                ),
            }
        }
        self.publish_status(AgentStatus::NotRunning);
    }

    async fn fetch(&self, client: &ControlClient) -> Result<Documents, ClientError> {
        let optional = |r: Result<Value, ClientError>| match r {
            Ok(v) => Ok(Some(v)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        };
        let (status, servers, approvals, sandbox) = tokio::join!(
            client.get("/v1/status"),
            client.get("/v1/servers"),
            client.get(APPROVALS_PATH),
            client.get(SANDBOX_PATH),
        );
        Ok(Documents {
            status: status?,
            servers: servers?,
            approvals: optional(approvals)?,
            sandbox: optional(sandbox)?,
        })
    }

    async fn refresh(&self, client: &ControlClient, attached: bool) -> Result<(), String> {
        let docs = self.fetch(client).await.map_err(|e| e.to_string())?;
        self.publish(snapshot::tray_state(&docs, attached, self.autostart));
        Ok(())
    }

    async fn session(&mut self, client: ControlClient, attached: bool) -> SessionEnd {
        let Some(info) = self.opts.home.read_runtime() else {
            return SessionEnd::Lost("the runtime file disappeared".to_owned());
        };
        let http = match reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
        {
            Ok(http) => http,
            Err(e) => return SessionEnd::Lost(format!("HTTP client: {e}")),
        };
        let open = |path: &str| {
            http.get(format!("{}{path}", info.api_url))
                .bearer_auth(&info.token)
                .header("Accept", "text/event-stream")
                .send()
        };
        let mut response = match open("/v1/events").await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => return SessionEnd::Lost(format!("event stream answered {}", r.status())),
            Err(e) => return SessionEnd::Lost(format!("event stream: {e}")),
        };
        // Approvals raised and decided, where the agent has the OAuth server.
        let mut oauth = match open(OAUTH_EVENTS_PATH).await {
            Ok(r) if r.status().is_success() => Some(r),
            _ => None,
        };
        tracing::info!(api = %info.api_url, attached, oauth_events = oauth.is_some(), "following the agent's events");
        if let Err(e) = self.refresh(&client, attached).await {
            return SessionEnd::Lost(e);
        }

        let mut parser = SseParser::default();
        let mut oauth_parser = SseParser::default();
        let mut dirty_at: Option<Instant> = None;
        let mut idle_deadline = Instant::now() + STREAM_IDLE;
        let mut tunnel_deadline = Instant::now() + TUNNEL_REFRESH;
        loop {
            let own_done = self.own.as_ref().is_some_and(|o| o.task.is_finished());
            if own_done {
                return SessionEnd::Lost("the agent stopped".to_owned());
            }
            let refresh_at = dirty_at.unwrap_or(idle_deadline + STREAM_IDLE);
            let tunnel = !matches!(self.state.borrow().tunnel, TunnelStatus::NotConfigured);
            tokio::select! {
                _ = self.shutdown.cancelled() => return SessionEnd::Shutdown,
                chunk = response.chunk() => match chunk {
                    Ok(Some(bytes)) => {
                        idle_deadline = Instant::now() + STREAM_IDLE;
                        match parser.feed(&bytes) {
                            Ok(events) => {
                                for data in events {
                                    tracing::debug!(event = %data, "agent event");
                                    dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                                }
                            }
                            Err(e) => return SessionEnd::Lost(e.to_string()),
                        }
                    }
                    Ok(None) => return SessionEnd::Lost("the event stream ended".to_owned()),
                    Err(e) => return SessionEnd::Lost(format!("event stream: {e}")),
                },
                chunk = next_chunk(&mut oauth), if oauth.is_some() => match chunk {
                    Ok(Some(data)) => match oauth_parser.feed(&data) {
                        Ok(events) if !events.is_empty() => {
                            dirty_at.get_or_insert(Instant::now() + DEBOUNCE);
                        }
                        Ok(_) => {}
                        Err(e) => return SessionEnd::Lost(e.to_string()),
                    },
                    Ok(None) => return SessionEnd::Lost("the OAuth event stream ended".to_owned()),
                    Err(e) => return SessionEnd::Lost(format!("OAuth event stream: {e}")),
                },
                _ = sleep_until(refresh_at), if dirty_at.is_some() => {
                    dirty_at = None;
                    if let Err(e) = self.refresh(&client, attached).await {
                        return SessionEnd::Lost(e);
                    }
                }
                _ = sleep_until(tunnel_deadline), if tunnel => {
                    tunnel_deadline = Instant::now() + TUNNEL_REFRESH;
                    if let Err(e) = self.refresh(&client, attached).await {
                        return SessionEnd::Lost(e);
                    }
                }
                _ = sleep_until(idle_deadline) => {
                    return SessionEnd::Lost(format!("no event or keep-alive for {}s", STREAM_IDLE.as_secs()));
                }
                _ = sleep(Duration::from_secs(1)), if self.own.is_some() => {
                    // Re-check whether the in-process agent is still alive.
                }
                intent = self.intents.recv() => {
                    let Some(intent) = intent else { return SessionEnd::Shutdown };
                    if self.act(&client, intent).await {
                        dirty_at.get_or_insert(Instant::now());
                    }
                }
            }
        }
    }

    /// Carries out an intent; `true` when the agent's state may have changed.
    async fn act(&mut self, client: &ControlClient, intent: Intent) -> bool {
        let (what, result) = match intent {
            Intent::LoginUrl(reply) => {
                let url = client
                    .post("/v1/ui/code", &json!({}))
                    .await
                    .map_err(|e| LinkError::Agent(e.to_string()))
                    .and_then(|v| {
                        v.get("url")
                            .and_then(Value::as_str)
                            .map(str::to_owned)
                            .ok_or_else(|| {
                                LinkError::Agent("the agent sent no login link".to_owned())
                            })
                    });
                let _ = reply.send(url);
                return false;
            }
            Intent::Autostart(on) => {
                self.autostart = on;
                let current = self.state.borrow().clone();
                self.publish(current);
                return false;
            }
            Intent::Expose(id) => (
                format!("expose {id}"),
                client
                    .post(&format!("/v1/servers/{}/expose", encode(&id)), &json!({}))
                    .await,
            ),
            Intent::Unexpose(id) => (
                format!("unexpose {id}"),
                client
                    .post(&format!("/v1/servers/{}/unexpose", encode(&id)), &json!({}))
                    .await,
            ),
            Intent::SetSandbox(on) => (
                format!("POST {SANDBOX_PATH} enabled={on}"),
                client.post(SANDBOX_PATH, &json!({ "enabled": on })).await,
            ),
        };
        if let Err(e) = result {
            tracing::warn!("{what}: {e}");
            self.notify_failure(&what, &e.to_string());
        }
        true
    }

    fn notify_failure(&self, what: &str, error: &str) {
        let notice = Notice {
            kind: snapshot::NoticeKind::ActionFailed,
            title: "Airlock: that did not work".to_owned(),
            body: crate::menu::clean(&format!("{what}: {error}")),
        };
        let _ = self.notices.try_send(notice);
    }
}

/// The next chunk of an optional stream (never called on `None`: the select
/// branch is disabled then).
async fn next_chunk(stream: &mut Option<reqwest::Response>) -> reqwest::Result<Option<Vec<u8>>> {
    match stream {
        Some(r) => Ok(r.chunk().await?.map(|b| b.to_vec())),
        None => std::future::pending().await,
    }
}

/// Percent-encodes a path segment (server ids are hex; names are not).
fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(encode("3fa2c1d9e0b7"), "3fa2c1d9e0b7");
        assert_eq!(encode("a b/c?"), "a%20b%2Fc%3F");
        assert_eq!(encode("é"), "%C3%A9");
    }
}
