//! Where each client keeps its MCP config, per OS convention. Pure path computation.

use std::path::{Component, Path, PathBuf};

use crate::model::{ClientKind, DiscoveryEnv, Os, Scope};

/// How a candidate file is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// `{"mcpServers": {name: entry}}` (Claude Desktop, Cursor, Windsurf, Gemini, LM Studio,
    /// Cline, `.mcp.json`, Claude Code managed file).
    McpServersMap,
    /// `~/.claude.json`: top-level `mcpServers` (user) + `projects[dir].mcpServers` (project).
    ClaudeJson,
    /// VS Code `mcp.json`: `{"servers": {...}, "inputs": [...]}`.
    VscodeMcp,
    /// VS Code `settings.json`: `{"mcp": {"servers": {...}}}` (before 1.102).
    VscodeSettings,
    /// Zed `settings.json`: `context_servers`.
    Zed,
    /// Codex `config.toml`: `[mcp_servers.<name>]`.
    Codex,
    /// Goose `config.yaml`: `extensions`.
    Goose,
    /// Continue `config.yaml` or a block file: `mcpServers: [ {name, ...} ]`.
    ContinueList,
    /// Continue `<project>/.continue/mcpServers/` directory of `*.yaml|*.yml|*.json`.
    ContinueDir,
    /// A directory that is only watched (its children are separate candidates).
    Directory,
}

/// One place to look.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub client: ClientKind,
    pub path: PathBuf,
    pub scope: Scope,
    pub layout: Layout,
    /// The project directory for project-scoped files.
    pub project: Option<PathBuf>,
}

fn var<'a>(env: &'a DiscoveryEnv, name: &str) -> Option<&'a str> {
    env.vars
        .get(name)
        .map(String::as_str)
        .filter(|v| !v.trim().is_empty())
}

