//! The local sandbox worker inside the agent: Claude Managed Agents sessions whose tools (`bash`, `read`, `write`,
//! `edit`, `glob`, `grep`) run on this machine, inside an OS sandbox.
//!
//! * `[sandbox]` in config.toml holds the intent (`enabled`, `base_url`, `environment_id`, `workdir`,
//!   `allowed_domains`, `unconfined`); the environment key lives in the keystore under [`ENVIRONMENT_KEY`] (never in
//!   argv, a log or the config file).
//! * [`SandboxExecutor`] implements the worker's [`ToolExecutor`] over `airlock-sandbox`: one [`Sandbox`] per session,
//!   in a fresh workdir `$AIRLOCK_HOME/sandbox/sessions/<session-id>` (or the folder the user chose), with the egress
//!   allowlist from the config, the `airlock sandbox-exec` helper, skills unpacked by the sandbox, closed when the
//!   session's work item ends.
//! * [`SandboxControl`] starts and stops the worker inside the running agent (`POST /v1/sandbox`), reports the
//!   machine's isolation and the worker's state (`GET /v1/sandbox`) and forwards every state change to the event
//!   stream as a `sandbox` event. Turning it on is refused when no isolation mechanism works, unless the user opted
//!   into unconfined mode.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use airlock_sandbox::{IsolationReport, Mechanism, Sandbox, SandboxConfig, SandboxStatus};
use airlock_worker::{
    SessionContext, SessionTools, ToolExecutor, ToolOutput, Worker, WorkerConfig, WorkerHandle,
    WorkerState, WorkerStatus,
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::AgentError;
use crate::state::{AgentState, Event};

/// Keystore name of the environment key (`airlock sandbox login` stores it).
pub const ENVIRONMENT_KEY: &str = "sandbox-environment-key";

/// How long `off` waits for the worker's teardown.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Tools the sandbox executes; other tool calls stay pending for their owner.
pub const OWNED_TOOLS: [&str; 6] = airlock_sandbox::TOOL_NAMES;

/// `[sandbox]` in config.toml.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Run the worker whenever the agent runs (`airlock sandbox on|off` sets it).
    #[serde(default)]
    pub enabled: bool,
    /// API base URL (default `https://api.anthropic.com`; `airlock relay --api` for a self-hosted queue).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The environment this worker serves (`env_…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment_id: Option<String>,
    /// A folder of the user's choice used as every session's workdir, instead of a fresh directory per session
    /// under `$AIRLOCK_HOME/sandbox/sessions/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<PathBuf>,
    /// Host names reachable from inside the sandbox through the filtering proxy (`example.com`, `*.example.com`).
    /// Empty: no network at all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_domains: Vec<String>,
    /// Run tools without any OS sandbox when none is available. Off by default; the UI shows it in red.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unconfined: bool,
    /// Seconds a session may stay idle after its turn ends before the worker lets it go (default 60, as the
    /// reference workers; 0 keeps it until the session ends).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_secs: Option<u64>,
}

/// Edits of `[sandbox]` (applied through `config::update`, comments kept).
pub enum SandboxEdit<'a> {
    Login {
        base_url: &'a str,
        environment_id: &'a str,
    },
    SetEnabled(bool),
    AllowDomain(&'a str),
}

/// Applies a [`SandboxEdit`] to the parsed document.
pub(crate) fn apply_edit(
    doc: &mut toml_edit::DocumentMut,
    edit: &SandboxEdit<'_>,
    path: &Path,
) -> Result<(), AgentError> {
    let item = doc
        .as_table_mut()
        .entry("sandbox")
        .or_insert(toml_edit::table());
    if let Some(inline) = item.as_inline_table().cloned() {
        *item = toml_edit::Item::Table(inline.into_table());
    }
    let table = item.as_table_mut().ok_or_else(|| {
        AgentError::Invalid(format!("`sandbox` in {} must be a table", path.display()))
    })?;
    match edit {
        SandboxEdit::Login {
            base_url,
            environment_id,
        } => {
            table["base_url"] = toml_edit::value(*base_url);
            table["environment_id"] = toml_edit::value(*environment_id);
        }
        SandboxEdit::SetEnabled(on) => table["enabled"] = toml_edit::value(*on),
        SandboxEdit::AllowDomain(domain) => {
            let mut array = table
                .get("allowed_domains")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default();
            if !array
                .iter()
                .any(|v| v.as_str().is_some_and(|s| s.eq_ignore_ascii_case(domain)))
            {
                array.push(*domain);
            }
            table["allowed_domains"] = toml_edit::value(array);
        }
    }
    Ok(())
}

