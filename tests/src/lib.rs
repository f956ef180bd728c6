//! End-to-end test harness for Airlock.
//!
//! The tests drive the real `airlock` binary (`airlock up` in a throwaway `HOME` and
//! `AIRLOCK_HOME`), real MCP servers (`mcp-server-time` from the Python venv,
//! `@modelcontextprotocol/server-everything` from `tests/node`) and real clients (the
//! official Python SDK, the conformance suite). All traffic stays on loopback.
//!
//! Tools are provisioned by `scripts/test`; when one is missing the harness panics with a
//! message saying so (tests never silently skip).
//!
//! This is test-only code: failures panic with a message that says what went wrong and,
//! where it applies, what to run to fix it.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod browser;
pub mod oauth;
pub mod proxy;
pub mod queue;
pub mod relay;

/// How long to wait for `airlock up` to report `ready: true` (a loaded 2-core machine).
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// `config.toml` written for agents whose test did not write one.
pub const DEFAULT_TEST_CONFIG: &str = "[discovery]\nprobe_running = false\n";
/// Default bound for one CLI invocation.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(60);

const SETUP_HINT: &str = "run `scripts/test` once from the repository root (it installs the \
     Python venv under .cache/venv and the npm test tools under tests/node)";

// ---------------------------------------------------------------------------------------
// Locating things
// ---------------------------------------------------------------------------------------

/// The repository root (parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

/// The built `airlock` binary: `$AIRLOCK_BIN`, else `<target>/debug/airlock` derived from
/// the running test executable (`<target>/debug/deps/<test>-<hash>`).
pub fn airlock_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("AIRLOCK_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "AIRLOCK_BIN={} does not exist; build it with `cargo build -p airlock`",
            p.display()
        );
        return p;
    }
    let exe = std::env::current_exe().expect("cannot determine the test executable's path");
    let mut candidates = Vec::new();
    // .../debug/deps/test-hash -> .../debug/airlock
    for dir in exe.ancestors().skip(1).take(3) {
        candidates.push(dir.join("airlock"));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "the `airlock` binary was not found (looked at {:?}); build it with `cargo build -p airlock` \
         or set AIRLOCK_BIN",
        candidates
    );
}

/// The venv Python with the official `mcp` SDK and `mcp-server-time`
/// (`$AIRLOCK_E2E_PYTHON`, else `<repo>/.cache/venv/bin/python`).
pub fn venv_python() -> PathBuf {
    let p = std::env::var_os("AIRLOCK_E2E_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache/venv/bin/python"));
    assert!(
        p.is_file(),
        "the test Python venv is missing ({}): {SETUP_HINT}",
        p.display()
    );
    p
}

/// An executable installed in the test venv (e.g. `mcp-server-time`).
pub fn venv_bin(name: &str) -> PathBuf {
    let py = venv_python();
    let p = py
        .parent()
        .map(|d| d.join(name))
        .unwrap_or_else(|| PathBuf::from(name));
    assert!(
        p.is_file(),
        "`{name}` is missing from the test venv ({}): {SETUP_HINT}",
        p.display()
    );
    p
}

/// A Python script shipped in `tests/py/`.
pub fn py_script(name: &str) -> PathBuf {
    let p = repo_root().join("tests/py").join(name);
    assert!(p.is_file(), "test script {} is missing", p.display());
    p
}

/// The pinned Node test tools under `tests/node` (Node 22 from the npm package `node`).
#[derive(Debug, Clone)]
pub struct NodeTools {
    /// `tests/node` (or `$AIRLOCK_E2E_NODE_DIR`).
    pub dir: PathBuf,
    /// The Node 22 binary.
    pub node: PathBuf,
}

