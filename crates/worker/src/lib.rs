//! Client of Anthropic's self-hosted environment-worker protocol: poll, lease, heartbeat, session
//! events, tool results.
//!
//! [`Worker::run`] long-polls an environment's work queue (`block_ms=999`, `Anthropic-Worker-ID`),
//! acks each item and serves it with [`Worker::handle_item`]: the lease heartbeat starts first
//! (`expected_last_heartbeat`: `NO_HEARTBEAT`, then the server's previous value exactly), the
//! session is fetched, the executor opens its per-session tools, and the session runner attaches
//! to the event stream, reconciles with the event history (no tool runs twice across reconnects)
//! and answers every owned `agent.tool_use` / `agent.custom_tool_use` with a `user.tool_result` /
//! `user.custom_tool_result`. Calls whose `evaluated_permission` is `ask` wait for a
//! `user.tool_confirmation` (only `allow` runs them); `deny` never runs. The item ends when the
//! session terminates, when it stays idle for `max_idle` after a turn ends, when the heartbeat
//! reports `stopping`/`stopped`, or when the lease is lost (412, or no successful heartbeat for a
//! TTL). Teardown closes the tools and force-stops the item unless the lease was lost. Retries and
//! backoff follow the SDKs (see the constants).
//!
//! The per-item `secret` (URL-safe base64 JSON with a `sessions_token`) is preferred as the bearer
//! for that item's calls; the environment key is the fallback and always the poll credential.
//! Neither is ever logged.
//!
//! Tools run through [`ToolExecutor`] / [`SessionTools`]; the worker itself executes nothing. Its
//! state (current session, tool calls in flight, recent calls) is published on a watch channel
//! ([`Worker::status`]).

mod client;
pub mod memory;
mod runner;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use client::{ANTHROPIC_VERSION, ApiClient, ApiError, MANAGED_AGENTS_BETA, MEMORY_BETA};
pub use memory::{DeletionMode, MemoryConfig, MemoryResource, MemoryRoot};

/// Default API base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Poll `block_ms` (the API's cap).
pub const POLL_BLOCK_MS: u64 = 999;
/// Cap of the poll/ack backoff.
pub const POLL_BACKOFF_CAP: Duration = Duration::from_secs(60);
/// Heartbeat interval and lease TTL assumed before the server's first answer.
pub const HEARTBEAT_DEFAULT: Duration = Duration::from_secs(30);
pub const HEARTBEAT_TTL_DEFAULT: Duration = Duration::from_secs(90);
/// Outer per-call timeout (above the bash tool's 120 s default).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(150);
/// Default idle grace after a turn ends.
pub const DEFAULT_MAX_IDLE: Duration = Duration::from_secs(60);
/// Event-stream reconnect backoff.
pub const STREAM_BACKOFF_START: Duration = Duration::from_millis(500);
pub const STREAM_BACKOFF_CAP: Duration = Duration::from_secs(10);
/// Tool-result send backoff cap and retry window before the first heartbeat reports a TTL.
pub const SEND_BACKOFF_CAP: Duration = Duration::from_secs(30);
pub const SEND_RETRY_WINDOW: Duration = Duration::from_secs(300);
/// Recent tool calls kept in the status.
pub const RECENT_CALLS: usize = 50;

/// A credential that never prints.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// How the worker connects and paces itself.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Default [`DEFAULT_BASE_URL`].
    pub base_url: String,
    pub environment_id: String,
    pub environment_key: Secret,
    /// `Anthropic-Worker-ID`; default `<hostname>-<12 hex>`.
    pub worker_id: String,
    /// `None` disables the idle exit.
    pub max_idle: Option<Duration>,
    pub tool_timeout: Duration,
    /// Poll `block_ms`; `None` omits it (non-blocking poll).
    pub poll_block_ms: Option<u64>,
    pub reclaim_older_than_ms: Option<u64>,
    /// Sleep after an empty poll: uniform in this range (SDK: 1–3 s).
    pub empty_poll_sleep: (Duration, Duration),
    /// Timeout of each non-streaming request.
    pub request_timeout: Duration,
    /// Memory stores (`sync_interval: None` runs sessions without them).
    pub memory: MemoryConfig,
}

