//! Flux source-controller as the peer of the scale benchmark (issue 22): the same N images on the
//! same registry and apiserver, as N OCIRepositories (`ref.tag: dev`, the same interval), the
//! controller started after the objects with the same concurrency. Ready is its `Ready=True`
//! condition, counted from a watch as ours is.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, GroupVersionKind, PostParams},
    runtime::{WatchStreamExt, watcher},
};

/// Each size gets a namespace of its own, the one Flux watches (`--watch-all-namespaces=false`).
fn namespace(n: usize) -> String {
    format!("flux-bench-{n}")
}
const LABEL: &str = "mpo-flux-bench";

/// The controller binary and the CRDs of its module (`config/crd/bases`), from `MPO_FLUX_BIN`
/// and `MPO_FLUX_CRDS` (hack/flux.sh builds and prints them).
pub struct Flux {
    pub bin: PathBuf,
    pub crds: PathBuf,
}

impl Flux {
    pub fn from_env() -> Option<Self> {
        Some(Self {
            bin: std::env::var_os("MPO_FLUX_BIN")?.into(),
            crds: std::env::var_os("MPO_FLUX_CRDS")?.into(),
        })
    }
}

fn oci_repository() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "OCIRepository"),
        "ocirepositories",
    )
}

/// What one Flux cold start measured.
pub struct FluxRun {
    pub cold_seconds: f64,
    pub cold_cpu: f64,
    pub control_plane_cpu: f64,
    pub peak_rss_mib: f64,
}

/// The images and settings both controllers get.
pub struct Workload<'a> {
    pub registry_host: &'a str,
    pub repo_path: &'a str,
    pub modules: &'a [String],
    pub interval: &'a str,
    pub concurrency: usize,
}

/// Creates one OCIRepository per module, starts source-controller, waits until all are Ready.
pub async fn cold_start(
    cluster: &'static crate::support::Cluster,
    flux: &Flux,
    workload: &Workload<'_>,
    control_plane_cpu: impl Fn() -> Result<f64>,
) -> Result<FluxRun> {
    let Workload {
        registry_host,
        repo_path,
        modules,
        interval,
        concurrency,
    } = *workload;
    cluster.kubectl_ok(&[
        "apply",
        "--server-side",
        "-f",
        &flux.crds.display().to_string(),
    ]);
    cluster.kubectl_ok(&[
        "wait",
        "--for=condition=Established",
        "crd/ocirepositories.source.toolkit.fluxcd.io",
        "--timeout=60s",
    ]);
    let namespace = namespace(modules.len());
    cluster.kubectl_ok(&["create", "namespace", &namespace]);
    let client = cluster.client().await;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &oci_repository());
    futures::stream::iter(modules)
        .map(|module| {
            let api = api.clone();
            async move {
                let mut object = DynamicObject::new(module, &oci_repository());
                object.metadata.labels = Some([(LABEL.to_owned(), "1".to_owned())].into());
                object.data = serde_json::json!({"spec": {
                    "url": format!("oci://{registry_host}/{repo_path}/{module}"),
                    "ref": {"tag": "dev"},
                    "interval": interval,
                    "insecure": true,
                }});
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating ocirepository/{module}"))
            }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<_>>()
        .await?;

    let storage = tempfile::tempdir()?;
    let before = control_plane_cpu()?;
    let started = Instant::now();
    let mut child = start(cluster, flux, storage.path(), concurrency, &namespace)?;
    let pid = child.id();
    let waited = wait_all_ready(&api, modules.len(), started).await;
    let cold_seconds = started.elapsed().as_secs_f64();
    let cold_cpu = super::cpu_seconds(pid);
    let rss = super::peak_rss_kib(pid);
    let control_plane = control_plane_cpu()? - before;
    let _ = child.kill();
    let _ = child.wait();
    // Flux's finalizers would hold the namespace forever once it is stopped.
    let _ = cluster.kubectl(&[
        "patch",
        "ocirepository",
        "-n",
        &namespace,
        "-l",
        LABEL,
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let _ = cluster.kubectl(&["delete", "namespace", &namespace, "--wait=false"]);
    waited?;
    Ok(FluxRun {
        cold_seconds,
        cold_cpu: cold_cpu?,
        control_plane_cpu: control_plane,
        peak_rss_mib: rss? as f64 / 1024.0,
    })
}

fn start(
    cluster: &crate::support::Cluster,
    flux: &Flux,
    storage: &Path,
    concurrency: usize,
    namespace: &str,
) -> Result<Child> {
    let log_path = std::env::temp_dir().join(format!("flux-bench-{}.log", std::process::id()));
    eprintln!("[scale] Flux logs to {}", log_path.display());
    let log = std::fs::File::create(&log_path)?;
    Command::new(&flux.bin)
        .args([
            "--storage-path",
            &storage.display().to_string(),
            "--storage-addr",
            "127.0.0.1:0",
            "--storage-adv-addr",
            "127.0.0.1:9",
            "--metrics-addr",
            "127.0.0.1:0",
            "--health-addr",
            "127.0.0.1:0",
            "--enable-leader-election=false",
            "--watch-all-namespaces=false",
            "--concurrent",
            &concurrency.to_string(),
            "--log-level",
            "error",
        ])
        // controller-runtime reads the kubeconfig from the environment (there is no flag).
        .env("KUBECONFIG", &cluster.kubeconfig)
        .env("RUNTIME_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting source-controller")
}

fn is_ready(object: &DynamicObject) -> bool {
    object.data["status"]["conditions"]
        .as_array()
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
}

async fn wait_all_ready(api: &Api<DynamicObject>, n: usize, started: Instant) -> Result<()> {
    let events = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    let mut events = std::pin::pin!(events);
    let mut ready = std::collections::HashSet::new();
    let mut last_print = Instant::now();
    let deadline = Duration::from_secs(900);
    while ready.len() < n {
        let left = deadline.saturating_sub(started.elapsed());
        let Ok(event) = tokio::time::timeout(left, events.try_next()).await else {
            bail!(
                "only {} of {n} OCIRepositories ready after 900 s",
                ready.len()
            );
        };
        let event = event
            .context("OCIRepository watch")?
            .context("the watch ended")?;
        let name = event.metadata.name.clone().unwrap_or_default();
        if is_ready(&event) {
            ready.insert(name);
        } else {
            ready.remove(&name);
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "[scale] Flux N={n}: {}/{n} ready after {:.0} s",
                ready.len(),
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    }
    Ok(())
}