impl NodeTools {
    pub fn locate() -> Self {
        let dir = std::env::var_os("AIRLOCK_E2E_NODE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("tests/node"));
        let node = dir.join("node_modules/.bin/node");
        assert!(
            node.exists(),
            "Node 22 test runtime missing ({}): {SETUP_HINT}",
            node.display()
        );
        let node = fs::canonicalize(&node).unwrap_or(node);
        Self { dir, node }
    }

    /// Absolute path of a file inside `node_modules`, asserting it exists.
    pub fn module_file(&self, rel: &str) -> PathBuf {
        let p = self.dir.join("node_modules").join(rel);
        assert!(p.is_file(), "{} is missing: {SETUP_HINT}", p.display());
        p
    }

    /// Entry point of `@modelcontextprotocol/server-everything`.
    pub fn server_everything(&self) -> PathBuf {
        self.module_file("@modelcontextprotocol/server-everything/dist/index.js")
    }

    /// Entry point of `@modelcontextprotocol/conformance`.
    pub fn conformance(&self) -> PathBuf {
        self.module_file("@modelcontextprotocol/conformance/dist/index.js")
    }

    /// Entry point of `supergateway`.
    pub fn supergateway(&self) -> PathBuf {
        self.module_file("supergateway/dist/index.js")
    }

    /// `node <script>` with `node_modules/.bin` first on `PATH` (so `#!/usr/bin/env node`
    /// children also run on Node 22). Never hits the registry.
    pub fn command(&self, script: &Path) -> Command {
        let mut cmd = Command::new(&self.node);
        cmd.arg(script);
        let bin = self.dir.join("node_modules/.bin");
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![bin];
        paths.extend(std::env::split_paths(&path));
        if let Ok(joined) = std::env::join_paths(paths) {
            cmd.env("PATH", joined);
        }
        cmd.env("npm_config_offline", "true");
        cmd
    }
}

/// A child process killed (and reaped) on drop.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl NodeTools {
    /// Starts `server-everything streamableHttp` on 127.0.0.1:`port` (output to `log`) and
    /// waits until it accepts connections. Serves `http://127.0.0.1:PORT/mcp`.
    pub fn spawn_everything_http(&self, port: u16, log: &Path) -> KillOnDrop {
        let out = fs::File::create(log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot clone log handle: {e}"));
        let mut cmd = self.command(&self.server_everything());
        cmd.arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = KillOnDrop(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("cannot start server-everything: {e}")),
        );
        wait_for(
            Duration::from_secs(60),
            "server-everything streamableHttp to listen",
            || TcpStream::connect(("127.0.0.1", port)).ok(),
        );
        child
    }
}

/// A free TCP port on 127.0.0.1 (bind to :0, read, release).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    l.local_addr().expect("bound socket has no address").port()
}

// ---------------------------------------------------------------------------------------
// Waiting, processes
// ---------------------------------------------------------------------------------------

/// Polls `f` every 100 ms until it returns `Some`, panicking with `what` after `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Output of a finished command.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code (`None` when killed by a signal or the timeout).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Output {
    /// Parses stdout as one JSON document, panicking with the full output otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Parses the last non-empty stdout line as JSON.
    pub fn last_json_line(&self) -> Value {
        let line = self
            .stdout
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default();
        serde_json::from_str(line).unwrap_or_else(|e| {
            panic!(
                "last stdout line is not JSON ({e}):\n--- stdout\n{}\n--- stderr\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// Panics (with both streams) unless the exit code is 0.
    pub fn assert_success(&self, what: &str) -> &Self {
        assert!(
            self.code == Some(0) && !self.timed_out,
            "{what} failed (code {:?}, timed out: {}):\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.timed_out,
            self.stdout,
            self.stderr
        );
        self
    }
}

/// Runs `cmd` (stdin closed) to completion, killing it after `timeout`.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
    let out_reader = spawn_reader(child.stdout.take());
    let err_reader = spawn_reader(child.stderr.take());
    let start = Instant::now();
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(e) => panic!("waiting for {desc}: {e}"),
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            break child.wait().ok();
        }
        thread::sleep(Duration::from_millis(20));
    };
    Output {
        code: status.and_then(|s| s.code()),
        stdout: out_reader.join().unwrap_or_default(),
        stderr: err_reader.join().unwrap_or_default(),
        timed_out,
    }
}

