//! The local side of memory stores: the directory a store is mounted at, its marker file,
//! and the file operations a sync needs (the API calls belong to the worker).
//!
//! Layout as the reference worker has it: one directory per store at its `mount_path`
//! (e.g. `/mnt/memory/<store>/`), which must not exist when the session starts, with a marker
//! file `.anthropic-memory-store` containing `version 1\n<memory_store_id>` (never synced). A
//! memory's `path` (`/notes/today.md`) maps to `<root>/notes/today.md`. The worker adds the
//! root to [`crate::SandboxConfig::writable_roots`] (or `read_only_paths` for a read-only store)
//! so bash and the file tools see it at the same path.

use std::collections::BTreeMap;
use std::fs;
use std::io::Read;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Component, Path, PathBuf};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{SandboxError, beneath};

/// The marker file's name.
pub const MEMORY_MARKER: &str = ".anthropic-memory-store";
/// Largest memory content the API accepts.
pub const MAX_MEMORY_BYTES: u64 = 100_000;
/// Longest memory path.
pub const MAX_MEMORY_PATH: usize = 1024;
/// Files scanned per store at most (the server caps a store at 2000 memories).
pub const MAX_MEMORY_FILES: usize = 5000;

/// Check a memory path: absolute (`/…`), at most 1024 bytes, no empty, `.` or `..` segments.
pub fn validate_memory_path(path: &str) -> Result<(), String> {
    if !path.starts_with('/') {
        return Err(format!("memory path {path:?} must start with '/'"));
    }
    if path.len() > MAX_MEMORY_PATH {
        return Err(format!(
            "memory path is longer than {MAX_MEMORY_PATH} bytes"
        ));
    }
    if path.contains('\0') {
        return Err("memory path contains NUL".into());
    }
    for seg in path[1..].split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!(
                "memory path {path:?} has an empty, '.' or '..' segment"
            ));
        }
    }
    if path[1..].split('/').next() == Some(MEMORY_MARKER) {
        return Err(format!("memory path {path:?} names the store marker"));
    }
    Ok(())
}

/// SHA-256 of the bytes, lowercase hex (the API's `content_sha256`).
pub fn content_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// One local file of a store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalMemory {
    pub sha256: String,
    pub size: u64,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalSnapshot {
    /// Memory path → hash and size.
    pub files: BTreeMap<String, LocalMemory>,
    /// Paths that cannot be memories (too large, not UTF-8, bad names), left alone.
    pub ignored: Vec<String>,
}

/// The state of a store directory's marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerState {
    /// The marker names this store.
    Ours,
    /// The marker names another store: the folder is left alone.
    Foreign,
    /// No (readable) marker: the folder is downloaded again.
    Missing,
    /// The directory itself is gone: downloaded again.
    Gone,
}

/// A store mounted in a directory.
#[derive(Debug, Clone)]
pub struct MemoryMount {
    root: PathBuf,
    store_id: String,
    read_only: bool,
}

fn marker_content(store_id: &str) -> String {
    format!("version 1\n{store_id}")
}

