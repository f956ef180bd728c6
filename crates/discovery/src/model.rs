//! Public data model: what a scan returns.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Operating-system conventions used to resolve config paths. Selectable so that macOS and
/// Windows layouts can be computed (and tested) on any host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Os {
    Linux,
    MacOs,
    Windows,
}

impl Os {
    /// The conventions of the host this binary was built for (anything not macOS/Windows is
    /// treated as Linux/XDG).
    pub fn current() -> Self {
        if cfg!(target_os = "macos") {
            Os::MacOs
        } else if cfg!(windows) {
            Os::Windows
        } else {
            Os::Linux
        }
    }
}

/// Everything a scan depends on besides the file system. Tests build one by hand.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEnv {
    /// The user's home directory.
    pub home: PathBuf,
    /// Which OS path conventions to use.
    pub os: Os,
    /// Environment variables (XDG_CONFIG_HOME, APPDATA, CLAUDE_CONFIG_DIR, CODEX_HOME, and the
    /// values used for `${VAR}` expansion).
    pub vars: BTreeMap<String, String>,
    /// Extra project directories to scan for project-scoped configs, in addition to the ones
    /// Claude Code lists in `~/.claude.json`.
    pub project_dirs: Vec<PathBuf>,
}

impl DiscoveryEnv {
    /// The environment of the current process: `HOME` (falling back to the platform home
    /// directory), [`Os::current`], all process environment variables, no extra project dirs.
    pub fn from_process() -> Self {
        let vars: BTreeMap<String, String> = std::env::vars().collect();
        let home = vars
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from)
            .or_else(dirs::home_dir)
            .unwrap_or_else(|| PathBuf::from("/"));
        DiscoveryEnv {
            home,
            os: Os::current(),
            vars,
            project_dirs: Vec::new(),
        }
    }
}

/// Result of one scan.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Distinct servers, sorted by name then id.
    pub servers: Vec<DiscoveredServer>,
    /// Problems found while reading config files (one per bad file, plus notes).
    pub diagnostics: Vec<Diagnostic>,
    /// Every config path (file or directory) that was considered, existing or not. A watcher
    /// watches these (or their nearest existing ancestor).
    pub watched_paths: Vec<PathBuf>,
}

/// One MCP server, possibly configured in several clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoveredServer {
    /// First 12 lowercase hex chars of SHA-256 of the canonical launch identity.
    pub id: String,
    /// Name from the highest-priority source.
    pub name: String,
    /// How to reach it (taken from the highest-priority source; command/url normalized).
    pub transport: TransportSpec,
    /// Where it was found, sorted by client priority then path.
    pub sources: Vec<Source>,
}

/// How to start or reach a server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TransportSpec {
    Stdio {
        command: String,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    StreamableHttp {
        url: String,
        headers: BTreeMap<String, String>,
    },
    Sse {
        url: String,
        headers: BTreeMap<String, String>,
    },
}

/// Placeholder for secret values in [`TransportSpec::redacted`].
pub const REDACTED: &str = "<redacted>";

impl TransportSpec {
    /// A copy safe to show or log: env and header values are replaced by `"<redacted>"`, keys
    /// are kept.
    pub fn redacted(&self) -> TransportSpec {
        fn red(m: &BTreeMap<String, String>) -> BTreeMap<String, String> {
            m.keys()
                .map(|k| (k.clone(), REDACTED.to_string()))
                .collect()
        }
        match self {
            TransportSpec::Stdio {
                command,
                args,
                env,
                cwd,
            } => TransportSpec::Stdio {
                command: command.clone(),
                args: args.clone(),
                env: red(env),
                cwd: cwd.clone(),
            },
            TransportSpec::StreamableHttp { url, headers } => TransportSpec::StreamableHttp {
                url: url.clone(),
                headers: red(headers),
            },
            TransportSpec::Sse { url, headers } => TransportSpec::Sse {
                url: url.clone(),
                headers: red(headers),
            },
        }
    }
}

/// One place a server was configured.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub client: ClientKind,
    /// The config file (for [`ClientKind::Running`]: the probed URL).
    pub path: PathBuf,
    /// The server's name in that file.
    pub name: String,
    pub scope: Scope,
    /// `disabled: true` / `enabled: false` in that file.
    pub disabled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    User,
    Project,
    Managed,
    Running,
}

