//! Live watching: rescan when any candidate config (or a directory on the way to it) changes.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};
use tokio::sync::{Notify, mpsc, watch as tokio_watch};

use crate::model::{DiscoveryEnv, Snapshot};
use crate::scan::scan;

/// How long to wait for a burst of file events to settle before rescanning.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Errors starting a [`Watcher`].
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error("discovery::watch must be called from inside a tokio runtime")]
    NoRuntime,
    #[error("cannot start the file watcher: {0} (on Linux, check fs.inotify.max_user_instances)")]
    Notify(#[from] notify::Error),
}

/// A running watch. Dropping it stops watching.
pub struct Watcher {
    task: tokio::task::JoinHandle<()>,
    rescan: Arc<Notify>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher").finish_non_exhaustive()
    }
}

impl Watcher {
    /// Force a rescan (e.g. after the list of project dirs changed elsewhere).
    pub fn rescan_now(&self) {
        self.rescan.notify_one();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The directory to watch for `path`: the path itself if it is an existing directory,
/// otherwise the nearest existing ancestor directory.
fn watch_dir_for(path: &Path) -> Option<PathBuf> {
    if path.is_dir() {
        return Some(path.to_path_buf());
    }
    let mut cur = path.parent();
    while let Some(p) = cur {
        if p.is_dir() {
            return Some(p.to_path_buf());
        }
        cur = p.parent();
    }
    None
}

/// Make `watcher` watch exactly the directories needed for `snap`. Returns whether the set
/// changed.
fn rewatch(
    watcher: &mut RecommendedWatcher,
    current: &mut HashSet<PathBuf>,
    snap: &Snapshot,
) -> bool {
    let desired: HashSet<PathBuf> = snap
        .watched_paths
        .iter()
        .filter_map(|p| watch_dir_for(p))
        .collect();
    let mut changed = false;
    for gone in current.difference(&desired).cloned().collect::<Vec<_>>() {
        // The directory may already be gone; the watch is dropped either way.
        let _ = watcher.unwatch(&gone);
        current.remove(&gone);
        changed = true;
    }
    for new in desired.difference(&current.clone()) {
        match watcher.watch(new, RecursiveMode::NonRecursive) {
            Ok(()) => {
                current.insert(new.clone());
                changed = true;
            }
            Err(e) => tracing::debug!(path = %new.display(), error = %e, "cannot watch directory"),
        }
    }
    changed
}

/// Start watching. Sends the first snapshot (if it differs from the channel's current value)
/// right away, then a new one whenever a rescan produces a different result.
pub fn watch(
    env: DiscoveryEnv,
    tx: tokio_watch::Sender<Arc<Snapshot>>,
) -> Result<Watcher, DiscoveryError> {
    let handle = tokio::runtime::Handle::try_current().map_err(|_| DiscoveryError::NoRuntime)?;
    // Capacity 1: one pending "something changed" is all we need.
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let relevant = match &res {
            Ok(ev) => !matches!(ev.kind, EventKind::Access(_)),
            Err(_) => true,
        };
        if relevant {
            let _ = ev_tx.try_send(());
        }
    })?;
    let rescan = Arc::new(Notify::new());
    let rescan_task = rescan.clone();
    let task = handle.spawn(async move {
        let mut state = Some((env, watcher, HashSet::<PathBuf>::new()));
        loop {
            let Some((env, mut watcher, mut current)) = state.take() else {
                return;
            };
            let joined = tokio::task::spawn_blocking(move || {
                let mut snap = scan(&env);
                // If the watch set changed, scan again so nothing created between the first
                // scan and the new watches is missed.
                if rewatch(&mut watcher, &mut current, &snap) {
                    snap = scan(&env);
                    rewatch(&mut watcher, &mut current, &snap);
                }
                (env, watcher, current, snap)
            })
            .await;
            let Ok((env, watcher, current, snap)) = joined else {
                tracing::warn!("discovery rescan panicked; watcher stopped");
                return;
            };
            state = Some((env, watcher, current));
            tx.send_if_modified(|cur| {
                if **cur == snap {
                    false
                } else {
                    *cur = Arc::new(snap);
                    true
                }
            });
            tokio::select! {
                got = ev_rx.recv() => if got.is_none() { return },
                () = rescan_task.notified() => {}
            }
            tokio::time::sleep(DEBOUNCE).await;
            while ev_rx.try_recv().is_ok() {}
        }
    });
    Ok(Watcher { task, rescan })
}
