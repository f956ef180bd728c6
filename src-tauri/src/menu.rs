//! Pure menu model for the tray: no Tauri types, so it can be unit tested
//! without a display.
//!
//! [`crate::snapshot`] fills a [`TrayState`] from the agent's control API;
//! [`MenuModel::build`] turns it into menu entries, the icon variant and the
//! tooltip; the shell turns those into native items. Menu clicks come back
//! as item ids which [`MenuAction::from_id`] turns into actions.

use std::fmt;

/// Longest label the menu shows; longer text (server names, error messages
/// from the agent) is cut with an ellipsis so the menu stays usable.
pub const MAX_LABEL_CHARS: usize = 64;

/// Id of the disabled status line.
pub const ID_STATUS: &str = "status";
/// Id of the disabled tunnel line.
pub const ID_TUNNEL: &str = "tunnel";
/// Id of the disabled "Servers" heading (or "No MCP servers found").
pub const ID_SERVERS: &str = "servers";
/// Id of the "Local sandbox execution" check item.
pub const ID_SANDBOX: &str = "sandbox";
/// Id of "Approvals (N)…".
pub const ID_APPROVALS: &str = "approvals";
/// Id of "Open Airlock…".
pub const ID_OPEN: &str = "open";
/// Id of the "Start at login" check item.
pub const ID_AUTOSTART: &str = "autostart";
/// Id of "Quit".
pub const ID_QUIT: &str = "quit";
/// Prefix of the per-server expose toggles (`server:<server id>`).
pub const SERVER_ID_PREFIX: &str = "server:";
/// Prefix of the per-server "Copy URL" items (`copy:<server id>`).
pub const COPY_ID_PREFIX: &str = "copy:";

/// What the tray knows about the agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AgentStatus {
    /// No agent process / control API unreachable.
    #[default]
    NotRunning,
    /// The tray is connecting to (or starting) the agent.
    Connecting,
    /// Connected to a running agent.
    Running,
    /// Connected, but something needs the user (pending approvals, tunnel
    /// down, a server that keeps failing).
    Attention {
        /// Short human-readable reason, shown in the status line.
        reason: String,
    },
    /// The tray's own agent could not start or stopped with an error.
    Failed {
        /// The agent's error, shown in the status line.
        reason: String,
    },
    /// "Quit" was chosen: the agent drains and stops.
    Stopping,
}

impl AgentStatus {
    /// Whether the agent can act on requests (expose, sandbox, approvals).
    pub fn is_connected(&self) -> bool {
        matches!(self, AgentStatus::Running | AgentStatus::Attention { .. })
    }
}

/// One discovered MCP server as the tray shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// Stable server id from the agent (names may repeat across configs).
    pub id: String,
    /// Server name as reported by the agent.
    pub name: String,
    /// Whether the server is currently exposed to cloud agents.
    pub exposed: bool,
    /// Whether the agent can expose it at all (public remote servers cannot).
    pub exposable: bool,
    /// What "Copy URL" puts on the clipboard: the tunnel URL when the tunnel
    /// runs, else the loopback gateway URL. `None` while not exposed.
    pub url: Option<String>,
}

/// The tunnel as the tray shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TunnelStatus {
    /// No tunnel configured (loopback only): no tunnel line in the menu.
    #[default]
    NotConfigured,
    /// Configured, cloudflared not up yet (starting, no token stored).
    Connecting,
    /// cloudflared runs with this many edge connections.
    Connected {
        /// Registered edge connections.
        connections: u64,
    },
    /// Configured but down (backoff, cloudflared missing, stopped).
    Down {
        /// Why, as the agent reports it.
        reason: String,
    },
}

/// Local sandbox execution (the environment worker) as the tray shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SandboxStatus {
    /// The agent has no sandbox API (yet): the checkbox is greyed out.
    #[default]
    Unavailable,
    /// Available and switched off.
    Off,
    /// Switched on; `sessions` are the ids of live sessions.
    On {
        /// Live session ids (used to notice new sessions).
        sessions: Vec<String>,
    },
}

/// One pending approval (an OAuth client waiting for the person's yes/no).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalEntry {
    /// Approval id from the agent.
    pub id: String,
    /// Who asks (client name, untrusted text) and for which server.
    pub summary: String,
}

