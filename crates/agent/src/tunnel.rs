//! The Anthropic-compatible tunnel ingress: the role of Anthropic's `mcp-proxy` container, run by the agent.
//!
//! cloudflared (supervised here when a tunnel token is stored) connects to a plain WebSocket listener; the inner TLS
//! inside it ends in [`airlock_ingress::Terminator`] with a certificate from the per-domain CA whose key is in the
//! keystore. The certificate is renewed in place, 30 days before it expires, without restarting listeners.

use std::sync::Arc;
use std::time::Duration;

use airlock_ingress::{HostTable, InnerTls, Terminator};
use airlock_keystore::Keystore;
use airlock_tunnel::{CloudflaredOptions, CloudflaredSupervisor, TunnelToken};
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AnthropicConfig;
use crate::error::AgentError;
use crate::pki_store::PkiStore;
use crate::state::{AgentState, TunnelRuntime};

/// Keystore entry of cloudflared's tunnel token.
pub const CLOUDFLARED_TOKEN: &str = "cloudflared-token";
/// How often the server certificate's remaining validity is checked.
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// Starts the WebSocket listener, the renewal task and (with a stored token) cloudflared.
pub async fn start(
    state: &Arc<AgentState>,
    keystore: Arc<Keystore>,
    config: &AnthropicConfig,
    auth: airlock_gateway::Protection,
    tasks: &TaskTracker,
    stop: CancellationToken,
) -> Result<(), AgentError> {
    let pki_root = state.home.root().join("pki");
    let validity = config.validity()?;
    let store = PkiStore::new(&pki_root, &config.tunnel_domain, &keystore, validity)?;
    let domain = store.domain().to_string();
    let cert = store.server_cert(OffsetDateTime::now_utc()).await?;
    let tls = InnerTls::new(&cert.chain_pem, cert.key_pem.expose())
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let terminator = Terminator::new(state.gateway.clone(), tls, HostTable::new(&domain), auth);

    let listener = TcpListener::bind(&config.listen_addr)
        .await
        .map_err(|source| AgentError::Listen {
            addr: config.listen_addr.clone(),
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    if !local.ip().is_loopback() {
        tracing::warn!(addr = %local, "the tunnel listener is reachable beyond this machine (listen_addr in config.toml)");
    }

    let pid_file = state.home.root().join("run").join("cloudflared.pid");
    stop_stale_connector(&pid_file).await;
    let connector = Arc::new(Connector {
        url: format!("http://{local}"),
        pid_file,
        tasks: tasks.clone(),
        stop: stop.clone(),
        running: tokio::sync::Mutex::new(None),
        state: std::sync::Mutex::new(None),
    });
    match keystore.get(CLOUDFLARED_TOKEN).await {
        Ok(Some(token)) => match token.expose_str() {
            Ok(token) => connector.start(token).await,
            Err(_) => {
                tracing::warn!(
                    "the stored cloudflared token is not text; set it again with `airlock tunnel set-token`"
                );
            }
        },
        Ok(None) => {
            tracing::info!(
                "no cloudflared token stored: the tunnel listener waits for a connector you run yourself"
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the cloudflared token");
        }
    }
    {
        // On shutdown the connector goes too (and its pid file).
        let connector = connector.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            stop.cancelled().await;
            connector.stop_current().await;
        });
    }

    tasks.spawn(airlock_ingress::serve_websocket(
        listener,
        terminator.clone(),
        config.allowed_origins.clone(),
        stop.clone(),
    ));
    // Check often enough to renew inside the window: a quarter of it, between a second and an hour.
    let check = Duration::try_from(validity.renew_before / 4)
        .unwrap_or(RENEW_CHECK)
        .clamp(Duration::from_secs(1), RENEW_CHECK);
    tasks.spawn(renew_loop(
        state.clone(),
        keystore,
        config.tunnel_domain.clone(),
        check,
        stop,
    ));
    let runtime = TunnelRuntime {
        domain: domain.clone(),
        listen_addr: local.to_string(),
        terminator,
        cloudflared: connector,
        validity,
    };
    if state.tunnel.set(runtime).is_err() {
        return Err(AgentError::Invalid(
            "the tunnel ingress was started twice".into(),
        ));
    }
    tracing::info!(%domain, listen = %local, "Anthropic tunnel ingress listening (WebSocket, inner TLS)");
    Ok(())
}

/// cloudflared for the tunnel listener: started with the stored token at agent start and restarted when a new token
/// is stored (`POST /v1/tunnel/token`).
pub struct Connector {
    url: String,
    pid_file: std::path::PathBuf,
    tasks: TaskTracker,
    stop: CancellationToken,
    running: tokio::sync::Mutex<Option<(CloudflaredSupervisor, CancellationToken)>>,
    state: std::sync::Mutex<Option<tokio::sync::watch::Receiver<airlock_tunnel::CloudflaredState>>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Connector {
    /// The supervisor's state; `None` when no connector was started (no token stored).
    pub fn state(&self) -> Option<airlock_tunnel::CloudflaredState> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|rx| rx.borrow().clone())
    }

    /// (Re)starts cloudflared with `token`: a running connector is stopped first. A no-op once the agent stops.
    pub async fn start(&self, token: &str) {
        let mut running = self.running.lock().await;
        if self.stop.is_cancelled() {
            return;
        }
        if let Some((sup, cancel)) = running.take() {
            cancel.cancel();
            sup.shutdown().await;
        }
        let sup = CloudflaredSupervisor::start(
            CloudflaredOptions::new(self.url.clone()),
            TunnelToken::new(token.trim().to_string()),
        );
        let rx = sup.state();
        let cancel = self.stop.child_token();
        self.tasks.spawn(record_connector_pid(
            rx.clone(),
            self.pid_file.clone(),
            cancel.clone(),
        ));
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some(rx);
        *running = Some((sup, cancel));
    }

    async fn stop_current(&self) {
        if let Some((sup, cancel)) = self.running.lock().await.take() {
            cancel.cancel();
            sup.shutdown().await;
            let _ = std::fs::remove_file(&self.pid_file);
        }
    }
}

