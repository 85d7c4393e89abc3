// Test-only module: included from storage/mod.rs under #[cfg(test)].
//! Test helpers: in-memory tar layers (from tests/support/layers.rs) and a store in a temp dir.

use std::{
    fs,
    io::{self, Read},
    path::{Path, PathBuf},
};

use tempfile::TempDir;

use super::{LayerCompression, Limits, ModuleStore, Staging, StorageError};
use crate::digest::Digest;

/// The tests' one layer builder, shared with the integration tests, benches and the demo.
#[path = "../../tests/support/layers.rs"]
mod layers;

pub use layers::{TarLayer, header, pax_record, zstd};

/// Gzip at the fast level, as [`TarLayer::gzip`] does.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    layers::gzip(bytes, flate2::Compression::fast())
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
