//! Scale benchmark (issue "Scale"): N ModulePullOverrides on one ModuleSource, against the real
//! apiserver and registry of the test harness, the operator built as `cargo bench` builds it
//! (release profile). Objects are created first and the operator started after them, as a
//! platform team restarting the operator would see it.
//!
//! Prints, per N: seconds until every MPO reports its digest, CPU seconds for that, idle CPU
//! seconds per minute over a window, peak RSS, apiserver requests by verb and resource (from the
//! apiserver's own `/metrics`; LIST of modulepulloverrides includes this benchmark's polling),
//! registry requests per MPO per interval, and the ModuleSource's size with managedFields.
//!
//! Run: `bash hack/bench-scale.sh` (starts a control plane like hack/test.sh). Environment:
//! - `MPO_BENCH_SCALE_N`: comma-separated object counts (default `100,1000`);
//! - `MPO_BENCH_IDLE_SECONDS`: the idle window (default 60);
//! - `MPO_BENCH_CONCURRENCY`: the operator's `--concurrency` (default 4, Flux's default too).

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use mpo_operator::crd::{ModulePullOverride, ModulePullOverrideSpec, ScanInterval};
use support::{
    Operator, TestId,
    images::{ModuleImage, push, push_module_names},
    registry::{RegistryKind, TestRegistry},
    scenario::REPO_PATH,
};

const INTERVAL_SECONDS: u64 = 15;

#[tokio::main]
async fn main() -> Result<()> {
    let Some(cluster) = support::cluster::cluster() else {
        bail!("no control plane: run `bash hack/bench-scale.sh`");
    };
    cluster.install_crds();
    let counts = env_list("MPO_BENCH_SCALE_N", "100,1000")?;
    let idle = Duration::from_secs(env_list("MPO_BENCH_IDLE_SECONDS", "60")?[0] as u64);
    let concurrency = env_list("MPO_BENCH_CONCURRENCY", "4")?[0];
    for n in counts {
        let report = run(cluster, n, idle, concurrency).await?;
        print!("{report}");
    }
    Ok(())
}

