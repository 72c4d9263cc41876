//! Reload triggers besides the admin API: a watch on the directories that hold the config,
//! keys and certificate files, and `SIGHUP`.
//!
//! Directories, not files: editors save by writing a temporary file and renaming it over the
//! old one, and Kubernetes updates a ConfigMap volume by swapping its `..data` symlink; a
//! watch on the file itself would follow the old inode and miss both. Events are debounced
//! (a burst of writes becomes one reload) and the reload itself compares content hashes, so a
//! touch or an unrelated file in the same directory changes nothing.
//!
//! inotify itself, not the `notify` crate: its watcher asks the kernel for every write and
//! every open in the directory, and that cannot be turned off. A SQLite store beside the
//! config (as in loadtests/bench_shadow.sh) then woke the watcher's thread, on the client
//! path's core, for each of its writes (1,551 times in a 6 s mirrored turn, each ignored by
//! name), and a profile written there made it run 50 ms in 3 s (docs/performance.md). Here
//! the kernel reports only the ends of changes ([`MASK`]): a file written in place is seen
//! when it is closed, whole.

// Off Linux only `start` and the signals are left.
#![cfg_attr(not(target_os = "linux"), allow(dead_code))]

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{Outcome, Reloader, Trigger};

/// A reload starts once the files have been quiet this long...
const QUIET: Duration = Duration::from_millis(100);
/// ...or this long after the first event of a burst that does not stop.
const MAX_WAIT: Duration = Duration::from_millis(1000);

