//! Creating what an entry describes: files, directories, symlinks, hard links.

use super::paths::{raw_path, safe_relative_path};
use super::*;

impl Staging {
    pub(super) fn create_entry<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        rel: &Path,
        raw: &[u8],
        kind: EntryType,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        let names_root = rel.as_os_str().is_empty();
        if names_root && kind != EntryType::Directory && !raw.ends_with(b"/") {
            // Only "./" as a directory is harmless; anything else would replace the root.
            return Err(StorageError::unsafe_entry(
                raw_path(raw),
                "entry replaces the module root",
            ));
        }
        match kind {
            EntryType::Directory => self.make_dir(rel, entry_mode(entry, rel)?, layer),
            // Old tars mark directories with a trailing slash on a regular entry.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse
                if raw.ends_with(b"/") =>
            {
                self.make_dir(rel, entry_mode(entry, rel)?, layer)
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.write_file(entry, rel, layer)
            }
            EntryType::Symlink => self.make_symlink(entry, rel, layer),
            EntryType::Link => self.make_hardlink(entry, rel, layer),
            EntryType::Char | EntryType::Block | EntryType::Fifo => Err(
                StorageError::unsafe_entry(rel, "device and fifo entries are not allowed"),
            ),
            other => Err(StorageError::unsafe_entry(
                rel,
                format!("unsupported entry type {:?}", char::from(other.as_byte())),
            )),
        }
    }

    pub(super) fn write_file<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        rel: &Path,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        let size = entry.size();
        self.ensure_room_for(size, rel)?;
        let mode = entry_mode(entry, rel)?;
        self.prepare_parents(rel)?;
        self.make_room(rel)?;
        let full = self.path.join(rel);
        // create_new: never open through something that might still be there.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&full)
            .map_err(StorageError::write(&full))?;
        let copied = self.copy_data(entry, &mut file, rel, &mut layer.buffer)?;
        if copied != size {
            let source = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the layer ends inside this file",
            );
            return Err(StorageError::Read {
                entry: Some(rel.into()),
                source,
            });
        }
        self.modes.insert(rel.into(), mode);
        layer.note_written(rel);
        layer.stats.files += 1;
        layer.stats.bytes += copied;
        self.files += 1;
        self.file_bytes += copied;
        Ok(())
    }

    /// Copies entry data, telling a failing read (the layer) from a failing write (our disk).
    pub(super) fn copy_data(
        &mut self,
        from: &mut impl Read,
        to: &mut fs::File,
        rel: &Path,
        buffer: &mut [u8],
    ) -> Result<u64, StorageError> {
        let mut copied = 0;
        loop {
            let read = read_some(from, buffer, rel)?;
            if read == 0 {
                return Ok(copied);
            }
            self.count_bytes(read, rel)?;
            to.write_all(&buffer[..read])
                .map_err(StorageError::write(self.path.join(rel)))?;
            copied += read as u64;
        }
    }

    pub(super) fn drain_entry(
        &mut self,
        entry: &mut impl Read,
        rel: &Path,
        buffer: &mut [u8],
    ) -> Result<(), StorageError> {
        loop {
            let read = read_some(entry, buffer, rel)?;
            if read == 0 {
                return Ok(());
            }
            self.count_bytes(read, rel)?;
        }
    }

    pub(super) fn make_dir(
        &mut self,
        rel: &Path,
        mode: u32,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        if rel.as_os_str().is_empty() {
            // "./": the module root itself, which we own.
            return Ok(());
        }
        self.prepare_parents(rel)?;
        let full = self.path.join(rel);
        match full.symlink_metadata() {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                fs::remove_file(&full).map_err(StorageError::write(&full))?;
                fs::create_dir(&full).map_err(StorageError::write(&full))?;
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                fs::create_dir(&full).map_err(StorageError::write(&full))?;
            }
            Err(err) => return Err(StorageError::write(&full)(err)),
        }
        self.modes.insert(rel.into(), mode);
        layer.note_written(rel);
        Ok(())
    }

    pub(super) fn make_symlink<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        rel: &Path,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        let target = symlink_target(entry, rel)?;
        // Parents first: resolving the target takes them as real directories, and through a
        // symlinked (say, looping) parent the kernel would answer with errors of its own.
        self.prepare_parents(rel)?;
        if !tree::symlink_stays_inside(&self.path, rel, &target)? {
            let reason = format!("symlink target {target:?} leaves the module root");
            return Err(StorageError::unsafe_entry(rel, reason));
        }
        self.make_room(rel)?;
        let full = self.path.join(rel);
        symlink(&target, &full).map_err(StorageError::write(&full))?;
        self.forget_modes(rel);
        layer.note_written(rel);
        Ok(())
    }

    pub(super) fn make_hardlink<R: Read>(
        &mut self,
        entry: &Entry<'_, R>,
        rel: &Path,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        let raw = entry
            .link_name_bytes()
            .map(|name| name.into_owned())
            .unwrap_or_default();
        let target = safe_relative_path(&raw).map_err(|reason| {
            StorageError::unsafe_entry(
                rel,
                format!("hard link target {:?}: {reason}", raw_path(&raw)),
            )
        })?;
        if rel != target && target.starts_with(rel) {
            let reason = format!("hard link replaces its own target {target:?}");
            return Err(StorageError::unsafe_entry(rel, reason));
        }
        if !self.is_extracted_file(&target)? {
            let reason =
                format!("hard link target {target:?} is not an already extracted regular file");
            return Err(StorageError::unsafe_entry(rel, reason));
        }
        if target == rel {
            // A link to itself leaves the file as it is.
            return Ok(());
        }
        self.prepare_parents(rel)?;
        self.make_room(rel)?;
        let full = self.path.join(rel);
        fs::hard_link(self.path.join(&target), &full).map_err(StorageError::write(&full))?;
        // Both names share one inode, so they share its final mode too.
        if let Some(mode) = self.modes.get(&target).copied() {
            self.modes.insert(rel.into(), mode);
        }
        layer.note_written(rel);
        layer.stats.files += 1;
        self.files += 1;
        Ok(())
    }

    /// A regular file (not a symlink to one) reached through real directories only.
    pub(super) fn is_extracted_file(&self, target: &Path) -> Result<bool, StorageError> {
        if !self.fits_under_staging(target) {
            // No entry that long was unpacked, and asking the kernel would fail as a disk error.
            return Ok(false);
        }
        let reachable = match self.parents_are_dirs(target) {
            Ok(reachable) => reachable,
            // Behind a symlink: not a file we extracted, whatever it resolves to.
            Err(StorageError::Unsafe { .. }) => false,
            Err(err) => return Err(err),
        };
        if target.as_os_str().is_empty() || !reachable {
            return Ok(false);
        }
        let full = self.path.join(target);
        match full.symlink_metadata() {
            Ok(meta) => Ok(meta.is_file()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(err) => Err(StorageError::write(&full)(err)),
        }
    }
}

