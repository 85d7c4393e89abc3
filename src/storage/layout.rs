//! Switching a finished staging directory in, atomically, and cleaning up after crashes (SPEC §6).
//!
//! Invariant: `dev` only ever points at a directory that was complete and fsynced before the
//! link was swapped, and the swap is a single `rename`. A crash therefore leaves the old or the
//! new version active; what it can leave behind is garbage that [`ModuleStore::sweep`] removes.

use std::{
    collections::HashSet,
    fs::{self, FileType},
    io,
    os::unix::fs::{MetadataExt, PermissionsExt, symlink},
    path::{Path, PathBuf},
};

use super::{
    DEV, Installed, MODULES, ModuleInfo, ModuleStore, Staging, StorageError, VERSIONS,
    random_suffix, sweep::list_dir, tree,
};
use crate::digest::Digest;

/// Old copy of a version being replaced by a fresh download of the same digest.
pub(super) const REPLACED_PREFIX: &str = ".replaced-";
/// New `dev` link before it is renamed over the old one.
pub(super) const DEV_TMP_PREFIX: &str = ".dev-tmp-";
/// New `modules/<weight>-<module>` link before it is renamed into place.
pub(super) const LINK_TMP_PREFIX: &str = ".tmp-";

const DEFAULT_DIR_MODE: u32 = 0o755;
const DEFAULT_FILE_MODE: u32 = 0o644;

impl Staging {
    /// Makes the staged tree the active version of the module:
    /// 1. apply the recorded modes, then make the whole tree durable with one `syncfs`;
    /// 2. rename the tree to `versions/<hex>` (moving an existing copy of that digest aside);
    /// 3. point `modules/<weight>-<module>` at `../<module>/dev`;
    /// 4. swap `dev` to `versions/<hex>` (the commit point);
    /// 5. best effort: drop links of other weights, record the switch in the history and
    ///    collect the versions no longer kept (see `kept.rs`).
    pub fn commit(mut self, info: &ModuleInfo) -> Result<Installed, StorageError> {
        self.seal()?;
        let store = self.store.clone();
        let version = store.version_dir(&self.module, &self.digest);
        // The seal (a syncfs) can take seconds: ask again right before each visible step.
        store.may_commit()?;
        self.move_into_versions(&version)?;
        store.link_for_loader(&self.module, info.weight)?;
        store.may_commit()?;
        store.point_dev_at(&self.module, &self.digest)?;
        tracing::debug!(module = %self.module, digest = %self.digest, "dev switched");

        store.remove_other_weight_links(&self.module, info.weight);
        // Records the switch and collects what is no longer kept; a forced re-download of the
        // active digest adds no version, so nothing becomes old.
        store.after_switch(&self.module, &self.digest);
        Ok(Installed {
            digest: self.digest.clone(),
            path: version,
            files: self.files,
            bytes: self.file_bytes,
        })
    }

    /// Seals the tree as [`Staging::commit`] does (modes, symlink check, durability) and renames
    /// it to `target`, which must not exist or be an empty directory on the same filesystem: for
    /// a tool that wants the files themselves rather than a module store.
    pub fn keep_as(mut self, target: &Path) -> Result<PathBuf, StorageError> {
        self.seal()?;
        fs::rename(&self.path, target).map_err(StorageError::write(target))?;
        let parent = Some(parent_of(target)).filter(|p| !p.as_os_str().is_empty());
        tree::sync_dir(parent.unwrap_or(Path::new(".")))?;
        self.committed = true;
        Ok(target.to_path_buf())
    }

    /// Refuses symlinks that leave the tree. Checked on the finished tree because a symlink
    /// written later can change where an earlier one resolves (`l -> s/..`, then `s -> .`).
    pub(super) fn check_symlinks(
        &self,
        entries: &[(PathBuf, FileType)],
    ) -> Result<(), StorageError> {
        for (rel, _) in entries.iter().filter(|(_, kind)| kind.is_symlink()) {
            let full = self.path.join(rel);
            let target = fs::read_link(&full).map_err(StorageError::write(&full))?;
            if !tree::symlink_stays_inside(&self.path, rel, &target)? {
                let reason = format!("symlink target {target:?} leaves the module root");
                return Err(StorageError::unsafe_entry(rel, reason));
            }
        }
        Ok(())
    }

