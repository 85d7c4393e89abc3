//! Streaming, refusing unpack of one tar layer into a staging directory (SPEC §6).
//!
//! One idea a file: [`entries`] creates files, directories and links; [`paths`] checks names
//! and walks parents; [`whiteouts`] applies OCI whiteouts; [`stream`] meters and drains the
//! (decompressed) layer stream. This file drives them entry by entry and counts the limits.
//!
//! Entries are created by hand rather than with `tar::Entry::unpack`, for two reasons: every
//! failure must be told apart as the stream's fault (`Read`: the download failed) or our disk's
//! (`Write`: we cannot store), and the safety rules are stricter than tar's own.

mod entries;
mod paths;
mod stream;
#[cfg(test)]
mod test_support;
mod whiteouts;

use std::{
    cell::Cell,
    collections::HashSet,
    ffi::OsStr,
    fs,
    io::{self, Read, Write},
    ops::Bound,
    os::unix::{
        ffi::OsStrExt,
        fs::{OpenOptionsExt, symlink},
    },
    path::{Path, PathBuf},
    rc::Rc,
};

use tar::{Archive, Entry, EntryType};

use super::{LayerCompression, LayerStats, LimitKind, Staging, StorageError, tree};
use paths::{raw_path, safe_relative_path};
use stream::{
    Codec, HeaderBudget, Metered, check_trailer, decompress_on_a_thread, finish, open_archive,
    stream_error,
};
use whiteouts::whiteout_of;

/// Fixed copy buffer: memory does not grow with the size of a file or layer.
const COPY_BUFFER_BYTES: usize = 64 * 1024;
/// tar reads GNU long names and PAX records of an entry into memory; this caps that.
const MAX_HEADER_BYTES: u64 = 1024 * 1024;
/// Linux's PATH_MAX and NAME_MAX: longer names cannot be created anyway.
const MAX_PATH_BYTES: usize = 4096;
const MAX_NAME_BYTES: usize = 255;
/// Decompressed bytes read after the tar end-of-archive marker (tar pads to 10 KiB records).
const MAX_TRAILER_BYTES: u64 = 1024 * 1024;

const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// `.wh..wh.*` names are whiteout metadata (aufs); only the opaque marker means something.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

impl Staging {
    /// Applies one tar layer (gzip, zstd or plain) on top of the previous ones, honouring OCI whiteouts.
    ///
    /// Reads `reader` to EOF even after the tar end-of-archive marker: a verifying reader only
    /// reports a digest or size mismatch at EOF, and that verdict must not be skipped.
    pub fn apply_layer(
        &mut self,
        reader: impl Read + Send,
        compression: LayerCompression,
    ) -> Result<LayerStats, StorageError> {
        let budget = HeaderBudget::default();
        let codec = match compression {
            LayerCompression::Gzip => Codec::Gzip,
            LayerCompression::Zstd => Codec::Zstd,
            LayerCompression::None => {
                let mut archive = open_archive(reader, &budget);
                let outcome = self.unpack_archive(&mut archive, &budget);
                return finish(outcome, archive.into_inner().inner);
            }
        };
        decompress_on_a_thread(reader, codec, |decoded| {
            let mut archive = open_archive(decoded, &budget);
            let outcome = self.unpack_archive(&mut archive, &budget);
            let decoded = archive.into_inner().inner;
            outcome.and_then(|stats| check_trailer(decoded).map(|()| stats))
        })
    }

    fn unpack_archive<R: Read>(
        &mut self,
        archive: &mut Archive<Metered<R>>,
        budget: &HeaderBudget,
    ) -> Result<LayerStats, StorageError> {
        let mut layer = Layer::default();
        let mut entries = archive.entries().map_err(|source| StorageError::Read {
            entry: None,
            source,
        })?;
        loop {
            // Only while tar parses headers on its own is its reading capped; entry data is
            // read (and counted) by us below.
            budget.restrict(MAX_HEADER_BYTES);
            let next = entries.next();
            budget.lift();
            match next {
                None => return Ok(layer.stats),
                Some(Err(err)) => return Err(stream_error(err)),
                Some(Ok(mut entry)) => self.apply_entry(&mut entry, &mut layer)?,
            }
        }
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut Entry<'_, R>,
        layer: &mut Layer,
    ) -> Result<(), StorageError> {
        let raw = entry.path_bytes().into_owned();
        let rel = safe_relative_path(&raw)
            .map_err(|reason| StorageError::unsafe_entry(raw_path(&raw), reason))?;
        if !self.fits_under_staging(&rel) {
            // Otherwise the kernel's ENAMETOOLONG would blame our disk for the image's name.
            return Err(StorageError::unsafe_entry(
                raw_path(&raw),
                "path is too long to unpack under the download directory",
            ));
        }
        self.count_entry(&rel)?;
        let kind = entry.header().entry_type();
        match whiteout_of(&rel)? {
            Some(whiteout) => self.apply_whiteout(&rel, whiteout, layer)?,
            None if kind.is_pax_global_extensions() => {}
            None => self.create_entry(entry, &rel, &raw, kind, layer)?,
        }
        // Data tar would otherwise skip inside `next()` (where reading is capped), e.g. a
        // directory with a body: read it here and count it against the size limit.
        self.drain_entry(entry, &rel, &mut layer.buffer)
    }

    fn count_entry(&mut self, rel: &Path) -> Result<(), StorageError> {
        self.entries += 1;
        let limit = self.store.limits.max_entries;
        if self.entries > limit {
            return Err(StorageError::Limit {
                kind: LimitKind::Entries,
                limit,
                entry: Some(rel.into()),
            });
        }
        Ok(())
    }