/// Checks an allowlist entry: a host name (`api.example.com`) or a wildcard for its subdomains (`*.example.com`).
/// Returns it lowercased.
pub fn validate_domain(text: &str) -> Result<String, AgentError> {
    let d = text.trim().trim_end_matches('.').to_ascii_lowercase();
    let host = d.strip_prefix("*.").unwrap_or(&d);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(label_ok)
        && host.parse::<std::net::IpAddr>().is_err();
    if ok {
        Ok(d)
    } else {
        Err(AgentError::Invalid(format!(
            "`{text}` is not a domain name: use a host name like api.example.com or *.example.com for its subdomains"
        )))
    }
}

/// Checks the API base URL given to `airlock sandbox login`.
pub fn validate_base_url(text: &str) -> Result<String, AgentError> {
    let url = text.trim().trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.contains(char::is_whitespace) => Ok(url.to_string()),
        _ => Err(AgentError::Invalid(format!(
            "`{text}` is not an http(s) URL (e.g. https://api.anthropic.com)"
        ))),
    }
}

/// A session id as a single safe path component (ids of the API are `sesn_…`; anything else is hashed).
fn session_dir_name(id: &str) -> String {
    let safe = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if safe {
        id.to_string()
    } else {
        use sha2::Digest;
        format!(
            "session-{}",
            hex::encode(&sha2::Sha256::digest(id.as_bytes())[..8])
        )
    }
}

/// What one open session's sandbox applies (for `GET /v1/sandbox`).
#[derive(Debug, Clone, Serialize)]
pub struct OpenSession {
    pub session_id: String,
    pub status: SandboxStatus,
    pub opened_ms: u64,
}

type Registry = Arc<Mutex<BTreeMap<String, OpenSession>>>;

fn registry_lock(r: &Registry) -> std::sync::MutexGuard<'_, BTreeMap<String, OpenSession>> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The worker's [`ToolExecutor`]: a [`Sandbox`] per session.
pub struct SandboxExecutor {
    sessions_root: PathBuf,
    section: SandboxSection,
    helper: Option<PathBuf>,
    helper_args: Vec<String>,
    registry: Registry,
}

impl SandboxExecutor {
    /// `airlock_home` holds the default per-session workdirs; `helper` is the `airlock` binary (run as
    /// `airlock sandbox-exec …`), `None` = the sandbox's own default.
    pub fn new(
        airlock_home: &Path,
        section: SandboxSection,
        helper: Option<PathBuf>,
        helper_args: Vec<String>,
    ) -> Self {
        Self {
            sessions_root: airlock_home.join("sandbox").join("sessions"),
            section,
            helper,
            helper_args,
            registry: Arc::default(),
        }
    }

    /// The workdir a session gets.
    pub fn workdir_for(&self, session_id: &str) -> PathBuf {
        match &self.section.workdir {
            Some(dir) => dir.clone(),
            None => self.sessions_root.join(session_dir_name(session_id)),
        }
    }

    /// The sandbox configuration of a session.
    pub fn sandbox_config(&self, session_id: &str) -> SandboxConfig {
        let mut cfg = SandboxConfig::new(self.workdir_for(session_id));
        cfg.network.allowed_domains = self.section.allowed_domains.clone();
        cfg.unconfined = self.section.unconfined;
        cfg.helper = self.helper.clone();
        cfg.helper_args = self.helper_args.clone();
        cfg
    }

    /// Open sessions, for the status.
    pub fn open_sessions(&self) -> Vec<OpenSession> {
        registry_lock(&self.registry).values().cloned().collect()
    }

    async fn open(&self, ctx: SessionContext) -> Result<Box<dyn SessionTools>, String> {
        let mut cfg = self.sandbox_config(&ctx.session_id);
        // Memory stores appear inside at the same paths; a read-only store is pulled but never
        // pushed, so writing to it would only lose work: the sandbox refuses it instead.
        for m in &ctx.memory {
            if m.read_only {
                cfg.read_only_paths.push(m.path.clone());
            } else {
                cfg.writable_roots.push(m.path.clone());
            }
        }
        if self.section.workdir.is_none() {
            let root = self.sessions_root.clone();
            tokio::task::spawn_blocking(move || std::fs::create_dir_all(&root))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("creating {}: {e}", self.sessions_root.display()))?;
        }
        let sandbox = Sandbox::open(cfg).await.map_err(|e| e.to_string())?;
        let status = sandbox.status();
        tracing::info!(
            session_id = %ctx.session_id,
            mechanism = status.mechanism,
            workdir = %status.workdir.display(),
            limits = ?status.cgroup,
            limits_problem = ?status.limits_problem,
            "sandbox opened"
        );
        registry_lock(&self.registry).insert(
            ctx.session_id.clone(),
            OpenSession {
                session_id: ctx.session_id.clone(),
                status,
                opened_ms: now_ms(),
            },
        );
        Ok(Box::new(SessionSandbox {
            session_id: ctx.session_id,
            sandbox: Some(sandbox),
            registry: self.registry.clone(),
        }))
    }
}