impl WorkerConfig {
    pub fn new(environment_id: impl Into<String>, environment_key: Secret) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_string(),
            environment_id: environment_id.into(),
            environment_key,
            worker_id: default_worker_id(),
            max_idle: Some(DEFAULT_MAX_IDLE),
            tool_timeout: TOOL_TIMEOUT,
            poll_block_ms: Some(POLL_BLOCK_MS),
            reclaim_older_than_ms: None,
            empty_poll_sleep: (Duration::from_secs(1), Duration::from_secs(3)),
            request_timeout: Duration::from_secs(60),
            memory: MemoryConfig::default(),
        }
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "airlock".to_string());
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}", &hex[..12])
}

/// Result of one tool call: content blocks (`text`, `image`, `document`, `search_result`) and
/// whether it is an error.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolOutput {
    pub content: Vec<Value>,
    pub is_error: bool,
}

impl ToolOutput {
    pub fn text(s: impl Into<String>) -> Self {
        Self {
            content: vec![serde_json::json!({"type": "text", "text": s.into()})],
            is_error: false,
        }
    }
    pub fn error(s: impl Into<String>) -> Self {
        Self {
            content: vec![serde_json::json!({"type": "text", "text": s.into()})],
            is_error: true,
        }
    }
}

/// What the executor learns about a claimed session.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub session_id: String,
    pub work_id: String,
    pub environment_id: String,
    /// The session object from `GET /v1/sessions/{id}` (agent, skills, metadata, resources).
    pub session: Value,
    /// Memory store directories, already downloaded: the tools must see them at these paths
    /// (read-only ones read-only).
    pub memory: Vec<MemoryRoot>,
}

/// Opens the tools of one session. Implemented by the sandbox.
pub trait ToolExecutor: Send + Sync {
    fn open_session(
        &self,
        ctx: SessionContext,
    ) -> BoxFuture<'_, Result<Box<dyn SessionTools>, String>>;
}

/// The tools of one session; calls arrive one at a time.
pub trait SessionTools: Send {
    /// Whether this worker serves `name` (others are left pending for their owner).
    fn owns(&self, name: &str) -> bool;
    /// Runs one call. `cancel` fires on lease loss, stop or shutdown: return promptly.
    fn run_tool<'a>(
        &'a mut self,
        name: &'a str,
        input: &'a Value,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, ToolOutput>;
    /// Teardown (kill shells, remove per-session files).
    fn close(&mut self) -> BoxFuture<'_, ()>;
    /// Unpacks a downloaded skill archive (zip or tar) into `<workdir>/skills/<name>/`, refusing
    /// unsafe members. The default refuses skills.
    fn install_skill<'a>(
        &'a mut self,
        name: &'a str,
        archive: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), String>> {
        let _ = (name, archive);
        Box::pin(async { Err("this executor does not install skills".to_string()) })
    }
}

/// Largest skill archive the worker downloads.
pub const MAX_SKILL_ARCHIVE: usize = 64 * 1024 * 1024;

/// Coarse state of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum WorkerState {
    #[default]
    Starting,
    Polling,
    Serving,
    Stopped,
    Failed,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CurrentItem {
    pub work_id: String,
    pub session_id: String,
    pub since_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallInfo {
    pub tool_use_id: String,
    pub session_id: String,
    pub name: String,
    pub started_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ToolCallRecord {
    pub tool_use_id: String,
    pub session_id: String,
    pub name: String,
    pub is_error: bool,
    /// Whether the result reached the session.
    pub posted: bool,
    /// `allow` / `deny` when the call was gated by a confirmation.
    pub confirmation: Option<String>,
    pub duration_ms: u64,
    pub finished_ms: u64,
}

/// Published on [`Worker::status`].
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct WorkerStatus {
    pub state: WorkerState,
    pub worker_id: String,
    pub current: Option<CurrentItem>,
    pub in_flight: Vec<ToolCallInfo>,
    /// Newest last, at most [`RECENT_CALLS`].
    pub recent: VecDeque<ToolCallRecord>,
    pub items_served: u64,
    pub last_error: Option<String>,
}

/// Errors that end [`Worker::run`].
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("poll rejected by the server ({0}); check the environment id and key")]
    PollRejected(ApiError),
    #[error("cannot set up the HTTP client: {0}")]
    Client(ApiError),
    #[error("worker task failed: {0}")]
    Task(String),
}

