//! Pushes a directory as a one-layer module image, with the test harness's own image builder
//! (tests/support/images.rs and layers.rs), and prints the manifest digest. The demo uses it:
//!
//! ```text
//! cargo run -q --example push-module -- DIR http://127.0.0.1:5000 deckhouse/modules/echo main-patch-03354
//! ```
//!
//! Files keep their permission bits; symlinks are pushed as symlinks; the tar is deterministic
//! (fixed mtime and owner), so the same directory always gives the same digest.

#[path = "../tests/support/images.rs"]
mod images;
#[path = "../tests/support/layers.rs"]
mod layers;
#[path = "../tests/support/registry.rs"]
mod registry;
#[path = "../tests/support/token_server.rs"]
mod token_server;

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

use images::{ModuleImage, PushTarget, push_to};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, url, repository, tag] = args.as_slice() else {
        bail!("usage: push-module DIR http(s)://HOST[:PORT] REPOSITORY TAG");
    };
    let (https, host) = match url.split_once("://") {
        Some(("http", host)) => (false, host),
        Some(("https", host)) => (true, host),
        _ => bail!("the registry URL must start with http:// or https://, got {url:?}"),
    };
    let image = image_of(Path::new(dir))?;
    let target = PushTarget {
        https,
        ca_pem: None,
        credentials: None,
    };
    let digest = push_to(
        &target,
        host.trim_end_matches('/'),
        repository,
        tag,
        &image.build()?,
    )
    .await
    .with_context(|| format!("pushing {dir} to {host}/{repository}:{tag}"))?;
    println!("{digest}");
    Ok(())
}

/// Every file and symlink under `root`, in name order.
fn image_of(root: &Path) -> Result<ModuleImage> {
    let mut image = ModuleImage::new();
    for path in walk(root)? {
        let rel = path
            .strip_prefix(root)
            .context("a path outside the directory")?;
        let rel = rel.to_str().context("a non-UTF-8 file name")?;
        let meta = fs::symlink_metadata(&path).with_context(|| format!("reading {rel}"))?;
        if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).with_context(|| format!("reading link {rel}"))?;
            let target = target.to_str().context("a non-UTF-8 link target")?;
            image = image.symlink(rel, target);
        } else if meta.is_file() {
            let data = fs::read(&path).with_context(|| format!("reading {rel}"))?;
            image = image.file_with_mode(rel, data, meta.permissions().mode() & 0o777);
        }
    }
    Ok(image)
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut entries: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .with_context(|| format!("listing {}", dir.display()))?;
    entries.sort();
    let mut all = Vec::new();
    for path in entries {
        let is_dir = fs::symlink_metadata(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .is_dir();
        if is_dir {
            all.extend(walk(&path)?);
        } else {
            all.push(path);
        }
    }
    Ok(all)
}