impl ToolExecutor for SandboxExecutor {
    fn open_session(
        &self,
        ctx: SessionContext,
    ) -> BoxFuture<'_, Result<Box<dyn SessionTools>, String>> {
        Box::pin(self.open(ctx))
    }
}

/// One session's tools.
struct SessionSandbox {
    session_id: String,
    sandbox: Option<Sandbox>,
    registry: Registry,
}

/// The sandbox's result as the worker posts it (`content` blocks as JSON).
fn convert(out: airlock_sandbox::ToolOutput) -> ToolOutput {
    let content = out
        .content
        .iter()
        .map(|b| {
            serde_json::to_value(b).unwrap_or_else(
                |e| json!({"type": "text", "text": format!("(unserialisable result block: {e})")}),
            )
        })
        .collect();
    ToolOutput {
        content,
        is_error: out.is_error,
    }
}

impl SessionTools for SessionSandbox {
    fn owns(&self, name: &str) -> bool {
        OWNED_TOOLS.contains(&name)
    }

    fn run_tool<'a>(
        &'a mut self,
        name: &'a str,
        input: &'a Value,
        cancel: CancellationToken,
    ) -> BoxFuture<'a, ToolOutput> {
        Box::pin(async move {
            match &self.sandbox {
                Some(sb) => convert(sb.run_tool(name, input.clone(), cancel).await),
                None => ToolOutput::error("the session's sandbox is closed"),
            }
        })
    }

    fn close(&mut self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(sb) = self.sandbox.take() {
                sb.close().await;
                tracing::info!(session_id = %self.session_id, "sandbox closed");
            }
            registry_lock(&self.registry).remove(&self.session_id);
        })
    }

    fn install_skill<'a>(
        &'a mut self,
        name: &'a str,
        archive: Vec<u8>,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let Some(sb) = &self.sandbox else {
                return Err("the session's sandbox is closed".to_string());
            };
            let report = sb
                .install_skill(name, archive)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(session_id = %self.session_id, skill = name, report = ?report, "skill unpacked");
            Ok(())
        })
    }
}

impl Drop for SessionSandbox {
    fn drop(&mut self) {
        registry_lock(&self.registry).remove(&self.session_id);
    }
}

/// A `sandbox` event on the agent's event stream: the worker's state changed (a session started or ended, a tool
/// call started or finished, the worker was turned on or off).
#[derive(Debug, Clone, Serialize)]
pub struct SandboxEvent {
    pub enabled: bool,
    pub running: bool,
    pub state: WorkerState,
    pub current: Option<airlock_worker::CurrentItem>,
    pub in_flight: Vec<airlock_worker::ToolCallInfo>,
    /// The newest finished call.
    pub last_call: Option<airlock_worker::ToolCallRecord>,
    pub items_served: u64,
    pub last_error: Option<String>,
}

struct Running {
    handle: WorkerHandle,
    worker: Arc<Worker>,
    executor: Arc<SandboxExecutor>,
    forward: tokio::task::JoinHandle<()>,
    forward_stop: CancellationToken,
}

/// Why the sandbox cannot be turned on (mapped to HTTP statuses by the API).
#[derive(Debug, thiserror::Error)]
pub enum SandboxControlError {
    /// Not logged in, or the configuration is unusable: 409.
    #[error("{0}")]
    NotReady(String),
    /// No isolation and no unconfined opt-in: 409.
    #[error("{0}")]
    NoIsolation(String),
    /// Anything else: 500.
    #[error("{0}")]
    Internal(String),
}

/// The sandbox worker of a running agent.
pub struct SandboxControl {
    running: tokio::sync::Mutex<Option<Running>>,
    /// The last stopped worker's status (kept for `GET /v1/sandbox` after `off`).
    last_status: Mutex<Option<WorkerStatus>>,
    last_error: Mutex<Option<String>>,
    helper: Option<PathBuf>,
    helper_args: Vec<String>,
}

