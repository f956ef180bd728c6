//! The twelve-client fixture home must yield exactly the documented servers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use airlock_discovery::{ClientKind, DiscoveryEnv, Os, Scope, Snapshot, scan};
use serde_json::{Value, json};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn env_for(home: &Path) -> DiscoveryEnv {
    DiscoveryEnv {
        home: home.to_path_buf(),
        os: Os::Linux,
        vars: BTreeMap::from([("AIRLOCK_FIXTURE_TOKEN".to_string(), "tok-123".to_string())]),
        project_dirs: vec![],
    }
}

fn fixture_scan() -> Result<(tempfile::TempDir, PathBuf, Snapshot), Box<dyn std::error::Error>> {
    let tmp = tempfile::tempdir()?;
    // Canonical path so expectations built from it match what the scanner reports.
    let home = tmp.path().canonicalize()?.join("home");
    common::install_fixture(&home)?;
    let snap = scan(&env_for(&home));
    Ok((tmp, home, snap))
}

/// (client, path relative to home, name in that file, scope, disabled)
/// (name, transport JSON, sources)
type Row = (
    String,
    Value,
    Vec<(ClientKind, PathBuf, String, Scope, bool)>,
);

type Src<'a> = (ClientKind, &'a str, &'a str, Scope, bool);

fn stdio(command: &str, args: &[&str], env: Value, cwd: Option<&Path>) -> Value {
    json!({"type": "stdio", "command": command, "args": args, "env": env,
           "cwd": cwd.map(|c| c.display().to_string())})
}
fn http(url: &str, headers: Value) -> Value {
    json!({"type": "streamable_http", "url": url, "headers": headers})
}
fn sse(url: &str, headers: Value) -> Value {
    json!({"type": "sse", "url": url, "headers": headers})
}