async fn run(
    cluster: &'static support::Cluster,
    n: usize,
    idle: Duration,
    concurrency: usize,
) -> Result<String> {
    let id = TestId::new(&format!("scale{n}"));
    eprintln!("[scale] N={n}: starting a registry and pushing {n} module images");
    let registry = TestRegistry::start(RegistryKind::Plain)?;
    let modules: Vec<String> = (0..n).map(|i| format!("{}-{i:04}", id.0)).collect();
    push_images(&registry, &modules).await?;
    let names: Vec<&str> = modules.iter().map(String::as_str).collect();
    push_module_names(&registry, REPO_PATH, &names).await?;

    eprintln!("[scale] N={n}: creating the ModuleSource and {n} ModulePullOverrides");
    let source = id.0.clone();
    cluster.apply_ok(&format!(
        "apiVersion: deckhouse.io/v1alpha1\nkind: ModuleSource\nmetadata:\n  name: {source}\n  labels: {{mpo-test: {}}}\nspec:\n  registry:\n    repo: {}/{REPO_PATH}\n    scheme: HTTP\n",
        id.0,
        registry.host()
    ));
    let client = cluster.client().await;
    let api = Api::<ModulePullOverride>::all(client.clone());
    create_mpos(&api, &id, &source, &modules).await?;

    let api_before = apiserver_requests(cluster)?;
    eprintln!("[scale] N={n}: starting the operator (concurrency {concurrency})");
    let started = Instant::now();
    let concurrency_flag = concurrency.to_string();
    let mut operator = Operator::start(
        cluster,
        &id,
        &["--log-level", "info", "--concurrency", &concurrency_flag],
    );
    let pid = operator.pid().context("operator pid")?;
    let selector = ListParams::default().labels(&id.label());
    let mut last_print = Instant::now();
    loop {
        let ready = count_ready(&api, &selector).await?;
        if ready == n {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            bail!("only {ready} of {n} ready after 900 s");
        }
        if last_print.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "[scale] N={n}: {ready}/{n} ready after {:.0} s",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let cold_seconds = started.elapsed().as_secs_f64();
    let cold_cpu = cpu_seconds(pid)?;
    let api_cold = diff(&apiserver_requests(cluster)?, &api_before);

    // Let the flags writer and the last status echoes settle before the idle window.
    tokio::time::sleep(Duration::from_secs(5)).await;
    eprintln!(
        "[scale] N={n}: all ready in {cold_seconds:.1} s; measuring {} s idle",
        idle.as_secs()
    );
    let cpu_idle_start = cpu_seconds(pid)?;
    let heads_start = registry_requests(&operator)?;
    let api_idle_start = apiserver_requests(cluster)?;
    tokio::time::sleep(idle).await;
    let idle_cpu = cpu_seconds(pid)? - cpu_idle_start;
    let heads = registry_requests(&operator)? - heads_start;
    let api_idle = diff(&apiserver_requests(cluster)?, &api_idle_start);
    let rss_mib = peak_rss_kib(pid)? as f64 / 1024.0;
    let source_bytes = cluster
        .kubectl_ok(&[
            "get",
            &format!("ms/{source}"),
            "-o",
            "json",
            "--show-managed-fields",
        ])
        .len();
    let flagged = cluster
        .jsonpath(
            &format!("ms/{source}"),
            "{.status.modules[?(@.overridden==true)].name}",
        )
        .split_whitespace()
        .count();
    let managers = cluster.jsonpath(
        &format!("ms/{source}"),
        "{.metadata.managedFields[*].manager}",
    );
    operator.stop();
    cleanup(cluster, &id, &source);

    let per_minute = 60.0 / idle.as_secs_f64();
    let mut out = format!(
        "\nN={n} (concurrency {concurrency}, scanInterval {INTERVAL_SECONDS}s)\n\
         seconds until every object is ready   {cold_seconds:.1}\n\
         CPU seconds for that                  {cold_cpu:.2}\n\
         idle CPU seconds per minute           {:.2}\n\
         peak RSS MiB                          {rss_mib:.1}\n\
         registry requests per MPO per interval {:.2}\n\
         ModuleSource bytes (with managedFields) {source_bytes}\n\
         overridden flags / field managers      {flagged} / {managers}\n",
        idle_cpu * per_minute,
        heads as f64 * INTERVAL_SECONDS as f64 / idle.as_secs_f64() / n as f64,
    );
    out.push_str("apiserver requests, cold start (verb resource/subresource: count)\n");
    for (key, count) in &api_cold {
        out.push_str(&format!("  {key}: {count}\n"));
    }
    out.push_str(&format!("apiserver requests, {} s idle\n", idle.as_secs()));
    for (key, count) in &api_idle {
        out.push_str(&format!("  {key}: {count}\n"));
    }
    Ok(out)
}

/// Small distinct module images, eight pushes at a time.
async fn push_images(registry: &TestRegistry, modules: &[String]) -> Result<()> {
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

/// Creates the MPOs through the API, sixteen requests at a time (kubectl would take minutes).
async fn create_mpos(
    api: &Api<ModulePullOverride>,
    id: &TestId,
    source: &str,
    modules: &[String],
) -> Result<()> {
    futures::stream::iter(modules)
        .map(|module| async move {
            let mut mpo = ModulePullOverride::new(
                module,
                ModulePullOverrideSpec {
                    image_tag: "dev".into(),
                    source: source.to_owned(),
                    scan_interval: ScanInterval::new(format!("{INTERVAL_SECONDS}s")),
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

async fn count_ready(api: &Api<ModulePullOverride>, selector: &ListParams) -> Result<usize> {
    let list = api.list(selector).await?;
    Ok(list
        .items
        .iter()
        .filter(|m| {
            m.status
                .as_ref()
                .is_some_and(|s| s.image_digest.is_some() && s.message.as_deref() == Some(""))
        })
        .count())
}

/// utime + stime of a process, in seconds (USER_HZ is 100 on Linux).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after_name = stat.rsplit_once(')').context("stat format")?.1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields.get(11).context("utime")?.parse::<u64>()?
        + fields.get(12).context("stime")?.parse::<u64>()?;
    Ok(ticks as f64 / 100.0)
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM value")?
        .parse()?)
}

/// The operator's own count of registry requests (all methods).
fn registry_requests(operator: &Operator) -> Result<u64> {
    let (_, body) = operator.http_get("/metrics").context("metrics")?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("mpo_registry_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// `apiserver_request_total` for our two resources, keyed by "VERB resource[/subresource]".
fn apiserver_requests(cluster: &support::Cluster) -> Result<BTreeMap<String, u64>> {
    let text = cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let label = |name: &str| {
            let start = line.find(&format!("{name}=\""))? + name.len() + 2;
            let end = line[start..].find('"')? + start;
            Some(line[start..end].to_owned())
        };
        let Some(resource) = label("resource") else {
            continue;
        };
        if resource != "modulepulloverrides" && resource != "modulesources" {
            continue;
        }
        let verb = label("verb").unwrap_or_default();
        let subresource = label("subresource").filter(|s| !s.is_empty());
        let key = match subresource {
            Some(sub) => format!("{verb} {resource}/{sub}"),
            None => format!("{verb} {resource}"),
        };
        let count = line
            .rsplit_once(' ')
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .unwrap_or_default() as u64;
        *out.entry(key).or_default() += count;
    }
    Ok(out)
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v.saturating_sub(*before.get(k).unwrap_or(&0))))
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Deleting the objects would wait for finalizers that no operator releases any more: drop the
/// finalizers first.
fn cleanup(cluster: &support::Cluster, id: &TestId, source: &str) {
    let label = id.label();
    let _ = cluster.kubectl(&[
        "patch",
        "mop",
        "-l",
        &label,
        "--type",
        "merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let _ = cluster.kubectl(&["delete", "mop", "-l", &label, "--wait=false"]);
    let _ = cluster.kubectl(&["delete", &format!("ms/{source}"), "--wait=false"]);
}

fn env_list(name: &str, default: &str) -> Result<Vec<usize>> {
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