/// How an item's lease ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeaseEnd {
    /// The session run ended first (terminated, idle, non-session item).
    RunnerDone,
    /// The heartbeat reported `stopping`/`stopped` or `lease_extended: false`.
    HeartbeatStop,
    /// 412: the item belongs to the queue or another worker.
    LeaseLost,
    /// Another 4xx on the heartbeat.
    HeartbeatRejected,
    /// No successful heartbeat for a whole TTL.
    AssumedLost,
    /// The worker was cancelled.
    Cancelled,
    /// The item failed before or while running (session fetch, executor).
    Failed,
}

impl LeaseEnd {
    pub fn lost(self) -> bool {
        matches!(self, LeaseEnd::LeaseLost | LeaseEnd::AssumedLost)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn jitter(low: Duration, high: Duration) -> Duration {
    if high <= low {
        return low;
    }
    let span = (high - low).as_secs_f64();
    low + Duration::from_secs_f64(rand::random::<f64>() * span)
}

pub(crate) fn backoff(attempt: u32, cap: Duration) -> Duration {
    let secs = 2f64.powi(attempt.min(30) as i32);
    Duration::from_secs_f64(secs.min(cap.as_secs_f64()))
}

/// The per-item sessions token carried in a work item's `secret`, if it decodes.
pub fn sessions_token_from_secret(secret: &str) -> Option<String> {
    let trimmed = secret.trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get("sessions_token")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// Shared lease view of one item (first reason wins).
#[derive(Clone)]
pub(crate) struct Lease {
    reason: Arc<Mutex<Option<LeaseEnd>>>,
    ended: CancellationToken,
    /// Cancelled once the first heartbeat has had its answer (whatever it was): the item's work
    /// waits for it, so the lease is claimed before any download or tool starts.
    first_beat: CancellationToken,
    ttl_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl Lease {
    fn new() -> Self {
        Self {
            reason: Arc::new(Mutex::new(None)),
            ended: CancellationToken::new(),
            first_beat: CancellationToken::new(),
            ttl_ms: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }
    pub(crate) fn finish(&self, r: LeaseEnd) {
        if let Ok(mut g) = self.reason.lock()
            && g.is_none()
        {
            *g = Some(r);
        }
        self.ended.cancel();
    }
    pub(crate) fn reason(&self) -> Option<LeaseEnd> {
        self.reason.lock().ok().and_then(|g| *g)
    }
    pub(crate) fn ended(&self) -> &CancellationToken {
        &self.ended
    }
    /// The send-retry window: the last TTL the server reported, else the default.
    pub(crate) fn send_window(&self) -> Duration {
        match self.ttl_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => SEND_RETRY_WINDOW,
            ms => Duration::from_millis(ms),
        }
    }
}

/// The worker: one environment, one executor.
pub struct Worker {
    cfg: WorkerConfig,
    api: ApiClient,
    executor: Arc<dyn ToolExecutor>,
    status: watch::Sender<WorkerStatus>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A running worker (from [`Worker::spawn`]).
#[derive(Debug)]
pub struct WorkerHandle {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), WorkerError>>,
}

impl WorkerHandle {
    /// Whether the worker stopped on its own (a rejected poll).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker and waits for its teardown.
    pub async fn stop(self) -> Result<(), WorkerError> {
        self.cancel.cancel();
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(WorkerError::Task(e.to_string())),
        }
    }
}

/// A claimed item, as `handle_item` needs it.
#[derive(Clone)]
pub struct WorkItem {
    pub id: String,
    pub environment_id: String,
    pub data_type: String,
    pub data_id: String,
    pub secret: Option<Secret>,
}

impl std::fmt::Debug for WorkItem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkItem")
            .field("id", &self.id)
            .field("data_type", &self.data_type)
            .field("data_id", &self.data_id)
            .finish_non_exhaustive()
    }
}

impl WorkItem {
    /// Reads a work object as the poll returns it.
    pub fn from_json(v: &Value) -> Result<Self, ApiError> {
        let s = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| ApiError::Decode(format!("work item without {p}")))
        };
        Ok(Self {
            id: s("/id")?,
            environment_id: s("/environment_id")?,
            data_type: s("/data/type")?,
            data_id: s("/data/id")?,
            secret: v.get("secret").and_then(Value::as_str).map(Secret::new),
        })
    }
}

