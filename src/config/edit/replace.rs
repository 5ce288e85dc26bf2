//! How an edit reaches the disk: an exclusive advisory lock on the file for the length of the
//! edit, a temporary copy that is private from its first byte, and an atomic rename.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::EditError;

/// How long an edit waits for another one to finish with the file.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Replaces `path` with `text` by renaming a synced temporary file over it, so a reader (the
/// gateway's reload) sees the old file or the new one, never half of one. Refuses if the file
/// changed since it was read, instead of silently undoing someone else's edit.
pub(super) fn write_atomically(path: &Path, expected: &str, text: &str) -> Result<(), EditError> {
    let write_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            EditError::ReadOnly(path.to_path_buf())
        }
        _ => EditError::Write {
            path: path.to_path_buf(),
            source,
        },
    };
    if is_read_only(path) {
        return Err(EditError::ReadOnly(path.to_path_buf()));
    }
    // A symlinked config (Kubernetes ..data swaps, /etc/apiward -> ...) is edited where it lives,
    // leaving the link in place.
    let target = fs::canonicalize(path).map_err(write_error)?;
    let current = fs::read_to_string(&target).map_err(write_error)?;
    if current != expected {
        return Err(EditError::ChangedMeanwhile(path.to_path_buf()));
    }
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = target.file_name().map_or_else(
        || "apiward.toml".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let suffix =
        crate::keys::generate_password(8).map_err(|e| write_error(std::io::Error::other(e)))?;
    // One leading dot (never two: the gateway's watcher treats `..name` as a Kubernetes swap).
    let temp = dir.join(format!(".{name}.{suffix}.tmp"));
    let result = (|| {
        let metadata = fs::metadata(&target)?;
        let mut file = create_like(&temp, &metadata)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &target)?;
        // The rename itself is durable only once the directory is synced.
        if let Ok(d) = fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result.map_err(write_error)
}

/// Creates `temp` for a copy of a file with `original`'s metadata. The file may hold password
/// hashes: it is created with the original's mode (less the umask, so never more open than the
/// original) and gets exactly that mode and, where we may, the owner, before a byte is written.
fn create_like(temp: &Path, original: &fs::Metadata) -> std::io::Result<fs::File> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let mode = original.permissions().mode() & 0o7777;
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(temp)?;
    // Changing the owner may clear set-id bits, so the exact mode is set after it.
    let _ = std::os::unix::fs::fchown(&file, Some(original.uid()), Some(original.gid()));
    file.set_permissions(fs::Permissions::from_mode(mode))?;
    Ok(file)
}

/// An exclusive advisory lock (`flock`) on the configuration file, for the length of one edit.
/// The file is replaced by a rename when saved, so a waiter that gets the lock checks that it
/// holds the file now at the path and otherwise locks the new one.
pub(super) struct EditLock {
    _file: fs::File,
}

impl EditLock {
    pub(super) fn acquire(path: &Path) -> Result<EditLock, EditError> {
        use rustix::fs::{FlockOperation, flock};
        use std::os::unix::fs::MetadataExt as _;
        let read_error = |source| EditError::Read {
            path: path.to_path_buf(),
            source,
        };
        let started = Instant::now();
        let mut said_waiting = false;
        loop {
            let file = fs::File::open(path).map_err(read_error)?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    let held = file.metadata().map_err(read_error)?;
                    let now = fs::metadata(path).map_err(read_error)?;
                    if (held.dev(), held.ino()) == (now.dev(), now.ino()) {
                        return Ok(EditLock { _file: file });
                    }
                    // Another edit renamed a new file over this one while we waited.
                }
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                    if started.elapsed() >= LOCK_WAIT {
                        return Err(EditError::Locked {
                            path: path.to_path_buf(),
                            waited: LOCK_WAIT,
                        });
                    }
                    if !said_waiting && started.elapsed() >= Duration::from_secs(1) {
                        eprintln!(
                            "waiting for another edit of {} to finish...",
                            path.display()
                        );
                        said_waiting = true;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                // A file system without locks (some network mounts): edit without one; the
                // check that the file did not change meanwhile still refuses a lost edit.
                Err(rustix::io::Errno::NOLCK | rustix::io::Errno::OPNOTSUPP) => {
                    return Ok(EditLock { _file: file });
                }
                Err(e) => return Err(read_error(e.into())),
            }
        }
    }
}

/// Whether the file cannot be written: no write permission bit at all (how ConfigMap files and
/// deliberately locked files look), or a read-only file system.
pub fn is_read_only(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().readonly())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn the_copy_has_the_original_mode_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        for original_mode in [0o600, 0o640, 0o400] {
            let original = dir.path().join(format!("apiward-{original_mode:o}.toml"));
            fs::write(&original, "x").unwrap();
            fs::set_permissions(&original, fs::Permissions::from_mode(original_mode)).unwrap();
            let temp = dir.path().join(format!(".copy-{original_mode:o}.tmp"));
            let file = create_like(&temp, &fs::metadata(&original).unwrap()).unwrap();
            assert_eq!(file.metadata().unwrap().len(), 0, "nothing written yet");
            assert_eq!(mode(&temp), original_mode, "{original_mode:o}");
        }
    }

    #[test]
    fn a_second_edit_waits_for_the_first_and_then_locks_the_file_it_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("apiward.toml");
        fs::write(&path, "first = 1\n").unwrap();
        let first = EditLock::acquire(&path).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = {
            let path = path.clone();
            std::thread::spawn(move || {
                let lock = EditLock::acquire(&path).unwrap();
                tx.send(fs::read_to_string(&path).unwrap()).unwrap();
                drop(lock);
            })
        };
        assert!(
            rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the second edit must wait while the first holds the lock"
        );
        write_atomically(&path, "first = 1\n", "second = 2\n").unwrap();
        drop(first);
        assert_eq!(rx.recv().unwrap(), "second = 2\n");
        waiter.join().unwrap();
    }
}
