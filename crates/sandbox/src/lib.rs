//! Local sandbox: the environment worker's tools (`bash`, `read`, `write`, `edit`, `glob`,
//! `grep`) run inside an OS sandbox, one [`Sandbox`] per Managed Agents session.
//!
//! * **Tools** follow the reference toolset (`agent_toolset_20260401`): input schemas
//!   ([`tool_definitions`]), limits (bash output keeps the last 100 KiB, 120 s default timeout;
//!   `read`/`edit` 256 KiB text, images ≤ 5 MiB base64, PDFs ≤ 20 MiB; `glob` ≤ 200 results;
//!   `grep` ≤ 100 KiB of output) and error texts. Every failure is a [`ToolOutput`] with
//!   `is_error: true`, never a panic or an `Err`.
//! * **bash** is one persistent `/bin/bash --noprofile --norc` per session, started inside the
//!   sandbox with an **empty environment** plus a small allowlist (`PATH`, `HOME` = workdir,
//!   `LANG`, `TERM=dumb`, `TMPDIR`, and the proxy variables when egress is allowed); nothing named
//!   `ANTHROPIC_*`, `DBUS_*`, `XDG_RUNTIME_DIR` or `SSH_AUTH_SOCK` ever reaches it.
//! * **File tools** run in the agent process with checks equivalent to the sandbox's mounts:
//!   every path is resolved against the workdir with each symlink followed (the leaf too, even
//!   dangling) and refused when it leaves the workdir or an allowed root; writes to files that
//!   steer other tools (`.mcp.json`, `.git/config`, `.git/hooks/`, `.vscode/`, `.idea/`,
//!   `.claude/commands|agents/`, shell rc files) are refused.
//! * **Isolation** ([`probe_isolation`]): bubblewrap when it works (new user, pid, net, ipc, uts
//!   and cgroup namespaces; `/usr`, `/bin`, `/lib*`, `/etc` read-only with `/etc/shadow`-like
//!   secrets masked; fresh `/proc`, `/dev`, `/tmp`, `/run`; the workdir the only writable place;
//!   the user's home, `/run/user`, the D-Bus socket and Airlock's own data simply not mounted;
//!   protected files inside the workdir re-bound read-only; `--die-with-parent`,
//!   `--new-session`, no nested user namespaces, and a seccomp filter refusing kernel keyrings,
//!   `io_uring`, `bpf`, `perf_event_open` and `userfaultfd`). Protected files that did not exist
//!   when the sandbox opened and are created by a command are removed again and the call is
//!   reported as an error. Without bubblewrap, the `airlock-sandbox-exec` helper applies Landlock
//!   (writes only to the workdir, reads only to system directories) and a seccomp filter (no
//!   `AF_INET`/`AF_INET6` sockets) to itself and then execs bash. On macOS,
//!   `/usr/bin/sandbox-exec` applies a Seatbelt profile generated per session
//!   ([`seatbelt::profile`]): deny by default; system locations readable, the user's home not
//!   (except the workdir and allowlisted paths); writes only to the workdir, writable roots and
//!   a private `TMPDIR`, never to the protected files (new or existing); no Mach services beyond
//!   libc's user look-ups (no keychain); network only to the egress proxy's loopback port. With
//!   no mechanism, [`Sandbox::open`] refuses unless `unconfined` is set explicitly.
//! * **Limits that bind root**: a cgroup per session (v2 `pids.max`/`memory.max`/`cpu.max`, or
//!   the v1 `pids`/`memory`/`cpu` controllers where the kernel still mounts those), joined
//!   before the sandbox starts so every descendant is counted; plus the PID namespace and wall
//!   time limits per command.
//! * **Network** is off (empty network namespace; on macOS the profile's rules). Allowlisted
//!   domains go through
//!   [`EgressProxy`], an HTTP proxy (CONNECT and absolute-form `http://`) on a unix socket that
//!   is bound into the sandbox and reached through a loopback forwarder inside it; it applies the
//!   resolved-address rule of `airlock-egress` (no loopback, private, link-local targets unless
//!   listed) with an injectable resolver and dialer.
//! * **Memory stores**: [`MemoryMount`] is the local side (directory, marker, hashing scan,
//!   writes that never follow symlinks); the worker syncs it with the API and passes the root
//!   as a writable (or read-only) root.
//! * **Skills** unpack into `<workdir>/skills/<name>/` from zip or tar(.gz) archives with
//!   zip-slip/tar-slip refused and links/devices skipped ([`unpack_skill`]).

