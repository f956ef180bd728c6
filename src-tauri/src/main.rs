// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    if let Err(err) = airlock_tray::run() {
        eprintln!("airlock-tray: {err}");
        eprintln!(
            "hint: the tray needs a graphical session (DISPLAY or WAYLAND_DISPLAY) and WebKitGTK 4.1; \
             run the headless agent with `airlock` instead"
        );
        std::process::exit(1);
    }
}
