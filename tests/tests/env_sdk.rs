//! Must-show: the official `anthropic` Python SDK's `EnvironmentWorker` runs a scripted session against the work
//! queue that `airlock relay --api` serves, to completion (the queue speaks the real protocol), and Airlock's own
//! worker — the `airlock up` agent with `airlock sandbox on`, its tools executed in the bubblewrap/Landlock sandbox —
//! runs the same script against the same server to the same results: the same calls answered (owned, allowed) and
//! left alone (custom tools, denials), the same error flags and the same content blocks.
//!
//! The script covers every worker-side tool of `agent_toolset_20260401` (bash, read, write, edit, glob, grep), their
//! output shapes (trailing newlines, empty output, ANSI escapes, non-ASCII text, line ranges), their error answers
//! (failing commands, missing files, paths outside the workdir, edits that do not apply, a directory read as a file,
//! a timeout), the persistent shell (a variable and a `cd` carried to later calls, a fresh shell after a restart)
//! and the permission gating (`ask` confirmed and denied, `deny`).
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use airlock_e2e::queue::{
    Orchestrator, Queue, QueueEnv, StopOnDrop, sandbox_agent_config, sandbox_login,
};
use airlock_e2e::{Agent, TestHome, py_script, venv_python};
use serde_json::{Value, json};

/// The scripted calls, in the order the agent side posts them.
fn script() -> Vec<Value> {
    let bash = |command: &str| json!({"type": "agent.tool_use", "name": "bash", "input": {"command": command}});
    let tool =
        |name: &str, input: Value| json!({"type": "agent.tool_use", "name": name, "input": input});
    vec![
        /* 0 */ bash("echo hello"),
        /* 1 */
        tool(
            "write",
            json!({"file_path": "notes.txt", "content": "alpha\nbeta\n"}),
        ),
        /* 2 */ tool("read", json!({"file_path": "notes.txt"})),
        /* 3 */ bash("echo oops >&2; false"),
        /* 4 */ bash("printf 'x\\ny\\n' | wc -l"),
        /* 5 */
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo gated"}, "evaluated_permission": "ask"}),
        /* 6 */
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo never"}, "evaluated_permission": "deny"}),
        /* 7 */
        json!({"type": "agent.custom_tool_use", "name": "lookup", "input": {"q": "served by the app backend"}}),
        /* 8 */
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "echo rejected"}, "evaluated_permission": "ask"}),
        /* 9 */
        tool(
            "write",
            json!({"file_path": "dir/uni.txt", "content": "h\u{e9}llo w\u{f6}rld\n"}),
        ),
        /* 10 */
        tool(
            "read",
            json!({"file_path": "notes.txt", "view_range": [2, 2]}),
        ),
        /* 11 */
        tool(
            "edit",
            json!({"file_path": "notes.txt", "old_string": "beta", "new_string": "gamma"}),
        ),
        /* 12 */
        tool(
            "edit",
            json!({"file_path": "notes.txt", "old_string": "delta", "new_string": "x"}),
        ),
        /* 13 */ tool("glob", json!({"pattern": "dir/*.txt"})),
        /* 14 */ tool("grep", json!({"pattern": "gam+a"})),
        /* 15 */ tool("read", json!({"file_path": "missing.txt"})),
        /* 16 */ bash("true"),
        /* 17 */ bash("export SCRIPT_VAR=42"),
        /* 18 */ bash("echo \"var=$SCRIPT_VAR\""),
        /* 19 */ bash("printf 'a\\n\\n\\n'"),
        /* 20 */ bash("false"),
        /* 21 */ tool("read", json!({"file_path": "../outside.txt"})),
        /* 22 */ bash("printf '\\033[31mred\\033[0m\\n'"),
        /* 23 */ bash("cat"),
        /* 24 */ bash("cd dir && cat uni.txt"),
        /* 25 */ bash("ls"),
        /* 26 */ tool("read", json!({"file_path": "dir/uni.txt"})),
        /* 27 */ tool("glob", json!({"pattern": "nothing/*.zzz"})),
        /* 28 */ tool("grep", json!({"pattern": "zzz-none-zzz"})),
        /* 29 */
        tool(
            "write",
            json!({"file_path": "rep.txt", "content": "x-x-x\n"}),
        ),
        /* 30 */
        tool(
            "edit",
            json!({"file_path": "rep.txt", "old_string": "x", "new_string": "y"}),
        ),
        /* 31 */
        tool(
            "edit",
            json!({"file_path": "rep.txt", "old_string": "x", "new_string": "y", "replace_all": true}),
        ),
        /* 32 */ tool("read", json!({"file_path": "dir"})),
        /* 33 */ bash("echo warn >&2"),
        /* 34 */ tool("write", json!({"file_path": "empty.txt", "content": ""})),
        /* 35 */ tool("read", json!({"file_path": "empty.txt"})),
        /* 36 */
        json!({"type": "agent.tool_use", "name": "bash", "input": {"command": "sleep 5", "timeout_ms": 1000}}),
        // After a timeout the Python SDK keeps the dead shell (every later call answers `bash session terminated;
        // restart required` until a restart), the TypeScript SDK starts a fresh one: the references differ, the
        // script restarts the shell explicitly (without a command: Python ignores a command given with `restart`).
        /* 37 */
        json!({"type": "agent.tool_use", "name": "bash", "input": {"restart": true}}),
        /* 38 */ bash("echo \"var=$SCRIPT_VAR\"; ls"),
    ]
}