/// Keeps `run/cloudflared.pid` naming the running connector, so an agent that was killed without cleaning up (SIGKILL,
/// power loss) can stop the orphan at its next start instead of running a second connector with the same token.
async fn record_connector_pid(
    mut rx: tokio::sync::watch::Receiver<airlock_tunnel::CloudflaredState>,
    pid_file: std::path::PathBuf,
    stop: CancellationToken,
) {
    loop {
        let pid = match &*rx.borrow_and_update() {
            airlock_tunnel::CloudflaredState::Running { pid, .. } => Some(*pid),
            _ => None,
        };
        if let Some(pid) = pid {
            let _ = crate::config::write_atomic(&pid_file, pid.to_string().as_bytes(), 0o600);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => if changed.is_err() { return },
        }
    }
}

/// Stops a connector left behind by a previous agent of this home (only if that pid still runs cloudflared).
async fn stop_stale_connector(pid_file: &std::path::Path) {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return;
    };
    let _ = std::fs::remove_file(pid_file);
    let Ok(pid) = text.trim().parse::<u32>() else {
        return;
    };
    #[cfg(target_os = "linux")]
    {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if cmdline.contains("tunnel") && cmdline.contains("run") && cmdline.contains("--url") {
            tracing::warn!(
                pid,
                "stopping a cloudflared left running by a previous agent"
            );
            let _ = tokio::process::Command::new("kill")
                .arg(pid.to_string())
                .status()
                .await;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = pid;
}

/// Reloads the server certificate from the PKI store (renewing it when due); a no-op when unchanged.
pub async fn reload_certificate(
    state: &AgentState,
    keystore: &Keystore,
    domain: &str,
) -> Result<bool, AgentError> {
    let Some(tunnel) = state.tunnel.get() else {
        return Ok(false);
    };
    let store = PkiStore::new(
        &state.home.root().join("pki"),
        domain,
        keystore,
        tunnel.validity,
    )?;
    let cert = store.server_cert(OffsetDateTime::now_utc()).await?;
    if cert.cert_der == tunnel.terminator.tls().current_leaf_der() {
        return Ok(false);
    }
    tunnel
        .terminator
        .tls()
        .set_certificate(&cert.chain_pem, cert.key_pem.expose())
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    tracing::info!(not_after = %cert.not_after, "serving a new inner-TLS certificate");
    Ok(true)
}

async fn renew_loop(
    state: Arc<AgentState>,
    keystore: Arc<Keystore>,
    domain: String,
    check: Duration,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(check) => {}
        }
        if let Err(e) = reload_certificate(&state, &keystore, &domain).await {
            tracing::warn!(error = %e, "certificate renewal failed; retrying");
        }
    }
}

