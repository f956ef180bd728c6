//! Supervisor for Cloudflare's `cloudflared` connector.
//!
//! Runs `cloudflared tunnel --no-autoupdate run --url <target>` with the tunnel token **only**
//! in the `TUNNEL_TOKEN` environment variable (never in argv, where any local user could read
//! it from `/proc/<pid>/cmdline` or `ps`), with an otherwise minimal environment. Reads its
//! log lines, tracks the registered edge connections (cloudflared opens four), restarts it with
//! jittered exponential backoff when it exits, and stops it on shutdown (SIGTERM, then SIGKILL
//! after a grace period). State is published on a `tokio::sync::watch` channel.
//!
//! Log wording tracked (cloudflared's own, e.g.
//! `2026-05-19T10:00:00Z INF Registered tunnel connection connIndex=0 connection=… event=0
//! ip=198.41.192.7 location=lhr01 protocol=quic`):
//! * `Registered tunnel connection connIndex=N` → connection N up;
//! * `Unregistered tunnel connection connIndex=N` (graceful) and
//!   `Connection terminated … connIndex=N` (error) → connection N down;
//! * `ERR` / `FTL` lines → remembered as the last error, reported in [`CloudflaredState::Backoff`].

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The Cloudflare tunnel token. `Debug` never shows it; nothing in this module logs it.
#[derive(Clone, PartialEq, Eq)]
pub struct TunnelToken(String);

impl TunnelToken {
    /// Wrap a token (usually starting `eyJ`).
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into().trim().to_owned())
    }

    /// The token itself — only for putting it into the child's environment.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True for an empty token.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for TunnelToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TunnelToken(<redacted>)")
    }
}

impl From<String> for TunnelToken {
    fn from(s: String) -> Self {
        Self::new(s)
    }
}

/// How to run cloudflared.
#[derive(Debug, Clone)]
pub struct CloudflaredOptions {
    /// The executable; `None` searches `PATH` and the usual install directories
    /// ([`find_cloudflared`]).
    pub binary: Option<PathBuf>,
    /// Local target for `--url`, e.g. `http://127.0.0.1:8080`.
    pub target_url: String,
    /// First restart delay (before jitter). Default 1 s.
    pub backoff_min: Duration,
    /// Longest restart delay. Default 60 s.
    pub backoff_max: Duration,
    /// Time between SIGTERM and SIGKILL on shutdown. Default 15 s.
    pub stop_grace: Duration,
    /// A run at least this long resets the backoff attempt counter. Default 60 s.
    pub stable_after: Duration,
    /// How often to look for the binary again while it is not installed. Default 30 s.
    pub not_installed_recheck: Duration,
}

impl CloudflaredOptions {
    /// Defaults, targeting `target_url`.
    pub fn new(target_url: impl Into<String>) -> Self {
        Self {
            binary: None,
            target_url: target_url.into(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            stop_grace: Duration::from_secs(15),
            stable_after: Duration::from_secs(60),
            not_installed_recheck: Duration::from_secs(30),
        }
    }

    /// Defaults, targeting `http://127.0.0.1:<port>`.
    pub fn for_local_port(port: u16) -> Self {
        Self::new(format!("http://127.0.0.1:{port}"))
    }
}

/// What the supervisor is doing; serialises as `{"state": "running", "connections": 4, …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum CloudflaredState {
    /// No cloudflared executable; `hint` says how to install it.
    NotInstalled { hint: String },
    /// Launching (or launched, no edge connection registered yet).
    Starting,
    /// Running; `connections` registered edge connections (four when healthy).
    Running { connections: u32, pid: u32 },
    /// Exited (or failed to start); restarting at `retry_at_unix_ms`.
    Backoff {
        attempt: u32,
        retry_at_unix_ms: u64,
        last_error: String,
    },
    /// Shut down.
    Stopped,
}

/// How to install cloudflared, shown in [`CloudflaredState::NotInstalled`].
pub const INSTALL_HINT: &str = "cloudflared (Cloudflare's tunnel connector) is not installed or not on PATH. \
Install it — Debian/Ubuntu: add Cloudflare's package repository (https://pkg.cloudflare.com/) and run \
`sudo apt install cloudflared`, or download the .deb or binary from \
https://github.com/cloudflare/cloudflared/releases; macOS: `brew install cloudflared`; \
Windows: `winget install --id Cloudflare.cloudflared`. Airlock looks for it again every 30 seconds.";