/// Watches until dropped.
pub struct FileWatch {
    /// Closed on drop: the watcher's thread sees its end hang up and returns.
    stop: Option<UnixStream>,
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

fn names_of(files: &[PathBuf]) -> BTreeSet<OsString> {
    files
        .iter()
        .filter_map(|f| f.file_name().map(OsString::from))
        .collect()
}

/// Starts watching the reloader's files; each settled burst of changes runs one reload.
#[cfg(target_os = "linux")]
pub fn start(reloader: Arc<Reloader>) -> Result<FileWatch, String> {
    let (stop, stopped) = UnixStream::pair().map_err(|e| format!("cannot start the config watcher: {e}"))?;
    let mut dirs = Dirs::new(stopped).map_err(|e| format!("cannot watch config files: {e}"))?;
    let mut watched = BTreeSet::new();
    let files = reloader.watched_files();
    if let Some((dir, e)) = dirs.follow(&files, &mut watched).into_iter().next() {
        return Err(format!("cannot watch {}: {e}", dir.display()));
    }
    tracing::info!(
        dirs = %watched.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
        "watching config, keys and certificate files for changes"
    );
    let mut names = names_of(&files);
    let thread = std::thread::Builder::new()
        .name("config-watch".into())
        .spawn(move || {
            'watch: loop {
                match dirs.wait(&names, None) {
                    Wait::Stop => break,
                    Wait::Quiet => continue,
                    Wait::Changed => {}
                }
                let first = Instant::now();
                loop {
                    match dirs.wait(&names, Some(QUIET)) {
                        Wait::Stop => break 'watch,
                        Wait::Changed if first.elapsed() < MAX_WAIT => {}
                        Wait::Changed | Wait::Quiet => break,
                    }
                }
                // The keys first, on their own: a revocation never waits for another file.
                reloader.reload_keys(Trigger::File);
                if let Outcome::Applied(_) = reloader.reload(Trigger::File) {
                    // A reload may name files elsewhere (a new keys file): follow them too.
                    let files = reloader.watched_files();
                    names = names_of(&files);
                    for (dir, e) in dirs.follow(&files, &mut watched) {
                        tracing::warn!("cannot watch {}: {e}", dir.display());
                    }
                }
            }
            tracing::debug!(events = dirs.events, "config watcher stopped");
        })
        .map_err(|e| format!("cannot start the config watcher: {e}"))?;
    Ok(FileWatch {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// Without inotify, no watch: the other two triggers remain.
#[cfg(not(target_os = "linux"))]
pub fn start(_reloader: Arc<Reloader>) -> Result<FileWatch, String> {
    tracing::warn!(
        "watching files needs Linux's inotify: reload with SIGHUP or POST /admin/reload \
         (server.watch: false silences this)"
    );
    Ok(FileWatch {
        stop: None,
        thread: None,
    })
}

/// What the kernel reports from a watched directory: a file written and closed, renamed in or
/// out, created or deleted. Not writes as they happen, opens or attribute changes (a touch).
#[cfg(target_os = "linux")]
const MASK: inotify::WatchMask = inotify::WatchMask::CLOSE_WRITE
    .union(inotify::WatchMask::MOVED_TO)
    .union(inotify::WatchMask::MOVED_FROM)
    .union(inotify::WatchMask::CREATE)
    .union(inotify::WatchMask::DELETE);

/// How a wait for the watched files ended.
#[derive(Debug, PartialEq, Eq)]
enum Wait {
    /// One of the files changed (or the kernel dropped events, which might have been ours).
    Changed,
    /// Nothing of ours within the time allowed.
    Quiet,
    /// The watch was dropped.
    Stop,
}

/// The watched directories' events, read on the watcher's own thread.
#[cfg(target_os = "linux")]
struct Dirs {
    inotify: inotify::Inotify,
    /// The other end of [`FileWatch::stop`].
    stopped: UnixStream,
    buffer: Vec<u8>,
    /// Events read, ours or not.
    events: u64,
}

#[cfg(target_os = "linux")]
impl Dirs {
    fn new(stopped: UnixStream) -> std::io::Result<Dirs> {
        Ok(Dirs {
            inotify: inotify::Inotify::init()?,
            stopped,
            buffer: vec![0; 4096],
            events: 0,
        })
    }

    /// Watches the directories of `files` not in `watched` yet; gives back those it could not
    /// watch, with why (at start, the first fails the watcher; after a reload, each is a
    /// warning). A directory is tried once: `watched` keeps it either way.
    fn follow(
        &mut self,
        files: &[PathBuf],
        watched: &mut BTreeSet<PathBuf>,
    ) -> Vec<(PathBuf, std::io::Error)> {
        let mut failed = Vec::new();
        for dir in files.iter().map(|f| dir_of(f)) {
            if watched.insert(dir.clone())
                && let Err(e) = self.inotify.watches().add(&dir, MASK)
            {
                failed.push((dir, e));
            }
        }
        failed
    }

    /// Waits, at most `limit` (None: for ever), for a change to a file of these `names` or to
    /// a Kubernetes volume's `..data` and friends; other files' events are read and ignored.
    fn wait(&mut self, names: &BTreeSet<OsString>, limit: Option<Duration>) -> Wait {
        use std::os::fd::AsRawFd;
        let deadline = limit.map(|l| Instant::now() + l);
        loop {
            let timeout = match deadline {
                None => -1,
                Some(d) => d
                    .saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32,
            };
            let mut fds = [self.inotify.as_raw_fd(), self.stopped.as_raw_fd()].map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
            // SAFETY: two valid pollfd entries, owned here for the call's length.
            let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if ready < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("the config watcher stopped: {e}");
                return Wait::Stop;
            }
            if fds[1].revents != 0 {
                return Wait::Stop;
            }
            if ready == 0 {
                return Wait::Quiet;
            }
            let events = match self.inotify.read_events(&mut self.buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => {
                    tracing::error!("the config watcher stopped: {e}");
                    return Wait::Stop;
                }
            };
            let mut ours = false;
            for event in events {
                self.events += 1;
                ours |= event.mask.contains(inotify::EventMask::Q_OVERFLOW)
                    || event.name.is_some_and(|n| {
                        // `..data` and friends: a Kubernetes ConfigMap or Secret volume being swapped.
                        names.contains(n) || n.as_encoded_bytes().starts_with(b"..")
                    });
            }
            if ours {
                return Wait::Changed;
            }
        }
    }
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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// A store written beside the config wakes no one until it closes, and then is not ours;
    /// renames, writes in place and ConfigMap swaps of our files are; dropping the watch
    /// stops the wait.
    #[test]
    fn only_finished_changes_wake_the_watcher_and_only_ours_count() {
        let dir = std::env::temp_dir().join(format!("gw-watch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("routes.yaml"), "a").unwrap();
        let mut store = std::fs::File::create(dir.join("shadows.sqlite3")).unwrap();
        let (stop, stopped) = UnixStream::pair().unwrap();
        let mut dirs = Dirs::new(stopped).unwrap();
        let files = [dir.join("routes.yaml")];
        assert!(dirs.follow(&files, &mut BTreeSet::new()).is_empty());
        let names = names_of(&files);
        let short = Some(Duration::from_millis(50));

        // Written as SQLite writes its store and WAL: the file stays open.
        for _ in 0..500 {
            std::io::Write::write_all(&mut store, &[0; 512]).unwrap();
            store.sync_data().unwrap();
        }
        std::fs::read(dir.join("routes.yaml")).unwrap(); // a read (an open) of ours
        assert_eq!(dirs.wait(&names, short), Wait::Quiet);
        assert_eq!(dirs.events, 0, "the kernel reported writes in progress or opens");
        drop(store);
        assert_eq!(dirs.wait(&names, short), Wait::Quiet);
        assert_eq!(dirs.events, 1, "the store's close, not ours");

        // An editor's save: a temporary file renamed over ours.
        std::fs::write(dir.join("routes.yaml.tmp"), "b").unwrap();
        std::fs::rename(dir.join("routes.yaml.tmp"), dir.join("routes.yaml")).unwrap();
        assert_eq!(dirs.wait(&names, short), Wait::Changed);
        assert_eq!(dirs.wait(&names, short), Wait::Quiet);
        // Written in place: seen once closed.
        std::fs::write(dir.join("routes.yaml"), "c").unwrap();
        assert_eq!(dirs.wait(&names, short), Wait::Changed);
        assert_eq!(dirs.wait(&names, short), Wait::Quiet);
        // A Kubernetes volume's swap: a new `..data` symlink renamed over the old one.
        std::os::unix::fs::symlink(".", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(dirs.wait(&names, short), Wait::Changed);

        drop(stop);
        assert_eq!(dirs.wait(&names, None), Wait::Stop);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Each directory is watched once, whatever number of files it holds or reloads name it;
    /// one that cannot be watched is given back with why, and not tried again.
    #[test]
    fn follow_watches_each_directory_once_and_gives_back_the_ones_it_cannot() {
        let dir = std::env::temp_dir().join(format!("gw-follow-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (_stop, stopped) = UnixStream::pair().unwrap();
        let mut dirs = Dirs::new(stopped).unwrap();
        let mut watched = BTreeSet::new();
        let files = [
            dir.join("routes.yaml"),
            dir.join("api-keys.yaml"),
            dir.join("gone").join("api-keys.yaml"),
        ];
        let failed = dirs.follow(&files, &mut watched);
        assert_eq!(failed.len(), 1, "only the missing directory fails: {failed:?}");
        assert_eq!(failed[0].0, dir.join("gone"));
        assert_eq!(failed[0].1.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(watched, BTreeSet::from([dir.clone(), dir.join("gone")]));
        // A reload naming the same files adds no watch and reports nothing again.
        assert!(dirs.follow(&files, &mut watched).is_empty());
        std::fs::write(dir.join("routes.yaml"), "a").unwrap();
        let names = names_of(&files);
        assert_eq!(dirs.wait(&names, Some(Duration::from_millis(50))), Wait::Changed);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
