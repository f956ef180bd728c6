//! The tray's link to the agent against real agents (in-process, as the tray
//! runs them, and attached), without a display: servers appear in the tray
//! state, a menu intent exposes one, login links work, a broken config shows
//! as a failed agent, and shutdown drains the tray's own agent but leaves an
//! attached one running.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_agent::{AgentOptions, AirlockHome};
use airlock_discovery::{DiscoveryEnv, Os};
use airlock_tray::link::{AgentTuning, Intent, Link, LinkError, LinkOptions};
use airlock_tray::menu::{AgentStatus, MenuModel, SandboxStatus, TrayState};
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

struct Fixture {
    _dir: tempfile::TempDir,
    user_home: PathBuf,
    home: AirlockHome,
}

/// A user HOME with one Claude Desktop server and an AIRLOCK_HOME whose
/// config keeps secrets in files and does not probe loopback ports.
fn fixture(config: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let user_home = dir.path().join("home");
    let claude = user_home.join(".config/Claude");
    std::fs::create_dir_all(&claude).unwrap();
    let servers = json!({"mcpServers": {
        "notes": {"command": dir.path().join("no-such-server"), "args": ["--stdio"]}
    }});
    std::fs::write(
        claude.join("claude_desktop_config.json"),
        serde_json::to_string(&servers).unwrap(),
    )
    .unwrap();
    let airlock = dir.path().join("airlock");
    std::fs::create_dir_all(&airlock).unwrap();
    std::fs::write(airlock.join("config.toml"), config).unwrap();
    Fixture {
        user_home,
        home: AirlockHome::new(airlock),
        _dir: dir,
    }
}

const CONFIG: &str = "[discovery]\nprobe_running = false\n\n[keystore]\nbackend = \"file\"\n";

fn discovery_env(user_home: &Path) -> DiscoveryEnv {
    let mut vars = BTreeMap::new();
    vars.insert("HOME".to_owned(), user_home.display().to_string());
    vars.insert(
        "XDG_CONFIG_HOME".to_owned(),
        user_home.join(".config").display().to_string(),
    );
    DiscoveryEnv {
        home: user_home.to_path_buf(),
        os: Os::Linux,
        vars,
        project_dirs: vec![],
    }
}

fn options(f: &Fixture, start_agent: bool) -> LinkOptions {
    LinkOptions {
        home: f.home.clone(),
        start_agent,
        agent: AgentTuning {
            gateway_port: None,
            discovery_env: Some(discovery_env(&f.user_home)),
        },
    }
}

