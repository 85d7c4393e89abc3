// Test-only module: included from storage/mod.rs under #[cfg(test)].
//! Test helpers: in-memory tar layers (hostile ones included) and a store in a temp dir.

use std::{
    fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use tar::{EntryType, Header};
use tempfile::TempDir;

use super::{LayerCompression, Limits, ModuleStore, Staging, StorageError};
use crate::digest::Digest;

/// Builds a tar stream entry by entry.
pub struct TarLayer {
    builder: tar::Builder<Vec<u8>>,
}

impl TarLayer {
    pub fn new() -> Self {
        Self {
            builder: tar::Builder::new(Vec::new()),
        }
    }

    pub fn file(self, path: &str, data: &[u8]) -> Self {
        self.file_mode(path, data, 0o644)
    }

    pub fn file_mode(mut self, path: &str, data: &[u8], mode: u32) -> Self {
        let mut header = header(EntryType::Regular, mode);
        header.set_size(data.len() as u64);
        self.builder.append_data(&mut header, path, data).unwrap();
        self
    }

    pub fn dir(self, path: &str) -> Self {
        self.dir_mode(path, 0o755)
    }

    pub fn dir_mode(mut self, path: &str, mode: u32) -> Self {
        let mut header = header(EntryType::Directory, mode);
        self.builder
            .append_data(&mut header, path, io::empty())
            .unwrap();
        self
    }

    pub fn symlink(mut self, path: &str, target: &str) -> Self {
        let mut header = header(EntryType::Symlink, 0o777);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    pub fn hardlink(mut self, path: &str, target: &str) -> Self {
        let mut header = header(EntryType::Link, 0o644);
        self.builder.append_link(&mut header, path, target).unwrap();
        self
    }

    /// An entry written byte for byte, for names `tar::Builder` refuses to write.
    pub fn raw(mut self, name: &[u8], kind: EntryType, link: &[u8], data: &[u8]) -> Self {
        let mut header = header(kind, 0o644);
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    /// A GNU long-name record followed by a regular file, so that the name can hold any byte.
    pub fn long_named_file(mut self, name: &[u8], data: &[u8]) -> Self {
        let mut long = Header::new_gnu();
        long.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut record = name.to_vec();
        record.push(0);
        self.builder.append(&long, &record[..]).unwrap();
        self.raw(b"placeholder", EntryType::Regular, b"", data)
    }

    /// Any header (PAX records, odd types) with its data as is.
    pub fn header_with_data(mut self, header: &Header, data: &[u8]) -> Self {
        self.builder.append(header, data).unwrap();
        self
    }

    pub fn tar(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }

    pub fn gzip(self) -> Vec<u8> {
        gzip(&self.tar())
    }
}

pub fn header(kind: EntryType, mode: u32) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_mtime(1_700_000_000);
    header.set_size(0);
    header.set_cksum();
    header
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A store at `<tmp>/root`, with an empty sibling `<tmp>/outside` that must stay empty.
pub struct Fixture {
    pub dir: TempDir,
    pub store: ModuleStore,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("outside")).unwrap();
        let store = ModuleStore::new(dir.path().join("root"), limits);
        Self { dir, store }
    }

    pub fn root(&self) -> &Path {
        self.store.root()
    }

    pub fn stage(&self, module: &str, digest: &Digest) -> Staging {
        self.store.stage(module, digest).unwrap()
    }

    /// Unpacks `layers` (plain tar) into a fresh staging of `module`.
    pub fn unpack(&self, module: &str, layers: &[Vec<u8>]) -> Result<Staging, StorageError> {
        let mut staging = self.stage(module, &Digest::of(module.as_bytes()));
        for layer in layers {
            staging.apply_layer(&layer[..], LayerCompression::None)?;
        }
        Ok(staging)
    }

    /// Stages, validates and commits one plain layer as `digest`.
    pub fn install(&self, module: &str, digest: &Digest, layer: Vec<u8>) -> super::Installed {
        let mut staging = self.stage(module, digest);
        staging
            .apply_layer(&layer[..], LayerCompression::None)
            .unwrap();
        let info = staging.validate(module).unwrap();
        staging.commit(&info).unwrap()
    }

    pub fn assert_outside_untouched(&self) {
        let outside: Vec<_> = fs::read_dir(self.dir.path().join("outside"))
            .unwrap()
            .collect();
        assert!(
            outside.is_empty(),
            "something was written outside the store: {outside:?}"
        );
        let siblings: Vec<PathBuf> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into())
            .collect();
        assert!(
            siblings
                .iter()
                .all(|n| n == Path::new("root") || n == Path::new("outside")),
            "{siblings:?}"
        );
    }

    /// Entry names directly under `<root>/<module>`.
    pub fn module_dir_names(&self, module: &str) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(self.root().join(module)) {
            Ok(listing) => listing
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

/// Hands out `bytes`, then fails at EOF like a reader whose digest check failed.
pub struct FailAtEof<'a> {
    pub bytes: &'a [u8],
    pub consumed: usize,
}

impl Read for FailAtEof<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.bytes.read(buf)?;
        self.consumed += read;
        if read == 0 && !buf.is_empty() {
            return Err(io::Error::other(
                "blob digest mismatch: expected sha256:aa, got sha256:bb",
            ));
        }
        Ok(read)
    }
}

/// Counts what was read through it.
pub struct Counting<R> {
    pub inner: R,
    pub consumed: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.consumed += read as u64;
        Ok(read)
    }
}

/// Whether chmod actually stops us (it does not for root).
pub fn permissions_are_enforced(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let probe = dir.join("probe");
    fs::create_dir(&probe).unwrap();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o555)).unwrap();
    let enforced = fs::write(probe.join("f"), b"").is_err();
    fs::set_permissions(&probe, fs::Permissions::from_mode(0o755)).unwrap();
    fs::remove_dir_all(&probe).unwrap();
    enforced
}