mod bash;
mod beneath;
mod cgroup;
mod files;
pub mod helper;
mod isolation;
mod memory;
mod paths;
mod proxy;
mod schema;
pub mod seatbelt;
mod skills;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_egress::{Dialer, Resolver, SystemResolver, TcpDialer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use cgroup::CgroupSupport;
pub use ipnet::IpNet;
pub use isolation::{IsolationReport, Mechanism, probe_isolation};
pub use memory::{
    LocalMemory, LocalSnapshot, MEMORY_MARKER, MarkerState, MemoryMount, content_sha256,
    validate_memory_path,
};
pub use proxy::{EgressProxy, domain_allowed};
pub use schema::tool_definitions;
pub use skills::{SkillReport, unpack_skill};

/// Names of the tools this crate executes.
pub const TOOL_NAMES: [&str; 6] = ["bash", "read", "write", "edit", "glob", "grep"];

/// One block of a tool result, in the Messages API shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ContentBlock {
    /// `{"type":"text","text":...}`
    Text { text: String },
    /// `{"type":"image","source":{"type":"base64","media_type":"image/png","data":...}}`
    Image { source: Base64Source },
    /// `{"type":"document","source":{"type":"base64","media_type":"application/pdf","data":...}}`
    Document { source: Base64Source },
}

/// A base64 `source` of an image or document block.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Base64Source {
    /// Always `"base64"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// `image/png`, `image/jpeg`, `image/gif`, `image/webp` or `application/pdf`.
    pub media_type: String,
    /// Standard base64 with padding.
    pub data: String,
}

/// What a tool call returns: the `content` and `is_error` of a `user.tool_result` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolOutput {
    pub content: Vec<ContentBlock>,
    pub is_error: bool,
}

impl ToolOutput {
    /// A successful text result (`"(no output)"` when empty, as the reference runner does).
    pub fn text(text: impl Into<String>) -> Self {
        let text = text.into();
        let text = if text.is_empty() {
            "(no output)".to_owned()
        } else {
            text
        };
        Self {
            content: vec![ContentBlock::Text { text }],
            is_error: false,
        }
    }

    /// A failed result carrying `message`.
    pub fn error(message: impl Into<String>) -> Self {
        let mut out = Self::text(message);
        out.is_error = true;
        out
    }

    /// The concatenated text blocks (for logs and tests).
    pub fn text_content(&self) -> String {
        self.content
            .iter()
            .filter_map(|b| match b {
                ContentBlock::Text { text } => Some(text.as_str()),
                _ => None,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Everything that stops a sandbox from opening (tool failures are [`ToolOutput`]s instead).
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// No isolation mechanism works on this machine and `unconfined` was not set.
    #[error(
        "no sandbox is available on this machine ({0}); install bubblewrap (`apt install bubblewrap`) or run a kernel with Landlock, or opt into unconfined mode explicitly"
    )]
    NoIsolation(String),
    /// The requested mechanism is not available.
    #[error("sandbox mechanism {mechanism:?} is not available here: {reason}")]
    MechanismUnavailable {
        mechanism: Mechanism,
        reason: String,
    },
    /// The workdir is unusable.
    #[error("sandbox workdir {path}: {reason}")]
    Workdir { path: PathBuf, reason: String },
    /// The configuration is inconsistent.
    #[error("invalid sandbox configuration: {0}")]
    Config(String),
    /// Resource limits were required but no usable cgroup hierarchy was found.
    #[error(
        "resource limits are required but cannot be applied: {0}; run the agent in a cgroup it may create children in (cgroup v2 with pids/memory/cpu delegated), or set limits.require = false"
    )]
    Limits(String),
    /// A skill archive was refused.
    #[error("skill archive refused: {0}")]
    Skill(String),
    /// Operating-system error.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// CPU bandwidth: `quota_us` of CPU time per `period_us` (cgroup `cpu.max`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuMax {
    pub quota_us: u64,
    pub period_us: u64,
}

