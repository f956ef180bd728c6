//! The Airlock agent: the composition of discovery, the gateway and the control API, shared by `airlock up` and the
//! tray app.
//!
//! Layout:
//! - [`config`]: `config.toml`, the user's intent, edited atomically without losing comments;
//! - [`home`]: the layout of `AIRLOCK_HOME` and the 0600 runtime file (`run/agent.json`);
//! - [`state`]: live state — discovered servers, exposure, and `reconcile`, which makes the gateway match them;
//! - [`api`]: the local control API (token + Host + Origin checks) and its event stream;
//! - [`client`]: the control API client the CLI and tray use to talk to a running agent;
//! - [`tunnel`]: the Anthropic tunnel ingress; [`relay`]: the Airlock relay path (relay nodes or the embedded relay).
//!
//! [`run`] starts everything and returns after a graceful shutdown.

pub mod api;
pub mod client;
pub mod config;
pub mod error;
pub mod home;
pub mod oauth;
pub mod pki_store;
pub mod relay;
pub mod sandbox;
pub mod state;
pub mod tunnel;
pub mod web;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use airlock_discovery::{DiscoveryEnv, ProbeOptions, Snapshot};
use airlock_gateway::{Gateway, GatewayOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use error::AgentError;
pub use home::{AirlockHome, RuntimeInfo};
pub use state::{AgentState, Event};

/// How often running loopback servers are probed again.
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
/// How long the control API may take to close its connections on shutdown.
const API_DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub home: AirlockHome,
    /// Overrides (and persists) the loopback gateway port.
    pub gateway_port: Option<u16>,
    /// Where discovery looks; `None` = this process's HOME and environment.
    pub discovery_env: Option<DiscoveryEnv>,
    /// Overrides `[keystore] backend` from config.toml.
    pub keystore: Option<airlock_keystore::KeystoreChoice>,
}

