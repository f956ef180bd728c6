//! Pure menu model for the tray: no Tauri types, so it can be unit tested
//! without a display.
//!
//! The shell turns a [`MenuModel`] into native menu items; menu clicks come
//! back as item ids which [`MenuAction::from_id`] turns into actions. The
//! real tray fills [`TrayState`] from the agent's event stream later.

use std::fmt;

/// Longest label the menu shows; longer text (server names, error messages
/// from the agent) is cut with an ellipsis so the menu stays usable.
pub const MAX_LABEL_CHARS: usize = 64;

/// Id of the disabled status line.
pub const ID_STATUS: &str = "status";
/// Id of "Open Airlock…".
pub const ID_OPEN: &str = "open";
/// Id of "Quit".
pub const ID_QUIT: &str = "quit";
/// Prefix of the per-server toggle ids (`server:<name>`).
pub const SERVER_ID_PREFIX: &str = "server:";

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
    /// Connected, but something needs the user (e.g. a server failed).
    Attention {
        /// Short human-readable reason, shown in the status line.
        reason: String,
    },
}

/// One discovered MCP server as the tray shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEntry {
    /// Server name as reported by the agent (unique per agent).
    pub name: String,
    /// Whether the server is currently exposed to cloud agents.
    pub exposed: bool,
}

/// Everything the tray menu is built from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TrayState {
    /// Agent connection status.
    pub agent: AgentStatus,
    /// Discovered servers, in display order.
    pub servers: Vec<ServerEntry>,
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

impl MenuModel {
    /// Builds the menu for `state`.
    pub fn build(state: &TrayState) -> Self {
        let status = status_line(state);
        let mut entries = vec![
            MenuEntry::Item(ItemModel {
                id: ID_STATUS.to_owned(),
                label: status.clone(),
                enabled: false,
                checked: None,
            }),
            MenuEntry::Separator,
        ];

        if !state.servers.is_empty() {
            // Toggling only makes sense while the agent can act on it.
            let can_toggle = matches!(
                state.agent,
                AgentStatus::Running | AgentStatus::Attention { .. }
            );
            for server in &state.servers {
                entries.push(MenuEntry::Item(ItemModel {
                    id: format!("{SERVER_ID_PREFIX}{}", server.name),
                    label: truncate(&sanitize(&server.name), MAX_LABEL_CHARS),
                    enabled: can_toggle,
                    checked: Some(server.exposed),
                }));
            }
            entries.push(MenuEntry::Separator);
        }

        entries.push(MenuEntry::Item(ItemModel {
            id: ID_OPEN.to_owned(),
            label: "Open Airlock…".to_owned(),
            enabled: true,
            checked: None,
        }));
        entries.push(MenuEntry::Item(ItemModel {
            id: ID_QUIT.to_owned(),
            label: "Quit".to_owned(),
            enabled: true,
            checked: None,
        }));

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
}

/// What a click on a menu item asks the shell to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MenuAction {
    /// Show and focus the main window.
    Open,
    /// Quit the tray app.
    Quit,
    /// Flip the exposure of the named server.
    ToggleServer(String),
}

impl MenuAction {
    /// Maps a clicked item id back to an action; `None` for ids that carry
    /// no action (the status line) or are unknown.
    pub fn from_id(id: &str) -> Option<Self> {
        match id {
            ID_OPEN => Some(MenuAction::Open),
            ID_QUIT => Some(MenuAction::Quit),
            _ => id
                .strip_prefix(SERVER_ID_PREFIX)
                .filter(|name| !name.is_empty())
                .map(|name| MenuAction::ToggleServer(name.to_owned())),
        }
    }
}

impl fmt::Display for MenuAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MenuAction::Open => f.write_str("open"),
            MenuAction::Quit => f.write_str("quit"),
            MenuAction::ToggleServer(name) => write!(f, "toggle server {name:?}"),
        }
    }
}

/// Icon variant for an agent status.
pub fn icon_for(status: &AgentStatus) -> TrayIconKind {
    match status {
        AgentStatus::NotRunning => TrayIconKind::Off,
        AgentStatus::Connecting => TrayIconKind::Connecting,
        AgentStatus::Running => TrayIconKind::Connected,
        AgentStatus::Attention { .. } => TrayIconKind::Attention,
    }
}