impl Default for SandboxControl {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sandbox helper: `AIRLOCK_SANDBOX_EXEC` when set; the `airlock` binary itself as `airlock sandbox-exec …`;
/// for other programs embedding the agent (the tray), an `airlock-sandbox-exec` binary next to them when there is
/// one, else themselves with the `sandbox-exec` prefix (they must hand that subcommand to
/// `airlock_sandbox::helper::main_with_prefix` before anything else, as `airlock` does).
fn default_helper() -> (Option<PathBuf>, Vec<String>) {
    if let Some(p) = std::env::var_os("AIRLOCK_SANDBOX_EXEC") {
        return (Some(PathBuf::from(p)), Vec::new());
    }
    let Ok(exe) = std::env::current_exe() else {
        return (None, Vec::new());
    };
    let is_cli = exe
        .file_stem()
        .is_some_and(|n| n == std::ffi::OsStr::new("airlock"));
    if let Some(beside) = exe
        .parent()
        .filter(|_| !is_cli)
        .map(|d| d.join("airlock-sandbox-exec"))
        .filter(|p| p.is_file())
    {
        return (Some(beside), Vec::new());
    }
    (Some(exe), vec!["sandbox-exec".to_string()])
}

impl SandboxControl {
    /// The helper is this executable with the `sandbox-exec` subcommand.
    pub fn new() -> Self {
        let (helper, helper_args) = default_helper();
        Self::with_helper(helper, helper_args)
    }

    pub fn with_helper(helper: Option<PathBuf>, helper_args: Vec<String>) -> Self {
        Self {
            running: tokio::sync::Mutex::new(None),
            last_status: Mutex::new(None),
            last_error: Mutex::new(None),
            helper,
            helper_args,
        }
    }

    /// Starts the worker when `[sandbox] enabled` is set (agent start). Problems are logged and shown in the status.
    pub async fn start_if_enabled(&self, state: &Arc<AgentState>) {
        let section = state.config().sandbox;
        if !section.enabled {
            return;
        }
        if let Err(e) = self.start(state).await {
            tracing::error!(error = %e, "the sandbox worker did not start (`airlock sandbox status` shows why)");
            *lock(&self.last_error) = Some(e.to_string());
            emit(state, self.event(true, false, None));
        }
    }

    /// `POST /v1/sandbox {enabled}`: start or stop the worker and persist the choice.
    pub async fn set_enabled(
        &self,
        state: &Arc<AgentState>,
        enabled: bool,
    ) -> Result<(), SandboxControlError> {
        if enabled {
            self.start(state).await?;
        } else {
            self.stop(state).await;
        }
        state
            .edit_config(move |path| {
                crate::config::update(
                    path,
                    crate::config::Edit::Sandbox(SandboxEdit::SetEnabled(enabled)),
                )
            })
            .await
            .map_err(|e| SandboxControlError::Internal(format!("recording the choice: {e}")))
    }

    async fn start(&self, state: &Arc<AgentState>) -> Result<(), SandboxControlError> {
        let mut running = self.running.lock().await;
        if let Some(r) = running.as_ref()
            && !r.handle.is_finished()
        {
            return Ok(());
        }
        if let Some(old) = running.take() {
            self.retire(old).await;
        }
        // The CLI writes `[sandbox]` (login, allow-domain) straight to the file: read it fresh.
        let path = state.home.config_path();
        let config: Config = tokio::task::spawn_blocking(move || crate::config::load(&path))
            .await
            .map_err(|e| SandboxControlError::Internal(e.to_string()))?
            .map_err(|e| SandboxControlError::NotReady(e.to_string()))?;
        let section = config.sandbox;
        let not_ready = |what: &str| {
            SandboxControlError::NotReady(format!(
                "the sandbox worker has no {what}; run `airlock sandbox login --base-url URL --environment-id ID` \
                 with the environment key on standard input"
            ))
        };
        let environment_id = section
            .environment_id
            .clone()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| not_ready("environment id"))?;
        let key = state
            .keystore
            .get(ENVIRONMENT_KEY)
            .await
            .map_err(|e| {
                SandboxControlError::Internal(format!("reading the environment key: {e}"))
            })?
            .and_then(|s| s.expose_str().ok().map(|t| t.trim().to_string()))
            .filter(|s| !s.is_empty())
            .ok_or_else(|| not_ready("environment key in the keystore"))?;
        let report = isolation().await;
        check_isolation(&report, section.unconfined, &state.home.config_path())?;
        let mut cfg = WorkerConfig::new(environment_id, airlock_worker::Secret::new(key.as_str()));
        if let Some(url) = &section.base_url {
            cfg.base_url = url.clone();
        }
        if let Some(secs) = section.max_idle_secs {
            cfg.max_idle = (secs > 0).then(|| std::time::Duration::from_secs(secs));
        }
        let executor = Arc::new(SandboxExecutor::new(
            state.home.root(),
            section,
            self.helper.clone(),
            self.helper_args.clone(),
        ));
        let worker = Arc::new(
            Worker::new(cfg, executor.clone())
                .map_err(|e| SandboxControlError::Internal(e.to_string()))?,
        );
        let status_rx = worker.status();
        let handle = worker.clone().spawn();
        let forward_stop = CancellationToken::new();
        let forward = tokio::spawn(forward_status(
            state.clone(),
            status_rx,
            forward_stop.clone(),
        ));
        tracing::info!(
            base_url = %worker.config().base_url,
            environment_id = %worker.config().environment_id,
            worker_id = %worker.config().worker_id,
            mechanism = ?report.best,
            "sandbox worker started"
        );
        *lock(&self.last_error) = None;
        *running = Some(Running {
            handle,
            worker,
            executor,
            forward,
            forward_stop,
        });
        Ok(())
    }

