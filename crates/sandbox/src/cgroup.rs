//! Per-session cgroups: `pids.max`, `memory.max`, `cpu.max` that bind root too.
//!
//! cgroup v2 is used when the agent's own cgroup (or the configured parent) can delegate the
//! `pids` and `memory` controllers to a child. Kernels that still mount the v1 controllers (as
//! some VMs and older distributions do) get the same limits through the v1 `pids`, `memory` and
//! `cpu` hierarchies. The sandbox's first process joins the group before it execs the sandbox
//! (see `isolation`), so every descendant is counted.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::Limits;

/// Which cgroup mechanism this machine offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CgroupSupport {
    /// cgroup v2: children are created under `parent` with these controllers.
    V2 {
        parent: PathBuf,
        controllers: Vec<String>,
    },
    /// cgroup v1 controllers (each a parent directory in its own hierarchy).
    V1 {
        pids: PathBuf,
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// No usable cgroup.
    Unavailable { reason: String },
}

fn own_cgroups() -> Vec<(String, String)> {
    let Ok(text) = fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?.to_owned();
            let path = it.next()?.to_owned();
            Some((ctrls, path))
        })
        .collect()
}

fn join_rel(base: &Path, rel: &str) -> PathBuf {
    base.join(rel.trim_start_matches('/'))
}

fn unified_mount() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.join("cgroup.controllers").exists())
}

fn read_words(p: &Path) -> Vec<String> {
    fs::read_to_string(p)
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default()
}

/// Whether children of `candidate` can get the pids and memory controllers (enabling them,
/// and cpu, in its `cgroup.subtree_control` when needed). Returns the enabled controllers.
fn v2_usable(candidate: &Path) -> Result<Vec<String>, String> {
    let available = read_words(&candidate.join("cgroup.controllers"));
    if !(available.iter().any(|c| c == "pids") && available.iter().any(|c| c == "memory")) {
        return Err(format!(
            "cgroup v2 {} has no pids/memory controllers (available: {:?})",
            candidate.display(),
            available
        ));
    }
    let mut enabled = read_words(&candidate.join("cgroup.subtree_control"));
    for c in ["pids", "memory", "cpu"] {
        if available.iter().any(|a| a == c)
            && !enabled.iter().any(|e| e == c)
            && fs::write(candidate.join("cgroup.subtree_control"), format!("+{c}")).is_ok()
        {
            enabled.push(c.to_owned());
        }
    }
    if enabled.iter().any(|c| c == "pids") && enabled.iter().any(|c| c == "memory") {
        Ok(enabled)
    } else {
        Err(format!(
            "cgroup v2 {} cannot delegate pids+memory to children (subtree_control: {:?})",
            candidate.display(),
            enabled
        ))
    }
}

/// Find where per-session groups can be created (`parent` overrides the agent's own cgroup
/// for v2).
pub(crate) fn detect(parent: Option<&Path>) -> CgroupSupport {
    let own = own_cgroups();
    let mut reasons = Vec::new();
    if let Some(mount) = unified_mount() {
        // The configured parent; else children of the agent's own cgroup; else (a cgroup
        // holding processes cannot delegate controllers: the "no internal processes" rule)
        // siblings under its parent, which already delegates to the agent's own group.
        let candidates: Vec<PathBuf> = match parent {
            Some(p) => vec![p.to_path_buf()],
            None => own
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| {
                    let me = join_rel(&mount, p);
                    let mut v = vec![me.clone()];
                    if let Some(up) = me.parent()
                        && up.starts_with(&mount)
                        && up != me
                    {
                        v.push(up.to_path_buf());
                    }
                    v
                })
                .unwrap_or_default(),
        };
        for candidate in candidates {
            match v2_usable(&candidate) {
                Ok(controllers) => {
                    return CgroupSupport::V2 {
                        parent: candidate,
                        controllers,
                    };
                }
                Err(reason) => reasons.push(reason),
            }
        }
    }
    // v1 hierarchies.
    let v1 = |name: &str| -> Option<PathBuf> {
        let (ctrls, path) = own.iter().find(|(c, _)| c.split(',').any(|x| x == name))?;
        let mount = [
            PathBuf::from("/sys/fs/cgroup").join(ctrls),
            PathBuf::from("/sys/fs/cgroup").join(name),
        ]
        .into_iter()
        .find(|m| m.join("cgroup.procs").exists())?;
        let dir = join_rel(&mount, path);
        dir.join("cgroup.procs").exists().then_some(dir)
    };
    if let Some(pids) = v1("pids") {
        return CgroupSupport::V1 {
            pids,
            memory: v1("memory"),
            cpu: v1("cpu"),
        };
    }
    reasons.push("no cgroup v1 pids hierarchy either".into());
    CgroupSupport::Unavailable {
        reason: reasons.join("; "),
    }
}

