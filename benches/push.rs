//! Push-to-running benchmark (issue "from push to running"): how long from the end of a `push`
//! of a small module to `status.imageDigest` naming it, with docker-registry's real push
//! notifications (`--webhook-addr`, overrides on a 10-minute backstop) and with polling alone
//! (`scanInterval: 15s`), each with one override or beside idle ones; and the registry requests
//! the idle overrides cost per override per hour in that window.
//!
//! Run: `bash hack/bench-scale.sh push` (a control plane of its own). Environment:
//! - `MPO_BENCH_PUSH_IDLE`: idle overrides beside the moving one (default `0,1000`);
//! - `MPO_BENCH_PUSHES`: pushes measured with notifications, then with polling (default `50,10`:
//!   a polled push waits 7.5 s on average).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use kube::Api;
use mpo_operator::crd::ModulePullOverride;
use support::{
    Operator, TestId,
    bulk::{create_mpos, env_list, push_images, wait_all_ready},
    images::{ModuleImage, push, push_module_names},
    registry::{RegistryKind, TestRegistry},
    scenario::REPO_PATH,
};

const TOKEN: &str = "push-benchmark-token-5c1e";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Notified,
    Polled,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Self::Notified => "notifications, 10m backstop",
            Self::Polled => "polling every 15s",
        }
    }

    fn interval(self) -> &'static str {
        match self {
            Self::Notified => "10m",
            Self::Polled => "15s",
        }
    }
}

struct Row {
    mode: Mode,
    idle: usize,
    took: Vec<Duration>,
    idle_requests_per_hour: Option<f64>,
    window: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(cluster) = support::cluster::cluster() else {
        bail!("no control plane: run `bash hack/bench-scale.sh push`");
    };
    cluster.install_crds();
    let idles = env_list("MPO_BENCH_PUSH_IDLE", "0,1000")?;
    let pushes = env_list("MPO_BENCH_PUSHES", "50,10")?;
    let (notified, polled) = (pushes[0], *pushes.get(1).unwrap_or(&pushes[0]));
    let mut rows = Vec::new();
    for idle in idles {
        for (mode, count) in [(Mode::Notified, notified), (Mode::Polled, polled)] {
            rows.push(run(cluster, mode, idle, count).await?);
        }
    }
    print!("{}", table(&rows));
    Ok(())
}

