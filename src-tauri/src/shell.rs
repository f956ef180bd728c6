//! Tauri glue: turns the pure [`crate::menu`] model into a native tray menu,
//! wires clicks to [`crate::link`] intents and window actions, and shows the
//! agent's web UI in a window. No business logic here.
//!
//! The window loads the UI from the agent's control API origin
//! (`http://127.0.0.1:<port>/#code=<one-time code>`, exactly what
//! `airlock ui` opens): the page trades the code for its session cookie and
//! never sees the API token. The page is a remote origin for Tauri, and no
//! capability names it, so it gets no Tauri IPC at all; navigation is held to
//! that origin and new windows are refused.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use airlock_agent::AirlockHome;
use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::webview::{NewWindowResponse, PageLoadEvent};
use tauri::{AppHandle, Manager, RunEvent, Runtime, WebviewUrl, WebviewWindowBuilder};
use tauri_plugin_autostart::ManagerExt as _;
use tauri_plugin_clipboard_manager::ClipboardExt as _;
use tauri_plugin_notification::NotificationExt as _;

use crate::link::{Intent, Link, LinkOptions};
use crate::menu::{
    AgentStatus, MenuAction, MenuEntry, MenuModel, SandboxStatus, TrayIconKind, TrayState,
    native_label,
};
use crate::snapshot::Notice;

/// Id of the single tray icon.
pub const TRAY_ID: &str = "airlock";
/// Label of the main window.
const MAIN_WINDOW: &str = "main";
/// Set to `1` to open the main window at start (the app otherwise lives in
/// the tray and creates the window on "Open Airlock…").
pub const SHOW_ENV: &str = "AIRLOCK_TRAY_SHOW";
/// Set to `1` to only attach to an agent started elsewhere (`airlock up`),
/// never running one in-process.
pub const ATTACH_ONLY_ENV: &str = "AIRLOCK_TRAY_ATTACH_ONLY";
/// Set by `tauri-driver`: the window must exist from the start so WebDriver
/// can take it over.
const AUTOMATION_ENV: &str = "TAURI_WEBVIEW_AUTOMATION";

