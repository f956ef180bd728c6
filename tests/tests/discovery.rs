//! Discovery through the real agent: the twelve-client fixture home of the discovery crate
//! (`crates/discovery/tests/fixtures/home`) copied into a temp `HOME` → `airlock servers
//! --json` lists every server with its transport and sources, redacts secrets and reports
//! the malformed file; edits while `airlock up` runs show up live.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use airlock_e2e::{Agent, TestHome, repo_root};
use serde_json::{Value, json};

const FIXTURE_TOKEN: &str = "tok-123";

/// (name, transport type, command or url, [(client, path relative to HOME, name in file, scope, disabled)])
type Expect = (
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str, &'static str, &'static str, bool)],
);

const CLINE: &str =
    ".config/Code/User/globalStorage/saoudrizwan.claude-dev/settings/cline_mcp_settings.json";

const EXPECTED: &[Expect] = &[
    (
        "Continue SQLite",
        "stdio",
        "npx",
        &[(
            "continue",
            ".continue/config.yaml",
            "Continue SQLite",
            "user",
            false,
        )],
    ),
    (
        "Remote SSE",
        "sse",
        "http://localhost:9000/sse",
        &[(
            "goose",
            ".config/goose/config.yaml",
            "Remote SSE",
            "user",
            true,
        )],
    ),
    (
        "browser",
        "stdio",
        "npx",
        &[
            ("cursor", ".cursor/mcp.json", "browser", "user", false),
            (
                "continue",
                "work/demo/.continue/mcpServers/playwright.yaml",
                "Playwright",
                "project",
                false,
            ),
        ],
    ),
    (
        "cline-remote",
        "sse",
        "https://cline.example.com/sse",
        &[("cline", CLINE, "cline-remote", "user", false)],
    ),
    (
        "codex-remote",
        "streamable_http",
        "https://mcp.example.org/mcp",
        &[("codex", ".codex/config.toml", "codex-remote", "user", false)],
    ),
    (
        "context7",
        "stdio",
        "npx",
        &[("codex", ".codex/config.toml", "context7", "user", false)],
    ),
    (
        "cursor-remote",
        "streamable_http",
        "http://localhost:3001/mcp",
        &[("cursor", ".cursor/mcp.json", "cursor-remote", "user", false)],
    ),
    (
        "everything",
        "stdio",
        "npx",
        &[(
            "continue",
            "work/demo/.continue/mcpServers/everything.json",
            "everything",
            "project",
            false,
        )],
    ),
    (
        "fetch",
        "stdio",
        "uvx",
        &[
            (
                "vscode",
                ".config/Code/User/settings.json",
                "fetch",
                "user",
                false,
            ),
            ("goose", ".config/goose/config.yaml", "fetch", "user", false),
        ],
    ),
    (
        "filesystem",
        "stdio",
        "npx",
        &[
            ("claude-code", ".claude.json", "filesystem", "user", false),
            (
                "claude-desktop",
                ".config/Claude/claude_desktop_config.json",
                "fs",
                "user",
                false,
            ),
        ],
    ),
    (
        "gemini-http",
        "streamable_http",
        "http://127.0.0.1:8932/mcp",
        &[(
            "gemini",
            ".gemini/settings.json",
            "gemini-http",
            "user",
            false,
        )],
    ),
    (
        "gemini-sse",
        "sse",
        "http://127.0.0.1:8931/sse",
        &[(
            "gemini",
            ".gemini/settings.json",
            "gemini-sse",
            "user",
            false,
        )],
    ),
    (
        "git",
        "stdio",
        "uvx",
        &[(
            "vscode",
            "work/demo/.vscode/mcp.json",
            "git",
            "project",
            false,
        )],
    ),
    (
        "github",
        "streamable_http",
        "https://api.github.com/mcp",
        &[("claude-code", ".claude.json", "github", "user", false)],
    ),
    (
        "hf",
        "streamable_http",
        "https://huggingface.co/mcp",
        &[("lmstudio", ".lmstudio/mcp.json", "hf", "user", false)],
    ),
    (
        "legacy-tool",
        "stdio",
        "legacy-tool",
        &[(
            "claude-code",
            "work/demo/.mcp.json",
            "legacy-tool",
            "project",
            true,
        )],
    ),
    (
        "legacy",
        "stdio",
        "python3",
        &[(
            "windsurf",
            ".codeium/windsurf/mcp_config.json",
            "legacy",
            "user",
            true,
        )],
    ),
    (
        "memory",
        "stdio",
        "npx",
        &[(
            "claude-desktop",
            ".config/Claude/claude_desktop_config.json",
            "memory",
            "user",
            false,
        )],
    ),
    (
        "notes",
        "stdio",
        "uvx",
        &[("claude-code", ".claude.json", "notes", "project", false)],
    ),
    (
        "project-db",
        "stdio",
        "work/demo/bin/db-server",
        &[(
            "claude-code",
            "work/demo/.mcp.json",
            "project-db",
            "project",
            false,
        )],
    ),
    (
        "remote-docs",
        "streamable_http",
        "https://docs.example.com/mcp",
        &[(
            "windsurf",
            ".codeium/windsurf/mcp_config.json",
            "remote-docs",
            "user",
            false,
        )],
    ),
    (
        "search",
        "streamable_http",
        "https://search.example.com/mcp",
        &[(
            "vscode",
            "work/demo/.vscode/mcp.json",
            "search",
            "project",
            false,
        )],
    ),
    (
        "sleepy",
        "stdio",
        "sleep",
        &[("codex", ".codex/config.toml", "sleepy", "user", true)],
    ),
    (
        "sqlite",
        "stdio",
        "uvx",
        &[("zed", ".config/zed/settings.json", "sqlite", "user", false)],
    ),
    (
        "streamy",
        "streamable_http",
        "http://localhost:9001/mcp",
        &[(
            "goose",
            ".config/goose/config.yaml",
            "streamy",
            "user",
            false,
        )],
    ),
    (
        "time",
        "stdio",
        "uvx",
        &[
            (
                "vscode",
                ".config/Code/User/mcp.json",
                "time",
                "user",
                false,
            ),
            ("gemini", ".gemini/settings.json", "clock", "user", false),
        ],
    ),
    (
        "weather",
        "stdio",
        "node",
        &[("cline", CLINE, "weather", "user", true)],
    ),
    (
        "zed-remote",
        "streamable_http",
        "http://127.0.0.1:7010/mcp",
        &[(
            "zed",
            "work/demo/.zed/settings.json",
            "zed-remote",
            "project",
            false,
        )],
    ),
];

