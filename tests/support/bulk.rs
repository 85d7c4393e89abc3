//! Many overrides at once, for the benchmarks (benches/scale.rs, benches/push.rs): their images
//! pushed, the objects created through the API, and a watch until all are ready.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::{StreamExt, TryStreamExt};
use kube::{Api, api::PostParams};
use mpo_operator::crd::{ModulePullOverride, ModulePullOverrideSpec, ScanInterval};

use super::{
    TestId,
    images::{ModuleImage, push},
    registry::TestRegistry,
    scenario::REPO_PATH,
};

/// Small distinct module images, eight pushes at a time.
pub async fn push_images(registry: &TestRegistry, modules: &[String]) -> Result<()> {
    futures::stream::iter(modules)
        .map(|module| async move {
            let image = ModuleImage::module(module, 900, module);
            push(registry, &format!("{REPO_PATH}/{module}"), "dev", &image).await
        })
        .buffer_unordered(8)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// A cosign key pair made with the real cosign (empty password), for signing many images.
pub struct CosignSigner {
    cosign: std::path::PathBuf,
    dir: tempfile::TempDir,
    /// cosign v3 writes a Sigstore bundle referrer; v2 the classic `.sig` tag.
    v3: bool,
}

impl CosignSigner {
    pub fn new(cosign: std::path::PathBuf, v3: bool) -> Result<Self> {
        let signer = Self {
            cosign,
            dir: tempfile::tempdir()?,
            v3,
        };
        std::fs::create_dir_all(signer.dir.path().join("docker"))?;
        signer.run(&["generate-key-pair", "--output-key-prefix", "bench"])?;
        Ok(signer)
    }

    /// The public key, PEM, for a source's `spec.verify.publicKeys`.
    pub fn public_key(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.path().join("bench.pub"))?)
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.cosign);
        command
            .args(args)
            .current_dir(self.dir.path())
            .env("COSIGN_PASSWORD", "")
            .env("DOCKER_CONFIG", self.dir.path().join("docker"))
            .env("HOME", self.dir.path())
            .stdin(std::process::Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Result<()> {
        let out = self.command(args).as_std_mut().output()?;
        anyhow::ensure!(
            out.status.success(),
            "cosign {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Signs `reference` offline (no transparency log), as the signature tests do.
    pub async fn sign(&self, reference: &str) -> Result<()> {
        let mut args = vec!["sign", "--key", "bench.key", "--tlog-upload=false"];
        if self.v3 {
            args.push("--use-signing-config=false");
        }
        args.extend(["--allow-http-registry", "--yes", reference]);
        let out = self.command(&args).output().await?;
        anyhow::ensure!(
            out.status.success(),
            "cosign sign {reference}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

/// Signs every module's `dev` tag, two cosign processes at a time (one per core).
pub async fn sign_images(
    registry: &TestRegistry,
    modules: &[String],
    signer: &CosignSigner,
) -> Result<()> {
    futures::stream::iter(modules)
        .map(|module| async move {
            signer
                .sign(&format!("{}/{REPO_PATH}/{module}:dev", registry.host()))
                .await
        })
        .buffer_unordered(2)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Creates the MPOs (tag `dev`, every `interval`) through the API, sixteen requests at a time
/// (kubectl would take minutes).
pub async fn create_mpos(
    api: &Api<ModulePullOverride>,
    id: &TestId,
    source: &str,
    modules: &[String],
    interval: &str,
) -> Result<()> {
    futures::stream::iter(modules)
        .map(|module| async move {
            let mut mpo = ModulePullOverride::new(
                module,
                ModulePullOverrideSpec {
                    image_tag: "dev".into(),
                    source: source.to_owned(),
                    scan_interval: ScanInterval::new(interval.to_owned()),
                    image_digest: None,
                    rollback: None,
                },
            );
            mpo.metadata.labels = Some([("mpo-test".to_owned(), id.0.clone())].into());
            api.create(&PostParams::default(), &mpo)
                .await
                .with_context(|| format!("creating mop/{module}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;
    Ok(())
}

/// Waits until all `n` MPOs report a digest with an empty message, from a watch: polling with
/// LIST costs the apiserver N objects per poll, which grows as N × duration and slowed the very
/// cold start it measured (at N=3000, 96 LISTs took 21 s of the apiserver's CPU).
pub async fn wait_all_ready(
    api: &Api<ModulePullOverride>,
    id: &TestId,
    n: usize,
    started: Instant,
) -> Result<()> {
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().labels(&id.label());
    let events = watcher(api.clone(), config)
        .default_backoff()
        .applied_objects();
    let mut events = std::pin::pin!(events);
    let mut ready = std::collections::HashSet::new();
    let mut last_print = Instant::now();
    let deadline = Duration::from_secs(900);
    while ready.len() < n {
        let left = deadline.saturating_sub(started.elapsed());
        let event = tokio::time::timeout(left, events.try_next())
            .await
            .map_err(|_| anyhow::anyhow!("only {} of {n} ready after 900 s", ready.len()))?
            .context("MPO watch")?
            .context("the MPO watch ended")?;
        let name = event.metadata.name.clone().unwrap_or_default();
        if is_ready(&event) {
            ready.insert(name);
        } else {
            ready.remove(&name);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "[bench] N={n}: {}/{n} ready after {:.0} s",
                ready.len(),
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    Ok(())
}

pub fn is_ready(mpo: &ModulePullOverride) -> bool {
    mpo.status
        .as_ref()
        .is_some_and(|s| s.image_digest.is_some() && s.message.as_deref() == Some(""))
}

/// A comma-separated list of counts from the environment, else `default`.
pub fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("{name}={v}"))
        })
        .collect()
}