impl Worker {
    pub fn new(cfg: WorkerConfig, executor: Arc<dyn ToolExecutor>) -> Result<Self, WorkerError> {
        let api =
            ApiClient::new(&cfg.base_url, cfg.request_timeout).map_err(WorkerError::Client)?;
        let status = watch::Sender::new(WorkerStatus {
            worker_id: cfg.worker_id.clone(),
            ..WorkerStatus::default()
        });
        Ok(Self {
            cfg,
            api,
            executor,
            status,
        })
    }

    /// Live status for the agent / UI.
    pub fn status(&self) -> watch::Receiver<WorkerStatus> {
        self.status.subscribe()
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut WorkerStatus)) {
        self.status.send_modify(f);
    }

    /// Polls and serves items until `cancel` fires (`Ok`) or the poll is rejected for good.
    pub async fn run(&self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let (env, key) = (&self.cfg.environment_id, self.cfg.environment_key.expose());
        let mut poll_attempt = 0u32;
        let mut ack_attempt = 0u32;
        self.update(|s| s.state = WorkerState::Polling);
        tracing::info!(environment_id = %env, worker_id = %self.cfg.worker_id, "worker polling");
        let result = loop {
            if cancel.is_cancelled() {
                break Ok(());
            }
            let polled = tokio::select! {
                _ = cancel.cancelled() => break Ok(()),
                r = self.api.poll(env, key, &self.cfg.worker_id, self.cfg.poll_block_ms, self.cfg.reclaim_older_than_ms) => r,
            };
            let item = match polled {
                Err(e) if e.is_fatal() => {
                    tracing::error!(error = %e, "poll failed permanently");
                    break Err(WorkerError::PollRejected(e));
                }
                Err(e) => {
                    poll_attempt += 1;
                    let wait = backoff(poll_attempt, POLL_BACKOFF_CAP)
                        + jitter(Duration::ZERO, Duration::from_secs(1));
                    tracing::warn!(attempt = poll_attempt, error = %e, "poll failed; backing off {wait:?}");
                    self.update(|s| s.last_error = Some(format!("poll: {e}")));
                    sleep_or_cancel(wait, &cancel).await;
                    continue;
                }
                Ok(None) => {
                    poll_attempt = 0;
                    let (lo, hi) = self.cfg.empty_poll_sleep;
                    sleep_or_cancel(jitter(lo, hi), &cancel).await;
                    continue;
                }
                Ok(Some(v)) => {
                    poll_attempt = 0;
                    v
                }
            };
            let item = match WorkItem::from_json(&item) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!(error = %e, "poll returned an unreadable work item");
                    continue;
                }
            };
            tracing::info!(work_id = %item.id, work_type = %item.data_type, "claimed work");
            match self.api.ack(env, &item.id, key).await {
                Ok(_) => ack_attempt = 0,
                Err(e) if e.is_fatal() => {
                    tracing::error!(work_id = %item.id, error = %e, "ack failed permanently; force-stopping");
                    self.force_stop_quietly(&item, key).await;
                    continue;
                }
                Err(e) => {
                    ack_attempt += 1;
                    let wait = backoff(ack_attempt, POLL_BACKOFF_CAP)
                        + jitter(Duration::ZERO, Duration::from_secs(1));
                    tracing::warn!(work_id = %item.id, error = %e, "ack failed; backing off {wait:?}");
                    sleep_or_cancel(wait, &cancel).await;
                    continue;
                }
            }
            let end = self.handle_item(item, cancel.clone()).await;
            tracing::info!(?end, "work item finished");
            self.update(|s| s.state = WorkerState::Polling);
        };
        self.update(|s| {
            s.state = if result.is_ok() {
                WorkerState::Stopped
            } else {
                WorkerState::Failed
            };
            if let Err(e) = &result {
                s.last_error = Some(e.to_string());
            }
        });
        result
    }

    /// Runs [`Worker::run`] on a task; the handle stops it (the tool call in flight is cancelled,
    /// its item released as on shutdown).
    pub fn spawn(self: Arc<Self>) -> WorkerHandle {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let task = tokio::spawn(async move { self.run(c).await });
        WorkerHandle { cancel, task }
    }

    async fn force_stop_quietly(&self, item: &WorkItem, token: &str) {
        match self
            .api
            .stop(&item.environment_id, &item.id, token, true)
            .await
        {
            Ok(_) => {}
            Err(e) if e.status() == Some(409) => {}
            Err(e) => tracing::error!(work_id = %item.id, error = %e, "force-stop failed"),
        }
    }

    /// Serves one claimed (acked) item to its end; returns why it ended.
    pub async fn handle_item(&self, item: WorkItem, cancel: CancellationToken) -> LeaseEnd {
        let env_key = self.cfg.environment_key.expose().to_string();
        let sessions_token = item
            .secret
            .as_ref()
            .and_then(|s| sessions_token_from_secret(s.expose()));
        if item.secret.is_some() && sessions_token.is_none() {
            tracing::warn!(work_id = %item.id, "work item secret carried no usable sessions token; using the environment key");
        }
        let has_sessions_token = sessions_token.is_some();
        let cred = sessions_token.unwrap_or(env_key);
        let lease = Lease::new();
        let hb = tokio::spawn(heartbeat_loop(
            self.api.clone(),
            item.clone(),
            cred.clone(),
            lease.clone(),
        ));
        self.update(|s| {
            s.state = WorkerState::Serving;
            s.current = Some(CurrentItem {
                work_id: item.id.clone(),
                session_id: item.data_id.clone(),
                since_ms: now_ms(),
            });
        });

        let outcome = self
            .serve(&item, &cred, has_sessions_token, &lease, &cancel)
            .await;
        if let Err(msg) = &outcome {
            tracing::error!(work_id = %item.id, error = %msg, "work item failed");
            self.update(|s| s.last_error = Some(msg.clone()));
        }
        let end = match (lease.reason(), &outcome) {
            (Some(r), _) => r,
            (None, _) if cancel.is_cancelled() => LeaseEnd::Cancelled,
            (None, Err(_)) => LeaseEnd::Failed,
            (None, Ok(())) => LeaseEnd::RunnerDone,
        };
        lease.finish(end);
        let _ = hb.await;
        if end.lost() {
            tracing::info!(work_id = %item.id, "lease lost; released without stopping it");
        } else {
            self.force_stop_quietly(&item, &cred).await;
        }
        self.update(|s| {
            s.current = None;
            s.in_flight.clear();
            s.items_served += 1;
        });
        end
    }

    async fn serve(
        &self,
        item: &WorkItem,
        cred: &str,
        has_sessions_token: bool,
        lease: &Lease,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        if item.data_type != "session" {
            tracing::debug!(work_id = %item.id, kind = %item.data_type, "skipping non-session work item");
            return Ok(());
        }
        // The research note's order: the lease heartbeat goes out before any download (session,
        // skills, memory can outlast a TTL). Waiting for its answer also means a 412 stops the
        // item before anything of it runs.
        tokio::select! {
            _ = lease.first_beat.cancelled() => {}
            _ = lease.ended().cancelled() => return Ok(()),
            _ = cancel.cancelled() => return Ok(()),
        }
        let session = tokio::select! {
            _ = lease.ended().cancelled() => return Ok(()),
            _ = cancel.cancelled() => return Ok(()),
            r = self.api.get_session(&item.data_id, cred) => r.map_err(|e| format!("session fetch: {e}"))?,
        };
        if session.get("status").and_then(Value::as_str) == Some("terminated") {
            tracing::info!(session_id = %item.data_id, "session already terminated; nothing to run");
            return Ok(());
        }
        let resources = if self.cfg.memory.sync_interval.is_some() {
            memory::memory_resources(&session)?
        } else {
            Vec::new()
        };
        if !resources.is_empty() && !has_sessions_token {
            return Err("the session has memory stores but the work item carried no sessions token, and the memory endpoints reject the environment key".into());
        }
        // Not raced against the lease: a half-made mount would leave directories behind that
        // block the next one. Its calls are bounded by the request timeout.
        let mut memory = if resources.is_empty() {
            None
        } else {
            Some(
                memory::MemorySession::mount(
                    self.api.clone(),
                    cred.to_string(),
                    self.cfg.memory.clone(),
                    &resources,
                )
                .await?,
            )
        };
        let session_for_skills = session.clone();
        let ctx = SessionContext {
            session_id: item.data_id.clone(),
            work_id: item.id.clone(),
            environment_id: item.environment_id.clone(),
            session,
            memory: memory.as_ref().map(|m| m.roots()).unwrap_or_default(),
        };
        let opened = tokio::select! {
            _ = lease.ended().cancelled() => None,
            _ = cancel.cancelled() => None,
            r = self.executor.open_session(ctx) => Some(r),
        };
        let mut tools = match opened {
            Some(Ok(t)) => t,
            other => {
                if let Some(m) = memory.take() {
                    m.finish(false).await;
                }
                return match other {
                    Some(Err(e)) => Err(format!("opening the session's tools: {e}")),
                    _ => Ok(()),
                };
            }
        };
        for skill in ctx_skills(&session_for_skills) {
            tokio::select! {
                _ = lease.ended().cancelled() => break,
                _ = cancel.cancelled() => break,
                r = self.install_skill(&skill, cred, &mut tools) => {
                    if let Err(e) = r {
                        tracing::warn!(skill = %skill, error = %e, "skill not installed");
                    }
                }
            }
        }
        let result = runner::run_session(
            self,
            &item.data_id,
            cred,
            &mut tools,
            memory.as_mut(),
            lease,
            cancel,
        )
        .await;
        tools.close().await;
        if let Some(m) = memory {
            let clean = result.is_ok() && lease.reason().is_none() && !cancel.is_cancelled();
            m.finish(clean).await;
        }
        result
    }
}