    /// Refuses before writing anything when the header already announces too much data.
    fn ensure_room_for(&self, size: u64, rel: &Path) -> Result<(), StorageError> {
        let limit = self.store.limits.max_unpacked_bytes;
        if self.unpacked_bytes.saturating_add(size) > limit {
            return Err(StorageError::Limit {
                kind: LimitKind::UnpackedBytes,
                limit,
                entry: Some(rel.into()),
            });
        }
        Ok(())
    }

    fn count_bytes(&mut self, bytes: usize, rel: &Path) -> Result<(), StorageError> {
        let bytes = bytes as u64;
        self.ensure_room_for(bytes, rel)?;
        self.unpacked_bytes += bytes;
        Ok(())
    }
}

/// Per-layer state.
struct Layer {
    stats: LayerStats,
    /// Paths this layer created, with their ancestors: whiteouts only hide lower layers.
    written: HashSet<PathBuf>,
    buffer: Vec<u8>,
}

impl Default for Layer {
    fn default() -> Self {
        Self {
            stats: LayerStats::default(),
            written: HashSet::new(),
            buffer: vec![0; COPY_BUFFER_BYTES],
        }
    }
}

impl Layer {
    fn note_written(&mut self, rel: &Path) {
        for path in rel.ancestors().filter(|path| !path.as_os_str().is_empty()) {
            if !self.written.insert(path.to_path_buf()) {
                // Its ancestors were noted with it.
                break;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::{fs, os::unix::fs::PermissionsExt, path::Path};

    use super::test_support::*;
    use super::*;
    use crate::digest::Digest;

    #[test]
    fn unpacks_plain_and_gzip_layers_byte_for_byte() {
        let fixture = Fixture::new();
        for (layer, compression) in [
            (sample_layer().tar(), LayerCompression::None),
            (sample_layer().gzip(), LayerCompression::Gzip),
        ] {
            let mut staging = fixture.stage(MODULE, &Digest::of(&layer));
            let stats = staging.apply_layer(&layer[..], compression).unwrap();
            assert_eq!(stats.files, 5, "{compression:?}");
            assert_eq!(stats.bytes, 17 + (1 << 20) + 4);
            assert_sample_unpacked(staging.path());
        }
        fixture.assert_outside_untouched();
    }

    #[test]
    fn later_entries_replace_earlier_ones() {
        let fixture = Fixture::new();
        let layer = TarLayer::new()
            .file("a", b"first")
            .file("a", b"second")
            .file("b", b"file")
            .dir("b")
            .file("b/c", b"child")
            .symlink("s", "a")
            .file("s", b"no longer a link")
            .file("h", b"shared")
            .hardlink("h2", "h")
            .file("h", b"replaced, not overwritten")
            .tar();
        let staging = fixture.unpack(MODULE, &[layer]).unwrap();
        let root = staging.path();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"second");
        assert_eq!(fs::read(root.join("b/c")).unwrap(), b"child");
        assert!(root.join("s").symlink_metadata().unwrap().is_file());
        assert_eq!(fs::read(root.join("h2")).unwrap(), b"shared");
        assert_eq!(
            fs::read(root.join("h")).unwrap(),
            b"replaced, not overwritten"
        );
    }

    #[test]
    fn counts_entries_across_layers() {
        let limits = Limits {
            max_entries: 3,
            ..Limits::default()
        };
        let two = || TarLayer::new().dir("d").file("d/f", b"").tar();
        let err = limit_error(limits, &[two(), two()]);
        assert!(
            matches!(
                err,
                StorageError::Limit {
                    kind: LimitKind::Entries,
                    limit: 3,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            r#"number of entries exceeds the limit of 3 at entry "d/f""#
        );
        let fixture = Fixture::with_limits(limits);
        fixture
            .unpack(
                MODULE,
                &[TarLayer::new()
                    .dir("d")
                    .file("d/f", b"")
                    .file("g", b"")
                    .tar()],
            )
            .unwrap();
    }

    #[test]
    fn counts_bytes_across_layers_and_entry_kinds() {
        let limits = Limits {
            max_unpacked_bytes: 1000,
            ..Limits::default()
        };
        let err = limit_error(
            limits,
            &[
                TarLayer::new().file("a", &[1; 600]).tar(),
                TarLayer::new().file("b", &[1; 600]).tar(),
            ],
        );
        assert!(
            matches!(
                err,
                StorageError::Limit {
                    kind: LimitKind::UnpackedBytes,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("unpacked size exceeds the limit of 1000 bytes"),
            "{err}"
        );
        // Data attached to a directory entry is not free either.
        let mut dir = header(EntryType::Directory, 0o755);
        dir.set_path("d").unwrap();
        dir.set_size(5000);
        dir.set_cksum();
        let err = limit_error(
            limits,
            &[TarLayer::new().header_with_data(&dir, &[0; 5000]).tar()],
        );
        assert!(
            matches!(
                err,
                StorageError::Limit {
                    kind: LimitKind::UnpackedBytes,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn staging_can_move_to_a_blocking_thread() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Staging>();
        assert_send::<StorageError>();
    }

    #[test]
    fn keeps_modes_out_of_the_way_until_commit() {
        let fixture = Fixture::new();
        let lower = TarLayer::new()
            .dir_mode("ro", 0o555)
            .file_mode("ro/f", b"x", 0o4755)
            .tar();
        let upper = TarLayer::new().file("ro/g", b"y").tar();
        let staging = fixture.unpack(MODULE, &[lower, upper]).unwrap();
        assert_eq!(staging.modes.get(Path::new("ro")), Some(&0o555));
        assert_eq!(
            staging.modes.get(Path::new("ro/f")),
            Some(&0o755),
            "setuid dropped"
        );
        let mode = |p: &str| {
            staging
                .path()
                .join(p)
                .symlink_metadata()
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("ro/f") & 0o7000, 0);
    }
}
