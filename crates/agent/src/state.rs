//! The agent's live state: what discovery found, what the user chose to expose, and what the gateway serves.
//!
//! Discovery and the config file are the inputs; `reconcile` makes the gateway's routes match them. Every change is
//! announced on the event channel that the control API streams to the UI and the tray.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use airlock_discovery::{DiscoveredServer, Snapshot, TransportSpec};
use airlock_gateway::{Gateway, Health, Route, RouteStatus, UpstreamSpec};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::config::{self, Config, Edit};
use crate::error::AgentError;
use crate::home::AirlockHome;

/// One server as the API shows it: discovery's facts, secrets redacted, plus exposure state.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub id: String,
    pub name: String,
    pub transport: TransportSpec,
    pub sources: Vec<airlock_discovery::Source>,
    pub exposable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_exposable_reason: Option<String>,
    pub exposed: bool,
    pub hostname: Option<String>,
    pub url: Option<String>,
    /// `https://<hostname>.<tunnel domain>/…` when the Anthropic tunnel ingress runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tunnel_url: Option<String>,
    /// `https://<hostname>.<relay tunnel domain>[:port]/…` when the relay path runs (nodes or embedded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relay_url: Option<String>,
    /// `https://127.0.0.1:<port>/…`: the embedded relay's URL that needs no DNS (trust the relay CA).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_url: Option<String>,
    pub health: Option<Health>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// Discovery results or exposure changed: refetch `/v1/servers`.
    ServersChanged,
    /// New audit records landed (coalesced: at most about one per second): refetch `/v1/audit`.
    Audit,
    /// A route's health changed.
    Health(RouteStatus),
    /// OAuth: an approval is pending/decided/expired, a grant was issued/revoked (`event.type` says which).
    Oauth { event: airlock_oauth::Event },
    /// The relay connections changed state (`nodes` as in `/v1/status` `relay.nodes`).
    Relay {
        nodes: Vec<airlock_relay::NodeStatus>,
    },
    /// The sandbox worker changed state: on/off, a session started or ended, a tool call started or finished.
    Sandbox(crate::sandbox::SandboxEvent),
}

/// The running Anthropic-compatible ingress: inner TLS for the tunnel domain, reached through cloudflared.
pub struct TunnelRuntime {
    pub domain: String,
    pub listen_addr: String,
    pub terminator: airlock_ingress::Terminator,
    /// cloudflared (restartable: a new token restarts it).
    pub cloudflared: Arc<crate::tunnel::Connector>,
    /// Server certificate validity and renewal margin (`cert_duration` / `renew_before`).
    pub validity: crate::pki_store::Validity,
}

impl TunnelRuntime {
    /// The public URL of a hostname label on the tunnel.
    pub fn url(&self, label: &str, path: &str) -> String {
        format!("https://{label}.{}{path}", self.domain)
    }
}

/// Why a lookup by server reference failed.
#[derive(Debug)]
pub enum LookupError {
    NotFound(String),
    Ambiguous(Vec<String>),
}

pub struct AgentState {
    pub home: AirlockHome,
    pub keystore: Arc<airlock_keystore::Keystore>,
    pub gateway: Gateway,
    pub gateway_port: u16,
    pub api_port: std::sync::OnceLock<u16>,
    /// The OAuth authorization server (approvals, clients, tokens, audit), once opened.
    pub oauth: std::sync::OnceLock<airlock_oauth::AuthServer>,
    config: RwLock<Config>,
    discovered: watch::Receiver<Arc<Snapshot>>,
    running: RwLock<Vec<DiscoveredServer>>,
    /// What reconcile last handed the gateway, to expose again only when a route really changed.
    applied: tokio::sync::Mutex<HashMap<String, Route>>,
    /// The Anthropic-compatible tunnel ingress, when configured.
    pub tunnel: std::sync::OnceLock<TunnelRuntime>,
    /// The relay path (relay nodes or the embedded relay), when it runs.
    pub relay: std::sync::OnceLock<Arc<crate::relay::RelayRuntime>>,
    /// The sandbox worker for Claude Managed Agents (`/v1/sandbox`).
    pub sandbox: std::sync::OnceLock<Arc<crate::sandbox::SandboxControl>>,
    /// Serialises config edits with the reconcile that follows them.
    edit_lock: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Event>,
    ready: AtomicBool,
}

