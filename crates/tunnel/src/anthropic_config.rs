//! Anthropic `mcp-proxy` `config.yaml`: read, validate, write, and route lookup.
//!
//! Field set and error strings follow Anthropic's MCP-tunnel proxy reference (see
//! `shared/research/anthropic-mcp-tunnels.md` §6 and §8):
//!
//! ```yaml
//! listen_addr: ":8080"
//! log_level: info
//! shutdown_timeout: 30s
//! tunnel_domain: ${TUNNEL_DOMAIN}
//! tls:
//!   cert_file: /data/tls.crt
//!   key_file: /data/tls.key
//! routes:
//!   echo: http://hello-mcp:9000
//! upstream:
//!   allowed_ips: [10.0.0.0/8]
//! ```
//!
//! Environment variables are expanded before parsing with Go `os.ExpandEnv` rules (`${VAR}` and
//! `$VAR`; unset variables become empty), which is our reading of how the proxy treats
//! `tunnel_domain: ${TUNNEL_DOMAIN}`. Unknown keys are ignored, as Go's YAML decoder does.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_egress::{EgressError, IpNet, IpPolicy, parse_ip_entry};
use serde::de::{self, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// Where a config problem is, plus what it is. Displays as `file:line:column: problem` with the
/// parts that are known.
#[derive(Debug)]
pub struct ConfigError {
    /// The file, when loaded from one.
    pub file: Option<PathBuf>,
    /// 1-based line, when the YAML parser (or a key search) could tell.
    pub line: Option<usize>,
    /// 1-based column, when the YAML parser could tell.
    pub column: Option<usize>,
    /// What is wrong (boxed to keep `Result`s small).
    pub kind: Box<ConfigErrorKind>,
}

/// What is wrong with a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigErrorKind {
    /// The file could not be read.
    #[error("cannot read the proxy config: {0}")]
    Read(#[source] std::io::Error),
    /// YAML syntax or type error (message from the parser, or the proxy's wording for routes
    /// given as a list: `cannot unmarshal !!seq into map[string]string`).
    #[error("{0}")]
    Yaml(String),
    /// A route's upstream is not exactly `scheme://host:port`.
    #[error("route {route:?}: invalid upstream (must be scheme://host:port): {value:?}: {reason}")]
    InvalidUpstream {
        route: String,
        value: String,
        reason: String,
    },
    /// Two route keys that are equal ignoring case and a trailing dot.
    #[error("route {route:?} is defined twice (route names are case-insensitive)")]
    DuplicateRoute { route: String },
    /// An empty route name.
    #[error("a route has an empty name; use a subdomain (echo) or a full host name")]
    EmptyRouteName,
    /// `upstream.allowed_ips` / `upstream.disable_ip_validation` problems.
    #[error("{0}")]
    IpPolicy(#[source] EgressError),
    /// A required field is missing or empty.
    #[error("{field} is required: {hint}")]
    Missing {
        field: &'static str,
        hint: &'static str,
    },
    /// A field has a value the proxy would not accept.
    #[error("{field}: invalid value {value:?}: expected {expected}")]
    InvalidValue {
        field: &'static str,
        value: String,
        expected: &'static str,
    },
    /// Writing YAML failed.
    #[error("cannot write YAML: {0}")]
    Write(String),
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.file {
            write!(f, "{}:", file.display())?;
        }
        if let Some(line) = self.line {
            write!(f, "{line}:")?;
            if let Some(col) = self.column {
                write!(f, "{col}:")?;
            }
        }
        if self.file.is_some() || self.line.is_some() {
            f.write_str(" ")?;
        }
        write!(f, "{}", self.kind)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.kind)
    }
}

impl ConfigError {
    fn new(kind: ConfigErrorKind) -> Self {
        Self {
            file: None,
            line: None,
            column: None,
            kind: Box::new(kind),
        }
    }

    fn at(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }
}

/// Proxy `log_level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogLevel {
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "debug" => Some(LogLevel::Debug),
            "info" => Some(LogLevel::Info),
            "warn" => Some(LogLevel::Warn),
            "error" => Some(LogLevel::Error),
            _ => None,
        }
    }
}

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamScheme {
    Http,
    Https,
}

