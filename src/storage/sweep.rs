//! The startup sweep: what a crash or a killed download can leave behind in the store, removed
//! or repaired before any download starts (SPEC §6).

use std::{
    fs::{self, FileType},
    io,
    path::Path,
};

use super::{
    MODULES, ModuleStore, STAGING_PREFIX, StorageError, check_module_name,
    kept::{RECORD_TMP_PREFIX, REMOVING_PREFIX},
    layout::{DEV_TMP_PREFIX, LINK_TMP_PREFIX, REPLACED_PREFIX, parent_of, sync_parents},
    tree,
};

impl ModuleStore {
    /// Startup sweep: creates the root, removes leftover staging directories and temporary
    /// links, and repairs `dev` after a crash during a same-digest replacement. Returns how many
    /// staging directories were removed. Call it before any download starts: it would remove a
    /// staging directory that is in use.
    ///
    /// Only the root itself must be usable: an entry that cannot be read or removed (a
    /// root-owned `lost+found` on a volume root, a foreign directory) is logged and skipped,
    /// never fatal, so that one odd entry cannot keep the operator from starting.
    pub fn sweep(&self) -> Result<usize, StorageError> {
        fs::create_dir_all(&self.root).map_err(StorageError::write(&self.root))?;
        let mut removed = 0;
        for (name, kind) in list_dir(&self.root)? {
            let swept = if name == MODULES {
                self.sweep_loader_links().map(|()| 0)
            } else if kind.is_dir() && check_module_name(&name).is_ok() {
                self.sweep_module(&name)
            } else {
                Ok(0)
            };
            match swept {
                Ok(count) => removed += count,
                Err(err) => tracing::warn!(entry = %name, "sweep skipped an entry: {err}"),
            }
        }
        Ok(removed)
    }

    fn sweep_module(&self, module: &str) -> Result<usize, StorageError> {
        let module_dir = self.module_dir(module);
        let mut staging = 0;
        let mut replaced = Vec::new();
        for (name, _) in list_dir(&module_dir)? {
            let path = module_dir.join(&name);
            if name.starts_with(STAGING_PREFIX) {
                tree::remove_tree(&path).map_err(StorageError::write(&path))?;
                tracing::info!(path = %path.display(), "removed leftover staging directory");
                staging += 1;
            } else if name.starts_with(DEV_TMP_PREFIX)
                || name.starts_with(RECORD_TMP_PREFIX)
                || name.starts_with(REMOVING_PREFIX)
            {
                // A half-written record, or an old version whose collection a crash cut short
                // (it left `versions/` whole before its deletion began).
                tree::remove_tree(&path).map_err(StorageError::write(&path))?;
            } else if name.starts_with(REPLACED_PREFIX) {
                replaced.push(name);
            }
        }
        self.restore_replaced(module, &mut replaced)?;
        for name in replaced {
            let path = module_dir.join(name);
            tree::remove_tree(&path).map_err(StorageError::write(&path))?;
        }
        Ok(staging)
    }

    /// If `dev` dangles and the old copy of its digest was moved aside, move it back; takes the
    /// restored name out of `replaced`.
    fn restore_replaced(
        &self,
        module: &str,
        replaced: &mut Vec<String>,
    ) -> Result<(), StorageError> {
        let Some(digest) = self.active(module) else {
            return Ok(());
        };
        let version = self.version_dir(module, &digest);
        if version.symlink_metadata().is_ok() {
            return Ok(());
        }
        let prefix = format!("{REPLACED_PREFIX}{}-", digest.hex());
        let Some(index) = replaced.iter().position(|name| name.starts_with(&prefix)) else {
            return Ok(());
        };
        let aside = self.module_dir(module).join(replaced.remove(index));
        let versions = parent_of(&version);
        fs::create_dir_all(versions).map_err(StorageError::write(versions))?;
        fs::rename(&aside, &version).map_err(StorageError::write(&version))?;
        sync_parents(&version)?;
        tracing::warn!(module, %digest, "restored the version a crash left moved aside");
        Ok(())
    }

