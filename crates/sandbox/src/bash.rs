//! The persistent `bash` tool.

use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio_util::sync::CancellationToken;

use crate::{Inner, ToolOutput, paths};

/// Diagnostics kept from the sandbox's own stderr (bubblewrap errors).
const STDERR_KEEP: usize = 4096;

#[derive(Default)]
pub(crate) struct BashState {
    shell: Option<Shell>,
}

struct Shell {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    pgid: Option<i32>,
    stderr: Arc<Mutex<String>>,
}

fn ansi() -> Option<&'static regex::Regex> {
    static RE: OnceLock<Option<regex::Regex>> = OnceLock::new();
    RE.get_or_init(|| {
        // CSI sequences, OSC sequences (BEL or ST terminated), and lone two-byte escapes.
        regex::Regex::new(
            r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]",
        )
        .ok()
    })
    .as_ref()
}

async fn spawn(inner: &Inner) -> Result<Shell, String> {
    let l = &inner.launch;
    let mut cmd = tokio::process::Command::new(&l.program);
    cmd.args(&l.args)
        .env_clear()
        .envs(l.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .current_dir(&l.cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "bash: could not start the sandboxed shell ({}): {e}",
            l.program.display()
        )
    })?;
    let (Some(mut stdin), Some(stdout), Some(mut err)) =
        (child.stdin.take(), child.stdout.take(), child.stderr.take())
    else {
        return Err("bash: the shell's pipes are missing".into());
    };
    let stderr = Arc::new(Mutex::new(String::new()));
    let sink = stderr.clone();
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock()
                && s.len() < STDERR_KEEP
            {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    stdin
        .write_all(b"exec 2>&1\n")
        .await
        .map_err(|e| format!("bash: the sandboxed shell did not start: {e}"))?;
    let pgid = child.id().and_then(|p| i32::try_from(p).ok());
    Ok(Shell {
        child,
        stdin,
        stdout,
        pgid,
        stderr,
    })
}

/// Kill the shell, its process group and (when there is one) everything in the session's
/// cgroup.
pub(crate) async fn kill(inner: &Inner, state: &mut BashState) {
    if let Some(mut shell) = state.shell.take() {
        if let Some(pgid) = shell.pgid {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = shell.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), shell.child.wait()).await;
    }
    if let Some(cg) = &inner.cgroup {
        // Only this session's processes are in its group.
        cg.kill_all_async().await;
    }
}

enum Outcome {
    Done {
        output: Vec<u8>,
        code: i64,
        truncated: bool,
    },
    Exited {
        output: Vec<u8>,
        truncated: bool,
    },
    TimedOut,
    Cancelled,
}

