//! Kept versions: the last K versions of a module stay under `versions/` (never the active one
//! removed), so that a rollback switches back in milliseconds without a download.
//!
//! `<module>/history` lists the digests in the order they were switched in, newest first, one
//! hex per line; it is replaced with a rename, so it is always whole. The order decides what is
//! kept: the active version, the first K of the history, and the version that was active before
//! any override ([`ModuleStore::mark_before_override`]).
//!
//! Crash consistency: a version is collected by renaming it out of `versions/` to
//! `.removing-<hex>-*` first and deleting it there, so `versions/` only ever holds whole
//! versions (a rollback may trust any of them); the sweep deletes what a crash left in
//! `.removing-*`. A crash between the `dev` swap and the history write leaves the newest switch
//! out of the history; the active version is kept regardless, and the next switch writes it.

use std::{
    fs,
    io::{self, Write as _},
};

use super::{
    Installed, ModuleInfo, ModuleStore, StorageError, VERSIONS, check_module_name, random_suffix,
    sweep::list_dir, tree, validate::module_info_of_tree,
};
use crate::digest::Digest;

/// The switch-in order, newest first.
const HISTORY: &str = "history";
/// The version another process had active before the first override of the module.
const BEFORE_OVERRIDE: &str = "before-override";
/// A version being collected, outside `versions/`.
pub(super) const REMOVING_PREFIX: &str = ".removing-";
/// A new `history` or `before-override` before it is renamed into place.
pub(super) const RECORD_TMP_PREFIX: &str = ".record-tmp-";

/// Versions kept per module unless configured otherwise.
pub const DEFAULT_KEPT_VERSIONS: usize = 3;

impl ModuleStore {
    /// Whether `versions/<hex>` of `module` holds a whole version (anything there is whole).
    pub fn has_version(&self, module: &str, digest: &Digest) -> bool {
        check_module_name(module).is_ok()
            && self
                .version_dir(module, digest)
                .symlink_metadata()
                .is_ok_and(|meta| meta.is_dir())
    }

    /// The kept versions of `module` in switch-in order, newest first (those still on disk).
    pub fn kept(&self, module: &str) -> Vec<Digest> {
        if check_module_name(module).is_err() {
            return Vec::new();
        }
        self.history(module)
            .into_iter()
            .filter(|digest| self.has_version(module, digest))
            .collect()
    }

    /// Makes a kept version active again: no download, one `rename` of `dev`. The weight comes
    /// from the version's own `module.yaml`, as when it was first switched in.
    pub fn switch_to(&self, module: &str, digest: &Digest) -> Result<Installed, StorageError> {
        check_module_name(module)?;
        let version = self.version_dir(module, digest);
        if !self.has_version(module, digest) {
            return Err(StorageError::write(&version)(io::Error::new(
                io::ErrorKind::NotFound,
                "this version is not kept on disk",
            )));
        }
        let info = module_info_of_tree(&version, module)?;
        self.may_commit()?;
        self.link_for_loader(module, info.weight)?;
        self.may_commit()?;
        self.point_dev_at(module, digest)?;
        tracing::debug!(module, %digest, "dev switched to a kept version");
        self.remove_other_weight_links(module, info.weight);
        self.after_switch(module, digest);
        Ok(Installed {
            digest: digest.clone(),
            path: version,
            files: 0,
            bytes: 0,
        })
    }

    /// The weight the version `digest` of `module` declares (for a kept version).
    pub fn version_info(&self, module: &str, digest: &Digest) -> Result<ModuleInfo, StorageError> {
        check_module_name(module)?;
        module_info_of_tree(&self.version_dir(module, digest), module)
    }

    /// Records that the version active now (if any) was put there by someone else, before any
    /// override of `module`: it is kept from now on, for a rollback on delete. Returns it.
    /// Idempotent: a recorded one is never replaced.
    pub fn mark_before_override(&self, module: &str) -> Result<Option<Digest>, StorageError> {
        check_module_name(module)?;
        if let Some(recorded) = self.before_override(module) {
            return Ok(Some(recorded));
        }
        let Some(active) = self.active(module).filter(|d| self.has_version(module, d)) else {
            return Ok(None);
        };
        // In the history: switched in by an override (this store's own), not by someone else.
        if self.history(module).contains(&active) {
            return Ok(None);
        }
        self.write_record(module, BEFORE_OVERRIDE, &format!("{}\n", active.hex()))?;
        Ok(Some(active))
    }

