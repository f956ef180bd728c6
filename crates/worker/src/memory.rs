//! Memory stores: a session's `memory_store` resources mounted as directories and kept in step
//! with the memory API while the session runs.
//!
//! At claim every store is downloaded into a fresh directory at its `mount_path` (a failure
//! fails the item). After tool calls, at most every [`MemoryConfig::sync_interval`], a sync
//! compares three views of each path: the last state both sides agreed on (the *base*), the
//! local file and the server's memory.
//!
//! * only the server changed → the file is rewritten (or removed);
//! * only the file changed → uploaded (update with a `content_sha256` precondition, or create);
//!   a read-only store is never pushed;
//! * both changed → the server's version wins (a warning names the path);
//! * a local delete reaches the server only after it has been seen for
//!   [`MemoryConfig::delete_after`] and at most [`MemoryConfig::deletes_per_sync`] at a time
//!   (gated by [`DeletionMode`]); a folder that loses its marker, empties or vanishes is
//!   downloaded again rather than treated as a mass delete; a folder whose marker names another
//!   store is left alone.
//!
//! At teardown a final sync and a push-only flush (each bounded) run before the directories
//! are removed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_sandbox::{LocalSnapshot, MarkerState, MemoryMount, content_sha256};
use serde_json::Value;
use tokio::time::Instant;

use crate::client::{ApiClient, ApiError};

/// Stores a session may attach.
pub const MAX_MEMORY_STORES: usize = 8;

/// What happens to a memory whose local file was deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeletionMode {
    /// Deleted on the server once the deletion is corroborated.
    Enabled,
    /// Logged, never deleted.
    LogOnly,
    /// Ignored.
    Disabled,
}

/// Memory sync settings.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// Least time between two syncs after tool calls; `None` disables memory stores (a session
    /// with stores then runs without them). At least 5 s.
    pub sync_interval: Option<Duration>,
    pub deletions: DeletionMode,
    /// How long a local delete must persist before it reaches the server.
    pub delete_after: Duration,
    /// Server deletions per sync at most.
    pub deletes_per_sync: usize,
    /// Bound of the final sync and, separately, of the push-only flush at teardown.
    pub final_timeout: Duration,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            sync_interval: Some(Duration::from_secs(15)),
            deletions: DeletionMode::Enabled,
            delete_after: Duration::from_secs(30),
            deletes_per_sync: 8,
            final_timeout: Duration::from_secs(30),
        }
    }
}

/// Least sync interval.
const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// One `memory_store` resource of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryResource {
    pub store_id: String,
    pub mount_path: PathBuf,
    pub read_only: bool,
    pub name: String,
}

/// A mounted store as the executor sees it: the sandbox mounts `path` (read-only when asked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRoot {
    pub path: PathBuf,
    pub read_only: bool,
    pub store_id: String,
}

/// The session's `memory_store` resources (other kinds are not the worker's business).
pub fn memory_resources(session: &Value) -> Result<Vec<MemoryResource>, String> {
    let Some(list) = session.get("resources").and_then(Value::as_array) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<MemoryResource> = Vec::new();
    for r in list {
        if r.get("type").and_then(Value::as_str) != Some("memory_store") {
            continue;
        }
        let store_id = r
            .get("memory_store_id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty() && !s.contains(['/', '\n', '\0']))
            .ok_or("a memory_store resource without a valid memory_store_id")?
            .to_string();
        let name = r
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(&store_id)
            .to_string();
        let mount = match r.get("mount_path").and_then(Value::as_str) {
            Some(p) => PathBuf::from(p),
            None => {
                let base = Path::new(&name)
                    .file_name()
                    .map(|s| s.to_string_lossy().into_owned())
                    .filter(|s| s != "." && s != "..")
                    .unwrap_or_else(|| store_id.clone());
                Path::new("/mnt/memory").join(base)
            }
        };
        let clean = mount.is_absolute()
            && mount.components().count() > 1
            && mount.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        if !clean {
            return Err(format!(
                "memory store {store_id}: mount_path {} must be a clean absolute path",
                mount.display()
            ));
        }
        if out
            .iter()
            .any(|o| o.mount_path.starts_with(&mount) || mount.starts_with(&o.mount_path))
        {
            return Err(format!(
                "memory store {store_id}: mount_path {} overlaps another store's",
                mount.display()
            ));
        }
        let read_only = r.get("access").and_then(Value::as_str) == Some("read_only");
        out.push(MemoryResource {
            store_id,
            mount_path: mount,
            read_only,
            name,
        });
    }
    if out.len() > MAX_MEMORY_STORES {
        return Err(format!(
            "{} memory stores attached; at most {MAX_MEMORY_STORES} are supported",
            out.len()
        ));
    }
    Ok(out)
}

/// The server's view of one memory.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Remote {
    id: String,
    sha: String,
}

