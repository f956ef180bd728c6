//! `config.toml`: the user's intent (which servers are exposed, under which hostname, gateway port, discovery knobs).
//!
//! The file is human-editable. Airlock edits it through `toml_edit` so comments and ordering survive, and every write
//! is atomic (temp file in the same directory, fsync, rename). A file that does not parse is reported with its path and
//! line and is never overwritten: the agent refuses to start rather than lose what the user wrote.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::AgentError;

const HEADER: &str = "\
# Airlock configuration.
# Written by `airlock expose` / `airlock unexpose` and the UI; safe to edit by hand (comments are kept).
# A server is keyed by its id: a hash of its command, arguments and working directory (or its URL),
# so renaming it in an MCP client does not change it, and changing what it runs un-exposes it.
";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewayConfig,
    #[serde(default)]
    pub discovery: DiscoveryConfig,
    /// Keyed by server id.
    #[serde(default)]
    pub servers: BTreeMap<String, ServerConfig>,
    #[serde(default)]
    pub keystore: KeystoreConfig,
    /// The Anthropic-compatible tunnel ingress (a drop-in for `mcp-proxy`); absent = not running.
    pub anthropic: Option<AnthropicConfig>,
    /// Airlock relay nodes (`airlock relay`), and the embedded relay used when nothing else is configured.
    #[serde(default)]
    pub relay: RelaySection,
    /// The local sandbox worker for Claude Managed Agents (`airlock sandbox …`).
    #[serde(default)]
    pub sandbox: crate::sandbox::SandboxSection,
    /// The OAuth authorization server's options.
    #[serde(default, skip_serializing_if = "OAuthSection::is_default")]
    pub oauth: OAuthSection,
}

/// `[oauth]`: options of the authorization server every exposed server is behind (read at start).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthSection {
    /// Serve the approval page on each server's relay hostname too, for a browser on another machine: the metadata
    /// served through the relay then names that page. It shows a short code and cannot approve; approving in the
    /// app or with `airlock approve <id> --code XXXX-XXXX` needs that code. Default false: the page is on loopback
    /// only. The Anthropic tunnel always names the loopback page (no browser reaches its hostnames).
    #[serde(default)]
    pub remote_approval: bool,
}

impl OAuthSection {
    pub fn is_default(&self) -> bool {
        self == &OAuthSection::default()
    }
}

/// `[relay]`: the self-hostable relay the agent connects to (outbound), or the embedded default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    /// One connection is kept to every node (the same tunnel token serves all nodes of one operator).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<RelayNodeConfig>,
    /// Port of the relays' public listener, for URLs (default 443).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_port: Option<u16>,
    /// The tunnel domain the relay assigned (`<tunnel-id>.<base>`), learned from it and kept for URLs and the CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tunnel_domain: Option<String>,
    /// Run the embedded relay on loopback when no node and no `[anthropic]` section is configured (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded: Option<bool>,
    /// Public port of the embedded relay (chosen once, kept so URLs stay stable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_port: Option<u16>,
    /// Tunnel domain of the embedded relay (`<tunnel-id>.airlock.localhost`), written by the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedded_domain: Option<String>,
}

/// One relay node: its tunnel listener and the SHA-256 of its public key (`airlock relay fingerprint`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayNodeConfig {
    /// `host:port` of the node's tunnel listener.
    pub addr: String,
    /// Lowercase hex SHA-256 of the node's tunnel key (SPKI). Without it the relay is not authenticated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

impl RelaySection {
    /// Whether the embedded relay runs with this config (no nodes, no Anthropic tunnel, not turned off).
    pub fn embedded_active(&self, anthropic: bool) -> bool {
        self.nodes.is_empty() && !anthropic && self.embedded.unwrap_or(true)
    }
}

/// Parses a relay fingerprint: 64 hex digits (colons and spaces allowed).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], AgentError> {
    let clean: String = text
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect::<String>()
        .to_ascii_lowercase();
    let bytes = hex::decode(&clean).ok().filter(|b| b.len() == 32);
    bytes
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .ok_or_else(|| {
            AgentError::Invalid(format!(
                "relay fingerprint `{text}` is not 64 hex digits; `airlock relay fingerprint` on the relay prints it"
            ))
        })
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoreConfig {
    /// `auto` (the OS keychain when one answers, else 0600 files with a warning), `keychain` or `file`.
    #[serde(default)]
    pub backend: Option<String>,
}