impl Worker {
    /// Downloads one of the agent's skills and hands it to the executor (the SDKs' order: resolve
    /// the version, name the directory after the version's `name`, download by the concrete id).
    async fn install_skill(
        &self,
        skill: &Value,
        cred: &str,
        tools: &mut Box<dyn SessionTools>,
    ) -> Result<(), String> {
        let skill_id = skill
            .get("skill_id")
            .and_then(Value::as_str)
            .ok_or("a skill without skill_id")?;
        let version = match skill.get("version") {
            Some(Value::String(v)) => v.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => "latest".to_string(),
        };
        let v = self
            .api
            .skill_version(skill_id, &version, cred)
            .await
            .map_err(|e| format!("skill {skill_id} version {version}: {e}"))?;
        let version_id = v
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("skill {skill_id}: version without id"))?;
        let name = skill_dir_name(
            v.get("name").and_then(Value::as_str).unwrap_or(""),
            skill_id,
        );
        let archive = self
            .api
            .skill_content(skill_id, version_id, cred, MAX_SKILL_ARCHIVE)
            .await
            .map_err(|e| format!("skill {skill_id}: {e}"))?;
        tools.install_skill(&name, archive).await?;
        tracing::info!(skill_id, version = version_id, dir = %name, "installed skill");
        Ok(())
    }
}

