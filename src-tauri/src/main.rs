// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    if let Err(err) = airlock_tray::run() {
        eprintln!("airlock-tray: {err}");
        eprintln!(
            "hint: the tray needs a graphical session (DISPLAY or WAYLAND_DISPLAY) and WebKitGTK 4.1; \
             run the headless agent with `airlock up` instead"
        );
        std::process::exit(1);
    }
}