impl AgentState {
    pub fn new(
        home: AirlockHome,
        keystore: Arc<airlock_keystore::Keystore>,
        config: Config,
        gateway: Gateway,
        gateway_port: u16,
        discovered: watch::Receiver<Arc<Snapshot>>,
    ) -> Self {
        let (events, _) = broadcast::channel(256);
        Self {
            home,
            keystore,
            gateway,
            gateway_port,
            api_port: std::sync::OnceLock::new(),
            oauth: std::sync::OnceLock::new(),
            config: RwLock::new(config),
            discovered,
            running: RwLock::new(Vec::new()),
            applied: tokio::sync::Mutex::new(HashMap::new()),
            tunnel: std::sync::OnceLock::new(),
            relay: std::sync::OnceLock::new(),
            sandbox: std::sync::OnceLock::new(),
            edit_lock: tokio::sync::Mutex::new(()),
            events,
            ready: AtomicBool::new(false),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub fn emit(&self, event: Event) {
        // No subscriber is fine: nobody is watching.
        let _ = self.events.send(event);
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn config(&self) -> Config {
        read(&self.config).clone()
    }

    pub fn gateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.gateway_port)
    }

    pub fn set_running(&self, servers: Vec<DiscoveredServer>) -> bool {
        let mut guard = self.running.write().unwrap_or_else(|p| p.into_inner());
        if *guard == servers {
            return false;
        }
        *guard = servers;
        true
    }

    pub fn diagnostics(&self) -> Vec<airlock_discovery::Diagnostic> {
        self.discovered.borrow().diagnostics.clone()
    }

    /// All known servers: configured ones first, then running ones not already known by the same identity.
    fn all_servers(&self) -> Vec<DiscoveredServer> {
        let snapshot = self.discovered.borrow().clone();
        let mut servers = snapshot.servers.clone();
        let running = self.running.read().unwrap_or_else(|p| p.into_inner());
        for r in running.iter() {
            if !servers.iter().any(|s| s.id == r.id) {
                servers.push(r.clone());
            }
        }
        servers
    }

    pub fn servers(&self) -> Vec<ServerView> {
        let config = self.config();
        let health: HashMap<String, Health> = self
            .gateway
            .routes()
            .into_iter()
            .map(|r| (r.id, r.health))
            .collect();
        self.all_servers()
            .into_iter()
            .map(|s| self.view(&s, &config, &health))
            .collect()
    }

    fn view(
        &self,
        server: &DiscoveredServer,
        config: &Config,
        health: &HashMap<String, Health>,
    ) -> ServerView {
        let entry = config.servers.get(&server.id);
        let reason = not_exposable_reason(&server.transport);
        let exposed = entry.is_some_and(|e| e.exposed) && reason.is_none();
        let hostname = entry.map(|e| e.hostname.clone());
        let url = match (&hostname, exposed) {
            (Some(h), true) => Some(self.local_url(h, &server.transport)),
            _ => None,
        };
        let tunnel_url = match (&hostname, exposed, self.tunnel.get()) {
            (Some(h), true, Some(t)) => Some(t.url(h, &route_path(&server.transport))),
            _ => None,
        };
        let path = route_path(&server.transport);
        let relay = self.relay.get();
        let relay_url = match (&hostname, exposed, relay) {
            (Some(h), true, Some(r)) => r.url(h, &path),
            _ => None,
        };
        let local_url = match (&hostname, exposed, relay) {
            (Some(h), true, Some(r)) => r
                .local_port(h)
                .map(|port| format!("https://127.0.0.1:{port}{path}")),
            _ => None,
        };
        ServerView {
            id: server.id.clone(),
            name: server.name.clone(),
            transport: server.transport.redacted(),
            sources: server.sources.clone(),
            exposable: reason.is_none(),
            not_exposable_reason: reason,
            exposed,
            hostname,
            url,
            tunnel_url,
            relay_url,
            local_url,
            health: health.get(&server.id).cloned(),
        }
    }

    /// The loopback gateway URL of a server: `/<hostname>` + the path the upstream serves MCP on.
    fn local_url(&self, hostname: &str, transport: &TransportSpec) -> String {
        format!("{}/{hostname}{}", self.gateway_url(), route_path(transport))
    }

    /// Finds a server by id, unique id prefix (≥ 4 characters), name or hostname (case-insensitive).
    pub fn lookup(&self, reference: &str) -> Result<ServerView, LookupError> {
        let servers = self.servers();
        let r = reference.trim();
        if let Some(s) = servers.iter().find(|s| s.id == r) {
            return Ok(s.clone());
        }
        let lower = r.to_ascii_lowercase();
        let mut hits: Vec<&ServerView> = servers
            .iter()
            .filter(|s| {
                s.name.eq_ignore_ascii_case(r)
                    || s.hostname
                        .as_deref()
                        .is_some_and(|h| h.eq_ignore_ascii_case(r))
                    || (r.len() >= 4 && s.id.starts_with(&lower))
            })
            .collect();
        hits.dedup_by(|a, b| a.id == b.id);
        match hits.len() {
            0 => Err(LookupError::NotFound(reference.to_string())),
            1 => Ok(hits[0].clone()),
            _ => Err(LookupError::Ambiguous(
                hits.iter()
                    .map(|s| format!("{} ({})", s.id, s.name))
                    .collect(),
            )),
        }
    }

    /// Marks a server exposed in the config (atomic write) and starts serving it.
    pub async fn expose(&self, id: &str, hostname: Option<&str>) -> Result<ServerView, AgentError> {
        let _guard = self.edit_lock.lock().await;
        let server = self
            .all_servers()
            .into_iter()
            .find(|s| s.id == id)
            .ok_or_else(|| AgentError::Invalid(format!("no server with id {id}")))?;
        if let Some(reason) = not_exposable_reason(&server.transport) {
            return Err(AgentError::Invalid(format!(
                "{} cannot be exposed: {reason}",
                server.name
            )));
        }
        let config = self.config();
        let hostname = match hostname {
            Some(h) => {
                let h = h.to_ascii_lowercase();
                validate_hostname(&h)?;
                if let Some((other, _)) = config
                    .servers
                    .iter()
                    .find(|(other, e)| other.as_str() != id && e.hostname == h)
                {
                    return Err(AgentError::Invalid(format!(
                        "hostname `{h}` is already used by server {other}; choose another with --hostname"
                    )));
                }
                h
            }
            None => match config.servers.get(id) {
                Some(e) => e.hostname.clone(),
                None => unique_hostname(&server.default_hostname(), &config, id),
            },
        };
        let path = self.home.config_path();
        let name = server.name.clone();
        let host = hostname.clone();
        let id_owned = id.to_string();
        let new_config = tokio::task::spawn_blocking(move || {
            config::update(
                &path,
                Edit::Expose {
                    id: &id_owned,
                    name: &name,
                    hostname: &host,
                },
            )
        })
        .await
        .map_err(|e| AgentError::Invalid(e.to_string()))??;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new_config;
        self.reconcile_locked().await;
        self.emit(Event::ServersChanged);
        self.lookup(id)
            .map_err(|_| AgentError::Invalid(format!("server {id} vanished")))
    }

    pub async fn unexpose(&self, id: &str) -> Result<(), AgentError> {
        let _guard = self.edit_lock.lock().await;
        let path = self.home.config_path();
        let id_owned = id.to_string();
        let new_config = tokio::task::spawn_blocking(move || {
            config::update(&path, Edit::Unexpose { id: &id_owned })
        })
        .await
        .map_err(|e| AgentError::Invalid(e.to_string()))??;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new_config;
        self.reconcile_locked().await;
        self.emit(Event::ServersChanged);
        Ok(())
    }

    pub async fn set_gateway_port(&self, port: u16) -> Result<(), AgentError> {
        let _guard = self.edit_lock.lock().await;
        let path = self.home.config_path();
        let new_config =
            tokio::task::spawn_blocking(move || config::update(&path, Edit::SetGatewayPort(port)))
                .await
                .map_err(|e| AgentError::Invalid(e.to_string()))??;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new_config;
        Ok(())
    }

    /// Applies a config edit (atomic write, off the async threads) under the edit lock.
    pub async fn edit_config<F>(&self, edit: F) -> Result<(), AgentError>
    where
        F: FnOnce(&std::path::Path) -> Result<Config, AgentError> + Send + 'static,
    {
        let _guard = self.edit_lock.lock().await;
        self.edit_config_locked(edit).await
    }

    async fn edit_config_locked<F>(&self, edit: F) -> Result<(), AgentError>
    where
        F: FnOnce(&std::path::Path) -> Result<Config, AgentError> + Send + 'static,
    {
        let path = self.home.config_path();
        let new_config = tokio::task::spawn_blocking(move || edit(&path))
            .await
            .map_err(|e| AgentError::Invalid(e.to_string()))??;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = new_config;
        Ok(())
    }

    /// Makes the gateway serve exactly the exposed servers that discovery currently finds.
    pub async fn reconcile(&self) {
        let _guard = self.edit_lock.lock().await;
        self.reconcile_locked().await;
    }

    async fn reconcile_locked(&self) {
        let config = self.config();
        let mut desired: BTreeMap<String, Route> = BTreeMap::new();
        for server in self.all_servers() {
            let Some(entry) = config.servers.get(&server.id) else {
                continue;
            };
            if !entry.exposed || not_exposable_reason(&server.transport).is_some() {
                continue;
            }
            let upstream = match &server.transport {
                TransportSpec::Stdio {
                    command,
                    args,
                    env,
                    cwd,
                } => UpstreamSpec::Stdio {
                    command: command.clone(),
                    args: args.clone(),
                    env: env.clone(),
                    cwd: cwd.clone(),
                },
                TransportSpec::StreamableHttp { url, .. } => {
                    UpstreamSpec::Http { url: url.clone() }
                }
                TransportSpec::Sse { .. } => continue,
            };
            desired.insert(
                server.id.clone(),
                Route {
                    id: server.id.clone(),
                    slug: entry.hostname.clone(),
                    upstream,
                },
            );
        }
        // Routes imported from an Anthropic proxy config: subdomain (or full host) → scheme://host:port.
        let mut host_keys: Vec<(String, String)> = desired
            .values()
            .map(|r| (r.slug.clone(), r.id.clone()))
            .collect();
        if let Some(anthropic) = &config.anthropic {
            for (key, url) in &anthropic.routes {
                let id = format!("route-{}", short_hash(key));
                let slug = if validate_hostname(key).is_ok() {
                    key.clone()
                } else {
                    id.clone()
                };
                if desired.values().any(|r| r.slug == slug) {
                    tracing::warn!(route = %key, "an exposed server already uses this hostname; the imported route is ignored");
                    continue;
                }
                host_keys.push((key.clone(), id.clone()));
                desired.insert(
                    id.clone(),
                    Route {
                        id,
                        slug,
                        upstream: UpstreamSpec::Http { url: url.clone() },
                    },
                );
            }
        }
        let mut applied = self.applied.lock().await;
        let stale: Vec<String> = applied
            .keys()
            .filter(|id| !desired.contains_key(*id))
            .cloned()
            .collect();
        for id in stale {
            tracing::info!(server = %id, "unexposing");
            self.gateway.unexpose(&id).await;
            applied.remove(&id);
        }
        for (id, route) in desired {
            if applied.get(&id) == Some(&route) {
                continue;
            }
            tracing::info!(server = %id, hostname = %route.slug, "exposing");
            match self.gateway.expose(route.clone()).await {
                Ok(()) => {
                    applied.insert(id, route);
                }
                Err(e) => tracing::warn!(server = %id, error = %e, "could not expose"),
            }
        }
        if let Some(tunnel) = self.tunnel.get() {
            let mut table = airlock_ingress::HostTable::new(&tunnel.domain);
            for (key, id) in host_keys.iter().filter(|(_, id)| applied.contains_key(id)) {
                table.insert(key, id);
            }
            tunnel.terminator.set_hosts(table);
        }
        if let Some(relay) = self.relay.get() {
            let live: Vec<(String, String)> = host_keys
                .iter()
                .filter(|(_, id)| applied.contains_key(id))
                .cloned()
                .collect();
            relay.set_hosts(&live);
            if relay.has_local_ports() {
                let wanted: Vec<(String, String, Option<u16>)> = applied
                    .values()
                    .filter_map(|r| {
                        let entry = config.servers.get(&r.id)?;
                        Some((r.id.clone(), r.slug.clone(), entry.local_port))
                    })
                    .collect();
                drop(applied);
                for (id, port) in relay.sync_local_ports(&wanted).await {
                    let result = self
                        .edit_config_locked(move |path| {
                            config::update(path, Edit::SetLocalPort { id: &id, port })
                        })
                        .await;
                    if let Err(e) = result {
                        tracing::warn!(error = %e, "could not record a loopback port in config.toml");
                    }
                }
            }
        }
    }
}

/// A stable short id for a config key.
fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..4])
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

