//! The real tray app (`airlock-tray`, Tauri 2 + WebKitGTK) on the test display, driven by
//! `tauri-driver` + `WebKitWebDriver` over the W3C WebDriver protocol (a small JSON client
//! below). The tray runs the agent in-process; its window loads the web UI from the agent's
//! control API origin with a one-time login code; a click on the expose switch in the window
//! is then visible through `airlock servers --json`. The page gets no Tauri IPC and cannot
//! navigate away from the agent's origin. SIGTERM makes the tray stop its agent gracefully.
//! The window's screenshot lands in `tests/artifacts/tray/window.png`.
//!
//! Needs a display (scripts/test runs the suite under `xvfb-run`), `WebKitWebDriver` (apt
//! `webkit2gtk-driver`) and `tauri-driver` (`cargo install tauri-driver --locked`); it fails,
//! never skips, when one is missing.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use airlock_e2e::{
    TestHome, airlock_bin, free_port, processes, repo_root, send_signal, venv_bin, wait_for,
};
use serde_json::{Value, json};

const WEBKIT_DRIVER: &str = "/usr/bin/WebKitWebDriver";
/// Starting the app, its agent and WebKit on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(180);
const STEP_TIMEOUT: Duration = Duration::from_secs(60);
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

fn tray_bin() -> PathBuf {
    let p = std::env::var_os("AIRLOCK_TRAY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| airlock_bin().with_file_name("airlock-tray"));
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build -p airlock-tray` (scripts/test builds the workspace)",
        p.display()
    );
    p
}

fn tauri_driver() -> PathBuf {
    if let Some(p) = std::env::var_os("TAURI_DRIVER") {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("tauri-driver"))
                .collect()
        })
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/tauri-driver"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/tauri-driver"));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "tauri-driver is missing: run `scripts/test` once (it runs `cargo install tauri-driver --locked`)"
            )
        })
}

fn require_display_tools() {
    assert!(
        std::env::var_os("DISPLAY").is_some(),
        "no DISPLAY: run the tests through scripts/test (xvfb-run), or `xvfb-run -a dbus-run-session -- cargo test -p airlock-e2e --test tray_window`"
    );
    assert!(
        Path::new(WEBKIT_DRIVER).is_file(),
        "{WEBKIT_DRIVER} is missing: run `scripts/test` once (it runs `apt-get install webkit2gtk-driver`)"
    );
}

// ---------------------------------------------------------------------------------------
// A minimal W3C WebDriver client (HTTP/1.1 + JSON, one connection per command)
// ---------------------------------------------------------------------------------------

struct WebDriver {
    addr: SocketAddr,
    session: String,
}

/// One request on a fresh connection. No `Connection: close`: tauri-driver forwards headers
/// to WebKitWebDriver on a pooled connection, which that header would close under it. The
/// answer is read by its `Content-Length` (or chunks) instead of to the end of the stream.
fn http_json(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("cannot connect to tauri-driver at {addr}: {e}"));
    stream.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let req = match body {
        Some(body) => {
            let body = body.to_string();
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        }
        None => format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n"),
    };
    stream.write_all(req.as_bytes()).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let mut head_end = None;
    loop {
        if let Some(end) = head_end {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let body = &buf[end + 4..];
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match length {
                Some(n) => body.len() >= n,
                None if head.contains("transfer-encoding: chunked") => {
                    body.windows(5).any(|w| w == b"0\r\n\r\n")
                }
                None => false,
            };
            if complete {
                break;
            }
        }
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if head_end.is_none() {
            head_end = buf.windows(4).position(|w| w == b"\r\n\r\n");
        }
    }
    let text = String::from_utf8_lossy(&buf);
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        // The connection closed without an answer.
        return (0, Value::String(text.into_owned()));
    };
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let payload = if chunked {
        let mut out = String::new();
        let mut s = rest;
        while let Some((size, tail)) = s.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || tail.len() < n {
                break;
            }
            out.push_str(&tail[..n]);
            s = tail[n..].trim_start_matches("\r\n");
        }
        out
    } else {
        rest.to_string()
    };
    let value = serde_json::from_str(&payload).unwrap_or(Value::Null);
    (status, value)
}

impl WebDriver {
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let full = format!("/session/{}{path}", self.session);
        let (status, v) = http_json(self.addr, method, &full, body);
        assert!(
            status == 200,
            "WebDriver {method} {path} answered {status}: {v}"
        );
        v["value"].clone()
    }

    fn try_call(&self, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
        let full = format!("/session/{}{path}", self.session);
        let (status, v) = http_json(self.addr, method, &full, body);
        (status == 200).then(|| v["value"].clone())
    }

    fn url(&self) -> String {
        self.call("GET", "/url", None)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.try_call(
            "POST",
            "/elements",
            Some(&json!({"using": "css selector", "value": css})),
        )
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e[ELEMENT_KEY].as_str().map(str::to_string))
        .collect()
    }

    fn wait_element(&self, css: &str, timeout: Duration) -> String {
        wait_for(
            timeout,
            &format!("element {css} in the tray window"),
            || self.find_all(css).into_iter().next(),
        )
    }

    fn script(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(&json!({"script": script, "args": []})),
        )
    }

    fn script_async(&self, script: &str) -> Value {
        self.call(
            "POST",
            "/execute/async",
            Some(&json!({"script": script, "args": []})),
        )
    }
}

/// Standard base64 (the screenshot) → bytes.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter_map(value) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// All live descendants of `root` (WebKitWebDriver, the app, WebKit's processes).
fn descendants(root: u32) -> Vec<u32> {
    let procs = processes();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(procs.iter().filter(|p| p.ppid == parent).map(|p| p.pid));
        i += 1;
    }
    found.remove(0);
    found
}

fn alive(pid: u32) -> bool {
    processes().iter().any(|p| p.pid == pid)
}

/// tauri-driver and everything it started: SIGTERM on drop (the app quits gracefully),
/// SIGKILL for whatever is still there after 10 s.
struct DriverProcess(std::process::Child);

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let root = self.0.id();
        let mut all = descendants(root);
        all.push(root);
        for pid in &all {
            send_signal(*pid, "TERM");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && all.iter().any(|p| alive(*p)) {
            let _ = self.0.try_wait();
            std::thread::sleep(Duration::from_millis(100));
        }
        for pid in all.iter().filter(|p| alive(**p)) {
            send_signal(*pid, "KILL");
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tray_pids(bin: &Path) -> Vec<u32> {
    let needle = bin.display().to_string();
    processes()
        .into_iter()
        .filter(|p| p.cmdline.starts_with(&needle))
        .map(|p| p.pid)
        .collect()
}

/// The tray is a single instance per D-Bus session: its tests take turns, across test
/// processes too (nextest runs each test in its own), through an exclusive file lock.
fn one_tray() -> std::fs::File {
    let path = std::env::temp_dir().join("airlock-tray-e2e.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    file.lock()
        .unwrap_or_else(|e| panic!("cannot lock {}: {e}", path.display()));
    file
}

#[test]
fn a_second_launch_hands_over_to_the_first() {
    assert!(
        std::env::var_os("DISPLAY").is_some(),
        "no DISPLAY: run the tests through scripts/test (xvfb-run)"
    );
    let _turn = one_tray();
    let tray = tray_bin();
    let home = TestHome::new();
    home.write_airlock_config(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n",
    );
    let log_path = home.scratch().join("first.log");
    let mut cmd = Command::new(&tray);
    cmd.env("RUST_LOG", "info")
        .env_remove("AIRLOCK_TRAY_SHOW")
        .env_remove("TAURI_WEBVIEW_AUTOMATION")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap());
    for (k, v) in home.env() {
        cmd.env(k, v);
    }
    let first = DriverProcess(cmd.spawn().unwrap());
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let runtime_file = home.airlock_home().join("run/agent.json");
    let info: Value = wait_for(START_TIMEOUT, "the first tray's agent", || {
        std::fs::read_to_string(&runtime_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    });
    assert_eq!(info["pid"].as_u64(), Some(u64::from(first.0.id())));
    assert!(
        !log().contains("window opened"),
        "a tray starts without a window:\n{}",
        log()
    );

    // The second launch exits at once and the first one opens its window.
    let mut second = Command::new(&tray);
    second.env("RUST_LOG", "info");
    for (k, v) in home.env() {
        second.env(k, v);
    }
    let started = Instant::now();
    let out = airlock_e2e::run_with_timeout(second, STEP_TIMEOUT);
    println!(
        "second launch exited with {:?} after {:.2}s",
        out.code,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.code, Some(0), "second launch: {}", out.stderr);
    assert!(
        !out.stderr.contains("starting the agent"),
        "the second launch must not start an agent:\n{}",
        out.stderr
    );
    wait_for(STEP_TIMEOUT, "the first tray to open its window", || {
        let log = log();
        (log.contains("another launch") && log.contains("window opened")).then_some(())
    });
    let still: Value =
        serde_json::from_str(&std::fs::read_to_string(&runtime_file).unwrap()).unwrap();
    assert_eq!(
        still["pid"], info["pid"],
        "the first tray's agent keeps serving"
    );

    let pid = first.0.id();
    assert!(send_signal(pid, "TERM"));
    wait_for(STEP_TIMEOUT, "the tray to exit after SIGTERM", || {
        (!alive(pid)).then_some(())
    });
    assert!(!runtime_file.exists(), "graceful stop:\n{}", log());
    drop(first);
}

#[test]
fn tray_window_shows_the_ui_and_an_expose_click_reaches_the_agent() {
    require_display_tools();
    let _turn = one_tray();
    let tray = tray_bin();
    let driver_bin = tauri_driver();

    let home = TestHome::new();
    let time = venv_bin("mcp-server-time");
    home.write(
        ".config/Claude/claude_desktop_config.json",
        &json!({"mcpServers": {"time": {"command": time, "args": ["--local-timezone", "UTC"]}}})
            .to_string(),
    );
    home.write_airlock_config(
        "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n",
    );

    // tauri-driver → WebKitWebDriver → the app: each inherits this environment.
    let port = free_port();
    let native_port = free_port();
    let log_path = home.scratch().join("tray.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(&driver_bin);
    cmd.args([
        "--port",
        &port.to_string(),
        "--native-port",
        &native_port.to_string(),
    ])
    // WebKit's defaults, as users run it: with WEBKIT_DISABLE_COMPOSITING_MODE=1 Xvfb never
    // presents a frame and WebDriver screenshots wait forever.
    .env_remove("WEBKIT_DISABLE_COMPOSITING_MODE")
    .env("RUST_LOG", "info")
    .env_remove("AIRLOCK_TRAY_SHOW")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log);
    for (k, v) in home.env() {
        cmd.env(k, v);
    }
    let driver = DriverProcess(
        cmd.spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", driver_bin.display())),
    );
    let tray_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // tauri-driver answers first; it proxies to WebKitWebDriver, which starts a moment later.
    wait_for(
        STEP_TIMEOUT,
        "tauri-driver and WebKitWebDriver to listen",
        || {
            let native: SocketAddr = format!("127.0.0.1:{native_port}").parse().ok()?;
            TcpStream::connect_timeout(&native, Duration::from_secs(1)).ok()?;
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
            let (status, v) = http_json(addr, "GET", "/status", None);
            (status == 200 && v["value"]["ready"] == true).then_some(())
        },
    );

    let started = Instant::now();
    let (status, created) = http_json(
        addr,
        "POST",
        "/session",
        Some(&json!({"capabilities": {"alwaysMatch": {
            "browserName": "wry",
            "tauri:options": {"application": tray}
        }}})),
    );
    assert!(
        status == 200,
        "WebDriver session refused ({status}): {created}\n--- tray log\n{}",
        tray_log()
    );
    let wd = WebDriver {
        addr,
        session: created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {created}"))
            .to_string(),
    };

    // The agent runs inside the tray process and publishes its runtime file.
    let runtime_file = home.airlock_home().join("run/agent.json");
    let info: Value = wait_for(START_TIMEOUT, "the tray's agent (run/agent.json)", || {
        std::fs::read_to_string(&runtime_file)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
    });
    let api_url = info["api_url"].as_str().unwrap().to_string();
    let agent_pid = info["pid"].as_u64().unwrap() as u32;
    let pids = tray_pids(&tray);
    assert!(
        pids.contains(&agent_pid),
        "the agent must run in the tray process: agent pid {agent_pid}, tray pids {pids:?}"
    );

    // The window shows the UI from the API origin, logged in with the one-time code,
    // which has already left the address bar.
    let switch = "input[role=switch][aria-label='Expose time']";
    wd.wait_element(switch, START_TIMEOUT);
    println!(
        "window showed the servers {:.1}s after the session started",
        started.elapsed().as_secs_f64()
    );
    let url = wd.url();
    assert!(
        url.starts_with(&format!("{api_url}/")),
        "the window must show the agent's origin {api_url}, shows {url}"
    );
    assert!(
        !url.contains("code="),
        "the login code must leave the address bar: {url}"
    );

    // The page gets no Tauri API and no IPC.
    let globals = wd.script(
        "return [typeof window.__TAURI__, typeof (window.__TAURI_INTERNALS__ && window.__TAURI_INTERNALS__.invoke)]",
    );
    assert_eq!(globals[0], "undefined", "no window.__TAURI__ on the page");
    let ipc = wd.script_async(
        "const done = arguments[arguments.length - 1];
         const i = window.__TAURI_INTERNALS__;
         if (!i || typeof i.invoke !== 'function') { done('no-ipc'); return; }
         setTimeout(() => done('no-answer'), 5000);
         i.invoke('plugin:clipboard-manager|write_text', { text: 'owned' })
           .then(() => done('allowed'), (e) => done('refused: ' + String(e)));",
    );
    let ipc = ipc.as_str().unwrap_or_default().to_string();
    println!("IPC from the UI origin: {ipc}");
    assert!(
        ipc == "no-ipc" || ipc == "no-answer" || ipc.starts_with("refused"),
        "the agent's page must not reach Tauri commands: {ipc}"
    );

    // Expose with the switch in the window. The UI re-renders on every agent event, so the
    // element is looked up again right before each use.
    let selected = wait_for(STEP_TIMEOUT, "the expose switch's state", || {
        let el = wd.find_all(switch).into_iter().next()?;
        wd.try_call("GET", &format!("/element/{el}/selected"), None)
    });
    assert_eq!(selected, false, "the switch starts off");
    wait_for(STEP_TIMEOUT, "a click on the expose switch", || {
        let el = wd.find_all(switch).into_iter().next()?;
        wd.try_call("POST", &format!("/element/{el}/click"), Some(&json!({})))
    });
    let exposed = wait_for(
        STEP_TIMEOUT,
        "time exposed in `airlock servers --json`",
        || {
            let out = home.cli(&["servers", "--json"]);
            let v: Value = serde_json::from_str(out.stdout.trim()).ok()?;
            v["servers"]
                .as_array()?
                .iter()
                .find(|s| s["name"] == "time" && s["exposed"] == true)
                .cloned()
        },
    );
    let local = exposed["url"].as_str().unwrap_or_default();
    assert!(
        local.starts_with("http://127.0.0.1:") && local.ends_with("/mcp"),
        "exposed without a URL: {exposed}"
    );
    // …and the window learns it from the event stream.
    wd.wait_element("article.server.is-exposed", STEP_TIMEOUT);
    let shown = wd.script("return Array.from(document.querySelectorAll('article.server.is-exposed code.url')).map(e => e.textContent)");
    assert!(
        shown
            .as_array()
            .is_some_and(|a| a.iter().any(|u| u == local)),
        "the window shows {shown}, the agent {local}"
    );

    // Screenshot (after a repaint).
    std::thread::sleep(Duration::from_secs(1));
    let shot = wd.call("GET", "/screenshot", None);
    let png = base64_decode(shot.as_str().unwrap_or_default());
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "the screenshot is not a real PNG ({} bytes)",
        png.len()
    );
    let out_dir = repo_root().join("tests/artifacts/tray");
    std::fs::create_dir_all(&out_dir).unwrap();
    std::fs::write(out_dir.join("window.png"), &png).unwrap();

    // Navigation away from the agent's origin is refused by the shell.
    wd.script("location.href = 'http://127.0.0.1:9/elsewhere'; return null");
    std::thread::sleep(Duration::from_secs(2));
    // (Read through a script: WebDriver's own URL command waits for the refused load.)
    let still = wd
        .script("return location.href")
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        still.starts_with(&format!("{api_url}/")),
        "the window left the agent's origin: {still}"
    );

    // SIGTERM quits like the menu's Quit: the agent drains and removes its runtime file.
    assert!(send_signal(agent_pid, "TERM"));
    wait_for(STEP_TIMEOUT, "the tray to exit after SIGTERM", || {
        (!alive(agent_pid)).then_some(())
    });
    assert!(
        !runtime_file.exists(),
        "a graceful stop removes run/agent.json\n--- tray log\n{}",
        tray_log()
    );
    let log = tray_log();
    assert!(
        log.contains("the agent stopped"),
        "the tray must log its agent's graceful stop:\n{log}"
    );
    let _ = http_json(addr, "DELETE", &format!("/session/{}", wd.session), None);
    drop(driver);
}