impl UpstreamScheme {
    /// `http` / `https`.
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamScheme::Http => "http",
            UpstreamScheme::Https => "https",
        }
    }
}

/// A route target: exactly `scheme://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upstream {
    pub scheme: UpstreamScheme,
    /// Host name or IP literal, without brackets.
    pub host: String,
    pub port: u16,
}

impl Upstream {
    /// Parse `scheme://host:port` (port mandatory; no path, query, fragment or userinfo).
    /// The error is the reason, for [`ConfigErrorKind::InvalidUpstream`].
    pub fn parse(value: &str) -> Result<Self, String> {
        let Some((scheme, rest)) = value.split_once("://") else {
            return Err("missing scheme; write http://host:port or https://host:port".into());
        };
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => UpstreamScheme::Http,
            "https" => UpstreamScheme::Https,
            other => return Err(format!("unsupported scheme {other:?}; use http or https")),
        };
        if rest.contains(['/', '?', '#']) {
            return Err(
                "has a path, query or fragment; put the path in the client URL instead".into(),
            );
        }
        if rest.contains('@') {
            return Err("userinfo (user@) is not allowed".into());
        }
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let Some((host, tail)) = after.split_once(']') else {
                return Err("unterminated [IPv6] literal".into());
            };
            let Some(port) = tail.strip_prefix(':') else {
                return Err("port is mandatory".into());
            };
            (host, port)
        } else {
            let Some((host, port)) = rest.rsplit_once(':') else {
                return Err("port is mandatory".into());
            };
            if host.contains(':') {
                return Err("IPv6 literals must be written in brackets: http://[::1]:8080".into());
            }
            (host, port)
        };
        if host.is_empty() {
            return Err("host is empty".into());
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(format!("port {port:?} is not a number from 1 to 65535")),
        };
        Ok(Self {
            scheme,
            host: host.to_owned(),
            port,
        })
    }

    /// `scheme://host:port`, as the proxy wants it.
    pub fn url(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(
                f,
                "{}://[{}]:{}",
                self.scheme.as_str(),
                self.host,
                self.port
            )
        } else {
            write!(f, "{}://{}:{}", self.scheme.as_str(), self.host, self.port)
        }
    }
}

/// One `routes` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The key as written: a subdomain of `tunnel_domain` (`echo`) or a full host name.
    pub name: String,
    pub upstream: Upstream,
}

/// `tls` block: the inner-TLS server certificate and key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// `upstream.tls` block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamTls {
    pub ca_file: Option<PathBuf>,
    pub include_system_cas: bool,
}

/// `upstream` block.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UpstreamSettings {
    /// Replaces the RFC1918 default when non-empty.
    pub allowed_ips: Vec<IpNet>,
    /// Mutually exclusive with a non-empty `allowed_ips`.
    pub disable_ip_validation: bool,
    pub tls: UpstreamTls,
}

/// A validated proxy config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyConfig {
    /// e.g. `:8080`.
    pub listen_addr: String,
    pub log_level: LogLevel,
    /// Default 30 s.
    pub shutdown_timeout: Duration,
    /// Suffix stripped for subdomain lookup; empty means route keys must be full host names.
    pub tunnel_domain: String,
    pub tls: TlsFiles,
    /// Keyed by the normalized route name (lowercase, no trailing dot).
    pub routes: BTreeMap<String, Route>,
    pub upstream: UpstreamSettings,
}

/// Default `shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