/// `None` when the gateway can serve this transport; otherwise why not, in words for the user.
pub fn not_exposable_reason(transport: &TransportSpec) -> Option<String> {
    match transport {
        TransportSpec::Stdio { .. } => None,
        TransportSpec::Sse { .. } => Some(
            "it uses the deprecated HTTP+SSE transport, which the gateway does not proxy; use its Streamable HTTP endpoint"
                .into(),
        ),
        TransportSpec::StreamableHttp { url, .. } => match url_host(url) {
            Some(host) if host_is_local(&host) => None,
            Some(_) => Some("it is a remote server, already reachable without Airlock".into()),
            None => Some(format!("its URL `{url}` has no host Airlock can parse")),
        },
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h.to_string());
    }
    Some(authority.split(':').next()?.to_ascii_lowercase())
}

fn host_is_local(host: &str) -> bool {
    if host == "localhost" {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.is_loopback() || v4.is_private(),
        // Private IPv6 is not proxied by default (Anthropic's proxy is IPv4-only); `allowed_ips` can list it.
        Ok(IpAddr::V6(v6)) => v6.is_loopback(),
        Err(_) => false,
    }
}

/// The path a route serves MCP on: `/mcp` for bridged stdio servers, the upstream's own path otherwise.
fn route_path(transport: &TransportSpec) -> String {
    match transport {
        TransportSpec::StreamableHttp { url, .. } | TransportSpec::Sse { url, .. } => {
            upstream_path(url)
        }
        TransportSpec::Stdio { .. } => "/mcp".to_string(),
    }
}

