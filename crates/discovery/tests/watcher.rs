//! Live watching: edits and newly created config files produce new snapshots.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use airlock_discovery::{DiscoveryEnv, Os, Snapshot, watch};
use tokio::sync::watch as tw;

type TestResult = Result<(), Box<dyn std::error::Error>>;

const BOUND: Duration = Duration::from_secs(10);

fn env_for(home: &Path) -> DiscoveryEnv {
    DiscoveryEnv {
        home: home.to_path_buf(),
        os: Os::Linux,
        vars: BTreeMap::new(),
        project_dirs: vec![],
    }
}

fn empty() -> Arc<Snapshot> {
    Arc::new(Snapshot {
        servers: vec![],
        diagnostics: vec![],
        watched_paths: vec![],
    })
}

fn names(s: &Snapshot) -> Vec<String> {
    s.servers.iter().map(|x| x.name.clone()).collect()
}

/// Wait until the latest snapshot satisfies `pred`.
async fn wait_for(
    rx: &mut tw::Receiver<Arc<Snapshot>>,
    what: &str,
    pred: impl Fn(&Snapshot) -> bool,
) -> Result<Arc<Snapshot>, String> {
    let res = tokio::time::timeout(BOUND, async {
        loop {
            let cur = rx.borrow_and_update().clone();
            if pred(&cur) {
                return Ok(cur);
            }
            if rx.changed().await.is_err() {
                return Err(format!("watcher stopped before: {what}"));
            }
        }
    })
    .await;
    match res {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out waiting for: {what}; last names {:?}",
            names(&rx.borrow())
        )),
    }
}

fn write(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(path, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_new_directories_are_noticed() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().canonicalize()?;
    let cursor = home.join(".cursor/mcp.json");
    write(&cursor, r#"{"mcpServers": {"one": {"command": "one"}}}"#)?;

    let (tx, mut rx) = tw::channel(empty());
    let watcher = watch(env_for(&home), tx)?;
    wait_for(&mut rx, "initial snapshot with `one`", |s| {
        names(s) == ["one"]
    })
    .await?;

    // Edit an existing file.
    write(
        &cursor,
        r#"{"mcpServers": {"one": {"command": "one"}, "two": {"command": "two"}}}"#,
    )?;
    wait_for(&mut rx, "`two` after edit", |s| names(s) == ["one", "two"]).await?;

    // A config in directories that did not exist when watching started (~/.codex, then a
    // nested ~/.codeium/windsurf).
    assert!(!home.join(".codex").exists());
    write(
        &home.join(".codex/config.toml"),
        "[mcp_servers.three]\ncommand = \"three\"\n",
    )?;
    wait_for(&mut rx, "`three` from a new dir", |s| {
        names(s).contains(&"three".to_string())
    })
    .await?;
    write(
        &home.join(".codeium/windsurf/mcp_config.json"),
        r#"{"mcpServers": {"four": {"serverUrl": "http://127.0.0.1:9/mcp"}}}"#,
    )?;
    wait_for(&mut rx, "`four` from nested new dirs", |s| {
        names(s).contains(&"four".to_string())
    })
    .await?;

    // A syntax error shows up as a diagnostic, and fixing it clears it.
    write(&cursor, "{ \"mcpServers\": ")?;
    let s = wait_for(&mut rx, "diagnostic for broken file", |s| {
        !s.diagnostics.is_empty()
    })
    .await?;
    assert!(!names(&s).contains(&"one".to_string()));
    write(&cursor, r#"{"mcpServers": {"one": {"command": "one"}}}"#)?;
    wait_for(&mut rx, "diagnostic cleared", |s| {
        s.diagnostics.is_empty() && names(s).contains(&"one".to_string())
    })
    .await?;

    // Project dirs listed in ~/.claude.json are picked up, including files in them.
    let proj = home.join("proj");
    write(
        &proj.join(".mcp.json"),
        r#"{"mcpServers": {"five": {"command": "five"}}}"#,
    )?;
    write(
        &home.join(".claude.json"),
        &format!(r#"{{"projects": {{"{}": {{}}}}}}"#, proj.display()),
    )?;
    wait_for(&mut rx, "`five` from a newly listed project", |s| {
        names(s).contains(&"five".to_string())
    })
    .await?;
    write(
        &proj.join(".cursor/mcp.json"),
        r#"{"mcpServers": {"six": {"command": "six"}}}"#,
    )?;
    wait_for(&mut rx, "`six` in the project's new .cursor dir", |s| {
        names(s).contains(&"six".to_string())
    })
    .await?;

    watcher.rescan_now();
    drop(watcher);
    // Dropping the watcher stops it: the sender is dropped and the channel closes.
    let closed = tokio::time::timeout(BOUND, async { while rx.changed().await.is_ok() {} }).await;
    assert!(closed.is_ok(), "watcher kept running after drop");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_rescans_send_nothing() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().canonicalize()?;
    write(
        &home.join(".lmstudio/mcp.json"),
        r#"{"mcpServers": {"a": {"command": "a"}}}"#,
    )?;
    let (tx, mut rx) = tw::channel(empty());
    let watcher = watch(env_for(&home), tx)?;
    wait_for(&mut rx, "initial", |s| names(s) == ["a"]).await?;
    rx.mark_unchanged();
    // Touch an unrelated file in a watched dir and force a rescan: the result is equal, so no
    // new value is sent.
    write(&home.join("unrelated.txt"), "x")?;
    watcher.rescan_now();
    let got = tokio::time::timeout(Duration::from_millis(1500), rx.changed()).await;
    assert!(got.is_err(), "a snapshot was sent although nothing changed");
    // A real change still gets through afterwards.
    write(
        &home.join(".lmstudio/mcp.json"),
        r#"{"mcpServers": {"b": {"command": "b"}}}"#,
    )?;
    wait_for(&mut rx, "b", |s| names(s) == ["b"]).await?;
    Ok(())
}

#[test]
fn watch_outside_a_runtime_is_an_error() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let (tx, _rx) = tw::channel(empty());
    let r = watch(env_for(tmp.path()), tx);
    assert!(r.is_err());
    Ok(())
}