/// The skills of the session's agent (`session.agent.skills`).
fn ctx_skills(session: &Value) -> Vec<Value> {
    session
        .pointer("/agent/skills")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// One safe path component named after the skill (the last segment of its name), else its id.
pub fn skill_dir_name(name: &str, skill_id: &str) -> String {
    let safe = |c: &str| !(c.is_empty() || c == "." || c == ".." || c.contains('\0'));
    let base = name.trim().rsplit(['/', '\\']).next().unwrap_or("").trim();
    if safe(base) {
        return base.to_string();
    }
    let id = skill_id.rsplit(['/', '\\']).next().unwrap_or("");
    if safe(id) {
        id.to_string()
    } else {
        "skill".to_string()
    }
}

async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = cancel.cancelled() => {}
    }
}

/// Keeps the lease alive; ends it on stop, 412, rejection or a TTL without success.
async fn heartbeat_loop(api: ApiClient, item: WorkItem, cred: String, lease: Lease) {
    let mut interval = HEARTBEAT_DEFAULT;
    let mut ttl = HEARTBEAT_TTL_DEFAULT;
    let mut last = "NO_HEARTBEAT".to_string();
    let mut last_success = tokio::time::Instant::now();
    while !lease.ended().is_cancelled() {
        let beat = tokio::select! {
            _ = lease.ended().cancelled() => return,
            r = tokio::time::timeout(interval, api.heartbeat(&item.environment_id, &item.id, &cred, &last, interval)) => r,
        };
        let beat = beat.unwrap_or_else(|_| Err(ApiError::Transport("heartbeat timed out".into())));
        match beat {
            Err(e) if e.status() == Some(412) => {
                let cur = e_body(&e)
                    .pointer("/error/details/current_state")
                    .cloned()
                    .unwrap_or(Value::Null);
                tracing::error!(work_id = %item.id, server_state = %cur, "lease lost: heartbeat precondition failed");
                lease.finish(LeaseEnd::LeaseLost);
                return;
            }
            Err(e) if e.is_fatal() => {
                tracing::error!(work_id = %item.id, error = %e, "heartbeat rejected");
                lease.finish(LeaseEnd::HeartbeatRejected);
                return;
            }
            Err(e) => {
                if last_success.elapsed() > ttl {
                    tracing::error!(work_id = %item.id, error = %e, "lease assumed lost: no successful heartbeat in {ttl:?}");
                    lease.finish(LeaseEnd::AssumedLost);
                    return;
                }
                tracing::warn!(work_id = %item.id, error = %e, "transient heartbeat failure");
            }
            Ok(v) => {
                if let Some(lh) = v.get("last_heartbeat").and_then(Value::as_str) {
                    last = lh.to_string();
                }
                last_success = tokio::time::Instant::now();
                let t = v.get("ttl_seconds").and_then(Value::as_f64).unwrap_or(0.0);
                if t > 0.0 {
                    ttl = Duration::from_secs_f64(t);
                    interval = Duration::from_secs_f64(
                        (t / 2.0).min(HEARTBEAT_DEFAULT.as_secs_f64()).max(1.0),
                    );
                    lease
                        .ttl_ms
                        .store((t * 1000.0) as u64, std::sync::atomic::Ordering::Relaxed);
                }
                let state = v.get("state").and_then(Value::as_str).unwrap_or("");
                let extended = v
                    .get("lease_extended")
                    .and_then(Value::as_bool)
                    .unwrap_or(true);
                if state == "stopping" || state == "stopped" || !extended {
                    tracing::info!(work_id = %item.id, state, extended, "heartbeat signals shutdown");
                    lease.finish(LeaseEnd::HeartbeatStop);
                    return;
                }
            }
        }
        // Answered (the early returns above ended the lease, which the waiting item also watches).
        lease.first_beat.cancel();
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = lease.ended().cancelled() => return,
        }
    }
}

