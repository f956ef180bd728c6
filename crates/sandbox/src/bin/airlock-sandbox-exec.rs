//! `airlock-sandbox-exec`: the sandbox's helper (Landlock + seccomp self-restriction, the
//! in-sandbox proxy forwarder). See `airlock_sandbox::helper`.

fn main() {
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let code = airlock_sandbox::helper::main(args);
    std::process::exit(code);
}
