//! The install pipeline (SPEC §6): manifest → compressed-size check → stage → layers in order →
//! validate → commit. The one path that the controller, the benchmarks and the CLI run, so that
//! what is measured and tested is what the operator does. Bytes stream from the socket through
//! the digest check and gunzip into files; nothing is switched in unless every step succeeded,
//! and dropping the staging directory on any failure leaves the active version untouched.
//!
//! Knows nothing about Kubernetes (tests/layering.rs checks it).

use std::time::{Duration, Instant};

use tokio_util::io::SyncIoBridge;
use tracing::info;

use crate::{
    Digest,
    registry::{BodyFailure, LayerMediaType, ModuleRef, Registry, RegistryError},
    storage::{
        FailureClass, Installed, LayerCompression, ModuleInfo, ModuleStore, Staging, StorageError,
    },
};

/// What an install did, for logs and metrics.
#[derive(Clone, Debug)]
pub struct Report {
    pub installed: Installed,
    pub info: ModuleInfo,
    /// Compressed bytes of all layers, as the manifest lists them (each was read and verified).
    pub downloaded_bytes: u64,
    pub layers: usize,
    /// From the manifest request to the switch.
    pub took: Duration,
}

/// Why an install failed. Display is one line without secrets; [`InstallError::class`] says
/// which status message of SPEC §5 it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The manifest or a blob request failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("image is {size} bytes compressed, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    /// A layer body broke or did not match its digest or size while it was being unpacked: the
    /// message is the unpacker's (it names the entry), the cause the registry layer's.
    #[error("{unpack}")]
    LayerBody {
        unpack: StorageError,
        #[source]
        cause: RegistryError,
    },
    /// The image content or our own disk refused (see [`StorageError::class`]).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The blocking unpack task panicked or was cancelled.
    #[error("the unpack task stopped: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl InstallError {
    pub fn class(&self) -> FailureClass {
        match self {
            Self::Storage(err) => err.class(),
            _ => FailureClass::Download,
        }
    }

    /// A broken connection, a 5xx or our own disk may recover by themselves; bad content not.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Registry(err) | Self::LayerBody { cause: err, .. } => err.is_transient(),
            Self::TooLarge { .. } => false,
            Self::Storage(err) => err.class() == FailureClass::Store,
            Self::Task(_) => true,
        }
    }

    /// The registry's `Retry-After`, when it sent one with this failure.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Registry(err) | Self::LayerBody { cause: err, .. } => err.retry_after(),
            _ => None,
        }
    }
}

/// Told how far a download is, for a progress display. Called from the download task.
pub trait Progress: Send + Sync {
    /// Before the first blob: the compressed bytes of all layers.
    fn started(&self, total_bytes: u64);
    /// Another `bytes` of layer data arrived (and went into the digest check).
    fn advanced(&self, bytes: u64);
}

/// A downloaded, unpacked tree not yet switched in: validate and commit it, keep it elsewhere
/// ([`Staging::keep_as`]), or drop it (which removes it).
#[derive(Debug)]
pub struct Downloaded {
    pub staging: Staging,
    /// Compressed bytes of all layers, as the manifest lists them (each was read and verified).
    pub bytes: u64,
    pub layers: usize,
    started: Instant,
}

/// Downloads `image` at `digest` into `store` and switches it in. `max_compressed_size` is
/// checked against the manifest before any blob is requested.
pub async fn install(
    registry: &Registry,
    store: &ModuleStore,
    image: &ModuleRef,
    digest: &Digest,
    max_compressed_size: u64,
) -> Result<Report, InstallError> {
    install_reporting(registry, store, image, digest, max_compressed_size, None).await
}

/// [`install`], telling `progress` of every chunk of layer data (the operator's liveness check
/// counts a download that moves as progress).
pub async fn install_reporting(
    registry: &Registry,
    store: &ModuleStore,
    image: &ModuleRef,
    digest: &Digest,
    max_compressed_size: u64,
    progress: Option<std::sync::Arc<dyn Progress>>,
) -> Result<Report, InstallError> {
    let downloaded = download(
        registry,
        store,
        image,
        digest,
        max_compressed_size,
        progress,
    )
    .await?;
    switch_in(downloaded, image, digest).await
}

