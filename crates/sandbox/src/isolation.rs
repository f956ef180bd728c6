//! Choosing and building the OS sandbox the shell runs in.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

use crate::cgroup::{self, CgroupSupport, SessionCgroup};
use crate::paths::{self, Roots};
use crate::{SandboxConfig, SandboxError};

/// Where the proxy socket and the helper appear inside a bubblewrap sandbox.
pub(crate) const INNER_RUN: &str = "/run/airlock";
/// Loopback address of the in-sandbox proxy forwarder.
pub(crate) const INNER_PROXY_ADDR: &str = "127.0.0.1:3128";

/// An isolation mechanism.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mechanism {
    /// The best available: bubblewrap, else Landlock + seccomp (Linux); Seatbelt (macOS).
    Auto,
    /// bubblewrap namespaces and mounts.
    Bubblewrap,
    /// Landlock + seccomp applied by the `airlock-sandbox-exec` helper.
    Landlock,
    /// A Seatbelt profile applied by `/usr/bin/sandbox-exec` (macOS only).
    Seatbelt,
    /// No OS sandbox at all (explicit opt-in only).
    Unconfined,
}

impl Mechanism {
    /// `bubblewrap`, `landlock`, `seatbelt`, `unconfined` or `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mechanism::Auto => "auto",
            Mechanism::Bubblewrap => "bubblewrap",
            Mechanism::Landlock => "landlock",
            Mechanism::Seatbelt => "seatbelt",
            Mechanism::Unconfined => "unconfined",
        }
    }
}

/// What this machine offers.
#[derive(Debug, Clone, Serialize)]
pub struct IsolationReport {
    /// `linux`, `macos`, …
    pub platform: &'static str,
    /// Path of `bwrap`, when found.
    pub bubblewrap: Option<PathBuf>,
    /// A trial sandbox (user, pid, net namespaces) ran.
    pub bubblewrap_works: bool,
    /// Why it did not.
    pub bubblewrap_problem: Option<String>,
    /// The kernel accepts a Landlock ruleset.
    pub landlock: bool,
    /// Why not.
    pub landlock_problem: Option<String>,
    /// The kernel has seccomp filters.
    pub seccomp: bool,
    /// Path of `sandbox-exec` (macOS), when found.
    pub seatbelt: Option<PathBuf>,
    /// Why Seatbelt is not available.
    pub seatbelt_problem: Option<String>,
    /// Per-session cgroup limits.
    pub cgroup: CgroupSupport,
    /// What [`Mechanism::Auto`] picks (`None`: nothing, the worker must refuse or run
    /// unconfined on explicit opt-in).
    pub best: Option<Mechanism>,
}

fn find_bwrap() -> Option<PathBuf> {
    ["/usr/bin/bwrap", "/bin/bwrap", "/usr/local/bin/bwrap"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

fn trial_bwrap(bwrap: &Path) -> Result<(), String> {
    let out = Command::new(bwrap)
        .args([
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--die-with-parent",
            "--new-session",
            "--ro-bind",
            "/",
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--",
            "/bin/true",
        ])
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", bwrap.display()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "bwrap trial failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

#[cfg(target_os = "linux")]
fn probe_landlock() -> Result<(), String> {
    use landlock::{ABI, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr};
    Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .and_then(|r| r.create())
        .map(|_| ())
        .map_err(|e| format!("Landlock unavailable: {e}"))
}

#[cfg(not(target_os = "linux"))]
fn probe_landlock() -> Result<(), String> {
    Err("Landlock is Linux-only".into())
}

fn probe_seccomp() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Seccomp:")))
        .unwrap_or(false)
}

/// What isolation this machine offers (runs a trial bubblewrap sandbox; blocking, ~10 ms).
pub fn probe_isolation() -> IsolationReport {
    probe_with(None)
}

type MechanismProbe = (Option<PathBuf>, bool, Option<String>, bool, Option<String>);

/// The mechanism part of the probe, cached once it succeeded (a trial sandbox costs ~10 ms; a
/// failed probe is retried on the next call, since the user may install bubblewrap meanwhile).
fn probe_mechanisms() -> MechanismProbe {
    static DONE: std::sync::Mutex<Option<MechanismProbe>> = std::sync::Mutex::new(None);
    if let Ok(guard) = DONE.lock()
        && let Some(r) = guard.as_ref()
    {
        return r.clone();
    }
    let platform = std::env::consts::OS;
    let bubblewrap = if platform == "linux" {
        find_bwrap()
    } else {
        None
    };
    let (bubblewrap_works, bubblewrap_problem) = match &bubblewrap {
        None => (
            false,
            Some("bwrap not found (apt install bubblewrap)".to_owned()),
        ),
        Some(b) => match trial_bwrap(b) {
            Ok(()) => (true, None),
            Err(e) => (false, Some(e)),
        },
    };
    let (landlock, landlock_problem) = match probe_landlock() {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e)),
    };
    let r = (
        bubblewrap,
        bubblewrap_works,
        bubblewrap_problem,
        landlock,
        landlock_problem,
    );
    if r.1
        && let Ok(mut guard) = DONE.lock()
    {
        *guard = Some(r.clone());
    }
    r
}