impl ProxyConfig {
    /// Read and validate `path`, expanding `${VAR}` from `env`. Errors name the file.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: Some(path.to_owned()),
            line: None,
            column: None,
            kind: Box::new(ConfigErrorKind::Read(e)),
        })?;
        Self::from_yaml_str(&text, env).map_err(|mut e| {
            e.file = Some(path.to_owned());
            e
        })
    }

    /// [`ProxyConfig::load`] on a blocking thread, for async callers.
    pub async fn load_async(
        path: PathBuf,
        env: HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let p = path.clone();
        match tokio::task::spawn_blocking(move || Self::load(&p, &env)).await {
            Ok(r) => r,
            Err(e) => Err(ConfigError {
                file: Some(path),
                line: None,
                column: None,
                kind: Box::new(ConfigErrorKind::Read(std::io::Error::other(e.to_string()))),
            }),
        }
    }

    /// Parse and validate YAML text, expanding `${VAR}` from `env`.
    pub fn from_yaml_str(text: &str, env: &HashMap<String, String>) -> Result<Self, ConfigError> {
        let expanded = expand_env(text, env);
        for name in &expanded.unset {
            tracing::warn!(
                variable = %name,
                "proxy config refers to ${{{name}}}, which is not set; it expands to an empty string"
            );
        }
        let text = expanded.text.as_str();
        let raw: RawConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let loc = e.location();
            ConfigError {
                file: None,
                line: loc.as_ref().map(|l| l.line()),
                column: loc.as_ref().map(|l| l.column()),
                kind: Box::new(ConfigErrorKind::Yaml(e.to_string())),
            }
        })?;
        Self::from_raw(raw, text)
    }

    fn from_raw(raw: RawConfig, text: &str) -> Result<Self, ConfigError> {
        let listen_addr = raw.listen_addr.unwrap_or_default();
        if listen_addr.trim().is_empty() {
            return Err(ConfigError::new(ConfigErrorKind::Missing {
                field: "listen_addr",
                hint: "add `listen_addr: \":8080\"`",
            }));
        }
        let log_level = match raw.log_level.as_deref() {
            None | Some("") => LogLevel::Info,
            Some(s) => LogLevel::parse(s).ok_or_else(|| {
                ConfigError::new(ConfigErrorKind::InvalidValue {
                    field: "log_level",
                    value: s.to_owned(),
                    expected: "debug, info, warn or error",
                })
                .at(key_line(text, "log_level"))
            })?,
        };
        let shutdown_timeout = match raw.shutdown_timeout.as_deref() {
            None | Some("") => DEFAULT_SHUTDOWN_TIMEOUT,
            Some(s) => parse_go_duration(s).ok_or_else(|| {
                ConfigError::new(ConfigErrorKind::InvalidValue {
                    field: "shutdown_timeout",
                    value: s.to_owned(),
                    expected: "a duration such as 30s, 1m30s or 500ms",
                })
                .at(key_line(text, "shutdown_timeout"))
            })?,
        };
        let tunnel_domain = raw
            .tunnel_domain
            .unwrap_or_default()
            .trim()
            .trim_end_matches('.')
            .to_owned();
        let raw_tls = raw.tls.unwrap_or_default();
        let cert_file = raw_tls.cert_file.unwrap_or_default();
        if cert_file.as_os_str().is_empty() {
            return Err(ConfigError::new(ConfigErrorKind::Missing {
                field: "tls.cert_file",
                hint: "point it at the inner-TLS server certificate (PEM), e.g. /data/tls.crt",
            }));
        }
        let key_file = raw_tls.key_file.unwrap_or_default();
        if key_file.as_os_str().is_empty() {
            return Err(ConfigError::new(ConfigErrorKind::Missing {
                field: "tls.key_file",
                hint: "point it at the inner-TLS server private key (PEM), e.g. /data/tls.key",
            }));
        }

        let mut routes = BTreeMap::new();
        for (name, value) in raw.routes.map(|r| r.0).unwrap_or_default() {
            let line = route_line(text, &name);
            let key = normalize_host(&name);
            if key.is_empty() {
                return Err(ConfigError::new(ConfigErrorKind::EmptyRouteName).at(line));
            }
            let upstream = Upstream::parse(value.trim()).map_err(|reason| {
                ConfigError::new(ConfigErrorKind::InvalidUpstream {
                    route: name.clone(),
                    value: value.clone(),
                    reason,
                })
                .at(line)
            })?;
            if routes.contains_key(&key) {
                return Err(
                    ConfigError::new(ConfigErrorKind::DuplicateRoute { route: name }).at(line),
                );
            }
            routes.insert(key, Route { name, upstream });
        }

        let raw_up = raw.upstream.unwrap_or_default();
        let entries = raw_up.allowed_ips.unwrap_or_default();
        let disable = raw_up.disable_ip_validation.unwrap_or(false);
        if disable && !entries.is_empty() {
            return Err(ConfigError::new(ConfigErrorKind::IpPolicy(
                EgressError::ConflictingPolicy,
            ))
            .at(key_line(text, "disable_ip_validation")));
        }
        let mut allowed_ips = Vec::with_capacity(entries.len());
        for entry in &entries {
            let net = parse_ip_entry(entry).map_err(|e| {
                ConfigError::new(ConfigErrorKind::IpPolicy(e)).at(value_line(text, entry))
            })?;
            allowed_ips.push(net);
        }
        let up_tls = raw_up.tls.unwrap_or_default();
        let upstream = UpstreamSettings {
            allowed_ips,
            disable_ip_validation: disable,
            tls: UpstreamTls {
                ca_file: up_tls.ca_file.filter(|p| !p.as_os_str().is_empty()),
                include_system_cas: up_tls.include_system_cas.unwrap_or(false),
            },
        };
        Ok(Self {
            listen_addr,
            log_level,
            shutdown_timeout,
            tunnel_domain,
            tls: TlsFiles {
                cert_file,
                key_file,
            },
            routes,
            upstream,
        })
    }

    /// Things the proxy accepts but that are probably mistakes, one sentence each (for
    /// `airlock status` / doctor output): `https` routes with no trust anchor, bare subdomain
    /// keys without a `tunnel_domain`, no routes, a catch-all `allowed_ips` entry.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.routes.is_empty() {
            out.push(
                "no routes are configured, so every request gets 502 No route configured for host"
                    .to_owned(),
            );
        }
        let trust = self.upstream.tls.ca_file.is_some() || self.upstream.tls.include_system_cas;
        for route in self.routes.values() {
            if route.upstream.scheme == UpstreamScheme::Https && !trust {
                out.push(format!(
                    "route {:?} is https but neither upstream.tls.ca_file nor upstream.tls.include_system_cas is set, so its certificate cannot be verified",
                    route.name
                ));
            }
            if self.tunnel_domain.is_empty() && !route.name.contains('.') {
                out.push(format!(
                    "route {:?} looks like a subdomain but tunnel_domain is empty, so it only matches the literal host {:?}",
                    route.name, route.name
                ));
            }
        }
        if self
            .upstream
            .allowed_ips
            .iter()
            .any(|n| n.prefix_len() == 0)
        {
            out.push("upstream.allowed_ips contains a catch-all (0.0.0.0/0 or ::/0), which turns off SSRF protection except Airlock's link-local and loopback rules".to_owned());
        }
        out
    }

    /// The upstream IP policy these settings describe.
    pub fn ip_policy(&self) -> IpPolicy {
        if self.upstream.disable_ip_validation {
            IpPolicy::validation_disabled()
        } else {
            IpPolicy::allowing(self.upstream.allowed_ips.clone())
        }
    }

    /// Find the route for a request's host: exact match on the full host name first, then the
    /// subdomain left after stripping `.<tunnel_domain>`. Case-insensitive; a port and a
    /// trailing dot are ignored.
    pub fn lookup(&self, host: &str) -> Option<&Route> {
        let host = normalize_host(strip_port(host.trim()));
        if host.is_empty() {
            return None;
        }
        if let Some(route) = self.routes.get(&host) {
            return Some(route);
        }
        let domain = self
            .tunnel_domain
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if domain.is_empty() {
            return None;
        }
        let sub = host.strip_suffix(&domain)?.strip_suffix('.')?;
        if sub.is_empty() {
            return None;
        }
        self.routes.get(sub)
    }

    /// A config the real proxy accepts (environment variables already expanded).
    pub fn to_yaml(&self) -> Result<String, ConfigError> {
        let out = OutConfig {
            listen_addr: &self.listen_addr,
            log_level: self.log_level.as_str(),
            shutdown_timeout: format_go_duration(self.shutdown_timeout),
            tunnel_domain: (!self.tunnel_domain.is_empty()).then_some(self.tunnel_domain.as_str()),
            tls: OutTls {
                cert_file: &self.tls.cert_file,
                key_file: &self.tls.key_file,
            },
            routes: self
                .routes
                .values()
                .map(|r| (r.name.as_str(), r.upstream.url()))
                .collect(),
            upstream: {
                let u = &self.upstream;
                let tls =
                    (u.tls.ca_file.is_some() || u.tls.include_system_cas).then_some(OutUpTls {
                        ca_file: u.tls.ca_file.as_deref(),
                        include_system_cas: u.tls.include_system_cas,
                    });
                let allowed: Vec<String> = u.allowed_ips.iter().map(|n| n.to_string()).collect();
                (!allowed.is_empty() || u.disable_ip_validation || tls.is_some()).then_some(
                    OutUpstream {
                        allowed_ips: allowed,
                        disable_ip_validation: u.disable_ip_validation,
                        tls,
                    },
                )
            },
        };
        serde_yaml_ng::to_string(&out)
            .map_err(|e| ConfigError::new(ConfigErrorKind::Write(e.to_string())))
    }
}