/// The discovery crate's fixture home, installed into `home` (with `@HOME@` substituted).
fn install_fixture(home: &TestHome) {
    let src = repo_root().join("crates/discovery/tests/fixtures/home");
    assert!(
        src.join(".claude.json").is_file(),
        "discovery fixture missing at {}",
        src.display()
    );
    home.copy_into_home(&src);
    let cj = home.home().join(".claude.json");
    let text = fs::read_to_string(&cj).expect("read fixture .claude.json");
    fs::write(
        &cj,
        text.replace("@HOME@", &home.home().display().to_string()),
    )
    .expect("write fixture .claude.json");
}

fn fixture_agent() -> Agent {
    let mut home = TestHome::new();
    install_fixture(&home);
    home.set_env("AIRLOCK_FIXTURE_TOKEN", FIXTURE_TOKEN);
    Agent::start(home)
}

fn rel(home: &Path, p: &str) -> String {
    home.join(p).display().to_string()
}

#[test]
fn fixture_home_lists_every_server_with_transport_sources_and_diagnostic() {
    let agent = fixture_agent();
    let home = agent.home.home();
    let raw = agent.cli(&["servers", "--json"]);
    raw.assert_success("airlock servers --json");
    let doc = raw.json();
    let servers = doc["servers"].as_array().cloned().unwrap_or_default();

    let got: BTreeSet<String> = servers
        .iter()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = EXPECTED.iter().map(|e| e.0.to_string()).collect();
    assert_eq!(
        got,
        want,
        "server names differ; missing {:?}, unexpected {:?}",
        want.difference(&got).collect::<Vec<_>>(),
        got.difference(&want).collect::<Vec<_>>()
    );

    for (name, ty, target, sources) in EXPECTED {
        let s = servers
            .iter()
            .find(|s| s["name"] == *name)
            .unwrap_or_else(|| panic!("{name} missing"));
        let t = &s["transport"];
        assert_eq!(t["type"], *ty, "{name}: {s}");
        if *ty == "stdio" {
            let want_cmd = if target.contains('/') {
                rel(&home, target)
            } else {
                target.to_string()
            };
            assert_eq!(t["command"], want_cmd.as_str(), "{name}: {s}");
            assert!(t["args"].is_array(), "{name}: {s}");
        } else {
            assert_eq!(t["url"], *target, "{name}: {s}");
        }
        let mut got_src: Vec<(String, String, String, String, bool)> = s["sources"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .map(|x| {
                (
                    x["client"].as_str().unwrap_or("?").to_string(),
                    x["path"].as_str().unwrap_or("?").to_string(),
                    x["name"].as_str().unwrap_or("?").to_string(),
                    x["scope"].as_str().unwrap_or("?").to_string(),
                    x["disabled"].as_bool().unwrap_or(false),
                )
            })
            .collect();
        let mut want_src: Vec<(String, String, String, String, bool)> = sources
            .iter()
            .map(|(c, p, n, sc, d)| {
                (
                    c.to_string(),
                    rel(&home, p),
                    n.to_string(),
                    sc.to_string(),
                    *d,
                )
            })
            .collect();
        got_src.sort();
        want_src.sort();
        assert_eq!(got_src, want_src, "{name}: sources differ: {s}");
        let id = s["id"].as_str().unwrap_or_default();
        assert!(
            id.len() == 12 && id.chars().all(|c| c.is_ascii_hexdigit()),
            "{name}: id {id:?}"
        );
        assert_eq!(s["exposed"], false, "{name}: nothing is exposed yet: {s}");
    }

    // All twelve clients are represented.
    let clients: BTreeSet<&str> = EXPECTED
        .iter()
        .flat_map(|e| e.3.iter().map(|s| s.0))
        .collect();
    assert_eq!(clients.len(), 12, "{clients:?}");

    // Secrets never leave the agent: env values and header values are redacted.
    let db = servers
        .iter()
        .find(|s| s["name"] == "project-db")
        .expect("project-db");
    assert_eq!(
        db["transport"]["env"],
        json!({"DB_URL": "<redacted>"}),
        "{db}"
    );
    assert_eq!(
        db["transport"]["cwd"],
        rel(&home, "work/demo").as_str(),
        "{db}"
    );
    let codex = servers
        .iter()
        .find(|s| s["name"] == "codex-remote")
        .expect("codex-remote");
    let auth = codex["transport"]["headers"]["Authorization"]
        .as_str()
        .unwrap_or_default();
    assert!(
        !auth.is_empty() && !auth.contains(FIXTURE_TOKEN),
        "header must be present and redacted: {codex}"
    );
    for secret in [FIXTURE_TOKEN, "postgres://localhost/dev", "Bearer g\""] {
        assert!(
            !raw.stdout.contains(secret),
            "`airlock servers --json` leaks {secret:?}"
        );
    }

    // The malformed Cursor project file is a diagnostic with its line.
    let diags = doc["diagnostics"].as_array().cloned().unwrap_or_default();
    let bad_path = rel(&home, "work/demo/.cursor/mcp.json");
    let bad = diags
        .iter()
        .find(|d| d["path"] == bad_path.as_str())
        .unwrap_or_else(|| panic!("no diagnostic for {bad_path}: {diags:?}"));
    assert_eq!(bad["client"], "cursor", "{bad}");
    assert_eq!(bad["line"], 4, "{bad}");
    assert!(bad["column"].is_u64(), "{bad}");
    assert!(
        bad["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{bad}"
    );

    // status agrees with the list.
    let st = agent.cli_json(&["status", "--json"]);
    assert_eq!(
        st["servers"]["discovered"].as_u64(),
        Some(EXPECTED.len() as u64),
        "{st}"
    );
    assert_eq!(st["diagnostics"].as_u64(), Some(diags.len() as u64), "{st}");

    // Human output mentions every server too.
    let human = agent.cli(&["servers"]);
    human.assert_success("airlock servers");
    for (name, ..) in EXPECTED {
        assert!(
            human.stdout.contains(name),
            "{name} missing from:\n{}",
            human.stdout
        );
    }
}

/// Polls `airlock servers --json` as fast as the CLI answers until `pred` holds.
fn measure(agent: &Agent, what: &str, pred: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    let bound = Duration::from_secs(15);
    loop {
        let out = agent.cli(&["servers", "--json"]);
        if out.code == Some(0) && pred(&out.json()) {
            let took = start.elapsed();
            println!("discovery latency: {what}: {took:?} (goal <= 1 s)");
            return took;
        }
        assert!(
            start.elapsed() < bound,
            "{what}: not visible after {bound:?}; last list: {}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn has(doc: &Value, name: &str) -> bool {
    doc["servers"]
        .as_array()
        .is_some_and(|a| a.iter().any(|s| s["name"] == name))
}

#[test]
fn config_edits_while_running_update_the_list() {
    let agent = fixture_agent();
    let home = agent.home.home();
    assert!(has(&agent.cli_json(&["servers", "--json"]), "memory"));

    // Add a server to the Claude Desktop config (atomic replace, like editors do).
    let cfg = home.join(".config/Claude/claude_desktop_config.json");
    let new_cfg = json!({"mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]},
        "memory": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-memory"]},
        "added-live": {"command": "/usr/bin/added-live", "args": ["--stdio"]}
    }});
    let tmp = cfg.with_extension("json.tmp");
    fs::write(&tmp, new_cfg.to_string()).expect("write temp config");
    fs::rename(&tmp, &cfg).expect("replace config");
    measure(&agent, "server added to claude_desktop_config.json", |d| {
        d["servers"].as_array().is_some_and(|a| {
            a.iter().any(|s| {
                s["name"] == "added-live"
                    && s["transport"]["command"] == "/usr/bin/added-live"
                    && s["sources"][0]["client"] == "claude-desktop"
            })
        })
    });

    // Remove one in place (truncate + write).
    let new_cfg = json!({"mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", "/srv/docs"]},
        "added-live": {"command": "/usr/bin/added-live", "args": ["--stdio"]}
    }});
    fs::write(&cfg, new_cfg.to_string()).expect("rewrite config");
    measure(
        &agent,
        "server removed from claude_desktop_config.json",
        |d| !has(d, "memory") && has(d, "added-live"),
    );

    // Fix the malformed Cursor project file: its diagnostic goes, its server appears.
    let bad = home.join("work/demo/.cursor/mcp.json");
    fs::write(
        &bad,
        r#"{"mcpServers": {"fixed-cursor": {"command": "/usr/bin/fixed-cursor"}}}"#,
    )
    .expect("fix cursor config");
    let bad_s = bad.display().to_string();
    measure(&agent, "malformed file fixed", |d| {
        has(d, "fixed-cursor")
            && !d["diagnostics"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["path"] == bad_s.as_str()))
    });

    // A whole client dir removed, then recreated with a new file, is followed too.
    let codex_dir = home.join(".codex");
    fs::remove_dir_all(&codex_dir).expect("remove ~/.codex");
    measure(&agent, "~/.codex removed", |d| {
        !has(d, "context7") && !has(d, "codex-remote")
    });
    fs::create_dir_all(&codex_dir).expect("recreate ~/.codex");
    fs::write(
        codex_dir.join("config.toml"),
        "[mcp_servers.codex-new]\ncommand = \"/usr/bin/codex-new\"\n",
    )
    .expect("write codex config");
    measure(&agent, "~/.codex/config.toml created in a new dir", |d| {
        has(d, "codex-new")
    });
}