/// Resource and time limits of one session.
#[derive(Debug, Clone)]
pub struct Limits {
    /// cgroup `pids.max` (tasks, threads included). Default 512.
    pub pids_max: Option<u64>,
    /// cgroup `memory.max` in bytes (swap is limited to zero where the kernel allows). Default 4 GiB.
    pub memory_max: Option<u64>,
    /// cgroup `cpu.max`. Default one CPU.
    pub cpu_max: Option<CpuMax>,
    /// Refuse to open when the cgroup limits cannot be applied. Default false: the sandbox opens
    /// and [`Sandbox::limits_applied`] says `false` (shown to the user).
    pub require: bool,
    /// Where to create the per-session cgroup; default: a child of the agent's own cgroup.
    pub cgroup_parent: Option<PathBuf>,
    /// bash timeout when the call gives no `timeout_ms`. Default 120 s.
    pub default_timeout: Duration,
    /// Upper bound for `timeout_ms`. Default 30 min.
    pub max_timeout: Duration,
    /// bash output kept (the tail). Default 100 KiB.
    pub output_cap: usize,
    /// `read`/`edit` text cap. Default 256 KiB.
    pub max_file_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pids_max: Some(512),
            memory_max: Some(4 << 30),
            cpu_max: Some(CpuMax {
                quota_us: 100_000,
                period_us: 100_000,
            }),
            require: false,
            cgroup_parent: None,
            default_timeout: Duration::from_secs(120),
            max_timeout: Duration::from_secs(1800),
            output_cap: 100 * 1024,
            max_file_bytes: 256 * 1024,
        }
    }
}

/// Egress of the sandbox. Empty `allowed_domains` = no network at all.
#[derive(Clone)]
pub struct NetworkPolicy {
    /// Host names reachable through the proxy: `example.com` (exactly) or `*.example.com`
    /// (any subdomain, not the apex).
    pub allowed_domains: Vec<String>,
    /// Networks that may be dialled although they are private, loopback or link-local.
    pub allowed_ips: Vec<IpNet>,
    /// Name resolution used by the proxy (tests inject a static map).
    pub resolver: Arc<dyn Resolver>,
    /// Connection opening used by the proxy (tests inject one).
    pub dialer: Arc<dyn Dialer>,
}

impl std::fmt::Debug for NetworkPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkPolicy")
            .field("allowed_domains", &self.allowed_domains)
            .field("allowed_ips", &self.allowed_ips)
            .finish_non_exhaustive()
    }
}

impl Default for NetworkPolicy {
    fn default() -> Self {
        Self {
            allowed_domains: Vec::new(),
            allowed_ips: Vec::new(),
            resolver: Arc::new(SystemResolver),
            dialer: Arc::new(TcpDialer),
        }
    }
}

/// How one session's sandbox is built.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// The session's working directory (created if missing). Bash starts here, `HOME` points
    /// here, file tools resolve relative paths here. Must not be `/`, the user's home or one of
    /// its ancestors.
    pub workdir: PathBuf,
    /// The user's home, hidden from the sandbox (default `$HOME`). Only used for checks: the
    /// sandbox mounts nothing of it except the workdir and `read_only_paths`.
    pub user_home: Option<PathBuf>,
    /// Paths the user allowlisted: visible read-only to bash and to the file tools.
    pub read_only_paths: Vec<PathBuf>,
    /// Extra writable roots (memory stores).
    pub writable_roots: Vec<PathBuf>,
    /// Egress.
    pub network: NetworkPolicy,
    /// Limits.
    pub limits: Limits,
    /// Which mechanism to use (default [`Mechanism::Auto`]).
    pub mechanism: Mechanism,
    /// Run without any OS sandbox when none is available (the UI must show this in red).
    pub unconfined: bool,
    /// The `airlock-sandbox-exec` helper (or a command that behaves like it): needed for the
    /// Landlock fallback and for the in-sandbox proxy forwarder. Default: the
    /// `AIRLOCK_SANDBOX_EXEC` environment variable, else `airlock-sandbox-exec` next to the
    /// current executable.
    pub helper: Option<PathBuf>,
    /// Arguments placed before the helper's own (e.g. `["sandbox-exec"]` when the helper is
    /// the `airlock` binary with a hidden subcommand calling [`helper::main_with_prefix`]).
    pub helper_args: Vec<String>,
    /// Extra environment for bash (`ANTHROPIC_*`, `DBUS_*`, `XDG_RUNTIME_DIR`,
    /// `SSH_AUTH_SOCK` are refused).
    pub env: Vec<(String, String)>,
    /// The shell (default `/bin/bash`, as the reference requires).
    pub bash_path: PathBuf,
}

