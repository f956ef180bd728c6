//! One synchronous pass over every candidate config file.

use std::collections::HashSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::clients::{FileCtx, Found};
use crate::identity::merge;
use crate::model::Scope;
use crate::model::{ClientKind, Diagnostic, DiscoveryEnv, Snapshot};
use crate::parse::{Format, ParseError, parse};
use crate::paths::{
    Candidate, Layout, claude_json, lexical_normalize, project_candidates, user_candidates,
    vscode_user_dirs,
};

/// Largest config file we read (Claude Code's `~/.claude.json` can grow to a few MB).
const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;

fn format_of(layout: Layout) -> Format {
    match layout {
        Layout::Codex => Format::Toml,
        Layout::Goose | Layout::ContinueList => Format::Yaml,
        _ => Format::Json,
    }
}

enum Read {
    Missing,
    Failed(String),
    Text(String),
}

fn read(path: &Path) -> Read {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Read::Missing,
        Err(e) => return Read::Failed(format!("cannot read file: {e}")),
        Ok(m) if m.is_dir() => return Read::Failed("expected a file, found a directory".into()),
        Ok(m) if m.len() > MAX_FILE_BYTES => {
            return Read::Failed(format!(
                "file is larger than {MAX_FILE_BYTES} bytes; skipped"
            ));
        }
        Ok(_) => {}
    }
    match std::fs::read(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Read::Missing,
        Err(e) => Read::Failed(format!("cannot read file: {e}")),
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(s) => Read::Text(s),
            Err(_) => Read::Failed("file is not valid UTF-8".into()),
        },
    }
}

struct Scanner<'a> {
    env: &'a DiscoveryEnv,
    found: Vec<Found>,
    diagnostics: Vec<Diagnostic>,
}

impl Scanner<'_> {
    fn diag(&mut self, client: ClientKind, path: &Path, e: ParseError) {
        self.diagnostics.push(Diagnostic {
            client,
            path: path.to_path_buf(),
            line: e.line,
            column: e.column,
            message: e.message,
        });
    }

    fn load(&mut self, client: ClientKind, path: &Path, format: Format) -> Option<Value> {
        match read(path) {
            Read::Missing => None,
            Read::Failed(message) => {
                self.diag(
                    client,
                    path,
                    ParseError {
                        line: None,
                        column: None,
                        message,
                    },
                );
                None
            }
            Read::Text(text) => match parse(format, &text) {
                Ok(v) => Some(v),
                Err(e) => {
                    self.diag(client, path, e);
                    None
                }
            },
        }
    }

    fn interpret(&mut self, c: &Candidate, path: &Path, layout: Layout, doc: &Value) {
        let mut ctx = FileCtx {
            env: self.env,
            client: c.client,
            path,
            scope: c.scope,
            project: c.project.clone(),
            found: Vec::new(),
            diagnostics: Vec::new(),
        };
        ctx.interpret(layout, doc);
        self.found.append(&mut ctx.found);
        self.diagnostics.append(&mut ctx.diagnostics);
    }

    fn candidate(&mut self, c: &Candidate) {
        if c.layout == Layout::Directory {
            return;
        }
        if c.layout == Layout::ContinueDir {
            let entries = match std::fs::read_dir(&c.path) {
                Ok(rd) => rd,
                Err(e) if e.kind() == ErrorKind::NotFound => return,
                Err(e) if e.kind() == ErrorKind::NotADirectory => return,
                Err(e) => {
                    self.diag(
                        c.client,
                        &c.path,
                        ParseError {
                            line: None,
                            column: None,
                            message: format!("cannot list directory: {e}"),
                        },
                    );
                    return;
                }
            };
            let mut files: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect();
            files.sort();
            for f in files {
                let ext = f
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase())
                    .unwrap_or_default();
                let (format, layout) = match ext.as_str() {
                    "yaml" | "yml" => (Format::Yaml, Layout::ContinueList),
                    "json" => (Format::Json, Layout::McpServersMap),
                    _ => continue,
                };
                if let Some(doc) = self.load(c.client, &f, format) {
                    self.interpret(c, &f, layout, &doc);
                }
            }
            return;
        }
        if let Some(doc) = self.load(c.client, &c.path, format_of(c.layout)) {
            self.interpret(c, &c.path, c.layout, &doc);
        }
    }
}

