//! File watching for hot reload: calls back (debounced) when anything changes in the
//! directories holding the watched paths. Directories are watched rather than files, so an
//! editor's rename-over, a new or deleted file, and a Kubernetes ConfigMap's `..data`
//! symlink swap are all seen; callers decide whether a change matters (the configuration
//! compares its SHA-256).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

/// Quiet time after the last event before the callback runs: one save is several events.
pub const DEBOUNCE: Duration = Duration::from_millis(300);

/// The directories to watch for `paths`: a directory itself, a file's parent.
fn directories(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    paths
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
            }
        })
        .collect()
}

/// Watches `paths` until the returned guard is dropped; `changed` runs on a Tokio task after
/// each burst of events.
pub fn watch(
    what: &'static str,
    paths: &[PathBuf],
    changed: impl Fn() + Send + 'static,
) -> notify::Result<notify::RecommendedWatcher> {
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Access events (open, read, close-no-write) change nothing.
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.send(());
        }
    })?;
    for dir in directories(paths) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
        tracing::debug!(what, dir = %dir.display(), "watching");
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait until the directory has been quiet for a moment.
            while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
            changed();
        }
    });
    Ok(watcher)
}