/// The path (and query) of an upstream URL, `/` when it has none.
fn upstream_path(url: &str) -> String {
    let Some((_, rest)) = url.split_once("://") else {
        return "/".into();
    };
    match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => rest[i..].to_string(),
        Some(i) => format!("/{}", &rest[i..]),
        None => "/".into(),
    }
}

/// Hostnames are single DNS labels: later they become `<label>.<tunnel domain>`.
pub fn validate_hostname(h: &str) -> Result<(), AgentError> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !h.starts_with('-')
        && !h.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(AgentError::Invalid(format!(
            "`{h}` is not a valid hostname: use 1-63 characters a-z, 0-9 and '-', not starting or ending with '-'"
        )))
    }
}

fn unique_hostname(base: &str, config: &Config, id: &str) -> String {
    let taken = |h: &str| {
        config
            .servers
            .iter()
            .any(|(other, e)| other != id && e.hostname == h)
    };
    if !taken(base) {
        return base.to_string();
    }
    (2..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = base.len().min(63 - suffix.len());
            format!("{}{suffix}", &base[..keep])
        })
        .find(|h| !taken(h))
        .unwrap_or_else(|| base.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposability() {
        let http = |url: &str| TransportSpec::StreamableHttp {
            url: url.into(),
            headers: Default::default(),
        };
        assert!(not_exposable_reason(&http("http://127.0.0.1:3001/mcp")).is_none());
        assert!(not_exposable_reason(&http("http://localhost:3001/mcp")).is_none());
        assert!(not_exposable_reason(&http("http://192.168.1.4/mcp")).is_none());
        assert!(not_exposable_reason(&http("http://[::1]:80/mcp")).is_none());
        assert!(not_exposable_reason(&http("https://mcp.example.com/mcp")).is_some());
        assert!(not_exposable_reason(&http("https://8.8.8.8/mcp")).is_some());
        assert!(not_exposable_reason(&http("http://user@10.0.0.1.evil.com/")).is_some());
    }

    #[test]
    fn paths() {
        assert_eq!(upstream_path("http://127.0.0.1:3001/mcp"), "/mcp");
        assert_eq!(upstream_path("http://127.0.0.1:3001"), "/");
        assert_eq!(upstream_path("http://127.0.0.1:3001?x=1"), "/?x=1");
        assert_eq!(upstream_path("http://127.0.0.1:3001/a/b?x=1"), "/a/b?x=1");
    }

    #[test]
    fn hostnames() {
        assert!(validate_hostname("everything").is_ok());
        assert!(validate_hostname("a-1").is_ok());
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"x".repeat(64)] {
            assert!(validate_hostname(bad).is_err(), "{bad}");
        }
        let mut config = Config::default();
        config.servers.insert(
            "other".into(),
            config::ServerConfig {
                name: "x".into(),
                hostname: "time".into(),
                exposed: true,
                local_port: None,
            },
        );
        assert_eq!(unique_hostname("time", &config, "me"), "time-2");
        assert_eq!(unique_hostname("time", &config, "other"), "time");
    }
}