/// Switches `digest` back in from the versions kept on disk, without a registry request:
/// `None` when it is not kept (then it must be downloaded).
pub async fn switch_to_kept(
    store: &ModuleStore,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<Option<Report>, InstallError> {
    if !store.has_version(image.module(), digest) {
        return Ok(None);
    }
    let started = Instant::now();
    let (store, module, wanted) = (store.clone(), image.module().to_owned(), digest.clone());
    let switched = tokio::task::spawn_blocking(move || {
        let info = store.version_info(&module, &wanted)?;
        let installed = store.switch_to(&module, &wanted)?;
        Ok::<_, StorageError>((installed, info))
    })
    .await?;
    let (installed, info) = switched?;
    info!(image = %image.at_digest(digest), weight = info.weight, "switched back to a kept version");
    Ok(Some(Report {
        installed,
        info,
        downloaded_bytes: 0,
        layers: 0,
        took: started.elapsed(),
    }))
}

/// Every step of [`install`] up to validation: manifest, size check, staging, layers in order.
pub async fn download(
    registry: &Registry,
    store: &ModuleStore,
    image: &ModuleRef,
    digest: &Digest,
    max_compressed_size: u64,
    progress: Option<std::sync::Arc<dyn Progress>>,
) -> Result<Downloaded, InstallError> {
    let started = Instant::now();
    let manifest = registry.manifest(image, digest).await?;
    let size = manifest.compressed_size();
    if size > max_compressed_size {
        return Err(InstallError::TooLarge {
            size,
            limit: max_compressed_size,
        });
    }
    info!(image = %image.at_digest(digest), bytes = size, layers = manifest.layers.len(), "downloading");
    if let Some(progress) = &progress {
        progress.started(size);
    }
    let mut staging = store.stage(image.module(), digest)?;
    for layer in &manifest.layers {
        let (reader, failure) = registry.layer_reader(image, layer).await?;
        let compression = match layer.media_type {
            LayerMediaType::TarGzip => LayerCompression::Gzip,
            LayerMediaType::TarZstd => LayerCompression::Zstd,
            LayerMediaType::Tar => LayerCompression::None,
        };
        let reader = Counted {
            inner: reader,
            progress: progress.clone(),
        };
        staging = apply_layer_blocking(staging, reader, failure, compression).await?;
    }
    Ok(Downloaded {
        staging,
        bytes: size,
        layers: manifest.layers.len(),
        started,
    })
}

/// Validates a downloaded tree as the module `image.module()` and makes it the active version.
pub async fn switch_in(
    downloaded: Downloaded,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<Report, InstallError> {
    let Downloaded {
        staging,
        bytes,
        layers,
        started,
    } = downloaded;
    let (installed, info) = commit_blocking(staging, image.module().to_owned()).await?;
    let report = Report {
        installed,
        info,
        downloaded_bytes: bytes,
        layers,
        took: started.elapsed(),
    };
    info!(
        image = %image.at_digest(digest),
        files = report.installed.files,
        bytes = report.installed.bytes,
        weight = report.info.weight,
        seconds = report.took.as_secs_f64(),
        "unpacked and switched in"
    );
    Ok(report)
}

/// A layer body that reports each chunk to a [`Progress`].
struct Counted<R> {
    inner: R,
    progress: Option<std::sync::Arc<dyn Progress>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Counted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if let (Some(progress), true) = (&self.progress, read > 0) {
            progress.advanced(read as u64);
        }
        polled
    }
}

/// The unpacker is synchronous (tar, flate2), so it runs on a blocking thread reading the
/// async body through a bridge.
async fn apply_layer_blocking(
    mut staging: Staging,
    reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    failure: BodyFailure,
    compression: LayerCompression,
) -> Result<Staging, InstallError> {
    let applied = tokio::task::spawn_blocking(move || {
        let bridge = SyncIoBridge::new(reader);
        staging.apply_layer(bridge, compression).map(|_| staging)
    })
    .await?;
    applied.map_err(|unpack| match failure.take() {
        Some(cause) => InstallError::LayerBody { unpack, cause },
        None => InstallError::Storage(unpack),
    })
}

async fn commit_blocking(
    staging: Staging,
    module: String,
) -> Result<(Installed, ModuleInfo), InstallError> {
    let committed = tokio::task::spawn_blocking(move || {
        let info = staging.validate(&module)?;
        let installed = staging.commit(&info)?;
        Ok::<_, StorageError>((installed, info))
    })
    .await?;
    Ok(committed?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_error(transient: bool) -> RegistryError {
        if transient {
            RegistryError::Stalled(Duration::from_secs(30))
        } else {
            RegistryError::BlobSize {
                expected: 3,
                seen: 2,
            }
        }
    }

    #[test]
    fn a_broken_body_is_transient_and_keeps_the_unpackers_message() {
        let unpack = StorageError::read(std::io::Error::other("timed out"));
        let err = InstallError::LayerBody {
            unpack,
            cause: body_error(true),
        };
        assert!(err.is_transient());
        assert_eq!(err.class(), FailureClass::Download);
        assert_eq!(err.to_string(), "cannot read the layer: timed out");
        let source = std::error::Error::source(&err).expect("cause");
        assert!(source.to_string().contains("no data from the registry"));
    }

    #[test]
    fn bad_bytes_and_bad_images_are_permanent_our_disk_is_not() {
        let mismatch = InstallError::LayerBody {
            unpack: StorageError::read(std::io::Error::other("x")),
            cause: body_error(false),
        };
        assert!(!mismatch.is_transient());
        let too_large = InstallError::TooLarge { size: 2, limit: 1 };
        assert!(!too_large.is_transient());
        assert_eq!(
            too_large.to_string(),
            "image is 2 bytes compressed, over the limit of 1 bytes"
        );
        let disk = InstallError::Storage(StorageError::write("/d")(std::io::Error::from(
            std::io::ErrorKind::StorageFull,
        )));
        assert!(disk.is_transient());
        assert_eq!(disk.class(), FailureClass::Store);
    }
}
