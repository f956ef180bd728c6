//! Per-client interpretation of parsed config documents: turns each client's entry shape into a
//! [`TransportSpec`], expanding placeholders and normalizing the launch.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::expand::Expander;
use crate::identity::{normalize_command, normalize_url};
use crate::model::{ClientKind, Diagnostic, DiscoveryEnv, Scope, TransportSpec};
use crate::paths::{Layout, lexical_normalize};

/// One server entry as found in one file.
#[derive(Debug, Clone)]
pub(crate) struct Found {
    pub client: ClientKind,
    pub path: PathBuf,
    pub name: String,
    pub scope: Scope,
    pub disabled: bool,
    pub transport: TransportSpec,
}

/// Context of the file being interpreted.
pub(crate) struct FileCtx<'a> {
    pub env: &'a DiscoveryEnv,
    pub client: ClientKind,
    pub path: &'a Path,
    pub scope: Scope,
    pub project: Option<PathBuf>,
    pub found: Vec<Found>,
    pub diagnostics: Vec<Diagnostic>,
}

impl FileCtx<'_> {
    pub(crate) fn diag(&mut self, message: String) {
        self.diagnostics.push(Diagnostic {
            client: self.client,
            path: self.path.to_path_buf(),
            line: None,
            column: None,
            message,
        });
    }

    /// Interpret a whole document according to its layout.
    pub(crate) fn interpret(&mut self, layout: Layout, doc: &Value) {
        if doc.is_null() {
            return;
        }
        let Some(root) = doc.as_object() else {
            self.diag(format!(
                "expected an object at the top level, found {}",
                kind_of(doc)
            ));
            return;
        };
        match layout {
            Layout::McpServersMap => self.server_map(root.get("mcpServers"), "mcpServers"),
            Layout::ClaudeJson => self.claude_json(root),
            Layout::VscodeMcp => self.server_map(root.get("servers"), "servers"),
            Layout::VscodeSettings => {
                let servers = root
                    .get("mcp")
                    .and_then(Value::as_object)
                    .and_then(|m| m.get("servers"));
                self.server_map(servers, "mcp.servers");
            }
            Layout::Zed => self.server_map(root.get("context_servers"), "context_servers"),
            Layout::Codex => self.server_map(root.get("mcp_servers"), "mcp_servers"),
            Layout::Goose => self.server_map(root.get("extensions"), "extensions"),
            Layout::ContinueList => self.continue_list(root.get("mcpServers")),
            // Directories are expanded into files by the scanner.
            Layout::ContinueDir | Layout::Directory => {}
        }
    }

    fn claude_json(&mut self, root: &Map<String, Value>) {
        self.server_map(root.get("mcpServers"), "mcpServers");
        let Some(projects) = root.get("projects").and_then(Value::as_object) else {
            return;
        };
        for (dir, project) in projects {
            let dir = Path::new(dir);
            if !dir.is_absolute() {
                continue;
            }
            let Some(servers) = project.get("mcpServers") else {
                continue;
            };
            let saved_scope = self.scope;
            let saved_project = self.project.replace(dir.to_path_buf());
            self.scope = Scope::Project;
            self.server_map(Some(servers), "projects[…].mcpServers");
            self.scope = saved_scope;
            self.project = saved_project;
        }
    }

    fn server_map(&mut self, servers: Option<&Value>, key: &str) {
        let Some(servers) = servers else { return };
        if servers.is_null() {
            return;
        }
        let Some(map) = servers.as_object() else {
            self.diag(format!(
                "`{key}` should be an object of servers, found {}",
                kind_of(servers)
            ));
            return;
        };
        for (name, entry) in map {
            self.entry(name, entry);
        }
    }

    fn continue_list(&mut self, servers: Option<&Value>) {
        let Some(servers) = servers else { return };
        match servers {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let name = item
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("mcpServers[{i}]"));
                    self.entry(&name, item);
                }
            }
            // Continue block files sometimes use the Claude-style map.
            Value::Object(_) => self.server_map(Some(servers), "mcpServers"),
            other => self.diag(format!(
                "`mcpServers` should be a list of servers, found {}",
                kind_of(other)
            )),
        }
    }

    fn entry(&mut self, key: &str, entry: &Value) {
        let Some(obj) = entry.as_object() else {
            self.diag(format!(
                "server `{key}` should be an object, found {}",
                kind_of(entry)
            ));
            return;
        };
        // Goose carries a display name next to its key.
        let name = match self.client {
            ClientKind::Goose => obj
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
                .unwrap_or(key),
            _ => key,
        }
        .to_string();
        let disabled = obj.get("disabled").and_then(Value::as_bool) == Some(true)
            || obj.get("enabled").and_then(Value::as_bool) == Some(false);
        match self.transport(obj) {
            Ok(Some((transport, notes))) => {
                for n in notes {
                    let message = n.message(&name);
                    self.diag(message);
                }
                self.found.push(Found {
                    client: self.client,
                    path: self.path.to_path_buf(),
                    name,
                    scope: self.scope,
                    disabled,
                    transport,
                });
            }
            Ok(None) => {}
            Err(msg) => self.diag(format!("server `{key}`: {msg}")),
        }
    }

    /// `Ok(None)` = an entry that is not an external MCP server (Goose builtin, Zed extension).
    #[allow(clippy::type_complexity)]
    fn transport(
        &self,
        obj: &Map<String, Value>,
    ) -> Result<Option<(TransportSpec, Vec<crate::expand::Note>)>, String> {
        let ty = ["type", "transport", "transportType"]
            .iter()
            .find_map(|k| obj.get(*k).and_then(Value::as_str))
            .map(str::to_ascii_lowercase);

        // Zed's older shape: "command": {"path", "args", "env"}.
        let (command, args_v, env_v) = match obj.get("command").or_else(|| obj.get("cmd")) {
            Some(Value::Object(c)) => (
                c.get("path").cloned(),
                c.get("args").cloned(),
                c.get("env").cloned(),
            ),
            other => (
                other.cloned(),
                obj.get("args").cloned(),
                obj.get("env").or_else(|| obj.get("envs")).cloned(),
            ),
        };
        let command = match command {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            // OpenCode-style ["cmd", "arg", ...]
            Some(Value::Array(parts)) => {
                let parts = strings(&Value::Array(parts), "command")?;
                return self.stdio_from(parts, env_v.as_ref(), obj).map(Some);
            }
            Some(other) => {
                return Err(format!(
                    "`command` must be a string, found {}",
                    kind_of(&other)
                ));
            }
        };

        let url_keys: &[&str] = &["httpUrl", "serverUrl", "url", "uri"];
        let url = url_keys.iter().find_map(|k| {
            obj.get(*k)
                .and_then(Value::as_str)
                .map(|u| (*k, u.to_string()))
        });

        enum Kind {
            Stdio,
            Http,
            Sse,
        }
        let kind = match ty.as_deref() {
            Some("stdio" | "local") => Kind::Stdio,
            Some(
                "http" | "streamable-http" | "streamable_http" | "streamablehttp" | "streamable"
                | "remote",
            ) => Kind::Http,
            Some("sse") => Kind::Sse,
            Some("builtin" | "platform" | "frontend" | "inline_python") => return Ok(None),
            _ => {
                if command.is_some() {
                    Kind::Stdio
                } else if let Some((key, _)) = &url {
                    match (self.client, *key) {
                        (ClientKind::Gemini, "url") | (ClientKind::Cline, _) => Kind::Sse,
                        _ => Kind::Http,
                    }
                } else if self.client == ClientKind::Continue && obj.contains_key("uses") {
                    // A Continue Hub block reference (`uses: owner/block`): resolved online by
                    // Continue, nothing local to launch.
                    return Ok(None);
                } else if self.client == ClientKind::Zed {
                    // Extension-provided context server: nothing to launch from the config.
                    return Ok(None);
                } else if let Some(t) = ty {
                    return Err(format!("unknown transport type `{t}`"));
                } else {
                    return Err("has neither `command` nor `url`".to_string());
                }
            }
        };
        match kind {
            Kind::Stdio => {
                let Some(command) = command.filter(|c| !c.trim().is_empty()) else {
                    return Err("stdio server without a `command`".to_string());
                };
                let mut parts = vec![command];
                if let Some(a) = &args_v {
                    parts.extend(strings(a, "args")?);
                }
                self.stdio_from(parts, env_v.as_ref(), obj).map(Some)
            }
            Kind::Http | Kind::Sse => {
                let Some((_, url)) = url else {
                    return Err("remote server without a `url`".to_string());
                };
                self.http_from(url, matches!(kind, Kind::Sse), obj)
                    .map(Some)
            }
        }
    }

    fn expander(&self) -> Expander<'_> {
        Expander {
            vars: &self.env.vars,
            home: &self.env.home,
            workspace: self.project.as_deref(),
            notes: Vec::new(),
        }
    }

    fn stdio_from(
        &self,
        parts: Vec<String>,
        env_v: Option<&Value>,
        obj: &Map<String, Value>,
    ) -> Result<(TransportSpec, Vec<crate::expand::Note>), String> {
        let mut ex = self.expander();
        let mut parts = parts.into_iter();
        let Some(command) = parts.next() else {
            return Err("empty `command`".to_string());
        };
        let command = ex.expand(command.trim());
        let args: Vec<String> = parts.map(|a| ex.expand(&a)).collect();
        let mut env = BTreeMap::new();
        if let Some(e) = env_v {
            for (k, v) in string_map(e, "env")? {
                env.insert(k, ex.expand(&v));
            }
        }
        let base = self.project.as_deref().unwrap_or(&self.env.home);
        let cwd = match obj.get("cwd") {
            Some(Value::String(c)) if !c.trim().is_empty() => {
                let c = ex.expand(c.trim());
                Some(resolve_path(&c, base, &self.env.home))
            }
            Some(Value::String(_)) | Some(Value::Null) | None => None,
            Some(other) => return Err(format!("`cwd` must be a string, found {}", kind_of(other))),
        };
        // Claude Code runs project-scoped servers in the project dir.
        let cwd = cwd.or_else(
            || match (self.client, self.scope, self.project.as_deref()) {
                (ClientKind::ClaudeCode, Scope::Project, Some(p)) => Some(lexical_normalize(p)),
                _ => None,
            },
        );
        let command = normalize_command(&command, cwd.as_deref().unwrap_or(base), &self.env.home);
        Ok((
            TransportSpec::Stdio {
                command,
                args,
                env,
                cwd,
            },
            ex.notes,
        ))
    }

    fn http_from(
        &self,
        url: String,
        sse: bool,
        obj: &Map<String, Value>,
    ) -> Result<(TransportSpec, Vec<crate::expand::Note>), String> {
        let mut ex = self.expander();
        let url = normalize_url(&ex.expand(url.trim()));
        let mut headers = BTreeMap::new();
        let header_v = obj
            .get("headers")
            .or_else(|| obj.get("http_headers"))
            .or_else(|| obj.get("requestOptions").and_then(|r| r.get("headers")));
        if let Some(h) = header_v {
            for (k, v) in string_map(h, "headers")? {
                headers.insert(k, ex.expand(&v));
            }
        }
        // Codex: headers taken from environment variables.
        if let Some(var) = obj.get("bearer_token_env_var").and_then(Value::as_str) {
            headers.insert(
                "Authorization".to_string(),
                ex.expand(&format!("Bearer ${{{var}}}")),
            );
        }
        if let Some(h) = obj.get("env_http_headers") {
            for (k, var) in string_map(h, "env_http_headers")? {
                headers.insert(k, ex.expand(&format!("${{{var}}}")));
            }
        }
        let t = if sse {
            TransportSpec::Sse { url, headers }
        } else {
            TransportSpec::StreamableHttp { url, headers }
        };
        Ok((t, ex.notes))
    }
}

/// Resolve a possibly relative path (with `~/`) against `base`.
pub(crate) fn resolve_path(p: &str, base: &Path, home: &Path) -> PathBuf {
    let path = if p == "~" {
        home.to_path_buf()
    } else if let Some(rest) = p.strip_prefix("~/") {
        home.join(rest)
    } else {
        let pb = PathBuf::from(p);
        if pb.is_absolute() { pb } else { base.join(pb) }
    };
    lexical_normalize(&path)
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(items) => items
            .iter()
            .map(|i| {
                scalar_string(i).ok_or_else(|| {
                    format!(
                        "`{key}` must be a list of strings, found {} in it",
                        kind_of(i)
                    )
                })
            })
            .collect(),
        other => Err(format!(
            "`{key}` must be a list of strings, found {}",
            kind_of(other)
        )),
    }
}

fn string_map(v: &Value, key: &str) -> Result<Vec<(String, String)>, String> {
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                scalar_string(v)
                    .map(|s| (k.clone(), s))
                    .ok_or_else(|| format!("`{key}.{k}` must be a string, found {}", kind_of(v)))
            })
            .collect(),
        other => Err(format!(
            "`{key}` must be an object of strings, found {}",
            kind_of(other)
        )),
    }
}
