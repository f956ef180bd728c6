//! Candidate config paths per OS convention (pure path computation: the homes do not exist).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_discovery::{DiscoveryEnv, Os, scan};

fn watched(home: &str, os: Os, vars: &[(&str, &str)]) -> Vec<PathBuf> {
    let env = DiscoveryEnv {
        home: PathBuf::from(home),
        os,
        vars: vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        project_dirs: vec![PathBuf::from(home).join("proj")],
    };
    let snap = scan(&env);
    assert!(snap.servers.is_empty());
    snap.watched_paths
}

fn has(paths: &[PathBuf], p: impl AsRef<Path>) -> bool {
    paths.iter().any(|x| x == p.as_ref())
}

#[test]
fn macos_paths() {
    let h = "/nonexistent-airlock/Users/me";
    let w = watched(h, Os::MacOs, &[]);
    let lib = format!("{h}/Library/Application Support");
    for p in [
        format!("{lib}/Claude/claude_desktop_config.json"),
        format!("{h}/.claude.json"),
        "/Library/Application Support/ClaudeCode/managed-mcp.json".to_string(),
        format!("{h}/.cursor/mcp.json"),
        format!("{lib}/Code/User/mcp.json"),
        format!("{lib}/Code/User/settings.json"),
        format!("{lib}/Code - Insiders/User/mcp.json"),
        format!("{h}/.codeium/windsurf/mcp_config.json"),
        format!("{h}/.config/zed/settings.json"),
        format!("{h}/.codex/config.toml"),
        format!("{h}/.gemini/settings.json"),
        format!("{h}/.config/goose/config.yaml"),
        format!("{h}/.continue/config.yaml"),
        format!(
            "{lib}/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json"
        ),
        format!("{h}/.cline/data/settings/cline_mcp_settings.json"),
        format!("{h}/.lmstudio/mcp.json"),
        format!("{h}/proj/.mcp.json"),
        format!("{h}/proj/.cursor/mcp.json"),
        format!("{h}/proj/.vscode/mcp.json"),
        format!("{h}/proj/.zed/settings.json"),
        format!("{h}/proj/.gemini/settings.json"),
        format!("{h}/proj/.continue/mcpServers"),
    ] {
        assert!(has(&w, &p), "missing {p} in {w:#?}");
    }
    assert!(
        !w.iter()
            .any(|p| p.starts_with(format!("{h}/.config/Claude")))
    );
}

#[test]
fn windows_paths_with_and_without_appdata() {
    let h = "/nonexistent-airlock/win/Users/me";
    let appdata = "/nonexistent-airlock/win/Roaming";
    let w = watched(
        h,
        Os::Windows,
        &[
            ("APPDATA", appdata),
            ("ProgramData", "/nonexistent-airlock/win/ProgramData"),
        ],
    );
    for p in [
        format!("{appdata}/Claude/claude_desktop_config.json"),
        "/nonexistent-airlock/win/ProgramData/ClaudeCode/managed-mcp.json".to_string(),
        format!("{appdata}/Code/User/mcp.json"),
        format!("{appdata}/Zed/settings.json"),
        format!("{appdata}/Block/goose/config/config.yaml"),
        format!(
            "{appdata}/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json"
        ),
        format!("{h}/.cursor/mcp.json"),
        format!("{h}/.codeium/windsurf/mcp_config.json"),
        format!("{h}/.continue/config.yaml"),
        format!("{h}/.lmstudio/mcp.json"),
    ] {
        assert!(has(&w, &p), "missing {p} in {w:#?}");
    }
    let w = watched(h, Os::Windows, &[]);
    assert!(has(
        &w,
        format!("{h}/AppData/Roaming/Claude/claude_desktop_config.json")
    ));
    assert!(has(
        &w,
        format!("{h}/AppData/Roaming/Block/goose/config/config.yaml")
    ));
    // Without ProgramData there is no managed path (never a relative "C:\..." path).
    assert!(w.iter().all(|p| p.is_absolute()), "{w:#?}");
}

#[test]
fn linux_paths_respect_overrides() {
    let h = "/nonexistent-airlock/home/me";
    let w = watched(h, Os::Linux, &[]);
    assert!(has(
        &w,
        format!("{h}/.config/Claude/claude_desktop_config.json")
    ));
    assert!(has(&w, format!("{h}/.config/Code/User/mcp.json")));
    assert!(has(&w, format!("{h}/.config/zed/settings.json")));
    assert!(has(&w, format!("{h}/.config/goose/config.yaml")));
    assert!(has(&w, format!("{h}/.claude.json")));
    assert!(has(&w, format!("{h}/.codex/config.toml")));
    assert!(has(&w, "/etc/claude-code/managed-mcp.json"));

    let w = watched(
        h,
        Os::Linux,
        &[
            ("XDG_CONFIG_HOME", "/nonexistent-airlock/xdg"),
            ("CLAUDE_CONFIG_DIR", "/nonexistent-airlock/claude"),
            ("CODEX_HOME", "/nonexistent-airlock/codex"),
        ],
    );
    assert!(has(
        &w,
        "/nonexistent-airlock/xdg/Claude/claude_desktop_config.json"
    ));
    assert!(has(&w, "/nonexistent-airlock/xdg/Code/User/mcp.json"));
    assert!(has(&w, "/nonexistent-airlock/xdg/zed/settings.json"));
    assert!(has(&w, "/nonexistent-airlock/xdg/goose/config.yaml"));
    assert!(has(&w, "/nonexistent-airlock/claude/.claude.json"));
    assert!(!has(&w, format!("{h}/.claude.json")));
    assert!(has(&w, "/nonexistent-airlock/codex/config.toml"));
    assert!(!has(&w, format!("{h}/.config/zed/settings.json")));
}