/// The per-user application config dir: `$XDG_CONFIG_HOME` or `~/.config` (Linux),
/// `~/Library/Application Support` (macOS), `%APPDATA%` or `~\AppData\Roaming` (Windows).
pub(crate) fn app_config_dir(env: &DiscoveryEnv) -> PathBuf {
    match env.os {
        Os::Linux => var(env, "XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| env.home.join(".config")),
        Os::MacOs => env.home.join("Library").join("Application Support"),
        Os::Windows => var(env, "APPDATA")
            .map(PathBuf::from)
            .unwrap_or_else(|| env.home.join("AppData").join("Roaming")),
    }
}

/// `~/.config` on Linux/macOS for tools that use XDG-style dirs everywhere but Windows.
fn xdg_style_dir(env: &DiscoveryEnv) -> PathBuf {
    match env.os {
        Os::Linux => app_config_dir(env),
        Os::MacOs => var(env, "XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .unwrap_or_else(|| env.home.join(".config")),
        Os::Windows => app_config_dir(env),
    }
}

/// `~/.claude.json`, or `$CLAUDE_CONFIG_DIR/.claude.json`.
pub(crate) fn claude_json(env: &DiscoveryEnv) -> PathBuf {
    match var(env, "CLAUDE_CONFIG_DIR") {
        Some(dir) => PathBuf::from(dir).join(".claude.json"),
        None => env.home.join(".claude.json"),
    }
}

fn claude_managed(env: &DiscoveryEnv) -> Option<PathBuf> {
    let dir = match env.os {
        Os::Linux => PathBuf::from("/etc/claude-code"),
        Os::MacOs => PathBuf::from("/Library/Application Support/ClaudeCode"),
        Os::Windows => {
            PathBuf::from(var(env, "ProgramData").or(var(env, "PROGRAMDATA"))?).join("ClaudeCode")
        }
    };
    Some(dir.join("managed-mcp.json"))
}

const VSCODE_VARIANTS: [&str; 2] = ["Code", "Code - Insiders"];

pub(crate) fn vscode_user_dirs(env: &DiscoveryEnv) -> Vec<PathBuf> {
    let base = app_config_dir(env);
    VSCODE_VARIANTS
        .iter()
        .map(|v| base.join(v).join("User"))
        .collect()
}

/// Lexically normalize a path: drop `.`, fold `..` where possible.
pub(crate) fn lexical_normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let popped =
                    matches!(out.components().next_back(), Some(Component::Normal(_))) && out.pop();
                if !popped && !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// User-level candidates (everything that does not depend on a project dir).
pub(crate) fn user_candidates(env: &DiscoveryEnv) -> Vec<Candidate> {
    let home = &env.home;
    let cfg = app_config_dir(env);
    let mut out = Vec::new();
    let mut push = |client, path: PathBuf, scope, layout| {
        out.push(Candidate {
            client,
            path,
            scope,
            layout,
            project: None,
        })
    };
    use ClientKind as K;
    use Layout as L;
    push(
        K::ClaudeDesktop,
        cfg.join("Claude").join("claude_desktop_config.json"),
        Scope::User,
        L::McpServersMap,
    );
    push(K::ClaudeCode, claude_json(env), Scope::User, L::ClaudeJson);
    if let Some(m) = claude_managed(env) {
        push(K::ClaudeCode, m, Scope::Managed, L::McpServersMap);
    }
    push(
        K::Cursor,
        home.join(".cursor").join("mcp.json"),
        Scope::User,
        L::McpServersMap,
    );
    for user in vscode_user_dirs(env) {
        push(K::Vscode, user.join("mcp.json"), Scope::User, L::VscodeMcp);
        push(
            K::Vscode,
            user.join("settings.json"),
            Scope::User,
            L::VscodeSettings,
        );
    }
    push(
        K::Windsurf,
        home.join(".codeium")
            .join("windsurf")
            .join("mcp_config.json"),
        Scope::User,
        L::McpServersMap,
    );
    let zed = match env.os {
        Os::Windows => cfg.join("Zed"),
        _ => xdg_style_dir(env).join("zed"),
    };
    push(K::Zed, zed.join("settings.json"), Scope::User, L::Zed);
    let codex = var(env, "CODEX_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".codex"));
    push(K::Codex, codex.join("config.toml"), Scope::User, L::Codex);
    push(
        K::Gemini,
        home.join(".gemini").join("settings.json"),
        Scope::User,
        L::McpServersMap,
    );
    let goose = match env.os {
        Os::Windows => cfg.join("Block").join("goose").join("config"),
        _ => xdg_style_dir(env).join("goose"),
    };
    push(K::Goose, goose.join("config.yaml"), Scope::User, L::Goose);
    push(
        K::Continue,
        home.join(".continue").join("config.yaml"),
        Scope::User,
        L::ContinueList,
    );
    for user in vscode_user_dirs(env) {
        push(
            K::Cline,
            user.join("globalStorage")
                .join("saoudrizwan.claude-dev")
                .join("settings")
                .join("cline_mcp_settings.json"),
            Scope::User,
            L::McpServersMap,
        );
    }
    push(
        K::Cline,
        home.join(".cline")
            .join("data")
            .join("settings")
            .join("cline_mcp_settings.json"),
        Scope::User,
        L::McpServersMap,
    );
    push(
        K::Lmstudio,
        home.join(".lmstudio").join("mcp.json"),
        Scope::User,
        L::McpServersMap,
    );
    out
}

/// Project-level candidates for one project directory.
pub(crate) fn project_candidates(project: &Path) -> Vec<Candidate> {
    use ClientKind as K;
    use Layout as L;
    let files: [(ClientKind, PathBuf, Layout); 6] = [
        (K::ClaudeCode, project.join(".mcp.json"), L::McpServersMap),
        (
            K::Cursor,
            project.join(".cursor").join("mcp.json"),
            L::McpServersMap,
        ),
        (
            K::Vscode,
            project.join(".vscode").join("mcp.json"),
            L::VscodeMcp,
        ),
        (K::Zed, project.join(".zed").join("settings.json"), L::Zed),
        (
            K::Gemini,
            project.join(".gemini").join("settings.json"),
            L::McpServersMap,
        ),
        (
            K::Continue,
            project.join(".continue").join("mcpServers"),
            L::ContinueDir,
        ),
    ];
    files
        .into_iter()
        .map(|(client, path, layout)| Candidate {
            client,
            path,
            scope: Scope::Project,
            layout,
            project: Some(project.to_path_buf()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize() {
        assert_eq!(
            lexical_normalize(Path::new("/a/./b/../c")),
            PathBuf::from("/a/c")
        );
        assert_eq!(lexical_normalize(Path::new("/..")), PathBuf::from("/"));
        assert_eq!(lexical_normalize(Path::new("../x")), PathBuf::from("../x"));
    }
}