/// Mirrors the fields of Anthropic's proxy `config.yaml` that make sense on a developer machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnthropicConfig {
    /// The tunnel's domain, e.g. `abcd1234.tunnel.anthropic.com`.
    pub tunnel_domain: String,
    /// Where cloudflared connects (plain WebSocket; inner TLS inside it).
    #[serde(default = "default_listen_addr")]
    pub listen_addr: String,
    /// Browser origins allowed to open the WebSocket (none by default: no web page may reach it).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// Extra routes (e.g. imported from `config.yaml`): subdomain or full host → `scheme://host:port`.
    #[serde(default)]
    pub routes: BTreeMap<String, String>,
    #[serde(default)]
    pub upstream: UpstreamConfig,
    /// Validity of the inner-TLS server certificate, as the setup component's `--cert-duration` (default `2160h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_duration: Option<String>,
    /// Renew this long before expiry, as `setup renew-cert --renew-before` (default `720h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<String>,
}

impl AnthropicConfig {
    /// The certificate validity settings, with the durations parsed (Go syntax: `90s`, `2160h`, `1h30m`).
    pub fn validity(&self) -> Result<crate::pki_store::Validity, AgentError> {
        let mut v = crate::pki_store::Validity::default();
        let parse = |field: &str, text: &str| {
            airlock_tunnel::anthropic_config::parse_go_duration(text)
                .filter(|d| !d.is_zero())
                .and_then(|d| time::Duration::try_from(d).ok())
                .ok_or_else(|| {
                    AgentError::Invalid(format!(
                        "[anthropic] {field} = \"{text}\" in config.toml is not a duration like \"2160h\" or \"90s\""
                    ))
                })
        };
        if let Some(text) = &self.cert_duration {
            v.server = parse("cert_duration", text)?;
        }
        if let Some(text) = &self.renew_before {
            v.renew_before = parse("renew_before", text)?;
        }
        if v.renew_before >= v.server {
            return Err(AgentError::Invalid(
                "[anthropic] renew_before must be shorter than cert_duration".into(),
            ));
        }
        Ok(v)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// CIDRs or addresses upstreams may resolve to; replaces the default (RFC 1918).
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub disable_ip_validation: bool,
}

pub fn default_listen_addr() -> String {
    "127.0.0.1:8080".to_string()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// Loopback port of the local gateway. Chosen once at first start, then kept so URLs stay stable.
    pub port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryConfig {
    /// Look for MCP servers already listening on loopback ports of this user.
    #[serde(default = "yes")]
    pub probe_running: bool,
    /// Extra project directories whose `.mcp.json`, `.cursor/`, `.vscode/`… files are read.
    #[serde(default)]
    pub project_dirs: Vec<PathBuf>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            probe_running: true,
            project_dirs: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// For humans reading the file; the id is what identifies the server.
    #[serde(default)]
    pub name: String,
    pub hostname: String,
    #[serde(default = "yes")]
    pub exposed: bool,
    /// Loopback port of this server's URL on the embedded relay (`https://127.0.0.1:<port>/…`), chosen once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_port: Option<u16>,
}

/// Reads the config. A missing file is an empty config; a malformed one is an error naming file, line and column.
pub fn load(path: &Path) -> Result<Config, AgentError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
        Err(e) => return Err(AgentError::io(path, e)),
    };
    parse(path, &text)
}