/// Everything the tray menu is built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrayState {
    /// Agent connection status.
    pub agent: AgentStatus,
    /// Discovered servers, in display order.
    pub servers: Vec<ServerEntry>,
    /// Tunnel state.
    pub tunnel: TunnelStatus,
    /// Local sandbox execution.
    pub sandbox: SandboxStatus,
    /// Pending approvals; `None` when the agent has no approvals API.
    pub approvals: Option<Vec<ApprovalEntry>>,
    /// "Start at login": `None` when the platform cannot do it.
    pub autostart: Option<bool>,
    /// The agent belongs to another process (`airlock up`), not this tray.
    pub attached: bool,
}

/// Which of the tray icon variants (`icons/tray-*.png`) fits a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrayIconKind {
    /// Grey glyph: agent not running.
    Off,
    /// Amber dot: connecting.
    Connecting,
    /// Green dot: running.
    Connected,
    /// Red dot: needs attention.
    Attention,
}

impl TrayIconKind {
    /// File name of the icon variant inside `icons/`.
    pub fn file_name(self) -> &'static str {
        match self {
            TrayIconKind::Off => "tray-off.png",
            TrayIconKind::Connecting => "tray-connecting.png",
            TrayIconKind::Connected => "tray-connected.png",
            TrayIconKind::Attention => "tray-attention.png",
        }
    }
}

/// One clickable (or greyed-out) menu line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemModel {
    /// Stable id, returned by the native menu on click.
    pub id: String,
    /// Label as displayed (plain text, no mnemonic markers).
    pub label: String,
    /// Whether the item can be clicked.
    pub enabled: bool,
    /// `Some(_)` for a check item, `None` for a plain item.
    pub checked: Option<bool>,
}

/// One entry of the tray menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuEntry {
    /// A plain or check item.
    Item(ItemModel),
    /// A separator line.
    Separator,
}

/// The whole tray menu plus the icon and tooltip that go with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MenuModel {
    /// Menu entries, top to bottom.
    pub entries: Vec<MenuEntry>,
    /// Icon variant for the state.
    pub icon: TrayIconKind,
    /// Tooltip (same text as the status line).
    pub tooltip: String,
}

fn plain(id: impl Into<String>, label: impl Into<String>, enabled: bool) -> MenuEntry {
    MenuEntry::Item(ItemModel {
        id: id.into(),
        label: label.into(),
        enabled,
        checked: None,
    })
}

fn check(id: impl Into<String>, label: impl Into<String>, enabled: bool, on: bool) -> MenuEntry {
    MenuEntry::Item(ItemModel {
        id: id.into(),
        label: label.into(),
        enabled,
        checked: Some(on),
    })
}

impl MenuModel {
    /// Builds the menu for `state`.
    pub fn build(state: &TrayState) -> Self {
        let status = status_line(state);
        let connected = state.agent.is_connected();
        let mut entries = vec![plain(ID_STATUS, status.clone(), false)];
        if let Some(line) = tunnel_line(&state.tunnel) {
            entries.push(plain(ID_TUNNEL, line, false));
        }
        entries.push(MenuEntry::Separator);

        // Servers: a heading, one check item per server, then "Copy URL"
        // for each exposed one. Shown with the last known state while the
        // agent is away (greyed out).
        if state.servers.is_empty() {
            if connected {
                entries.push(plain(ID_SERVERS, "No MCP servers found", false));
                entries.push(MenuEntry::Separator);
            }
        } else {
            entries.push(plain(ID_SERVERS, "Servers", false));
            for server in &state.servers {
                let mut label = clean(&server.name);
                if !server.exposable {
                    label = truncate(&format!("{label} (cannot be exposed)"), MAX_LABEL_CHARS);
                }
                entries.push(check(
                    format!("{SERVER_ID_PREFIX}{}", server.id),
                    label,
                    connected && server.exposable,
                    server.exposed,
                ));
            }
            for server in state.servers.iter().filter(|s| s.exposed) {
                if server.url.is_some() {
                    entries.push(plain(
                        format!("{COPY_ID_PREFIX}{}", server.id),
                        truncate(
                            &format!("Copy URL — {}", sanitize(&server.name)),
                            MAX_LABEL_CHARS,
                        ),
                        true,
                    ));
                }
            }
            entries.push(MenuEntry::Separator);
        }

        match &state.sandbox {
            SandboxStatus::Unavailable => entries.push(check(
                ID_SANDBOX,
                "Local sandbox execution (not available in this agent)",
                false,
                false,
            )),
            SandboxStatus::Off => entries.push(check(
                ID_SANDBOX,
                "Local sandbox execution",
                connected,
                false,
            )),
            SandboxStatus::On { sessions } => {
                let label = match sessions.len() {
                    0 => "Local sandbox execution".to_owned(),
                    1 => "Local sandbox execution (1 session)".to_owned(),
                    n => format!("Local sandbox execution ({n} sessions)"),
                };
                entries.push(check(ID_SANDBOX, label, connected, true));
            }
        }
        if let Some(pending) = &state.approvals
            && !pending.is_empty()
        {
            entries.push(plain(
                ID_APPROVALS,
                format!("Approvals ({})…", pending.len()),
                true,
            ));
        }
        entries.push(MenuEntry::Separator);

        entries.push(plain(ID_OPEN, "Open Airlock…", connected));
        if let Some(on) = state.autostart {
            entries.push(check(ID_AUTOSTART, "Start at login", true, on));
        }
        let quit = if state.attached {
            // The agent belongs to `airlock up`: quitting leaves it running.
            "Quit tray (agent keeps running)"
        } else {
            "Quit"
        };
        entries.push(plain(ID_QUIT, quit, state.agent != AgentStatus::Stopping));

        MenuModel {
            entries,
            icon: icon_for(&state.agent),
            tooltip: status,
        }
    }

