//! The layout of `AIRLOCK_HOME` and the 0600 runtime file through which the CLI, UI and tray find a running agent.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::write_atomic;
use crate::error::AgentError;

#[derive(Debug, Clone)]
pub struct AirlockHome {
    root: PathBuf,
}

/// What a running agent publishes about itself in `run/agent.json` (mode 0600: it holds the control token).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RuntimeInfo {
    pub pid: u32,
    pub api_url: String,
    pub token: String,
}

impl AirlockHome {
    pub fn new(root: PathBuf) -> Self {
        Self { root }
    }

    /// `--home`/`AIRLOCK_HOME` when given, else the OS config directory (`~/.config/airlock` on Linux,
    /// `~/Library/Application Support/airlock` on macOS, `%APPDATA%\airlock` on Windows).
    pub fn resolve(explicit: Option<PathBuf>) -> Result<Self, AgentError> {
        if let Some(root) = explicit {
            return Ok(Self::new(root));
        }
        dirs::config_dir()
            .map(|d| Self::new(d.join("airlock")))
            .ok_or_else(|| {
                AgentError::Invalid(
                    "no home directory found; pass --home DIR or set AIRLOCK_HOME".into(),
                )
            })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn config_path(&self) -> PathBuf {
        self.root.join("config.toml")
    }
    pub fn runtime_path(&self) -> PathBuf {
        self.root.join("run").join("agent.json")
    }
    pub fn ensure_dirs(&self) -> Result<(), AgentError> {
        for dir in [
            self.root.clone(),
            self.root.join("run"),
            self.root.join("secrets"),
        ] {
            fs::create_dir_all(&dir).map_err(|e| AgentError::io(&dir, e))?;
        }
        restrict_dir(&self.root.join("run"))?;
        restrict_dir(&self.root.join("secrets"))?;
        Ok(())
    }

    pub fn read_runtime(&self) -> Option<RuntimeInfo> {
        let text = fs::read_to_string(self.runtime_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn write_runtime(&self, info: &RuntimeInfo) -> Result<(), AgentError> {
        let bytes =
            serde_json::to_vec_pretty(info).map_err(|e| AgentError::Invalid(e.to_string()))?;
        write_atomic(&self.runtime_path(), &bytes, 0o600)
    }

    pub fn remove_runtime(&self, pid: u32) {
        // Only remove our own file: a second agent that raced us must keep its entry.
        if self.read_runtime().is_some_and(|info| info.pid == pid) {
            let _ = fs::remove_file(self.runtime_path());
        }
    }
}

/// 256 bits from the OS CSPRNG, hex-encoded.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

#[cfg(unix)]
fn restrict_dir(dir: &Path) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| AgentError::io(dir, e))
}

#[cfg(not(unix))]
fn restrict_dir(_dir: &Path) -> Result<(), AgentError> {
    Ok(())
}

/// Is a process with this pid alive? (Used to tell a stale runtime file from a live agent.)
pub fn pid_alive(pid: u32) -> bool {
    #[cfg(target_os = "linux")]
    {
        Path::new(&format!("/proc/{pid}")).exists()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        true
    }
}

/// Opens the keystore for this home: `choice` from the command line wins over `[keystore] backend` in config.toml.
pub async fn open_keystore(
    home: &AirlockHome,
    config_choice: Option<&str>,
    choice: Option<airlock_keystore::KeystoreChoice>,
) -> Result<airlock_keystore::Keystore, AgentError> {
    let choice = match (choice, config_choice) {
        (Some(c), _) => c,
        (None, Some(text)) => text
            .parse()
            .map_err(|e| AgentError::Invalid(format!("[keystore] backend in config.toml: {e}")))?,
        (None, None) => airlock_keystore::KeystoreChoice::Auto,
    };
    let namespace = airlock_keystore::Namespace::for_home(home.root());
    airlock_keystore::open(choice, &namespace, &home.root().join("secrets"))
        .await
        .map_err(|e| AgentError::Invalid(format!("opening the keystore: {e}")))
}
