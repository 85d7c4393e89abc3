//! Who writes a download directory (SPEC §10, warm standbys). The leader claims the directory:
//! it holds an exclusive `flock` on `<root>/.writer` for as long as it runs and writes its
//! replica name into that file. A standby pulls modules into its own directory only when the
//! directory is its own: no other replica's name in `.writer` (a volume another replica led on)
//! and no process holding the lock (a leader on this volume right now). Where replicas share one
//! volume (a hostPath or a ReadWriteMany claim), the standby so never writes to it.

use std::{
    fs::{self, File, TryLockError},
    io::Write,
    path::Path,
};

use super::ModuleStore;

/// The marker and lock file at the store root.
pub const WRITER_FILE: &str = ".writer";

/// Held by the replica that writes the directory; dropping it releases the lock.
#[derive(Debug)]
pub struct WriterClaim {
    /// Open read-only (a file open for writing would keep the filesystem from being remounted
    /// read-only) and locked when `exclusive`.
    _file: Option<File>,
    /// False when another process held the lock (two writers on one volume) or there is no
    /// lock file (a directory that cannot be written).
    pub exclusive: bool,
}

/// Whether a standby may write the directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Nobody else writes here.
    Private,
    /// `.writer` names another replica: the volume is (or was) another replica's too.
    NamedFor(String),
    /// A running process holds the lock: a leader on this very volume.
    Locked,
}

impl ModuleStore {
    /// The leader's claim: `replica` in the marker, then the lock, taken without waiting (a
    /// stopped old leader on a shared volume would hold it for ever, and the lease already
    /// decides who writes). Never fails: a directory that cannot be written (full, read-only)
    /// must not keep the leader from starting, its passes say what is wrong; what could not be
    /// done is logged.
    pub fn claim_for_writing(&self, replica: &str) -> WriterClaim {
        let path = self.root.join(WRITER_FILE);
        if marker_of(&self.root).as_deref() != Some(replica) {
            // In place, not by rename: the lock belongs to the file, and a standby reading a
            // half-written name takes it for another replica's, which errs on the safe side.
            let written = fs::create_dir_all(&self.root).and_then(|()| {
                let mut file = File::create(&path)?;
                file.write_all(replica.as_bytes())
            });
            if let Err(err) = written {
                tracing::warn!(path = %path.display(), "cannot write the writer's name: {err}");
            }
        }
        let file = match File::open(&path) {
            Ok(file) => file,
            Err(err) => {
                tracing::warn!(path = %path.display(), "cannot open the writer's lock: {err}");
                return WriterClaim {
                    _file: None,
                    exclusive: false,
                };
            }
        };
        let exclusive = match file.try_lock() {
            Ok(()) => true,
            Err(TryLockError::WouldBlock) => false,
            Err(TryLockError::Error(err)) => {
                tracing::warn!(path = %path.display(), "cannot lock the writer's file: {err}");
                false
            }
        };
        WriterClaim {
            _file: Some(file),
            exclusive,
        }
    }

    /// Whether a standby named `replica` may write here. Reads only: a missing marker is a
    /// directory nobody led on yet.
    pub fn sharing(&self, replica: &str) -> Sharing {
        let named = marker_of(&self.root);
        if let Some(other) = named.filter(|named| !named.is_empty() && named != replica) {
            return Sharing::NamedFor(other);
        }
        let Ok(file) = File::open(self.root.join(WRITER_FILE)) else {
            return Sharing::Private;
        };
        match file.try_lock() {
            // Released when `file` drops at the end of this call.
            Ok(()) => Sharing::Private,
            Err(TryLockError::WouldBlock) => Sharing::Locked,
            // A filesystem without locks: the marker alone decides.
            Err(TryLockError::Error(_)) => Sharing::Private,
        }
    }
}

fn marker_of(root: &Path) -> Option<String> {
    fs::read_to_string(root.join(WRITER_FILE))
        .ok()
        .map(|s| s.trim().to_owned())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::Limits;

    fn store(dir: &Path) -> ModuleStore {
        ModuleStore::new(dir.join("downloaded"), Limits::default())
    }

    #[test]
    fn a_directory_nobody_led_on_is_private_and_the_check_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        assert_eq!(store.sharing("b"), Sharing::Private);
        assert!(!store.root().exists(), "the check created nothing");
    }

    #[test]
    fn a_running_leader_on_the_same_directory_is_seen_by_its_lock() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let claim = store.claim_for_writing("a");
        assert!(claim.exclusive);
        // The same name (two processes of one host without --identity): the lock still tells.
        assert_eq!(store.sharing("a"), Sharing::Locked);
        drop(claim);
        assert_eq!(store.sharing("a"), Sharing::Private);
    }

    #[test]
    fn a_directory_another_replica_led_on_stays_its_own_after_that_leader_exits() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        drop(store.claim_for_writing("a"));
        assert_eq!(store.sharing("b"), Sharing::NamedFor("a".into()));
        // The replica's own earlier leadership (a restarted container) is no sharing.
        assert_eq!(store.sharing("a"), Sharing::Private);
    }

    #[test]
    fn a_claim_keeps_nothing_open_for_writing_and_survives_a_read_only_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let claim = store.claim_for_writing("a");
        // /proc/self/fdinfo: flags of every open descriptor of the lock file are read-only.
        let writer = std::fs::canonicalize(store.root().join(WRITER_FILE)).unwrap();
        for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
            if std::fs::read_link(entry.path()).ok().as_deref() == Some(writer.as_path()) {
                let info = std::fs::read_to_string(format!(
                    "/proc/self/fdinfo/{}",
                    entry.file_name().to_string_lossy()
                ))
                .unwrap();
                let flags = info.lines().find_map(|l| l.strip_prefix("flags:")).unwrap();
                let flags = u32::from_str_radix(flags.trim(), 8).unwrap();
                assert_eq!(flags & 0o3, 0, "O_RDONLY: {info}");
            }
        }
        drop(claim);
        let missing = ModuleStore::new("/proc/no-such-dir/downloaded", Limits::default());
        assert!(!missing.claim_for_writing("a").exclusive);
    }

    #[test]
    fn a_second_claim_is_not_exclusive_and_renames_the_writer() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(dir.path());
        let first = store.claim_for_writing("a");
        let second = store.claim_for_writing("b");
        assert!(first.exclusive && !second.exclusive);
        assert_eq!(marker_of(store.root()).as_deref(), Some("b"));
    }
}