/// One session's group (one directory per hierarchy).
#[derive(Debug)]
pub(crate) struct SessionCgroup {
    /// Directories, the pids (or v2) one first.
    dirs: Vec<PathBuf>,
    v2: bool,
}

fn write(dir: &Path, file: &str, value: &str) -> Result<(), String> {
    fs::write(dir.join(file), value)
        .map_err(|e| format!("writing {value:?} to {}: {e}", dir.join(file).display()))
}

impl SessionCgroup {
    /// Create the group and write the limits.
    pub(crate) fn create(support: &CgroupSupport, limits: &Limits) -> Result<Self, String> {
        let name = format!("airlock-sandbox-{:012x}", rand::random::<u64>() >> 16);
        let mkdir = |parent: &Path| -> Result<PathBuf, String> {
            let dir = parent.join(&name);
            fs::create_dir(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
            Ok(dir)
        };
        let made = match support {
            CgroupSupport::Unavailable { reason } => return Err(reason.clone()),
            CgroupSupport::V2 {
                parent,
                controllers,
            } => {
                let dir = mkdir(parent)?;
                let cg = SessionCgroup {
                    dirs: vec![dir.clone()],
                    v2: true,
                };
                let r = (|| {
                    if let Some(n) = limits.pids_max {
                        write(&dir, "pids.max", &n.to_string())?;
                    }
                    if let Some(n) = limits.memory_max {
                        write(&dir, "memory.max", &n.to_string())?;
                        let _ = write(&dir, "memory.swap.max", "0");
                    }
                    if let Some(c) = limits.cpu_max
                        && controllers.iter().any(|c| c == "cpu")
                    {
                        write(&dir, "cpu.max", &format!("{} {}", c.quota_us, c.period_us))?;
                    }
                    Ok::<(), String>(())
                })();
                (cg, r)
            }
            CgroupSupport::V1 { pids, memory, cpu } => {
                let mut cg = SessionCgroup {
                    dirs: Vec::new(),
                    v2: false,
                };
                let r = (|| {
                    let p = mkdir(pids)?;
                    cg.dirs.push(p.clone());
                    if let Some(n) = limits.pids_max {
                        write(&p, "pids.max", &n.to_string())?;
                    }
                    if let (Some(m), Some(n)) = (memory, limits.memory_max) {
                        let d = mkdir(m)?;
                        cg.dirs.push(d.clone());
                        write(&d, "memory.limit_in_bytes", &n.to_string())?;
                        // No swap beyond the limit, where swap accounting exists.
                        let _ = write(&d, "memory.memsw.limit_in_bytes", &n.to_string());
                    }
                    if let (Some(c), Some(l)) = (cpu, limits.cpu_max) {
                        let d = mkdir(c)?;
                        cg.dirs.push(d.clone());
                        write(&d, "cpu.cfs_period_us", &l.period_us.to_string())?;
                        write(&d, "cpu.cfs_quota_us", &l.quota_us.to_string())?;
                    }
                    Ok::<(), String>(())
                })();
                (cg, r)
            }
        };
        let (cg, r) = made;
        if let Err(e) = r {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The `cgroup.procs` files a process writes its pid to, to join.
    pub(crate) fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|d| d.join("cgroup.procs")).collect()
    }

    /// Human description.
    pub(crate) fn describe(&self) -> String {
        let kind = if self.v2 { "v2" } else { "v1" };
        let dirs: Vec<String> = self.dirs.iter().map(|d| d.display().to_string()).collect();
        format!("cgroup {kind}: {}", dirs.join(", "))
    }

    fn pids(&self) -> Vec<i32> {
        let Some(first) = self.dirs.first() else {
            return Vec::new();
        };
        fs::read_to_string(first.join("cgroup.procs"))
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Counter of refused forks (`pids.events` `max`) and OOM kills, for error notes.
    pub(crate) fn events(&self) -> (u64, u64) {
        let read_key = |file: PathBuf, key: &str| -> u64 {
            fs::read_to_string(file)
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        let mut it = l.split_whitespace();
                        (it.next() == Some(key))
                            .then(|| it.next().and_then(|v| v.parse().ok()))
                            .flatten()
                    })
                })
                .unwrap_or(0)
        };
        let Some(first) = self.dirs.first() else {
            return (0, 0);
        };
        let forks = read_key(first.join("pids.events"), "max");
        let oom = if self.v2 {
            read_key(first.join("memory.events"), "oom_kill")
        } else {
            self.dirs
                .iter()
                .find(|d| d.join("memory.oom_control").exists())
                .map(|d| read_key(d.join("memory.oom_control"), "oom_kill"))
                .unwrap_or(0)
        };
        (forks, oom)
    }

    /// SIGKILL every process in the group (repeated: a forking process may add more).
    pub(crate) fn kill_all(&self) {
        if self.v2
            && let Some(d) = self.dirs.first()
        {
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`Self::kill_all`] without blocking a runtime thread.
    pub(crate) async fn kill_all_async(&self) {
        if self.v2
            && let Some(d) = self.dirs.first()
        {
            let _ = fs::write(d.join("cgroup.kill"), "1");
        }
        for _ in 0..100 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Remove the directories (after the processes are gone).
    pub(crate) fn remove(&self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for SessionCgroup {
    fn drop(&mut self) {
        // A sandbox dropped without `close()` (a panic, a cancelled task) still leaves nothing
        // behind: kill what is left and remove the groups.
        if self.dirs.iter().any(|d| d.exists()) {
            self.kill_all();
            self.remove();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The v2 file protocol, on a directory laid out like a cgroup (this machine's kernel
    /// mounts the controllers on v1, so the real v2 path cannot run here).
    #[test]
    fn v2_group_files() {
        let dir = tempfile::tempdir().unwrap();
        let parent = dir.path().to_path_buf();
        std::fs::write(
            parent.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        std::fs::write(parent.join("cgroup.subtree_control"), "").unwrap();
        let enabled = v2_usable(&parent).unwrap();
        assert_eq!(enabled, ["pids", "memory", "cpu"]);
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu io\n").unwrap();
        assert!(v2_usable(&parent).unwrap_err().contains("no pids/memory"));

        let support = CgroupSupport::V2 {
            parent: parent.clone(),
            controllers: enabled,
        };
        let limits = Limits {
            pids_max: Some(64),
            memory_max: Some(1 << 28),
            ..Limits::default()
        };
        let cg = SessionCgroup::create(&support, &limits).unwrap();
        let group = cg.dirs[0].clone();
        assert!(group.starts_with(&parent));
        let read = |f: &str| std::fs::read_to_string(group.join(f)).unwrap();
        assert_eq!(read("pids.max"), "64");
        assert_eq!(read("memory.max"), "268435456");
        assert_eq!(read("memory.swap.max"), "0");
        assert_eq!(read("cpu.max"), "100000 100000");
        assert_eq!(cg.procs_files(), vec![group.join("cgroup.procs")]);
        assert!(cg.describe().starts_with("cgroup v2: "));
        // (rmdir of a real cgroup works with its interface files in place; here they are
        // plain files, so clean up by hand.)
        std::fs::remove_dir_all(&group).unwrap();
    }
}