impl SandboxConfig {
    /// Defaults around `workdir`.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        Self {
            workdir: workdir.into(),
            user_home: None,
            read_only_paths: Vec::new(),
            writable_roots: Vec::new(),
            network: NetworkPolicy::default(),
            limits: Limits::default(),
            mechanism: Mechanism::Auto,
            unconfined: false,
            helper: None,
            helper_args: Vec::new(),
            env: Vec::new(),
            bash_path: PathBuf::from("/bin/bash"),
        }
    }
}

/// What one open sandbox actually applies.
#[derive(Debug, Clone, Serialize)]
pub struct SandboxStatus {
    /// `bubblewrap`, `landlock`, `seatbelt` or `unconfined`.
    pub mechanism: &'static str,
    /// The workdir (canonical).
    pub workdir: PathBuf,
    /// Whether cgroup limits are applied, and where.
    pub cgroup: Option<String>,
    /// Why limits are not applied, when they are not.
    pub limits_problem: Option<String>,
    /// Domains reachable through the proxy.
    pub allowed_domains: Vec<String>,
}

/// One session's sandbox: its workdir, policy, limits and persistent bash.
pub struct Sandbox {
    inner: Arc<Inner>,
    bash: tokio::sync::Mutex<bash::BashState>,
    _proxy: Option<EgressProxy>,
    _forward: Option<seatbelt::LoopbackForward>,
}

impl std::fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sandbox")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

pub(crate) struct Inner {
    pub(crate) workdir: PathBuf,
    pub(crate) roots: paths::Roots,
    pub(crate) limits: Limits,
    pub(crate) launch: isolation::Launch,
    pub(crate) cgroup: Option<cgroup::SessionCgroup>,
    pub(crate) limits_problem: Option<String>,
    pub(crate) allowed_domains: Vec<String>,
    pub(crate) protected_at_open: Vec<PathBuf>,
}