/// Lowercase, trimmed, without a trailing dot.
fn normalize_host(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// `host:port` → `host`; `[v6]:port` / `[v6]` → `v6`; a bare IPv6 literal is left alone.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(v6, _)| v6);
    }
    match h.split_once(':') {
        Some((host, port)) if !port.contains(':') => host,
        _ => h,
    }
}

/// 1-based line of the first `key:` (any indentation).
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let t = l.trim_start().trim_start_matches("- ");
            let t = t
                .strip_prefix('"')
                .and_then(|t| t.strip_prefix(key))
                .and_then(|t| t.strip_prefix('"'))
                .or_else(|| t.strip_prefix(key));
            t.is_some_and(|rest| rest.trim_start().starts_with(':'))
        })
        .map(|i| i + 1)
}

/// 1-based line of a route key, searched after the `routes:` line.
fn route_line(text: &str, name: &str) -> Option<usize> {
    let start = key_line(text, "routes")?;
    let rest: String = text.lines().skip(start).collect::<Vec<_>>().join("\n");
    key_line(&rest, name).map(|l| l + start)
}

/// 1-based line of the first line containing `value`.
fn value_line(text: &str, value: &str) -> Option<usize> {
    if value.is_empty() {
        return None;
    }
    text.lines().position(|l| l.contains(value)).map(|i| i + 1)
}

