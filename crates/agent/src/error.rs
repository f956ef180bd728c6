use std::path::{Path, PathBuf};

/// Errors of the agent. Each message says what went wrong and, where it can, how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{}:{line}:{column}: {message} (fix the file by hand; Airlock will not overwrite it)", path.display())]
    Config {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another agent is already running for {home} (pid {pid}); stop it first or use another --home"
    )]
    AlreadyRunning { home: PathBuf, pid: u32 },
    #[error("{0}")]
    Invalid(String),
    /// The keystore refused to store or read a secret (not the caller's fault: a 500, not a 422).
    #[error("{0}")]
    Keystore(String),
}

impl AgentError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