    /// The version [`Self::mark_before_override`] recorded, if it is still on disk.
    pub fn before_override(&self, module: &str) -> Option<Digest> {
        check_module_name(module).ok()?;
        let text = fs::read_to_string(self.module_dir(module).join(BEFORE_OVERRIDE)).ok()?;
        let digest = parse_hex(text.trim())?;
        self.has_version(module, &digest).then_some(digest)
    }

    /// Forgets the version active before the overrides (once it is switched back in).
    pub fn forget_before_override(&self, module: &str) -> Result<(), StorageError> {
        check_module_name(module)?;
        let path = self.module_dir(module).join(BEFORE_OVERRIDE);
        match fs::remove_file(&path) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => {
                Err(StorageError::write(&path)(err))
            }
            _ => Ok(()),
        }
    }

    /// After `dev` points at `digest`: record the switch, then collect what is no longer kept.
    /// Both best effort: the switch itself is done and must not be reported as failed.
    pub(super) fn after_switch(&self, module: &str, digest: &Digest) {
        let mut history = self.history(module);
        history.retain(|d| d != digest);
        history.insert(0, digest.clone());
        history.truncate(self.kept_versions.max(1));
        let text: String = history.iter().map(|d| format!("{}\n", d.hex())).collect();
        if let Err(err) = self.write_record(module, HISTORY, &text) {
            tracing::warn!(module, error = %err, "cannot record the version history");
            return;
        }
        self.collect(module, &history);
    }

    /// Collects every version not in `history` that is neither active nor the one from before the
    /// overrides: renamed out of `versions/`, then deleted.
    fn collect(&self, module: &str, history: &[Digest]) {
        let versions = self.module_dir(module).join(VERSIONS);
        let keep: Vec<Digest> = history
            .iter()
            .cloned()
            .chain(self.active(module))
            .chain(self.before_override(module))
            .collect();
        let entries = match list_dir(&versions) {
            Ok(entries) => entries,
            Err(err) => return tracing::warn!(error = %err, "cannot list versions to collect"),
        };
        for (name, _) in entries
            .into_iter()
            .filter(|(name, _)| !keep.iter().any(|d| d.hex() == name))
        {
            let path = versions.join(&name);
            let aside = self
                .module_dir(module)
                .join(format!("{REMOVING_PREFIX}{name}-{}", random_suffix()));
            if let Err(err) = fs::rename(&path, &aside) {
                tracing::warn!(path = %path.display(), error = %err, "cannot collect an old version");
                continue;
            }
            match tree::remove_tree(&aside) {
                Ok(()) => tracing::debug!(path = %path.display(), "collected an old version"),
                Err(err) => {
                    tracing::warn!(path = %aside.display(), error = %err, "cannot delete a collected version")
                }
            }
        }
    }

    fn history(&self, module: &str) -> Vec<Digest> {
        let Ok(text) = fs::read_to_string(self.module_dir(module).join(HISTORY)) else {
            return Vec::new();
        };
        text.lines().filter_map(|l| parse_hex(l.trim())).collect()
    }

    /// Writes `<module>/<name>` whole: a temporary file, fsynced, renamed over it.
    fn write_record(&self, module: &str, name: &str, text: &str) -> Result<(), StorageError> {
        let dir = self.module_dir(module);
        let temporary = dir.join(format!("{RECORD_TMP_PREFIX}{name}-{}", random_suffix()));
        let path = dir.join(name);
        let written = (|| -> io::Result<()> {
            let mut file = fs::File::create(&temporary)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&temporary, &path)
        })();
        if let Err(err) = written {
            let _ = fs::remove_file(&temporary);
            return Err(StorageError::write(&path)(err));
        }
        tree::sync_dir(&dir)
    }
}

fn parse_hex(hex: &str) -> Option<Digest> {
    format!("sha256:{hex}").parse().ok()
}