    /// Stops the worker (the call in flight is cancelled, the item released) and waits for its teardown.
    pub async fn stop(&self, state: &Arc<AgentState>) {
        let old = self.running.lock().await.take();
        if let Some(old) = old {
            self.retire(old).await;
            tracing::info!("sandbox worker stopped");
        }
        let last = lock(&self.last_status).clone();
        emit(state, self.event(false, false, last.as_ref()));
    }

    async fn retire(&self, old: Running) {
        let Running {
            handle,
            worker,
            forward,
            forward_stop,
            ..
        } = old;
        // The teardown force-stops the item on the server; a queue that does not answer must not hold `off` (or
        // the agent's shutdown) for the HTTP timeout.
        match tokio::time::timeout(STOP_GRACE, handle.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => *lock(&self.last_error) = Some(e.to_string()),
            Err(_) => tracing::warn!(
                "the sandbox worker did not finish its teardown within {STOP_GRACE:?}; it goes on in the background"
            ),
        }
        forward_stop.cancel();
        let _ = forward.await;
        *lock(&self.last_status) = Some(worker.status().borrow().clone());
    }

    fn event(&self, enabled: bool, running: bool, status: Option<&WorkerStatus>) -> SandboxEvent {
        let s = status.cloned().unwrap_or_default();
        SandboxEvent {
            enabled,
            running,
            state: if running {
                s.state
            } else {
                WorkerState::Stopped
            },
            current: if running { s.current } else { None },
            in_flight: if running { s.in_flight } else { Vec::new() },
            last_call: s.recent.back().cloned(),
            items_served: s.items_served,
            last_error: lock(&self.last_error).clone().or(s.last_error),
        }
    }

    /// `GET /v1/sandbox`: configuration, isolation, worker state, open sessions.
    pub async fn status(&self, state: &Arc<AgentState>) -> Value {
        let path = state.home.config_path();
        let section = tokio::task::spawn_blocking(move || crate::config::load(&path))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|c| c.sandbox)
            .unwrap_or_else(|| state.config().sandbox);
        let key_stored = matches!(state.keystore.get(ENVIRONMENT_KEY).await, Ok(Some(_)));
        let report = isolation().await;
        let (running, worker, sessions) = {
            let guard = self.running.lock().await;
            match guard.as_ref() {
                Some(r) => (
                    !r.handle.is_finished(),
                    Some(r.worker.status().borrow().clone()),
                    r.executor.open_sessions(),
                ),
                None => (false, lock(&self.last_status).clone(), Vec::new()),
            }
        };
        let mechanism = match (report.best, section.unconfined) {
            (Some(m), _) => Some(m.as_str()),
            (None, true) => Some(Mechanism::Unconfined.as_str()),
            (None, false) => None,
        };
        let confined = report.best.is_some();
        let warning = match (confined, section.unconfined) {
            (true, _) => None,
            (false, true) => Some(
                "UNCONFINED: no OS sandbox is available and unconfined mode is on; tools run with your user's full rights"
                    .to_string(),
            ),
            (false, false) => Some(format!(
                "no OS sandbox is available ({}); the worker refuses to start",
                isolation_problem(&report)
            )),
        };
        let last_error = lock(&self.last_error)
            .clone()
            .or_else(|| worker.as_ref().and_then(|w| w.last_error.clone()));
        json!({
            "enabled": section.enabled,
            "running": running,
            "configured": section.environment_id.is_some() && key_stored,
            "base_url": section.base_url.clone().unwrap_or_else(|| airlock_worker::DEFAULT_BASE_URL.to_string()),
            "environment_id": section.environment_id,
            "environment_key_stored": key_stored,
            "workdir": section.workdir.clone().unwrap_or_else(|| state.home.root().join("sandbox").join("sessions")),
            "workdir_per_session": section.workdir.is_none(),
            "allowed_domains": section.allowed_domains,
            "unconfined": section.unconfined,
            "confined": confined,
            "mechanism": mechanism,
            "warning": warning,
            "isolation": report,
            "worker": worker,
            "sessions": sessions,
            "last_error": last_error,
        })
    }
}

