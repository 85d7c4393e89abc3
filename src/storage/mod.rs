//! Safe streaming unpack of module images and their atomic switch-in on disk (SPEC §6, §7).
//!
//! Layout under the store root:
//! ```text
//! <root>/<module>/versions/<hex>/          an unpacked module, never modified once switched in
//! <root>/<module>/dev -> versions/<hex>    the current version, replaced atomically with rename
//! <root>/<module>/.staging-<hex>-<random>  a download in progress (removed at startup)
//! <root>/modules/<weight>-<module> -> ../<module>/dev
//! <root>/.writer                          the writing replica's name, locked while it runs
//! ```
//! A download goes [`ModuleStore::stage`] → [`Staging::apply_layer`] (per layer, in order) →
//! [`Staging::validate`] → [`Staging::commit`]. Dropping a [`Staging`] before `commit` removes
//! it, so a failure anywhere leaves the active version untouched.
//!
//! Nothing here knows about Kubernetes; every call is blocking and meant for `spawn_blocking`.

mod error;
mod kept;
mod layout;
mod sweep;
mod tree;
mod unpack;
mod validate;
mod writer;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testkit;

#[cfg(test)]
mod proptests;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use crate::digest::Digest;

pub use error::{FailureClass, LimitKind, StorageError};
pub use kept::DEFAULT_KEPT_VERSIONS;
pub use writer::{Sharing, WRITER_FILE, WriterClaim};

/// Caps on what one image may unpack to (SPEC §6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Sum of the data sizes of all entries, across layers.
    pub max_unpacked_bytes: u64,
    /// Number of tar entries, across layers.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_unpacked_bytes: 2 * 1024 * 1024 * 1024,
            max_entries: 100_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    /// `tar+zstd` layers, as `buildx --output compression=zstd` and `podman push
    /// --compression-format zstd` write them.
    Zstd,
    None,
}

/// What validation learned from the module's own files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    /// From `module.yaml`, default [`ModuleInfo::DEFAULT_WEIGHT`].
    pub weight: u32,
}

impl ModuleInfo {
    pub const DEFAULT_WEIGHT: u32 = 900;
}

impl Default for ModuleInfo {
    fn default() -> Self {
        Self {
            weight: Self::DEFAULT_WEIGHT,
        }
    }
}

/// A version that is now active.
#[derive(Clone, Debug)]
pub struct Installed {
    pub digest: Digest,
    /// `<root>/<module>/versions/<hex>`.
    pub path: PathBuf,
    /// Regular files and hard links written, across layers.
    pub files: u64,
    /// Bytes of file data written, across layers.
    pub bytes: u64,
}

/// What one layer added.
#[derive(Clone, Debug, Default)]
pub struct LayerStats {
    pub files: u64,
    pub bytes: u64,
}

/// The download directory.
#[derive(Clone, Debug)]
pub struct ModuleStore {
    root: PathBuf,
    limits: Limits,
    gate: CommitGate,
    /// Versions kept per module (the active one always among them).
    kept_versions: usize,
}

/// Asked right before a commit renames a tree into `versions/` and before it swaps `dev`: a
/// commit runs on a blocking thread that cannot be cancelled, so whoever may lose the right to
/// write (a leader that lost its lease) says so here, and the commit stops short of the switch.
#[derive(Clone, Default)]
pub struct CommitGate(Option<std::sync::Arc<dyn Fn() -> bool + Send + Sync>>);

impl CommitGate {
    pub fn new(open: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        Self(Some(std::sync::Arc::new(open)))
    }

    fn is_open(&self) -> bool {
        self.0.as_ref().is_none_or(|open| open())
    }
}

impl std::fmt::Debug for CommitGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "CommitGate(set)"
        } else {
            "CommitGate(none)"
        })
    }
}

impl ModuleStore {
    pub fn new(root: impl Into<PathBuf>, limits: Limits) -> Self {
        Self {
            root: root.into(),
            limits,
            gate: CommitGate::default(),
            kept_versions: DEFAULT_KEPT_VERSIONS,
        }
    }

    /// The same store keeping the last `count` versions of each module (at least the active).
    pub fn with_kept_versions(mut self, count: usize) -> Self {
        self.kept_versions = count.max(1);
        self
    }

    /// The same store, its commits asking `gate` before they switch anything in.
    pub fn with_commit_gate(mut self, gate: CommitGate) -> Self {
        self.gate = gate;
        self
    }