impl MemoryMount {
    /// Create the store's directory at `mount_path` (a clean absolute path that must not
    /// exist yet; parents are created) and write the marker.
    pub fn create(
        mount_path: &Path,
        store_id: &str,
        read_only: bool,
    ) -> Result<Self, SandboxError> {
        let clean = mount_path.is_absolute()
            && mount_path
                .components()
                .all(|c| matches!(c, Component::RootDir | Component::Normal(_)));
        if !clean {
            return Err(SandboxError::Config(format!(
                "memory store mount path {} must be a clean absolute path",
                mount_path.display()
            )));
        }
        if store_id.is_empty() || store_id.contains(['/', '\n', '\0']) {
            return Err(SandboxError::Config(format!(
                "invalid memory store id {store_id:?}"
            )));
        }
        if fs::symlink_metadata(mount_path).is_ok() {
            return Err(SandboxError::Config(format!(
                "memory store mount path {} already exists; it must not exist when the session starts (remove the leftover directory)",
                mount_path.display()
            )));
        }
        if let Some(parent) = mount_path.parent() {
            fs::create_dir_all(parent).map_err(|e| {
                if e.kind() == std::io::ErrorKind::PermissionDenied {
                    SandboxError::Config(format!(
                        "memory stores are mounted under {0}, which this user cannot write: run `sudo mkdir -p {0} && sudo chown \"$USER\" {0}` once",
                        parent.display()
                    ))
                } else {
                    SandboxError::io(format!("creating {}", parent.display()), e)
                }
            })?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(mount_path)
            .map_err(|e| SandboxError::io(format!("creating {}", mount_path.display()), e))?;
        let root = mount_path
            .canonicalize()
            .map_err(|e| SandboxError::io(format!("resolving {}", mount_path.display()), e))?;
        let m = Self {
            root,
            store_id: store_id.to_owned(),
            read_only,
        };
        beneath::write_atomic(
            &m.root,
            &m.root.join(MEMORY_MARKER),
            marker_content(store_id).as_bytes(),
            0o600,
        )
        .map_err(|e| SandboxError::io("writing the memory store marker", e))?;
        Ok(m)
    }

    /// The directory (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The store id.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// True for a read-only store (pulled, never pushed).
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// True when the marker still names this store (a folder that lost it, or names another
    /// store, must be neither pushed nor deleted from).
    pub fn marker_ok(&self) -> bool {
        self.marker_state() == MarkerState::Ours
    }

    /// What the store's directory says about itself.
    pub fn marker_state(&self) -> MarkerState {
        if !self.root.is_dir() {
            return MarkerState::Gone;
        }
        let Ok(mut f) = beneath::open_read(&self.root, &self.root.join(MEMORY_MARKER)) else {
            return MarkerState::Missing;
        };
        let mut buf = Vec::new();
        if (&mut f).take(4096).read_to_end(&mut buf).is_err() {
            return MarkerState::Missing;
        }
        if content_sha256(&buf) == content_sha256(marker_content(&self.store_id).as_bytes()) {
            MarkerState::Ours
        } else if buf.starts_with(b"version ") {
            MarkerState::Foreign
        } else {
            MarkerState::Missing
        }
    }

    /// Recreate the directory and the marker after the folder vanished or lost its marker (the
    /// store is then downloaded again, never treated as a mass delete).
    pub fn restore(&self) -> Result<(), SandboxError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.root)
            .map_err(|e| SandboxError::io(format!("recreating {}", self.root.display()), e))?;
        beneath::write_atomic(
            &self.root,
            &self.root.join(MEMORY_MARKER),
            marker_content(&self.store_id).as_bytes(),
            0o600,
        )
        .map_err(|e| SandboxError::io("writing the memory store marker", e))
    }

    fn local_path(&self, memory_path: &str) -> Result<PathBuf, SandboxError> {
        validate_memory_path(memory_path).map_err(SandboxError::Config)?;
        Ok(self.root.join(&memory_path[1..]))
    }

    /// Write a memory's content (from the server) to disk.
    pub fn write(&self, memory_path: &str, content: &str) -> Result<(), SandboxError> {
        let p = self.local_path(memory_path)?;
        beneath::write_atomic(&self.root, &p, content.as_bytes(), 0o644)
            .map_err(|e| SandboxError::io(format!("writing memory {memory_path}"), e))
    }

    /// Read a memory's local content (`None` if absent).
    pub fn read(&self, memory_path: &str) -> Result<Option<String>, SandboxError> {
        let p = self.local_path(memory_path)?;
        let mut f = match beneath::open_read(&self.root, &p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SandboxError::io(format!("reading memory {memory_path}"), e)),
        };
        let mut buf = Vec::new();
        (&mut f)
            .take(MAX_MEMORY_BYTES + 1)
            .read_to_end(&mut buf)
            .map_err(|e| SandboxError::io(format!("reading memory {memory_path}"), e))?;
        if buf.len() as u64 > MAX_MEMORY_BYTES {
            return Err(SandboxError::Config(format!(
                "memory {memory_path} is larger than {MAX_MEMORY_BYTES} bytes"
            )));
        }
        String::from_utf8(buf)
            .map(Some)
            .map_err(|_| SandboxError::Config(format!("memory {memory_path} is not UTF-8")))
    }

    /// Delete a memory's local file (server-side deletion).
    pub fn remove(&self, memory_path: &str) -> Result<(), SandboxError> {
        let p = self.local_path(memory_path)?;
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_file() || m.file_type().is_symlink() => fs::remove_file(&p)
                .map_err(|e| SandboxError::io(format!("removing memory {memory_path}"), e)),
            _ => Ok(()),
        }
    }

    /// Hash every local file (symlinks and special files ignored, never followed).
    pub fn scan(&self) -> Result<LocalSnapshot, SandboxError> {
        let mut snap = LocalSnapshot::default();
        let mut stack = vec![self.root.clone()];
        let mut seen = 0usize;
        while let Some(dir) = stack.pop() {
            let entries = fs::read_dir(&dir)
                .map_err(|e| SandboxError::io(format!("scanning {}", dir.display()), e))?;
            for entry in entries.flatten() {
                seen += 1;
                if seen > MAX_MEMORY_FILES {
                    return Ok(snap);
                }
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let memory_path = format!("/{}", rel.to_string_lossy());
                if ft.is_dir() {
                    stack.push(path);
                    continue;
                }
                if memory_path == format!("/{MEMORY_MARKER}") {
                    continue;
                }
                if !ft.is_file() || validate_memory_path(&memory_path).is_err() {
                    snap.ignored.push(memory_path);
                    continue;
                }
                let Ok(mut f) = beneath::open_read(&self.root, &path) else {
                    snap.ignored.push(memory_path);
                    continue;
                };
                let mut buf = Vec::new();
                if (&mut f)
                    .take(MAX_MEMORY_BYTES + 1)
                    .read_to_end(&mut buf)
                    .is_err()
                    || buf.len() as u64 > MAX_MEMORY_BYTES
                    || std::str::from_utf8(&buf).is_err()
                {
                    snap.ignored.push(memory_path);
                    continue;
                }
                snap.files.insert(
                    memory_path,
                    LocalMemory {
                        sha256: content_sha256(&buf),
                        size: buf.len() as u64,
                    },
                );
            }
        }
        Ok(snap)
    }

    /// Remove the whole directory (teardown).
    pub fn remove_all(self) -> Result<(), SandboxError> {
        fs::remove_dir_all(&self.root)
            .map_err(|e| SandboxError::io(format!("removing {}", self.root.display()), e))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn paths_are_validated() {
        assert!(validate_memory_path("/notes/today.md").is_ok());
        for bad in [
            "notes",
            "/a//b",
            "/a/../b",
            "/./a",
            "/",
            &format!("/{}", "x".repeat(1100)),
            "/.anthropic-memory-store",
        ] {
            assert!(validate_memory_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn mount_marker_write_scan_remove() {
        let dir = tempfile::tempdir().unwrap();
        let mount = dir.path().join("mnt/memory/prefs");
        let m = MemoryMount::create(&mount, "memstore_1", false).unwrap();
        assert!(m.marker_ok());
        assert_eq!(
            std::fs::read_to_string(mount.join(MEMORY_MARKER)).unwrap(),
            "version 1\nmemstore_1"
        );
        // The mount path must not exist already.
        assert!(MemoryMount::create(&mount, "memstore_1", false).is_err());
        assert!(MemoryMount::create(Path::new("relative/x"), "m", false).is_err());
        m.write("/notes/a.md", "alpha").unwrap();
        assert!(m.write("/../escape", "x").is_err());
        std::fs::write(mount.join("local.md"), "made by the agent").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", mount.join("link.md")).unwrap();
        std::fs::write(mount.join("big.md"), "x".repeat(100_001)).unwrap();
        let snap = m.scan().unwrap();
        assert_eq!(snap.files.len(), 2, "{snap:?}");
        assert_eq!(snap.files["/notes/a.md"].sha256, content_sha256(b"alpha"));
        assert_eq!(snap.files["/local.md"].size, 17);
        assert!(snap.ignored.contains(&"/link.md".to_owned()));
        assert!(snap.ignored.contains(&"/big.md".to_owned()));
        assert_eq!(m.read("/notes/a.md").unwrap().as_deref(), Some("alpha"));
        assert_eq!(m.read("/missing.md").unwrap(), None);
        assert!(m.read("/link.md").is_err(), "symlinks are never followed");
        m.remove("/notes/a.md").unwrap();
        assert!(!mount.join("notes/a.md").exists());
        std::fs::write(mount.join(MEMORY_MARKER), "version 1\nother").unwrap();
        assert!(!m.marker_ok());
        m.remove_all().unwrap();
        assert!(!mount.exists());
    }
}