/// The isolation report (a trial sandbox: blocking, so off the async threads).
pub async fn isolation() -> IsolationReport {
    match tokio::task::spawn_blocking(airlock_sandbox::probe_isolation).await {
        Ok(r) => r,
        Err(e) => IsolationReport {
            platform: std::env::consts::OS,
            bubblewrap: None,
            bubblewrap_works: false,
            bubblewrap_problem: Some(format!("probe failed: {e}")),
            landlock: false,
            landlock_problem: None,
            seccomp: false,
            seatbelt: None,
            seatbelt_problem: None,
            cgroup: airlock_sandbox::CgroupSupport::Unavailable {
                reason: "not probed".into(),
            },
            best: None,
        },
    }
}

/// Refuses to run tools without an OS sandbox unless the user opted into unconfined mode.
fn check_isolation(
    report: &IsolationReport,
    unconfined: bool,
    config_path: &Path,
) -> Result<(), SandboxControlError> {
    if report.best.is_some() || unconfined {
        return Ok(());
    }
    Err(SandboxControlError::NoIsolation(format!(
        "no OS sandbox works on this machine ({}); install bubblewrap (`apt install bubblewrap`) or run a kernel \
         with Landlock — or, knowing that tools would then run with your user's full rights, set \
         `unconfined = true` under [sandbox] in {}",
        isolation_problem(report),
        config_path.display()
    )))
}

fn isolation_problem(r: &IsolationReport) -> String {
    let mut parts = Vec::new();
    match (&r.bubblewrap, &r.bubblewrap_problem) {
        (None, _) => parts.push("bubblewrap is not installed".to_string()),
        (Some(_), Some(p)) => parts.push(p.clone()),
        _ => {}
    }
    if let Some(p) = &r.landlock_problem {
        parts.push(p.clone());
    }
    if r.platform == "macos"
        && let Some(p) = &r.seatbelt_problem
    {
        parts.push(p.clone());
    }
    if parts.is_empty() {
        parts.push(format!("nothing usable on {}", r.platform));
    }
    parts.join("; ")
}

fn emit(state: &AgentState, event: SandboxEvent) {
    state.emit(Event::Sandbox(event));
}