fn spawn_reader<R: Read + Send + 'static>(r: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut s = Vec::new();
        if let Some(mut r) = r {
            let _ = r.read_to_end(&mut s);
        }
        String::from_utf8_lossy(&s).into_owned()
    })
}

/// Sends `signal` (e.g. "TERM", "KILL") to `pid` with the `kill` utility.
pub fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A process found under `/proc`.
#[derive(Debug, Clone)]
pub struct ProcInfo {
    pub pid: u32,
    pub ppid: u32,
    /// NUL-separated argv joined with spaces.
    pub cmdline: String,
}

/// All live processes (Linux `/proc`).
pub fn processes() -> Vec<ProcInfo> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ... ; comm may contain spaces/parens, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().unwrap_or("");
        if state == "Z" {
            continue;
        }
        let Some(ppid) = fields.next().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| {
                b.split(|c| *c == 0)
                    .filter(|s| !s.is_empty())
                    .map(|s| String::from_utf8_lossy(s).into_owned())
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out.push(ProcInfo { pid, ppid, cmdline });
    }
    out
}

/// Live descendants of `root` whose command line contains `needle`.
pub fn descendants_matching(root: u32, needle: &str) -> Vec<ProcInfo> {
    let procs = processes();
    let by_pid: HashMap<u32, u32> = procs.iter().map(|p| (p.pid, p.ppid)).collect();
    procs
        .into_iter()
        .filter(|p| {
            if !p.cmdline.contains(needle) {
                return false;
            }
            let mut cur = p.ppid;
            for _ in 0..64 {
                if cur == root {
                    return true;
                }
                match by_pid.get(&cur) {
                    Some(&pp) if pp != cur && cur != 0 => cur = pp,
                    _ => return false,
                }
            }
            false
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Throwaway home + the agent
// ---------------------------------------------------------------------------------------

/// A temporary directory holding a fake user `HOME` and an `AIRLOCK_HOME`.
#[derive(Debug)]
pub struct TestHome {
    /// Owns the directory: removed when the home is dropped.
    _dir: tempfile::TempDir,
    /// Canonical path of `dir` (what the agent will report in paths).
    root: PathBuf,
    extra_env: Vec<(String, String)>,
}

impl Default for TestHome {
    fn default() -> Self {
        Self::new()
    }
}

impl TestHome {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("airlock-e2e-")
            .tempdir()
            .expect("cannot create a temp dir");
        let mut dir = dir;
        if std::env::var_os("AIRLOCK_E2E_KEEP").is_some() {
            // Debugging aid: keep homes, logs and tool output after the test.
            dir.disable_cleanup(true);
            eprintln!("AIRLOCK_E2E_KEEP: keeping {}", dir.path().display());
        }
        fs::create_dir_all(dir.path().join("home")).expect("cannot create temp HOME");
        fs::create_dir_all(dir.path().join("airlock")).expect("cannot create temp AIRLOCK_HOME");
        let root = fs::canonicalize(dir.path()).unwrap_or_else(|_| dir.path().to_path_buf());
        Self {
            _dir: dir,
            root,
            extra_env: Vec::new(),
        }
    }

    /// Adds an environment variable for every airlock process of this home.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// The fake user home (`HOME` of the agent).
    pub fn home(&self) -> PathBuf {
        self.root.join("home")
    }

    /// `AIRLOCK_HOME` of the agent.
    pub fn airlock_home(&self) -> PathBuf {
        self.root.join("airlock")
    }

    /// Scratch space next to the homes (logs, tool output).
    pub fn scratch(&self) -> PathBuf {
        self.root.clone()
    }

    /// Writes `contents` to `HOME/<rel>`, creating parent dirs; returns the path.
    pub fn write(&self, rel: &str, contents: &str) -> PathBuf {
        let p = self.home().join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("cannot create parent dir in temp HOME");
        }
        fs::write(&p, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }

    /// Writes `$AIRLOCK_HOME/config.toml`.
    pub fn write_airlock_config(&self, contents: &str) -> PathBuf {
        let p = self.airlock_home().join("config.toml");
        fs::write(&p, contents).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
        p
    }

    /// Recursively copies the contents of `src` into `HOME`.
    pub fn copy_into_home(&self, src: &Path) {
        copy_tree(src, &self.home());
    }

    /// Environment every airlock process of this test gets.
    pub fn env(&self) -> Vec<(String, PathBuf)> {
        let home = self.home();
        vec![
            ("HOME".into(), home.clone()),
            ("AIRLOCK_HOME".into(), self.airlock_home()),
            ("XDG_CONFIG_HOME".into(), home.join(".config")),
            ("XDG_DATA_HOME".into(), home.join(".local/share")),
            ("XDG_STATE_HOME".into(), home.join(".local/state")),
            ("XDG_CACHE_HOME".into(), home.join(".cache")),
        ]
    }

    /// An `airlock` command with this home's environment.
    pub fn airlock(&self) -> Command {
        let mut cmd = Command::new(airlock_bin());
        for (k, v) in self.env() {
            cmd.env(k, v);
        }
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        // Variables of the real user's session that could leak a foreign config in.
        for k in [
            "APPDATA",
            "CODEX_HOME",
            "CLAUDE_CONFIG_DIR",
            "GOOSE_CONFIG_DIR",
        ] {
            cmd.env_remove(k);
        }
        cmd
    }

    /// Runs `airlock <args>` (no agent needed) and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.airlock();
        cmd.args(args);
        run_with_timeout(cmd, CLI_TIMEOUT)
    }
}

/// Recursive copy (files and dirs; symlinks are copied as their targets).
pub fn copy_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap_or_else(|e| panic!("cannot create {}: {e}", dst.display()));
    let entries =
        fs::read_dir(src).unwrap_or_else(|e| panic!("cannot read dir {}: {e}", src.display()));
    for e in entries.flatten() {
        let from = e.path();
        let to = dst.join(e.file_name());
        if from.is_dir() {
            copy_tree(&from, &to);
        } else {
            fs::copy(&from, &to).unwrap_or_else(|err| {
                panic!("cannot copy {} -> {}: {err}", from.display(), to.display())
            });
        }
    }
}

