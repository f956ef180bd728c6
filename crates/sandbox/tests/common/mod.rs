#![allow(dead_code, clippy::unwrap_used)]
//! Shared setup: a sandbox over a fresh workdir with a fake user home beside it.

use std::path::PathBuf;

use airlock_sandbox::{Sandbox, SandboxConfig, ToolOutput};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

pub struct Env {
    pub _dir: tempfile::TempDir,
    pub home: PathBuf,
    pub workdir: PathBuf,
}

/// A temp dir with `home/` (the user's home: `.ssh/id_ed25519`, Airlock's control-API token)
/// and `home/work/` (the workdir does NOT live there; it is `<tmp>/wd`).
pub fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let home = base.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    std::fs::write(
        home.join(".ssh/id_ed25519"),
        "-----BEGIN OPENSSH PRIVATE KEY----- fake\n",
    )
    .unwrap();
    std::fs::create_dir_all(home.join(".config/airlock/run")).unwrap();
    std::fs::write(
        home.join(".config/airlock/run/agent.json"),
        r#"{"addr":"127.0.0.1:1","token":"control-api-secret-token"}"#,
    )
    .unwrap();
    let workdir = base.join("wd");
    std::fs::create_dir_all(&workdir).unwrap();
    Env {
        _dir: dir,
        home,
        workdir,
    }
}

pub fn config(env: &Env) -> SandboxConfig {
    let mut cfg = SandboxConfig::new(&env.workdir);
    cfg.user_home = Some(env.home.clone());
    cfg.helper = Some(env!("CARGO_BIN_EXE_airlock-sandbox-exec").into());
    cfg
}

pub async fn open(env: &Env) -> Sandbox {
    Sandbox::open(config(env)).await.unwrap()
}

pub async fn tool(sb: &Sandbox, name: &str, input: Value) -> ToolOutput {
    sb.run_tool(name, input, CancellationToken::new()).await
}

pub async fn bash(sb: &Sandbox, command: &str) -> ToolOutput {
    tool(sb, "bash", serde_json::json!({ "command": command })).await
}