#[test]
fn fixture_home_yields_exactly_the_expected_servers() -> TestResult {
    use ClientKind as K;
    use Scope::{Project as P, User as U};
    let (_tmp, home, snap) = fixture_scan()?;
    let demo = home.join("work").join("demo");
    let demo_s = demo.display().to_string();
    let e = json!({});
    let cl = ".claude.json";
    let expected: Vec<(&str, Value, Vec<Src>)> = vec![
        (
            "Continue SQLite",
            stdio(
                "npx",
                &["-y", "mcp-sqlite", "/tmp/continue.db"],
                e.clone(),
                None,
            ),
            vec![(
                K::Continue,
                ".continue/config.yaml",
                "Continue SQLite",
                U,
                false,
            )],
        ),
        (
            "Remote SSE",
            sse("http://localhost:9000/sse", e.clone()),
            vec![(K::Goose, ".config/goose/config.yaml", "Remote SSE", U, true)],
        ),
        (
            "browser",
            stdio("npx", &["-y", "@playwright/mcp@latest"], e.clone(), None),
            vec![
                (K::Cursor, ".cursor/mcp.json", "browser", U, false),
                (
                    K::Continue,
                    "work/demo/.continue/mcpServers/playwright.yaml",
                    "Playwright",
                    P,
                    false,
                ),
            ],
        ),
        (
            "cline-remote",
            sse("https://cline.example.com/sse", e.clone()),
            vec![(
                K::Cline,
                ".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
                "cline-remote",
                U,
                false,
            )],
        ),
        (
            "codex-remote",
            http(
                "https://mcp.example.org/mcp",
                json!({"Authorization": "Bearer tok-123"}),
            ),
            vec![(K::Codex, ".codex/config.toml", "codex-remote", U, false)],
        ),
        (
            "context7",
            stdio("npx", &["-y", "@upstash/context7-mcp"], e.clone(), None),
            vec![(K::Codex, ".codex/config.toml", "context7", U, false)],
        ),
        (
            "cursor-remote",
            http("http://localhost:3001/mcp", json!({"X-Api-Key": "tok-123"})),
            vec![(K::Cursor, ".cursor/mcp.json", "cursor-remote", U, false)],
        ),
        (
            "everything",
            stdio(
                "npx",
                &["-y", "@modelcontextprotocol/server-everything"],
                e.clone(),
                None,
            ),
            vec![(
                K::Continue,
                "work/demo/.continue/mcpServers/everything.json",
                "everything",
                P,
                false,
            )],
        ),
        (
            "fetch",
            stdio("uvx", &["mcp-server-fetch"], e.clone(), None),
            vec![
                (
                    K::Vscode,
                    ".config/Code/User/settings.json",
                    "fetch",
                    U,
                    false,
                ),
                (K::Goose, ".config/goose/config.yaml", "fetch", U, false),
            ],
        ),
        (
            "filesystem",
            stdio(
                "npx",
                &["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"],
                e.clone(),
                None,
            ),
            vec![
                (K::ClaudeCode, cl, "filesystem", U, false),
                (
                    K::ClaudeDesktop,
                    ".config/Claude/claude_desktop_config.json",
                    "fs",
                    U,
                    false,
                ),
            ],
        ),
        (
            "gemini-http",
            http(
                "http://127.0.0.1:8932/mcp",
                json!({"Authorization": "Bearer g"}),
            ),
            vec![(K::Gemini, ".gemini/settings.json", "gemini-http", U, false)],
        ),
        (
            "gemini-sse",
            sse("http://127.0.0.1:8931/sse", e.clone()),
            vec![(K::Gemini, ".gemini/settings.json", "gemini-sse", U, false)],
        ),
        (
            "git",
            stdio(
                "uvx",
                &["mcp-server-git", "--repository", &demo_s],
                e.clone(),
                None,
            ),
            vec![(K::Vscode, "work/demo/.vscode/mcp.json", "git", P, false)],
        ),
        (
            "github",
            http(
                "https://api.github.com/mcp",
                json!({"Authorization": "Bearer tok-123"}),
            ),
            vec![(K::ClaudeCode, cl, "github", U, false)],
        ),
        (
            "hf",
            http(
                "https://huggingface.co/mcp",
                json!({"Authorization": "Bearer anonymous"}),
            ),
            vec![(K::Lmstudio, ".lmstudio/mcp.json", "hf", U, false)],
        ),
        (
            "legacy-tool",
            stdio("legacy-tool", &["--stdio"], e.clone(), Some(&demo)),
            vec![(K::ClaudeCode, "work/demo/.mcp.json", "legacy-tool", P, true)],
        ),
        (
            "legacy",
            stdio("python3", &["-m", "legacy_server"], e.clone(), None),
            vec![(
                K::Windsurf,
                ".codeium/windsurf/mcp_config.json",
                "legacy",
                U,
                true,
            )],
        ),
        (
            "memory",
            stdio(
                "npx",
                &["-y", "@modelcontextprotocol/server-memory"],
                e.clone(),
                None,
            ),
            vec![(
                K::ClaudeDesktop,
                ".config/Claude/claude_desktop_config.json",
                "memory",
                U,
                false,
            )],
        ),
        (
            "notes",
            stdio("uvx", &["notes-mcp"], e.clone(), Some(&demo)),
            vec![(K::ClaudeCode, cl, "notes", P, false)],
        ),
        (
            "project-db",
            stdio(
                &demo.join("bin/db-server").display().to_string(),
                &["--readonly"],
                json!({"DB_URL": "postgres://localhost/dev"}),
                Some(&demo),
            ),
            vec![(K::ClaudeCode, "work/demo/.mcp.json", "project-db", P, false)],
        ),
        (
            "remote-docs",
            http("https://docs.example.com/mcp", e.clone()),
            vec![(
                K::Windsurf,
                ".codeium/windsurf/mcp_config.json",
                "remote-docs",
                U,
                false,
            )],
        ),
        (
            "search",
            http(
                "https://search.example.com/mcp",
                json!({"X-Key": "${input:search-key}"}),
            ),
            vec![(K::Vscode, "work/demo/.vscode/mcp.json", "search", P, false)],
        ),
        (
            "sleepy",
            stdio("sleep", &["1"], e.clone(), None),
            vec![(K::Codex, ".codex/config.toml", "sleepy", U, true)],
        ),
        (
            "sqlite",
            stdio(
                "uvx",
                &["mcp-server-sqlite", "--db-path", "/tmp/fixture.db"],
                e.clone(),
                None,
            ),
            vec![(K::Zed, ".config/zed/settings.json", "sqlite", U, false)],
        ),
        (
            "streamy",
            http("http://localhost:9001/mcp", json!({"X-Token": "tok-123"})),
            vec![(K::Goose, ".config/goose/config.yaml", "streamy", U, false)],
        ),
        (
            "time",
            stdio("uvx", &["mcp-server-time"], e.clone(), None),
            vec![
                (K::Vscode, ".config/Code/User/mcp.json", "time", U, false),
                (K::Gemini, ".gemini/settings.json", "clock", U, false),
            ],
        ),
        (
            "weather",
            stdio("node", &["/opt/weather/build/index.js"], e.clone(), None),
            vec![(
                K::Cline,
                ".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json",
                "weather",
                U,
                true,
            )],
        ),
        (
            "zed-remote",
            http("http://127.0.0.1:7010/mcp", e.clone()),
            vec![(
                K::Zed,
                "work/demo/.zed/settings.json",
                "zed-remote",
                P,
                false,
            )],
        ),
    ];

    let actual: Vec<Row> = snap
        .servers
        .iter()
        .map(|s| {
            let t = serde_json::to_value(&s.transport).unwrap_or(Value::Null);
            let srcs = s
                .sources
                .iter()
                .map(|x| {
                    (
                        x.client,
                        x.path.clone(),
                        x.name.clone(),
                        x.scope,
                        x.disabled,
                    )
                })
                .collect();
            (s.name.clone(), t, srcs)
        })
        .collect();
    let expected: Vec<Row> = expected
        .into_iter()
        .map(|(n, t, srcs)| {
            let srcs = srcs
                .into_iter()
                .map(|(c, p, name, sc, d)| (c, home.join(p), name.to_string(), sc, d))
                .collect();
            (n.to_string(), t, srcs)
        })
        .collect();
    let mut expected = expected;
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    // Servers come sorted by name (names are unique in the fixture).
    let actual_names: Vec<&String> = actual.iter().map(|a| &a.0).collect();
    let mut sorted = actual_names.clone();
    sorted.sort();
    assert_eq!(actual_names, sorted);
    for (a, e) in actual.iter().zip(expected.iter()) {
        assert_eq!(a, e, "server `{}` differs", e.0);
    }
    assert_eq!(
        actual.len(),
        expected.len(),
        "server count; got {:#?}",
        actual.iter().map(|a| &a.0).collect::<Vec<_>>()
    );

    // All twelve clients are represented.
    let mut clients: Vec<ClientKind> = snap
        .servers
        .iter()
        .flat_map(|s| s.sources.iter().map(|x| x.client))
        .collect();
    clients.sort_by_key(|c| c.priority());
    clients.dedup();
    assert_eq!(clients.len(), 12, "{clients:?}");

    // Ids: 12 lowercase hex, unique.
    let mut ids: Vec<&str> = snap.servers.iter().map(|s| s.id.as_str()).collect();
    assert!(ids.iter().all(|i| {
        i.len() == 12
            && i.chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
    }));
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), snap.servers.len());
    Ok(())
}