/// Connection info written by `airlock up` to `$AIRLOCK_HOME/run/agent.json`.
#[derive(Debug, Clone)]
pub struct AgentInfo {
    pub pid: u64,
    pub api_url: String,
    pub token: String,
}

impl AgentInfo {
    /// `host:port` of the control API.
    pub fn api_addr(&self) -> SocketAddr {
        let hostport = self
            .api_url
            .trim_start_matches("http://")
            .trim_end_matches('/');
        hostport
            .parse()
            .unwrap_or_else(|e| panic!("api_url {:?} is not http://IP:PORT: {e}", self.api_url))
    }
}

/// A running `airlock up` (terminated on drop; its stderr is printed if the test panics).
#[derive(Debug)]
pub struct Agent {
    pub home: TestHome,
    child: Option<Child>,
    pub gateway_port: u16,
    stderr_path: PathBuf,
    /// The `airlock status --json` document seen when the agent became ready.
    pub ready_status: Value,
}

impl Agent {
    /// Starts `airlock up --gateway-port <free>` in `home` and waits for `ready: true`.
    pub fn start(home: TestHome) -> Self {
        Self::start_with_args(home, &[])
    }

    /// Like [`Agent::start`] with extra `airlock up` arguments.
    ///
    /// Unless the test wrote its own `config.toml`, the agent gets one with
    /// `probe_running = false`: tests run in parallel and must not discover each other's
    /// loopback servers.
    pub fn start_with_args(home: TestHome, extra: &[&str]) -> Self {
        if !home.airlock_home().join("config.toml").exists() {
            home.write_airlock_config(DEFAULT_TEST_CONFIG);
        }
        let gateway_port = free_port();
        let stderr_path = home.scratch().join("agent.stderr.log");
        let stdout_path = home.scratch().join("agent.stdout.log");
        let stderr = fs::File::create(&stderr_path).expect("cannot create agent log file");
        let stdout = fs::File::create(&stdout_path).expect("cannot create agent log file");
        let mut cmd = home.airlock();
        cmd.arg("up")
            .arg("--gateway-port")
            .arg(gateway_port.to_string())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start `airlock up` ({}): {e}",
                airlock_bin().display()
            )
        });
        let mut agent = Agent {
            home,
            child: Some(child),
            gateway_port,
            stderr_path,
            ready_status: Value::Null,
        };
        agent.ready_status = agent.wait_ready(READY_TIMEOUT);
        agent
    }

    fn wait_ready(&mut self, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "`airlock up` exited early with {status} before becoming ready\n--- agent stderr\n{}",
                    self.stderr_log()
                );
            }
            let out = self.home.cli(&["status", "--json"]);
            let last = match serde_json::from_str::<Value>(out.stdout.trim()) {
                Ok(v) if v["running"] == Value::Bool(true) && v["ready"] == Value::Bool(true) => {
                    return v;
                }
                Ok(v) => v.to_string(),
                Err(_) => format!(
                    "code {:?} stdout {:?} stderr {:?}",
                    out.code, out.stdout, out.stderr
                ),
            };
            if start.elapsed() > timeout {
                panic!(
                    "`airlock up` not ready after {timeout:?}; last `airlock status --json`: {last}\n\
                     --- agent stderr\n{}",
                    self.stderr_log()
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr_log(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// `$AIRLOCK_HOME/run/agent.json`.
    pub fn agent_json_path(&self) -> PathBuf {
        self.home.airlock_home().join("run/agent.json")
    }

    /// Parsed `agent.json`.
    pub fn info(&self) -> AgentInfo {
        let p = self.agent_json_path();
        let text =
            fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {text}", p.display()));
        AgentInfo {
            pid: v["pid"]
                .as_u64()
                .unwrap_or_else(|| panic!("agent.json has no numeric pid: {v}")),
            api_url: v["api_url"]
                .as_str()
                .unwrap_or_else(|| panic!("agent.json has no api_url: {v}"))
                .to_string(),
            token: v["token"]
                .as_str()
                .unwrap_or_else(|| panic!("agent.json has no token: {v}"))
                .to_string(),
        }
    }

    /// Runs `airlock <args>` against this agent.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.home.cli(args)
    }

    /// Runs `airlock <args>` expecting exit 0 and JSON on stdout.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        if out.code != Some(0) {
            panic!(
                "`airlock {}` failed (code {:?}):\n--- stdout\n{}\n--- stderr\n{}\n--- agent stderr\n{}",
                args.join(" "),
                out.code,
                out.stdout,
                out.stderr,
                self.stderr_log()
            );
        }
        out.json()
    }

    /// `airlock servers --json` → the `servers` array.
    pub fn servers(&self) -> Vec<Value> {
        let v = self.cli_json(&["servers", "--json"]);
        v["servers"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("`airlock servers --json` has no servers array: {v}"))
    }

    /// Finds the server with `name` in `airlock servers --json`.
    pub fn server_named(&self, name: &str) -> Option<Value> {
        self.servers().into_iter().find(|s| s["name"] == name)
    }

    /// Waits until a server called `name` is listed, and returns it.
    pub fn wait_server(&self, name: &str, timeout: Duration) -> Value {
        wait_for(
            timeout,
            &format!("server {name:?} in `airlock servers`"),
            || self.server_named(name),
        )
    }

    /// `airlock expose <reference> --yes --json`, then `airlock url <reference> --json`, then a token for the server
    /// through the OAuth flow ([`oauth::obtain_token`], approved through the control API).
    pub fn expose(&self, reference: &str) -> Exposed {
        let out = self.cli(&["expose", reference, "--yes"]);
        if out.code != Some(0) {
            panic!(
                "`airlock expose {reference} --yes` failed (code {:?}):\n--- stdout\n{}\n--- stderr\n{}\n--- agent stderr\n{}",
                out.code,
                out.stdout,
                out.stderr,
                self.stderr_log()
            );
        }
        let v = self.cli_json(&["url", reference, "--json"]);
        let url = v["url"]
            .as_str()
            .unwrap_or_else(|| panic!("`airlock url` has no url: {v}"))
            .to_string();
        let token = oauth::obtain_token(self, &url).access_token;
        Exposed {
            url,
            token,
            expose_output: format!("{}{}", out.stdout, out.stderr),
            url_json: v,
        }
    }

    /// Sends SIGTERM and waits (up to 20 s) for the agent to exit.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        send_signal(child.id(), "TERM");
        let start = Instant::now();
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if start.elapsed() > Duration::from_secs(20) {
                let _ = child.kill();
                return child.wait().ok();
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "--- airlock up stderr ({})\n{}\n--- end of airlock up stderr",
                self.stderr_path.display(),
                self.stderr_log()
            );
        }
        let _ = self.stop();
    }
}