    /// The items (separators skipped), handy for lookups.
    pub fn items(&self) -> impl Iterator<Item = &ItemModel> {
        self.entries.iter().filter_map(|entry| match entry {
            MenuEntry::Item(item) => Some(item),
            MenuEntry::Separator => None,
        })
    }

    /// The item with this id.
    pub fn item(&self, id: &str) -> Option<&ItemModel> {
        self.items().find(|item| item.id == id)
    }
}

/// What a click on a menu item asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuAction {
    /// Show and focus the main window.
    Open,
    /// Show the Approvals view.
    OpenApprovals,
    /// Quit the tray app (stopping its own agent gracefully).
    Quit,
    /// Flip the exposure of the server with this id.
    ToggleServer(String),
    /// Copy the URL of the server with this id.
    CopyUrl(String),
    /// Flip local sandbox execution.
    ToggleSandbox,
    /// Flip "Start at login".
    ToggleAutostart,
}

impl MenuAction {
    /// Maps a clicked item id back to an action; `None` for ids that carry
    /// no action (status lines, headings) or are unknown.
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            ID_OPEN => Some(MenuAction::Open),
            ID_APPROVALS => Some(MenuAction::OpenApprovals),
            ID_QUIT => Some(MenuAction::Quit),
            ID_SANDBOX => Some(MenuAction::ToggleSandbox),
            ID_AUTOSTART => Some(MenuAction::ToggleAutostart),
            _ => {
                let with_prefix = |prefix: &str| {
                    id.strip_prefix(prefix)
                        .filter(|rest| !rest.is_empty())
                        .map(str::to_owned)
                };
                with_prefix(SERVER_ID_PREFIX)
                    .map(MenuAction::ToggleServer)
                    .or_else(|| with_prefix(COPY_ID_PREFIX).map(MenuAction::CopyUrl))
            }
        }
    }
}

impl fmt::Display for MenuAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MenuAction::Open => f.write_str("open"),
            MenuAction::OpenApprovals => f.write_str("open approvals"),
            MenuAction::Quit => f.write_str("quit"),
            MenuAction::ToggleServer(id) => write!(f, "toggle server {id:?}"),
            MenuAction::CopyUrl(id) => write!(f, "copy the URL of server {id:?}"),
            MenuAction::ToggleSandbox => f.write_str("toggle local sandbox execution"),
            MenuAction::ToggleAutostart => f.write_str("toggle start at login"),
        }
    }
}

/// Icon variant for an agent status.
pub fn icon_for(status: &AgentStatus) -> TrayIconKind {
    match status {
        AgentStatus::NotRunning | AgentStatus::Stopping => TrayIconKind::Off,
        AgentStatus::Connecting => TrayIconKind::Connecting,
        AgentStatus::Running => TrayIconKind::Connected,
        AgentStatus::Attention { .. } | AgentStatus::Failed { .. } => TrayIconKind::Attention,
    }
}