async fn wait_state(
    rx: &mut watch::Receiver<TrayState>,
    what: &str,
    mut ok: impl FnMut(&TrayState) -> bool,
) -> TrayState {
    let found = tokio::time::timeout(WAIT, async {
        loop {
            let state = rx.borrow_and_update().clone();
            if ok(&state) {
                return state;
            }
            if rx.changed().await.is_err() {
                panic!("the link stopped while waiting for {what}; last state {state:?}");
            }
        }
    })
    .await;
    match found {
        Ok(state) => state,
        Err(_) => panic!("no {what} within {WAIT:?}; last state {:?}", rx.borrow()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_agent_lists_exposes_and_stops_gracefully() {
    let f = fixture(CONFIG);
    let (link, mut out) = Link::start(options(&f, true), &tokio::runtime::Handle::current());

    let state = wait_state(&mut out.state, "the discovered server", |s| {
        s.agent.is_connected() && s.servers.iter().any(|s| s.name == "notes")
    })
    .await;
    assert!(!state.attached, "the tray started this agent itself");
    // The in-process agent serves the sandbox API; nothing is configured, so the switch shows off.
    assert_eq!(state.sandbox, SandboxStatus::Off);
    let info = f.home.read_runtime().expect("runtime file of the agent");
    assert_eq!(info.pid, std::process::id(), "the agent runs in-process");
    let notes = state.servers.iter().find(|s| s.name == "notes").unwrap();
    assert!(!notes.exposed);
    let id = notes.id.clone();
    let model = MenuModel::build(&state);
    let item = model.item(&format!("server:{id}")).unwrap();
    assert_eq!(item.checked, Some(false));
    assert!(item.enabled);
    assert_eq!(model.tooltip, "Airlock — 0 of 1 server exposed");

    // The menu's check item → the agent exposes it → the event stream brings it back.
    link.send(Intent::Expose(id.clone())).unwrap();
    let state = wait_state(&mut out.state, "the server exposed", |s| {
        s.servers.iter().any(|s| s.id == id && s.exposed)
    })
    .await;
    let notes = state.servers.iter().find(|s| s.id == id).unwrap();
    let url = notes.url.clone().expect("an exposed server has a URL");
    assert!(
        url.starts_with("http://127.0.0.1:") && url.ends_with("/mcp"),
        "{url}"
    );
    let model = MenuModel::build(&state);
    assert_eq!(
        model.item(&format!("server:{id}")).unwrap().checked,
        Some(true)
    );
    assert!(model.item(&format!("copy:{id}")).is_some());
    let config = std::fs::read_to_string(f.home.config_path()).unwrap();
    assert!(
        config.contains("exposed = true"),
        "the exposure is persisted:\n{config}"
    );

    // A login link for the window, redeemable exactly once.
    let login = link.login_url().await.unwrap();
    let prefix = format!("{}/#code=", info.api_url);
    assert!(login.starts_with(&prefix), "{login}");
    let code = &login[prefix.len()..];
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let redeem = || {
        http.post(format!("{}/v1/session", info.api_url))
            .json(&json!({ "code": code }))
            .send()
    };
    let first = redeem().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.headers().get("set-cookie").is_some());
    assert_eq!(redeem().await.unwrap().status(), 401, "codes work once");

    link.send(Intent::Unexpose(id.clone())).unwrap();
    wait_state(&mut out.state, "the server unexposed", |s| {
        s.servers.iter().any(|s| s.id == id && !s.exposed)
    })
    .await;

    // Quit: the agent drains and removes its runtime file.
    tokio::time::timeout(WAIT, link.shutdown()).await.unwrap();
    assert!(
        f.home.read_runtime().is_none(),
        "a graceful stop removes run/agent.json"
    );
    assert_eq!(out.state.borrow().agent, AgentStatus::NotRunning);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attaches_to_a_running_agent_and_leaves_it_running() {
    let f = fixture(CONFIG);
    // An agent started elsewhere (as `airlock up` would), before the tray.
    let stop = CancellationToken::new();
    let agent = tokio::spawn(airlock_agent::run(
        AgentOptions {
            home: f.home.clone(),
            gateway_port: None,
            discovery_env: Some(discovery_env(&f.user_home)),
            keystore: None,
        },
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + WAIT;
    while f.home.read_runtime().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "agent not ready");
        assert!(!agent.is_finished(), "agent stopped: {:?}", agent.await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (link, mut out) = Link::start(options(&f, false), &tokio::runtime::Handle::current());
    let state = wait_state(&mut out.state, "the attached agent's servers", |s| {
        s.agent.is_connected() && !s.servers.is_empty()
    })
    .await;
    assert_eq!(state.servers[0].name, "notes");

    // Autostart is shell state: the link carries it into every state.
    link.send(Intent::Autostart(Some(true))).unwrap();
    wait_state(&mut out.state, "autostart shown", |s| {
        s.autostart == Some(true)
    })
    .await;

    tokio::time::timeout(WAIT, link.shutdown()).await.unwrap();
    assert!(
        f.home.read_runtime().is_some(),
        "quitting the tray leaves an attached agent running"
    );
    assert!(!agent.is_finished());
    stop.cancel();
    tokio::time::timeout(WAIT, agent)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attach_only_waits_without_an_agent_and_refuses_intents() {
    let f = fixture(CONFIG);
    let (link, mut out) = Link::start(options(&f, false), &tokio::runtime::Handle::current());
    wait_state(&mut out.state, "not running", |s| {
        s.agent == AgentStatus::NotRunning
    })
    .await;
    assert_eq!(link.login_url().await, Err(LinkError::NotRunning));
    assert!(
        f.home.read_runtime().is_none(),
        "attach-only never starts an agent"
    );
    tokio::time::timeout(WAIT, link.shutdown()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_config_shows_the_agent_as_failed() {
    let f = fixture("[discovery\nprobe_running = false\n");
    let (link, mut out) = Link::start(options(&f, true), &tokio::runtime::Handle::current());
    let state = wait_state(&mut out.state, "a failed agent", |s| {
        matches!(s.agent, AgentStatus::Failed { .. })
    })
    .await;
    let AgentStatus::Failed { reason } = &state.agent else {
        unreachable!()
    };
    assert!(reason.contains("config.toml"), "{reason}");
    let notice = tokio::time::timeout(WAIT, out.notices.recv())
        .await
        .unwrap()
        .expect("a notification for the failure");
    assert_eq!(notice.title, "Airlock: the agent stopped");
    let model = MenuModel::build(&state);
    assert!(
        model.tooltip.starts_with("Airlock — agent stopped: "),
        "{}",
        model.tooltip
    );
    tokio::time::timeout(WAIT, link.shutdown()).await.unwrap();
}