    /// Final modes and durability. Children before parents, so that a directory made read-only
    /// is no longer needed for writing.
    ///
    /// Durability is one `syncfs(2)` of the staging directory's filesystem instead of an fsync
    /// per file and directory (on a module of 2 000 small files the fsyncs were a third of the
    /// install time). Crash consistency holds the same way: `syncfs` returns once every dirty
    /// page and inode of the filesystem, so every file and directory entry of the staged tree,
    /// is on disk, and reports a writeback error that happened since the staging directory was
    /// opened; only then is the tree renamed into `versions/` and `dev` swapped, each rename
    /// followed by an fsync of its directory. A crash before the swap leaves the old `dev`.
    fn seal(&self) -> Result<(), StorageError> {
        let entries = tree::walk(&self.path)?;
        self.check_symlinks(&entries)?;
        let mut sealed_inodes = HashSet::new();
        for (rel, kind) in entries.iter().rev().filter(|(_, kind)| !kind.is_symlink()) {
            let full = self.path.join(rel);
            if kind.is_file() && !first_sight_of_inode(&full, &mut sealed_inodes)? {
                // Another name of a hard-linked file: its inode is already done, and may now
                // be unreadable to us.
                continue;
            }
            let default = if kind.is_dir() {
                DEFAULT_DIR_MODE
            } else {
                DEFAULT_FILE_MODE
            };
            set_mode(&full, self.modes.get(rel).copied().unwrap_or(default))?;
        }
        set_mode(&self.path, DEFAULT_DIR_MODE)?;
        rustix::fs::syncfs(&self.filesystem)
            .map_err(|errno| StorageError::write(&self.path)(errno.into()))
    }

    fn move_into_versions(&mut self, version: &Path) -> Result<(), StorageError> {
        let versions = parent_of(version);
        fs::create_dir_all(versions).map_err(StorageError::write(versions))?;
        match version.symlink_metadata() {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::rename(&self.path, version).map_err(StorageError::write(version))?;
                self.committed = true;
                sync_parents(version)
            }
            Err(err) => Err(StorageError::write(version)(err)),
            Ok(_) => self.replace_version(version),
        }
    }

    /// Same digest already stored (a forced renew): move the old copy aside, rename the new one
    /// in, then delete the old. A crash in between leaves `dev` dangling with the old copy in
    /// `.replaced-<hex>-*`, which [`ModuleStore::sweep`] renames back.
    fn replace_version(&mut self, version: &Path) -> Result<(), StorageError> {
        let module_dir = parent_of(parent_of(version));
        let aside = module_dir.join(format!(
            "{REPLACED_PREFIX}{}-{}",
            self.digest.hex(),
            random_suffix()
        ));
        fs::rename(version, &aside).map_err(StorageError::write(version))?;
        if let Err(err) = fs::rename(&self.path, version) {
            if let Err(undo) = fs::rename(&aside, version) {
                let path = aside.display();
                tracing::error!(%path, error = %undo, "cannot restore replaced version");
            }
            return Err(StorageError::write(version)(err));
        }
        self.committed = true;
        sync_parents(version)?;
        sync_dir_logged(module_dir);
        if let Err(err) = tree::remove_tree(&aside) {
            tracing::warn!(path = %aside.display(), error = %err, "cannot remove replaced version");
        }
        Ok(())
    }
}