/// The MCP client a config belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientKind {
    ClaudeDesktop,
    ClaudeCode,
    Cursor,
    Vscode,
    Windsurf,
    Zed,
    Codex,
    Gemini,
    Goose,
    Continue,
    Cline,
    Lmstudio,
    Running,
}

impl ClientKind {
    /// All kinds in priority order (used to pick a server's name and to sort sources).
    pub const PRIORITY: [ClientKind; 13] = [
        ClientKind::ClaudeCode,
        ClientKind::ClaudeDesktop,
        ClientKind::Cursor,
        ClientKind::Vscode,
        ClientKind::Windsurf,
        ClientKind::Zed,
        ClientKind::Codex,
        ClientKind::Gemini,
        ClientKind::Goose,
        ClientKind::Continue,
        ClientKind::Cline,
        ClientKind::Lmstudio,
        ClientKind::Running,
    ];

    /// Position in [`ClientKind::PRIORITY`] (0 = highest).
    pub fn priority(self) -> usize {
        Self::PRIORITY
            .iter()
            .position(|k| *k == self)
            .unwrap_or(Self::PRIORITY.len())
    }

    /// The kebab-case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::ClaudeDesktop => "claude-desktop",
            ClientKind::ClaudeCode => "claude-code",
            ClientKind::Cursor => "cursor",
            ClientKind::Vscode => "vscode",
            ClientKind::Windsurf => "windsurf",
            ClientKind::Zed => "zed",
            ClientKind::Codex => "codex",
            ClientKind::Gemini => "gemini",
            ClientKind::Goose => "goose",
            ClientKind::Continue => "continue",
            ClientKind::Cline => "cline",
            ClientKind::Lmstudio => "lmstudio",
            ClientKind::Running => "running",
        }
    }
}

impl std::fmt::Display for ClientKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem with one config file (or a note about a value that could not be resolved).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    pub client: ClientKind,
    pub path: PathBuf,
    /// 1-based line, when the parser reports one.
    pub line: Option<u32>,
    /// 1-based column, when the parser reports one.
    pub column: Option<u32>,
    pub message: String,
}

impl DiscoveredServer {
    /// A DNS label derived from the name: lowercase `a-z0-9-`, at most 63 chars, never empty,
    /// never starting or ending with `-`.
    pub fn default_hostname(&self) -> String {
        let mut out = String::new();
        let mut dash = false;
        for c in self.name.chars() {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() {
                if dash && !out.is_empty() {
                    out.push('-');
                }
                dash = false;
                out.push(c);
            } else {
                dash = true;
            }
            if out.len() >= 63 {
                break;
            }
        }
        out.truncate(63);
        while out.ends_with('-') {
            out.pop();
        }
        if out.is_empty() {
            format!("server-{}", self.id.to_ascii_lowercase())
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(63)
                .collect()
        } else {
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(name: &str) -> DiscoveredServer {
        DiscoveredServer {
            id: "0123456789ab".into(),
            name: name.into(),
            transport: TransportSpec::Sse {
                url: "http://x".into(),
                headers: BTreeMap::new(),
            },
            sources: vec![],
        }
    }

    #[test]
    fn hostname_slugs() {
        assert_eq!(server("My Server!").default_hostname(), "my-server");
        assert_eq!(server("--a__b--").default_hostname(), "a-b");
        assert_eq!(server("€€€").default_hostname(), "server-0123456789ab");
        let long = "x".repeat(100);
        assert_eq!(server(&long).default_hostname().len(), 63);
        let h = server(&format!("{}-y", "a".repeat(62))).default_hostname();
        assert!(h.len() <= 63 && !h.ends_with('-'), "{h}");
    }

    #[test]
    fn redaction_keeps_keys() {
        let t = TransportSpec::Stdio {
            command: "npx".into(),
            args: vec!["a".into()],
            env: BTreeMap::from([("TOKEN".into(), "secret".into())]),
            cwd: None,
        };
        let r = t.redacted();
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["type"], "stdio");
        assert_eq!(json["env"]["TOKEN"], REDACTED);
        assert!(!json.to_string().contains("secret"));
    }

    #[test]
    fn serde_names() {
        let v = serde_json::to_value(ClientKind::ClaudeDesktop).unwrap_or_default();
        assert_eq!(v, "claude-desktop");
        let v = serde_json::to_value(Scope::Managed).unwrap_or_default();
        assert_eq!(v, "managed");
        let t = TransportSpec::StreamableHttp {
            url: "u".into(),
            headers: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap_or_default()["type"],
            "streamable_http"
        );
    }
}