/// Forwards the worker's status changes to the event stream.
async fn forward_status(
    state: Arc<AgentState>,
    mut rx: tokio::sync::watch::Receiver<WorkerStatus>,
    stop: CancellationToken,
) {
    loop {
        let s = rx.borrow_and_update().clone();
        let running = !matches!(s.state, WorkerState::Stopped | WorkerState::Failed);
        emit(
            &state,
            SandboxEvent {
                enabled: true,
                running,
                state: s.state,
                current: s.current.clone(),
                in_flight: s.in_flight.clone(),
                last_call: s.recent.back().cloned(),
                items_served: s.items_served,
                last_error: s.last_error.clone(),
            },
        );
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Records a Managed Agents environment (`airlock sandbox login`, `POST /v1/sandbox/login`): the environment key goes
/// to the keystore only, the base URL and environment id to config.toml. Returns the normalised base URL.
pub async fn login(
    config_path: &Path,
    keystore: &airlock_keystore::Keystore,
    base_url: &str,
    environment_id: &str,
    environment_key: &str,
) -> Result<String, AgentError> {
    let base_url = validate_base_url(base_url)?;
    let environment_id = environment_id.trim().to_string();
    if environment_id.is_empty()
        || environment_id.len() > 256
        || environment_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(AgentError::Invalid(
            "the environment id must be the environment's id (env_…), without spaces".into(),
        ));
    }
    let key = environment_key.trim();
    if key.is_empty() {
        return Err(AgentError::Invalid("the environment key is empty".into()));
    }
    if key.len() > 8192 || key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AgentError::Invalid(
            "that does not look like an environment key (one line, no spaces)".into(),
        ));
    }
    keystore
        .set(ENVIRONMENT_KEY, &airlock_keystore::Secret::from(key))
        .await
        .map_err(|e| AgentError::Keystore(format!("storing the environment key: {e}")))?;
    let path = config_path.to_path_buf();
    let (url, id) = (base_url.clone(), environment_id);
    tokio::task::spawn_blocking(move || {
        crate::config::update(
            &path,
            crate::config::Edit::Sandbox(SandboxEdit::Login {
                base_url: &url,
                environment_id: &id,
            }),
        )
    })
    .await
    .map_err(|e| AgentError::Invalid(format!("writing config.toml: {e}")))??;
    Ok(base_url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_are_host_names_or_wildcards() {
        assert_eq!(
            validate_domain("API.Example.com.").unwrap(),
            "api.example.com"
        );
        assert_eq!(validate_domain("*.example.com").unwrap(), "*.example.com");
        for bad in [
            "",
            "*.",
            "exa mple.com",
            "http://example.com",
            "example.com/x",
            "127.0.0.1",
            "a..b",
            "-a.com",
            "*.*.example.com",
        ] {
            assert!(validate_domain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn base_urls_are_http() {
        assert_eq!(
            validate_base_url("https://api.anthropic.com/").unwrap(),
            "https://api.anthropic.com"
        );
        assert!(validate_base_url("http://127.0.0.1:9").is_ok());
        assert!(validate_base_url("ftp://x").is_err());
        assert!(validate_base_url("https://").is_err());
    }

    #[test]
    fn session_directories_are_one_safe_component() {
        assert_eq!(session_dir_name("sesn_01AbC-9"), "sesn_01AbC-9");
        for bad in ["", "..", "a/b", "../../etc", "x\0y", &"a".repeat(200)] {
            let d = session_dir_name(bad);
            assert!(
                d.starts_with("session-") && !d.contains(['/', '.', '\0']),
                "{d}"
            );
        }
    }

    #[test]
    fn executor_config_follows_the_section() {
        let home = Path::new("/data/airlock");
        let section = SandboxSection {
            allowed_domains: vec!["pypi.org".into()],
            ..Default::default()
        };
        let ex = SandboxExecutor::new(
            home,
            section,
            Some("/usr/bin/airlock".into()),
            vec!["sandbox-exec".into()],
        );
        let cfg = ex.sandbox_config("sesn_1");
        assert_eq!(
            cfg.workdir,
            Path::new("/data/airlock/sandbox/sessions/sesn_1")
        );
        assert_eq!(cfg.network.allowed_domains, vec!["pypi.org".to_string()]);
        assert!(!cfg.unconfined);
        assert_eq!(cfg.helper_args, vec!["sandbox-exec".to_string()]);
        let chosen = SandboxExecutor::new(
            home,
            SandboxSection {
                workdir: Some("/src/project".into()),
                ..Default::default()
            },
            None,
            Vec::new(),
        );
        assert_eq!(chosen.workdir_for("sesn_2"), Path::new("/src/project"));
    }

    #[test]
    fn no_isolation_refuses_unless_unconfined() {
        let none = IsolationReport {
            platform: "macos",
            bubblewrap: None,
            bubblewrap_works: false,
            bubblewrap_problem: None,
            landlock: false,
            landlock_problem: Some("Landlock is Linux-only".into()),
            seccomp: false,
            seatbelt: None,
            seatbelt_problem: None,
            cgroup: airlock_sandbox::CgroupSupport::Unavailable {
                reason: "no cgroups".into(),
            },
            best: None,
        };
        let cfg = Path::new("/h/config.toml");
        let err = check_isolation(&none, false, cfg).unwrap_err().to_string();
        assert!(
            err.contains("bubblewrap is not installed")
                && err.contains("Linux-only")
                && err.contains("unconfined = true")
                && err.contains("/h/config.toml"),
            "{err}"
        );
        assert!(check_isolation(&none, true, cfg).is_ok());
        let bwrap = IsolationReport {
            best: Some(Mechanism::Bubblewrap),
            ..none
        };
        assert!(check_isolation(&bwrap, false, cfg).is_ok());
    }

    #[test]
    fn edits_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "# mine\n[gateway]\nport = 3\n").unwrap();
        let edit = |e| crate::config::update(&path, crate::config::Edit::Sandbox(e)).unwrap();
        edit(SandboxEdit::Login {
            base_url: "http://127.0.0.1:9",
            environment_id: "env_1",
        });
        edit(SandboxEdit::AllowDomain("pypi.org"));
        edit(SandboxEdit::AllowDomain("PYPI.org"));
        edit(SandboxEdit::AllowDomain("*.github.com"));
        let cfg = edit(SandboxEdit::SetEnabled(true));
        assert!(cfg.sandbox.enabled);
        assert_eq!(cfg.sandbox.base_url.as_deref(), Some("http://127.0.0.1:9"));
        assert_eq!(cfg.sandbox.environment_id.as_deref(), Some("env_1"));
        assert_eq!(
            cfg.sandbox.allowed_domains,
            vec!["pypi.org", "*.github.com"]
        );
        assert!(std::fs::read_to_string(&path).unwrap().contains("# mine"));
        assert_eq!(crate::config::load(&path).unwrap(), cfg);
        let cfg = edit(SandboxEdit::SetEnabled(false));
        assert!(!cfg.sandbox.enabled);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_session_runs_its_tools_in_a_sandbox_and_closes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let ex = SandboxExecutor::new(
            &root.join("airlock"),
            SandboxSection::default(),
            None,
            Vec::new(),
        );
        let ctx = SessionContext {
            session_id: "sesn_test1".into(),
            work_id: "work_1".into(),
            environment_id: "env_1".into(),
            session: json!({}),
            memory: Vec::new(),
        };
        let mut tools = ex.open_session(ctx).await.unwrap();
        assert_eq!(ex.open_sessions().len(), 1);
        for name in ["bash", "read", "write", "edit", "glob", "grep"] {
            assert!(tools.owns(name), "{name}");
        }
        assert!(!tools.owns("web_fetch"));
        let c = CancellationToken::new;
        let out = tools
            .run_tool(
                "write",
                &json!({"file_path": "a.txt", "content": "hi\n"}),
                c(),
            )
            .await;
        assert!(!out.is_error, "{out:?}");
        let out = tools
            .run_tool("bash", &json!({"command": "cat a.txt; pwd"}), c())
            .await;
        assert!(!out.is_error, "{out:?}");
        let text = out.content[0]["text"].as_str().unwrap().to_string();
        let wd = root.join("airlock/sandbox/sessions/sesn_test1");
        assert!(text.contains("hi"), "{text}");
        assert!(wd.join("a.txt").is_file());
        let out = tools
            .run_tool("bash", &json!({"command": "exit 3"}), c())
            .await;
        assert!(out.is_error);
        assert_eq!(out.content[0]["type"], "text");
        tools.close().await;
        assert!(ex.open_sessions().is_empty());
        let out = tools
            .run_tool("bash", &json!({"command": "true"}), c())
            .await;
        assert!(out.is_error, "a closed session runs nothing");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn memory_stores_are_seen_by_the_tools_and_read_only_ones_refuse_writes() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let rw = root.join("mnt/memory/prefs");
        let ro = root.join("mnt/memory/team");
        std::fs::create_dir_all(&rw).unwrap();
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::write(ro.join("rules.md"), "be kind").unwrap();
        let ex = SandboxExecutor::new(
            &root.join("airlock"),
            SandboxSection::default(),
            None,
            Vec::new(),
        );
        let memory = vec![
            airlock_worker::MemoryRoot {
                path: rw.clone(),
                read_only: false,
                store_id: "memstore_rw".into(),
            },
            airlock_worker::MemoryRoot {
                path: ro.clone(),
                read_only: true,
                store_id: "memstore_ro".into(),
            },
        ];
        let ctx = SessionContext {
            session_id: "sesn_mem".into(),
            work_id: "work_1".into(),
            environment_id: "env_1".into(),
            session: json!({}),
            memory,
        };
        let mut tools = ex.open_session(ctx).await.unwrap();
        let c = CancellationToken::new;
        let cmd = format!(
            "cat {0}/rules.md && echo learned > {1}/today.md",
            ro.display(),
            rw.display()
        );
        let out = tools
            .run_tool("bash", &json!({ "command": cmd }), c())
            .await;
        assert!(!out.is_error, "{out:?}");
        assert_eq!(out.content[0]["text"], "be kind");
        assert_eq!(
            std::fs::read_to_string(rw.join("today.md")).unwrap(),
            "learned\n"
        );
        let p = ro.join("rules.md").display().to_string();
        let out = tools
            .run_tool("write", &json!({"file_path": p, "content": "x"}), c())
            .await;
        assert!(out.is_error, "a read-only store was written: {out:?}");
        let cmd = format!("echo x > {}/rules.md", ro.display());
        let out = tools
            .run_tool("bash", &json!({ "command": cmd }), c())
            .await;
        assert!(out.is_error, "{out:?}");
        assert_eq!(
            std::fs::read_to_string(ro.join("rules.md")).unwrap(),
            "be kind"
        );
        tools.close().await;
    }
}