impl ModuleStore {
    /// `modules/<weight>-<module> -> ../<module>/dev`, created under a temporary name and renamed
    /// into place so that the loader never sees a half-made link.
    pub(super) fn link_for_loader(&self, module: &str, weight: u32) -> Result<(), StorageError> {
        let links = self.root.join(MODULES);
        fs::create_dir_all(&links).map_err(StorageError::write(&links))?;
        let name = format!("{weight}-{module}");
        let temporary = links.join(format!("{LINK_TMP_PREFIX}{name}-{}", random_suffix()));
        replace_symlink(&format!("../{module}/{DEV}"), &temporary, &links.join(name))?;
        tree::sync_dir(&links)
    }

    pub(super) fn point_dev_at(&self, module: &str, digest: &Digest) -> Result<(), StorageError> {
        let module_dir = self.module_dir(module);
        let temporary = module_dir.join(format!("{DEV_TMP_PREFIX}{}", random_suffix()));
        replace_symlink(
            &format!("{VERSIONS}/{}", digest.hex()),
            &temporary,
            &module_dir.join(DEV),
        )?;
        tree::sync_dir(&module_dir)
    }

    /// Best effort: the new link is already in place, a stale one only confuses the loader.
    pub(super) fn remove_other_weight_links(&self, module: &str, weight: u32) {
        let links = self.root.join(MODULES);
        let current = format!("{weight}-{module}");
        let stale = match list_dir(&links) {
            Ok(entries) => entries.into_iter().filter(|(name, kind)| {
                kind.is_symlink() && *name != current && links_module(name, module)
            }),
            Err(err) => {
                tracing::warn!(error = %err, "cannot list module links");
                return;
            }
        };
        for (name, _) in stale {
            if let Err(err) = fs::remove_file(links.join(&name)) {
                tracing::warn!(link = name, error = %err, "cannot remove stale module link");
            }
        }
        sync_dir_logged(&links);
    }
}

/// The digest a `dev` link names, if it is one we wrote.
pub(super) fn dev_target(module_dir: &Path) -> Option<Digest> {
    let target = fs::read_link(module_dir.join(DEV)).ok()?;
    let hex = target.to_str()?.strip_prefix(VERSIONS)?.strip_prefix('/')?;
    Digest::from_hex(hex).ok()
}

/// `<digits>-<module>`: the first dash ends the weight, the rest must be the module name.
fn links_module(link_name: &str, module: &str) -> bool {
    link_name.split_once('-').is_some_and(|(weight, rest)| {
        !weight.is_empty() && weight.bytes().all(|b| b.is_ascii_digit()) && rest == module
    })
}

/// Atomically makes `path` a symlink to `target`, whatever symlink or file was there.
fn replace_symlink(target: &str, temporary: &Path, path: &Path) -> Result<(), StorageError> {
    symlink(target, temporary).map_err(StorageError::write(temporary))?;
    fs::rename(temporary, path).map_err(|err| {
        // Not worth failing over: the sweep removes temporaries too.
        let _ = fs::remove_file(temporary);
        StorageError::write(path)(err)
    })
}

/// `chmod` of an entry of our own staged tree; symlinks are skipped by the caller and no parent
/// is a symlink (the unpacker refuses writing through one), so the path names what we wrote.
fn set_mode(path: &Path, mode: u32) -> Result<(), StorageError> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(StorageError::write(path))
}

fn first_sight_of_inode(path: &Path, seen: &mut HashSet<(u64, u64)>) -> Result<bool, StorageError> {
    let meta = path.symlink_metadata().map_err(StorageError::write(path))?;
    Ok(meta.nlink() <= 1 || seen.insert((meta.dev(), meta.ino())))
}

/// Makes a rename into `path` durable: fsync its directory and that directory's parent.
pub(super) fn sync_parents(path: &Path) -> Result<(), StorageError> {
    let dir = parent_of(path);
    tree::sync_dir(dir)?;
    tree::sync_dir(parent_of(dir))
}

fn sync_dir_logged(dir: &Path) {
    if let Err(err) = tree::sync_dir(dir) {
        tracing::warn!(error = %err, "cannot fsync directory");
    }
}