fn e_body(e: &ApiError) -> Value {
    match e {
        ApiError::Status { body, .. } => body.clone(),
        _ => Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_decodes_with_and_without_padding() {
        let raw =
            base64::engine::general_purpose::URL_SAFE.encode(br#"{"sessions_token":"tok-1"}"#);
        assert_eq!(sessions_token_from_secret(&raw).as_deref(), Some("tok-1"));
        assert_eq!(
            sessions_token_from_secret(raw.trim_end_matches('=')).as_deref(),
            Some("tok-1")
        );
        assert_eq!(sessions_token_from_secret("!!!"), None);
        let none =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"api_base_url":"x"}"#);
        assert_eq!(sessions_token_from_secret(&none), None);
    }

    #[test]
    fn skill_directories_are_one_safe_component() {
        assert_eq!(skill_dir_name("pdf-tools", "skill_1"), "pdf-tools");
        assert_eq!(skill_dir_name("../../etc", "skill_1"), "etc");
        assert_eq!(skill_dir_name(" a/b/c ", "skill_1"), "c");
        assert_eq!(skill_dir_name("..", "skill_1"), "skill_1");
        assert_eq!(skill_dir_name("", "skill_1"), "skill_1");
        assert_eq!(skill_dir_name("x/", "skill_1"), "skill_1");
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        assert_eq!(backoff(1, POLL_BACKOFF_CAP), Duration::from_secs(2));
        assert_eq!(backoff(3, POLL_BACKOFF_CAP), Duration::from_secs(8));
        assert_eq!(backoff(10, POLL_BACKOFF_CAP), POLL_BACKOFF_CAP);
        assert_eq!(backoff(0, SEND_BACKOFF_CAP), Duration::from_secs(1));
    }

    #[test]
    fn secrets_do_not_print() {
        let s = Secret::new("sk-very-secret");
        assert!(!format!("{s:?}").contains("very"));
        let cfg = WorkerConfig::new("env_1", s);
        assert!(!format!("{cfg:?}").contains("very"));
    }
}
