// TEMPORARY stub of the storage contract so the rest compiles while the real layer is written.
#![allow(dead_code, unused_variables, clippy::all)]
use crate::Digest;
use std::path::{Path, PathBuf};
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("read: {0}")]
    Read(std::io::Error),
}
impl StorageError {
    pub fn class(&self) -> FailureClass {
        FailureClass::Download
    }
    pub fn read(e: std::io::Error) -> Self {
        Self::Read(e)
    }
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    Download,
    InvalidModule,
    Store,
}
pub struct Limits {
    pub max_unpacked_bytes: u64,
    pub max_entries: u64,
}
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerCompression {
    Gzip,
    None,
}
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleInfo {
    pub weight: u32,
}
#[derive(Clone, Debug)]
pub struct Installed {
    pub digest: Digest,
    pub path: PathBuf,
    pub files: u64,
    pub bytes: u64,
}
#[derive(Clone, Debug)]
pub struct ModuleStore {
    root: PathBuf,
}
#[derive(Clone, Debug, Default)]
pub struct LayerStats {
    pub files: u64,
    pub bytes: u64,
}
impl ModuleStore {
    pub fn new(root: impl Into<PathBuf>, limits: Limits) -> Self {
        Self { root: root.into() }
    }
    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn sweep(&self) -> Result<usize, StorageError> {
        Ok(0)
    }
    pub fn is_active(&self, module: &str, digest: &Digest) -> bool {
        false
    }
    pub fn active(&self, module: &str) -> Option<Digest> {
        None
    }
    pub fn stage(&self, module: &str, digest: &Digest) -> Result<Staging, StorageError> {
        Ok(Staging {
            p: self.root.clone(),
        })
    }
}
pub struct Staging {
    p: PathBuf,
}
impl Staging {
    pub fn path(&self) -> &Path {
        &self.p
    }
    pub fn apply_layer(
        &mut self,
        reader: impl std::io::Read,
        c: LayerCompression,
    ) -> Result<LayerStats, StorageError> {
        Ok(LayerStats::default())
    }
    pub fn validate(&self, module: &str) -> Result<ModuleInfo, StorageError> {
        Ok(ModuleInfo { weight: 900 })
    }
    pub fn commit(self, info: &ModuleInfo) -> Result<Installed, StorageError> {
        Err(StorageError::Read(std::io::Error::other("stub")))
    }
}