/// Converts Anthropic's proxy `config.yaml` into Airlock's `[anthropic]` section. Returns notes for the user.
pub fn import_proxy_config(
    proxy: &airlock_tunnel::ProxyConfig,
) -> Result<(AnthropicConfig, Vec<String>), AgentError> {
    let mut notes = proxy.warnings();
    if proxy.tunnel_domain.is_empty() {
        return Err(AgentError::Invalid(
            "the proxy config has no tunnel_domain; Airlock needs it to issue the inner-TLS certificate".into(),
        ));
    }
    // `:8080` means every interface in the proxy's container; on a laptop nothing listens beyond loopback unless the
    // user asks for it.
    let listen_addr = match proxy.listen_addr.strip_prefix(':') {
        Some(port) => {
            notes.push(format!(
                "listen_addr `{}` became 127.0.0.1:{port} (edit config.toml to listen beyond this machine)",
                proxy.listen_addr
            ));
            format!("127.0.0.1:{port}")
        }
        None => proxy.listen_addr.clone(),
    };
    if !proxy.tls.cert_file.as_os_str().is_empty() {
        notes.push(format!(
            "the proxy's certificate ({}) is not imported: Airlock issues its own from a CA whose key stays in the \
             keystore — register `airlock ca export` in the Console next to the current CA",
            proxy.tls.cert_file.display()
        ));
    }
    if proxy.upstream.tls.ca_file.is_some() || proxy.upstream.tls.include_system_cas {
        notes.push("https:// upstreams are not proxied yet; those routes will fail".into());
    }
    let routes = proxy
        .routes
        .values()
        .map(|r| (r.name.clone(), r.upstream.url()))
        .collect();
    Ok((
        AnthropicConfig {
            tunnel_domain: proxy.tunnel_domain.clone(),
            listen_addr,
            allowed_origins: Vec::new(),
            routes,
            upstream: crate::config::UpstreamConfig {
                allowed_ips: proxy
                    .upstream
                    .allowed_ips
                    .iter()
                    .map(|n| n.to_string())
                    .collect(),
                disable_ip_validation: proxy.upstream.disable_ip_validation,
            },
            cert_duration: None,
            renew_before: None,
        },
        notes,
    ))
}

/// Writes Airlock's `[anthropic]` section back as a proxy `config.yaml` (routes that Anthropic's proxy can serve:
/// imported ones and exposed local HTTP servers; bridged stdio servers exist only in Airlock).
pub fn export_proxy_config(
    section: &AnthropicConfig,
    exposed_http: &[(String, String)],
    cert_file: &std::path::Path,
    key_file: &std::path::Path,
) -> Result<String, AgentError> {
    use airlock_tunnel::anthropic_config::{LogLevel, TlsFiles, UpstreamSettings, UpstreamTls};
    let mut routes = std::collections::BTreeMap::new();
    for (name, url) in section
        .routes
        .iter()
        .chain(exposed_http.iter().map(|(a, b)| (a, b)))
    {
        let origin = origin_of(url);
        let upstream = airlock_tunnel::Upstream::parse(&origin)
            .map_err(|e| AgentError::Invalid(format!("route {name}: {e}")))?;
        routes.insert(
            name.to_ascii_lowercase(),
            airlock_tunnel::Route {
                name: name.clone(),
                upstream,
            },
        );
    }
    let allowed_ips = section
        .upstream
        .allowed_ips
        .iter()
        .map(|e| airlock_egress::parse_ip_entry(e))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    let listen_port = section.listen_addr.rsplit(':').next().unwrap_or("8080");
    let proxy = airlock_tunnel::ProxyConfig {
        listen_addr: format!(":{listen_port}"),
        log_level: LogLevel::Info,
        shutdown_timeout: airlock_tunnel::anthropic_config::DEFAULT_SHUTDOWN_TIMEOUT,
        tunnel_domain: section.tunnel_domain.clone(),
        tls: TlsFiles {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
        },
        routes,
        upstream: UpstreamSettings {
            allowed_ips,
            disable_ip_validation: section.upstream.disable_ip_validation,
            tls: UpstreamTls::default(),
        },
    };
    proxy
        .to_yaml()
        .map_err(|e| AgentError::Invalid(e.to_string()))
}

/// `scheme://host:port` of a URL, with the scheme's default port made explicit (the proxy requires a port).
fn origin_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("http", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    let has_port = authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.ends_with('[') && p.bytes().all(|b| b.is_ascii_digit()) && !authority.ends_with(']')
    });
    if has_port {
        format!("{scheme}://{authority}")
    } else {
        let port = if scheme == "https" { 443 } else { 80 };
        format!("{scheme}://{authority}:{port}")
    }
}

