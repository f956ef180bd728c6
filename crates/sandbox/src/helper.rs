//! The `airlock-sandbox-exec` helper: things that must happen *inside* the sandboxed process
//! tree, done by exec'ing a small program instead of `pre_exec` code (no `unsafe`).
//!
//! * `landlock --rw DIR… --ro DIR… -- CMD…`: restrict itself with Landlock (writes only below
//!   the `--rw` directories, reads only below `--rw`/`--ro`) and a seccomp filter (no sockets
//!   at all, no `ptrace`, `process_vm_*`, kernel keyrings, `io_uring`, `bpf`,
//!   `perf_event_open`), then exec `CMD`. Both are inherited by every descendant and cannot be
//!   lifted.
//! * `forward --listen ADDR --socket PATH -- CMD…`: start a background copy of itself that
//!   forwards TCP connections on `ADDR` (loopback inside the sandbox's network namespace) to
//!   the egress proxy's unix socket, wait until it listens, then exec `CMD`.
//!
//! The `airlock` binary may embed the same entry point ([`main`]) as a hidden subcommand.

use std::ffi::{OsStr, OsString};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Concurrent connections one forwarder carries.
const MAX_FORWARDS: usize = 64;

/// Run the helper with `args` (without the program name). Returns the exit code on failure
/// (on success it never returns: it execs the command).
pub fn main(args: Vec<OsString>) -> i32 {
    main_with_prefix(&[], args)
}

/// [`main`] for a binary that reaches the helper through leading arguments (`prefix`, e.g.
/// `["sandbox-exec"]` for `airlock sandbox-exec …`); the forwarder re-executes itself with them.
pub fn main_with_prefix(prefix: &[&str], args: Vec<OsString>) -> i32 {
    match run(prefix, args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("airlock-sandbox-exec: {e}");
            126
        }
    }
}

struct Parsed {
    opts: Vec<(String, OsString)>,
    command: Vec<OsString>,
}

fn parse(args: &[OsString]) -> Result<Parsed, String> {
    let mut opts = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        if a == "--" {
            return Ok(Parsed {
                opts,
                command: args[i + 1..].to_vec(),
            });
        }
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let value = args
            .get(i + 1)
            .ok_or_else(|| format!("--{name} needs a value"))?;
        opts.push((name.to_owned(), value.clone()));
        i += 2;
    }
    Ok(Parsed {
        opts,
        command: Vec::new(),
    })
}

fn exec(command: &[OsString]) -> Result<i32, String> {
    let (prog, rest) = command.split_first().ok_or("no command given after `--`")?;
    let err = Command::new(prog).args(rest).exec();
    Err(format!("exec {}: {err}", PathBuf::from(prog).display()))
}

fn run(prefix: &[&str], args: Vec<OsString>) -> Result<i32, String> {
    let (mode, rest) = args
        .split_first()
        .ok_or("usage: airlock-sandbox-exec landlock|forward [options] -- command…")?;
    let p = parse(rest)?;
    let get = |k: &str| -> Option<&OsStr> {
        p.opts
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_os_str())
    };
    match mode.to_str() {
        Some("landlock") => {
            let rw: Vec<PathBuf> = p
                .opts
                .iter()
                .filter(|(n, _)| n == "rw")
                .map(|(_, v)| v.into())
                .collect();
            let ro: Vec<PathBuf> = p
                .opts
                .iter()
                .filter(|(n, _)| n == "ro")
                .map(|(_, v)| v.into())
                .collect();
            restrict(&rw, &ro)?;
            exec(&p.command)
        }
        Some("forward") => {
            let listen = get("listen").ok_or("--listen is required")?;
            let socket = get("socket").ok_or("--socket is required")?;
            let me = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            let mut child = Command::new(me)
                .args(prefix)
                .arg("serve-forward")
                .arg("--listen")
                .arg(listen)
                .arg("--socket")
                .arg(socket)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("starting the forwarder: {e}"))?;
            let out = child.stdout.take().ok_or("forwarder has no stdout")?;
            let mut line = String::new();
            BufReader::new(out)
                .read_line(&mut line)
                .map_err(|e| format!("waiting for the forwarder: {e}"))?;
            if line.trim() != "ready" {
                return Err("the proxy forwarder did not start".into());
            }
            exec(&p.command)
        }
        Some("serve-forward") => {
            let listen = get("listen")
                .ok_or("--listen is required")?
                .to_string_lossy()
                .into_owned();
            let socket = PathBuf::from(get("socket").ok_or("--socket is required")?);
            serve_forward(&listen, socket)
        }
        _ => Err(format!("unknown mode {mode:?} (landlock, forward)")),
    }
}