fn remote_of(m: &Value) -> Option<(String, Remote)> {
    let path = m.get("path")?.as_str()?;
    let id = m.get("id")?.as_str()?;
    let sha = m.get("content_sha256")?.as_str()?;
    airlock_sandbox::validate_memory_path(path).ok()?;
    Some((
        path.to_string(),
        Remote {
            id: id.to_string(),
            sha: sha.to_ascii_lowercase(),
        },
    ))
}

/// What one sync did (for logs and tests).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub pulled: usize,
    pub removed_locally: usize,
    pub pushed: usize,
    pub deleted_remotely: usize,
    pub conflicts: usize,
    pub redownloaded: bool,
    pub errors: usize,
}

struct StoreSync {
    mount: MemoryMount,
    /// Path → the state both sides last agreed on.
    base: BTreeMap<String, Remote>,
    /// Paths whose file is gone while the server still has them: first seen then.
    missing_since: HashMap<String, Instant>,
    warned_foreign: bool,
}

/// The memory stores of one session.
pub struct MemorySession {
    api: ApiClient,
    cred: String,
    cfg: MemoryConfig,
    stores: Vec<StoreSync>,
    last_sync: Instant,
}

impl std::fmt::Debug for MemorySession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySession")
            .field("stores", &self.stores.len())
            .finish()
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, airlock_sandbox::SandboxError> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("memory file task: {e}"))?
        .map_err(|e| e.to_string())
}

impl MemorySession {
    /// Create each store's directory and download its memories. Any failure removes what was
    /// created and fails (the item cannot run without its memory).
    pub async fn mount(
        api: ApiClient,
        cred: String,
        cfg: MemoryConfig,
        resources: &[MemoryResource],
    ) -> Result<Self, String> {
        let mut session = Self {
            api,
            cred,
            cfg,
            stores: Vec::new(),
            last_sync: Instant::now(),
        };
        for r in resources {
            let (path, id, ro) = (r.mount_path.clone(), r.store_id.clone(), r.read_only);
            let mount = match blocking(move || MemoryMount::create(&path, &id, ro)).await {
                Ok(m) => m,
                Err(e) => {
                    session.unmount().await;
                    return Err(format!(
                        "memory store {} ({}): {e}",
                        r.name,
                        r.mount_path.display()
                    ));
                }
            };
            session.stores.push(StoreSync {
                mount,
                base: BTreeMap::new(),
                missing_since: HashMap::new(),
                warned_foreign: false,
            });
            let idx = session.stores.len() - 1;
            if let Err(e) = session.download(idx).await {
                session.unmount().await;
                return Err(format!("memory store {}: {e}", r.name));
            }
            tracing::info!(
                store = %r.store_id,
                mount = %r.mount_path.display(),
                read_only = r.read_only,
                memories = session.stores[idx].base.len(),
                "memory store mounted"
            );
        }
        session.last_sync = Instant::now();
        Ok(session)
    }

    /// The mounted directories (for the sandbox).
    pub fn roots(&self) -> Vec<MemoryRoot> {
        self.stores
            .iter()
            .map(|s| MemoryRoot {
                path: s.mount.root().to_path_buf(),
                read_only: s.mount.read_only(),
                store_id: s.mount.store_id().to_string(),
            })
            .collect()
    }