/// Stores cloudflared's tunnel token in the keystore (`airlock tunnel set-token`, `POST /v1/tunnel/token`).
/// The token is trimmed; an empty one, one with inner whitespace or control characters, or one over 8 KiB is refused.
pub async fn store_token(keystore: &Keystore, token: &str) -> Result<(), AgentError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(AgentError::Invalid(
            "the cloudflared token is empty; copy it from the Console's tunnel page".into(),
        ));
    }
    if token.len() > 8192 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AgentError::Invalid(
            "that does not look like a cloudflared tunnel token (one line of base64, no spaces)"
                .into(),
        ));
    }
    keystore
        .set(CLOUDFLARED_TOKEN, &airlock_keystore::Secret::from(token))
        .await
        .map_err(|e| AgentError::Keystore(format!("storing the cloudflared token: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_keystore_that_cannot_write_is_a_keystore_error_not_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = dir.path().join("secrets");
        let ks = airlock_keystore::open(
            airlock_keystore::KeystoreChoice::File,
            &airlock_keystore::Namespace::for_home(dir.path()),
            &secrets,
        )
        .await
        .unwrap();
        assert!(matches!(
            store_token(&ks, "   ").await,
            Err(AgentError::Invalid(_))
        ));
        // The directory vanishes and a file takes its place: storing fails on the keystore's side.
        std::fs::remove_dir_all(&secrets).unwrap();
        std::fs::write(&secrets, "not a directory").unwrap();
        let err = store_token(&ks, "eyJhIjoiYiJ9").await.unwrap_err();
        assert!(matches!(err, AgentError::Keystore(_)), "{err:?}");
        assert!(
            err.to_string().contains("storing the cloudflared token"),
            "{err}"
        );
    }

    const YAML: &str = "listen_addr: \":8080\"\nlog_level: info\ntunnel_domain: ${TUNNEL_DOMAIN}\ntls:\n  cert_file: /data/tls.crt\n  key_file: /data/tls.key\nroutes:\n  echo: http://10.1.2.3:9000\nupstream:\n  allowed_ips: [10.0.0.0/8]\n";

    #[test]
    fn import_then_export_round_trips_what_the_proxy_understands() {
        let env = [(
            "TUNNEL_DOMAIN".to_string(),
            "abcd1234.tunnel.example".to_string(),
        )]
        .into();
        let proxy = airlock_tunnel::ProxyConfig::from_yaml_str(YAML, &env).unwrap();
        let (section, notes) = import_proxy_config(&proxy).unwrap();
        assert_eq!(section.tunnel_domain, "abcd1234.tunnel.example");
        assert_eq!(section.listen_addr, "127.0.0.1:8080");
        assert_eq!(section.routes["echo"], "http://10.1.2.3:9000");
        assert_eq!(section.upstream.allowed_ips, ["10.0.0.0/8"]);
        assert!(notes.iter().any(|n| n.contains("127.0.0.1:8080")));
        assert!(notes.iter().any(|n| n.contains("airlock ca export")));

        let exposed = vec![("files".to_string(), "http://127.0.0.1:3001/mcp".to_string())];
        let yaml = export_proxy_config(
            &section,
            &exposed,
            "/data/tls.crt".as_ref(),
            "/data/tls.key".as_ref(),
        )
        .unwrap();
        let back = airlock_tunnel::ProxyConfig::from_yaml_str(&yaml, &Default::default()).unwrap();
        assert_eq!(back.tunnel_domain, proxy.tunnel_domain);
        assert_eq!(back.listen_addr, ":8080");
        assert_eq!(back.routes["echo"].upstream, proxy.routes["echo"].upstream);
        assert_eq!(back.routes["files"].upstream.url(), "http://127.0.0.1:3001");
        assert_eq!(back.upstream.allowed_ips, proxy.upstream.allowed_ips);
    }

    #[test]
    fn origins_get_explicit_ports() {
        assert_eq!(origin_of("http://10.0.0.1/mcp"), "http://10.0.0.1:80");
        assert_eq!(origin_of("https://a.example/x"), "https://a.example:443");
        assert_eq!(
            origin_of("http://127.0.0.1:3001/mcp?x"),
            "http://127.0.0.1:3001"
        );
    }
}
