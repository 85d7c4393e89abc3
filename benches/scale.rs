//! Scale benchmark (issue "Scale"): N ModulePullOverrides on one ModuleSource, against the real
//! apiserver and registry of the test harness, the operator built as `cargo bench` builds it
//! (release profile). Objects are created first and the operator started after them, as a
//! platform team restarting the operator would see it.
//!
//! Prints, per N: seconds until every MPO reports its digest, CPU seconds for that, idle CPU
//! seconds per minute over a window, peak RSS, apiserver requests by verb and resource (from the
//! apiserver's own `/metrics`; LIST of modulepulloverrides includes this benchmark's polling),
//! registry requests per MPO per interval, and the ModuleSource's size with managedFields.
//! Where the cold start goes: CPU seconds of kube-apiserver and etcd (their PIDs from the control
//! plane's `pids` file, `MPO_CONTROL_PLANE_DIR`), the apiserver's mean latency by verb and
//! resource, and the operator's own pass histogram. After all sizes, the growth exponent between
//! each pair of neighbouring sizes (time ∝ N^k: k = 1 is linear).
//!
//! Run: `bash hack/bench-scale.sh` (starts a control plane like hack/test.sh). Environment:
//! - `MPO_BENCH_SCALE_N`: comma-separated object counts (default `100,1000,3000`; add `10000`
//!   when asked);
//! - `MPO_BENCH_IDLE_SECONDS`: the idle window (default 60);
//! - `MPO_BENCH_CONCURRENCY`: the operator's `--concurrency` (default 4, Flux's default too).
//! - `MPO_OPERATOR_BIN`: another operator binary to measure (e.g. the last release, side by side);
//! - `MPO_FLUX_BIN`, `MPO_FLUX_CRDS`: Flux source-controller and its CRDs (`bash hack/flux.sh`
//!   builds v1.8.5 and prints both); after each size, the same images as N OCIRepositories and
//!   Flux's cold start beside ours, on the same apiserver and registry;
//! - `MPO_BENCH_POLICY`: `cosign-v2` or `cosign-v3` signs every image with that cosign
//!   (`MPO_COSIGN`, `MPO_COSIGN_V3`; hack/bench-scale.sh builds them) and gives the source a
//!   signature policy with its key, so the cold start verifies every digest (default `none`).

#[path = "scale/flux.rs"]
mod flux;
#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kube::Api;
use mpo_operator::crd::ModulePullOverride;
use support::{
    Operator, TestId,
    bulk::{CosignSigner, create_mpos, env_list, push_images, sign_images, wait_all_ready},
    images::push_module_names,
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
    let counts = env_list("MPO_BENCH_SCALE_N", "100,1000,3000")?;
    let idle = Duration::from_secs(env_list("MPO_BENCH_IDLE_SECONDS", "60")?[0] as u64);
    let concurrency = env_list("MPO_BENCH_CONCURRENCY", "4")?[0];
    let signer = signer_of_policy()?;
    let mut reports = Vec::new();
    for n in counts {
        let report = run(cluster, n, idle, concurrency, signer.as_ref()).await?;
        print!("{}", report.text);
        reports.push(report);
    }
    print!("{}", growth(&reports));
    Ok(())
}

/// The signer `MPO_BENCH_POLICY` asks for, if any.
fn signer_of_policy() -> Result<Option<CosignSigner>> {
    let cosign = |variable: &str| {
        std::env::var_os(variable)
            .map(std::path::PathBuf::from)
            .with_context(|| format!("{variable} is not set: run `bash hack/bench-scale.sh`"))
    };
    match std::env::var("MPO_BENCH_POLICY").as_deref() {
        Err(_) | Ok("none") => Ok(None),
        Ok("cosign-v2") => Ok(Some(CosignSigner::new(cosign("MPO_COSIGN")?, false)?)),
        Ok("cosign-v3") => Ok(Some(CosignSigner::new(cosign("MPO_COSIGN_V3")?, true)?)),
        Ok(other) => bail!("MPO_BENCH_POLICY={other}: expected none, cosign-v2 or cosign-v3"),
    }
}

/// The ModuleSource of the run, with a signature policy of the signer's key when there is one.
fn source_document(
    id: &TestId,
    registry: &TestRegistry,
    signer: Option<&CosignSigner>,
) -> Result<String> {
    let mut spec = serde_json::json!({
        "registry": {"repo": format!("{}/{REPO_PATH}", registry.host()), "scheme": "HTTP"},
    });
    if let Some(signer) = signer {
        spec["verify"] =
            serde_json::json!({"provider": "cosign", "publicKeys": [signer.public_key()?]});
    }
    Ok(serde_json::json!({
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "ModuleSource",
        "metadata": {"name": id.0, "labels": {"mpo-test": id.0}},
        "spec": spec,
    })
    .to_string())
}