fn probe_with(cgroup_parent: Option<&Path>) -> IsolationReport {
    let platform = std::env::consts::OS;
    let (bubblewrap, bubblewrap_works, bubblewrap_problem, landlock, landlock_problem) =
        probe_mechanisms();
    let seccomp = platform == "linux" && probe_seccomp();
    let (seatbelt, seatbelt_problem) = if cfg!(target_os = "macos") {
        match crate::seatbelt::find_sandbox_exec() {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        }
    } else {
        (None, Some("Seatbelt is macOS-only".to_owned()))
    };
    let best = if bubblewrap_works {
        Some(Mechanism::Bubblewrap)
    } else if landlock && seccomp {
        Some(Mechanism::Landlock)
    } else if seatbelt.is_some() {
        Some(Mechanism::Seatbelt)
    } else {
        None
    };
    IsolationReport {
        platform,
        bubblewrap,
        bubblewrap_works,
        bubblewrap_problem,
        landlock,
        landlock_problem,
        seccomp,
        seatbelt,
        seatbelt_problem,
        cgroup: cgroup::detect(cgroup_parent),
        best,
    }
}

/// The resolved policy, before the proxy is known.
pub(crate) struct LaunchPlan {
    pub(crate) mechanism: Mechanism,
    bwrap: Option<PathBuf>,
    sandbox_exec: Option<PathBuf>,
    helper: Option<PathBuf>,
    home: Option<PathBuf>,
    read_only: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    protected: Vec<PathBuf>,
    private_tmp: Option<PathBuf>,
}

/// How to start the shell.
#[derive(Debug)]
pub(crate) struct Launch {
    pub(crate) mechanism: Mechanism,
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<OsString>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) cwd: PathBuf,
    /// A private temporary directory (Landlock/unconfined modes) removed on drop.
    pub(crate) private_tmp: Option<PathBuf>,
}

impl Drop for Launch {
    fn drop(&mut self) {
        if let Some(t) = &self.private_tmp {
            let _ = std::fs::remove_dir_all(t);
        }
    }
}

pub(crate) struct Prepared {
    pub(crate) workdir: PathBuf,
    pub(crate) roots: Roots,
    pub(crate) launch_plan: LaunchPlan,
    pub(crate) cgroup: Option<SessionCgroup>,
    pub(crate) limits_problem: Option<String>,
    pub(crate) protected_at_open: Vec<PathBuf>,
}

fn canonical_dir(p: &Path, create: bool) -> Result<PathBuf, SandboxError> {
    if create {
        std::fs::create_dir_all(p).map_err(|e| SandboxError::Workdir {
            path: p.to_path_buf(),
            reason: format!("cannot create it: {e}"),
        })?;
    }
    p.canonicalize().map_err(|e| SandboxError::Workdir {
        path: p.to_path_buf(),
        reason: e.to_string(),
    })
}

