//! Tauri glue: turns the pure [`crate::menu`] model into a native tray menu
//! and wires clicks to window/app actions. No business logic here.

use std::sync::Mutex;

use tauri::image::Image;
use tauri::menu::{CheckMenuItem, Menu, MenuEvent, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager, RunEvent, Runtime, WindowEvent};

use crate::menu::{MenuAction, MenuEntry, MenuModel, TrayIconKind, TrayState, native_label};

/// Id of the single tray icon.
pub const TRAY_ID: &str = "airlock";
/// Label of the main window (see `tauri.conf.json`).
const MAIN_WINDOW: &str = "main";
/// Set to `1` to show the main window at start (the window is hidden by
/// default; a tray app lives in the tray).
pub const SHOW_ENV: &str = "AIRLOCK_TRAY_SHOW";

/// The tray's menu handle plus the state it currently shows. On Linux a tray
/// menu cannot be replaced once set, only its content changed, so the menu
/// object is kept and refilled.
struct TrayMenu<R: Runtime> {
    menu: Menu<R>,
    state: Mutex<TrayState>,
}

fn tray_image(kind: TrayIconKind) -> Image<'static> {
    match kind {
        TrayIconKind::Off => tauri::include_image!("../icons/tray-off.png"),
        TrayIconKind::Connecting => tauri::include_image!("../icons/tray-connecting.png"),
        TrayIconKind::Connected => tauri::include_image!("../icons/tray-connected.png"),
        TrayIconKind::Attention => tauri::include_image!("../icons/tray-attention.png"),
    }
}

/// Replaces the content of `menu` with the entries of `model`.
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

/// Shows `state` in the tray: menu, icon and tooltip. The real tray calls
/// this from its agent event loop.
pub fn apply_state<R: Runtime>(app: &AppHandle<R>, state: TrayState) -> tauri::Result<()> {
    let model = MenuModel::build(&state);
    if let Some(tray_menu) = app.try_state::<TrayMenu<R>>() {
        fill_menu(app, &tray_menu.menu, &model)?;
        // A poisoned lock only means an earlier update panicked; the state
        // is replaced wholesale, so recovering the guard is safe.
        let mut current = tray_menu
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = state;
    }
    if let Some(tray) = app.tray_by_id(TRAY_ID) {
        tray.set_icon(Some(tray_image(model.icon)))?;
        tray.set_tooltip(Some(&model.tooltip))?;
    }
    Ok(())
}

fn show_main_window<R: Runtime>(app: &AppHandle<R>) {
    let Some(window) = app.get_webview_window(MAIN_WINDOW) else {
        eprintln!("airlock-tray: main window {MAIN_WINDOW:?} is missing");
        return;
    };
    let result = window
        .show()
        .and_then(|()| window.unminimize())
        .and_then(|()| window.set_focus());
    if let Err(err) = result {
        eprintln!("airlock-tray: cannot show the main window: {err}");
    }
}

fn on_menu_event<R: Runtime>(app: &AppHandle<R>, event: MenuEvent) {
    match MenuAction::from_id(event.id().as_ref()) {
        Some(MenuAction::Open) => show_main_window(app),
        Some(MenuAction::Quit) => app.exit(0),
        Some(action @ MenuAction::ToggleServer(_)) => {
            // Wired to the agent's control API by the full tray. GTK flips a
            // check item's mark on click; redraw from the known state so the
            // menu never shows a change that did not happen.
            eprintln!("airlock-tray: {action}: not available in the shell yet");
            if let Some(tray_menu) = app.try_state::<TrayMenu<R>>() {
                let state = tray_menu
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone();
                if let Err(err) = apply_state(app, state) {
                    eprintln!("airlock-tray: cannot refresh the tray menu: {err}");
                }
            }
        }
        None => {}
    }
}

fn setup<R: Runtime>(app: &AppHandle<R>) -> tauri::Result<()> {
    let state = TrayState::default();
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

    app.manage(TrayMenu {
        menu,
        state: Mutex::new(state),
    });

    if std::env::var(SHOW_ENV).is_ok_and(|v| v == "1") {
        show_main_window(app);
    }
    Ok(())
}

/// Builds and runs the tray app until "Quit".
pub fn run() -> tauri::Result<()> {
    let app = tauri::Builder::default()
        .setup(|app| Ok(setup(app.handle())?))
        .on_window_event(|window, event| {
            // Closing the window hides it; the app keeps living in the tray.
            if let WindowEvent::CloseRequested { api, .. } = event
                && window.label() == MAIN_WINDOW
            {
                api.prevent_close();
                if let Err(err) = window.hide() {
                    eprintln!("airlock-tray: cannot hide the main window: {err}");
                }
            }
        })
        .build(tauri::generate_context!())?;

    app.run(|_app, event| {
        // Keep running with no visible window; only an explicit exit
        // (Quit, which passes a code) ends the app.
        if let RunEvent::ExitRequested {
            code: None, api, ..
        } = event
        {
            api.prevent_exit();
        }
    });
    Ok(())
}
