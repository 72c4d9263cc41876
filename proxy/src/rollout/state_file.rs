//! The rollout engine's state file (`server.rollout_state`), and who may write it.
//!
//! Written whole or not at all ([`crate::durable::write_atomically`]: unique temporary file,
//! fsync, rename, fsync of the folder). One process at a time runs the engine: the one that
//! holds an exclusive lock on `<state>.lock`. During a graceful upgrade both processes run
//! for a while; the new one serves the weights in the file and waits for the lock, which the
//! old one gives up when it stops its engine (or exits), then reads the file again and takes
//! over from where the old one was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

use super::RouteState;
use crate::durable::FileLock;

pub struct StateFile {
    path: PathBuf,
    lock: Mutex<Option<FileLock>>,
}

impl StateFile {
    /// The state file at `path`, leading when nobody else does.
    pub fn new(path: PathBuf) -> StateFile {
        let file = StateFile {
            path,
            lock: Mutex::new(None),
        };
        file.try_lead();
        file
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether this process runs the engine (holds the lock).
    pub fn leads(&self) -> bool {
        self.lock.lock().is_some()
    }

    /// Takes the lock if nobody holds it: true when this process leads now and did not before.
    pub fn try_lead(&self) -> bool {
        let mut held = self.lock.lock();
        if held.is_some() {
            return false;
        }
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = std::fs::create_dir_all(dir);
        }
        match FileLock::try_exclusive(&lock_path(&self.path)) {
            Ok(Some(lock)) => {
                *held = Some(lock);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(file = %self.path.display(), "the rollout engine cannot lock its state: {e}");
                false
            }
        }
    }

    /// Gives the lock up (the process stops its engine).
    pub fn resign(&self) {
        self.lock.lock().take();
    }

    /// The states in the file; `None` when there is no file. A file that cannot be read is
    /// set aside (renamed `*.unreadable`) with a warning: rollouts then start again.
    pub fn load(&self) -> Option<BTreeMap<String, RouteState>> {
        if !self.path.exists() {
            return None;
        }
        let read = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|t| {
                serde_json::from_str::<BTreeMap<String, RouteState>>(&t).map_err(|e| e.to_string())
            });
        match read {
            Ok(states) => Some(states),
            Err(e) => {
                let aside = self.path.with_extension("unreadable");
                if self.leads() {
                    let _ = std::fs::rename(&self.path, &aside);
                }
                tracing::warn!(file = %self.path.display(), moved_to = %aside.display(), "rollout state unreadable ({e}); rollouts start again");
                None
            }
        }
    }

    /// Writes the states, when this process leads.
    pub fn write(&self, routes: &BTreeMap<String, RouteState>) {
        if !self.leads() {
            return;
        }
        let text = serde_json::to_string_pretty(routes).expect("rollout state serializes");
        if let Err(e) = crate::durable::write_atomically(&self.path, text.as_bytes(), 0o644) {
            tracing::error!(file = %self.path.display(), "cannot write the rollout state: {e} (a restart would not resume it)");
        }
    }
}

fn lock_path(state: &Path) -> PathBuf {
    let mut name = state.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    state.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_leads_and_the_next_takes_over_when_it_resigns() {
        let dir = std::env::temp_dir().join(format!("rollout-lead-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let old = StateFile::new(dir.join("rollouts.json"));
        assert!(old.leads());
        // flock is per open file: a second one in this process stands for the new process.
        let new = StateFile::new(dir.join("rollouts.json"));
        assert!(!new.leads());
        assert!(!new.try_lead());
        new.write(&BTreeMap::new());
        assert!(!dir.join("rollouts.json").exists(), "only the leader writes");
        old.resign();
        assert!(new.try_lead());
        assert!(new.leads());
        new.write(&BTreeMap::new());
        assert_eq!(new.load().map(|m| m.len()), Some(0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
