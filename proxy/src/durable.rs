//! Files the gateway writes that must survive a crash whole, and the locks that keep two
//! writers apart: the keys file (`gateway keys`)
//! and the rollout state. A crash, or a power cut, leaves the old contents or the new, never
//! a mix and never an empty file.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temporary file of a unique name in the same folder
/// (two writers never share one), created with `mode`, written and flushed to disk (fsync),
/// renamed over `path`, then the folder flushed so that the rename itself is on disk.
pub fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}.{:016x}.tmp",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, mode);
        let mut f = options.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

/// An exclusive `flock` on a file, released when dropped (or when the process ends).
pub struct FileLock {
    _file: std::fs::File,
}

impl FileLock {
    /// Waits for the lock.
    pub fn exclusive(path: &Path) -> Result<FileLock, String> {
        let f = Self::open(path)?;
        // SAFETY: flock on a file descriptor this function owns.
        if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "cannot lock {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(FileLock { _file: f })
    }

    /// The lock if nobody holds it now, else `None`.
    pub fn try_exclusive(path: &Path) -> Result<Option<FileLock>, String> {
        let f = Self::open(path)?;
        // SAFETY: flock on a file descriptor this function owns.
        let got = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) };
        if got == 0 {
            return Ok(Some(FileLock { _file: f }));
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            Ok(None)
        } else {
            Err(format!("cannot lock {}: {e}", path.display()))
        }
    }

    fn open(path: &Path) -> Result<std::fs::File, String> {
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn writes_whole_files_with_their_mode() {
        let dir = std::env::temp_dir().join(format!("durable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("state.json");
        super::write_atomically(&file, b"one", 0o600).unwrap();
        super::write_atomically(&file, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"two");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "no temporary file left: {names:?}");
        // A folder that does not exist is an error that names the file.
        let err = super::write_atomically(&dir.join("no/such/x"), b"", 0o600).unwrap_err();
        assert!(err.contains("no/such/x"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
