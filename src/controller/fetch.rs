//! Step 5 of a pass: download the image by digest, unpack it layer by layer into a staging
//! directory, validate it and switch it in. Bytes stream from the socket through the digest
//! check and gunzip into files; nothing is switched in unless every step succeeded.

use std::time::Instant;

use tokio_util::io::SyncIoBridge;
use tracing::info;

use super::{Context, PassError};
use crate::{
    Digest,
    registry::{LayerMediaType, ModuleRef, Registry, RegistryError},
    storage::{Installed, LayerCompression, ModuleInfo, Staging},
};

pub async fn download_and_install(
    ctx: &Context,
    registry: &Registry,
    image: &ModuleRef,
    digest: &Digest,
) -> Result<(Installed, ModuleInfo), PassError> {
    let manifest = registry
        .manifest(image, digest)
        .await
        .map_err(|e| PassError::download(image, digest, e))?;
    let size = manifest.compressed_size();
    let limit = ctx.settings.limits.max_compressed_size;
    if size > limit {
        return Err(PassError::download(
            image,
            digest,
            RegistryError::TooLarge { size, limit },
        ));
    }
    info!(image = %image.at_digest(digest), bytes = size, layers = manifest.layers.len(), "downloading");
    let started = Instant::now();
    let mut staging = ctx
        .store
        .stage(image.module(), digest)
        .map_err(|e| PassError::from_storage(image, digest, e))?;
    for layer in &manifest.layers {
        let reader = registry
            .layer_reader(image, layer)
            .await
            .map_err(|e| PassError::download(image, digest, e))?;
        let compression = match layer.media_type {
            LayerMediaType::TarGzip => LayerCompression::Gzip,
            LayerMediaType::Tar => LayerCompression::None,
        };
        staging = apply_layer_blocking(staging, reader, compression)
            .await
            .map_err(|e| PassError::from_storage(image, digest, e))?;
        ctx.metrics.bytes_downloaded(layer.size);
    }
    let module = image.module().to_owned();
    let (installed, info_) = commit_blocking(staging, module)
        .await
        .map_err(|e| PassError::from_storage(image, digest, e))?;
    ctx.metrics.unpacked(started.elapsed());
    info!(
        image = %image.at_digest(digest),
        files = installed.files,
        bytes = installed.bytes,
        weight = info_.weight,
        seconds = started.elapsed().as_secs_f64(),
        "unpacked and switched in"
    );
    Ok((installed, info_))
}

/// The unpacker is synchronous (tar, flate2), so it runs on a blocking thread reading the
/// async body through a bridge.
async fn apply_layer_blocking(
    mut staging: Staging,
    reader: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    compression: LayerCompression,
) -> Result<Staging, crate::storage::StorageError> {
    let joined = tokio::task::spawn_blocking(move || {
        let bridge = SyncIoBridge::new(reader);
        staging.apply_layer(bridge, compression).map(|_| staging)
    })
    .await;
    joined.map_err(|e| crate::storage::StorageError::read(std::io::Error::other(e.to_string())))?
}

async fn commit_blocking(
    staging: Staging,
    module: String,
) -> Result<(Installed, ModuleInfo), crate::storage::StorageError> {
    let joined = tokio::task::spawn_blocking(move || {
        let info = staging.validate(&module)?;
        let installed = staging.commit(&info)?;
        Ok((installed, info))
    })
    .await;
    joined.map_err(|e| crate::storage::StorageError::read(std::io::Error::other(e.to_string())))?
}