/// The result of [`expand_env`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expanded {
    pub text: String,
    /// Variables referenced but not in the map (expanded to the empty string), in order.
    pub unset: Vec<String>,
}

/// Expand `${VAR}` and `$VAR` from `env` with Go `os.Expand` rules: names are
/// `[A-Za-z0-9_]+`, or one of the shell specials `*#$@!?-` or a digit; `${}` and an unclosed
/// `${` are dropped; a `$` not followed by a name stays; unset variables become empty.
pub fn expand_env(text: &str, env: &HashMap<String, String>) -> Expanded {
    let mut out = String::with_capacity(text.len());
    let mut unset: Vec<String> = Vec::new();
    let mut push_var = |out: &mut String, name: &str| match env.get(name) {
        Some(v) => out.push_str(v),
        None => {
            if !unset.iter().any(|u| u == name) {
                unset.push(name.to_owned());
            }
        }
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < bytes.len() {
        if bytes[i] != b'$' || i + 1 >= bytes.len() {
            i += 1;
            continue;
        }
        out.push_str(&text[copied..i]);
        let s = &text[i + 1..];
        let sb = s.as_bytes();
        let special = |b: u8| b"*#$@!?-".contains(&b) || b.is_ascii_digit();
        let alnum = |b: u8| b == b'_' || b.is_ascii_alphanumeric();
        let consumed;
        if sb[0] == b'{' {
            if sb.len() > 2 && special(sb[1]) && sb[2] == b'}' {
                push_var(&mut out, &s[1..2]);
                consumed = 3;
            } else if let Some(end) = s.find('}') {
                if end > 1 {
                    push_var(&mut out, &s[1..end]);
                }
                consumed = end + 1;
            } else {
                consumed = 1;
            }
        } else if special(sb[0]) {
            push_var(&mut out, &s[..1]);
            consumed = 1;
        } else {
            let n = sb.iter().take_while(|b| alnum(**b)).count();
            if n == 0 {
                out.push('$');
            } else {
                push_var(&mut out, &s[..n]);
            }
            consumed = n;
        }
        i += 1 + consumed;
        copied = i;
    }
    out.push_str(&text[copied.min(text.len())..]);
    Expanded { text: out, unset }
}

/// Parse a Go `time.Duration` string (`30s`, `1m30s`, `1.5h`, `300ms`, `0`). Negative values
/// are rejected.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Some(Duration::ZERO);
    }
    if s.is_empty() || s.starts_with('-') {
        return None;
    }
    let mut total: f64 = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'.')
            .count();
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| c.is_ascii_digit() || *c == '.')
            .map_or(rest.len(), |(i, _)| i);
        let nanos_per = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * nanos_per;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return None;
    }
    Some(Duration::from_nanos(total.round() as u64))
}