fn with_reason(prefix: &str, reason: &str, fallback: &str) -> String {
    let reason = sanitize(reason);
    if reason.is_empty() {
        fallback.to_owned()
    } else {
        truncate(&format!("{prefix}{reason}"), MAX_LABEL_CHARS)
    }
}

fn status_line(state: &TrayState) -> String {
    match &state.agent {
        AgentStatus::NotRunning => "Airlock — agent not running".to_owned(),
        AgentStatus::Connecting => "Airlock — connecting to agent…".to_owned(),
        AgentStatus::Stopping => "Airlock — stopping the agent…".to_owned(),
        AgentStatus::Running => {
            let total = state.servers.len();
            let exposed = state.servers.iter().filter(|s| s.exposed).count();
            let noun = if total == 1 { "server" } else { "servers" };
            format!("Airlock — {exposed} of {total} {noun} exposed")
        }
        AgentStatus::Attention { reason } => {
            with_reason("Airlock — ", reason, "Airlock — needs attention")
        }
        AgentStatus::Failed { reason } => with_reason(
            "Airlock — agent stopped: ",
            reason,
            "Airlock — agent stopped",
        ),
    }
}

fn tunnel_line(tunnel: &TunnelStatus) -> Option<String> {
    Some(match tunnel {
        TunnelStatus::NotConfigured => return None,
        TunnelStatus::Connecting => "Tunnel: connecting…".to_owned(),
        TunnelStatus::Connected { connections: 1 } => "Tunnel: connected (1 connection)".to_owned(),
        TunnelStatus::Connected { connections } => {
            format!("Tunnel: connected ({connections} connections)")
        }
        TunnelStatus::Down { reason } => with_reason("Tunnel: down — ", reason, "Tunnel: down"),
    })
}

/// A one-line, length-limited label from untrusted text.
pub fn clean(text: &str) -> String {
    truncate(&sanitize(text), MAX_LABEL_CHARS)
}

