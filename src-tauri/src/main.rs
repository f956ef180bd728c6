// No console window on Windows release builds.
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() {
    // `airlock-tray sandbox-exec …`: the sandbox's helper (Landlock + seccomp, the in-sandbox proxy forwarder) when
    // the in-process agent has no `airlock-sandbox-exec` beside it. It execs its command: no GUI, no runtime.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "sandbox-exec")
    {
        let args: Vec<std::ffi::OsString> = std::env::args_os().skip(2).collect();
        std::process::exit(airlock_sandbox::helper::main_with_prefix(
            &["sandbox-exec"],
            args,
        ));
    }
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