/// Runs the agent until `shutdown` is cancelled, then drains: in-flight requests finish, children are stopped.
pub async fn run(opts: AgentOptions, shutdown: CancellationToken) -> Result<(), AgentError> {
    let home = opts.home.clone();
    home.ensure_dirs()?;
    if let Some(info) = home.read_runtime()
        && info.pid != std::process::id()
        && home::pid_alive(info.pid)
    {
        return Err(AgentError::AlreadyRunning {
            home: home.root().to_path_buf(),
            pid: info.pid,
        });
    }
    let mut config = config::load(&home.config_path())?;
    let keystore =
        home::open_keystore(&home, config.keystore.backend.as_deref(), opts.keystore).await?;
    tracing::info!(backend = %keystore.backend(), "keystore opened");
    // Homes from before OAuth kept a shared gateway token in the keystore; it grants nothing any more.
    if let Err(e) = keystore.delete("gateway-token").await {
        tracing::warn!(error = %e, "could not remove the old gateway token from the keystore");
    }

    // The gateway port is chosen once and kept, so URLs handed to clients survive restarts.
    let wanted_port = opts.gateway_port.or(config.gateway.port).unwrap_or(0);
    let gateway_listener = bind(wanted_port).await?;
    let gateway_port = gateway_listener
        .local_addr()
        .map_err(|e| AgentError::Invalid(e.to_string()))?
        .port();
    if config.gateway.port != Some(gateway_port) {
        config = config::update(
            &home.config_path(),
            config::Edit::SetGatewayPort(gateway_port),
        )?;
    }
    let api_listener = bind(0).await?;
    let api_port = api_listener
        .local_addr()
        .map_err(|e| AgentError::Invalid(e.to_string()))?
        .port();

    let mut discovery_env = opts
        .discovery_env
        .unwrap_or_else(DiscoveryEnv::from_process);
    discovery_env
        .project_dirs
        .extend(config.discovery.project_dirs.iter().cloned());
    let initial = tokio::task::spawn_blocking({
        let env = discovery_env.clone();
        move || airlock_discovery::scan(&env)
    })
    .await
    .map_err(|e| AgentError::Invalid(e.to_string()))?;
    tracing::info!(
        servers = initial.servers.len(),
        diagnostics = initial.diagnostics.len(),
        "discovery scan done"
    );
    for d in &initial.diagnostics {
        tracing::warn!(file = %d.path.display(), line = ?d.line, "{}", d.message);
    }
    let (snapshot_tx, snapshot_rx) = watch::channel::<Arc<Snapshot>>(Arc::new(initial));
    let _watcher = match airlock_discovery::watch(discovery_env, snapshot_tx) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "config files will not be watched; restart the agent to see changes");
            None
        }
    };

    // Upstream IP validation follows the proxy's `upstream` block: allowed_ips replaces the RFC 1918 default.
    let policy = match &config.anthropic {
        Some(a) => airlock_egress::IpPolicy::from_config(
            &a.upstream.allowed_ips,
            a.upstream.disable_ip_validation,
        )
        .map_err(|e| AgentError::Invalid(format!("[anthropic.upstream] in config.toml: {e}")))?,
        None => airlock_egress::IpPolicy::default(),
    };
    let gateway = Gateway::new(GatewayOptions {
        egress: airlock_gateway::Egress {
            policy,
            ..Default::default()
        },
        ..GatewayOptions::default()
    });
    let probe_running = config.discovery.probe_running;
    let anthropic = config.anthropic.clone();
    let keystore = Arc::new(keystore);
    let state = Arc::new(AgentState::new(
        home.clone(),
        keystore.clone(),
        config,
        gateway.clone(),
        gateway_port,
        snapshot_rx.clone(),
    ));
    let _ = state.api_port.set(api_port);
    let sandbox_control = Arc::new(sandbox::SandboxControl::new());
    let _ = state.sandbox.set(sandbox_control.clone());

    let tasks = tokio_util::task::TaskTracker::new();
    let stop_tasks = shutdown.child_token();

    // Gateway ingress on loopback.
    let ingress_stop = CancellationToken::new();
    // OAuth 2.1 (resource server + authorization server) on every ingress: loopback, Anthropic tunnel, relay. No
    // other credential is accepted.
    let remote_approval = state.config().oauth.remote_approval;
    let (oauth_server, resource_server, audit_recorded) = oauth::open(
        home.root().join("oauth.sqlite"),
        &gateway,
        gateway_port,
        remote_approval,
    )
    .await?;
    let _ = state.oauth.set(oauth_server.clone());
    let ingress = tokio::spawn(airlock_gateway::serve_loopback(
        gateway.clone(),
        gateway_listener,
        resource_server.clone(),
        ingress_stop.clone(),
    ));
    if let Some(anthropic) = &anthropic {
        tunnel::start(
            &state,
            keystore.clone(),
            anthropic,
            resource_server.clone().into(),
            &tasks,
            ingress_stop.clone(),
        )
        .await?;
    }
    let relay_config = state.config();
    if relay::wanted(&relay_config) {
        relay::start(
            &state,
            resource_server.clone(),
            &tasks,
            ingress_stop.clone(),
        )
        .await?;
    }

    // Control API.
    let api_token = home::random_token();
    let app = api::router(state.clone(), api_token.clone(), api_port, shutdown.clone());
    let api_stop = shutdown.clone();
    let api_server = tokio::spawn(async move {
        axum::serve(api_listener, app)
            .with_graceful_shutdown(async move { api_stop.cancelled().await })
            .await
    });

    // Re-reconcile whenever discovery changes; forward gateway health to the event stream.
    tasks.spawn(watch_discovery(
        state.clone(),
        snapshot_rx,
        stop_tasks.clone(),
    ));
    tasks.spawn(forward_health(state.clone(), stop_tasks.clone()));
    tasks.spawn(forward_oauth(
        state.clone(),
        oauth_server,
        stop_tasks.clone(),
    ));
    tasks.spawn(forward_audit(
        state.clone(),
        audit_recorded,
        stop_tasks.clone(),
    ));
    if probe_running {
        tasks.spawn(probe_loop(
            state.clone(),
            vec![gateway_port, api_port],
            stop_tasks.clone(),
        ));
    }

    state.reconcile().await;
    home.write_runtime(&RuntimeInfo {
        pid: std::process::id(),
        api_url: format!("http://127.0.0.1:{api_port}"),
        token: api_token,
    })?;
    state.set_ready();
    tracing::info!(
        gateway = %state.gateway_url(),
        api = %format!("http://127.0.0.1:{api_port}"),
        home = %home.root().display(),
        "airlock is ready"
    );
    let relay_ca = state.relay.get().and_then(|r| r.ca_path());
    for view in state.servers().iter().filter(|s| s.exposed) {
        // The URL that works on this machine: the embedded relay's loopback URL, else the gateway's.
        match (&view.local_url, &view.url) {
            (Some(url), _) => tracing::info!(
                server = %view.name,
                %url,
                ca = %relay_ca.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                relay_url = ?view.relay_url,
                "exposed: trust the CA file and send the bearer token from `airlock url`"
            ),
            (None, Some(url)) => {
                tracing::info!(server = %view.name, %url, tunnel_url = ?view.tunnel_url, relay_url = ?view.relay_url, "exposed")
            }
            _ => {}
        }
    }
    if let Some(relay) = state.relay.get() {
        match (&relay.embedded, relay.domain()) {
            (Some(e), Some(d)) => {
                tracing::info!(public = %e.public_addr, tunnel_domain = %d, ca = ?relay.ca_path(), "embedded relay ready: `airlock url <server>` prints each server's https://127.0.0.1 URL")
            }
            (None, d) => {
                tracing::info!(nodes = relay.nodes().len(), tunnel_domain = ?d, "connecting to relay nodes")
            }
            _ => {}
        }
    }

    sandbox_control.start_if_enabled(&state).await;

    shutdown.cancelled().await;
    tracing::info!("shutting down: draining requests and stopping servers");
    sandbox_control.stop(&state).await;
    stop_tasks.cancel();
    tasks.close();
    // Every stream of ours ends on shutdown; a connection that still lingers (a slow client) is cut after a bound.
    let mut api_server = api_server;
    if tokio::time::timeout(API_DRAIN, &mut api_server)
        .await
        .is_err()
    {
        tracing::warn!("control API connections still open after {API_DRAIN:?}; closing them");
        api_server.abort();
    }
    gateway.shutdown().await;
    ingress_stop.cancel();
    let _ = ingress.await;
    tasks.wait().await;
    home.remove_runtime(std::process::id());
    tracing::info!("stopped");
    Ok(())
}

