//! From the agent's control API documents to a [`TrayState`], and from two
//! successive states to the notifications worth showing. Pure functions: the
//! agent's JSON goes in, tray values come out (tested without an agent).
//!
//! Sources (see `docs/control-api.md`): `GET /v1/status` (tunnel),
//! `GET /v1/servers` (servers), and — where the agent has them —
//! `GET /v1/approvals` (pending OAuth approvals) and `GET /v1/sandbox`
//! (local sandbox execution). An agent without the last two answers `404`;
//! the tray then shows the sandbox checkbox greyed out and no approvals item.

use serde_json::Value;

use crate::menu::{
    AgentStatus, ApprovalEntry, SandboxStatus, ServerEntry, TrayState, TunnelStatus, clean,
};

/// Path of the approvals list (pending OAuth grants).
pub const APPROVALS_PATH: &str = "/v1/approvals";
/// The OAuth server's own event stream (approvals raised and decided), where
/// the agent serves it next to `/v1/events`.
pub const OAUTH_EVENTS_PATH: &str = "/v1/oauth/events";
/// Path of the sandbox state; `POST {SANDBOX_PATH}` with `{"enabled": bool}` switches it.
pub const SANDBOX_PATH: &str = "/v1/sandbox";

/// The agent's documents, as fetched. `None` for an endpoint the agent does
/// not have (404).
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// `GET /v1/status`.
    pub status: Value,
    /// `GET /v1/servers`.
    pub servers: Value,
    /// `GET /v1/approvals`, when the agent has it.
    pub approvals: Option<Value>,
    /// `GET /v1/sandbox`, when the agent has it.
    pub sandbox: Option<Value>,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// The list under `key`, or the document itself when it is a list.
fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key)
        .and_then(Value::as_array)
        .or_else(|| v.as_array())
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// The servers of `GET /v1/servers`, skipping entries without an id.
///
/// "Copy URL" copies what a cloud agent can reach: the Anthropic tunnel URL,
/// else the relay URL when the agent uses relay nodes (`public_relay`), else
/// the loopback gateway URL.
pub fn servers(doc: &Value, public_relay: bool) -> Vec<ServerEntry> {
    list(doc, "servers")
        .iter()
        .filter_map(|s| {
            let id = str_at(s, "id")?.to_owned();
            let exposed = s.get("exposed").and_then(Value::as_bool).unwrap_or(false);
            let url = if exposed {
                str_at(s, "tunnel_url")
                    .or_else(|| str_at(s, "relay_url").filter(|_| public_relay))
                    .or_else(|| str_at(s, "url"))
                    .map(str::to_owned)
            } else {
                None
            };
            Some(ServerEntry {
                name: str_at(s, "name").unwrap_or(&id).to_owned(),
                id,
                exposed,
                exposable: s.get("exposable").and_then(Value::as_bool).unwrap_or(true),
                url,
            })
        })
        .collect()
}

/// Whether the agent reaches the outside through relay nodes (`[relay] nodes`),
/// not the embedded loopback relay.
pub fn uses_relay_nodes(status: &Value) -> bool {
    status
        .get("relay")
        .and_then(|r| str_at(r, "mode"))
        .is_some_and(|mode| mode == "nodes")
}

/// The tunnel line from `GET /v1/status`: the Anthropic tunnel
/// (`anthropic.cloudflared`), else the relay nodes (`relay.nodes`). The
/// embedded loopback relay is no tunnel: no line.
pub fn tunnel(status: &Value) -> TunnelStatus {
    let Some(anthropic) = status.get("anthropic").filter(|a| !a.is_null()) else {
        return if uses_relay_nodes(status) {
            relay_tunnel(status.get("relay").unwrap_or(&Value::Null))
        } else {
            TunnelStatus::NotConfigured
        };
    };
    let Some(cf) = anthropic.get("cloudflared").filter(|c| !c.is_null()) else {
        return TunnelStatus::Down {
            reason: "no cloudflared token stored (airlock tunnel token)".to_owned(),
        };
    };
    match str_at(cf, "state").unwrap_or_default() {
        "running" => TunnelStatus::Connected {
            connections: cf.get("connections").and_then(Value::as_u64).unwrap_or(0),
        },
        "starting" => TunnelStatus::Connecting,
        "not_installed" => TunnelStatus::Down {
            reason: "cloudflared is not installed".to_owned(),
        },
        "backoff" => TunnelStatus::Down {
            reason: str_at(cf, "last_error")
                .unwrap_or("cloudflared keeps failing")
                .to_owned(),
        },
        "stopped" => TunnelStatus::Down {
            reason: "cloudflared stopped".to_owned(),
        },
        other => TunnelStatus::Down {
            reason: format!("cloudflared is {other}"),
        },
    }
}