#[test]
fn fixture_diagnostics_are_the_malformed_file_and_the_input_note() -> TestResult {
    let (_tmp, home, snap) = fixture_scan()?;
    let d = &snap.diagnostics;
    assert_eq!(d.len(), 2, "{d:#?}");
    let bad = &d[0];
    assert_eq!(bad.client, ClientKind::Cursor);
    assert_eq!(bad.path, home.join("work/demo/.cursor/mcp.json"));
    assert_eq!(bad.line, Some(4), "{bad:?}");
    assert!(bad.column.is_some());
    assert!(bad.message.contains("JSON"), "{}", bad.message);
    let note = &d[1];
    assert_eq!(note.client, ClientKind::Vscode);
    assert_eq!(note.path, home.join("work/demo/.vscode/mcp.json"));
    assert_eq!(note.line, None);
    assert!(
        note.message.contains("input:search-key"),
        "{}",
        note.message
    );
    Ok(())
}

#[test]
fn scan_is_deterministic_and_ids_are_stable_across_homes() -> TestResult {
    let (_t1, _h1, a) = fixture_scan()?;
    let (_t2, _h2, b) = fixture_scan()?;
    // Servers whose identity does not involve the home path get the same id in both homes.
    let ids = |s: &Snapshot, name: &str| {
        s.servers
            .iter()
            .find(|x| x.name == name)
            .map(|x| x.id.clone())
    };
    for name in ["filesystem", "github", "time", "hf", "gemini-sse"] {
        assert!(ids(&a, name).is_some(), "{name} missing");
        assert_eq!(ids(&a, name), ids(&b, name), "{name}");
    }
    // A project-scoped server's cwd is the (different) project dir, so its id differs.
    assert_ne!(ids(&a, "notes"), ids(&b, "notes"));
    let (_t3, h3, c) = {
        let (t, h, _) = fixture_scan()?;
        let s = scan(&env_for(&h));
        (t, h, s)
    };
    assert_eq!(scan(&env_for(&h3)), c);
    Ok(())
}

