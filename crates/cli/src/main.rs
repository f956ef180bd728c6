//! `airlock`: the headless agent (`airlock up`) and the commands that talk to it through the control API.
//!
//! Exit codes: 0 success, 1 runtime error (agent not running, unknown server, refused request), 2 usage error (bad
//! flags, ambiguous server reference, confirmation needed but no terminal).

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use airlock_agent::client::{ClientError, ControlClient};
use airlock_agent::{AgentOptions, AirlockHome};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "airlock",
    version,
    about = "Expose the MCP servers on this machine to cloud agents, safely."
)]
struct Cli {
    /// State directory (config, runtime file, secrets). Default: the OS config dir + `airlock`.
    #[arg(long, env = "AIRLOCK_HOME", global = true)]
    home: Option<PathBuf>,
    /// Log format of `airlock up` (logs go to stderr; RUST_LOG filters them).
    #[arg(long, value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
    /// Where secrets live: `auto` (OS keychain, else 0600 files with a warning), `keychain` or `file`.
    /// Default: `[keystore] backend` in config.toml, else auto.
    #[arg(long, global = true, value_parser = parse_keystore)]
    keystore: Option<airlock_keystore::KeystoreChoice>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent in the foreground until SIGINT/SIGTERM.
    Up {
        /// Loopback port of the local gateway (persisted in config.toml).
        #[arg(long)]
        gateway_port: Option<u16>,
        #[command(flatten)]
        relay: RelayNodeArgs,
    },
    /// Show whether the agent runs and is ready.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List discovered MCP servers and config diagnostics.
    Servers {
        #[arg(long)]
        json: bool,
    },
    /// Serve a server through the gateway (shows the exact command first).
    Expose {
        /// Server id, unique id prefix, name or hostname.
        server: String,
        /// Hostname label (a-z, 0-9, '-'); defaults to a slug of the server's name.
        #[arg(long)]
        hostname: Option<String>,
        /// Do not ask for confirmation (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop serving a server.
    Unexpose {
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the URL (and credential) of an exposed server.
    Url {
        server: String,
        #[arg(long)]
        json: bool,
    },
    /// List pending OAuth authorization requests (id, client, redirect host, server, scopes, age).
    Approvals {
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending authorization request (optionally only some tools).
    Approve {
        id: String,
        /// Comma-separated tool names `tools/call` is limited to (default: every tool).
        #[arg(long)]
        tools: Option<String>,
        /// The code a remote approval page shows (`XXXX-XXXX`); required for requests listed as remote.
        #[arg(long)]
        code: Option<String>,
    },
    /// Deny a pending authorization request.
    Deny { id: String },
    /// List OAuth clients with their grants per server and last use.
    Clients {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a grant (gr_…), a token (tk_…) or every grant of a client (its client id).
    Revoke { id: String },
    /// Access tokens for callers without a browser (e.g. the Messages API's authorization_token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// The OAuth audit log (grants, denials, tokens, MCP calls), newest first.
    Audit {
        #[arg(long)]
        server: Option<String>,
        #[arg(long)]
        client: Option<String>,
        /// approval_requested, grant_approved, grant_denied, token_issued, token_refreshed, token_minted, revoked,
        /// client_registered, token_refused, mcp_call, …
        #[arg(long)]
        kind: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// The inner-TLS certificate authority of the tunnel domain.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Open the web UI in a browser (a one-time login link; the API token never goes to the browser).
    Ui {
        /// Print the login link instead of opening a browser.
        #[arg(long)]
        print: bool,
    },
    /// Run a self-hostable relay node (SNI passthrough: it never reads a payload), or manage its tokens.
    Relay(Box<RelayArgs>),
    /// The Anthropic MCP tunnel: switch from or to Anthropic's proxy, store cloudflared's token.
    #[command(subcommand)]
    Tunnel(TunnelCommand),
    /// The local sandbox worker for Claude Managed Agents: their tools run on this machine, inside an OS sandbox.
    #[command(subcommand)]
    Sandbox(SandboxCommand),
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Store the environment key (read from standard input, never argv) in the keystore, and the environment in
    /// config.toml. The JSON printed by `airlock relay env create` is accepted on stdin too.
    Login {
        /// API base URL: https://api.anthropic.com, or an `airlock relay --api` work queue.
        #[arg(long, default_value = "https://api.anthropic.com")]
        base_url: String,
        /// The environment's id (env_…).
        #[arg(long)]
        environment_id: String,
    },
    /// Start the worker in the running agent (refused when no OS sandbox works, unless unconfined mode is set).
    On {
        #[arg(long)]
        json: bool,
    },
    /// Stop the worker: the tool call in flight is cancelled and the session's sandbox closed.
    Off {
        #[arg(long)]
        json: bool,
    },
    /// The isolation available here, the worker's state, the current session, tool calls in flight and recent ones.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Let the sandbox reach a domain (`example.com`, or `*.example.com` for its subdomains) through its egress
    /// proxy; applies to sessions that start afterwards.
    AllowDomain { domain: String },
}

/// Relay nodes to connect to (persisted in config.toml `[relay] nodes`).
#[derive(clap::Args, Default)]
struct RelayNodeArgs {
    /// A relay node's tunnel listener, `host:port` (repeat for several nodes: one connection each).
    #[arg(long = "relay", value_name = "ADDR")]
    relay: Vec<String>,
    /// SHA-256 of the node's tunnel key (`airlock relay fingerprint` on the node); one per --relay, same order.
    #[arg(long = "relay-fingerprint", value_name = "HEX")]
    relay_fingerprint: Vec<String>,
    /// Port of the relays' public listener, for URLs (default 443).
    #[arg(long = "relay-public-port", value_name = "PORT")]
    relay_public_port: Option<u16>,
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct RelayArgs {
    #[command(subcommand)]
    command: Option<RelayCommand>,
    /// Base domain: each tunnel gets `<tunnel-id>.<BASE>`.
    #[arg(long)]
    domain: Option<String>,
    /// Public TLS port (clients; routed by SNI). Use :443 in production.
    #[arg(long, default_value = "127.0.0.1:8443")]
    public: std::net::SocketAddr,
    /// Tunnel port (agents connect here with mutual TLS 1.3).
    #[arg(long, default_value = "127.0.0.1:7443")]
    tunnel: std::net::SocketAddr,
    /// Operator port for /healthz and /metrics (keep it private).
    #[arg(long)]
    ops: Option<std::net::SocketAddr>,
    /// Relay state (operator key, tunnel certificate, bindings, revocations). Default: $AIRLOCK_HOME/relay.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Also serve the environments work queue and sessions API (the self-hosted environment protocol of
    /// Claude Managed Agents) on this address, over plain HTTP: keep it on loopback or put TLS in front.
    /// Works without --domain (then only the queue runs). Its SQLite state is <state>/envqueue.sqlite.
    #[arg(long)]
    api: Option<std::net::SocketAddr>,
}

#[derive(Subcommand)]
enum RelayCommand {
    /// Tunnel tokens, signed with the operator key and verified offline by every node.
    #[command(subcommand)]
    Token(RelayTokenCommand),
    /// Environments of the work queue that `airlock relay --api` serves.
    #[command(subcommand)]
    Env(RelayEnvCommand),
    /// Print the SHA-256 of the tunnel port's public key (SPKI), which agents pin.
    Fingerprint {
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RelayEnvCommand {
    /// Create an environment in the reference work queue; prints JSON with `environment_id`,
    /// `environment_key` (for workers) and `api_key` (for the orchestrating side), shown only now.
    Create {
        #[arg(long, default_value = "default")]
        name: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum RelayTokenCommand {
    /// Create a token for a new tunnel; prints it once (JSON with the token, tunnel domain and id).
    Create {
        #[arg(long)]
        domain: String,
        #[arg(long, default_value = "agent")]
        name: String,
        /// Validity in days (default: no expiry; revoke instead).
        #[arg(long)]
        ttl_days: Option<u64>,
        #[arg(long)]
        state: Option<PathBuf>,
    },
    /// Add a token id (`jti`) to the revocation file that nodes reload.
    Revoke {
        jti: String,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        state: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Mint an access token for one exposed server; printed once (store it now), listed under `airlock clients`.
    Create {
        /// Server id, unique id prefix, name or hostname.
        server: String,
        /// `mcp:read`, `mcp:call` or both (space- or comma-separated).
        #[arg(long, default_value = "mcp:read mcp:call")]
        scope: String,
        /// Lifetime: 3600, 90m, 12h, 30d.
        #[arg(long, default_value = "30d")]
        ttl: String,
        /// Comma-separated tool names `tools/call` is limited to.
        #[arg(long)]
        tools: Option<String>,
        /// Shown in `airlock clients`.
        #[arg(long)]
        label: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TunnelCommand {
    /// Read Anthropic's proxy `config.yaml` (routes, tunnel_domain, listen_addr, upstream.*) into config.toml.
    ImportConfig { file: PathBuf },
    /// Print a proxy `config.yaml` for Anthropic's `mcp-proxy` from Airlock's settings.
    ExportConfig {
        /// Paths written into `tls.cert_file` / `tls.key_file` (the proxy's container paths).
        #[arg(long, default_value = "/data/tls.crt")]
        cert_file: PathBuf,
        #[arg(long, default_value = "/data/tls.key")]
        key_file: PathBuf,
    },
    /// Store the tunnel token for cloudflared in the keystore, read from standard input (never from argv).
    SetToken,
    /// Connect to Airlock relay nodes: the tunnel token is read from standard input (never from argv) into the
    /// keystore, the nodes are written to config.toml.
    Login {
        #[command(flatten)]
        relay: RelayNodeArgs,
    },
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM) to register with the tunnel (Console: Certificates > Add certificate).
    Export {
        /// Print the pending CA of a rotation instead of the active one.
        #[arg(long)]
        pending: bool,
    },
    /// Print the lowercase hex SHA-256 of the CA certificate's DER (what the Console shows).
    Fingerprint {
        #[arg(long)]
        pending: bool,
    },
    /// Start a rotation: create the next CA and print it; it signs nothing until `airlock ca activate`.
    Rotate,
    /// Finish a rotation (after registering the new CA): the new CA signs; the old one stays trusted until revoked.
    Activate,
    /// List the CAs to keep registered (active, pending, previous).
    List {
        #[arg(long)]
        json: bool,
    },
}

fn parse_keystore(s: &str) -> Result<airlock_keystore::KeystoreChoice, String> {
    s.parse().map_err(|e| format!("{e}"))
}

macro_rules! say {
    ($($arg:tt)*) => { say_line(format_args!($($arg)*)) };
}

/// A failure with the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::Api {
                status: 409, body, ..
            } if body.get("candidates").is_some() => 2,
            _ => 1,
        };
        let mut message = e.to_string();
        if let ClientError::Api { body, .. } = &e
            && let Some(c) = body.get("candidates").and_then(Value::as_array)
        {
            for candidate in c.iter().filter_map(Value::as_str) {
                message.push_str(&format!("\n  {candidate}"));
            }
        }
        Failure { code, message }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure {
            code: 1,
            message: format!("{e:#}"),
        }
    }
}

fn main() -> ExitCode {
    // `airlock sandbox-exec …`: the sandbox's helper (Landlock + seccomp, the in-sandbox proxy forwarder). It runs
    // inside the sandbox and execs its command, so it bypasses argument parsing and the async runtime.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "sandbox-exec")
    {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        let code = airlock_sandbox::helper::main_with_prefix(&["sandbox-exec"], args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("airlock: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("airlock: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let home = AirlockHome::resolve(cli.home.clone()).map_err(anyhow::Error::from)?;
    match cli.command {
        Command::Up {
            gateway_port,
            relay,
        } => {
            if !relay.relay.is_empty() {
                set_relay_nodes(&home, &relay)?;
            } else if !relay.relay_fingerprint.is_empty() || relay.relay_public_port.is_some() {
                return Err(usage(
                    "--relay-fingerprint and --relay-public-port go with --relay ADDR",
                ));
            }
            up(home, gateway_port, cli.keystore, cli.log_format).await
        }
        Command::Ca(cmd) => ca(&home, cli.keystore, cmd).await,
        Command::Tunnel(cmd) => tunnel(&home, cli.keystore, cmd).await,
        Command::Sandbox(cmd) => sandbox(&home, cli.keystore, cmd).await,
        Command::Relay(args) => relay(&home, *args, cli.log_format).await,
        Command::Ui { print } => {
            let client = ControlClient::connect(&home)?;
            let link = client.post("/v1/ui/code", &json!({})).await?;
            let url = str_of(&link, "url").to_string();
            if print {
                say!("{url}");
                return Ok(());
            }
            let opener = if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            };
            match std::process::Command::new(opener)
                .arg(&url)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
            {
                Ok(st) if st.success() => {
                    eprintln!("opened the Airlock UI in your browser (the link works once)")
                }
                _ => {
                    eprintln!(
                        "could not start a browser; open this link (it works once, for two minutes):"
                    );
                    say!("{url}");
                }
            }
            Ok(())
        }
        Command::Status { json } => status(&home, json).await,
        Command::Servers { json } => servers(&home, json).await,
        Command::Approvals { json } => approvals(&home, json).await,
        Command::Approve { id, tools, code } => {
            let client = ControlClient::connect(&home)?;
            let tools = tools.map(|t| split_list(&t));
            client
                .post(
                    &format!("/v1/approvals/{}/approve", enc(&id)),
                    &json!({ "tools": tools, "code": code }),
                )
                .await?;
            say!("approved {id}");
            Ok(())
        }
        Command::Deny { id } => {
            let client = ControlClient::connect(&home)?;
            client
                .post(&format!("/v1/approvals/{}/deny", enc(&id)), &json!({}))
                .await?;
            say!("denied {id}");
            Ok(())
        }
        Command::Clients { json } => clients(&home, json).await,
        Command::Revoke { id } => {
            let client = ControlClient::connect(&home)?;
            let r = client.post("/v1/revoke", &json!({ "id": id })).await?;
            let n = |k: &str| r.get(k).and_then(Value::as_array).map_or(0, Vec::len);
            say!("revoked {} grant(s), {} token(s)", n("grants"), n("tokens"));
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            server,
            scope,
            ttl,
            tools,
            label,
            json,
        }) => {
            let ttl_secs = parse_ttl(&ttl).map_err(|m| Failure {
                code: 2,
                message: m,
            })?;
            let client = ControlClient::connect(&home)?;
            let view = client.get(&format!("/v1/servers/{}", enc(&server))).await?;
            let minted = client
                .post(
                    "/v1/tokens",
                    &json!({
                        "server_id": str_of(&view, "id"),
                        "scope": scope,
                        "ttl_secs": ttl_secs,
                        "tools": tools.map(|t| split_list(&t)),
                        "label": label.unwrap_or_else(|| format!("airlock token create {}", str_of(&view, "name"))),
                    }),
                )
                .await?;
            if json {
                print_json(&minted);
            } else {
                eprintln!(
                    "token for {} ({}), id {}; it is shown once, revoke it with `airlock revoke {}`:",
                    str_of(&view, "name"),
                    str_of(&minted, "server_id"),
                    str_of(&minted, "token_id"),
                    str_of(&minted, "token_id"),
                );
                say!("{}", str_of(&minted, "token"));
            }
            Ok(())
        }
        Command::Audit {
            server,
            client: client_id,
            kind,
            limit,
            json,
        } => {
            let client = ControlClient::connect(&home)?;
            let mut q = format!("/v1/audit?limit={limit}");
            for (k, v) in [("server", server), ("client", client_id), ("kind", kind)] {
                if let Some(v) = v {
                    q.push_str(&format!("&{k}={}", enc(&v)));
                }
            }
            let log = client.get(&q).await?;
            if json {
                print_json(&log);
                return Ok(());
            }
            for e in log.as_array().cloned().unwrap_or_default() {
                let mut line = format!(
                    "{} {:<18} server={} client={}",
                    age(e.get("ts_ms").and_then(Value::as_i64).unwrap_or(0)),
                    str_of(&e, "kind"),
                    str_of(&e, "server_id"),
                    str_of(&e, "client_id"),
                );
                if !str_of(&e, "method").is_empty() {
                    line.push_str(&format!(
                        " {} {} -> {}",
                        str_of(&e, "method"),
                        str_of(&e, "tool"),
                        e.get("status").and_then(Value::as_u64).unwrap_or(0)
                    ));
                }
                if !str_of(&e, "detail").is_empty() {
                    line.push_str(&format!(" ({})", str_of(&e, "detail")));
                }
                say!("{line}");
            }
            Ok(())
        }
        Command::Expose {
            server,
            hostname,
            yes,
            json,
        } => expose(&home, &server, hostname, yes, json).await,
        Command::Unexpose { server, json } => {
            let client = ControlClient::connect(&home)?;
            let view = client
                .post(
                    &format!("/v1/servers/{}/unexpose", enc(&server)),
                    &json!({}),
                )
                .await?;
            if json {
                print_json(&view);
            } else {
                say!("{} is no longer exposed", str_of(&view, "name"));
            }
            Ok(())
        }
        Command::Url { server, json } => {
            let client = ControlClient::connect(&home)?;
            let info = client
                .get(&format!("/v1/servers/{}/url", enc(&server)))
                .await?;
            if json {
                print_json(&info);
            } else {
                let urls = info.get("urls").and_then(Value::as_array).cloned();
                match urls {
                    Some(urls) if !urls.is_empty() => {
                        for u in &urls {
                            say!("{:<10}{}", str_of(u, "kind"), str_of(u, "url"));
                        }
                        let cas: std::collections::BTreeSet<&str> = urls
                            .iter()
                            .filter_map(|u| u.get("ca_file").and_then(Value::as_str))
                            .collect();
                        for ca in cas {
                            say!("trust     {ca}   (the Airlock CA: https URLs verify against it)");
                        }
                    }
                    _ => say!("{}", str_of(&info, "url")),
                }
                say!(
                    "auth      OAuth: clients sign in and you approve (`airlock approvals`); for a caller without a browser: `airlock token create {server}`"
                );
            }
            Ok(())
        }
    }
}

async fn up(
    home: AirlockHome,
    gateway_port: Option<u16>,
    keystore: Option<airlock_keystore::KeystoreChoice>,
    format: LogFormat,
) -> Result<(), Failure> {
    init_logging(format);
    let shutdown = CancellationToken::new();
    install_signal_handler(shutdown.clone());
    let opts = AgentOptions {
        home,
        gateway_port,
        discovery_env: None,
        keystore,
    };
    airlock_agent::run(opts, shutdown)
        .await
        .map_err(|e| Failure {
            code: 1,
            message: e.to_string(),
        })
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the SIGINT/SIGTERM handlers now (before anything announces readiness: a signal that arrives before the
/// handler is registered would kill the process), and cancels `shutdown` when one arrives.
fn install_signal_handler(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = int.recv() => {}
                        _ = term.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            shutdown.cancel();
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        shutdown.cancel();
    });
}

async fn status(home: &AirlockHome, json: bool) -> Result<(), Failure> {
    let client = match ControlClient::connect(home) {
        Ok(c) => c,
        Err(e @ ClientError::NotRunning { .. }) => {
            if json {
                print_json(&json!({ "running": false, "ready": false }));
            }
            return Err(e.into());
        }
        Err(e) => return Err(e.into()),
    };
    let status = client.get("/v1/status").await?;
    if json {
        print_json(&status);
        return Ok(());
    }
    let ready = status
        .get("ready")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    say!(
        "airlock {} — {} (pid {})",
        str_of(&status, "version"),
        if ready { "ready" } else { "starting" },
        status.get("pid").and_then(Value::as_u64).unwrap_or(0)
    );
    say!("  home      {}", str_of(&status, "home"));
    say!(
        "  gateway   {}",
        status
            .pointer("/gateway/url")
            .and_then(Value::as_str)
            .unwrap_or("-")
    );
    say!(
        "  servers   {} discovered, {} exposed",
        status
            .pointer("/servers/discovered")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        status
            .pointer("/servers/exposed")
            .and_then(Value::as_u64)
            .unwrap_or(0)
    );
    let diags = status
        .get("diagnostics")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if diags > 0 {
        say!("  problems  {diags} config file(s) could not be read — see `airlock servers`");
    }
    say!("  keystore  {}", str_of(&status, "keystore"));
    if let Some(t) = status.get("anthropic").filter(|t| !t.is_null()) {
        say!(
            "  tunnel    {} (listening on {})",
            str_of(t, "tunnel_domain"),
            str_of(t, "listen_addr")
        );
        say!("  CA        {}", str_of(t, "ca_fingerprint"));
        let cf = t.get("cloudflared").unwrap_or(&Value::Null);
        let line = match str_of(cf, "state") {
            "" => "no tunnel token stored (`airlock tunnel set-token`)".to_string(),
            "running" => format!(
                "running, {} connection(s) registered",
                cf.get("connections").and_then(Value::as_u64).unwrap_or(0)
            ),
            "not_installed" => format!("not installed — {}", str_of(cf, "hint")),
            "backoff" => format!("restarting after: {}", str_of(cf, "last_error")),
            other => other.to_string(),
        };
        say!("  cloudflared {line}");
    }
    if let Some(r) = status.get("relay").filter(|r| !r.is_null()) {
        let domain = r
            .get("tunnel_domain")
            .and_then(Value::as_str)
            .unwrap_or("(not assigned yet)");
        match str_of(r, "mode") {
            "embedded" => say!(
                "  relay     embedded on {} — {domain}",
                r.pointer("/embedded/public_addr")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
            ),
            _ => say!("  relay     {domain}"),
        }
        if let Some(fp) = r.get("ca_fingerprint").and_then(Value::as_str) {
            say!("  relay CA  {fp} ({})", str_of(r, "ca_file"));
        }
        for n in r
            .get("nodes")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let pin = if n.get("pinned").and_then(Value::as_bool).unwrap_or(true) {
                ""
            } else {
                " [key not pinned]"
            };
            let line = match str_of(n, "state") {
                "connected" => format!("connected since {}", when(n.get("since"))),
                "backoff" => format!(
                    "retrying at {} (attempt {}): {}",
                    when(n.get("until")),
                    n.get("attempt").and_then(Value::as_u64).unwrap_or(0),
                    str_of(n, "last_error")
                ),
                other => other.to_string(),
            };
            say!("    node {} {line}{pin}", str_of(n, "addr"));
        }
    }
    Ok(())
}

/// A unix-milliseconds timestamp as UTC RFC 3339.
fn when(ms: Option<&Value>) -> String {
    let ms = ms.and_then(Value::as_u64).unwrap_or(0);
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

fn usage(message: &str) -> Failure {
    Failure {
        code: 2,
        message: message.to_string(),
    }
}

/// Writes `[relay] nodes` (and `public_port`) from the command line into config.toml.
fn set_relay_nodes(home: &AirlockHome, args: &RelayNodeArgs) -> Result<(), Failure> {
    use airlock_agent::config::{self, Edit, RelayNodeConfig};
    if args.relay.is_empty() {
        return Err(usage(
            "give at least one --relay HOST:PORT (the relay's tunnel listener)",
        ));
    }
    if !args.relay_fingerprint.is_empty() && args.relay_fingerprint.len() != args.relay.len() {
        return Err(usage(
            "give one --relay-fingerprint per --relay, in the same order (`airlock relay fingerprint` on each node)",
        ));
    }
    let mut nodes = Vec::new();
    for (i, addr) in args.relay.iter().enumerate() {
        let addr = addr.trim();
        let valid = addr
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
        if !valid {
            return Err(usage(&format!("--relay {addr}: expected HOST:PORT")));
        }
        let fingerprint = match args.relay_fingerprint.get(i) {
            Some(f) => {
                let bytes = config::parse_fingerprint(f).map_err(|e| usage(&e.to_string()))?;
                Some(hex::encode(bytes))
            }
            None => {
                eprintln!(
                    "warning: no --relay-fingerprint for {addr}: the relay's key will not be checked"
                );
                None
            }
        };
        nodes.push(RelayNodeConfig {
            addr: addr.to_string(),
            fingerprint,
        });
    }
    config::update(
        &home.config_path(),
        Edit::SetRelayNodes {
            nodes: &nodes,
            public_port: args.relay_public_port,
        },
    )
    .map_err(anyhow::Error::from)?;
    Ok(())
}

async fn servers(home: &AirlockHome, json: bool) -> Result<(), Failure> {
    let client = ControlClient::connect(home)?;
    let list = client.get("/v1/servers").await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let servers = list
        .get("servers")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if servers.is_empty() {
        say!("No MCP servers found in any client's config.");
    }
    for s in &servers {
        let sources: Vec<String> = s
            .get("sources")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .map(|src| str_of(src, "client").to_string())
                    .collect()
            })
            .unwrap_or_default();
        let state = if s.get("exposed").and_then(Value::as_bool).unwrap_or(false) {
            format!("exposed at {}", str_of(s, "url"))
        } else if s.get("exposable").and_then(Value::as_bool).unwrap_or(false) {
            "not exposed".to_string()
        } else {
            format!("not exposable: {}", str_of(s, "not_exposable_reason"))
        };
        say!(
            "{:<24} {}  [{}]",
            str_of(s, "name"),
            str_of(s, "id"),
            sources.join(", ")
        );
        say!(
            "    {}",
            describe_transport(s.get("transport").unwrap_or(&Value::Null))
        );
        say!("    {state}");
    }
    if let Some(diags) = list.get("diagnostics").and_then(Value::as_array)
        && !diags.is_empty()
    {
        say!("\nConfig files with problems:");
        for d in diags {
            let line = d
                .get("line")
                .and_then(Value::as_u64)
                .map(|l| format!(":{l}"))
                .unwrap_or_default();
            say!(
                "  {}{line} ({}): {}",
                str_of(d, "path"),
                str_of(d, "client"),
                str_of(d, "message")
            );
        }
    }
    Ok(())
}

fn describe_transport(t: &Value) -> String {
    match str_of(t, "type") {
        "stdio" => {
            let mut parts = vec![shell_quote(str_of(t, "command"))];
            if let Some(args) = t.get("args").and_then(Value::as_array) {
                parts.extend(args.iter().filter_map(Value::as_str).map(shell_quote));
            }
            let mut line = parts.join(" ");
            if let Some(cwd) = t.get("cwd").and_then(Value::as_str) {
                line = format!("(in {cwd}) {line}");
            }
            if let Some(env) = t.get("env").and_then(Value::as_object)
                && !env.is_empty()
            {
                let keys: Vec<&str> = env.keys().map(String::as_str).collect();
                line.push_str(&format!("   env: {}", keys.join(", ")));
            }
            line
        }
        kind => format!("{kind} {}", str_of(t, "url")),
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

async fn expose(
    home: &AirlockHome,
    server: &str,
    hostname: Option<String>,
    yes: bool,
    json: bool,
) -> Result<(), Failure> {
    let client = ControlClient::connect(home)?;
    let view = client.get(&format!("/v1/servers/{}", enc(server))).await?;
    let id = str_of(&view, "id").to_string();
    // Show exactly what will run before it runs.
    let what = describe_transport(view.get("transport").unwrap_or(&Value::Null));
    if !json || !yes {
        eprintln!("{} ({id}) will run:\n    {what}", str_of(&view, "name"));
    }
    if !yes {
        if !std::io::stdin().is_terminal() {
            return Err(Failure {
                code: 2,
                message: "confirmation needed: re-run with --yes to expose without a prompt".into(),
            });
        }
        eprint!("Expose it? [y/N] ");
        let _ = std::io::stderr().flush();
        let mut answer = String::new();
        std::io::stdin()
            .read_line(&mut answer)
            .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return Err(Failure {
                code: 1,
                message: "not exposed".into(),
            });
        }
    }
    let body = match hostname {
        Some(h) => json!({ "hostname": h }),
        None => json!({}),
    };
    let exposed = client
        .post(&format!("/v1/servers/{id}/expose"), &body)
        .await?;
    if json {
        print_json(&exposed);
    } else {
        say!(
            "{} is exposed at {}",
            str_of(&exposed, "name"),
            str_of(&exposed, "url")
        );
        for key in ["local_url", "relay_url", "tunnel_url"] {
            if let Some(u) = exposed.get(key).and_then(Value::as_str) {
                say!("  also {u}");
            }
        }
        say!("Credential: `airlock url {id}` prints the bearer token to send.");
    }
    Ok(())
}

async fn ca(
    home: &AirlockHome,
    keystore: Option<airlock_keystore::KeystoreChoice>,
    cmd: CaCommand,
) -> Result<(), Failure> {
    use airlock_agent::pki_store::{PkiStore, Validity};
    let config = airlock_agent::config::load(&home.config_path()).map_err(anyhow::Error::from)?;
    let relay_domain = if config.relay.nodes.is_empty() {
        config.relay.embedded_domain.clone()
    } else {
        config.relay.tunnel_domain.clone()
    };
    let Some(domain) = config
        .anthropic
        .as_ref()
        .map(|a| a.tunnel_domain.clone())
        .or(relay_domain)
    else {
        return Err(Failure {
            code: 1,
            message: format!(
                "no tunnel domain is configured: add `[anthropic] tunnel_domain = \"…\"` to {} \
                 or run `airlock tunnel import-config <config.yaml>`; with a relay, start `airlock up` once \
                 (the relay assigns the domain)",
                home.config_path().display()
            ),
        });
    };
    let ks = airlock_agent::home::open_keystore(home, config.keystore.backend.as_deref(), keystore)
        .await
        .map_err(anyhow::Error::from)?;
    let store = PkiStore::new(&home.root().join("pki"), &domain, &ks, Validity::default())
        .map_err(anyhow::Error::from)?;
    let now = time::OffsetDateTime::now_utc();
    let pick = |pending: bool| -> Result<airlock_agent::pki_store::CaSummary, Failure> {
        let role = if pending { "pending" } else { "active" };
        store
            .summaries()
            .into_iter()
            .find(|s| s.role == role)
            .ok_or_else(|| Failure {
                code: 1,
                message: if pending {
                    "no rotation is pending; `airlock ca rotate` starts one".into()
                } else {
                    "no CA yet".into()
                },
            })
    };
    match cmd {
        CaCommand::Export { pending } => {
            store.ensure_ca(now).await.map_err(anyhow::Error::from)?;
            let ca = pick(pending)?;
            say!("{}", ca.pem.trim_end());
        }
        CaCommand::Fingerprint { pending } => {
            store.ensure_ca(now).await.map_err(anyhow::Error::from)?;
            say!("{}", pick(pending)?.fingerprint);
        }
        CaCommand::Rotate => {
            let next = store.rotate(now).await.map_err(anyhow::Error::from)?;
            eprintln!(
                "A new CA was created for {domain}. Register it next to the current one (the Console allows two),\n\
                 then run `airlock ca activate`. Fingerprint: {}",
                next.fingerprint_sha256_hex()
            );
            say!("{}", next.pem.trim_end());
            notify_agent(home).await;
        }
        CaCommand::Activate => {
            let (active, _) = store.activate(now).await.map_err(anyhow::Error::from)?;
            say!("active CA: {}", active.fingerprint_sha256_hex());
            eprintln!(
                "The previous CA stays valid; revoke it in the Console once traffic flows with the new one."
            );
            notify_agent(home).await;
        }
        CaCommand::List { json } => {
            store.ensure_ca(now).await.map_err(anyhow::Error::from)?;
            let list = store.summaries();
            if json {
                print_json(&json!({ "tunnel_domain": domain, "cas": list }));
            } else {
                for ca in list {
                    say!(
                        "{:<9} {}  expires {}",
                        ca.role,
                        ca.fingerprint,
                        ca.not_after
                    );
                }
            }
        }
    }
    Ok(())
}

async fn tunnel(
    home: &AirlockHome,
    keystore: Option<airlock_keystore::KeystoreChoice>,
    cmd: TunnelCommand,
) -> Result<(), Failure> {
    use airlock_agent::config::{self, Edit};
    match cmd {
        TunnelCommand::ImportConfig { file } => {
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let proxy = airlock_tunnel::ProxyConfig::load(&file, &env).map_err(|e| Failure {
                code: 1,
                message: e.to_string(),
            })?;
            let (section, notes) =
                airlock_agent::tunnel::import_proxy_config(&proxy).map_err(anyhow::Error::from)?;
            config::update(&home.config_path(), Edit::SetAnthropic(Some(&section)))
                .map_err(anyhow::Error::from)?;
            say!(
                "Imported {} route(s) for {} into {}",
                section.routes.len(),
                section.tunnel_domain,
                home.config_path().display()
            );
            for note in notes {
                eprintln!("note: {note}");
            }
            eprintln!(
                "Restart `airlock up` to apply; `airlock ca export` prints the CA to register."
            );
        }
        TunnelCommand::ExportConfig {
            cert_file,
            key_file,
        } => {
            let cfg = config::load(&home.config_path()).map_err(anyhow::Error::from)?;
            let Some(section) = cfg.anthropic else {
                return Err(Failure {
                    code: 1,
                    message: "no [anthropic] section in config.toml to export".into(),
                });
            };
            // Exposed local HTTP servers are routes the proxy can serve too; bridged stdio servers are not.
            let mut exposed_http = Vec::new();
            if let Ok(client) = ControlClient::connect(home)
                && let Ok(list) = client.get("/v1/servers").await
            {
                for s in list
                    .get("servers")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let exposed = s.get("exposed").and_then(Value::as_bool).unwrap_or(false);
                    if exposed
                        && s.pointer("/transport/type").and_then(Value::as_str)
                            == Some("streamable_http")
                    {
                        let url = s
                            .pointer("/transport/url")
                            .and_then(Value::as_str)
                            .unwrap_or_default();
                        exposed_http.push((str_of(s, "hostname").to_string(), url.to_string()));
                    } else if exposed {
                        eprintln!(
                            "note: {} is a bridged stdio server; Anthropic's proxy cannot run it",
                            str_of(s, "name")
                        );
                    }
                }
            }
            let yaml = airlock_agent::tunnel::export_proxy_config(
                &section,
                &exposed_http,
                &cert_file,
                &key_file,
            )
            .map_err(anyhow::Error::from)?;
            say!("{}", yaml.trim_end());
        }
        TunnelCommand::SetToken => {
            let mut token = String::new();
            std::io::stdin()
                .read_line(&mut token)
                .map_err(|e| anyhow::anyhow!("reading the token from stdin: {e}"))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(Failure {
                    code: 2,
                    message:
                        "no token on stdin (pipe it in: `airlock tunnel set-token < token.txt`)"
                            .into(),
                });
            }
            // A running agent stores it and (re)starts cloudflared with it at once.
            if let Ok(client) = ControlClient::connect(home) {
                let v = client
                    .post("/v1/tunnel/token", &json!({ "token": token }))
                    .await?;
                let backend = v["keystore"].as_str().unwrap_or("agent's");
                if v["cloudflared_restarted"].as_bool() == Some(true) {
                    say!(
                        "cloudflared token stored in the {backend} keystore; the running agent restarted cloudflared with it"
                    );
                } else {
                    say!(
                        "cloudflared token stored in the {backend} keystore; the running agent has no Anthropic tunnel configured (see `airlock tunnel import`)"
                    );
                }
                return Ok(());
            }
            let cfg = config::load(&home.config_path()).map_err(anyhow::Error::from)?;
            let ks =
                airlock_agent::home::open_keystore(home, cfg.keystore.backend.as_deref(), keystore)
                    .await
                    .map_err(anyhow::Error::from)?;
            airlock_agent::tunnel::store_token(&ks, token)
                .await
                .map_err(|e| Failure {
                    code: 2,
                    message: e.to_string(),
                })?;
            say!(
                "cloudflared token stored in the {} keystore; `airlock up` connects with it",
                ks.backend()
            );
        }
        TunnelCommand::Login { relay } => {
            let token = read_token_from_stdin(
                "no token on stdin (pipe it in: `airlock relay token create … | jq -r .token | airlock tunnel login --relay HOST:PORT`)",
            )?;
            let cfg = config::load(&home.config_path()).map_err(anyhow::Error::from)?;
            set_relay_nodes(home, &relay)?;
            let ks =
                airlock_agent::home::open_keystore(home, cfg.keystore.backend.as_deref(), keystore)
                    .await
                    .map_err(anyhow::Error::from)?;
            ks.set(
                airlock_agent::relay::RELAY_TOKEN,
                &airlock_keystore::Secret::from(token.as_str()),
            )
            .await
            .map_err(|e| anyhow::anyhow!("storing the token: {e}"))?;
            say!(
                "relay token stored in the {} keystore; {} node(s) written to {}; restart `airlock up` to connect",
                ks.backend(),
                relay.relay.len(),
                home.config_path().display()
            );
        }
    }
    Ok(())
}

/// The first line of standard input, trimmed; a JSON object from `airlock relay token create` is accepted too.
fn read_token_from_stdin(empty: &str) -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("reading the token from stdin: {e}"))?;
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed)
        && let Some(t) = v.get("token").and_then(Value::as_str)
    {
        return Ok(t.trim().to_string());
    }
    let token = trimmed.lines().next().unwrap_or("").trim().to_string();
    if token.is_empty() {
        return Err(usage(empty));
    }
    Ok(token)
}

async fn relay(home: &AirlockHome, args: RelayArgs, format: LogFormat) -> Result<(), Failure> {
    let state_dir =
        |explicit: Option<PathBuf>| explicit.unwrap_or_else(|| home.root().join("relay"));
    let fail = |e: String| Failure {
        code: 1,
        message: e,
    };
    match args.command {
        Some(RelayCommand::Token(RelayTokenCommand::Create {
            domain,
            name,
            ttl_days,
            state,
        })) => {
            let dir = state_dir(state);
            let (token, claims) = tokio::task::spawn_blocking(move || {
                let authority = airlock_relay::TokenAuthority::open(&dir, &domain)?;
                let ttl = ttl_days.map(|d| std::time::Duration::from_secs(d * 86_400));
                let (token, claims) = authority.create(&name, ttl)?;
                Ok::<_, airlock_relay::TokenError>((
                    token,
                    (claims.clone(), authority.tunnel_domain(&claims.tunnel_id)),
                ))
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
            let (claims, tunnel_domain) = claims;
            print_json(&json!({
                "token": token,
                "tunnel_id": claims.tunnel_id,
                "tunnel_domain": tunnel_domain,
                "jti": claims.jti,
                "name": claims.name,
            }));
            eprintln!(
                "Give the token to the agent on stdin (never in argv); it is shown only now."
            );
            Ok(())
        }
        Some(RelayCommand::Token(RelayTokenCommand::Revoke { jti, domain, state })) => {
            let dir = state_dir(state);
            tokio::task::spawn_blocking(move || {
                airlock_relay::TokenAuthority::open(&dir, &domain)?.revoke(&jti)
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
            say!("revoked; distribute the revocation file to every relay node");
            Ok(())
        }
        Some(RelayCommand::Env(RelayEnvCommand::Create { name, state })) => {
            let db = state_dir(state).join(ENVQUEUE_DB);
            let store = open_envqueue(db).await.map_err(fail)?;
            let creds = store
                .create_environment(&name)
                .await
                .map_err(|e| fail(e.to_string()))?;
            print_json(&json!({
                "environment_id": creds.environment_id,
                "environment_key": creds.environment_key,
                "api_key": creds.api_key,
            }));
            eprintln!(
                "The keys are shown only now: the environment key goes to workers, the API key to the orchestrating side."
            );
            Ok(())
        }
        Some(RelayCommand::Fingerprint { state }) => {
            let dir = state_dir(state);
            let identity = tokio::task::spawn_blocking(move || {
                airlock_relay::tls::load_or_create_server_identity(
                    &dir,
                    &["relay.invalid".to_string()],
                )
            })
            .await
            .map_err(|e| fail(e.to_string()))?
            .map_err(|e| fail(e.to_string()))?;
            let spki = identity.spki_sha256().map_err(|e| fail(e.to_string()))?;
            say!("{}", hex::encode(spki));
            Ok(())
        }
        None => {
            if args.domain.is_none() && args.api.is_none() {
                return Err(Failure {
                    code: 2,
                    message:
                        "`airlock relay` needs --domain BASE (tunnels live at <tunnel-id>.BASE) \
                              and/or --api ADDR (the environments work queue)"
                            .into(),
                });
            }
            init_logging(format);
            let shutdown = CancellationToken::new();
            install_signal_handler(shutdown.clone());
            let api_task = match args.api {
                Some(addr) => {
                    let db = state_dir(args.state.clone()).join(ENVQUEUE_DB);
                    let store = open_envqueue(db.clone()).await.map_err(fail)?;
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .map_err(|e| fail(format!("cannot listen on --api {addr}: {e}")))?;
                    let local = listener.local_addr().map_err(|e| fail(e.to_string()))?;
                    if !local.ip().is_loopback() {
                        tracing::warn!(%local, "the work queue API is plain HTTP: put TLS in front of it");
                    }
                    tracing::info!(api = %local, db = %db.display(), "work queue API ready");
                    let stop = shutdown.clone();
                    Some(tokio::spawn(async move {
                        axum::serve(listener, airlock_envqueue::router(store))
                            .with_graceful_shutdown(async move { stop.cancelled().await })
                            .await
                    }))
                }
                None => None,
            };
            let Some(domain) = args.domain else {
                shutdown.cancelled().await;
                if let Some(t) = api_task {
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), t).await;
                }
                return Ok(());
            };
            let mut cfg = airlock_relay::RelayConfig::new(state_dir(args.state), &domain);
            cfg.public_listen = args.public;
            cfg.tunnel_listen = args.tunnel;
            cfg.ops_listen = args.ops;
            let relay = airlock_relay::Relay::bind(cfg)
                .await
                .map_err(|e| fail(e.to_string()))?;
            tracing::info!(
                public = %relay.public_addr(),
                tunnel = %relay.tunnel_addr(),
                ops = ?relay.ops_addr(),
                pin = %hex::encode(relay.tunnel_spki_sha256()),
                "relay node ready"
            );
            relay
                .run(async move { shutdown.cancelled().await })
                .await
                .map_err(|e| fail(e.to_string()))
        }
    }
}

/// The reference work queue's database under the relay state directory.
const ENVQUEUE_DB: &str = "envqueue.sqlite";

async fn open_envqueue(db: PathBuf) -> Result<airlock_envqueue::Store, String> {
    tokio::task::spawn_blocking(move || {
        airlock_envqueue::Store::open(&db, airlock_envqueue::StoreOptions::default())
            .map_err(|e| format!("work queue state {}: {e}", db.display()))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Tells a running agent to reload its certificates (best effort: it also checks on its own).
async fn notify_agent(home: &AirlockHome) {
    if let Ok(client) = ControlClient::connect(home) {
        let _ = client.post("/v1/pki/reload", &json!({})).await;
    }
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => say!("{s}"),
        Err(_) => say!("{v}"),
    }
}

/// Writes one line to stdout. A closed pipe (`airlock servers | head`) ends the program quietly instead of
/// panicking the way `println!` does.
fn say_line(args: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("airlock: cannot write to stdout: {e}");
        std::process::exit(1);
    }
}

/// Percent-encodes a server reference for use as one path segment.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn split_list(s: &str) -> Vec<String> {
    s.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// `3600`, `3600s`, `90m`, `12h`, `30d` → seconds.
fn parse_ttl(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86400),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("invalid --ttl {s:?}: use e.g. 3600, 90m, 12h or 30d"))
}

/// How long ago a millisecond timestamp was, for humans.
fn age(ts_ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let secs = ((now - ts_ms) / 1000).max(0);
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

async fn approvals(home: &AirlockHome, json: bool) -> Result<(), Failure> {
    let client = ControlClient::connect(home)?;
    let list = client.get("/v1/approvals").await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        say!("No pending authorization requests.");
    }
    for a in &items {
        let scopes = a.get("scopes").cloned().unwrap_or(Value::Null);
        let scope = match (
            scopes.get("read").and_then(Value::as_bool).unwrap_or(false),
            scopes.get("call").and_then(Value::as_bool).unwrap_or(false),
        ) {
            (true, true) => "mcp:read mcp:call",
            (true, false) => "mcp:read",
            (false, true) => "mcp:call",
            _ => "-",
        };
        say!(
            "{}  {:?} -> {}  server {} ({})  {}  {}",
            str_of(a, "id"),
            str_of(a, "client_name"),
            str_of(a, "redirect_host"),
            str_of(a, "server_name"),
            str_of(a, "server_id"),
            scope,
            age(a.get("created_ms").and_then(Value::as_i64).unwrap_or(0)),
        );
        if let Some(u) = a.get("cimd_url").and_then(Value::as_str) {
            say!("    client metadata: {u}");
        }
        if a.get("remote").and_then(Value::as_bool) == Some(true) {
            say!(
                "    opened in a browser elsewhere: approve with the code that page shows (`--code XXXX-XXXX`)"
            );
        }
    }
    if !items.is_empty() {
        say!(
            "\nDecide with `airlock approve <id> [--tools a,b] [--code XXXX-XXXX]` or `airlock deny <id>`. Never approve a request you did not start."
        );
    }
    Ok(())
}

async fn clients(home: &AirlockHome, json: bool) -> Result<(), Failure> {
    let client = ControlClient::connect(home)?;
    let list = client.get("/v1/clients").await?;
    if json {
        print_json(&list);
        return Ok(());
    }
    let items = list.as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        say!("No OAuth clients yet.");
    }
    for c in &items {
        say!(
            "{:?}  {}  [{}]",
            str_of(c, "name"),
            str_of(c, "client_id"),
            str_of(c, "kind")
        );
        for g in c
            .get("grants")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
        {
            let state = if g.get("revoked_ms").is_some_and(|v| !v.is_null()) {
                "revoked".to_owned()
            } else {
                match g.get("last_used_ms").and_then(Value::as_i64) {
                    Some(t) => format!("last used {}", age(t)),
                    None => "never used".to_owned(),
                }
            };
            let tools = g
                .get("tools")
                .and_then(Value::as_array)
                .map(|t| {
                    t.iter()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_else(|| "all tools".to_owned());
            say!(
                "    {}  server {}  {}  {state}",
                str_of(&g, "id"),
                str_of(&g, "server_id"),
                tools
            );
            for t in g
                .get("tokens")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
            {
                say!("        {} ({})", str_of(&t, "id"), str_of(&t, "kind"));
            }
        }
    }
    Ok(())
}

/// The environment key on standard input: the key itself, or the JSON of `airlock relay env create`.
fn read_environment_key_from_stdin() -> Result<String, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| anyhow::anyhow!("reading the environment key from stdin: {e}"))?;
    let trimmed = text.trim();
    if let Ok(v) = serde_json::from_str::<Value>(trimmed)
        && let Some(k) = v.get("environment_key").and_then(Value::as_str)
    {
        return Ok(k.trim().to_string());
    }
    let key = trimmed.lines().next().unwrap_or("").trim().to_string();
    if key.is_empty() {
        return Err(usage(
            "no environment key on stdin (pipe it in: `airlock sandbox login --base-url URL --environment-id ID < key.txt`)",
        ));
    }
    Ok(key)
}

async fn sandbox(
    home: &AirlockHome,
    keystore: Option<airlock_keystore::KeystoreChoice>,
    cmd: SandboxCommand,
) -> Result<(), Failure> {
    use airlock_agent::config::{self, Edit};
    use airlock_agent::sandbox::{SandboxEdit, validate_domain};
    let invalid = |e: airlock_agent::AgentError| Failure {
        code: 2,
        message: e.to_string(),
    };
    match cmd {
        SandboxCommand::Login {
            base_url,
            environment_id,
        } => {
            let key = read_environment_key_from_stdin()?;
            let cfg = config::load(&home.config_path()).map_err(anyhow::Error::from)?;
            let ks =
                airlock_agent::home::open_keystore(home, cfg.keystore.backend.as_deref(), keystore)
                    .await
                    .map_err(anyhow::Error::from)?;
            let base_url = airlock_agent::sandbox::login(
                &home.config_path(),
                &ks,
                &base_url,
                &environment_id,
                &key,
            )
            .await
            .map_err(invalid)?;
            let environment_id = environment_id.trim();
            say!(
                "environment key stored in the {} keystore; {} at {} written to {}; `airlock sandbox on` starts the worker",
                ks.backend(),
                environment_id,
                base_url,
                home.config_path().display()
            );
        }
        SandboxCommand::AllowDomain { domain } => {
            let domain = validate_domain(&domain).map_err(invalid)?;
            let cfg = config::update(
                &home.config_path(),
                Edit::Sandbox(SandboxEdit::AllowDomain(&domain)),
            )
            .map_err(anyhow::Error::from)?;
            say!(
                "{domain} is reachable from the sandbox through its egress proxy (sessions that start from now on); allowed: {}",
                cfg.sandbox.allowed_domains.join(", ")
            );
        }
        SandboxCommand::On { json } | SandboxCommand::Off { json } => {
            let on = matches!(cmd, SandboxCommand::On { .. });
            let client = ControlClient::connect(home)?;
            let v = client
                .post("/v1/sandbox", &json!({ "enabled": on }))
                .await?;
            if json {
                print_json(&v);
            } else {
                print_sandbox(&v);
            }
        }
        SandboxCommand::Status { json } => {
            let client = ControlClient::connect(home)?;
            let v = client.get("/v1/sandbox").await?;
            if json {
                print_json(&v);
            } else {
                print_sandbox(&v);
            }
        }
    }
    Ok(())
}

fn print_sandbox(v: &Value) {
    let running = v.get("running").and_then(Value::as_bool).unwrap_or(false);
    let state = v
        .pointer("/worker/state")
        .and_then(Value::as_str)
        .unwrap_or("off");
    say!(
        "sandbox worker  {}",
        if running {
            format!("on ({state})")
        } else {
            "off".to_string()
        }
    );
    if let Some(w) = v.get("warning").and_then(Value::as_str) {
        eprintln!("WARNING: {w}");
    }
    say!(
        "  isolation   {}",
        v.get("mechanism").and_then(Value::as_str).unwrap_or("none")
    );
    let limits = match v.pointer("/isolation/cgroup/kind").and_then(Value::as_str) {
        Some("unavailable") => format!(
            "not applied: {}",
            v.pointer("/isolation/cgroup/reason")
                .and_then(Value::as_str)
                .unwrap_or("no usable cgroup")
        ),
        Some(k) => format!("cgroup {k} per session (pids, memory, cpu)"),
        None => "-".to_string(),
    };
    say!("  limits      {limits}");
    say!(
        "  environment {} at {}",
        v.get("environment_id")
            .and_then(Value::as_str)
            .unwrap_or("(not logged in)"),
        str_of(v, "base_url")
    );
    say!("  workdir     {}", str_of(v, "workdir"));
    let domains: Vec<&str> = v
        .get("allowed_domains")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    say!(
        "  network     {}",
        if domains.is_empty() {
            "off".to_string()
        } else {
            format!("through the proxy to {}", domains.join(", "))
        }
    );
    for s in v
        .get("sessions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        say!(
            "  session     {} ({} in {})",
            str_of(s, "session_id"),
            s.pointer("/status/mechanism")
                .and_then(Value::as_str)
                .unwrap_or("?"),
            s.pointer("/status/workdir")
                .and_then(Value::as_str)
                .unwrap_or("?")
        );
    }
    if let Some(w) = v.get("worker").filter(|w| !w.is_null()) {
        if let Some(c) = w.get("current").filter(|c| !c.is_null()) {
            say!(
                "  serving     {} (work {}, {})",
                str_of(c, "session_id"),
                str_of(c, "work_id"),
                age(c.get("since_ms").and_then(Value::as_i64).unwrap_or(0))
            );
        }
        for c in w
            .get("in_flight")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            say!(
                "  running     {} {} (since {})",
                str_of(c, "name"),
                str_of(c, "tool_use_id"),
                age(c.get("started_ms").and_then(Value::as_i64).unwrap_or(0))
            );
        }
        let recent: Vec<&Value> = w
            .get("recent")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        for r in recent.iter().rev().take(10) {
            say!(
                "  {}      {:<6} {} {} ms{}",
                if r.get("is_error").and_then(Value::as_bool) == Some(true) {
                    "error"
                } else {
                    "ok   "
                },
                str_of(r, "name"),
                str_of(r, "session_id"),
                r.get("duration_ms").and_then(Value::as_u64).unwrap_or(0),
                if r.get("posted").and_then(Value::as_bool) == Some(false) {
                    " (not delivered)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(e) = v.get("last_error").and_then(Value::as_str) {
        say!("  last error  {e}");
    }
}