/// The figures of one size that the growth table compares.
struct Report {
    n: usize,
    cold_seconds: f64,
    cold_cpu: f64,
    control_plane_cpu: f64,
    flux: Option<flux::FluxRun>,
    text: String,
}

/// `k` in `y ∝ N^k` between two sizes.
fn exponent(n1: usize, y1: f64, n2: usize, y2: f64) -> f64 {
    (y2 / y1).ln() / (n2 as f64 / n1 as f64).ln()
}

fn growth(reports: &[Report]) -> String {
    let mut out = String::new();
    if reports.iter().any(|r| r.flux.is_some()) {
        out.push_str(
            "\nside by side with Flux source-controller (same apiserver, registry and images)\n\
             N      ours s  Flux s  ratio  ours CPU  Flux CPU  ratio  control plane ours/Flux CPU s  Flux RSS MiB\n",
        );
        for r in reports {
            let Some(f) = &r.flux else { continue };
            out.push_str(&format!(
                "{:<6} {:>6.1}  {:>6.1}  {:>5.2}  {:>8.2}  {:>8.2}  {:>5.2}  {:>14.1} / {:<14.1}  {:>6.1}\n",
                r.n,
                r.cold_seconds,
                f.cold_seconds,
                r.cold_seconds / f.cold_seconds,
                r.cold_cpu,
                f.cold_cpu,
                r.cold_cpu / f.cold_cpu,
                r.control_plane_cpu,
                f.control_plane_cpu,
                f.peak_rss_mib,
            ));
        }
        for pair in reports.windows(2) {
            let (Some(a), Some(b)) = (&pair[0].flux, &pair[1].flux) else {
                continue;
            };
            out.push_str(&format!(
                "Flux {} → {}: time {:.2}× (k {:.2}), CPU {:.2}× (k {:.2})\n",
                pair[0].n,
                pair[1].n,
                b.cold_seconds / a.cold_seconds,
                exponent(pair[0].n, a.cold_seconds, pair[1].n, b.cold_seconds),
                b.cold_cpu / a.cold_cpu,
                exponent(pair[0].n, a.cold_cpu, pair[1].n, b.cold_cpu),
            ));
        }
    }
    out.push_str(
        "\ngrowth between sizes (k in time ∝ N^k; 1 is linear)\n\
         sizes          time ratio  k(time)  CPU ratio  k(CPU)  apiserver+etcd CPU ratio  k\n",
    );
    for pair in reports.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        out.push_str(&format!(
            "{:>5} → {:<6} {:>10.2}  {:>7.2}  {:>9.2}  {:>6.2}  {:>24.2}  {:.2}\n",
            a.n,
            b.n,
            b.cold_seconds / a.cold_seconds,
            exponent(a.n, a.cold_seconds, b.n, b.cold_seconds),
            b.cold_cpu / a.cold_cpu,
            exponent(a.n, a.cold_cpu, b.n, b.cold_cpu),
            b.control_plane_cpu / a.control_plane_cpu,
            exponent(a.n, a.control_plane_cpu, b.n, b.control_plane_cpu),
        ));
    }
    out
}

