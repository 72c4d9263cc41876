//! Reload triggers besides the admin API: a `notify` watcher on the directories that hold the
//! config, keys and certificate files, and `SIGHUP`.
//!
//! Directories, not files: editors save by writing a temporary file and renaming it over the
//! old one, and Kubernetes updates a ConfigMap volume by swapping its `..data` symlink; a
//! watch on the file itself would follow the old inode and miss both. Events are debounced
//! (a burst of writes becomes one reload) and the reload itself compares content hashes, so a
//! touch or an unrelated file in the same directory changes nothing.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Outcome, Reloader, Trigger};

/// A reload starts once the files have been quiet this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...or this long after the first event of a burst that does not stop.
const MAX_WAIT: Duration = Duration::from_millis(1000);

/// Watches until dropped.
pub struct FileWatch {
    stop: Option<crossbeam_channel::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for FileWatch {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Starts watching the reloader's files; each settled burst of changes runs one reload.
pub fn start(reloader: Arc<Reloader>) -> Result<FileWatch, String> {
    let (events, rx) = crossbeam_channel::unbounded::<()>();
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    let names = move |files: &[PathBuf]| -> BTreeSet<OsString> {
        files
            .iter()
            .filter_map(|f| f.file_name().map(OsString::from))
            .collect()
    };
    let interesting = Arc::new(parking_lot::RwLock::new(names(&reloader.watched_files())));
    let filter = interesting.clone();
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let writes = match event.kind {
            EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) => true,
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            // Reads (ours included) and anything else change nothing.
            _ => false,
        };
        let names = filter.read();
        let ours = event.paths.iter().any(|p| {
            p.file_name().is_some_and(|n| {
                // `..data` and friends: a Kubernetes ConfigMap or Secret volume being swapped.
                names.contains(n) || n.to_string_lossy().starts_with("..")
            })
        });
        if writes && ours {
            let _ = events.send(());
        }
    })
    .map_err(|e| format!("cannot watch config files: {e}"))?;
    let mut dirs = BTreeSet::new();
    for file in reloader.watched_files() {
        let dir = dir_of(&file);
        if dirs.insert(dir.clone()) {
            watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
        }
    }
    tracing::info!(
        dirs = %dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        "watching config, keys and certificate files for changes"
    );
    let thread = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            loop {
                crossbeam_channel::select! {
                    recv(stopped) -> _ => return,
                    recv(rx) -> msg => if msg.is_err() { return },
                }
                let first = Instant::now();
                loop {
                    match rx.recv_timeout(QUIET) {
                        Ok(()) if first.elapsed() < MAX_WAIT => {}
                        Ok(()) | Err(crossbeam_channel::RecvTimeoutError::Timeout) => break,
                        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
                    }
                }
                // The keys first, on their own: a revocation never waits for another file.
                reloader.reload_keys(Trigger::File);
                if let Outcome::Applied(_) = reloader.reload(Trigger::File) {
                    // A reload may name files elsewhere (a new keys file): follow them too.
                    let files = reloader.watched_files();
                    *interesting.write() = names(&files);
                    for file in files {
                        let dir = dir_of(&file);
                        if dirs.insert(dir.clone())
                            && let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive)
                        {
                            tracing::warn!("cannot watch {}: {e}", dir.display());
                        }
                    }
                }
            }
        })
        .map_err(|e| format!("cannot start the config watcher: {e}"))?;
    Ok(FileWatch {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// A Unix signal caught from the moment [`SignalPipe::catch`] returns (its handler writes a
/// byte to a socket pair), waited for on any runtime. tokio's own signal streams register
/// when first polled, inside services that start alongside the listeners, so a signal sent
/// as soon as the gateway answers could still meet the default action, which for SIGHUP and
/// SIGTERM ends the process.
pub struct SignalPipe {
    id: signal_hook::SigId,
    read: std::os::unix::net::UnixStream,
}

impl SignalPipe {
    pub fn catch(signal: libc::c_int) -> std::io::Result<Self> {
        let (read, write) = std::os::unix::net::UnixStream::pair()?;
        read.set_nonblocking(true)?;
        let id = signal_hook::low_level::pipe::register(signal, write)?;
        Ok(SignalPipe { id, read })
    }

    /// Resolves once the signal has arrived since the last wait (at least once: several
    /// arrivals in between count as one).
    pub async fn wait(&self) {
        let read = self.read.try_clone().and_then(tokio::net::UnixStream::from_std);
        let Ok(read) = read else {
            return std::future::pending().await;
        };
        loop {
            if read.readable().await.is_err() {
                return std::future::pending().await;
            }
            let mut arrived = false;
            let mut buf = [0u8; 64];
            loop {
                match read.try_read(&mut buf) {
                    Ok(0) => return std::future::pending().await, // the handler's end closed
                    Ok(_) => arrived = true,
                    Err(_) => break, // WouldBlock: drained (or a spurious wake-up)
                }
            }
            if arrived {
                return;
            }
        }
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        signal_hook::low_level::unregister(self.id);
    }
}

/// Reloads on `SIGHUP`, the signal operators and process managers send for it.
pub struct HangupReload {
    reloader: Arc<Reloader>,
    hangups: SignalPipe,
}

impl HangupReload {
    pub fn new(reloader: Arc<Reloader>, hangups: SignalPipe) -> Self {
        HangupReload { reloader, hangups }
    }
}

#[async_trait]
impl BackgroundService for HangupReload {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = self.hangups.wait() => {}
            }
            tracing::info!("SIGHUP: reloading {}", self.reloader.path().display());
            let reloader = self.reloader.clone();
            let _ = tokio::task::spawn_blocking(move || {
                reloader.reload_keys(Trigger::Signal);
                reloader.reload(Trigger::Signal)
            })
            .await;
        }
    }
}