async fn read_until(
    shell: &mut Shell,
    marker: &[u8],
    cap: usize,
    timeout: Duration,
    cancel: &CancellationToken,
) -> Outcome {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut truncated = false;
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + timeout;
    let keep = cap + marker.len() + 32;
    loop {
        // Look for "<marker><digits>\n".
        if let Some(pos) = find(&buf, marker) {
            let rest = &buf[pos + marker.len()..];
            if let Some(nl) = rest.iter().position(|&b| b == b'\n') {
                let code = std::str::from_utf8(&rest[..nl])
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .unwrap_or(-1);
                buf.truncate(pos);
                return Outcome::Done {
                    output: buf,
                    code,
                    truncated,
                };
            }
        }
        let read = tokio::select! {
            r = shell.stdout.read(&mut chunk) => r,
            _ = tokio::time::sleep_until(deadline) => return Outcome::TimedOut,
            _ = cancel.cancelled() => return Outcome::Cancelled,
        };
        match read {
            Ok(0) | Err(_) => {
                return Outcome::Exited {
                    output: buf,
                    truncated,
                };
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > keep * 2 {
                    let cut = buf.len() - keep;
                    buf.drain(..cut);
                    truncated = true;
                }
            }
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn finish_text(raw: &[u8], cap: usize, mut truncated: bool) -> String {
    let mut bytes = raw;
    if bytes.len() > cap {
        bytes = &bytes[bytes.len() - cap..];
        truncated = true;
    }
    let text = String::from_utf8_lossy(bytes);
    let text = match ansi() {
        Some(re) => re.replace_all(&text, ""),
        None => text,
    };
    // Both SDKs' toolsets drop every trailing newline of the output.
    let text = text.trim_end_matches('\n');
    if truncated {
        format!("[output truncated]\n{text}")
    } else {
        text.to_owned()
    }
}

pub(crate) async fn run(
    inner: &Inner,
    state: &mut BashState,
    input: Value,
    cancel: CancellationToken,
) -> ToolOutput {
    let restart = matches!(input.get("restart"), Some(Value::Bool(true)));
    let command = match input.get("command") {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
        Some(Value::String(_)) | Some(Value::Null) | None => None,
        Some(_) => return ToolOutput::error("bash: command must be a string"),
    };
    let timeout = match input.get("timeout_ms") {
        None | Some(Value::Null) => inner.limits.default_timeout,
        Some(v) => match v.as_u64() {
            Some(ms) if ms > 0 => Duration::from_millis(ms).min(inner.limits.max_timeout),
            _ => return ToolOutput::error("bash: timeout_ms must be a positive integer"),
        },
    };
    if restart {
        kill(inner, state).await;
        if command.is_none() {
            return ToolOutput::text("bash session restarted");
        }
    }
    let Some(command) = command else {
        return ToolOutput::error("bash: command is required");
    };
    if state.shell.is_none() {
        match spawn(inner).await {
            Ok(s) => state.shell = Some(s),
            Err(e) => return ToolOutput::error(e),
        }
    }
    let before = inner.cgroup.as_ref().map(|c| c.events());
    let token = format!("{:032x}", rand::random::<u128>());
    let marker = format!("\n__ANT_CMD_{token}_DONE__");
    // The marker is written in two quoted halves so an echo of the script never matches.
    let (a, b) = marker[1..].split_at(12);
    // The command travels as a quoted here-document and runs through `eval`: whatever it
    // contains (an unterminated quote, a stray `}`), the shell parses it as one string, reports
    // a syntax error as status 2, and always reaches the marker.
    let script = format!(
        "IFS= read -r -d '' __airlock_cmd <<'__AIRLOCK_CMD_{token}'\n{command}\n__AIRLOCK_CMD_{token}\n{{ eval \"$__airlock_cmd\"\n}} </dev/null 2>&1; printf '\\n%s%s%d\\n' '{a}' '{b}' \"$?\"\n"
    );
    let Some(shell) = state.shell.as_mut() else {
        return ToolOutput::error("bash: no shell");
    };
    if let Err(e) = shell.stdin.write_all(script.as_bytes()).await {
        let diag = shell.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        kill(inner, state).await;
        return ToolOutput::error(format!(
            "bash: the sandboxed shell is gone ({e}){}{}",
            if diag.is_empty() { "" } else { ": " },
            diag.trim()
        ));
    }
    let cap = inner.limits.output_cap;
    let outcome = read_until(shell, marker.as_bytes(), cap, timeout, &cancel).await;
    let mut result =
        match outcome {
            Outcome::Done {
                output,
                code,
                truncated,
            } => {
                let text = finish_text(&output, cap, truncated);
                if code == 0 {
                    ToolOutput::text(text)
                } else if text.is_empty() {
                    ToolOutput::error(format!("exit {code}"))
                } else {
                    ToolOutput::error(text)
                }
            }
            Outcome::Exited { output, truncated } => {
                let diag = shell.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                // stdout may have been closed by the command (`exec >&-`) with the shell alive:
                // wait briefly, then kill.
                let status = tokio::time::timeout(Duration::from_secs(2), shell.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                kill(inner, state).await;
                let mut text = finish_text(&output, cap, truncated);
                if !diag.trim().is_empty() {
                    text.push_str(&format!("\n{}", diag.trim()));
                }
                let status = status
                    .and_then(|s| s.code())
                    .map(|c| format!("exit {c}"))
                    .unwrap_or_else(|| "killed".into());
                ToolOutput::error(format!(
                "{text}\nbash: the shell exited ({status}); the next call starts a fresh one"
            ).trim_start().to_owned())
            }
            Outcome::TimedOut => {
                kill(inner, state).await;
                // The reference toolset's wording (TypeScript SDK: milliseconds).
                ToolOutput::error(format!(
                    "bash: bash command timed out after {}ms",
                    timeout.as_millis()
                ))
            }
            Outcome::Cancelled => {
                kill(inner, state).await;
                ToolOutput::error("bash command cancelled")
            }
        };
    let mut notes = Vec::new();
    if let (Some(cg), Some((forks0, oom0))) = (&inner.cgroup, before) {
        let (forks, oom) = cg.events();
        if forks > forks0 {
            notes
                .push("[sandbox: process limit reached (pids.max); forks were refused]".to_owned());
        }
        if oom > oom0 {
            notes.push(
                "[sandbox: memory limit reached (memory.max); a process was killed]".to_owned(),
            );
        }
    }
    let removed = paths::sweep_protected(inner);
    if !removed.is_empty() {
        result.is_error = true;
        let names: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        notes.push(format!(
            "[sandbox: refused and removed protected files created by the command: {}]",
            names.join(", ")
        ));
    }
    if !notes.is_empty() {
        let extra = notes.join("\n");
        match result.content.first_mut() {
            Some(crate::ContentBlock::Text { text }) => {
                if text == "(no output)" {
                    *text = extra;
                } else {
                    text.push('\n');
                    text.push_str(&extra);
                }
            }
            _ => result
                .content
                .push(crate::ContentBlock::Text { text: extra }),
        }
    }
    result
}