    /// Whether a commit may go on; [`StorageError::Cancelled`] otherwise.
    pub(crate) fn may_commit(&self) -> Result<(), StorageError> {
        if self.gate.is_open() {
            Ok(())
        } else {
            Err(StorageError::Cancelled)
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when `<root>/<module>/versions/<hex>` is a directory and `dev` points at it.
    pub fn is_active(&self, module: &str, digest: &Digest) -> bool {
        self.active(module).as_ref() == Some(digest)
            && self
                .version_dir(module, digest)
                .symlink_metadata()
                .is_ok_and(|meta| meta.is_dir())
    }

    /// The weight in the module loader's link `modules/<weight>-<module>` of an active module:
    /// what the last commit validated, without reading the module again.
    pub fn active_weight(&self, module: &str) -> Option<u32> {
        check_module_name(module).ok()?;
        let links = std::fs::read_dir(self.root.join(MODULES)).ok()?;
        links.flatten().find_map(|entry| {
            let name = entry.file_name();
            let (weight, linked) = name.to_str()?.split_once('-')?;
            (linked == module).then(|| weight.parse().ok()).flatten()
        })
    }

    /// The digest `dev` points at, if any (whether or not that directory exists).
    pub fn active(&self, module: &str) -> Option<Digest> {
        check_module_name(module).ok()?;
        layout::dev_target(&self.module_dir(module))
    }

    /// Creates an empty `<root>/<module>/.staging-<hex>-<random>` next to `versions/`, so that the
    /// final rename stays on one filesystem.
    pub fn stage(&self, module: &str, digest: &Digest) -> Result<Staging, StorageError> {
        check_module_name(module)?;
        let module_dir = self.module_dir(module);
        std::fs::create_dir_all(&module_dir).map_err(StorageError::write(&module_dir))?;
        let path = module_dir.join(format!(
            "{}{}-{}",
            STAGING_PREFIX,
            digest.hex(),
            random_suffix()
        ));
        std::fs::create_dir(&path).map_err(StorageError::write(&path))?;
        // Opened before anything is written: `syncfs` on it at commit then reports any
        // writeback error of the filesystem since this moment (Linux ≥ 5.8), which is what the
        // per-file fsyncs it replaces would have reported.
        let filesystem = std::fs::File::open(&path).map_err(StorageError::write(&path))?;
        tracing::debug!(module, %digest, path = %path.display(), "staging created");
        Ok(Staging {
            store: self.clone(),
            module: module.to_owned(),
            digest: digest.clone(),
            path,
            entries: 0,
            unpacked_bytes: 0,
            files: 0,
            file_bytes: 0,
            modes: BTreeMap::new(),
            filesystem,
            committed: false,
        })
    }

    fn module_dir(&self, module: &str) -> PathBuf {
        self.root.join(module)
    }

    fn version_dir(&self, module: &str, digest: &Digest) -> PathBuf {
        self.module_dir(module).join(VERSIONS).join(digest.hex())
    }
}

/// Every entry under `root` (relative path, type), parents before children, without following
/// a symlink: for tools that list or compare unpacked trees.
pub fn list_tree(root: &Path) -> Result<Vec<(PathBuf, std::fs::FileType)>, StorageError> {
    tree::walk(root)
}

/// A module being unpacked. Dropping it without [`Staging::commit`] removes the directory.
#[derive(Debug)]
pub struct Staging {
    store: ModuleStore,
    module: String,
    digest: Digest,
    path: PathBuf,
    /// Running totals across layers, for the limits and for [`Installed`].
    entries: u64,
    unpacked_bytes: u64,
    files: u64,
    file_bytes: u64,
    /// Final permission bits by relative path. They are applied at commit: applied earlier, a
    /// read-only directory from one layer would stop the next layer from writing into it.
    modes: BTreeMap<PathBuf, u32>,
    /// The staging directory, open since it was created: the handle for the one `syncfs`.
    filesystem: std::fs::File,
    committed: bool,
}

impl Staging {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Regular files and hard links, and bytes of file data, written so far across layers.
    pub fn totals(&self) -> (u64, u64) {
        (self.files, self.file_bytes)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        if let Err(err) = tree::remove_tree(&self.path) {
            let path = self.path.display();
            tracing::warn!(%path, error = %err, "cannot remove staging directory; the sweep will");
        }
    }
}

const VERSIONS: &str = "versions";
const DEV: &str = "dev";
const MODULES: &str = "modules";
const STAGING_PREFIX: &str = ".staging-";

/// Module names become directory names next to `modules/` and the dot-prefixed work entries.
fn check_module_name(name: &str) -> Result<(), StorageError> {
    let reason = if name.is_empty() {
        Some("is empty")
    } else if name.len() > 200 {
        Some("is longer than 200 bytes")
    } else if name.starts_with('.') {
        Some("starts with a dot")
    } else if name.contains(['/', '\\', '\0']) {
        Some("contains a path separator or NUL")
    } else if name == MODULES {
        Some("is reserved for the module loader's link directory")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(StorageError::BadModuleName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Suffix for work entries; only needs to avoid collisions between concurrent attempts.
fn random_suffix() -> String {
    format!("{:016x}", rand::random::<u64>())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn refuses_module_names_that_collide_with_the_layout() {
        let store = ModuleStore::new("/nonexistent", Limits::default());
        let digest = Digest::of(b"x");
        for bad in ["", ".staging", "a/b", "..", "modules", "a\0b"] {
            let err = store.stage(bad, &digest).map(|_| ()).unwrap_err();
            assert_eq!(err.class(), FailureClass::InvalidModule, "{bad:?}");
            assert!(!store.is_active(bad, &digest));
        }
    }

    #[test]
    fn the_active_weight_comes_from_the_loader_link_of_exactly_that_module() {
        let root = tempfile::tempdir().unwrap();
        let links = root.path().join(MODULES);
        std::fs::create_dir(&links).unwrap();
        for name in ["910-hello-world", "905-world", ".tmp-1-world-x", "x-world2"] {
            std::os::unix::fs::symlink("../x/dev", links.join(name)).unwrap();
        }
        let store = ModuleStore::new(root.path(), Limits::default());
        assert_eq!(store.active_weight("world"), Some(905));
        assert_eq!(store.active_weight("hello-world"), Some(910));
        assert_eq!(store.active_weight("world2"), None);
        assert_eq!(store.active_weight("other"), None);
    }

    #[test]
    fn default_limits_match_the_spec() {
        let limits = Limits::default();
        assert_eq!(limits.max_unpacked_bytes, 2 << 30);
        assert_eq!(limits.max_entries, 100_000);
    }
}