/// A server exposed through the gateway.
#[derive(Debug, Clone)]
pub struct Exposed {
    /// `http://127.0.0.1:PORT/<sub>/mcp`
    pub url: String,
    /// An access token for this server (all scopes), obtained through the OAuth flow.
    pub token: String,
    /// What `airlock expose` printed (stdout followed by stderr).
    pub expose_output: String,
    /// The full `airlock url --json` document.
    pub url_json: Value,
}

// ---------------------------------------------------------------------------------------
// Python SDK client
// ---------------------------------------------------------------------------------------

/// Runs `tests/py/<script> <args>` with the venv Python and returns its output.
pub fn run_python(script: &str, args: &[&str], timeout: Duration) -> Output {
    let mut cmd = Command::new(venv_python());
    cmd.arg(py_script(script)).args(args);
    cmd.env("PYTHONUNBUFFERED", "1");
    run_with_timeout(cmd, timeout)
}

/// A child process whose stdout lines arrive on a channel (for step-by-step protocols).
#[derive(Debug)]
pub struct LineProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
    stderr: thread::JoinHandle<String>,
    seen: Vec<String>,
}

impl LineProcess {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        let (tx, rx) = mpsc::sync_channel(1024);
        let stdout = child.stdout.take();
        thread::spawn(move || {
            if let Some(out) = stdout {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            }
        });
        let stderr = spawn_reader(child.stderr.take());
        Self {
            child,
            lines: rx,
            stderr,
            seen: Vec::new(),
        }
    }

    /// Next stdout line parsed as JSON (non-JSON lines are skipped), or `None` on timeout/EOF.
    pub fn next_json(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            let line = self.lines.recv_timeout(left).ok()?;
            self.seen.push(line.clone());
            if let Ok(v) = serde_json::from_str::<Value>(&line) {
                return Some(v);
            }
        }
    }

    /// Writes one line to the child's stdin.
    pub fn send_line(&mut self, line: &str) {
        if let Some(stdin) = self.child.stdin.as_mut() {
            let _ = writeln!(stdin, "{line}");
            let _ = stdin.flush();
        }
    }

    /// Kills the child and returns everything seen (stdout lines so far + stderr).
    pub fn finish(mut self) -> String {
        drop(self.child.stdin.take());
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.try_recv() {
            self.seen.push(l);
        }
        let err = self.stderr.join().unwrap_or_default();
        format!("--- stdout\n{}\n--- stderr\n{err}", self.seen.join("\n"))
    }
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    /// Lower-cased header names.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `method path` with exactly `headers` (plus `Content-Length` when a body is given
/// and `Connection: close`) to `addr` and reads the whole response. Nothing else is added:
/// callers choose `Host`, `Origin`, `Authorization`.
pub fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> RawResponse {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("Connection: close\r\n\r\n");
    if let Some(b) = body {
        req.push_str(b);
    }
    stream
        .write_all(req.as_bytes())
        .unwrap_or_else(|e| panic!("cannot send to {addr}: {e}"));
    let mut buf = Vec::new();
    let _ = stream.read_to_end(&mut buf);
    parse_response(&buf).unwrap_or_else(|| {
        panic!(
            "malformed HTTP response from {addr} to {method} {path}: {:?}",
            String::from_utf8_lossy(&buf)
        )
    })
}