async fn bind(port: u16) -> Result<TcpListener, AgentError> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr)
        .await
        .map_err(|source| AgentError::Listen {
            addr: addr.to_string(),
            source,
        })
}

async fn watch_discovery(
    state: Arc<AgentState>,
    mut rx: watch::Receiver<Arc<Snapshot>>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let snapshot = rx.borrow_and_update().clone();
                tracing::info!(servers = snapshot.servers.len(), diagnostics = snapshot.diagnostics.len(), "discovery changed");
                state.reconcile().await;
                state.emit(Event::ServersChanged);
            }
        }
    }
}

/// Approval and grant events of the authorization server, on the agent's event stream.
async fn forward_oauth(
    state: Arc<AgentState>,
    server: airlock_oauth::AuthServer,
    stop: CancellationToken,
) {
    let mut rx = server.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            msg = rx.recv() => match msg {
                Ok(event) => state.emit(Event::Oauth { event }),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

/// New audit records as `{"type":"audit"}` events, at most one per [`AUDIT_EVENT_INTERVAL`]: a burst of calls is
/// one event (sent after the burst's first record), so a view refetches the log instead of polling it.
async fn forward_audit(
    state: Arc<AgentState>,
    recorded: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = recorded.notified() => {}
        }
        // Let the record (and the rest of a burst) reach the log; readers flush the writer queue anyway.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(AUDIT_EVENT_INTERVAL) => {}
        }
        state.emit(Event::Audit);
    }
}

/// The shortest time between two `audit` events.
pub const AUDIT_EVENT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

async fn forward_health(state: Arc<AgentState>, stop: CancellationToken) {
    let mut rx = state.gateway.subscribe();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            msg = rx.recv() => match msg {
                Ok(status) => state.emit(Event::Health(status)),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => state.emit(Event::ServersChanged),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

async fn probe_loop(state: Arc<AgentState>, own_ports: Vec<u16>, stop: CancellationToken) {
    let opts = ProbeOptions {
        exclude_ports: own_ports,
        ..ProbeOptions::default()
    };
    loop {
        // The embedded relay's listeners are ours too.
        let mut opts = opts.clone();
        if let Some(relay) = state.relay.get() {
            if let Some(e) = &relay.embedded {
                opts.exclude_ports.push(e.public_addr.port());
                opts.exclude_ports.push(e.tunnel_addr.port());
            }
            for s in state.servers() {
                if let Some(port) = s.hostname.as_deref().and_then(|h| relay.local_port(h)) {
                    opts.exclude_ports.push(port);
                }
            }
        }
        let found = tokio::select! {
            _ = stop.cancelled() => return,
            found = airlock_discovery::probe_running(&opts) => found,
        };
        if state.set_running(found) {
            state.reconcile().await;
            state.emit(Event::ServersChanged);
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
        }
    }
}