fn serve_forward(listen: &str, socket: PathBuf) -> Result<i32, String> {
    let listener = TcpListener::bind(listen).map_err(|e| format!("listen on {listen}: {e}"))?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "ready");
        let _ = out.flush();
    }
    let active = Arc::new(AtomicUsize::new(0));
    let socket = Arc::new(socket);
    for conn in listener.incoming() {
        let Ok(tcp) = conn else { continue };
        if active.load(Ordering::SeqCst) >= MAX_FORWARDS {
            drop(tcp);
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let active = active.clone();
        let socket = socket.clone();
        std::thread::spawn(move || {
            if let Ok(unix) = UnixStream::connect(&*socket) {
                pump(tcp, unix);
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(0)
}

fn pump(tcp: TcpStream, unix: UnixStream) {
    let (Ok(mut tcp_r), Ok(mut unix_w)) = (tcp.try_clone(), unix.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut tcp_r, &mut unix_w);
        let _ = unix_w.shutdown(std::net::Shutdown::Write);
    });
    let mut unix_r = unix;
    let mut tcp_w = tcp;
    let _ = std::io::copy(&mut unix_r, &mut tcp_w);
    let _ = tcp_w.shutdown(std::net::Shutdown::Write);
    let _ = up.join();
}

#[cfg(target_os = "linux")]
fn restrict(rw: &[PathBuf], ro: &[PathBuf]) -> Result<(), String> {
    use landlock::{
        ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
        RulesetCreatedAttr, RulesetStatus,
    };
    let abi = ABI::V2;
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(|e| format!("Landlock: {e}"))?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .map_err(|e| format!("Landlock: {e}"))?
        .create()
        .map_err(|e| format!("Landlock: {e}"))?;
    for (paths, access, required) in [
        (ro, AccessFs::from_read(abi), false),
        (rw, AccessFs::from_all(abi), true),
    ] {
        for p in paths {
            // A read-only grant that cannot be opened (a dangling link in /etc) is dropped:
            // that only ever takes access away.
            let fd = match PathFd::new(p) {
                Ok(fd) => fd,
                Err(_) if !required => continue,
                Err(e) => return Err(format!("Landlock: {}: {e}", p.display())),
            };
            // Rules on a file may only carry file rights.
            let access = if p.is_dir() {
                access
            } else {
                access & AccessFs::from_file(abi)
            };
            created = created
                .add_rule(PathBeneath::new(fd, access))
                .map_err(|e| format!("Landlock: {}: {e}", p.display()))?;
        }
    }
    let status = created
        .restrict_self()
        .map_err(|e| format!("Landlock: {e}"))?;
    if status.ruleset == RulesetStatus::NotEnforced {
        return Err("Landlock is not enforced by this kernel".into());
    }
    seccomp()
}

#[cfg(target_os = "linux")]
fn filter_program(denied: &[i64]) -> Result<seccompiler::BpfProgram, String> {
    use seccompiler::{SeccompAction, SeccompFilter, TargetArch};
    use std::collections::BTreeMap;
    let arch: TargetArch = std::env::consts::ARCH
        .try_into()
        .map_err(|e| format!("seccomp: {e:?}"))?;
    let rules = denied
        .iter()
        .map(|&n| (n, Vec::new()))
        .collect::<BTreeMap<_, _>>();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    filter.try_into().map_err(|e| format!("seccomp: {e:?}"))
}

/// System calls refused in every sandbox: kernel keyrings (the user's session keyring may hold
/// secrets), and kernel attack surface nothing in a tool call needs.
#[cfg(target_os = "linux")]
const ALWAYS_DENIED: [i64; 9] = [
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
];

/// The seccomp filter bubblewrap loads (`--seccomp FD`), as raw `sock_filter`s.
#[cfg(target_os = "linux")]
pub(crate) fn bwrap_filter_bytes() -> Result<Vec<u8>, String> {
    let program = filter_program(&ALWAYS_DENIED)?;
    let mut out = Vec::with_capacity(program.len() * 8);
    for f in program {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    Ok(out)
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn bwrap_filter_bytes() -> Result<Vec<u8>, String> {
    Err("seccomp is Linux-only".into())
}

#[cfg(target_os = "linux")]
fn seccomp() -> Result<(), String> {
    // Without a network namespace the Landlock sandbox refuses every socket (network, and
    // unix sockets such as the session bus), plus tracing of other processes of the user.
    let mut denied = ALWAYS_DENIED.to_vec();
    denied.extend([
        libc::SYS_socket,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
    ]);
    let program = filter_program(&denied)?;
    seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn restrict(_rw: &[PathBuf], _ro: &[PathBuf]) -> Result<(), String> {
    Err("Landlock is Linux-only".into())
}