fn parse_response(buf: &[u8]) -> Option<RawResponse> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let status = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some(RawResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, rest)) = s.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        s = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Splits `http://host:port/path` into (`host:port` as SocketAddr, `/path`).
pub fn split_url(url: &str) -> (SocketAddr, String) {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// URL: {url}"));
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let hostport = hostport.replace("localhost", "127.0.0.1");
    let addr = hostport
        .parse()
        .unwrap_or_else(|e| panic!("URL {url} does not name IP:PORT: {e}"));
    (addr, path)
}

// ---------------------------------------------------------------------------------------
// Raw MCP over HTTP, shared by the raw-session tests and the load generators
// ---------------------------------------------------------------------------------------

/// The JSON-RPC message answering `id` in a JSON or SSE body.
pub fn jsonrpc_response_for(body: &str, id: u64) -> Option<Value> {
    let candidates: Vec<&str> = if body.trim_start().starts_with('{') {
        vec![body]
    } else {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim)
            .collect()
    };
    candidates
        .into_iter()
        .filter_map(|c| serde_json::from_str::<Value>(c).ok())
        .find(|v| v["id"] == id)
}

/// A Streamable HTTP POST carrying `body`: JSON + SSE accepted, the bearer `token`, and the session id and
/// protocol version of an initialized legacy session when given.
pub fn mcp_post_request(
    uri: &str,
    host: Option<&str>,
    token: Option<&str>,
    session: Option<(Option<&str>, &str)>,
    body: &Value,
) -> Result<http::Request<http_body_util::Full<bytes::Bytes>>, String> {
    let mut b = http::Request::builder()
        .method(http::Method::POST)
        .uri(uri)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json, text/event-stream");
    if let Some(h) = host {
        b = b.header(http::header::HOST, h);
    }
    if let Some(t) = token {
        b = b.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
    }
    if let Some((id, version)) = session {
        if let Some(id) = id {
            b = b.header("mcp-session-id", id);
        }
        b = b.header("mcp-protocol-version", version);
    }
    b.body(http_body_util::Full::new(bytes::Bytes::from(
        body.to_string(),
    )))
    .map_err(|e| format!("request: {e}"))
}