pub(super) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("/"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::{FailureClass, LayerCompression, testkit::*};
    use super::*;

    const MODULE: &str = "echo";

    fn module_layer(weight: u32, marker: &str) -> Vec<u8> {
        TarLayer::new()
            .file(
                "module.yaml",
                format!("name: echo\nweight: {weight}\n").as_bytes(),
            )
            .file("marker", marker.as_bytes())
            .dir_mode("ro", 0o555)
            .file_mode("ro/tool", b"#!/bin/sh\n", 0o4755)
            .file_mode("ro/secret", b"s", 0o000)
            .hardlink("ro/secret-too", "ro/secret")
            .tar()
    }

    fn link_text(path: &Path) -> String {
        fs::read_link(path).unwrap().to_string_lossy().into_owned()
    }

    fn versions(fixture: &Fixture) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(fixture.root().join(MODULE).join(VERSIONS))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        path.symlink_metadata().unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn a_closed_commit_gate_stops_the_commit_before_anything_is_switched() {
        let fixture = Fixture::new();
        let v1 = Digest::of(b"v1");
        fixture.install(MODULE, &v1, module_layer(910, "v1"));
        let closed = ModuleStore::new(fixture.root(), super::super::Limits::default())
            .with_commit_gate(super::super::CommitGate::new(|| false));
        let v2 = Digest::of(b"v2");
        let mut staging = closed.stage(MODULE, &v2).unwrap();
        staging
            .apply_layer(&module_layer(910, "v2")[..], LayerCompression::None)
            .unwrap();
        let info = staging.validate(MODULE).unwrap();
        let err = staging.commit(&info).unwrap_err();
        assert!(matches!(err, StorageError::Cancelled), "{err}");
        assert_eq!(closed.active(MODULE), Some(v1.clone()), "dev untouched");
        assert_eq!(
            versions(&fixture),
            [v1.hex()],
            "no new version, no staging left"
        );
    }

    #[test]
    fn commit_switches_dev_and_links_the_module_for_the_loader() {
        let fixture = Fixture::new();
        let digest = Digest::of(b"v1");
        let installed = fixture.install(MODULE, &digest, module_layer(910, "v1"));

        let module_dir = fixture.root().join(MODULE);
        assert_eq!(
            installed.path,
            module_dir.join("versions").join(digest.hex())
        );
        assert_eq!(
            (installed.files, installed.digest.clone()),
            (5, digest.clone())
        );
        assert_eq!(
            link_text(&module_dir.join("dev")),
            format!("versions/{}", digest.hex())
        );
        let loader_link = fixture.root().join("modules/910-echo");
        assert_eq!(link_text(&loader_link), "../echo/dev");
        assert_eq!(fs::read(loader_link.join("marker")).unwrap(), b"v1");
        assert!(fixture.store.is_active(MODULE, &digest));
        assert_eq!(fixture.store.active(MODULE), Some(digest));
        assert_eq!(
            fixture.module_dir_names(MODULE),
            ["dev", "history", "versions"]
        );

        assert_eq!(mode(&installed.path.join("ro")), 0o555);
        assert_eq!(
            mode(&installed.path.join("ro/tool")),
            0o755,
            "setuid dropped"
        );
        assert_eq!(mode(&installed.path.join("ro/secret")), 0o000);
        assert_eq!(mode(&installed.path.join("marker")), 0o644);
        fixture.assert_outside_untouched();
    }

    #[test]
    fn keeps_the_last_versions_in_switch_order_and_switches_back_without_a_download() {
        let fixture = Fixture::new();
        let [a, b, c, d] = [b"a", b"b", b"c", b"d"].map(|name| Digest::of(name));
        fixture.install(MODULE, &a, module_layer(900, "a"));
        fixture.install(MODULE, &b, module_layer(900, "b"));
        fixture.install(MODULE, &c, module_layer(900, "c"));
        assert_eq!(versions(&fixture), sorted(&[&a, &b, &c]));
        fixture.install(MODULE, &d, module_layer(900, "d"));
        // `a` had read-only directories and unreadable files: collecting copes.
        assert_eq!(versions(&fixture), sorted(&[&b, &c, &d]));
        assert_eq!(
            fixture.store.kept(MODULE),
            [d.clone(), c.clone(), b.clone()]
        );

        // Back to `b`: a rename of `dev`, and `b` is the newest switch now.
        let installed = fixture.store.switch_to(MODULE, &b).unwrap();
        assert!(fixture.store.is_active(MODULE, &b));
        assert_eq!(fs::read(installed.path.join("marker")).unwrap(), b"b");
        assert_eq!(
            fixture.store.kept(MODULE),
            [b.clone(), d.clone(), c.clone()]
        );
        let missing = fixture.store.switch_to(MODULE, &a).unwrap_err();
        assert!(missing.to_string().contains("not kept"), "{missing}");
        assert!(
            fixture.store.is_active(MODULE, &b),
            "a failed switch changes nothing"
        );

        let two = Fixture::new();
        let two = Fixture {
            store: two.store.clone().with_kept_versions(2),
            ..two
        };
        for (digest, marker) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            two.install(MODULE, digest, module_layer(900, marker));
        }
        assert_eq!(versions(&two), sorted(&[&b, &c]));
    }

    #[test]
    fn the_version_from_before_the_overrides_is_kept_until_forgotten() {
        let fixture = Fixture::new();
        let release = Digest::of(b"release");
        fixture.install(MODULE, &release, module_layer(905, "release"));
        // Our own switches are in the history and are no release: nothing to record.
        assert_eq!(fixture.store.mark_before_override(MODULE).unwrap(), None);
        // A version another process put there (a release, with no history of ours).
        fs::remove_file(fixture.root().join(MODULE).join("history")).unwrap();
        assert_eq!(
            fixture.store.mark_before_override(MODULE).unwrap(),
            Some(release.clone())
        );
        for marker in ["o1", "o2", "o3", "o4"] {
            fixture.install(
                MODULE,
                &Digest::of(marker.as_bytes()),
                module_layer(900, marker),
            );
        }
        assert_eq!(fixture.store.before_override(MODULE), Some(release.clone()));
        assert!(
            fixture.store.has_version(MODULE, &release),
            "kept beyond the last three"
        );
        // Marking again keeps the first record.
        assert_eq!(
            fixture.store.mark_before_override(MODULE).unwrap(),
            Some(release.clone())
        );
        fixture.store.switch_to(MODULE, &release).unwrap();
        assert_eq!(fixture.store.active_weight(MODULE), Some(905));
        fixture.store.forget_before_override(MODULE).unwrap();
        assert_eq!(fixture.store.before_override(MODULE), None);
        assert!(fixture.store.is_active(MODULE, &release));
    }

    #[test]
    fn a_collection_cut_short_leaves_versions_whole_and_the_sweep_finishes_it() {
        let fixture = Fixture::new();
        let [a, b] = [b"a", b"b"].map(|name| Digest::of(name));
        fixture.install(MODULE, &a, module_layer(900, "a"));
        fixture.install(MODULE, &b, module_layer(900, "b"));
        // What a kill -9 in the middle of deleting a collected version leaves: the version is
        // out of `versions/` already, half deleted, and a record half written.
        let module_dir = fixture.root().join(MODULE);
        let aside = module_dir.join(format!(
            "{}{}-x",
            super::super::kept::REMOVING_PREFIX,
            a.hex()
        ));
        fs::rename(module_dir.join("versions").join(a.hex()), &aside).unwrap();
        fs::write(module_dir.join(".record-tmp-history-x"), "partial").unwrap();
        assert!(
            !fixture.store.has_version(MODULE, &a),
            "never a half-deleted version"
        );
        assert_eq!(fixture.store.kept(MODULE), vec![b.clone()]);
        fixture.store.sweep().unwrap();
        assert_eq!(
            fixture.module_dir_names(MODULE),
            ["dev", "history", "versions"]
        );
        assert!(fixture.store.is_active(MODULE, &b));
    }

    fn sorted(digests: &[&Digest]) -> Vec<String> {
        let mut hexes: Vec<String> = digests.iter().map(|d| d.hex().to_owned()).collect();
        hexes.sort();
        hexes
    }

    #[test]
    fn a_weight_change_moves_the_loader_link() {
        let fixture = Fixture::new();
        for other in ["other", "x-echo"] {
            let layer = TarLayer::new().file("module.yaml", b"weight: 900\n").tar();
            fixture.install(other, &Digest::of(other.as_bytes()), layer);
        }
        fixture.install(MODULE, &Digest::of(b"1"), module_layer(900, "1"));
        fixture.install(MODULE, &Digest::of(b"2"), module_layer(915, "2"));
        let mut links: Vec<String> = fs::read_dir(fixture.root().join("modules"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        links.sort();
        assert_eq!(links, ["900-other", "900-x-echo", "915-echo"]);
    }

    #[test]
    fn a_forced_renew_replaces_the_same_digest_and_keeps_the_rollback_copy() {
        let fixture = Fixture::new();
        let (old, current) = (Digest::of(b"old"), Digest::of(b"current"));
        fixture.install(MODULE, &old, module_layer(900, "old"));
        fixture.install(MODULE, &current, module_layer(900, "first download"));
        let installed = fixture.install(MODULE, &current, module_layer(900, "second download"));
        assert_eq!(
            fs::read(installed.path.join("marker")).unwrap(),
            b"second download"
        );
        assert!(fixture.store.is_active(MODULE, &current));
        assert_eq!(versions(&fixture), sorted(&[&old, &current]));
        assert_eq!(
            fixture.module_dir_names(MODULE),
            ["dev", "history", "versions"]
        );
    }

    #[test]
    fn a_failed_download_leaves_the_active_version_alone() {
        let fixture = Fixture::new();
        let good = Digest::of(b"good");
        fixture.install(MODULE, &good, module_layer(900, "good"));
        let mut staging = fixture.stage(MODULE, &Digest::of(b"bad"));
        let hostile = TarLayer::new().symlink("l", "s/..").symlink("s", ".").tar();
        staging
            .apply_layer(&hostile[..], LayerCompression::None)
            .unwrap();
        let err = staging.commit(&ModuleInfo::default()).unwrap_err();
        assert_eq!(err.class(), FailureClass::Download);
        assert!(fixture.store.is_active(MODULE, &good));
        assert_eq!(versions(&fixture), sorted(&[&good]));
        assert_eq!(
            fixture.module_dir_names(MODULE),
            ["dev", "history", "versions"]
        );
    }

    #[test]
    fn a_read_only_store_is_a_store_failure() {
        let fixture = Fixture::new();
        if !permissions_are_enforced(fixture.dir.path()) {
            eprintln!("skipped: running with privileges that ignore file modes");
            return;
        }
        fixture.store.sweep().unwrap();
        let root = fixture.root();
        fs::set_permissions(root, fs::Permissions::from_mode(0o555)).unwrap();
        let err = fixture
            .store
            .stage(MODULE, &Digest::of(b"x"))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(err, StorageError::Write { .. }), "{err:?}");
        assert_eq!(err.class(), FailureClass::Store);
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();

        // Read-only once unpacked: the switch-in fails, nothing becomes active.
        let mut staging = fixture.stage(MODULE, &Digest::of(b"y"));
        let layer = module_layer(900, "y");
        staging
            .apply_layer(&layer[..], LayerCompression::None)
            .unwrap();
        let module_dir = root.join(MODULE);
        fs::set_permissions(&module_dir, fs::Permissions::from_mode(0o555)).unwrap();
        let err = staging.commit(&ModuleInfo::default()).unwrap_err();
        fs::set_permissions(&module_dir, fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(err.class(), FailureClass::Store, "{err}");
        assert_eq!(fixture.store.active(MODULE), None);
    }
}