/// Format like Go's `Duration.String()` (`30s`, `1m30s`, `1h0m0s`, `500ms`).
pub fn format_go_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let nanos = d.as_nanos();
    if nanos < 1_000_000_000 {
        return if nanos.is_multiple_of(1_000_000) {
            format!("{}ms", nanos / 1_000_000)
        } else if nanos.is_multiple_of(1_000) {
            format!("{}µs", nanos / 1_000)
        } else {
            format!("{nanos}ns")
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    let frac = d.subsec_nanos();
    let secs_str = if frac == 0 {
        format!("{s}")
    } else {
        let f = format!("{frac:09}");
        format!("{s}.{}", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{secs_str}s")
    } else if m > 0 {
        format!("{m}m{secs_str}s")
    } else {
        format!("{secs_str}s")
    }
}

// ---- serde shapes -------------------------------------------------------------------------

#[derive(Deserialize, Default)]
struct RawConfig {
    listen_addr: Option<String>,
    log_level: Option<String>,
    shutdown_timeout: Option<String>,
    tunnel_domain: Option<String>,
    tls: Option<RawTls>,
    routes: Option<RawRoutes>,
    upstream: Option<RawUpstream>,
}

#[derive(Deserialize, Default)]
struct RawTls {
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct RawUpstream {
    allowed_ips: Option<Vec<String>>,
    disable_ip_validation: Option<bool>,
    tls: Option<RawUpstreamTls>,
}

#[derive(Deserialize, Default)]
struct RawUpstreamTls {
    ca_file: Option<PathBuf>,
    include_system_cas: Option<bool>,
}

/// `routes`, in file order; a list gets the proxy's own error wording.
struct RawRoutes(Vec<(String, String)>);

impl<'de> Deserialize<'de> for RawRoutes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRoutes;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of route name to scheme://host:port")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRoutes, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = map.next_entry::<String, String>()? {
                    v.push((k, val));
                }
                Ok(RawRoutes(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, _seq: A) -> Result<RawRoutes, A::Error> {
                Err(de::Error::custom(
                    "cannot unmarshal !!seq into map[string]string: `routes` must be a map \
                     (`echo: http://hello-mcp:9000`), not a list (`- echo: ...`)",
                ))
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawRoutes, E> {
                Ok(RawRoutes(Vec::new()))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Serialize)]
struct OutConfig<'a> {
    listen_addr: &'a str,
    log_level: &'a str,
    shutdown_timeout: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tunnel_domain: Option<&'a str>,
    tls: OutTls<'a>,
    routes: BTreeMap<&'a str, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    upstream: Option<OutUpstream<'a>>,
}

#[derive(Serialize)]
struct OutTls<'a> {
    cert_file: &'a Path,
    key_file: &'a Path,
}

#[derive(Serialize)]
struct OutUpstream<'a> {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    allowed_ips: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    disable_ip_validation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<OutUpTls<'a>>,
}

#[derive(Serialize)]
struct OutUpTls<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_file: Option<&'a Path>,
    include_system_cas: bool,
}