    fn sweep_loader_links(&self) -> Result<(), StorageError> {
        let links = self.root.join(MODULES);
        for (name, _) in list_dir(&links)? {
            if name.starts_with(LINK_TMP_PREFIX) {
                let path = links.join(name);
                tree::remove_tree(&path).map_err(StorageError::write(&path))?;
            }
        }
        Ok(())
    }
}

/// Names (UTF-8 only: everything we create is) and types of a directory's entries; a missing
/// directory is empty.
pub(super) fn list_dir(dir: &Path) -> Result<Vec<(String, FileType)>, StorageError> {
    let listing = match fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(StorageError::write(dir)(err)),
    };
    let mut entries = Vec::new();
    for entry in listing {
        let entry = entry.map_err(StorageError::write(dir))?;
        let kind = entry
            .file_type()
            .map_err(StorageError::write(entry.path()))?;
        if let Ok(name) = entry.file_name().into_string() {
            entries.push((name, kind));
        }
    }
    Ok(entries)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::os::unix::fs::{PermissionsExt, symlink};

    use super::super::testkit::*;
    use super::*;
    use crate::digest::Digest;

    const MODULE: &str = "echo";

    fn module_layer(marker: &str) -> Vec<u8> {
        TarLayer::new()
            .file("module.yaml", b"name: echo\nweight: 900\n")
            .file("marker", marker.as_bytes())
            .tar()
    }

    #[test]
    fn sweep_removes_leftovers_and_repairs_an_interrupted_replacement() {
        let fixture = Fixture::new();
        assert_eq!(fixture.store.sweep().unwrap(), 0, "creates a missing root");
        let digest = Digest::of(b"v");
        let installed = fixture.install(MODULE, &digest, module_layer("v"));
        let module_dir = fixture.root().join(MODULE);

        // A crash between the two renames of a forced renew: `dev` dangles.
        let aside = module_dir.join(format!(".replaced-{}-0123", digest.hex()));
        fs::rename(&installed.path, &aside).unwrap();
        assert!(!fixture.store.is_active(MODULE, &digest));
        // Other leftovers: a half-unpacked staging dir (with a locked directory), an older
        // replaced copy, temporary links.
        let staging = module_dir.join(".staging-abc-1");
        fs::create_dir_all(staging.join("locked")).unwrap();
        fs::set_permissions(staging.join("locked"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::create_dir(module_dir.join(".replaced-feed-1")).unwrap();
        symlink("versions/x", module_dir.join(".dev-tmp-1")).unwrap();
        symlink(
            "../echo/dev",
            fixture.root().join("modules/.tmp-900-echo-1"),
        )
        .unwrap();

        assert_eq!(fixture.store.sweep().unwrap(), 1);
        assert!(fixture.store.is_active(MODULE, &digest));
        assert_eq!(fs::read(installed.path.join("marker")).unwrap(), b"v");
        assert_eq!(
            fixture.module_dir_names(MODULE),
            ["dev", "history", "versions"]
        );
        let links: Vec<_> = fs::read_dir(fixture.root().join("modules"))
            .unwrap()
            .collect();
        assert_eq!(links.len(), 1);

        // Once the new copy is in place, a leftover old copy is simply removed.
        fs::create_dir(&aside).unwrap();
        assert_eq!(fixture.store.sweep().unwrap(), 0);
        assert!(!aside.exists());
        assert!(fixture.store.is_active(MODULE, &digest));
    }

    #[test]
    fn an_entry_that_cannot_be_swept_is_skipped_not_fatal() {
        let fixture = Fixture::new();
        let digest = Digest::of(b"v");
        fixture.install(MODULE, &digest, module_layer("v"));
        let leftover = fixture.root().join(MODULE).join(".staging-abc-1");
        fs::create_dir(&leftover).unwrap();
        // Something foreign where the loader's link directory goes: listing it fails (ENOTDIR)
        // even for root, as an unreadable `lost+found` does for a non-root operator.
        let links = fixture.root().join("modules");
        fs::remove_dir_all(&links).unwrap();
        fs::write(&links, b"not ours").unwrap();
        assert_eq!(fixture.store.sweep().unwrap(), 1, "the rest is still swept");
        assert!(!leftover.exists());
        assert!(fixture.store.is_active(MODULE, &digest));
        assert_eq!(fs::read(&links).unwrap(), b"not ours", "left alone");
    }
}
