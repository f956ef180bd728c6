//! Path confinement for the file tools: symlinks resolved (the leaf too, even dangling),
//! escapes refused, protected files refused for writes.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::Inner;

/// Roots a path may resolve into (all canonical).
#[derive(Debug, Clone, Default)]
pub(crate) struct Roots {
    pub(crate) workdir: PathBuf,
    pub(crate) writable: Vec<PathBuf>,
    pub(crate) read_only: Vec<PathBuf>,
}

/// How a resolved path may be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
}

/// Names that steer other tools: never written from the sandbox, wherever they are.
/// (`.gitconfig` is not among them: `HOME` is the workdir, so `git config --global` writes
/// one there, and git never reads a `.gitconfig` found inside a project.)
pub(crate) const PROTECTED_NAMES: [&str; 12] = [
    ".mcp.json",
    ".bashrc",
    ".bash_profile",
    ".bash_login",
    ".bash_logout",
    ".profile",
    ".zshrc",
    ".zshenv",
    ".zprofile",
    ".gitmodules",
    ".ripgreprc",
    ".npmrc",
];

/// Directories that steer other tools.
pub(crate) const PROTECTED_DIRS: [&str; 2] = [".vscode", ".idea"];

/// Entries of a directory that steer other tools (`parent/child`, the child file or directory
/// and everything below it).
pub(crate) const PROTECTED_NESTED: [(&str, &str); 6] = [
    (".git", "config"),
    (".git", "hooks"),
    (".claude", "commands"),
    (".claude", "agents"),
    (".claude", "settings.json"),
    (".claude", "settings.local.json"),
];

/// Resolve `input` (relative to `workdir`) to an absolute path with every symlink followed,
/// including the last component; components that do not exist are appended lexically.
pub(crate) fn resolve(workdir: &Path, input: &Path) -> io::Result<PathBuf> {
    let start = if input.is_absolute() {
        input.to_path_buf()
    } else {
        workdir.join(input)
    };
    let mut queue: VecDeque<OsString> = VecDeque::new();
    push_front(&mut queue, &start);
    let mut out = PathBuf::from("/");
    let mut hops = 0usize;
    let mut missing = false;
    while let Some(part) = queue.pop_front() {
        if part == "/" {
            out = PathBuf::from("/");
            continue;
        }
        if part == "." {
            continue;
        }
        if part == ".." {
            out.pop();
            // Re-check from here: `missing/../link` must still follow `link`.
            missing = false;
            continue;
        }
        let candidate = out.join(&part);
        if missing {
            out = candidate;
            continue;
        }
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other("too many levels of symbolic links"));
                }
                let target = std::fs::read_link(&candidate)?;
                push_front(&mut queue, &target);
            }
            Ok(_) => out = candidate,
            Err(_) => {
                missing = true;
                out = candidate;
            }
        }
    }
    Ok(out)
}

fn push_front(queue: &mut VecDeque<OsString>, path: &Path) {
    let parts: Vec<OsString> = path
        .components()
        .map(|c| match c {
            Component::RootDir | Component::Prefix(_) => OsString::from("/"),
            Component::CurDir => OsString::from("."),
            Component::ParentDir => OsString::from(".."),
            Component::Normal(n) => n.to_os_string(),
        })
        .collect();
    for p in parts.into_iter().rev() {
        queue.push_front(p);
    }
}

/// Where a resolved path lies.
#[derive(Debug)]
pub(crate) struct Placed {
    pub(crate) path: PathBuf,
    pub(crate) root: PathBuf,
    pub(crate) read_only: bool,
}

impl Roots {
    /// Resolve and confine. The refusal is worded as the reference toolset words it
    /// (`path "<p>" is outside the session's working directory`, the path JSON-quoted).
    pub(crate) fn place(&self, input: &str) -> Result<Placed, String> {
        let resolved = resolve(&self.workdir, Path::new(input))
            .map_err(|e| format!("path '{input}' could not be resolved: {e}"))?;
        let mut best: Option<(&PathBuf, bool)> = None;
        let candidates = std::iter::once((&self.workdir, false))
            .chain(self.writable.iter().map(|r| (r, false)))
            .chain(self.read_only.iter().map(|r| (r, true)));
        for (root, ro) in candidates {
            if resolved.starts_with(root) {
                // The deepest root wins (a read-only root inside the workdir stays read-only).
                if best.is_none_or(|(b, _)| root.components().count() > b.components().count()) {
                    best = Some((root, ro));
                }
            }
        }
        match best {
            Some((root, read_only)) => Ok(Placed {
                path: resolved,
                root: root.clone(),
                read_only,
            }),
            None => Err(format!(
                "path {} is outside the session's working directory",
                serde_json::Value::from(input)
            )),
        }
    }
}