impl Sandbox {
    /// Build the session's sandbox: check the workdir, pick the isolation mechanism (refusing
    /// when there is none, unless `unconfined`), create the cgroup, start the egress proxy. The
    /// shell itself starts on the first `bash` call.
    pub async fn open(cfg: SandboxConfig) -> Result<Self, SandboxError> {
        let cfg2 = cfg.clone();
        let prepared = tokio::task::spawn_blocking(move || isolation::prepare(&cfg2))
            .await
            .map_err(|e| SandboxError::Config(format!("sandbox setup task failed: {e}")))??;
        let isolation::Prepared {
            workdir,
            roots,
            launch_plan,
            cgroup,
            limits_problem,
            protected_at_open,
        } = prepared;

        let mut proxy = None;
        let mut proxy_socket = None;
        if !cfg.network.allowed_domains.is_empty() {
            if launch_plan.mechanism == Mechanism::Unconfined {
                return Err(SandboxError::Config(
                    "an egress allowlist needs a sandbox (unconfined mode has unrestricted network)"
                        .into(),
                ));
            }
            let p = EgressProxy::start(proxy::ProxyConfig {
                allowed_domains: cfg.network.allowed_domains.clone(),
                allowed_ips: cfg.network.allowed_ips.clone(),
                resolver: cfg.network.resolver.clone(),
                dialer: cfg.network.dialer.clone(),
            })
            .await?;
            proxy_socket = Some(p.socket_path().to_path_buf());
            proxy = Some(p);
        }
        // Seatbelt has no network namespace: the proxy is reached on a loopback port, the one
        // destination its profile allows.
        let mut forward = None;
        if launch_plan.mechanism == Mechanism::Seatbelt
            && let Some(sock) = &proxy_socket
        {
            forward = Some(seatbelt::LoopbackForward::start(sock.clone()).await?);
        }
        let proxy_port = forward.as_ref().map(seatbelt::LoopbackForward::port);
        let launch =
            launch_plan.finish(&cfg, &workdir, proxy_socket, proxy_port, cgroup.as_ref())?;
        let inner = Arc::new(Inner {
            workdir,
            roots,
            limits: cfg.limits.clone(),
            launch,
            cgroup,
            limits_problem,
            allowed_domains: cfg.network.allowed_domains.clone(),
            protected_at_open,
        });
        let sandbox = Self {
            inner,
            bash: tokio::sync::Mutex::new(bash::BashState::default()),
            _proxy: proxy,
            _forward: forward,
        };
        // Start the shell now (the first tool call does not pay for it) and prove the sandbox
        // really runs commands.
        let probe = sandbox
            .run_tool(
                "bash",
                serde_json::json!({"command": "true", "timeout_ms": 30_000}),
                CancellationToken::new(),
            )
            .await;
        if probe.is_error {
            let msg = probe.text_content();
            sandbox.close().await;
            return Err(SandboxError::Config(format!(
                "the sandboxed shell did not start: {msg}"
            )));
        }
        Ok(sandbox)
    }

    /// Run one tool call. Never fails: problems are `is_error: true` results. `cancel` kills
    /// a running command (the next bash call gets a fresh shell).
    pub async fn run_tool(
        &self,
        name: &str,
        input: serde_json::Value,
        cancel: CancellationToken,
    ) -> ToolOutput {
        match name {
            "bash" => {
                let mut state = self.bash.lock().await;
                bash::run(&self.inner, &mut state, input, cancel).await
            }
            "read" | "write" | "edit" | "glob" | "grep" => {
                let inner = self.inner.clone();
                let name = name.to_owned();
                let task = tokio::task::spawn_blocking(move || files::run(&inner, &name, &input));
                tokio::select! {
                    r = task => r.unwrap_or_else(|e| ToolOutput::error(format!("tool failed: {e}"))),
                    _ = cancel.cancelled() => ToolOutput::error("tool call cancelled"),
                }
            }
            other => ToolOutput::error(format!("unknown tool '{other}'")),
        }
    }

    /// Unpack a skill archive into `<workdir>/skills/<name>/`.
    pub async fn install_skill(
        &self,
        name: &str,
        archive: Vec<u8>,
    ) -> Result<SkillReport, SandboxError> {
        let dir = self.inner.workdir.join("skills");
        let name = name.to_owned();
        tokio::task::spawn_blocking(move || unpack_skill(&archive, &dir, &name))
            .await
            .map_err(|e| SandboxError::Skill(format!("unpack task failed: {e}")))?
    }

    /// The canonical workdir.
    pub fn workdir(&self) -> &Path {
        &self.inner.workdir
    }

    /// True when the cgroup limits are in force.
    pub fn limits_applied(&self) -> bool {
        self.inner.cgroup.is_some()
    }

    /// What this sandbox applies.
    pub fn status(&self) -> SandboxStatus {
        SandboxStatus {
            mechanism: self.inner.launch.mechanism.as_str(),
            workdir: self.inner.workdir.clone(),
            cgroup: self.inner.cgroup.as_ref().map(|c| c.describe()),
            limits_problem: self.inner.limits_problem.clone(),
            allowed_domains: self.inner.allowed_domains.clone(),
        }
    }

    /// Kill the shell and everything it started, remove the cgroup, stop the proxy.
    pub async fn close(self) {
        {
            let mut state = self.bash.lock().await;
            bash::kill(&self.inner, &mut state).await;
        }
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || {
            paths::sweep_protected(&inner);
            if let Some(cg) = &inner.cgroup {
                cg.kill_all();
                cg.remove();
            }
        })
        .await;
    }
}