fn status_line(state: &TrayState) -> String {
    match &state.agent {
        AgentStatus::NotRunning => "Airlock — agent not running".to_owned(),
        AgentStatus::Connecting => "Airlock — connecting to agent…".to_owned(),
        AgentStatus::Running => {
            let total = state.servers.len();
            let exposed = state.servers.iter().filter(|s| s.exposed).count();
            let noun = if total == 1 { "server" } else { "servers" };
            format!("Airlock — {exposed} of {total} {noun} exposed")
        }
        AgentStatus::Attention { reason } => {
            let reason = sanitize(reason);
            if reason.is_empty() {
                "Airlock — needs attention".to_owned()
            } else {
                truncate(&format!("Airlock — {reason}"), MAX_LABEL_CHARS)
            }
        }
    }
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
            .items()
            .find(|i| i.id == id)
            .unwrap_or_else(|| panic!("no item {id:?} in {model:?}"))
    }

    #[test]
    fn default_state_is_the_minimal_shell_menu() {
        let model = MenuModel::build(&TrayState::default());
        assert_eq!(
            labels(&model),
            ["Airlock — agent not running", "Open Airlock…", "Quit"]
        );
        assert_eq!(
            model.entries[1],
            MenuEntry::Separator,
            "separator after status"
        );
        let status = item(&model, ID_STATUS);
        assert!(!status.enabled, "status line must be disabled");
        assert_eq!(status.checked, None);
        assert!(item(&model, ID_OPEN).enabled);
        assert!(item(&model, ID_QUIT).enabled);
        assert_eq!(model.icon, TrayIconKind::Off);
        assert_eq!(model.tooltip, "Airlock — agent not running");
    }

    #[test]
    fn running_agent_lists_servers_as_check_items() {
        let state = TrayState {
            agent: AgentStatus::Running,
            servers: vec![
                ServerEntry {
                    name: "github".into(),
                    exposed: true,
                },
                ServerEntry {
                    name: "filesystem".into(),
                    exposed: false,
                },
            ],
        };
        let model = MenuModel::build(&state);
        assert_eq!(
            labels(&model),
            [
                "Airlock — 1 of 2 servers exposed",
                "github",
                "filesystem",
                "Open Airlock…",
                "Quit"
            ]
        );
        let github = item(&model, "server:github");
        assert_eq!(github.checked, Some(true));
        assert!(github.enabled);
        let fs = item(&model, "server:filesystem");
        assert_eq!(fs.checked, Some(false));
        assert!(fs.enabled);
        let separators = model
            .entries
            .iter()
            .filter(|e| **e == MenuEntry::Separator)
            .count();
        assert_eq!(separators, 2);
        assert_eq!(model.icon, TrayIconKind::Connected);
    }

    #[test]
    fn singular_server_wording() {
        let state = TrayState {
            agent: AgentStatus::Running,
            servers: vec![ServerEntry {
                name: "one".into(),
                exposed: true,
            }],
        };
        assert_eq!(
            MenuModel::build(&state).tooltip,
            "Airlock — 1 of 1 server exposed"
        );
    }

    #[test]
    fn servers_cannot_be_toggled_without_an_agent() {
        for agent in [AgentStatus::NotRunning, AgentStatus::Connecting] {
            let state = TrayState {
                agent: agent.clone(),
                servers: vec![ServerEntry {
                    name: "github".into(),
                    exposed: true,
                }],
            };
            let model = MenuModel::build(&state);
            let github = item(&model, "server:github");
            assert!(!github.enabled, "{agent:?} must disable toggles");
            assert_eq!(github.checked, Some(true), "last known state still shown");
        }
    }

    #[test]
    fn icon_follows_status() {
        assert_eq!(icon_for(&AgentStatus::NotRunning), TrayIconKind::Off);
        assert_eq!(icon_for(&AgentStatus::Connecting), TrayIconKind::Connecting);
        assert_eq!(icon_for(&AgentStatus::Running), TrayIconKind::Connected);
        assert_eq!(
            icon_for(&AgentStatus::Attention { reason: "x".into() }),
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
            servers: vec![],
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
            servers: vec![],
        };
        assert_eq!(
            MenuModel::build(&blank).tooltip,
            "Airlock — needs attention"
        );
    }

    #[test]
    fn long_server_names_are_cut_but_ids_keep_the_full_name() {
        let name = "n".repeat(100);
        let state = TrayState {
            agent: AgentStatus::Running,
            servers: vec![ServerEntry {
                name: name.clone(),
                exposed: false,
            }],
        };
        let model = MenuModel::build(&state);
        let entry = item(&model, &format!("server:{name}"));
        assert_eq!(entry.label.chars().count(), MAX_LABEL_CHARS);
        assert_eq!(
            MenuAction::from_id(&entry.id),
            Some(MenuAction::ToggleServer(name))
        );
    }

    #[test]
    fn ids_map_back_to_actions() {
        assert_eq!(MenuAction::from_id(ID_OPEN), Some(MenuAction::Open));
        assert_eq!(MenuAction::from_id(ID_QUIT), Some(MenuAction::Quit));
        assert_eq!(MenuAction::from_id(ID_STATUS), None);
        assert_eq!(MenuAction::from_id("server:"), None);
        assert_eq!(MenuAction::from_id("bogus"), None);
        assert_eq!(
            MenuAction::from_id("server:a:b"),
            Some(MenuAction::ToggleServer("a:b".into()))
        );
        // Every enabled item of a full menu maps to an action.
        let state = TrayState {
            agent: AgentStatus::Running,
            servers: vec![ServerEntry {
                name: "s".into(),
                exposed: true,
            }],
        };
        for item in MenuModel::build(&state).items().filter(|i| i.enabled) {
            assert!(
                MenuAction::from_id(&item.id).is_some(),
                "{:?} has no action",
                item.id
            );
        }
    }

    #[test]
    fn native_labels_escape_mnemonic_markers() {
        assert_eq!(native_label("R&D tools"), "R&&D tools");
        assert_eq!(native_label("plain_name"), "plain_name");
    }
}