pub(super) fn symlink_target<R: Read>(
    entry: &Entry<'_, R>,
    rel: &Path,
) -> Result<PathBuf, StorageError> {
    let raw = entry
        .link_name_bytes()
        .map(|name| name.into_owned())
        .unwrap_or_default();
    let reason = if raw.is_empty() {
        "symlink has an empty target"
    } else if raw.contains(&0) {
        "symlink target contains a NUL byte"
    } else if raw.contains(&b'\\') {
        "symlink target contains a backslash"
    } else if raw.len() > MAX_PATH_BYTES {
        "symlink target is longer than 4096 bytes"
    } else {
        return Ok(raw_path(&raw));
    };
    Err(StorageError::unsafe_entry(rel, reason))
}

/// Permission bits only: setuid, setgid and sticky are dropped.
pub(super) fn entry_mode<R: Read>(entry: &Entry<'_, R>, rel: &Path) -> Result<u32, StorageError> {
    let mode = entry.header().mode().map_err(|source| StorageError::Read {
        entry: Some(rel.into()),
        source,
    })?;
    Ok(mode & 0o777)
}

pub(super) fn read_some(
    from: &mut impl Read,
    buffer: &mut [u8],
    rel: &Path,
) -> Result<usize, StorageError> {
    loop {
        match from.read(buffer) {
            Ok(read) => return Ok(read),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(StorageError::Read {
                    entry: Some(rel.into()),
                    source,
                });
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::fs;

    use super::super::test_support::*;
    use super::*;

    #[test]
    fn refuses_symlinks_that_leave_the_root() {
        let link = |target: &[u8]| {
            vec![
                TarLayer::new()
                    .raw(b"l", EntryType::Symlink, target, b"")
                    .tar(),
            ]
        };
        assert_refused(&link(b"../../outside"), "leaves the module root");
        assert_refused(&link(b"/etc"), "leaves the module root");
        assert_refused(&link(b"a/../.."), "leaves the module root");
        assert_refused(&link(b""), "empty target");
        assert_refused(&link(b"a\\b"), "backslash");
        // A chain: `self` is the root, so `self/..` is its parent.
        assert_refused(
            &[TarLayer::new()
                .symlink("self", ".")
                .symlink("l", "self/../outside")
                .tar()],
            "leaves",
        );
        // Across layers, too.
        assert_refused(
            &[
                TarLayer::new().symlink("d", "sub").dir("sub").tar(),
                TarLayer::new().symlink("e", "d/../..").tar(),
            ],
            "leaves",
        );
    }

    #[test]
    fn refuses_hostile_hard_links() {
        let link = |target: &[u8]| TarLayer::new().raw(b"l", EntryType::Link, target, b"");
        assert_refused(&[link(b"../outside/x").tar()], "leaves the module root");
        assert_refused(&[link(b"/etc/passwd").tar()], "absolute path");
        assert_refused(
            &[link(b"missing").tar()],
            "not an already extracted regular file",
        );
        assert_refused(
            &[TarLayer::new()
                .dir("d")
                .raw(b"l", EntryType::Link, b"d", b"")
                .tar()],
            "not an already",
        );
        let through_symlink =
            TarLayer::new()
                .file("f", b"x")
                .symlink("s", "f")
                .raw(b"l", EntryType::Link, b"s", b"");
        assert_refused(&[through_symlink.tar()], "not an already");
        let behind_symlink = TarLayer::new().file("d/f", b"x").symlink("s", "d").raw(
            b"l",
            EntryType::Link,
            b"s/f",
            b"",
        );
        assert_refused(
            &[behind_symlink.tar()],
            r#"refused entry "l": hard link target "s/f""#,
        );
        let own_parent = TarLayer::new()
            .file("d/f", b"x")
            .raw(b"d", EntryType::Link, b"d/f", b"");
        assert_refused(&[own_parent.tar()], "replaces its own target");
    }

    #[test]
    fn refuses_entries_that_replace_the_root() {
        for name in [&b"."[..], b"./.", b""] {
            let file = TarLayer::new()
                .raw(name, EntryType::Regular, b"", b"x")
                .tar();
            assert_refused(&[file], "entry replaces the module root");
        }
        let link = TarLayer::new()
            .file("f", b"")
            .raw(b".", EntryType::Link, b"f", b"");
        assert_refused(&[link.tar()], "entry replaces the module root");
        assert_refused(
            &[TarLayer::new()
                .raw(b".", EntryType::Symlink, b"x", b"")
                .tar()],
            "replaces",
        );
        // Found by the property test once a directory could give way to a symlink: with a
        // trailing slash, a symlink (or hard link) named for the root must still be refused.
        for kind in [EntryType::Symlink, EntryType::Link] {
            let layer = TarLayer::new()
                .file("a", b"")
                .raw(b"./", kind, b"a", b"")
                .tar();
            assert_refused(&[layer], "replaces");
        }
    }

    #[test]
    fn refuses_devices_and_fifos() {
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            assert_refused(
                &[TarLayer::new().raw(b"dev", kind, b"", b"").tar()],
                "device and fifo",
            );
        }
    }

    #[test]
    fn a_later_symlink_cannot_turn_an_earlier_one_hostile() {
        let fixture = Fixture::new();
        // `l -> s/..` is inside while `s` does not exist; `s -> .` then makes it the root's parent.
        let layer = TarLayer::new().symlink("l", "s/..").symlink("s", ".").tar();
        let staging = fixture.unpack(MODULE, &[layer]).unwrap();
        let err = staging.validate(MODULE).unwrap_err();
        assert!(err.to_string().contains(r#"refused entry "l""#), "{err}");
        assert_eq!(err.class(), FailureClass::Download);
        let err = staging.commit(&Default::default()).unwrap_err();
        assert_eq!(err.class(), FailureClass::Download);
        assert!(fixture.module_dir_names(MODULE).is_empty());
    }

    #[test]
    fn takes_names_from_pax_records() {
        let fixture = Fixture::new();
        let name = format!("pax/{}/file", "p".repeat(200));
        let layer = pax_named(TarLayer::new(), name.as_bytes(), b"pax data").tar();
        let staging = fixture.unpack(MODULE, &[layer]).unwrap();
        assert_eq!(fs::read(staging.path().join(&name)).unwrap(), b"pax data");
        assert!(!staging.path().join("placeholder").exists());

        assert_refused(
            &[pax_named(TarLayer::new(), b"../../outside/x", b"x").tar()],
            "leaves the module root",
        );
        assert_refused(&[pax_named(TarLayer::new(), b"a\0b", b"x").tar()], "NUL");
    }
}