/// Why the tray could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// `AIRLOCK_HOME` could not be resolved.
    #[error("{0}")]
    Home(#[from] airlock_agent::AgentError),
    /// The tokio runtime for the agent could not be built.
    #[error("cannot start the agent's runtime: {0}")]
    Runtime(#[from] std::io::Error),
    /// Tauri failed (no display, WebKitGTK missing, …).
    #[error(transparent)]
    Tauri(#[from] tauri::Error),
}

/// Shell state managed by Tauri.
struct Shell<R: Runtime> {
    menu: Menu<R>,
    /// What the menu shows now (redrawn after a click flips a check mark).
    state: Mutex<TrayState>,
    /// `None` once Quit started.
    link: Mutex<Option<Link>>,
    runtime: tokio::runtime::Handle,
    /// The control API origin the window may show (`http://127.0.0.1:<port>`).
    origin: std::sync::Arc<Mutex<Option<String>>>,
    /// A view to switch to once the page has loaded (`approvals`).
    pending_view: std::sync::Arc<Mutex<Option<&'static str>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned lock only means an earlier update panicked; every value
    // behind these locks is replaced wholesale, so the guard is safe to use.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn tray_image(kind: TrayIconKind) -> Image<'static> {
    match kind {
        TrayIconKind::Off => tauri::include_image!("../icons/tray-off.png"),
        TrayIconKind::Connecting => tauri::include_image!("../icons/tray-connecting.png"),
        TrayIconKind::Connected => tauri::include_image!("../icons/tray-connected.png"),
        TrayIconKind::Attention => tauri::include_image!("../icons/tray-attention.png"),
    }
}

/// Replaces the content of `menu` with the entries of `model`. (On Linux a
/// tray menu cannot be replaced once set, only refilled.)
fn fill_menu<R: Runtime>(
    app: &AppHandle<R>,
    menu: &Menu<R>,
    model: &MenuModel,
) -> tauri::Result<()> {
    while menu.remove_at(0)?.is_some() {}
    for entry in &model.entries {
        match entry {
            MenuEntry::Separator => menu.append(&PredefinedMenuItem::separator(app)?)?,
            MenuEntry::Item(item) => {
                let label = native_label(&item.label);
                match item.checked {
                    Some(checked) => menu.append(&CheckMenuItem::with_id(
                        app,
                        item.id.as_str(),
                        label,
                        item.enabled,
                        checked,
                        None::<&str>,
                    )?)?,
                    None => menu.append(&MenuItem::with_id(
                        app,
                        item.id.as_str(),
                        label,
                        item.enabled,
                        None::<&str>,
                    )?)?,
                }
            }
        }
    }
    Ok(())
}

/// Shows `state` in the tray: menu, icon and tooltip.
pub fn apply_state<R: Runtime>(app: &AppHandle<R>, state: TrayState) -> tauri::Result<()> {
    let model = MenuModel::build(&state);
    if let Some(shell) = app.try_state::<Shell<R>>() {
        fill_menu(app, &shell.menu, &model)?;
        *lock(&shell.state) = state;
    }
    if let Some(tray) = app.tray_by_id(TRAY_ID) {
        tray.set_icon(Some(tray_image(model.icon)))?;
        tray.set_tooltip(Some(&model.tooltip))?;
    }
    Ok(())
}

fn redraw<R: Runtime>(app: &AppHandle<R>) {
    if let Some(shell) = app.try_state::<Shell<R>>() {
        let state = lock(&shell.state).clone();
        if let Err(err) = apply_state(app, state) {
            tracing::warn!("cannot refresh the tray menu: {err}");
        }
    }
}

fn notify<R: Runtime>(app: &AppHandle<R>, notice: &Notice) {
    let result = app
        .notification()
        .builder()
        .title(&notice.title)
        .body(&notice.body)
        .show();
    if let Err(err) = result {
        tracing::warn!("cannot show a notification ({}): {err}", notice.title);
    }
}

/// `http://127.0.0.1:<port>` of a login link.
fn origin_of(url: &str) -> Option<String> {
    let rest = url.strip_prefix("http://")?;
    let host_port = rest.split(['/', '#', '?']).next()?;
    Some(format!("http://{host_port}"))
}

/// Whether the window may show `url`: the agent's own origin, or the blank
/// page it starts on under automation.
fn allowed(origin: &Mutex<Option<String>>, url: &tauri::Url) -> bool {
    if url.as_str() == "about:blank" {
        return true;
    }
    let Some(origin) = lock(origin).clone() else {
        return false;
    };
    let here = format!(
        "{}://{}:{}",
        url.scheme(),
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    );
    here == origin
}

/// Creates the main window (hidden unless `visible`) on `url`.
fn create_window<R: Runtime>(
    app: &AppHandle<R>,
    url: tauri::Url,
    visible: bool,
) -> tauri::Result<tauri::WebviewWindow<R>> {
    let shell = app.state::<Shell<R>>();
    let origin = shell.origin.clone();
    let pending = shell.pending_view.clone();
    WebviewWindowBuilder::new(app, MAIN_WINDOW, WebviewUrl::External(url))
        .title("Airlock")
        .inner_size(1040.0, 720.0)
        .min_inner_size(640.0, 420.0)
        .center()
        .visible(visible)
        .on_navigation(move |url| {
            let ok = allowed(&origin, url);
            if !ok {
                tracing::warn!(%url, "the window may only show the agent's UI; navigation refused");
            }
            ok
        })
        .on_new_window(|url, _| {
            tracing::warn!(%url, "the UI asked for a new window; refused");
            NewWindowResponse::Deny
        })
        .on_page_load(move |window, payload| {
            if payload.event() != PageLoadEvent::Finished {
                return;
            }
            if let Some(view) = lock(&pending).take() {
                // The page reads its view from the fragment (`#/<view>`).
                if let Err(err) = window.eval(format!("location.hash = '#/{view}'")) {
                    tracing::warn!("cannot switch the UI to {view}: {err}");
                }
            }
        })
        .build()
}

/// Shows the UI: asks the agent for a one-time login link; reuses the
/// window when it already shows that agent's origin (the agent may have
/// restarted on another port since), else loads the link.
fn open_ui<R: Runtime>(app: &AppHandle<R>, view: Option<&'static str>) {
    let shell = app.state::<Shell<R>>();
    let app = app.clone();
    shell.runtime.spawn(async move {
        let Some(login) = login_url(&app).await else {
            return;
        };
        let main_thread = app.clone();
        let result = app.run_on_main_thread(move || {
            let app = main_thread;
            let window = app.get_webview_window(MAIN_WINDOW);
            let showing = window
                .as_ref()
                .and_then(|w| w.url().ok())
                .and_then(|url| origin_of(url.as_str()));
            match window {
                Some(window) if showing.is_some() && showing == origin_of(&login) => {
                    if let Some(view) = view
                        && let Err(err) = window.eval(format!("location.hash = '#/{view}'"))
                    {
                        tracing::warn!("cannot switch the UI to {view}: {err}");
                    }
                    show(&window);
                }
                _ => {
                    *lock(&app.state::<Shell<R>>().pending_view) = view;
                    navigate(&app, &login, true);
                }
            }
        });
        if let Err(err) = result {
            tracing::warn!("cannot open the window: {err}");
        }
    });
}

async fn login_url<R: Runtime>(app: &AppHandle<R>) -> Option<String> {
    let shell = app.state::<Shell<R>>();
    let pending = {
        let link = lock(&shell.link);
        let link = link.as_ref()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        if let Err(err) = link.send(Intent::LoginUrl(tx)) {
            tracing::warn!("cannot open Airlock: {err}");
            return None;
        }
        rx
    };
    match pending.await {
        Ok(Ok(url)) => Some(url),
        Ok(Err(err)) => {
            tracing::warn!("cannot open Airlock: {err}");
            notify(
                app,
                &Notice {
                    kind: crate::snapshot::NoticeKind::ActionFailed,
                    title: "Airlock: cannot open the UI".to_owned(),
                    body: err.to_string(),
                },
            );
            None
        }
        Err(_) => None,
    }
}

/// Points the main window (created if needed) at a login link.
fn navigate<R: Runtime>(app: &AppHandle<R>, login: &str, visible: bool) {
    let shell = app.state::<Shell<R>>();
    let Some(origin) = origin_of(login) else {
        tracing::warn!("the agent sent a login link that is not http://: refused");
        return;
    };
    *lock(&shell.origin) = Some(origin);
    let url = match tauri::Url::parse(login) {
        Ok(url) => url,
        Err(err) => {
            tracing::warn!("the agent sent a malformed login link: {err}");
            return;
        }
    };
    let window = match app.get_webview_window(MAIN_WINDOW) {
        Some(window) => {
            match window.navigate(url) {
                Ok(()) => tracing::info!("window opened on the agent's UI"),
                Err(err) => tracing::warn!("cannot load the UI: {err}"),
            }
            window
        }
        None => match create_window(app, url, visible) {
            Ok(window) => {
                tracing::info!("window opened on the agent's UI");
                window
            }
            Err(err) => {
                tracing::warn!("cannot open the window: {err}");
                return;
            }
        },
    };
    if visible {
        show(&window);
    }
}

fn show<R: Runtime>(window: &tauri::WebviewWindow<R>) {
    let result = window
        .show()
        .and_then(|()| window.unminimize())
        .and_then(|()| window.set_focus());
    if let Err(err) = result {
        tracing::warn!("cannot show the window: {err}");
    }
}

fn send<R: Runtime>(app: &AppHandle<R>, intent: Intent) {
    let shell = app.state::<Shell<R>>();
    let result = match lock(&shell.link).as_ref() {
        Some(link) => link.send(intent),
        None => Err(crate::link::LinkError::Closed),
    };
    if let Err(err) = result {
        tracing::warn!("{err}");
        redraw(app);
    }
}

fn copy_url<R: Runtime>(app: &AppHandle<R>, id: &str) {
    let shell = app.state::<Shell<R>>();
    let url = lock(&shell.state)
        .servers
        .iter()
        .find(|s| s.id == id)
        .and_then(|s| s.url.clone());
    match url {
        Some(url) => {
            if let Err(err) = app.clipboard().write_text(url) {
                tracing::warn!("cannot write to the clipboard: {err}");
            }
        }
        None => tracing::warn!("server {id} has no URL (not exposed)"),
    }
}

fn toggle_autostart<R: Runtime>(app: &AppHandle<R>) {
    let autolaunch = app.autolaunch();
    let result = autolaunch
        .is_enabled()
        .and_then(|on| {
            if on {
                autolaunch.disable()
            } else {
                autolaunch.enable()
            }
        })
        .and_then(|()| autolaunch.is_enabled());
    match result {
        Ok(on) => send(app, Intent::Autostart(Some(on))),
        Err(err) => {
            tracing::warn!("cannot change start at login: {err}");
            redraw(app);
        }
    }
}

/// Quit: stop following (and stop our own agent, gracefully), then exit.
pub fn quit<R: Runtime>(app: &AppHandle<R>) {
    let shell = app.state::<Shell<R>>();
    let Some(link) = lock(&shell.link).take() else {
        return; // already quitting
    };
    // Close the window first: its page holds the agent's event stream open,
    // and the agent's graceful shutdown waits for open connections.
    if let Some(window) = app.get_webview_window(MAIN_WINDOW)
        && let Err(err) = window.destroy()
    {
        tracing::warn!("cannot close the window: {err}");
    }
    let mut stopping = lock(&shell.state).clone();
    stopping.agent = AgentStatus::Stopping;
    if let Err(err) = apply_state(app, stopping) {
        tracing::warn!("cannot refresh the tray menu: {err}");
    }
    let app = app.clone();
    shell.runtime.spawn(async move {
        link.shutdown().await;
        app.exit(0);
    });
}

fn on_menu_event<R: Runtime>(app: &AppHandle<R>, event: MenuEvent) {
    let Some(action) = MenuAction::from_id(event.id().as_ref()) else {
        return;
    };
    tracing::debug!("menu: {action}");
    let state = lock(&app.state::<Shell<R>>().state).clone();
    match action {
        MenuAction::Open => open_ui(app, None),
        MenuAction::OpenApprovals => open_ui(app, Some("approvals")),
        MenuAction::Quit => quit(app),
        MenuAction::ToggleServer(id) => {
            let exposed = state.servers.iter().find(|s| s.id == id).map(|s| s.exposed);
            match exposed {
                Some(true) => send(app, Intent::Unexpose(id)),
                Some(false) => send(app, Intent::Expose(id)),
                None => {}
            }
            // GTK flips the mark on click; show the known state until the
            // agent reports the change.
            redraw(app);
        }
        MenuAction::CopyUrl(id) => copy_url(app, &id),
        MenuAction::ToggleSandbox => {
            match state.sandbox {
                SandboxStatus::Unavailable => {}
                SandboxStatus::Off => send(app, Intent::SetSandbox(true)),
                SandboxStatus::On { .. } => send(app, Intent::SetSandbox(false)),
            }
            redraw(app);
        }
        MenuAction::ToggleAutostart => toggle_autostart(app),
    }
}

struct Setup {
    home: AirlockHome,
    runtime: tokio::runtime::Handle,
    start_agent: bool,
    show_at_start: bool,
    automation: bool,
}

fn setup<R: Runtime>(app: &AppHandle<R>, cfg: Setup) -> tauri::Result<()> {
    let state = TrayState {
        agent: AgentStatus::Connecting,
        ..TrayState::default()
    };
    let model = MenuModel::build(&state);
    let menu = Menu::new(app)?;
    fill_menu(app, &menu, &model)?;
    TrayIconBuilder::with_id(TRAY_ID)
        .icon(tray_image(model.icon))
        .tooltip(&model.tooltip)
        .menu(&menu)
        .show_menu_on_left_click(true)
        .on_menu_event(on_menu_event)
        .build(app)?;

    let (link, output) = Link::start(
        LinkOptions {
            home: cfg.home,
            start_agent: cfg.start_agent,
            agent: Default::default(),
        },
        &cfg.runtime,
    );
    let stop = link.shutdown_token();
    app.manage(Shell {
        menu,
        state: Mutex::new(state),
        link: Mutex::new(Some(link)),
        runtime: cfg.runtime.clone(),
        origin: Default::default(),
        pending_view: Default::default(),
    });
    let autostart = app.autolaunch().is_enabled().ok();
    send(app, Intent::Autostart(autostart));

    if cfg.automation {
        // WebDriver takes over the first webview of the process: it must
        // exist now. It shows a blank page until the agent is up.
        match tauri::Url::parse("about:blank") {
            Ok(url) => {
                create_window(app, url, true)?;
            }
            Err(err) => tracing::warn!("{err}"),
        }
    }

    // Agent state → tray; open the window on the first connection when asked.
    let mut states = output.state;
    let handle = app.clone();
    let open_on_connect = cfg.show_at_start || cfg.automation;
    cfg.runtime.spawn(async move {
        let mut opened = !open_on_connect;
        loop {
            let state = states.borrow_and_update().clone();
            let connected = state.agent.is_connected();
            let main_thread = handle.clone();
            let _ = handle.run_on_main_thread(move || {
                if let Err(err) = apply_state(&main_thread, state) {
                    tracing::warn!("cannot update the tray: {err}");
                }
            });
            if connected && !opened {
                opened = true;
                if let Some(url) = login_url(&handle).await {
                    let main_thread = handle.clone();
                    let _ = handle.run_on_main_thread(move || navigate(&main_thread, &url, true));
                }
            }
            if states.changed().await.is_err() {
                return;
            }
        }
    });
    let mut notices = output.notices;
    let handle = app.clone();
    cfg.runtime.spawn(async move {
        while let Some(notice) = notices.recv().await {
            notify(&handle, &notice);
        }
    });
    // SIGTERM / Ctrl-C quit like the menu: the agent drains first.
    let handle = app.clone();
    cfg.runtime.spawn(async move {
        tokio::select! {
            _ = terminate_signal() => {
                tracing::info!("signal received: quitting");
                let main_thread = handle.clone();
                let _ = handle.run_on_main_thread(move || quit(&main_thread));
            }
            _ = stop.cancelled() => {}
        }
    });
    Ok(())
}

async fn terminate_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn env_flag(name: &str, value: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == value)
}

/// Builds and runs the tray app until "Quit" (or SIGTERM).
pub fn run() -> Result<(), ShellError> {
    let home = AirlockHome::resolve(std::env::var_os("AIRLOCK_HOME").map(PathBuf::from))?;
    // The agent runs on a runtime owned by the shell (Tauri's own runtime
    // serves its plugins).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("airlock-agent")
        .enable_all()
        .build()?;
    let automation = env_flag(AUTOMATION_ENV, "true");
    let cfg = Setup {
        home,
        runtime: runtime.handle().clone(),
        start_agent: !env_flag(ATTACH_ONLY_ENV, "1"),
        show_at_start: env_flag(SHOW_ENV, "1"),
        automation,
    };
    let mut cfg = Some(cfg);

    let app = tauri::Builder::default()
        // Single instance first: a second launch only shows the first one's window.
        .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
            tracing::info!("another launch of the tray: showing this one's window");
            open_ui(app, None);
        }))
        .plugin(
            tauri_plugin_autostart::Builder::new()
                .app_name("Airlock")
                .build(),
        )
        .plugin(tauri_plugin_notification::init())
        .plugin(tauri_plugin_clipboard_manager::init())
        .setup(move |app| {
            if let Some(cfg) = cfg.take() {
                setup(app.handle(), cfg)?;
            }
            Ok(())
        })
        .build(tauri::generate_context!())?;

    let code = app.run_return(|_app, event| {
        // Closing the window drops its web view (and WebKit's memory with
        // it); the app keeps living in the tray and opens a fresh window on
        // the next "Open Airlock…". Only an explicit exit (Quit, which passes
        // a code) ends the app.
        if let RunEvent::ExitRequested {
            code: None, api, ..
        } = event
        {
            api.prevent_exit();
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    if code != 0 {
        tracing::warn!("the tray exited with code {code}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_links_give_their_origin() {
        assert_eq!(
            origin_of("http://127.0.0.1:4123/#code=abc").as_deref(),
            Some("http://127.0.0.1:4123")
        );
        assert_eq!(
            origin_of("http://127.0.0.1:4123").as_deref(),
            Some("http://127.0.0.1:4123")
        );
        assert_eq!(origin_of("https://127.0.0.1:4123/"), None);
    }

    #[test]
    fn navigation_is_held_to_the_agent_origin() {
        let origin = Mutex::new(None);
        let url = |s: &str| tauri::Url::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(allowed(&origin, &url("about:blank")));
        assert!(
            !allowed(&origin, &url("http://127.0.0.1:4123/")),
            "no origin known yet"
        );
        *lock(&origin) = Some("http://127.0.0.1:4123".to_owned());
        assert!(allowed(&origin, &url("http://127.0.0.1:4123/#/servers")));
        assert!(allowed(&origin, &url("http://127.0.0.1:4123/ui/app.js")));
        for other in [
            "http://127.0.0.1:4124/",
            "https://127.0.0.1:4123/",
            "http://localhost:4123/",
            "http://evil.example:4123/",
            "file:///etc/passwd",
            "tauri://localhost/",
        ] {
            assert!(!allowed(&origin, &url(other)), "{other}");
        }
    }
}