async fn run(
    cluster: &'static support::Cluster,
    n: usize,
    idle: Duration,
    concurrency: usize,
    signer: Option<&CosignSigner>,
) -> Result<Report> {
    let id = TestId::new(&format!("scale{n}"));
    eprintln!("[scale] N={n}: starting a registry and pushing {n} module images");
    let registry = TestRegistry::start(RegistryKind::Plain)?;
    let modules: Vec<String> = (0..n).map(|i| format!("{}-{i:04}", id.0)).collect();
    push_images(&registry, &modules).await?;
    let names: Vec<&str> = modules.iter().map(String::as_str).collect();
    push_module_names(&registry, REPO_PATH, &names).await?;
    if let Some(signer) = signer {
        eprintln!("[scale] N={n}: signing {n} images with cosign");
        let signing = Instant::now();
        sign_images(&registry, &modules, signer).await?;
        eprintln!(
            "[scale] N={n}: signed in {:.0} s",
            signing.elapsed().as_secs_f64()
        );
    }

    eprintln!("[scale] N={n}: creating the ModuleSource and {n} ModulePullOverrides");
    let source = id.0.clone();
    cluster.apply_ok(&source_document(&id, &registry, signer)?);
    let client = cluster.client().await;
    let api = Api::<ModulePullOverride>::all(client.clone());
    create_mpos(
        &api,
        &id,
        &source,
        &modules,
        &format!("{INTERVAL_SECONDS}s"),
    )
    .await?;

    let api_before = apiserver_requests(cluster)?;
    let latency_before = apiserver_latency(cluster)?;
    let control_plane = control_plane_pids()?;
    let control_plane_before = control_plane_cpu(&control_plane)?;
    eprintln!("[scale] N={n}: starting the operator (concurrency {concurrency})");
    let started = Instant::now();
    let concurrency_flag = concurrency.to_string();
    let mut operator = Operator::start(
        cluster,
        &id,
        &["--log-level", "info", "--concurrency", &concurrency_flag],
    );
    let pid = operator.pid().context("operator pid")?;
    wait_all_ready(&api, &id, n, started).await?;
    let cold_seconds = started.elapsed().as_secs_f64();
    let cold_cpu = cpu_seconds(pid)?;
    let cold_registry_requests = registry_requests(&operator)?;
    let verifications = verification_counts(&operator)?;
    let api_cold = diff(&apiserver_requests(cluster)?, &api_before);
    let latency_cold = latency_diff(&apiserver_latency(cluster)?, &latency_before);
    let control_plane_cold: Vec<(String, f64)> = control_plane_cpu(&control_plane)?
        .into_iter()
        .zip(&control_plane_before)
        .map(|((name, after), (_, before))| (name, after - before))
        .collect();
    let passes = pass_histogram(&operator)?;

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
    let flux = match flux::Flux::from_env() {
        Some(peer) => {
            eprintln!(
                "[scale] N={n}: the same images as {n} OCIRepositories, Flux started after them"
            );
            let workload = flux::Workload {
                registry_host: registry.host(),
                repo_path: REPO_PATH,
                modules: &modules,
                interval: &format!("{INTERVAL_SECONDS}s"),
                concurrency,
            };
            let run = flux::cold_start(cluster, &peer, &workload, || {
                Ok(control_plane_cpu(&control_plane)?
                    .iter()
                    .map(|(_, s)| s)
                    .sum())
            })
            .await?;
            eprintln!(
                "[scale] N={n}: Flux ready in {:.1} s ({:.2} CPU s)",
                run.cold_seconds, run.cold_cpu
            );
            Some(run)
        }
        None => None,
    };

    let per_minute = 60.0 / idle.as_secs_f64();
    let policy = std::env::var("MPO_BENCH_POLICY").unwrap_or_else(|_| "none".into());
    let mut out = format!(
        "\nN={n} (concurrency {concurrency}, scanInterval {INTERVAL_SECONDS}s, signature policy {policy})\n\
         seconds until every object is ready   {cold_seconds:.1}\n\
         CPU seconds for that                  {cold_cpu:.2}\n\
         registry requests per MPO, cold start {:.2}\n\
         signature verifications (result: count) {verifications}\n\
         idle CPU seconds per minute           {:.2}\n\
         peak RSS MiB                          {rss_mib:.1}\n\
         registry requests per MPO per interval {:.2}\n\
         ModuleSource bytes (with managedFields) {source_bytes}\n\
         overridden flags / field managers      {flagged} / {managers}\n",
        cold_registry_requests as f64 / n as f64,
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
    out.push_str("where the cold start went\n");
    for (process, seconds) in &control_plane_cold {
        out.push_str(&format!("  CPU seconds of {process}: {seconds:.2}\n"));
    }
    out.push_str("  apiserver mean latency, ms (verb resource/subresource: mean over count)\n");
    for (key, (sum, count)) in &latency_cold {
        out.push_str(&format!(
            "    {key}: {:.1} over {count}\n",
            sum * 1000.0 / *count as f64
        ));
    }
    out.push_str("  operator passes (result: count, mean ms)\n");
    for (result, (sum, count)) in &passes {
        out.push_str(&format!(
            "    {result}: {count}, {:.1}\n",
            sum * 1000.0 / *count as f64
        ));
    }
    Ok(Report {
        n,
        cold_seconds,
        cold_cpu,
        control_plane_cpu: control_plane_cold.iter().map(|(_, s)| s).sum(),
        flux,
        text: out,
    })
}

/// etcd and kube-apiserver of the control plane hack/bench-scale.sh started.
fn control_plane_pids() -> Result<Vec<(String, u32)>> {
    let dir = std::env::var("MPO_CONTROL_PLANE_DIR")
        .context("MPO_CONTROL_PLANE_DIR (set by hack/bench-scale.sh)")?;
    let pids =
        std::fs::read_to_string(format!("{dir}/pids")).context("the control plane's pids")?;
    pids.split_whitespace()
        .map(|pid| {
            let pid: u32 = pid.parse().context("a pid")?;
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .with_context(|| format!("/proc/{pid}/comm"))?;
            Ok((comm.trim().to_owned(), pid))
        })
        .collect()
}

fn control_plane_cpu(pids: &[(String, u32)]) -> Result<Vec<(String, f64)>> {
    pids.iter()
        .map(|(name, pid)| Ok((name.clone(), cpu_seconds(*pid)?)))
        .collect()
}

/// The value of `label` in one metrics line.
fn label(line: &str, name: &str) -> Option<String> {
    let start = line.find(&format!("{name}=\""))? + name.len() + 2;
    let end = line[start..].find('"')? + start;
    Some(line[start..end].to_owned())
}

fn sample_value(line: &str) -> f64 {
    line.rsplit_once(' ')
        .and_then(|(_, v)| v.parse::<f64>().ok())
        .unwrap_or_default()
}

/// Sum and count of `apiserver_request_duration_seconds` for our two resources.
fn apiserver_latency(cluster: &support::Cluster) -> Result<BTreeMap<String, (f64, u64)>> {
    let text = cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    Ok(histogram_sums(
        &text,
        "apiserver_request_duration_seconds",
        |labels| {
            let resource = label(labels, "resource")?;
            (resource == "modulepulloverrides" || resource == "modulesources")
                .then(|| request_key(labels, &resource))
        },
    ))
}

/// `(sum, count)` of histogram `metric`, per key that `key_of` gives a line's labels (`None`
/// leaves the line out).
fn histogram_sums(
    text: &str,
    metric: &str,
    key_of: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, (f64, u64)> {
    let (sum_prefix, count_prefix) = (format!("{metric}_sum{{"), format!("{metric}_count{{"));
    let mut out: BTreeMap<String, (f64, u64)> = BTreeMap::new();
    for line in text.lines() {
        let (is_sum, labels) = if let Some(r) = line.strip_prefix(&sum_prefix) {
            (true, r)
        } else if let Some(r) = line.strip_prefix(&count_prefix) {
            (false, r)
        } else {
            continue;
        };
        let Some(key) = key_of(labels) else {
            continue;
        };
        let entry = out.entry(key).or_default();
        if is_sum {
            entry.0 += sample_value(line);
        } else {
            entry.1 += sample_value(line) as u64;
        }
    }
    out
}

fn latency_diff(
    after: &BTreeMap<String, (f64, u64)>,
    before: &BTreeMap<String, (f64, u64)>,
) -> BTreeMap<String, (f64, u64)> {
    after
        .iter()
        .map(|(k, (sum, count))| {
            let (s0, c0) = before.get(k).copied().unwrap_or_default();
            (k.clone(), (sum - s0, count.saturating_sub(c0)))
        })
        .filter(|(_, (_, count))| *count > 0)
        .collect()
}

/// "VERB resource[/subresource]" of one apiserver metrics line.
fn request_key(line: &str, resource: &str) -> String {
    let verb = label(line, "verb").unwrap_or_default();
    match label(line, "subresource").filter(|s| !s.is_empty()) {
        Some(sub) => format!("{verb} {resource}/{sub}"),
        None => format!("{verb} {resource}"),
    }
}

/// The operator's `mpo_pass_duration_seconds` by result: (sum, count).
fn pass_histogram(operator: &Operator) -> Result<BTreeMap<String, (f64, u64)>> {
    let (_, body) = operator.http_get("/metrics").context("metrics")?;
    Ok(histogram_sums(
        &body,
        "mpo_pass_duration_seconds",
        |labels| Some(label(labels, "result").unwrap_or_default()),
    ))
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

/// `mpo_verifications_total` by result, as `Verified: 100`; `-` when nothing was verified.
fn verification_counts(operator: &Operator) -> Result<String> {
    let (_, body) = operator.http_get("/metrics").context("metrics")?;
    let counts: Vec<String> = body
        .lines()
        .filter(|l| l.starts_with("mpo_verifications_total{"))
        .filter_map(|l| Some(format!("{}: {}", label(l, "result")?, sample_value(l))))
        .collect();
    Ok(if counts.is_empty() {
        "-".into()
    } else {
        counts.join(", ")
    })
}

/// `apiserver_request_total` for our two resources, keyed by "VERB resource[/subresource]".
fn apiserver_requests(cluster: &support::Cluster) -> Result<BTreeMap<String, u64>> {
    let text = cluster.kubectl_ok(&["get", "--raw", "/metrics"]);
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let Some(resource) = label(line, "resource") else {
            continue;
        };
        if resource != "modulepulloverrides" && resource != "modulesources" {
            continue;
        }
        *out.entry(request_key(line, &resource)).or_default() += sample_value(line) as u64;
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