/// Makes text from outside (agent, config files) safe for a one-line menu
/// label: control characters become spaces, runs of whitespace collapse.
fn sanitize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() || c.is_control() {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// Cuts `text` to at most `max` characters, ending in "…" when cut.
fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Escapes a label for the native menu library, which treats `&` as a
/// mnemonic marker (`&&` is a literal ampersand).
pub fn native_label(label: &str) -> String {
    label.replace('&', "&&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(model: &MenuModel) -> Vec<&str> {
        model.items().map(|i| i.label.as_str()).collect()
    }

    fn item<'a>(model: &'a MenuModel, id: &str) -> &'a ItemModel {
        model
            .item(id)
            .unwrap_or_else(|| panic!("no item {id:?} in {model:?}"))
    }

    fn server(id: &str, name: &str, exposed: bool) -> ServerEntry {
        ServerEntry {
            id: id.into(),
            name: name.into(),
            exposed,
            exposable: true,
            url: exposed.then(|| format!("http://127.0.0.1:4000/{name}/mcp")),
        }
    }

    fn running(servers: Vec<ServerEntry>) -> TrayState {
        TrayState {
            agent: AgentStatus::Running,
            servers,
            ..TrayState::default()
        }
    }

    fn separators(model: &MenuModel) -> usize {
        model
            .entries
            .iter()
            .filter(|e| **e == MenuEntry::Separator)
            .count()
    }

    #[test]
    fn default_state_is_the_agentless_menu() {
        let model = MenuModel::build(&TrayState::default());
        assert_eq!(
            labels(&model),
            [
                "Airlock — agent not running",
                "Local sandbox execution (not available in this agent)",
                "Open Airlock…",
                "Quit"
            ]
        );
        assert_eq!(
            model.entries[1],
            MenuEntry::Separator,
            "separator after status"
        );
        let status = item(&model, ID_STATUS);
        assert!(!status.enabled, "status line must be disabled");
        assert_eq!(status.checked, None);
        assert!(
            !item(&model, ID_OPEN).enabled,
            "no agent, no UI to open: Open is greyed out"
        );
        assert!(item(&model, ID_QUIT).enabled);
        assert!(model.item(ID_TUNNEL).is_none(), "no tunnel line");
        assert!(model.item(ID_APPROVALS).is_none(), "no approvals API");
        assert!(model.item(ID_AUTOSTART).is_none());
        assert_eq!(model.icon, TrayIconKind::Off);
        assert_eq!(model.tooltip, "Airlock — agent not running");
    }

    #[test]
    fn running_agent_lists_servers_as_check_items_with_copy_urls() {
        let state = running(vec![
            server("a1", "github", true),
            server("b2", "filesystem", false),
        ]);
        let model = MenuModel::build(&state);
        assert_eq!(
            labels(&model),
            [
                "Airlock — 1 of 2 servers exposed",
                "Servers",
                "github",
                "filesystem",
                "Copy URL — github",
                "Local sandbox execution (not available in this agent)",
                "Open Airlock…",
                "Quit"
            ]
        );
        assert!(
            !item(&model, ID_SERVERS).enabled,
            "heading is not clickable"
        );
        let github = item(&model, "server:a1");
        assert_eq!(github.checked, Some(true));
        assert!(github.enabled);
        let fs = item(&model, "server:b2");
        assert_eq!(fs.checked, Some(false));
        assert!(fs.enabled);
        let copy = item(&model, "copy:a1");
        assert!(copy.enabled);
        assert_eq!(copy.checked, None);
        assert!(
            model.item("copy:b2").is_none(),
            "no Copy URL for an unexposed server"
        );
        assert_eq!(separators(&model), 3);
        assert!(item(&model, ID_OPEN).enabled);
        assert_eq!(model.icon, TrayIconKind::Connected);
    }

    #[test]
    fn no_servers_says_so_while_connected() {
        let model = MenuModel::build(&running(vec![]));
        let heading = item(&model, ID_SERVERS);
        assert_eq!(heading.label, "No MCP servers found");
        assert!(!heading.enabled);
        assert_eq!(model.tooltip, "Airlock — 0 of 0 servers exposed");
    }

    #[test]
    fn singular_server_wording() {
        let state = running(vec![server("x", "one", true)]);
        assert_eq!(
            MenuModel::build(&state).tooltip,
            "Airlock — 1 of 1 server exposed"
        );
    }

    #[test]
    fn servers_cannot_be_toggled_without_an_agent() {
        for agent in [
            AgentStatus::NotRunning,
            AgentStatus::Connecting,
            AgentStatus::Stopping,
            AgentStatus::Failed {
                reason: "port taken".into(),
            },
        ] {
            let state = TrayState {
                agent: agent.clone(),
                servers: vec![server("a1", "github", true)],
                sandbox: SandboxStatus::Off,
                ..TrayState::default()
            };
            let model = MenuModel::build(&state);
            let github = item(&model, "server:a1");
            assert!(!github.enabled, "{agent:?} must disable toggles");
            assert_eq!(github.checked, Some(true), "last known state still shown");
            assert!(!item(&model, ID_SANDBOX).enabled, "{agent:?}");
            assert!(!item(&model, ID_OPEN).enabled, "{agent:?}");
        }
    }

    #[test]
    fn unexposable_servers_are_greyed_out_and_say_why() {
        let mut remote = server("r", "public-api", false);
        remote.exposable = false;
        let model = MenuModel::build(&running(vec![remote]));
        let entry = item(&model, "server:r");
        assert!(!entry.enabled);
        assert_eq!(entry.label, "public-api (cannot be exposed)");
    }

    #[test]
    fn sandbox_checkbox_follows_the_agent() {
        let mut state = running(vec![]);
        let unavailable = MenuModel::build(&state);
        let sandbox = item(&unavailable, ID_SANDBOX);
        assert!(!sandbox.enabled, "greyed out without the sandbox API");
        assert_eq!(sandbox.checked, Some(false));
        assert!(sandbox.label.contains("not available"), "{}", sandbox.label);

        state.sandbox = SandboxStatus::Off;
        let off = MenuModel::build(&state);
        let sandbox = item(&off, ID_SANDBOX);
        assert!(sandbox.enabled);
        assert_eq!(sandbox.checked, Some(false));
        assert_eq!(sandbox.label, "Local sandbox execution");

        state.sandbox = SandboxStatus::On { sessions: vec![] };
        assert_eq!(
            item(&MenuModel::build(&state), ID_SANDBOX).checked,
            Some(true)
        );
        state.sandbox = SandboxStatus::On {
            sessions: vec!["s1".into()],
        };
        assert_eq!(
            item(&MenuModel::build(&state), ID_SANDBOX).label,
            "Local sandbox execution (1 session)"
        );
        state.sandbox = SandboxStatus::On {
            sessions: vec!["s1".into(), "s2".into(), "s3".into()],
        };
        assert_eq!(
            item(&MenuModel::build(&state), ID_SANDBOX).label,
            "Local sandbox execution (3 sessions)"
        );
    }

    #[test]
    fn approvals_item_counts_pending_requests_and_hides_when_none() {
        let approval = |id: &str| ApprovalEntry {
            id: id.into(),
            summary: "Claude wants github".into(),
        };
        let mut state = running(vec![]);
        assert!(MenuModel::build(&state).item(ID_APPROVALS).is_none());
        state.approvals = Some(vec![]);
        assert!(
            MenuModel::build(&state).item(ID_APPROVALS).is_none(),
            "nothing pending: no item"
        );
        state.approvals = Some(vec![approval("a"), approval("b")]);
        let model = MenuModel::build(&state);
        let approvals = item(&model, ID_APPROVALS);
        assert_eq!(approvals.label, "Approvals (2)…");
        assert!(approvals.enabled);
        assert_eq!(
            MenuAction::from_id(&approvals.id),
            Some(MenuAction::OpenApprovals)
        );
    }

    #[test]
    fn tunnel_line_shows_the_tunnel_state() {
        let mut state = running(vec![]);
        let line = |state: &TrayState| {
            let model = MenuModel::build(state);
            let tunnel = item(&model, ID_TUNNEL);
            assert!(!tunnel.enabled);
            tunnel.label.clone()
        };
        state.tunnel = TunnelStatus::Connecting;
        assert_eq!(line(&state), "Tunnel: connecting…");
        state.tunnel = TunnelStatus::Connected { connections: 1 };
        assert_eq!(line(&state), "Tunnel: connected (1 connection)");
        state.tunnel = TunnelStatus::Connected { connections: 4 };
        assert_eq!(line(&state), "Tunnel: connected (4 connections)");
        state.tunnel = TunnelStatus::Down {
            reason: "cloudflared\nnot installed".into(),
        };
        assert_eq!(line(&state), "Tunnel: down — cloudflared not installed");
        state.tunnel = TunnelStatus::Down { reason: "".into() };
        assert_eq!(line(&state), "Tunnel: down");
    }

    #[test]
    fn autostart_and_attached_quit_labels() {
        let mut state = running(vec![]);
        state.autostart = Some(true);
        let model = MenuModel::build(&state);
        let autostart = item(&model, ID_AUTOSTART);
        assert_eq!(autostart.checked, Some(true));
        assert_eq!(item(&model, ID_QUIT).label, "Quit");
        state.attached = true;
        state.autostart = Some(false);
        let model = MenuModel::build(&state);
        assert_eq!(item(&model, ID_AUTOSTART).checked, Some(false));
        assert_eq!(
            item(&model, ID_QUIT).label,
            "Quit tray (agent keeps running)"
        );
        state.agent = AgentStatus::Stopping;
        assert!(!item(&MenuModel::build(&state), ID_QUIT).enabled);
    }

    #[test]
    fn icon_follows_status() {
        assert_eq!(icon_for(&AgentStatus::NotRunning), TrayIconKind::Off);
        assert_eq!(icon_for(&AgentStatus::Stopping), TrayIconKind::Off);
        assert_eq!(icon_for(&AgentStatus::Connecting), TrayIconKind::Connecting);
        assert_eq!(icon_for(&AgentStatus::Running), TrayIconKind::Connected);
        assert_eq!(
            icon_for(&AgentStatus::Attention { reason: "x".into() }),
            TrayIconKind::Attention
        );
        assert_eq!(
            icon_for(&AgentStatus::Failed { reason: "x".into() }),
            TrayIconKind::Attention
        );
        let names = [
            TrayIconKind::Off,
            TrayIconKind::Connecting,
            TrayIconKind::Connected,
            TrayIconKind::Attention,
        ]
        .map(TrayIconKind::file_name);
        assert_eq!(
            names,
            [
                "tray-off.png",
                "tray-connecting.png",
                "tray-connected.png",
                "tray-attention.png"
            ]
        );
    }

    #[test]
    fn icon_files_exist_in_the_repo() {
        let icons = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../icons");
        for kind in [
            TrayIconKind::Off,
            TrayIconKind::Connecting,
            TrayIconKind::Connected,
            TrayIconKind::Attention,
        ] {
            let path = icons.join(kind.file_name());
            assert!(path.is_file(), "missing {}", path.display());
        }
    }

    #[test]
    fn attention_reason_is_sanitized_and_truncated() {
        let state = TrayState {
            agent: AgentStatus::Attention {
                reason: "server\n\t'github'   failed:\u{7} ".to_owned() + &"x".repeat(200),
            },
            ..TrayState::default()
        };
        let model = MenuModel::build(&state);
        let status = &item(&model, ID_STATUS).label;
        assert!(status.starts_with("Airlock — server 'github' failed: xxx"));
        assert!(!status.chars().any(char::is_control), "{status:?}");
        assert_eq!(status.chars().count(), MAX_LABEL_CHARS);
        assert!(status.ends_with('…'));
        assert_eq!(model.icon, TrayIconKind::Attention);

        let blank = TrayState {
            agent: AgentStatus::Attention {
                reason: " \n ".into(),
            },
            ..TrayState::default()
        };
        assert_eq!(
            MenuModel::build(&blank).tooltip,
            "Airlock — needs attention"
        );
        let failed = TrayState {
            agent: AgentStatus::Failed {
                reason: "cannot listen on 127.0.0.1:4000".into(),
            },
            ..TrayState::default()
        };
        assert_eq!(
            MenuModel::build(&failed).tooltip,
            "Airlock — agent stopped: cannot listen on 127.0.0.1:4000"
        );
    }

    #[test]
    fn long_server_names_are_cut_but_ids_keep_the_full_id() {
        let name = "n".repeat(100);
        let id = "i".repeat(100);
        let state = running(vec![server(&id, &name, true)]);
        let model = MenuModel::build(&state);
        let entry = item(&model, &format!("server:{id}"));
        assert_eq!(entry.label.chars().count(), MAX_LABEL_CHARS);
        assert_eq!(
            MenuAction::from_id(&entry.id),
            Some(MenuAction::ToggleServer(id.clone()))
        );
        let copy = item(&model, &format!("copy:{id}"));
        assert_eq!(copy.label.chars().count(), MAX_LABEL_CHARS);
        assert_eq!(MenuAction::from_id(&copy.id), Some(MenuAction::CopyUrl(id)));
    }

    #[test]
    fn ids_map_back_to_actions() {
        assert_eq!(MenuAction::from_id(ID_OPEN), Some(MenuAction::Open));
        assert_eq!(MenuAction::from_id(ID_QUIT), Some(MenuAction::Quit));
        assert_eq!(
            MenuAction::from_id(ID_SANDBOX),
            Some(MenuAction::ToggleSandbox)
        );
        assert_eq!(
            MenuAction::from_id(ID_AUTOSTART),
            Some(MenuAction::ToggleAutostart)
        );
        for inert in [
            ID_STATUS, ID_TUNNEL, ID_SERVERS, "server:", "copy:", "bogus",
        ] {
            assert_eq!(MenuAction::from_id(inert), None, "{inert}");
        }
        assert_eq!(
            MenuAction::from_id("server:a:b"),
            Some(MenuAction::ToggleServer("a:b".into()))
        );
        // Every enabled item of a full menu maps to an action.
        let state = TrayState {
            agent: AgentStatus::Running,
            servers: vec![server("s", "s", true)],
            tunnel: TunnelStatus::Connected { connections: 2 },
            sandbox: SandboxStatus::Off,
            approvals: Some(vec![ApprovalEntry {
                id: "p".into(),
                summary: "x".into(),
            }]),
            autostart: Some(false),
            attached: false,
        };
        let model = MenuModel::build(&state);
        assert_eq!(model.items().filter(|i| i.enabled).count(), 7);
        for item in model.items().filter(|i| i.enabled) {
            assert!(
                MenuAction::from_id(&item.id).is_some(),
                "{:?} has no action",
                item.id
            );
        }
        for item in model.items().filter(|i| !i.enabled) {
            assert_eq!(MenuAction::from_id(&item.id), None, "{:?}", item.id);
        }
    }

    #[test]
    fn native_labels_escape_mnemonic_markers() {
        assert_eq!(native_label("R&D tools"), "R&&D tools");
        assert_eq!(native_label("plain_name"), "plain_name");
    }
}