fn default_helper() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AIRLOCK_SANDBOX_EXEC") {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    [
        dir.join("airlock-sandbox-exec"),
        dir.join("../airlock-sandbox-exec"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Env names never passed into the sandbox, whatever the configuration says.
pub(crate) fn forbidden_env(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    upper.starts_with("ANTHROPIC_")
        || upper.starts_with("DBUS_")
        || upper == "XDG_RUNTIME_DIR"
        || upper == "SSH_AUTH_SOCK"
        || upper == "GPG_AGENT_INFO"
        || upper.starts_with("AIRLOCK_")
}

pub(crate) fn prepare(cfg: &SandboxConfig) -> Result<Prepared, SandboxError> {
    let workdir = canonical_dir(&cfg.workdir, true)?;
    if workdir == Path::new("/") {
        return Err(SandboxError::Workdir {
            path: workdir,
            reason: "the filesystem root cannot be a sandbox workdir".into(),
        });
    }
    let home = cfg
        .user_home
        .clone()
        .or_else(|| std::env::var_os("HOME").map(PathBuf::from))
        .and_then(|h| h.canonicalize().ok());
    if let Some(home) = &home
        && home.starts_with(&workdir)
    {
        return Err(SandboxError::Workdir {
            path: workdir,
            reason: format!(
                "it contains the user's home {} (which must stay hidden); pick a project folder or let Airlock create a fresh one",
                home.display()
            ),
        });
    }
    for (k, _) in &cfg.env {
        if forbidden_env(k) {
            return Err(SandboxError::Config(format!(
                "environment variable {k} may not be passed into the sandbox"
            )));
        }
    }
    let mut read_only = Vec::new();
    for p in &cfg.read_only_paths {
        match p.canonicalize() {
            Ok(c) => read_only.push(c),
            Err(e) => tracing::warn!(path = %p.display(), "allowlisted path skipped: {e}"),
        }
    }
    let mut writable = Vec::new();
    for p in &cfg.writable_roots {
        writable.push(canonical_dir(p, true)?);
    }
    let roots = Roots {
        workdir: workdir.clone(),
        writable: writable.clone(),
        read_only: read_only.clone(),
    };

    let report = probe_with(cfg.limits.cgroup_parent.as_deref());
    let mechanism = match cfg.mechanism {
        Mechanism::Auto => match report.best {
            Some(m) => m,
            None if cfg.unconfined => Mechanism::Unconfined,
            None if cfg!(target_os = "macos") => {
                return Err(SandboxError::NoIsolation(
                    report.seatbelt_problem.unwrap_or_default(),
                ));
            }
            None => {
                return Err(SandboxError::NoIsolation(format!(
                    "{}; {}",
                    report.bubblewrap_problem.unwrap_or_default(),
                    report
                        .landlock_problem
                        .unwrap_or_else(|| "no seccomp".into())
                )));
            }
        },
        Mechanism::Seatbelt if report.seatbelt.is_none() => {
            return Err(SandboxError::MechanismUnavailable {
                mechanism: Mechanism::Seatbelt,
                reason: report.seatbelt_problem.unwrap_or_default(),
            });
        }
        Mechanism::Bubblewrap if !report.bubblewrap_works => {
            return Err(SandboxError::MechanismUnavailable {
                mechanism: Mechanism::Bubblewrap,
                reason: report.bubblewrap_problem.unwrap_or_default(),
            });
        }
        Mechanism::Landlock if !(report.landlock && report.seccomp) => {
            return Err(SandboxError::MechanismUnavailable {
                mechanism: Mechanism::Landlock,
                reason: report
                    .landlock_problem
                    .unwrap_or_else(|| "no seccomp".into()),
            });
        }
        Mechanism::Unconfined if !cfg.unconfined => {
            return Err(SandboxError::Config(
                "unconfined mode needs the explicit `unconfined: true` opt-in".into(),
            ));
        }
        m => m,
    };
    let helper = cfg.helper.clone().or_else(default_helper);
    if mechanism == Mechanism::Landlock && helper.is_none() {
        return Err(SandboxError::Config(
            "the Landlock sandbox needs the airlock-sandbox-exec helper (set its path or AIRLOCK_SANDBOX_EXEC)".into(),
        ));
    }
    if mechanism == Mechanism::Landlock && !cfg.network.allowed_domains.is_empty() {
        return Err(SandboxError::Config(
            "an egress allowlist needs bubblewrap (the Landlock fallback has no network namespace to keep direct connections out); install bubblewrap".into(),
        ));
    }
    if mechanism == Mechanism::Bubblewrap
        && !cfg.network.allowed_domains.is_empty()
        && helper.is_none()
    {
        return Err(SandboxError::Config(
            "an egress allowlist needs the airlock-sandbox-exec helper (the in-sandbox proxy forwarder); set its path or AIRLOCK_SANDBOX_EXEC".into(),
        ));
    }

    let (cgroup, limits_problem) = if mechanism == Mechanism::Unconfined
        && cfg.limits.pids_max.is_none()
        && cfg.limits.memory_max.is_none()
        && cfg.limits.cpu_max.is_none()
    {
        (None, Some("no limits configured".to_owned()))
    } else {
        match SessionCgroup::create(&report.cgroup, &cfg.limits) {
            Ok(cg) => (Some(cg), None),
            Err(e) if cfg.limits.require => return Err(SandboxError::Limits(e)),
            Err(e) => {
                tracing::warn!("sandbox resource limits not applied: {e}");
                (None, Some(e))
            }
        }
    };
    let protected = paths::existing_protected(&workdir);
    let private_tmp = if mechanism == Mechanism::Bubblewrap {
        None
    } else {
        let t = std::env::temp_dir().join(format!(
            "airlock-sandbox-tmp-{:016x}",
            rand::random::<u64>()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&t)
            .map_err(|e| SandboxError::io(format!("creating {}", t.display()), e))?;
        Some(t)
    };
    Ok(Prepared {
        workdir,
        roots,
        launch_plan: LaunchPlan {
            mechanism,
            bwrap: report.bubblewrap,
            sandbox_exec: report.seatbelt,
            helper,
            home,
            read_only,
            writable,
            protected: protected.clone(),
            private_tmp,
        },
        cgroup,
        limits_problem,
        protected_at_open: protected,
    })
}

use std::os::unix::fs::DirBuilderExt;

/// `sh -c JOIN_SCRIPT sh <seccomp file or ""> <n> <cgroup.procs>… <command>…`: join the
/// cgroups, then exec the sandbox with the seccomp filter on fd 3.
const JOIN_SCRIPT: &str = r#"f=$1; shift; n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; if [ -n "$f" ]; then exec "$@" 3<"$f"; fi; exec "$@""#;

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

impl LaunchPlan {
    pub(crate) fn finish(
        mut self,
        cfg: &SandboxConfig,
        workdir: &Path,
        proxy_socket: Option<PathBuf>,
        proxy_port: Option<u16>,
        cgroup: Option<&SessionCgroup>,
    ) -> Result<Launch, SandboxError> {
        let bash = cfg.bash_path.clone();
        let path = if self.mechanism == Mechanism::Seatbelt {
            "/opt/homebrew/bin:/opt/homebrew/sbin:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        } else {
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        };
        let mut env: Vec<(String, String)> = vec![
            ("PATH".into(), path.into()),
            ("HOME".into(), workdir.display().to_string()),
            (
                "LANG".into(),
                std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
            ),
            ("TERM".into(), "dumb".into()),
            ("PS1".into(), String::new()),
            ("PS2".into(), String::new()),
            ("USER".into(), "sandbox".into()),
            ("LOGNAME".into(), "sandbox".into()),
            ("SHELL".into(), bash.display().to_string()),
        ];
        let tmp = match &self.private_tmp {
            Some(t) => t.display().to_string(),
            None => "/tmp".into(),
        };
        env.push(("TMPDIR".into(), tmp));
        let proxy_url = match (self.mechanism, proxy_port) {
            (Mechanism::Seatbelt, Some(port)) => Some(format!("http://127.0.0.1:{port}")),
            (Mechanism::Seatbelt, None) => None,
            _ => proxy_socket
                .as_ref()
                .map(|_| format!("http://{INNER_PROXY_ADDR}")),
        };
        if let Some(url) = proxy_url {
            for k in [
                "HTTP_PROXY",
                "HTTPS_PROXY",
                "http_proxy",
                "https_proxy",
                "ALL_PROXY",
                "all_proxy",
            ] {
                env.push((k.into(), url.clone()));
            }
            env.push(("NO_PROXY".into(), String::new()));
        }
        for (k, v) in &cfg.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }
        let shell_argv: Vec<OsString> = vec![bash.clone().into(), os("--noprofile"), os("--norc")];

        let mut seccomp_file: Option<PathBuf> = None;
        let (program, mut args): (PathBuf, Vec<OsString>) = match self.mechanism {
            Mechanism::Bubblewrap => {
                let bwrap = self.bwrap.clone().ok_or_else(|| {
                    SandboxError::Config("bubblewrap disappeared after the probe".into())
                })?;
                let mut a = self.bwrap_args(workdir, proxy_socket.as_deref())?;
                match crate::helper::bwrap_filter_bytes() {
                    Ok(bytes) => {
                        let dir = std::env::temp_dir().join(format!(
                            "airlock-sandbox-run-{:016x}",
                            rand::random::<u64>()
                        ));
                        std::fs::DirBuilder::new()
                            .mode(0o700)
                            .create(&dir)
                            .map_err(|e| {
                                SandboxError::io(format!("creating {}", dir.display()), e)
                            })?;
                        let file = dir.join("seccomp.bpf");
                        std::fs::write(&file, bytes).map_err(|e| {
                            SandboxError::io(format!("writing {}", file.display()), e)
                        })?;
                        a.splice(0..0, [os("--seccomp"), os("3")]);
                        seccomp_file = Some(file);
                        self.private_tmp = Some(dir);
                    }
                    Err(e) => tracing::warn!("bubblewrap runs without a seccomp filter: {e}"),
                }
                if proxy_socket.is_some() {
                    a.push(os(format!("{INNER_RUN}/exec")));
                    a.extend(cfg.helper_args.iter().map(os));
                    a.extend([
                        os("forward"),
                        os("--listen"),
                        os(INNER_PROXY_ADDR),
                        os("--socket"),
                        os(format!("{INNER_RUN}/proxy.sock")),
                        os("--"),
                    ]);
                }
                a.extend(shell_argv);
                (bwrap, a)
            }
            Mechanism::Landlock => {
                let helper = self.helper.clone().ok_or_else(|| {
                    SandboxError::Config("the Landlock sandbox needs the helper".into())
                })?;
                let mut a: Vec<OsString> = cfg.helper_args.iter().map(os).collect();
                a.push(os("landlock"));
                let mut rw: Vec<PathBuf> = vec![workdir.to_path_buf()];
                rw.extend(self.writable.iter().cloned());
                if let Some(t) = &self.private_tmp {
                    rw.push(t.clone());
                }
                rw.extend(
                    ["/dev/null", "/dev/zero", "/dev/full", "/dev/tty"]
                        .iter()
                        .map(PathBuf::from)
                        .filter(|p| p.exists()),
                );
                for p in rw {
                    a.push(os("--rw"));
                    a.push(p.into());
                }
                for p in system_dirs()
                    .into_iter()
                    .chain(self.read_only.iter().cloned())
                {
                    a.push(os("--ro"));
                    a.push(p.into());
                }
                a.push(os("--"));
                a.extend(shell_argv);
                (helper, a)
            }
            Mechanism::Seatbelt => {
                let sandbox_exec = self.sandbox_exec.clone().ok_or_else(|| {
                    SandboxError::Config("sandbox-exec disappeared after the probe".into())
                })?;
                let profile = crate::seatbelt::profile(&crate::seatbelt::SeatbeltPolicy {
                    workdir: workdir.to_path_buf(),
                    writable_roots: self.writable.clone(),
                    read_only_paths: self.read_only.clone(),
                    private_tmp: self.private_tmp.clone(),
                    user_home: self.home.clone(),
                    proxy_port,
                })?;
                let mut a = vec![os("-p"), os(profile)];
                a.extend(shell_argv);
                (sandbox_exec, a)
            }
            Mechanism::Unconfined | Mechanism::Auto => (bash.clone(), shell_argv[1..].to_vec()),
        };
        // Join the cgroup first (a tiny sh that writes its own pid, then execs the sandbox):
        // every process the sandbox ever starts is then counted.
        let program = if cgroup.is_some() || seccomp_file.is_some() {
            let files = cgroup.map(|c| c.procs_files()).unwrap_or_default();
            let mut wrapped = vec![
                os("-c"),
                os(JOIN_SCRIPT),
                os("sh"),
                seccomp_file.map(OsString::from).unwrap_or_default(),
                os(files.len().to_string()),
            ];
            wrapped.extend(files.into_iter().map(OsString::from));
            wrapped.push(program.into());
            wrapped.append(&mut args);
            args = wrapped;
            PathBuf::from("/bin/sh")
        } else {
            program
        };
        Ok(Launch {
            mechanism: self.mechanism,
            program,
            args,
            env,
            cwd: workdir.to_path_buf(),
            private_tmp: self.private_tmp.take(),
        })
    }

    fn bwrap_args(
        &self,
        workdir: &Path,
        proxy_socket: Option<&Path>,
    ) -> Result<Vec<OsString>, SandboxError> {
        let mut a: Vec<OsString> = [
            "--die-with-parent",
            "--new-session",
            "--unshare-user",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            "sandbox",
        ]
        .into_iter()
        .map(os)
        .collect();
        // No nested user namespaces (less kernel surface; nothing inside needs them).
        if bwrap_supports(self.bwrap.as_deref(), "--disable-userns") {
            a.push(os("--disable-userns"));
        }
        // Keep the caller's uid unless it is root: then an unprivileged one (no capabilities
        // inside, even over files the host root owns).
        if nix::unistd::geteuid().is_root() {
            a.extend([os("--uid"), os("65534"), os("--gid"), os("65534")]);
        }
        for dir in [
            "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
        ] {
            let p = Path::new(dir);
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => {
                    let target = std::fs::read_link(p)
                        .map_err(|e| SandboxError::io(format!("reading link {dir}"), e))?;
                    a.extend([os("--symlink"), target.into(), os(dir)]);
                }
                Ok(m) if m.is_dir() => a.extend([os("--ro-bind"), os(dir), os(dir)]),
                _ => {}
            }
        }
        // Secrets of /etc that a sandbox user mapped onto the file owner could otherwise read.
        for f in [
            "/etc/shadow",
            "/etc/shadow-",
            "/etc/gshadow",
            "/etc/gshadow-",
            "/etc/sudoers",
            "/etc/security/opasswd",
            "/etc/machine-id",
        ] {
            if Path::new(f).is_file() {
                a.extend([os("--ro-bind"), os("/dev/null"), os(f)]);
            }
        }
        for d in [
            "/etc/ssh",
            "/etc/sudoers.d",
            "/etc/ssl/private",
            "/etc/NetworkManager/system-connections",
            "/etc/wireguard",
            "/etc/airlock",
        ] {
            if Path::new(d).is_dir() {
                a.extend([os("--tmpfs"), os(d)]);
            }
        }
        a.extend(
            [
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/tmp",
                "--tmpfs", "/run", "--dir", INNER_RUN,
            ]
            .into_iter()
            .map(os),
        );
        for p in &self.read_only {
            a.extend([os("--ro-bind"), p.clone().into(), p.clone().into()]);
        }
        for p in &self.writable {
            a.extend([os("--bind"), p.clone().into(), p.clone().into()]);
        }
        a.extend([os("--bind"), workdir.into(), workdir.into()]);
        for p in &self.protected {
            // A protected name that is a symlink: its target is what other tools read; bind
            // that read-only when it lies in the workdir (outside, it is not mounted at all).
            let target = match std::fs::symlink_metadata(p) {
                Ok(m) if m.file_type().is_symlink() => match paths::resolve(workdir, p) {
                    Ok(t) if t.starts_with(workdir) && t.exists() => t,
                    _ => continue,
                },
                Ok(_) => p.clone(),
                Err(_) => continue,
            };
            a.extend([os("--ro-bind"), target.clone().into(), target.into()]);
        }
        if let Some(sock) = proxy_socket {
            let helper = self
                .helper
                .clone()
                .ok_or_else(|| SandboxError::Config("the egress proxy needs the helper".into()))?;
            a.extend([
                os("--ro-bind"),
                helper.into(),
                os(format!("{INNER_RUN}/exec")),
                os("--bind"),
                sock.into(),
                os(format!("{INNER_RUN}/proxy.sock")),
            ]);
        }
        a.extend([os("--chdir"), workdir.into(), os("--")]);
        Ok(a)
    }
}

