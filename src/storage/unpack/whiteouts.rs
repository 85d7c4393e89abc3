//! OCI whiteouts: `.wh.<name>` hides a lower layer's entry, `.wh..wh..opq` a directory's content.

use super::*;

impl Staging {
    pub(super) fn apply_whiteout(
        &mut self,
        rel: &Path,
        whiteout: Whiteout,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        // Nothing to hide when the directory holding the marker does not exist.
        if !self.parents_are_dirs(rel)? {
            return Ok(());
        }
        match whiteout {
            Whiteout::Ignore => Ok(()),
            // A whiteout hides lower layers only, never what this layer wrote.
            Whiteout::Remove(target) if layer.written.contains(&target) => Ok(()),
            Whiteout::Remove(target) => self.remove(&target),
            Whiteout::Opaque(dir) => self.remove_lower_content(&dir, layer),
        }
    }

    /// Empties `dir` of what lower layers put there, keeping what this layer wrote (tools may
    /// emit the opaque marker after the directory's new children).
    pub(super) fn remove_lower_content(
        &mut self,
        dir: &Path,
        layer: &Layer,
    ) -> Result<(), StorageError> {
        let mut pending = vec![dir.to_path_buf()];
        while let Some(dir) = pending.pop() {
            let full = self.path.join(&dir);
            let children = fs::read_dir(&full)
                .and_then(|listing| listing.collect::<io::Result<Vec<_>>>())
                .map_err(StorageError::write(&full))?;
            for child in children {
                let rel = dir.join(child.file_name());
                if !layer.written.contains(&rel) {
                    self.remove(&rel)?;
                } else if child
                    .file_type()
                    .map_err(StorageError::write(child.path()))?
                    .is_dir()
                {
                    pending.push(rel);
                }
            }
        }
        Ok(())
    }
}

pub(super) enum Whiteout {
    /// `.wh.<name>`: delete `<name>`.
    Remove(PathBuf),
    /// `.wh..wh..opq`: empty the directory.
    Opaque(PathBuf),
    /// Other `.wh..wh.*` metadata: nothing to do, and nothing to write.
    Ignore,
}

pub(super) fn whiteout_of(rel: &Path) -> Result<Option<Whiteout>, StorageError> {
    let (Some(name), Some(dir)) = (rel.file_name(), rel.parent()) else {
        return Ok(None);
    };
    let name = name.as_bytes();
    if name == OPAQUE_MARKER {
        return Ok(Some(Whiteout::Opaque(dir.into())));
    }
    if name.starts_with(WHITEOUT_META_PREFIX) {
        return Ok(Some(Whiteout::Ignore));
    }
    let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) else {
        return Ok(None);
    };
    if hidden.is_empty() || hidden == b"." || hidden == b".." {
        return Err(StorageError::unsafe_entry(rel, "whiteout names no entry"));
    }
    Ok(Some(Whiteout::Remove(dir.join(OsStr::from_bytes(hidden)))))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn whiteouts_hide_lower_layers_only() {
        let fixture = Fixture::new();
        let lower = TarLayer::new()
            .file("a/x", b"")
            .file("a/sub/y", b"")
            .file("b/z", b"")
            .file("b/keep", b"")
            .file("c", b"")
            .file("d/old", b"")
            .tar();
        let upper = TarLayer::new()
            .file(".wh.c", b"")
            .file("a/new", b"")
            .file("a/sub/new", b"")
            .file("a/.wh..wh..opq", b"")
            .file("b/.wh.z", b"")
            .file("d/.wh..wh..opq", b"")
            .file("d/fresh", b"")
            .file("e/.wh.missing", b"")
            .file(".wh..wh.plnk", b"")
            .file("n", b"new")
            .file(".wh.n", b"")
            .tar();
        let staging = fixture.unpack(MODULE, &[lower, upper]).unwrap();
        let names: Vec<String> = tree::walk(staging.path())
            .unwrap()
            .into_iter()
            .map(|(path, _)| path.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "a",
                "a/new",
                "a/sub",
                "a/sub/new",
                "b",
                "b/keep",
                "d",
                "d/fresh",
                "n"
            ]
        );
    }

    #[test]
    fn refuses_whiteouts_of_dot_names() {
        assert_refused(
            &[TarLayer::new()
                .raw(b"a/.wh...", EntryType::Regular, b"", b"")
                .tar()],
            "whiteout names no entry",
        );
        assert_refused(
            &[TarLayer::new()
                .raw(b".wh.", EntryType::Regular, b"", b"")
                .tar()],
            "whiteout names no entry",
        );
    }
}