/// Runs and watches one cloudflared process. Dropping it stops cloudflared too (in the
/// background); [`CloudflaredSupervisor::shutdown`] waits for that.
pub struct CloudflaredSupervisor {
    state: watch::Receiver<CloudflaredState>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl fmt::Debug for CloudflaredSupervisor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflaredSupervisor")
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl CloudflaredSupervisor {
    /// Start supervising. Must be called inside a Tokio runtime.
    pub fn start(opts: CloudflaredOptions, token: TunnelToken) -> Self {
        let (tx, rx) = watch::channel(CloudflaredState::Starting);
        let cancel = CancellationToken::new();
        let task = tokio::spawn(supervise(opts, token, tx, cancel.clone()));
        Self {
            state: rx,
            cancel,
            task: Some(task),
        }
    }

    /// A receiver for state changes.
    pub fn state(&self) -> watch::Receiver<CloudflaredState> {
        self.state.clone()
    }

    /// The current state.
    pub fn current(&self) -> CloudflaredState {
        self.state.borrow().clone()
    }

    /// Stop cloudflared (SIGTERM, SIGKILL after the grace period) and wait until it is gone.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take()
            && let Err(e) = task.await
        {
            tracing::warn!("cloudflared supervisor task ended abnormally: {e}");
        }
    }
}

impl Drop for CloudflaredSupervisor {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Search `path_var` (a `PATH`-style list) for an executable `cloudflared`.
pub fn find_cloudflared_in(path_var: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path_var)
        .map(|dir| dir.join(exe_name()))
        .find(|p| is_executable(p))
}

/// Search `PATH`, then the usual install directories (a GUI app's `PATH` is often minimal).
pub fn find_cloudflared() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH")
        && let Some(found) = find_cloudflared_in(&path)
    {
        return Some(found);
    }
    ["/usr/local/bin", "/opt/homebrew/bin", "/usr/bin"]
        .iter()
        .map(|d| Path::new(d).join(exe_name()))
        .find(|p| is_executable(p))
}

fn exe_name() -> &'static str {
    if cfg!(windows) {
        "cloudflared.exe"
    } else {
        "cloudflared"
    }
}

fn is_executable(p: &Path) -> bool {
    match std::fs::metadata(p) {
        Ok(m) if m.is_file() => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                true
            }
        }
        _ => false,
    }
}

/// Restart delay for `attempt` (1-based): `backoff_min * 2^(attempt-1)` capped at
/// `backoff_max`, then "equal jitter" (`jitter` in `[0, 1)` picks a point in the upper half),
/// never below `backoff_min`.
pub fn backoff_delay(attempt: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let base = min.saturating_mul(1u32 << exp).min(max.max(min));
    let half = base / 2;
    let jittered = half + half.mul_f64(jitter.clamp(0.0, 1.0));
    jittered.max(min)
}

/// A log line that matters to the supervisor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEvent {
    /// `Registered tunnel connection connIndex=N …`
    Registered { conn_index: Option<u32> },
    /// `Unregistered tunnel connection connIndex=N` or `Connection terminated … connIndex=N`.
    Lost { conn_index: Option<u32> },
    /// An `ERR`/`FTL` line (message after the level).
    Error(String),
}