fn relay_tunnel(relay: &Value) -> TunnelStatus {
    let nodes = list(relay, "nodes");
    let connected = nodes
        .iter()
        .filter(|n| str_at(n, "state") == Some("connected"))
        .count() as u64;
    if connected > 0 {
        return TunnelStatus::Connected {
            connections: connected,
        };
    }
    if nodes
        .iter()
        .any(|n| str_at(n, "state") == Some("connecting"))
    {
        return TunnelStatus::Connecting;
    }
    let reason = nodes
        .iter()
        .find_map(|n| str_at(n, "last_error"))
        .map(str::to_owned)
        .unwrap_or_else(|| "no relay node is connected".to_owned());
    TunnelStatus::Down { reason }
}

/// Pending approvals from `GET /v1/approvals` (a list, or `{"approvals":
/// [...]}`). Entries already decided (`state` other than `pending`) are left
/// out.
pub fn approvals(doc: &Value) -> Vec<ApprovalEntry> {
    list(doc, "approvals")
        .iter()
        .filter(|a| {
            str_at(a, "state")
                .or_else(|| str_at(a, "status"))
                .is_none_or(|s| s == "pending")
        })
        .filter_map(|a| {
            let id = str_at(a, "id")?.to_owned();
            let client = str_at(a, "client_name")
                .or_else(|| a.get("client").and_then(|c| str_at(c, "name")))
                .or_else(|| str_at(a, "client"))
                .unwrap_or("a client");
            let summary = match str_at(a, "server_name")
                .or_else(|| str_at(a, "server"))
                .or_else(|| a.get("server").and_then(|s| str_at(s, "name")))
            {
                Some(server) => format!("{} wants access to {}", clean(client), clean(server)),
                None => format!("{} wants access", clean(client)),
            };
            Some(ApprovalEntry { id, summary })
        })
        .collect()
}

/// Local sandbox execution from `GET /v1/sandbox` (`enabled`, `sessions`).
pub fn sandbox(doc: &Value) -> SandboxStatus {
    let enabled = doc
        .get("enabled")
        .and_then(Value::as_bool)
        .or_else(|| str_at(doc, "state").map(|s| s == "on" || s == "running"))
        .unwrap_or(false);
    if !enabled {
        return SandboxStatus::Off;
    }
    let mut sessions: Vec<String> = list(doc, "sessions")
        .iter()
        .filter_map(|s| s.as_str().or_else(|| str_at(s, "id")).map(str::to_owned))
        .collect();
    // The worker's current item (`current.session_id`, as the worker crate's
    // status has it, possibly under `worker`), or a `session` object.
    let current = [doc, doc.get("worker").unwrap_or(&Value::Null)]
        .into_iter()
        .find_map(|d| d.get("current").and_then(|c| str_at(c, "session_id")))
        .or_else(|| doc.get("session").and_then(|s| str_at(s, "id")));
    if let Some(id) = current
        && !sessions.iter().any(|s| s == id)
    {
        sessions.push(id.to_owned());
    }
    SandboxStatus::On { sessions }
}

/// Why an exposed server needs attention, if one does.
fn failing_server(doc: &Value) -> Option<String> {
    list(doc, "servers").iter().find_map(|s| {
        let exposed = s.get("exposed").and_then(Value::as_bool).unwrap_or(false);
        let state = s.get("health").and_then(|h| str_at(h, "state"))?;
        (exposed && state == "restarting").then(|| {
            format!(
                "{} keeps failing",
                clean(str_at(s, "name").unwrap_or("a server"))
            )
        })
    })
}

/// The tray state for a connected agent.
pub fn tray_state(docs: &Documents, attached: bool, autostart: Option<bool>) -> TrayState {
    let servers = servers(&docs.servers, uses_relay_nodes(&docs.status));
    let tunnel = tunnel(&docs.status);
    let approvals = docs.approvals.as_ref().map(approvals);
    let sandbox = docs.sandbox.as_ref().map(sandbox).unwrap_or_default();
    let pending = approvals.as_ref().map_or(0, Vec::len);
    let reason = if pending > 0 {
        Some(if pending == 1 {
            "1 approval waiting".to_owned()
        } else {
            format!("{pending} approvals waiting")
        })
    } else if let TunnelStatus::Down { .. } = tunnel {
        Some("tunnel down".to_owned())
    } else {
        failing_server(&docs.servers)
    };
    TrayState {
        agent: match reason {
            Some(reason) => AgentStatus::Attention { reason },
            None => AgentStatus::Running,
        },
        servers,
        tunnel,
        sandbox,
        approvals,
        autostart,
        attached,
    }
}