/// True when `rel` (relative to a root) names a file that steers other tools.
pub(crate) fn is_protected(rel: &Path) -> bool {
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    for (i, p) in parts.iter().enumerate() {
        if PROTECTED_DIRS.contains(&p.as_str()) {
            return true;
        }
        if PROTECTED_NAMES.contains(&p.as_str()) {
            return true;
        }
        let next = parts.get(i + 1).map(String::as_str);
        if PROTECTED_NESTED
            .iter()
            .any(|(parent, child)| p == parent && next == Some(*child))
        {
            return true;
        }
    }
    false
}

/// Check a placed path for a write.
pub(crate) fn check_write(op: &str, input: &str, placed: &Placed) -> Result<(), String> {
    if placed.read_only {
        return Err(format!(
            "{op}: {input} is inside read-only directory {}",
            placed.root.display()
        ));
    }
    let rel = placed
        .path
        .strip_prefix(&placed.root)
        .unwrap_or(Path::new(""));
    if is_protected(rel) {
        return Err(format!(
            "{op}: {input} is a protected path (files that configure other tools, such as .mcp.json, .git/config, .git/hooks, .vscode/ and shell rc files, cannot be written from the sandbox)"
        ));
    }
    Ok(())
}

/// Protected paths that exist under `workdir` (depth ≤ 3, not following symlinks): the sandbox
/// re-binds them read-only.
pub(crate) fn existing_protected(workdir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(workdir.to_path_buf(), 0usize)];
    let mut visited = 0usize;
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            visited += 1;
            if visited > 20_000 {
                return found;
            }
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(ft) = entry.file_type() else { continue };
            if ft.is_symlink() {
                // A symlink named like a protected file: bind the link location read-only too
                // (bwrap binds the target's content at that place; refusing writes is what counts).
                if PROTECTED_NAMES.contains(&name.as_str())
                    || PROTECTED_DIRS.contains(&name.as_str())
                {
                    found.push(path);
                }
                continue;
            }
            if PROTECTED_NAMES.contains(&name.as_str()) || PROTECTED_DIRS.contains(&name.as_str()) {
                found.push(path);
                continue;
            }
            if ft.is_dir() && PROTECTED_NESTED.iter().any(|(parent, _)| name == *parent) {
                for (_, sub) in PROTECTED_NESTED
                    .iter()
                    .filter(|(parent, _)| name == *parent)
                {
                    let p = path.join(sub);
                    if std::fs::symlink_metadata(&p).is_ok() {
                        found.push(p);
                    }
                }
                continue;
            }
            if ft.is_dir() && depth < 2 && name != "node_modules" {
                stack.push((path, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Top-level protected files that did not exist when the sandbox opened but exist now were
/// created from inside (bash can create a missing file that no read-only bind covers): remove
/// them. Returns what was removed.
pub(crate) fn sweep_protected(inner: &Inner) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let mut candidates: Vec<PathBuf> = PROTECTED_NAMES
        .iter()
        .chain(PROTECTED_DIRS.iter())
        .map(|n| inner.workdir.join(n))
        .collect();
    for (parent, sub) in PROTECTED_NESTED
        .iter()
        .filter(|(parent, _)| *parent != ".git")
    {
        candidates.push(inner.workdir.join(parent).join(sub));
    }
    for c in candidates {
        if inner.protected_at_open.contains(&c) {
            continue;
        }
        let Ok(meta) = std::fs::symlink_metadata(&c) else {
            continue;
        };
        let ok = if meta.is_dir() {
            std::fs::remove_dir_all(&c).is_ok()
        } else {
            std::fs::remove_file(&c).is_ok()
        };
        if ok {
            tracing::warn!(path = %c.display(), "removed a protected file created inside the sandbox");
            removed.push(c);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn protected_names() {
        assert!(is_protected(Path::new(".mcp.json")));
        assert!(is_protected(Path::new("sub/.mcp.json")));
        assert!(is_protected(Path::new(".git/hooks/pre-commit")));
        assert!(is_protected(Path::new(".git/config")));
        assert!(!is_protected(Path::new(".git/HEAD")));
        assert!(is_protected(Path::new(".vscode/settings.json")));
        assert!(is_protected(Path::new(".bashrc")));
        assert!(!is_protected(Path::new("src/main.rs")));
    }

    #[test]
    fn resolves_symlinks_and_dotdot() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().canonicalize().unwrap();
        std::fs::create_dir(base.join("a")).unwrap();
        std::os::unix::fs::symlink("/etc", base.join("a/link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent/x", base.join("dangling")).unwrap();
        assert_eq!(
            resolve(&base, Path::new("a/link/passwd")).unwrap(),
            PathBuf::from("/etc/passwd")
        );
        assert_eq!(resolve(&base, Path::new("a/../b")).unwrap(), base.join("b"));
        assert_eq!(
            resolve(&base, Path::new("dangling")).unwrap(),
            PathBuf::from("/nonexistent/x")
        );
        assert_eq!(
            resolve(&base, Path::new("../..")).unwrap(),
            base.parent().unwrap().parent().unwrap()
        );
    }
}