fn parse(path: &Path, text: &str) -> Result<Config, AgentError> {
    toml::from_str::<Config>(text).map_err(|e| {
        let (line, column) = e
            .span()
            .map(|span| line_col(text, span.start))
            .unwrap_or((0, 0));
        AgentError::Config {
            path: path.to_path_buf(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, column)
}

/// An edit applied to the file's syntax tree, so hand-written comments and layout are preserved.
pub enum Edit<'a> {
    SetGatewayPort(u16),
    Expose {
        id: &'a str,
        name: &'a str,
        hostname: &'a str,
    },
    Unexpose {
        id: &'a str,
    },
    /// Replaces the whole `[anthropic]` section (`None` removes it).
    SetAnthropic(Option<&'a AnthropicConfig>),
    /// Replaces `[relay] nodes` (and `public_port` when given).
    SetRelayNodes {
        nodes: &'a [RelayNodeConfig],
        public_port: Option<u16>,
    },
    /// Records the tunnel domain a relay assigned.
    SetRelayDomain(&'a str),
    /// Records the embedded relay's public port and tunnel domain.
    SetEmbedded {
        port: u16,
        domain: &'a str,
    },
    /// Records a server's loopback port on the embedded relay.
    SetLocalPort {
        id: &'a str,
        port: u16,
    },
    /// Edits `[sandbox]`.
    Sandbox(crate::sandbox::SandboxEdit<'a>),
}

/// Applies `edit` to the file atomically and returns the new config. Refuses to touch a file that does not parse.
pub fn update(path: &Path, edit: Edit<'_>) -> Result<Config, AgentError> {
    let (text, new_file) = match fs::read_to_string(path) {
        Ok(text) => (text, false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), true),
        Err(e) => return Err(AgentError::io(path, e)),
    };
    // Validate first with the typed parser: its errors carry the line, and a broken file is never rewritten.
    parse(path, &text)?;
    let mut doc: toml_edit::DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| AgentError::Config {
                path: path.to_path_buf(),
                line: 0,
                column: 0,
                message: e.message().to_string(),
            })?;
    match edit {
        Edit::SetGatewayPort(port) => {
            let gateway = table(&mut doc, "gateway", path)?;
            gateway["port"] = toml_edit::value(i64::from(port));
        }
        Edit::Expose { id, name, hostname } => {
            let servers = table(&mut doc, "servers", path)?;
            servers.set_implicit(true);
            if !servers.contains_key(id) {
                servers.insert(id, toml_edit::Item::Table(toml_edit::Table::new()));
            }
            let entry = servers[id].as_table_mut().ok_or_else(|| {
                AgentError::Invalid(format!(
                    "[servers.{id}] in {} is not a table",
                    path.display()
                ))
            })?;
            entry["name"] = toml_edit::value(name);
            entry["hostname"] = toml_edit::value(hostname);
            entry["exposed"] = toml_edit::value(true);
        }
        Edit::Unexpose { id } => {
            if let Some(entry) = doc
                .get_mut("servers")
                .and_then(|s| s.as_table_mut())
                .and_then(|s| s.get_mut(id))
                .and_then(|e| e.as_table_mut())
            {
                // Keep the entry (and its hostname) so re-exposing gets the same URL.
                entry["exposed"] = toml_edit::value(false);
            }
        }
        Edit::SetAnthropic(section) => {
            doc.remove("anthropic");
            if let Some(section) = section {
                let text = toml::to_string(&Wrapper { anthropic: section })
                    .map_err(|e| AgentError::Invalid(format!("serialising [anthropic]: {e}")))?;
                let parsed: toml_edit::DocumentMut = text
                    .parse()
                    .map_err(|e: toml_edit::TomlError| AgentError::Invalid(e.to_string()))?;
                if let Some(item) = parsed.get("anthropic") {
                    doc.insert("anthropic", item.clone());
                }
            }
        }
        Edit::SetRelayNodes { nodes, public_port } => {
            let relay = table(&mut doc, "relay", path)?;
            let mut array = toml_edit::Array::new();
            for n in nodes {
                let mut t = toml_edit::InlineTable::new();
                t.insert("addr", n.addr.as_str().into());
                if let Some(f) = &n.fingerprint {
                    t.insert("fingerprint", f.as_str().into());
                }
                array.push(t);
            }
            relay["nodes"] = toml_edit::value(array);
            if let Some(port) = public_port {
                relay["public_port"] = toml_edit::value(i64::from(port));
            }
        }
        Edit::SetRelayDomain(domain) => {
            let relay = table(&mut doc, "relay", path)?;
            relay["tunnel_domain"] = toml_edit::value(domain);
        }
        Edit::SetEmbedded { port, domain } => {
            let relay = table(&mut doc, "relay", path)?;
            relay["embedded_port"] = toml_edit::value(i64::from(port));
            relay["embedded_domain"] = toml_edit::value(domain);
        }
        Edit::Sandbox(_) => {}
        Edit::SetLocalPort { id, port } => {
            if let Some(entry) = doc
                .get_mut("servers")
                .and_then(|s| s.as_table_mut())
                .and_then(|s| s.get_mut(id))
                .and_then(|e| e.as_table_mut())
            {
                entry["local_port"] = toml_edit::value(i64::from(port));
            }
        }
    }
    if let Edit::Sandbox(e) = &edit {
        crate::sandbox::apply_edit(&mut doc, e, path)?;
    }
    let mut new_text = doc.to_string();
    if new_file {
        new_text.insert_str(0, &format!("{HEADER}\n"));
    }
    let config = parse(path, &new_text)?;
    write_atomic(path, new_text.as_bytes(), 0o644)?;
    Ok(config)
}

#[derive(Serialize)]
struct Wrapper<'a> {
    anthropic: &'a AnthropicConfig,
}

fn table<'d>(
    doc: &'d mut toml_edit::DocumentMut,
    key: &str,
    path: &Path,
) -> Result<&'d mut toml_edit::Table, AgentError> {
    let item = doc.as_table_mut().entry(key).or_insert(toml_edit::table());
    if let Some(inline) = item.as_inline_table().cloned() {
        *item = toml_edit::Item::Table(inline.into_table());
    }
    item.as_table_mut().ok_or_else(|| {
        AgentError::Invalid(format!("`{key}` in {} must be a table", path.display()))
    })
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), AgentError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".airlock-")
        .tempfile_in(dir)
        .map_err(|e| AgentError::io(dir, e))?;
    set_mode(tmp.path(), mode)?;
    tmp.write_all(bytes)
        .map_err(|e| AgentError::io(tmp.path(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| AgentError::io(path, e))?;
    tmp.persist(path)
        .map_err(|e| AgentError::io(path, e.error))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> Result<(), AgentError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| AgentError::io(path, e))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> Result<(), AgentError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_file_is_empty_config() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(&dir.path().join("config.toml")).unwrap();
        assert_eq!(cfg, Config::default());
        assert!(cfg.discovery.probe_running);
    }

    #[test]
    fn malformed_file_names_file_and_line_and_is_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        let text = "[gateway]\nport = 1234\n\n[servers.abc]\nhostname = \n";
        fs::write(&path, text).unwrap();
        let err = load(&path).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("config.toml"), "{msg}");
        assert!(msg.contains(":5:"), "line 5 expected in {msg}");
        let err = update(&path, Edit::SetGatewayPort(9)).unwrap_err();
        assert!(matches!(err, AgentError::Config { line: 5, .. }));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            text,
            "file must be untouched"
        );
    }

    #[test]
    fn oauth_remote_approval_is_off_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "[gateway]\nport = 1\n").unwrap();
        assert!(!load(&path).unwrap().oauth.remote_approval);
        fs::write(&path, "[oauth]\nremote_approval = true\n").unwrap();
        assert!(load(&path).unwrap().oauth.remote_approval);
        fs::write(&path, "[oauth]\nremote_aproval = true\n").unwrap();
        assert!(matches!(
            load(&path),
            Err(AgentError::Config { line: 2, .. })
        ));
    }

    #[test]
    fn unknown_keys_are_errors_not_silently_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "[gateway]\nprot = 1\n").unwrap();
        assert!(matches!(
            load(&path),
            Err(AgentError::Config { line: 2, .. })
        ));
    }

    #[test]
    fn edits_keep_comments_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(
            &path,
            "# my note\n[discovery]\nprobe_running = false # keep quiet\n",
        )
        .unwrap();
        update(&path, Edit::SetGatewayPort(4242)).unwrap();
        let fresh = dir.path().join("fresh.toml");
        update(&fresh, Edit::SetGatewayPort(1)).unwrap();
        assert!(
            fs::read_to_string(&fresh)
                .unwrap()
                .starts_with("# Airlock configuration.")
        );
        update(
            &path,
            Edit::Expose {
                id: "0123456789ab",
                name: "everything",
                hostname: "everything",
            },
        )
        .unwrap();
        let cfg = update(&path, Edit::Unexpose { id: "0123456789ab" }).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.contains("# my note"));
        assert!(text.contains("# keep quiet"));
        assert_eq!(cfg.gateway.port, Some(4242));
        assert!(!cfg.discovery.probe_running);
        let server = &cfg.servers["0123456789ab"];
        assert_eq!(server.hostname, "everything");
        assert!(!server.exposed);
        assert_eq!(load(&path).unwrap(), cfg);
    }

    #[test]
    fn anthropic_section_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "# keep me\n[gateway]\nport = 5\n").unwrap();
        let section = AnthropicConfig {
            tunnel_domain: "abcd.tunnel.example".into(),
            listen_addr: default_listen_addr(),
            allowed_origins: vec![],
            routes: [("echo".to_string(), "http://10.0.0.5:9000".to_string())].into(),
            upstream: UpstreamConfig {
                allowed_ips: vec!["10.0.0.0/8".into()],
                disable_ip_validation: false,
            },
            cert_duration: Some("60s".into()),
            renew_before: Some("30s".into()),
        };
        let v = section.validity().unwrap();
        assert_eq!(v.server, time::Duration::seconds(60));
        assert_eq!(v.renew_before, time::Duration::seconds(30));
        let no_margin = AnthropicConfig {
            renew_before: None,
            ..section.clone()
        };
        assert!(
            no_margin.validity().is_err(),
            "a 30-day margin on a 60 s certificate is refused"
        );
        let garbage = AnthropicConfig {
            cert_duration: Some("soon".into()),
            ..section.clone()
        };
        assert!(garbage.validity().is_err());
        let cfg = update(&path, Edit::SetAnthropic(Some(&section))).unwrap();
        assert_eq!(cfg.anthropic.as_ref(), Some(&section));
        assert!(fs::read_to_string(&path).unwrap().contains("# keep me"));
        assert_eq!(load(&path).unwrap(), cfg);
        let cfg = update(&path, Edit::SetAnthropic(None)).unwrap();
        assert!(cfg.anthropic.is_none());
    }

    #[test]
    fn relay_edits_round_trip_and_keep_comments() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        fs::write(&path, "# mine\n[servers.abc]\nhostname = \"x\"\n").unwrap();
        let nodes = vec![
            RelayNodeConfig {
                addr: "r1.example:7443".into(),
                fingerprint: Some("ab".repeat(32)),
            },
            RelayNodeConfig {
                addr: "r2.example:7443".into(),
                fingerprint: None,
            },
        ];
        update(
            &path,
            Edit::SetRelayNodes {
                nodes: &nodes,
                public_port: Some(8443),
            },
        )
        .unwrap();
        update(&path, Edit::SetRelayDomain("t1.relay.example")).unwrap();
        update(
            &path,
            Edit::SetEmbedded {
                port: 4000,
                domain: "e1.airlock.localhost",
            },
        )
        .unwrap();
        let cfg = update(
            &path,
            Edit::SetLocalPort {
                id: "abc",
                port: 4001,
            },
        )
        .unwrap();
        assert_eq!(cfg.relay.nodes, nodes);
        assert_eq!(cfg.relay.public_port, Some(8443));
        assert_eq!(cfg.relay.tunnel_domain.as_deref(), Some("t1.relay.example"));
        assert_eq!(cfg.relay.embedded_port, Some(4000));
        assert_eq!(cfg.servers["abc"].local_port, Some(4001));
        assert!(
            !cfg.relay.embedded_active(false),
            "nodes win over the embedded relay"
        );
        assert!(fs::read_to_string(&path).unwrap().contains("# mine"));
        assert_eq!(load(&path).unwrap(), cfg);
        let empty = RelaySection::default();
        assert!(empty.embedded_active(false));
        assert!(
            !empty.embedded_active(true),
            "[anthropic] turns the embedded relay off"
        );
        assert!(parse_fingerprint(&"AB:".repeat(32)).is_ok());
        assert!(parse_fingerprint("abcd").is_err());
    }

    #[test]
    fn atomic_write_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        write_atomic(&path, b"a = 1\n", 0o600).unwrap();
        write_atomic(&path, b"a = 2\n", 0o600).unwrap();
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("config.toml")]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