/// Classify one cloudflared log line.
pub fn parse_line(line: &str) -> Option<LogEvent> {
    let line = strip_ansi(line);
    let conn_index = || {
        let (_, rest) = line.split_once("connIndex=")?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    if line.contains("Unregistered tunnel connection") || line.contains("Connection terminated") {
        return Some(LogEvent::Lost {
            conn_index: conn_index(),
        });
    }
    if line.contains("Registered tunnel connection") {
        return Some(LogEvent::Registered {
            conn_index: conn_index(),
        });
    }
    for level in [" ERR ", " FTL "] {
        if let Some((_, msg)) = line.split_once(level) {
            return Some(LogEvent::Error(truncate(msg.trim(), 300)));
        }
    }
    if let Some(msg) = line
        .strip_prefix("ERR ")
        .or_else(|| line.strip_prefix("FTL "))
    {
        return Some(LogEvent::Error(truncate(msg.trim(), 300)));
    }
    None
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Registered connections, by index (indices let a `Lost` for a connection that never
/// registered be ignored, and a re-registration of the same index not double count).
#[derive(Debug, Default)]
struct Connections {
    indexed: HashSet<u32>,
    anonymous: u32,
}

impl Connections {
    fn apply(&mut self, ev: &LogEvent) -> bool {
        let before = self.count();
        match ev {
            LogEvent::Registered {
                conn_index: Some(i),
            } => {
                self.indexed.insert(*i);
            }
            LogEvent::Registered { conn_index: None } => {
                self.anonymous = self.anonymous.saturating_add(1);
            }
            LogEvent::Lost {
                conn_index: Some(i),
            } => {
                if !self.indexed.remove(i) && self.anonymous > 0 {
                    self.anonymous -= 1;
                }
            }
            LogEvent::Lost { conn_index: None } => {
                if self.anonymous > 0 {
                    self.anonymous -= 1;
                } else if let Some(i) = self.indexed.iter().next().copied() {
                    self.indexed.remove(&i);
                }
            }
            LogEvent::Error(_) => {}
        }
        self.count() != before
    }

    fn count(&self) -> u32 {
        u32::try_from(self.indexed.len())
            .unwrap_or(u32::MAX)
            .saturating_add(self.anonymous)
    }
}

enum RunOutcome {
    Cancelled,
    NotFound,
    Exited { error: String },
}

async fn supervise(
    opts: CloudflaredOptions,
    token: TunnelToken,
    tx: watch::Sender<CloudflaredState>,
    cancel: CancellationToken,
) {
    let mut attempt: u32 = 0;
    while !cancel.is_cancelled() {
        let binary = match locate(&opts).await {
            Some(b) => b,
            None => {
                not_installed(&tx, opts.binary.as_deref());
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(opts.not_installed_recheck) => continue,
                }
            }
        };
        tx.send_replace(CloudflaredState::Starting);
        let started = tokio::time::Instant::now();
        match run_once(&binary, &opts, &token, &tx, &cancel).await {
            RunOutcome::Cancelled => break,
            RunOutcome::NotFound => {
                not_installed(&tx, Some(&binary));
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(opts.not_installed_recheck) => continue,
                }
            }
            RunOutcome::Exited { error } => {
                if started.elapsed() >= opts.stable_after {
                    attempt = 0;
                }
                attempt = attempt.saturating_add(1);
                let delay = backoff_delay(
                    attempt,
                    opts.backoff_min,
                    opts.backoff_max,
                    rand::random::<f64>(),
                );
                let retry_at_unix_ms = SystemTime::now()
                    .checked_add(delay)
                    .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                tracing::warn!(
                    attempt,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "cloudflared stopped: {error}; restarting"
                );
                tx.send_replace(CloudflaredState::Backoff {
                    attempt,
                    retry_at_unix_ms,
                    last_error: error,
                });
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    tx.send_replace(CloudflaredState::Stopped);
}

fn not_installed(tx: &watch::Sender<CloudflaredState>, configured: Option<&Path>) {
    let hint = match configured {
        Some(p) => format!("{} does not exist. {INSTALL_HINT}", p.display()),
        None => INSTALL_HINT.to_owned(),
    };
    let state = CloudflaredState::NotInstalled { hint };
    if *tx.borrow() != state {
        tracing::warn!("cloudflared not found; the tunnel stays down until it is installed");
        tx.send_replace(state);
    }
}

async fn locate(opts: &CloudflaredOptions) -> Option<PathBuf> {
    if let Some(b) = &opts.binary {
        return Some(b.clone());
    }
    tokio::task::spawn_blocking(find_cloudflared)
        .await
        .ok()
        .flatten()
}

/// Variables passed through to cloudflared; everything else is cleared.
const PASSTHROUGH_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "SYSTEMROOT",
    "USERPROFILE",
    "APPDATA",
    "LOCALAPPDATA",
    "TEMP",
    "TMP",
];

fn command(binary: &Path, opts: &CloudflaredOptions, token: &TunnelToken) -> Command {
    let mut cmd = Command::new(binary);
    cmd.args(["tunnel", "--no-autoupdate", "run", "--url"])
        .arg(&opts.target_url)
        .env_clear()
        .envs(
            PASSTHROUGH_ENV
                .iter()
                .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v))),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if !token.is_empty() {
        cmd.env("TUNNEL_TOKEN", token.expose());
    }
    // Own process group: a Ctrl-C in Airlock's terminal must not kill cloudflared behind the
    // supervisor's back (it stops it itself, in order).
    #[cfg(unix)]
    cmd.process_group(0);
    cmd
}

const MAX_LINE: usize = 8 * 1024;

async fn run_once(
    binary: &Path,
    opts: &CloudflaredOptions,
    token: &TunnelToken,
    tx: &watch::Sender<CloudflaredState>,
    cancel: &CancellationToken,
) -> RunOutcome {
    let mut child = match command(binary, opts, token).spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return RunOutcome::NotFound,
        Err(e) => {
            return RunOutcome::Exited {
                error: format!("could not start {}: {e}", binary.display()),
            };
        }
    };
    let pid = child.id().unwrap_or(0);
    tracing::info!(pid, target_url = %opts.target_url, "cloudflared started");
    let (line_tx, mut lines) = mpsc::channel::<String>(256);
    if let Some(out) = child.stdout.take() {
        tokio::spawn(read_lines(out, line_tx.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(read_lines(err, line_tx.clone()));
    }
    drop(line_tx);

    let mut conns = Connections::default();
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                stop(&mut child, pid, opts.stop_grace).await;
                return RunOutcome::Cancelled;
            }
            Some(line) = lines.recv() => {
                handle_line(&line, token, &mut conns, &mut last_error, |count| {
                    tx.send_replace(CloudflaredState::Running { connections: count, pid });
                });
            }
            status = child.wait() => {
                // Pick up the last lines (the reason it exited), briefly.
                let drain = async {
                    while let Some(line) = lines.recv().await {
                        handle_line(&line, token, &mut conns, &mut last_error, |_| {});
                    }
                };
                let _ = tokio::time::timeout(Duration::from_millis(500), drain).await;
                return RunOutcome::Exited { error: describe_exit(status, last_error) };
            }
        }
    }
}