/// A native notification to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// What kind of event (for logs and tests).
    pub kind: NoticeKind,
    /// Title line.
    pub title: String,
    /// Body text.
    pub body: String,
}

/// The events the tray notifies about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeKind {
    /// New pending approvals.
    Approval,
    /// The tunnel was up and went down (or its agent went away).
    TunnelLost,
    /// A new sandbox session started.
    SandboxSession,
    /// The tray's own agent stopped with an error.
    AgentFailed,
    /// Something the person asked for from the menu failed.
    ActionFailed,
}

/// The notifications that going from `prev` to `next` deserves.
pub fn notices(prev: &TrayState, next: &TrayState) -> Vec<Notice> {
    let mut out = Vec::new();

    let before: Vec<&str> = prev
        .approvals
        .iter()
        .flatten()
        .map(|a| a.id.as_str())
        .collect();
    let new: Vec<&ApprovalEntry> = next
        .approvals
        .iter()
        .flatten()
        .filter(|a| !before.contains(&a.id.as_str()))
        .collect();
    match new.as_slice() {
        [] => {}
        [one] => out.push(Notice {
            kind: NoticeKind::Approval,
            title: "Airlock: approval needed".to_owned(),
            body: format!("{}. Open Airlock to approve or deny.", one.summary),
        }),
        many => out.push(Notice {
            kind: NoticeKind::Approval,
            title: "Airlock: approvals needed".to_owned(),
            body: format!(
                "{} clients want access. Open Airlock to approve or deny.",
                many.len()
            ),
        }),
    }

    if let TunnelStatus::Connected { .. } = prev.tunnel
        && !matches!(next.tunnel, TunnelStatus::Connected { .. })
        && next.agent != AgentStatus::Stopping
    {
        let body = match &next.tunnel {
            TunnelStatus::Down { reason } => {
                format!("Cloud agents cannot reach your servers: {}", clean(reason))
            }
            _ if !next.agent.is_connected() => {
                "Cloud agents cannot reach your servers: the agent stopped".to_owned()
            }
            _ => "Cloud agents cannot reach your servers while it reconnects".to_owned(),
        };
        out.push(Notice {
            kind: NoticeKind::TunnelLost,
            title: "Airlock: tunnel lost".to_owned(),
            body,
        });
    }

    let sessions = |s: &TrayState| match &s.sandbox {
        SandboxStatus::On { sessions } => sessions.clone(),
        _ => Vec::new(),
    };
    let old_sessions = sessions(prev);
    let started = sessions(next)
        .into_iter()
        .filter(|id| !old_sessions.contains(id))
        .count();
    if started > 0 {
        out.push(Notice {
            kind: NoticeKind::SandboxSession,
            title: "Airlock: sandbox session started".to_owned(),
            body: if started == 1 {
                "A cloud agent is running tools on this machine (local sandbox execution)."
                    .to_owned()
            } else {
                format!("{started} cloud agent sessions are running tools on this machine.")
            },
        });
    }

    if let AgentStatus::Failed { reason } = &next.agent
        && !matches!(prev.agent, AgentStatus::Failed { .. })
    {
        out.push(Notice {
            kind: NoticeKind::AgentFailed,
            title: "Airlock: the agent stopped".to_owned(),
            body: clean(reason),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::menu::MenuModel;
    use serde_json::json;

    fn docs() -> Documents {
        Documents {
            status: json!({"running": true, "ready": true, "anthropic": null}),
            servers: json!({"servers": [
                {"id": "a1", "name": "github", "exposable": true, "exposed": true,
                 "url": "http://127.0.0.1:4000/github/mcp", "health": {"state": "ready"}},
                {"id": "b2", "name": "files", "exposable": true, "exposed": false, "url": null},
                {"id": "c3", "name": "remote", "exposable": false, "exposed": false},
                {"name": "no id: skipped"}
            ], "diagnostics": []}),
            approvals: None,
            sandbox: None,
        }
    }

    #[test]
    fn servers_keep_ids_and_prefer_the_tunnel_url() {
        let mut d = docs();
        let s = servers(&d.servers, false);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0].id, "a1");
        assert_eq!(
            s[0].url.as_deref(),
            Some("http://127.0.0.1:4000/github/mcp")
        );
        assert!(!s[2].exposable);
        assert_eq!(s[1].url, None);
        // Relay URLs count only with relay nodes (the embedded relay is loopback).
        d.servers["servers"][0]["relay_url"] = json!("https://github.r.example/mcp");
        assert_eq!(
            servers(&d.servers, false)[0].url.as_deref(),
            Some("http://127.0.0.1:4000/github/mcp")
        );
        assert_eq!(
            servers(&d.servers, true)[0].url.as_deref(),
            Some("https://github.r.example/mcp")
        );
        d.servers["servers"][0]["tunnel_url"] = json!("https://github.t.example/mcp");
        assert_eq!(
            servers(&d.servers, true)[0].url.as_deref(),
            Some("https://github.t.example/mcp")
        );
    }

    #[test]
    fn a_plain_agent_is_running_without_sandbox_or_approvals() {
        let state = tray_state(&docs(), false, Some(false));
        assert_eq!(state.agent, AgentStatus::Running);
        assert_eq!(state.tunnel, TunnelStatus::NotConfigured);
        assert_eq!(state.sandbox, SandboxStatus::Unavailable);
        assert_eq!(state.approvals, None);
        let model = MenuModel::build(&state);
        assert_eq!(model.tooltip, "Airlock — 1 of 3 servers exposed");
    }

    #[test]
    fn tunnel_states_from_status() {
        let with =
            |cf: Value| json!({"anthropic": {"tunnel_domain": "t.example", "cloudflared": cf}});
        assert_eq!(
            tunnel(&with(
                json!({"state": "running", "connections": 4, "pid": 9})
            )),
            TunnelStatus::Connected { connections: 4 }
        );
        assert_eq!(
            tunnel(&with(json!({"state": "starting"}))),
            TunnelStatus::Connecting
        );
        assert_eq!(
            tunnel(&with(
                json!({"state": "backoff", "attempt": 3, "last_error": "exit 1"})
            )),
            TunnelStatus::Down {
                reason: "exit 1".into()
            }
        );
        assert!(matches!(
            tunnel(&with(json!({"state": "not_installed", "hint": "apt"}))),
            TunnelStatus::Down { .. }
        ));
        assert!(matches!(
            tunnel(&with(Value::Null)),
            TunnelStatus::Down { .. }
        ));
    }

    #[test]
    fn relay_nodes_are_the_tunnel_and_the_embedded_relay_is_not() {
        let relay = |mode: &str, nodes: Value| json!({"anthropic": null, "relay": {"mode": mode, "connected": 0, "nodes": nodes}});
        assert_eq!(
            tunnel(&relay(
                "embedded",
                json!([{"addr": "127.0.0.1:1", "state": "connected"}])
            )),
            TunnelStatus::NotConfigured
        );
        assert_eq!(
            tunnel(&relay(
                "nodes",
                json!([
                    {"addr": "a:7443", "state": "connected", "tunnel_domain": "t", "since": 1},
                    {"addr": "b:7443", "state": "backoff", "last_error": "refused"}
                ])
            )),
            TunnelStatus::Connected { connections: 1 }
        );
        assert_eq!(
            tunnel(&relay(
                "nodes",
                json!([{"addr": "a:7443", "state": "connecting"}])
            )),
            TunnelStatus::Connecting
        );
        assert_eq!(
            tunnel(&relay(
                "nodes",
                json!([{"addr": "a:7443", "state": "backoff", "last_error": "refused"}])
            )),
            TunnelStatus::Down {
                reason: "refused".into()
            }
        );
        assert!(matches!(
            tunnel(&relay("nodes", json!([]))),
            TunnelStatus::Down { .. }
        ));
    }

    #[test]
    fn attention_for_approvals_then_tunnel_then_failing_server() {
        let mut d = docs();
        d.servers["servers"][0]["health"] =
            json!({"state": "restarting", "attempt": 2, "retry_in_ms": 400});
        assert_eq!(
            tray_state(&d, false, None).agent,
            AgentStatus::Attention {
                reason: "github keeps failing".into()
            }
        );
        d.status = json!({"anthropic": {"cloudflared": {"state": "stopped"}}});
        assert_eq!(
            tray_state(&d, false, None).agent,
            AgentStatus::Attention {
                reason: "tunnel down".into()
            }
        );
        // The shape of `GET /v1/approvals` (a list of Approval, `state`).
        d.approvals = Some(json!([
            {"id": "p1", "client_id": "https://claude.ai/oauth/mcp-oauth-client-metadata",
             "client_name": "Claude", "client_kind": "cimd", "redirect_host": "claude.ai",
             "server_id": "a1", "server_name": "github", "scopes": ["mcp"], "state": "pending"},
            {"id": "p2", "client": {"name": "Other"}, "state": "approved"},
            {"id": "p3", "client_name": "Third"}
        ]));
        let state = tray_state(&d, false, None);
        assert_eq!(
            state.agent,
            AgentStatus::Attention {
                reason: "2 approvals waiting".into()
            }
        );
        let pending = state.approvals.unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].summary, "Claude wants access to github");
        assert_eq!(pending[1].summary, "Third wants access");
    }

    #[test]
    fn sandbox_documents() {
        assert_eq!(sandbox(&json!({"enabled": false})), SandboxStatus::Off);
        assert_eq!(
            sandbox(&json!({"enabled": true, "sessions": [{"id": "s1"}, "s2"]})),
            SandboxStatus::On {
                sessions: vec!["s1".into(), "s2".into()]
            }
        );
        assert_eq!(
            sandbox(&json!({"state": "on", "session": {"id": "s9"}})),
            SandboxStatus::On {
                sessions: vec!["s9".into()]
            }
        );
        assert_eq!(
            sandbox(&json!({"enabled": true, "worker": {"state": "serving",
                "current": {"work_id": "w1", "session_id": "sesn_1", "since_ms": 5}}})),
            SandboxStatus::On {
                sessions: vec!["sesn_1".into()]
            }
        );
        let mut d = docs();
        d.sandbox = Some(json!({"enabled": false}));
        assert_eq!(tray_state(&d, false, None).sandbox, SandboxStatus::Off);
    }

    #[test]
    fn new_approvals_notify_once() {
        let mut d = docs();
        let before = tray_state(&d, false, None);
        d.approvals = Some(json!([{"id": "p1", "client_name": "Claude\n<b>", "server": "github"}]));
        let after = tray_state(&d, false, None);
        let n = notices(&before, &after);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::Approval);
        assert_eq!(
            n[0].body,
            "Claude <b> wants access to github. Open Airlock to approve or deny."
        );
        assert!(
            notices(&after, &after).is_empty(),
            "same approval: no repeat"
        );
        d.approvals = Some(json!([{"id": "p1"}, {"id": "p2"}, {"id": "p3"}]));
        let more = tray_state(&d, false, None);
        let n = notices(&after, &more);
        assert_eq!(n.len(), 1);
        assert!(n[0].body.starts_with("2 clients"), "{}", n[0].body);
    }

    #[test]
    fn tunnel_loss_notifies_only_on_the_edge() {
        let mut d = docs();
        d.status = json!({"anthropic": {"cloudflared": {"state": "running", "connections": 4}}});
        let up = tray_state(&d, false, None);
        assert!(notices(&up, &up).is_empty());
        d.status = json!({"anthropic": {"cloudflared": {"state": "backoff", "last_error": "edge closed"}}});
        let down = tray_state(&d, false, None);
        let n = notices(&up, &down);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::TunnelLost);
        assert!(n[0].body.ends_with("edge closed"), "{}", n[0].body);
        assert!(notices(&down, &down).is_empty(), "still down: no repeat");
        // The agent vanishing takes the tunnel with it.
        let gone = TrayState {
            servers: up.servers.clone(),
            ..TrayState::default()
        };
        let n = notices(&up, &gone);
        assert_eq!(n.len(), 1);
        assert!(n[0].body.contains("agent stopped"), "{}", n[0].body);
        // Quitting is not a loss.
        let stopping = TrayState {
            agent: AgentStatus::Stopping,
            ..TrayState::default()
        };
        assert!(notices(&up, &stopping).is_empty());
    }

    #[test]
    fn sandbox_sessions_and_agent_failure_notify() {
        let off = tray_state(&docs(), false, None);
        let mut d = docs();
        d.sandbox = Some(json!({"enabled": true, "sessions": []}));
        let on = tray_state(&d, false, None);
        assert!(notices(&off, &on).is_empty(), "switching on starts nothing");
        d.sandbox = Some(json!({"enabled": true, "sessions": ["s1"]}));
        let busy = tray_state(&d, false, None);
        let n = notices(&on, &busy);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::SandboxSession);
        assert!(notices(&busy, &busy).is_empty());

        let failed = TrayState {
            agent: AgentStatus::Failed {
                reason: "cannot listen".into(),
            },
            ..TrayState::default()
        };
        let n = notices(&TrayState::default(), &failed);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].kind, NoticeKind::AgentFailed);
        assert!(notices(&failed, &failed).is_empty());
    }
}