/// Whether this bwrap knows `flag` (from `bwrap --help`, asked once).
fn bwrap_supports(bwrap: Option<&Path>, flag: &str) -> bool {
    static HELP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let Some(bwrap) = bwrap else { return false };
    HELP.get_or_init(|| {
        Command::new(bwrap)
            .arg("--help")
            .env_clear()
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    })
    .contains(flag)
}

/// Entries of `/etc` that hold secrets: masked in bubblewrap, left out of the Landlock rules.
pub(crate) const ETC_SECRETS: [&str; 13] = [
    "shadow",
    "shadow-",
    "gshadow",
    "gshadow-",
    "sudoers",
    "sudoers.d",
    "ssh",
    "security",
    "wireguard",
    "NetworkManager",
    "airlock",
    "machine-id",
    "ssl",
];

/// System directories readable in the Landlock sandbox. Landlock cannot carve a hole into a
/// granted directory, so `/etc` is granted entry by entry without its secrets (and `/etc/ssl`
/// without `private`).
fn system_dirs() -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = [
        "/usr",
        "/bin",
        "/sbin",
        "/lib",
        "/lib32",
        "/lib64",
        "/opt",
        "/dev/random",
        "/dev/urandom",
    ]
    .iter()
    .map(PathBuf::from)
    .filter(|p| p.exists())
    .collect();
    let mut entries = |dir: &str, skip: &[&str]| {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name();
                if !skip.iter().any(|s| name == *s) {
                    out.push(e.path());
                }
            }
        }
    };
    entries("/etc", &ETC_SECRETS);
    entries("/etc/ssl", &["private"]);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seatbelt_launches_sandbox_exec_with_the_profile() {
        let dir = tempfile::tempdir().unwrap();
        let workdir = dir
            .path()
            .canonicalize()
            .unwrap()
            .join("w\")(allow default)");
        std::fs::create_dir(&workdir).unwrap();
        let mut cfg = SandboxConfig::new(&workdir);
        cfg.env = vec![("FOO".into(), "bar".into())];
        let plan = LaunchPlan {
            mechanism: Mechanism::Seatbelt,
            bwrap: None,
            sandbox_exec: Some(PathBuf::from(crate::seatbelt::SANDBOX_EXEC)),
            helper: None,
            home: Some(PathBuf::from("/Users/me")),
            read_only: Vec::new(),
            writable: Vec::new(),
            protected: Vec::new(),
            private_tmp: None,
        };
        let launch = plan
            .finish(
                &cfg,
                &workdir,
                Some(dir.path().join("p.sock")),
                Some(40001),
                None,
            )
            .unwrap();
        assert_eq!(launch.program, Path::new("/usr/bin/sandbox-exec"));
        assert_eq!(launch.args[0], "-p");
        let profile = launch.args[1].to_str().unwrap();
        assert!(
            profile.starts_with("(version 1)\n(deny default)"),
            "{profile}"
        );
        assert!(profile.contains("(remote tcp \"localhost:40001\")"));
        assert!(profile.contains("(subpath \"/Users/me\")"));
        let escaped = workdir.display().to_string().replace('"', "\\\"");
        assert!(
            profile.contains(&format!("(subpath \"{escaped}\")")),
            "{profile}"
        );
        assert_eq!(
            launch.args[2..],
            [os("/bin/bash"), os("--noprofile"), os("--norc")]
        );
        let env = |k: &str| {
            launch
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            env("HTTPS_PROXY").as_deref(),
            Some("http://127.0.0.1:40001")
        );
        assert_eq!(env("FOO").as_deref(), Some("bar"));
        assert_eq!(env("HOME"), Some(workdir.display().to_string()));
        assert!(launch.env.iter().all(|(k, _)| !forbidden_env(k)));

        // Without the proxy: no proxy variables, no network rule.
        let plan = LaunchPlan {
            mechanism: Mechanism::Seatbelt,
            bwrap: None,
            sandbox_exec: Some(PathBuf::from(crate::seatbelt::SANDBOX_EXEC)),
            helper: None,
            home: None,
            read_only: Vec::new(),
            writable: Vec::new(),
            protected: Vec::new(),
            private_tmp: None,
        };
        let launch = plan.finish(&cfg, &workdir, None, None, None).unwrap();
        assert!(
            launch
                .env
                .iter()
                .all(|(k, _)| !k.to_ascii_lowercase().contains("proxy"))
        );
        assert!(!launch.args[1].to_str().unwrap().contains("(allow network"));
    }

    #[test]
    fn seatbelt_is_macos_only() {
        let r = probe_isolation();
        assert_eq!(
            r.seatbelt.is_some(),
            cfg!(target_os = "macos") && Path::new("/usr/bin/sandbox-exec").is_file()
        );
        if !cfg!(target_os = "macos") {
            assert_ne!(r.best, Some(Mechanism::Seatbelt));
            assert!(r.seatbelt_problem.is_some());
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = SandboxConfig::new(dir.path());
            cfg.mechanism = Mechanism::Seatbelt;
            let err = prepare(&cfg).err().unwrap();
            assert!(err.to_string().contains("macOS-only"), "{err}");
        }
        assert_eq!(Mechanism::Seatbelt.as_str(), "seatbelt");
        assert_eq!(
            serde_json::to_value(Mechanism::Seatbelt).unwrap(),
            "seatbelt"
        );
    }
}