fn handle_line(
    line: &str,
    token: &TunnelToken,
    conns: &mut Connections,
    last_error: &mut Option<String>,
    mut on_change: impl FnMut(u32),
) {
    let line = if token.is_empty() {
        line.to_owned()
    } else {
        line.replace(token.expose(), "<redacted>")
    };
    let event = parse_line(&line);
    match &event {
        Some(LogEvent::Error(msg)) => {
            tracing::warn!(target: "airlock::cloudflared", "{line}");
            *last_error = Some(msg.clone());
        }
        Some(_) => tracing::info!(target: "airlock::cloudflared", "{line}"),
        None => tracing::debug!(target: "airlock::cloudflared", "{line}"),
    }
    if let Some(ev) = event
        && !matches!(ev, LogEvent::Error(_))
    {
        let changed = conns.apply(&ev);
        if changed || matches!(ev, LogEvent::Registered { .. }) {
            on_change(conns.count());
        }
    }
}

fn describe_exit(status: std::io::Result<ExitStatus>, last_error: Option<String>) -> String {
    let status = match status {
        Ok(s) => format!("cloudflared exited ({s})"),
        Err(e) => format!("waiting for cloudflared failed: {e}"),
    };
    match last_error {
        Some(err) => format!("{status}: {err}"),
        None => status,
    }
}