    /// Every memory of the store into its (empty) directory; the base becomes the server's view.
    async fn download(&mut self, idx: usize) -> Result<usize, String> {
        let store_id = self.stores[idx].mount.store_id().to_string();
        let all = self
            .api
            .list_memories(&store_id, &self.cred, true)
            .await
            .map_err(|e| format!("listing memories: {e}"))?;
        let mut base = BTreeMap::new();
        let mut files = Vec::new();
        for m in &all {
            let Some((path, remote)) = remote_of(m) else {
                tracing::warn!(store = %store_id, "skipping a memory with an invalid path or no hash");
                continue;
            };
            let content = match m.get("content").and_then(Value::as_str) {
                Some(c) => c.to_string(),
                None => self.fetch_content(&store_id, &remote.id).await?,
            };
            files.push((path.clone(), content));
            base.insert(path, remote);
        }
        let n = files.len();
        let mount = self.stores[idx].mount.clone();
        blocking(move || {
            for (p, c) in &files {
                mount.write(p, c)?;
            }
            Ok(())
        })
        .await?;
        let s = &mut self.stores[idx];
        s.base = base;
        s.missing_since.clear();
        Ok(n)
    }

    async fn fetch_content(&self, store_id: &str, memory_id: &str) -> Result<String, String> {
        let v = self
            .api
            .get_memory(store_id, memory_id, &self.cred)
            .await
            .map_err(|e| format!("fetching memory {memory_id}: {e}"))?;
        v.get("content")
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("memory {memory_id} came without content"))
    }

    /// Sync when the interval has passed since the last one (called after tool calls).
    pub async fn sync_if_due(&mut self) -> Option<SyncReport> {
        let every = self.cfg.sync_interval?.max(MIN_SYNC_INTERVAL);
        if self.last_sync.elapsed() < every {
            return None;
        }
        Some(self.sync(false).await)
    }

    /// One sync of every store. `push_only` uploads local changes and nothing else.
    pub async fn sync(&mut self, push_only: bool) -> SyncReport {
        let mut report = SyncReport::default();
        for idx in 0..self.stores.len() {
            if let Err(e) = self.sync_store(idx, push_only, &mut report).await {
                report.errors += 1;
                tracing::warn!(store = %self.stores[idx].mount.store_id(), error = %e, "memory sync failed");
            }
        }
        self.last_sync = Instant::now();
        if report != SyncReport::default() {
            tracing::info!(?report, push_only, "memory synced");
        }
        report
    }

    async fn sync_store(
        &mut self,
        idx: usize,
        push_only: bool,
        report: &mut SyncReport,
    ) -> Result<(), String> {
        let mount = self.stores[idx].mount.clone();
        let store_id = mount.store_id().to_string();
        let m = mount.clone();
        let (state, local) = blocking(move || {
            let state = m.marker_state();
            let local = if state == MarkerState::Ours {
                m.scan()?
            } else {
                LocalSnapshot::default()
            };
            Ok((state, local))
        })
        .await?;
        match state {
            MarkerState::Foreign => {
                if !self.stores[idx].warned_foreign {
                    tracing::warn!(store = %store_id, root = %mount.root().display(), "the store's folder names another store in its marker; leaving it alone");
                    self.stores[idx].warned_foreign = true;
                }
                return Ok(());
            }
            MarkerState::Missing | MarkerState::Gone => {
                if push_only {
                    return Ok(());
                }
                tracing::warn!(store = %store_id, "the store's folder vanished or lost its marker; downloading it again");
                let m = mount.clone();
                blocking(move || m.restore()).await?;
                self.download(idx).await?;
                report.redownloaded = true;
                return Ok(());
            }
            MarkerState::Ours => {}
        }
        let remote: BTreeMap<String, Remote> = self
            .api
            .list_memories(&store_id, &self.cred, false)
            .await
            .map_err(|e| format!("listing memories: {e}"))?
            .iter()
            .filter_map(remote_of)
            .collect();
        // An emptied folder whose server side is not empty is downloaded again (not a mass delete).
        if local.files.is_empty() && !remote.is_empty() && !push_only {
            tracing::warn!(store = %store_id, "the store's folder was emptied; downloading it again");
            // Written into the same directory: the sandbox has it mounted.
            self.download(idx).await?;
            report.redownloaded = true;
            return Ok(());
        }

        let paths: BTreeSet<String> = self.stores[idx]
            .base
            .keys()
            .chain(local.files.keys())
            .chain(remote.keys())
            .cloned()
            .collect();
        let mut deletes = 0usize;
        for path in paths {
            let base = self.stores[idx].base.get(&path).cloned();
            let l = local.files.get(&path).map(|f| f.sha256.clone());
            let r = remote.get(&path).cloned();
            let b_sha = base.as_ref().map(|b| b.sha.clone());
            let r_sha = r.as_ref().map(|r| r.sha.clone());
            if l.is_some() || r.is_none() {
                self.stores[idx].missing_since.remove(&path);
            }
            let outcome = if l == r_sha {
                // Agreed (or both gone).
                self.set_base(idx, &path, r);
                Ok(())
            } else if l == b_sha {
                // Only the server changed.
                if push_only {
                    Ok(())
                } else {
                    self.pull(idx, &store_id, &path, r, report).await
                }
            } else if r_sha == b_sha {
                // Only the file changed.
                if mount.read_only() {
                    Ok(())
                } else if l.is_some() {
                    self.push(idx, &store_id, &path, r, report).await
                } else if let Some(r) = r {
                    self.local_delete(idx, &store_id, &path, r, &mut deletes, report)
                        .await
                } else {
                    Ok(())
                }
            } else {
                // Both changed, differently.
                match (&l, &r) {
                    (Some(_), None) if !mount.read_only() => {
                        // The server deleted it while it was edited here: the edit survives.
                        self.push(idx, &store_id, &path, None, report).await
                    }
                    _ if push_only => Ok(()),
                    _ => {
                        tracing::warn!(store = %store_id, path = %path, "memory changed on both sides; keeping the store's version");
                        report.conflicts += 1;
                        self.pull(idx, &store_id, &path, r, report).await
                    }
                }
            };
            if let Err(e) = outcome {
                report.errors += 1;
                tracing::warn!(store = %store_id, path = %path, error = %e, "memory not synced");
            }
        }
        Ok(())
    }

    fn set_base(&mut self, idx: usize, path: &str, r: Option<Remote>) {
        let base = &mut self.stores[idx].base;
        match r {
            Some(r) => {
                base.insert(path.to_string(), r);
            }
            None => {
                base.remove(path);
            }
        }
    }

    /// The server's version (or its absence) onto disk.
    async fn pull(
        &mut self,
        idx: usize,
        store_id: &str,
        path: &str,
        r: Option<Remote>,
        report: &mut SyncReport,
    ) -> Result<(), String> {
        let mount = self.stores[idx].mount.clone();
        let p = path.to_string();
        match &r {
            Some(remote) => {
                let content = self.fetch_content(store_id, &remote.id).await?;
                blocking(move || mount.write(&p, &content)).await?;
                report.pulled += 1;
            }
            None => {
                blocking(move || mount.remove(&p)).await?;
                report.removed_locally += 1;
            }
        }
        self.set_base(idx, path, r);
        Ok(())
    }

    /// The local file to the server: update under a precondition, or create.
    async fn push(
        &mut self,
        idx: usize,
        store_id: &str,
        path: &str,
        r: Option<Remote>,
        report: &mut SyncReport,
    ) -> Result<(), String> {
        let mount = self.stores[idx].mount.clone();
        let p = path.to_string();
        let Some(content) = blocking(move || mount.read(&p)).await? else {
            return Ok(()); // gone since the scan
        };
        let answer = match &r {
            Some(remote) => {
                self.api
                    .update_memory(store_id, &remote.id, &self.cred, &content, &remote.sha)
                    .await
            }
            None => {
                self.api
                    .create_memory(store_id, &self.cred, path, &content)
                    .await
            }
        };
        match answer {
            Ok(v) => {
                let sha = v
                    .get("content_sha256")
                    .and_then(Value::as_str)
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| content_sha256(content.as_bytes()));
                let id = v
                    .get("id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or(r.map(|r| r.id))
                    .ok_or("the server's answer named no memory id")?;
                self.set_base(idx, path, Some(Remote { id, sha }));
                report.pushed += 1;
                Ok(())
            }
            // Changed (or created) on the server meanwhile: the next sync sees both sides.
            Err(e @ ApiError::Status { status: 409, .. }) => {
                tracing::info!(store = %store_id, path, error = %e, "memory changed on the server during the upload; retried on the next sync");
                Ok(())
            }
            Err(e) => Err(format!("uploading: {e}")),
        }
    }

    async fn local_delete(
        &mut self,
        idx: usize,
        store_id: &str,
        path: &str,
        r: Remote,
        deletes: &mut usize,
        report: &mut SyncReport,
    ) -> Result<(), String> {
        let mode = self.cfg.deletions;
        let first = *self.stores[idx]
            .missing_since
            .entry(path.to_string())
            .or_insert_with(Instant::now);
        if mode == DeletionMode::Disabled || first.elapsed() < self.cfg.delete_after {
            return Ok(());
        }
        if mode == DeletionMode::LogOnly {
            tracing::info!(store = %store_id, path, "memory deleted locally; not deleted on the server (deletions are log-only)");
            return Ok(());
        }
        if *deletes >= self.cfg.deletes_per_sync {
            return Ok(()); // the next sync continues
        }
        *deletes += 1;
        match self
            .api
            .delete_memory(store_id, &r.id, &self.cred, &r.sha)
            .await
        {
            Ok(_) | Err(ApiError::Status { status: 404, .. }) => {
                self.set_base(idx, path, None);
                self.stores[idx].missing_since.remove(path);
                report.deleted_remotely += 1;
                Ok(())
            }
            Err(e @ ApiError::Status { status: 409, .. }) => {
                tracing::info!(store = %store_id, path, error = %e, "memory changed on the server; not deleted");
                Ok(())
            }
            Err(e) => Err(format!("deleting: {e}")),
        }
    }

    /// Teardown: when the session ended cleanly a final sync, then a push-only flush (each
    /// bounded), then the directories are removed.
    pub async fn finish(mut self, clean: bool) {
        let bound = self.cfg.final_timeout;
        if clean && tokio::time::timeout(bound, self.sync(false)).await.is_err() {
            tracing::warn!("the final memory sync did not finish in {bound:?}");
        }
        if tokio::time::timeout(bound, self.sync(true)).await.is_err() {
            tracing::warn!(
                "the memory flush did not finish in {bound:?}; unsynced changes are lost"
            );
        }
        self.unmount().await;
    }

    async fn unmount(&mut self) {
        for s in self.stores.drain(..) {
            let root = s.mount.root().to_path_buf();
            if let Err(e) = blocking(move || s.mount.remove_all()).await {
                tracing::warn!(root = %root.display(), error = %e, "memory store folder not removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    #[test]
    fn resources_are_parsed_and_checked() {
        let s = json!({"resources": [
            {"type": "memory_store", "memory_store_id": "memstore_a", "mount_path": "/mnt/memory/a", "access": "read_only", "name": "a"},
            {"type": "memory_store", "memory_store_id": "memstore_b", "name": "team notes"},
            {"type": "file", "file_id": "x"},
        ]});
        let r = memory_resources(&s).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r[0].read_only);
        assert_eq!(r[1].mount_path, PathBuf::from("/mnt/memory/team notes"));
        assert!(!r[1].read_only);
        for bad in [
            json!({"resources": [{"type": "memory_store", "memory_store_id": "m", "mount_path": "relative"}]}),
            json!({"resources": [{"type": "memory_store", "memory_store_id": "m", "mount_path": "/mnt/../etc"}]}),
            json!({"resources": [{"type": "memory_store", "memory_store_id": "m", "mount_path": "/"}]}),
            json!({"resources": [{"type": "memory_store", "memory_store_id": "../x"}]}),
            json!({"resources": [
                {"type": "memory_store", "memory_store_id": "m1", "mount_path": "/mnt/memory/a"},
                {"type": "memory_store", "memory_store_id": "m2", "mount_path": "/mnt/memory/a/b"}]}),
        ] {
            assert!(memory_resources(&bad).is_err(), "{bad}");
        }
        let nine: Vec<Value> = (0..9)
            .map(|i| json!({"type": "memory_store", "memory_store_id": format!("m{i}"), "mount_path": format!("/mnt/memory/{i}")}))
            .collect();
        assert!(memory_resources(&json!({ "resources": nine })).is_err());
        assert!(memory_resources(&json!({})).unwrap().is_empty());
    }
}