/// Status, `mcp-session-id` and the whole body of an MCP response.
pub async fn read_mcp_response<B>(
    resp: http::Response<B>,
) -> Result<(u16, Option<String>, String), String>
where
    B: hyper::body::Body,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    let status = resp.status().as_u16();
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, sid, String::from_utf8_lossy(&bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_chunked_response() {
        let r = parse_response(
            b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        )
        .expect("parse");
        assert_eq!(r.status, 403);
        assert_eq!(r.header("x-a"), Some("b"));
        assert_eq!(r.body, "hello world");
    }

    #[test]
    fn splits_urls() {
        let (a, p) = split_url("http://127.0.0.1:4321/time/mcp");
        assert_eq!(a.port(), 4321);
        assert_eq!(p, "/time/mcp");
        let (a, p) = split_url("http://localhost:80");
        assert_eq!(a.port(), 80);
        assert_eq!(p, "/");
    }

    #[test]
    fn finds_own_descendants() {
        let mut child = Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let me = std::process::id();
        // Between fork and exec the child's cmdline is still ours: look until the exec has happened.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut found = descendants_matching(me, "sleep 30");
        while !found.iter().any(|p| p.pid == child.id()) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            found = descendants_matching(me, "sleep 30");
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.iter().any(|p| p.pid == child.id()),
            "child {} not found among {found:?}",
            child.id()
        );
        assert!(descendants_matching(1, "definitely-not-a-command-xyz").is_empty());
    }
}