#[test]
fn renaming_in_one_client_keeps_the_name_and_id() -> TestResult {
    let (_tmp, home, before) = fixture_scan()?;
    let desktop = home.join(".config/Claude/claude_desktop_config.json");
    let text = std::fs::read_to_string(&desktop)?.replace("\"fs\"", "\"files-renamed\"");
    std::fs::write(&desktop, text)?;
    let after = scan(&env_for(&home));
    let find = |s: &Snapshot| {
        s.servers
            .iter()
            .find(|x| {
                x.sources
                    .iter()
                    .any(|src| src.client == ClientKind::ClaudeDesktop && src.name != "memory")
            })
            .map(|x| (x.id.clone(), x.name.clone(), x.sources.len()))
    };
    let b = find(&before).ok_or("filesystem server missing before")?;
    let a = find(&after).ok_or("filesystem server missing after")?;
    assert_eq!(a, b);
    assert_eq!(a.1, "filesystem");
    assert_eq!(after.servers.len(), before.servers.len());
    Ok(())
}

#[test]
fn redacted_transport_hides_secrets() -> TestResult {
    let (_tmp, _home, snap) = fixture_scan()?;
    let gh = snap
        .servers
        .iter()
        .find(|s| s.name == "github")
        .ok_or("github missing")?;
    let shown = serde_json::to_string(&gh.transport.redacted())?;
    assert!(!shown.contains("tok-123"), "{shown}");
    assert!(shown.contains("Authorization"));
    let raw = serde_json::to_string(&gh.transport)?;
    assert!(raw.contains("tok-123"));
    Ok(())
}

#[test]
fn explicit_project_dirs_are_scanned() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().canonicalize()?;
    let proj = home.join("elsewhere");
    std::fs::create_dir_all(proj.join(".gemini"))?;
    std::fs::write(
        proj.join(".gemini/settings.json"),
        r#"{"mcpServers": {"p": {"command": "./run.sh", "cwd": "sub"}}}"#,
    )?;
    let mut env = env_for(&home);
    let none = scan(&env);
    assert!(
        none.servers.is_empty() && none.diagnostics.is_empty(),
        "{none:?}"
    );
    env.project_dirs = vec![proj.clone()];
    let snap = scan(&env);
    assert_eq!(snap.servers.len(), 1);
    let t = serde_json::to_value(&snap.servers[0].transport)?;
    assert_eq!(t["command"], proj.join("sub/run.sh").display().to_string());
    assert_eq!(t["cwd"], proj.join("sub").display().to_string());
    assert_eq!(snap.servers[0].sources[0].scope, Scope::Project);
    Ok(())
}

#[test]
fn vscode_profiles_are_scanned() -> TestResult {
    let tmp = tempfile::tempdir()?;
    let home = tmp.path().canonicalize()?;
    let profile = home.join(".config/Code/User/profiles/-5a1b2c3d");
    std::fs::create_dir_all(&profile)?;
    std::fs::write(
        profile.join("mcp.json"),
        r#"{"servers": {"prof": {"type": "sse", "url": "http://127.0.0.1:9/sse"}}}"#,
    )?;
    let snap = scan(&env_for(&home));
    assert_eq!(snap.servers.len(), 1, "{snap:?}");
    assert_eq!(snap.servers[0].name, "prof");
    assert_eq!(snap.servers[0].sources[0].path, profile.join("mcp.json"));
    assert!(
        snap.watched_paths
            .contains(&home.join(".config/Code/User/profiles"))
    );
    Ok(())
}