async fn read_lines(stream: impl AsyncRead + Unpin, tx: mpsc::Sender<String>) {
    let mut reader = BufReader::with_capacity(MAX_LINE, stream);
    let mut buf = Vec::with_capacity(256);
    loop {
        buf.clear();
        // Bounded line read: take at most MAX_LINE bytes, then skip to the newline.
        let mut truncated = false;
        loop {
            let chunk = match reader.fill_buf().await {
                Ok(c) => c,
                Err(_) => return,
            };
            if chunk.is_empty() {
                if !buf.is_empty() {
                    let _ = tx.send(String::from_utf8_lossy(&buf).into_owned()).await;
                }
                return;
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            let room = MAX_LINE.saturating_sub(buf.len());
            if room > 0 {
                buf.extend_from_slice(&chunk[..take.min(room)]);
            } else {
                truncated = true;
            }
            reader.consume(take);
            if done {
                break;
            }
        }
        let mut line = String::from_utf8_lossy(&buf).trim_end().to_owned();
        if truncated {
            line.push('…');
        }
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

async fn stop(child: &mut Child, pid: u32, grace: Duration) {
    #[cfg(unix)]
    {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        // Only signal a child that has not been reaped: its pid cannot have been reused.
        if let (Ok(None), Ok(raw)) = (child.try_wait(), i32::try_from(pid))
            && raw > 0
        {
            let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
        }
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        let _ = child.start_kill();
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => tracing::info!(pid, "cloudflared stopped"),
        Err(_) => {
            tracing::warn!(pid, "cloudflared ignored SIGTERM for {grace:?}; killing it");
            let _ = child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REG: &str = "2026-05-19T10:00:01Z INF Registered tunnel connection connIndex=2 connection=0b3c1f4e-6a51-4a3e-9d7b-2a1f0c9e8d71 event=0 ip=198.41.192.27 location=lhr01 protocol=quic";

    #[test]
    fn parses_cloudflared_wording() {
        assert_eq!(
            parse_line(REG),
            Some(LogEvent::Registered {
                conn_index: Some(2)
            })
        );
        assert_eq!(
            parse_line(
                "2026-05-19T10:05:00Z INF Unregistered tunnel connection connIndex=2 event=0 ip=198.41.192.27"
            ),
            Some(LogEvent::Lost {
                conn_index: Some(2)
            })
        );
        assert_eq!(
            parse_line(
                "2026-05-19T10:05:00Z ERR Connection terminated error=\"timeout: no recent network activity\" connIndex=1"
            ),
            Some(LogEvent::Lost {
                conn_index: Some(1)
            })
        );
        assert_eq!(
            parse_line(
                "\u{1b}[32m2026-05-19T10:00:01Z\u{1b}[0m \u{1b}[32mINF\u{1b}[0m Registered tunnel connection \u{1b}[36mconnIndex=\u{1b}[0m3"
            ),
            Some(LogEvent::Registered {
                conn_index: Some(3)
            })
        );
        assert_eq!(
            parse_line("2026-05-19T10:00:00Z ERR Provided Tunnel token is not valid."),
            Some(LogEvent::Error(
                "Provided Tunnel token is not valid.".into()
            ))
        );
        assert_eq!(
            parse_line(
                "2026-05-19T10:00:00Z WRN failed to sufficiently increase receive buffer size (was: 208 kiB, wanted: 7168 kiB, got: 416 kiB)."
            ),
            None
        );
        assert_eq!(
            parse_line("2026-05-19T10:00:00Z INF Starting tunnel tunnelID=x"),
            None
        );
    }

    #[test]
    fn connection_count_by_index() {
        let mut c = Connections::default();
        for i in 0..4 {
            assert!(c.apply(&LogEvent::Registered {
                conn_index: Some(i)
            }));
        }
        assert_eq!(c.count(), 4);
        // Re-registration of the same index does not double count.
        assert!(!c.apply(&LogEvent::Registered {
            conn_index: Some(1)
        }));
        assert_eq!(c.count(), 4);
        assert!(c.apply(&LogEvent::Lost {
            conn_index: Some(1)
        }));
        // A terminated connection that never registered changes nothing.
        assert!(!c.apply(&LogEvent::Lost {
            conn_index: Some(9)
        }));
        assert!(!c.apply(&LogEvent::Lost {
            conn_index: Some(1)
        }));
        assert_eq!(c.count(), 3);
        assert!(c.apply(&LogEvent::Registered { conn_index: None }));
        assert_eq!(c.count(), 4);
        assert!(c.apply(&LogEvent::Lost { conn_index: None }));
        assert_eq!(c.count(), 3);
    }

    #[test]
    fn backoff_grows_jitters_and_caps() {
        let (min, max) = (Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(backoff_delay(1, min, max, 0.0), min);
        assert_eq!(
            backoff_delay(1, min, max, 0.999),
            Duration::from_millis(999).max(min)
        );
        assert_eq!(backoff_delay(3, min, max, 0.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(3, min, max, 1.0), Duration::from_secs(4));
        let d = backoff_delay(4, min, max, 0.5);
        assert!(
            d > Duration::from_secs(4) && d < Duration::from_secs(8),
            "{d:?}"
        );
        for attempt in [7, 8, 40, u32::MAX] {
            let d = backoff_delay(attempt, min, max, 1.0);
            assert_eq!(d, max, "attempt {attempt}");
            assert!(backoff_delay(attempt, min, max, 0.0) >= max / 2);
        }
    }

    #[test]
    fn token_is_redacted_in_debug() {
        let t = TunnelToken::new("eyJhIjoic2VjcmV0In0");
        assert!(!format!("{t:?}").contains("eyJ"));
    }

    #[test]
    fn state_serialises_tagged_snake_case() {
        let s = serde_json_like(&CloudflaredState::Running {
            connections: 4,
            pid: 42,
        });
        assert_eq!(s, r#"{"state":"running","connections":4,"pid":42}"#);
        let s = serde_json_like(&CloudflaredState::NotInstalled { hint: "h".into() });
        assert_eq!(s, r#"{"state":"not_installed","hint":"h"}"#);
    }

    fn serde_json_like(v: &CloudflaredState) -> String {
        serde_json::to_string(v).unwrap()
    }
}