/// Calls the worker must leave alone until the user confirms them (`ask`): 5 (allowed later) and 8 (denied).
const ASK_ALLOW: usize = 5;
const ASK_DENY: usize = 8;
/// Calls never answered by a worker: `deny` from the server, a custom tool another client serves, a denied `ask`.
const NEVER_ANSWERED: [usize; 3] = [6, 7, ASK_DENY];

/// One answered call: `(index in the script, is_error, content with the workdir written as <workdir>)`.
type Answer = (usize, bool, Value);

/// Runs the script in a new session of `env` to completion (the work item stopped after the turn ended); returns
/// the answers in script order and the session id. `workdir(sid)` is where the worker ran the session's tools.
async fn run_script(
    env: &QueueEnv,
    end_within: Duration,
    workdir: impl Fn(&str) -> PathBuf,
) -> (Vec<Answer>, String) {
    let o: &Orchestrator = &env.orchestrator;
    let sid = o
        .create_session(&env.id, json!({"case": "conformance"}))
        .await;
    let calls = script();
    let n = calls.len();
    let ids = o.post_events(&sid, calls).await;
    let before_confirmation = n - NEVER_ANSWERED.len() - 1;
    o.wait_results(&sid, before_confirmation, Duration::from_secs(120))
        .await;
    // The gated calls wait for their confirmations.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        o.results(&sid).await.len(),
        before_confirmation,
        "an `ask` call ran unconfirmed, or a call that is not the worker's was answered"
    );
    o.post_events(
        &sid,
        vec![
            json!({"type": "user.tool_confirmation", "tool_use_id": ids[ASK_ALLOW], "result": "allow"}),
            json!({"type": "user.tool_confirmation", "tool_use_id": ids[ASK_DENY], "result": "deny"}),
        ],
    )
    .await;
    o.wait_results(&sid, before_confirmation + 1, Duration::from_secs(60))
        .await;
    // The turn ends; after max_idle the worker lets go of the item and force-stops it.
    o.post_events(
        &sid,
        vec![json!({"type": "session.status_idle", "stop_reason": {"type": "end_turn"}})],
    )
    .await;
    let deadline = Instant::now() + end_within;
    while o.work_state(&env.id, &sid).await.as_deref() != Some("stopped") {
        assert!(
            Instant::now() < deadline,
            "the work item never stopped (waited {end_within:?})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The workdir is each worker's own choice (the SDK's: the folder it was given; Airlock's: a fresh folder per
    // session), and the reference's glob and grep answer with absolute paths: the one normalisation.
    let root = workdir(&sid);
    let root = root.canonicalize().unwrap_or(root);
    let root = root.to_str().unwrap().to_string();
    let mut out: Vec<Answer> = o
        .results(&sid)
        .await
        .iter()
        .map(|r| {
            let id = r["tool_use_id"]
                .as_str()
                .or(r["custom_tool_use_id"].as_str())
                .unwrap();
            let idx = ids.iter().position(|i| i == id).unwrap();
            let content: Value =
                serde_json::from_str(&r["content"].to_string().replace(&root, "<workdir>"))
                    .unwrap();
            (idx, r["is_error"].as_bool().unwrap(), content)
        })
        .collect();
    out.sort_by_key(|(i, _, _)| *i);
    (out, sid)
}

/// Whether Airlock's answer `air` to a call is the SDK's answer `sdk`: equal, or one of the few shapes on which the
/// two reference implementations themselves differ (the Python SDK's `agent_toolset.py` and the TypeScript SDK's
/// `tools/agent-toolset/node.ts`), where Airlock's answer is exactly the TypeScript one:
/// * `write` counts the content in code points in Python (`len(content)`) and in UTF-8 bytes in TypeScript
///   (`Buffer.byteLength`); both print `wrote <n> bytes to <file_path>`;
/// * a failing `bash` command without output is `(no output)` in Python (an empty tool error) and `exit <status>` in
///   TypeScript;
/// * a path outside the workdir is `<tool>: path '<p>' is outside the session's working directory` in Python and
///   `path "<p>" is outside the session's working directory` in TypeScript;
/// * a `read` of something that is not a regular file is `read: <p>: not a regular file` in Python and
///   `read: <p> is not a regular file` in TypeScript;
/// * a `bash` timeout is `bash: bash command timed out after <seconds as a float>s` in Python and
///   `bash: bash command timed out after <n>ms` in TypeScript.
///
/// Everything else (error flags, every other text, trailing newlines, block types) must be equal.
fn same_answer(sdk: &Answer, air: &Answer) -> bool {
    if sdk == air {
        return true;
    }
    if sdk.0 != air.0 || sdk.1 != air.1 {
        return false;
    }
    let call = &script()[sdk.0];
    let text = |a: &Answer| match a.2.as_array().map(Vec::as_slice) {
        Some([b]) if b["type"] == "text" => b["text"].as_str().map(str::to_string),
        _ => None,
    };
    let (Some(s), Some(a)) = (text(sdk), text(air)) else {
        return false;
    };
    let name = call["name"].as_str().unwrap_or_default();
    let input = &call["input"];
    let file_path = input["file_path"].as_str().unwrap_or_default();
    // (Python's answer, TypeScript's answer) pairs for this call.
    let mut forms: Vec<(String, String)> = Vec::new();
    if name == "write" && !sdk.1 {
        let content = input["content"].as_str().unwrap_or_default();
        forms.push((
            format!("wrote {} bytes to {file_path}", content.chars().count()),
            format!("wrote {} bytes to {file_path}", content.len()),
        ));
    }
    if name == "bash" && sdk.1 {
        if let Some(ms) = input["timeout_ms"].as_u64() {
            // Python prints the seconds as a float (`1.0s`), TypeScript the milliseconds (`1000ms`).
            forms.push((
                format!(
                    "bash: bash command timed out after {:?}s",
                    ms as f64 / 1000.0
                ),
                format!("bash: bash command timed out after {ms}ms"),
            ));
        }
        // The exit status is not in Python's answer: any non-zero one.
        if s == "(no output)"
            && a.strip_prefix("exit ")
                .and_then(|c| c.parse::<i32>().ok())
                .is_some_and(|c| c != 0)
        {
            return true;
        }
    }
    if matches!(name, "read" | "write" | "edit") && sdk.1 {
        forms.push((
            format!("{name}: path '{file_path}' is outside the session's working directory"),
            format!(
                "path {} is outside the session's working directory",
                json!(file_path)
            ),
        ));
    }
    if name == "read" && sdk.1 {
        forms.push((
            format!("read: {file_path}: not a regular file"),
            format!("read: {file_path} is not a regular file"),
        ));
    }
    forms.iter().any(|(py, ts)| s == *py && a == *ts)
}

/// `index: input -> is_error, content` lines for a failure message.
fn show(answers: &[Answer]) -> String {
    let calls = script();
    answers
        .iter()
        .map(|(i, e, c)| {
            format!(
                "  {i}: {} {} -> error={e} {c}",
                calls[*i]["name"], calls[*i]["input"]
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_sdk_worker_and_airlock_worker_run_the_same_session_to_the_same_results() {
    let home = TestHome::new();
    let queue = Queue::start(&home);
    let sdk_env = queue.create_env(&home, Some("sdk"));
    let air_env = queue.create_env(&home, Some("airlock"));

    // 1. The official SDK worker (its default toolset, a folder of its own).
    let started = Instant::now();
    let sdk_workdir = home.scratch().join("sdk-workdir");
    std::fs::create_dir_all(&sdk_workdir).unwrap();
    let mut py = std::process::Command::new(venv_python());
    py.arg(py_script("env_sdk_worker.py"))
        .args([
            &queue.base,
            &sdk_env.id,
            sdk_workdir.to_str().unwrap(),
            "1.0",
        ])
        .env("ANTHROPIC_ENVIRONMENT_KEY", &sdk_env.key)
        .env_remove("ANTHROPIC_API_KEY")
        .env_remove("ANTHROPIC_BASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(
            std::fs::File::create(home.scratch().join("sdk-worker.log")).unwrap(),
        ));
    let mut sdk = StopOnDrop(py.spawn().unwrap());
    let mut first = String::new();
    BufReader::new(sdk.0.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(
        first.starts_with("ready "),
        "the SDK worker did not start: {first:?}"
    );
    println!("anthropic SDK {}", first.trim());
    let (sdk_results, _) =
        run_script(&sdk_env, Duration::from_secs(60), |_| sdk_workdir.clone()).await;
    drop(sdk);
    println!("SDK worker: {:?}", started.elapsed());
    assert_eq!(
        std::fs::read_to_string(sdk_workdir.join("notes.txt")).unwrap(),
        "alpha\ngamma\n"
    );

    // The SDK answered exactly the owned, allowed calls, and its answers are the reference's (spot checks).
    let expected: Vec<usize> = (0..script().len())
        .filter(|i| !NEVER_ANSWERED.contains(i))
        .collect();
    assert_eq!(
        sdk_results.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected,
        "the SDK answered other calls than the owned, allowed ones:\n{}",
        show(&sdk_results)
    );
    let get = |r: &[Answer], i: usize| r.iter().find(|a| a.0 == i).cloned().unwrap();
    assert_eq!(
        get(&sdk_results, 0),
        (0, false, json!([{"type": "text", "text": "hello"}]))
    );
    assert!(get(&sdk_results, 3).1, "a failing command is a tool error");
    assert_eq!(
        get(&sdk_results, 18).2,
        json!([{"type": "text", "text": "var=42"}]),
        "the shell persists"
    );

    // 2. Airlock's worker in the agent: `sandbox login` (key on stdin), `sandbox on`, tools in the OS sandbox.
    let started = Instant::now();
    // The SDK worker runs with max_idle 1 s; the agent's worker gets 2 s (`[sandbox] max_idle_secs`).
    home.write_airlock_config(&sandbox_agent_config("[sandbox]\nmax_idle_secs = 2\n"));
    sandbox_login(&home, &queue.base, &air_env.id, &air_env.key);
    let agent = Agent::start(home);
    let on = agent.cli_json(&["sandbox", "on", "--json"]);
    assert_eq!(on["running"], true, "{on}");
    assert_eq!(on["confined"], true, "bubblewrap works here: {on}");
    let sessions_dir = agent.home.airlock_home().join("sandbox/sessions");
    let (air_results, air_sid) = run_script(&air_env, Duration::from_secs(90), |sid| {
        sessions_dir.join(sid)
    })
    .await;
    println!("Airlock worker: {:?}", started.elapsed());
    let air_workdir: &Path = &sessions_dir.join(&air_sid);
    assert_eq!(
        std::fs::read_to_string(air_workdir.join("notes.txt")).unwrap(),
        "alpha\ngamma\n"
    );
    let st = agent.cli_json(&["sandbox", "status", "--json"]);
    let recent = st["worker"]["recent"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        recent.iter().filter(|r| r["posted"] == true).count(),
        expected.len(),
        "{st}"
    );

    assert_eq!(
        air_results.iter().map(|r| r.0).collect::<Vec<_>>(),
        expected,
        "Airlock answered other calls than the owned, allowed ones:\n{}",
        show(&air_results)
    );

    // The same results, call by call.
    let differences: Vec<String> = sdk_results
        .iter()
        .zip(air_results.iter())
        .filter(|(s, a)| !same_answer(s, a))
        .map(|(s, a)| {
            format!(
                "  {}: {} {}\n     SDK:     error={} {}\n     Airlock: error={} {} (call {})",
                s.0,
                script()[s.0]["name"],
                script()[s.0]["input"],
                s.1,
                s.2,
                a.1,
                a.2,
                a.0
            )
        })
        .collect();
    assert!(
        differences.is_empty(),
        "Airlock's worker produced other results than the SDK's:\n{}\nSDK:\n{}\nAirlock:\n{}",
        differences.join("\n"),
        show(&sdk_results),
        show(&air_results)
    );
}