/// The project dirs to scan: the explicit ones plus those Claude Code lists in `~/.claude.json`.
fn project_dirs(env: &DiscoveryEnv, claude: Option<&Value>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    let mut seen = HashSet::new();
    let explicit = env.project_dirs.iter().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            env.home.join(p)
        }
    });
    let listed = claude
        .and_then(|v| v.get("projects"))
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|m| m.keys())
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    for p in explicit.chain(listed) {
        let p = lexical_normalize(&p);
        if seen.insert(p.clone()) {
            out.push(p);
        }
    }
    out
}

/// Scan every known client config on this machine. Synchronous, read-only, never executes
/// anything; unreadable or malformed files become [`Diagnostic`]s.
pub fn scan(env: &DiscoveryEnv) -> Snapshot {
    let mut scanner = Scanner {
        env,
        found: Vec::new(),
        diagnostics: Vec::new(),
    };
    let claude_path = claude_json(env);
    let claude_doc = scanner.load(ClientKind::ClaudeCode, &claude_path, Format::Json);

    let mut candidates = user_candidates(env);
    for dir in project_dirs(env, claude_doc.as_ref()) {
        candidates.extend(project_candidates(&dir));
    }
    candidates.extend(vscode_profile_candidates(env));
    let mut seen = HashSet::new();
    candidates.retain(|c| seen.insert((c.client, c.path.clone())));

    for c in &candidates {
        if c.layout == Layout::ClaudeJson && c.path == claude_path {
            if let Some(doc) = &claude_doc {
                scanner.interpret(c, &c.path, c.layout, doc);
            }
            continue;
        }
        scanner.candidate(c);
    }

    if let Some(doc) = &claude_doc {
        apply_claude_approvals(doc, &mut scanner.found);
    }

    let mut watched_paths = Vec::new();
    let mut seen_paths = HashSet::new();
    for c in &candidates {
        if seen_paths.insert(c.path.clone()) {
            watched_paths.push(c.path.clone());
        }
    }
    let mut diagnostics = scanner.diagnostics;
    diagnostics.sort_by(|a, b| {
        (a.client.priority(), &a.path, a.line, a.column, &a.message).cmp(&(
            b.client.priority(),
            &b.path,
            b.line,
            b.column,
            &b.message,
        ))
    });
    diagnostics.dedup();
    Snapshot {
        servers: merge(scanner.found),
        diagnostics,
        watched_paths,
    }
}

/// Claude Code records per-project decisions about `.mcp.json` servers in `~/.claude.json`
/// (`projects[dir].disabledMcpjsonServers`, and `disabledMcpServers` for servers toggled off
/// with `/mcp`). Mark those sources disabled.
fn apply_claude_approvals(claude: &Value, found: &mut [Found]) {
    let Some(projects) = claude.get("projects").and_then(Value::as_object) else {
        return;
    };
    let names = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    };
    for (dir, p) in projects {
        let dir = lexical_normalize(Path::new(dir));
        let mcp_json = dir.join(".mcp.json");
        let mut off = names(p.get("disabledMcpjsonServers"));
        off.extend(names(p.get("disabledMcpServers")));
        if off.is_empty() {
            continue;
        }
        for f in found.iter_mut() {
            if f.client == ClientKind::ClaudeCode && f.path == mcp_json && off.contains(&f.name) {
                f.disabled = true;
            }
        }
    }
}

/// VS Code keeps non-default profiles' `mcp.json` in `User/profiles/<id>/`. The `profiles`
/// directory itself is also returned (as a directory candidate with no layout of its own) so
/// the watcher notices new profiles.
fn vscode_profile_candidates(env: &DiscoveryEnv) -> Vec<Candidate> {
    let mut out = Vec::new();
    for user in vscode_user_dirs(env) {
        let profiles = user.join("profiles");
        out.push(Candidate {
            client: ClientKind::Vscode,
            path: profiles.clone(),
            scope: Scope::User,
            layout: Layout::Directory,
            project: None,
        });
        let Ok(rd) = std::fs::read_dir(&profiles) else {
            continue;
        };
        let mut dirs: Vec<PathBuf> = rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            out.push(Candidate {
                client: ClientKind::Vscode,
                path: d.join("mcp.json"),
                scope: Scope::User,
                layout: Layout::VscodeMcp,
                project: None,
            });
        }
    }
    out
}