async fn run(
    cluster: &'static support::Cluster,
    mode: Mode,
    idle: usize,
    pushes: usize,
) -> Result<Row> {
    let id = TestId::new(&format!(
        "push-{}-{idle}",
        if mode == Mode::Notified { "n" } else { "p" }
    ));
    eprintln!(
        "[push] {} with {idle} idle: pushing the images",
        mode.label()
    );
    let mut registry = TestRegistry::start(RegistryKind::Plain)?;
    let moving = format!("{}-moving", id.0);
    let idle_modules: Vec<String> = (0..idle).map(|i| format!("{}-{i:04}", id.0)).collect();
    push_images(&registry, &idle_modules).await?;
    push(
        &registry,
        &format!("{REPO_PATH}/{moving}"),
        "dev",
        &ModuleImage::module(&moving, 900, "v0"),
    )
    .await?;
    let mut names: Vec<&str> = idle_modules.iter().map(String::as_str).collect();
    names.push(&moving);
    push_module_names(&registry, REPO_PATH, &names).await?;
    let source = id.0.clone();
    cluster.apply_ok(&format!(
        "apiVersion: deckhouse.io/v1alpha1\nkind: ModuleSource\nmetadata:\n  name: {source}\n  labels: {{mpo-test: {}}}\nspec:\n  registry:\n    repo: {}/{REPO_PATH}\n    scheme: HTTP\n",
        id.0,
        registry.host()
    ));

    let hook_dir = tempfile::tempdir()?;
    let token_file = hook_dir.path().join("token");
    std::fs::write(&token_file, TOKEN)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let hook_addr = format!("127.0.0.1:{port}");
    let token_path = token_file.display().to_string();
    let mut flags = vec!["--log-level", "info"];
    if mode == Mode::Notified {
        flags.extend([
            "--webhook-addr",
            &hook_addr,
            "--webhook-token-file",
            &token_path,
        ]);
    }
    let mut operator = Operator::start(cluster, &id, &flags);
    if mode == Mode::Notified {
        registry.send_notifications_to(&format!("http://{hook_addr}/hooks/registry"), TOKEN)?;
    }
    let client = cluster.client().await;
    let api = Api::<ModulePullOverride>::all(client);
    let mut all = idle_modules.clone();
    all.push(moving.clone());
    create_mpos(&api, &id, &source, &all, mode.interval()).await?;
    wait_all_ready(&api, &id, all.len(), Instant::now()).await?;
    // The cold start's first checks are over; what follows is the steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;

    eprintln!("[push] {} with {idle} idle: {pushes} pushes", mode.label());
    let idle_before = idle_requests(&registry, &moving);
    let window = Instant::now();
    let mut took = Vec::with_capacity(pushes);
    for n in 1..=pushes {
        let image = ModuleImage::module(&moving, 900, &format!("v{n}"));
        let digest = push(&registry, &format!("{REPO_PATH}/{moving}"), "dev", &image).await?;
        let pushed = Instant::now();
        if let Err(err) = wait_for_digest(&api, &moving, &digest, Duration::from_secs(60)).await {
            let (_, metrics) = operator.http_get("/metrics").unwrap_or_default();
            let hooks: Vec<&str> = metrics
                .lines()
                .filter(|l| l.starts_with("mpo_webhook"))
                .collect();
            let notes: Vec<String> = registry
                .log()
                .lines()
                .filter(|l| l.contains("notification") || l.contains("endpoint"))
                .map(str::to_owned)
                .collect();
            bail!(
                "push {n}: {err}\nwebhook metrics: {hooks:?}\nregistry notification lines (last 10): {:?}",
                &notes[notes.len().saturating_sub(10)..]
            );
        }
        took.push(pushed.elapsed());
    }
    let window = window.elapsed();
    let idle_requests_per_hour = (idle > 0).then(|| {
        let requests = idle_requests(&registry, &moving) - idle_before;
        requests as f64 / idle as f64 / (window.as_secs_f64() / 3600.0)
    });
    operator.stop();
    cluster.kubectl(&["delete", "mop", "-l", &id.label(), "--wait=false"]);
    cluster.kubectl(&["delete", "ms", &source, "--wait=false"]);
    Ok(Row {
        mode,
        idle,
        took,
        idle_requests_per_hour,
        window,
    })
}

/// Manifest requests (HEAD and GET) for the idle overrides' repositories so far.
fn idle_requests(registry: &TestRegistry, moving: &str) -> usize {
    registry
        .requests()
        .iter()
        .filter(|r| r.uri.contains("/manifests/") && !r.uri.contains(moving))
        .filter(|r| r.uri.contains(&format!("/{REPO_PATH}/")))
        .count()
}

async fn wait_for_digest(
    api: &Api<ModulePullOverride>,
    name: &str,
    digest: &str,
    within: Duration,
) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let mpo = api.get(name).await.context("get the moving MPO")?;
        if mpo.status.as_ref().and_then(|s| s.image_digest.as_deref()) == Some(digest) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{name} did not report {digest} within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "\n| mode | idle MPOs | pushes | p50 | p99 | max | idle registry requests / MPO / h (window) |\n|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let mut took = row.took.clone();
        took.sort();
        let seconds = |d: Duration| format!("{:.2} s", d.as_secs_f64());
        let requests = row.idle_requests_per_hour.map_or_else(
            || "–".to_owned(),
            |r| format!("{r:.1} ({:.0} s)", row.window.as_secs_f64()),
        );
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            row.mode.label(),
            row.idle,
            took.len(),
            seconds(percentile(&took, 50.0)),
            seconds(percentile(&took, 99.0)),
            seconds(*took.last().unwrap_or(&Duration::ZERO)),
            requests
        ));
    }
    out
}
