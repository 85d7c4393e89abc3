//! The chaos soak (issue "faults", item 8): N ModulePullOverrides on two ModuleSources, two
//! replicas with leader election, tags moving every few seconds, while a schedule of faults that
//! last and overlap runs: registry 5xx bursts and restarts, a stalled apiserver connection for the
//! leader, the leader SIGSTOPped, SIGKILLed and SIGTERMed mid-download, the Lease deleted, an
//! apiserver restart, a foreign status update of a source, a source deleted and re-created, an MPO
//! deleted and re-created, the leader's disk full. After the faults stop it waits for the
//! operator to converge and checks the invariants, printing each:
//!
//! - every MPO's status holds the digest its tag has in the registry now, with no message;
//! - the files under the leader's `dev` are that digest's content;
//! - every flag is there (each MPO's module `overridden: true`) and none is stale;
//! - no replica wrote to an MPO or a source after another replica had written the Lease (from the
//!   apiserver's audit log, by the identity in each request's User-Agent);
//! - no replica downloaded a digest it had already switched in (from its log);
//!
//! and the figures: convergence time, pushes, leader changes, peak RSS of each replica.
//!
//! Run: `bash hack/soak.sh` (its own control plane: the soak restarts the apiserver). Environment:
//! `MPO_SOAK_SECONDS` (default 600: faults for all but the last minute), `MPO_SOAK_N` (200),
//! `MPO_SOAK_INTERVAL` (scanInterval seconds, 10), `MPO_SOAK_SEED` (the random choices).
//! Exit status 1 when an invariant is violated.

#[path = "../tests/support/mod.rs"]
mod support;

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use futures::{StreamExt, TryStreamExt};
use kube::{Api, api::PostParams};
use mpo_operator::crd::{ModulePullOverride, ModulePullOverrideSpec, ModuleSource, ScanInterval};
use support::{
    Operator, TestId,
    images::{ModuleImage, push, push_many_module_names},
    mounts::{Mounted, can_mount},
    proxy::{Fault, FaultProxy},
    registry::{HeadAuth, RegistryKind, TestRegistry, curl_head_digest},
    scenario::{files_under, sorted},
    tcp_cut::TcpCut,
};
use tokio::sync::RwLock;

const TAG: &str = "main";
/// The faults of one cycle: (seconds into the cycle, fault). Cycles repeat until the fault window
/// ends; a window shorter than one cycle compresses it.
const CYCLE: &[(u64, Step)] = &[
    (0, Step::RegistryErrors("/manifests/", 20)),
    (15, Step::StallLeaderConnections),
    (30, Step::FreezeLeader(25)),
    (70, Step::DeleteLease),
    (85, Step::ForeignSourceStatus),
    (100, Step::RecreateSource(5)),
    (120, Step::RestartRegistry(8)),
    (125, Step::RestartApiserver),
    (140, Step::RecreateMpo(30)),
    (160, Step::KillLeader(3)),
    (190, Step::FillLeaderDisk(45)),
    (200, Step::RegistryDown(15)),
    (230, Step::TerminateLeader),
    (250, Step::RegistryErrors("/blobs/", 15)),
];
const CYCLE_SECONDS: u64 = 270;

#[derive(Clone, Copy, Debug)]
enum Step {
    /// 503 for every request whose path has this part, for this many seconds.
    RegistryErrors(&'static str, u64),
    /// The leader's open apiserver connections freeze (half-open, never closed).
    StallLeaderConnections,
    /// SIGSTOP the leader for this many seconds (its lease expires), then SIGCONT.
    FreezeLeader(u64),
    DeleteLease,
    /// Another writer replaces the first source's module list without the flags.
    ForeignSourceStatus,
    /// The second source deleted, and created again after this many seconds.
    RecreateSource(u64),
    /// The registry killed, and started again after this many seconds.
    RestartRegistry(u64),
    RestartApiserver,
    /// One MPO deleted, and created again after this many seconds.
    RecreateMpo(u64),
    /// SIGKILL the leader; its container restarts after this many seconds.
    KillLeader(u64),
    /// The leader's download directory full for this many seconds.
    FillLeaderDisk(u64),
    /// The registry unreachable (connections refused) for this many seconds.
    RegistryDown(u64),
    /// SIGTERM the leader (downloads in flight) and start it again once it exited.
    TerminateLeader,
}

struct Config {
    seconds: u64,
    n: usize,
    interval: u64,
    seed: u64,
}

impl Config {
    fn from_env() -> Result<Self> {
        let get = |name: &str, default: u64| -> Result<u64> {
            std::env::var(name).map_or(Ok(default), |v| {
                v.parse()
                    .with_context(|| format!("{name}={v}: not a number"))
            })
        };
        let seed_default = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        Ok(Self {
            seconds: get("MPO_SOAK_SECONDS", 600)?,
            n: usize::try_from(get("MPO_SOAK_N", 200)?)?,
            interval: get("MPO_SOAK_INTERVAL", 10)?,
            seed: get("MPO_SOAK_SEED", seed_default)?,
        })
    }
}

/// xorshift64*: reproducible choices from `MPO_SOAK_SEED`.
struct Rng(u64);

impl Rng {
    fn next(&mut self, below: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % below as u64) as usize
    }
}

/// A module's files, relative paths with their bytes, sorted.
type Files = Vec<(String, Vec<u8>)>;

struct Replica {
    name: &'static str,
    operator: Operator,
    relay: TcpCut,
    /// The download directory on a small tmpfs, so that it can be filled (when mounting works).
    tmpfs: Option<Mounted>,
    peak_rss_kib: u64,
    /// A fault keeps it down (killed, draining): the supervisor leaves it alone meanwhile.
    held_down: bool,
    /// Times the supervisor started it again after it exited on its own (a lost lease exits).
    restarts: u32,
}

/// Everything the faults and the checks share.
struct World {
    cluster: &'static support::Cluster,
    id: TestId,
    registry: RwLock<TestRegistry>,
    proxy: FaultProxy,
    replicas: Mutex<Vec<Replica>>,
    /// Per source: (name, repository path, its modules).
    sources: Vec<(String, String, Vec<String>)>,
    /// Digest → files, for every image pushed.
    contents: Mutex<HashMap<String, Files>>,
    pushes: Mutex<u64>,
    push_failures: Mutex<u64>,
    interval: u64,
    timeline: Mutex<Vec<String>>,
    started: Instant,
}

impl World {
    fn note(&self, what: &str) {
        let line = format!("{:>6.1}s  {what}", self.started.elapsed().as_secs_f64());
        eprintln!("[soak] {line}");
        self.timeline.lock().expect("timeline").push(line);
    }

    fn source_yaml(&self, source: &str, repo_path: &str) -> String {
        format!(
            "apiVersion: deckhouse.io/v1alpha1\nkind: ModuleSource\nmetadata:\n  name: {source}\n  labels: {{mpo-test: {}}}\nspec:\n  registry:\n    repo: {}/{repo_path}\n    scheme: HTTP\n",
            self.id.0,
            self.proxy.host()
        )
    }

    fn mpo(&self, module: &str, source: &str) -> ModulePullOverride {
        let mut mpo = ModulePullOverride::new(
            module,
            ModulePullOverrideSpec {
                image_tag: TAG.into(),
                source: source.to_owned(),
                scan_interval: ScanInterval::new(format!("{}s", self.interval)),
                image_digest: None,
                rollback: None,
            },
        );
        mpo.metadata.labels = Some([("mpo-test".to_owned(), self.id.0.clone())].into());
        mpo
    }

    /// Index of the replica that says it leads, if one answers so.
    fn leader(&self) -> Option<usize> {
        let replicas = self.replicas.lock().expect("replicas");
        replicas.iter().position(|r| {
            r.operator.http_get("/metrics").is_some_and(|(code, body)| {
                code == 200 && body.lines().any(|l| l == "mpo_leader 1")
            })
        })
    }

    async fn leader_within(&self, within: Duration) -> Option<usize> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) = self.leader() {
                return Some(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn push_generation(&self, repo_path: &str, module: &str, generation: u64) {
        let image = ModuleImage::module(module, 100, &format!("gen-{generation}"))
            .file("generation", generation.to_string());
        let registry = self.registry.read().await;
        match push(&registry, &format!("{repo_path}/{module}"), TAG, &image).await {
            Ok(digest) => {
                self.contents
                    .lock()
                    .expect("contents")
                    .insert(digest, sorted(image.files()));
                *self.pushes.lock().expect("pushes") += 1;
            }
            Err(_) => *self.push_failures.lock().expect("failures") += 1,
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let Some(cluster) = support::cluster::cluster() else {
        bail!("no control plane: run `bash hack/soak.sh`");
    };
    let config = Config::from_env()?;
    cluster.install_crds();
    let world = Arc::new(set_up(cluster, &config).await?);
    let settle = Duration::from_secs(60.min(config.seconds / 3));
    let fault_window = Duration::from_secs(config.seconds) - settle;
    world.note(&format!(
        "soak: N={} on 2 sources, scanInterval {}s, {}s of faults then {}s to settle (seed {})",
        config.n,
        config.interval,
        fault_window.as_secs(),
        settle.as_secs(),
        config.seed
    ));
    let moving = tokio::spawn(move_tags(world.clone(), config.seed, fault_window));
    let sampling = tokio::spawn(sample_rss(world.clone()));
    let supervising = tokio::spawn(supervise(world.clone()));
    run_faults(&world, config.seed, fault_window).await;
    moving.await.context("the tag mover")?;
    world.note("faults and tag moves stopped; waiting for convergence");
    let bound = settle + Duration::from_secs(config.interval);
    let converged = converge(&world, bound).await?;
    sampling.abort();
    let violations = check(&world, converged).await?;
    supervising.abort();
    print_report(&world, converged, &violations);
    keep_logs(&world);
    if violations.is_empty() {
        Ok(())
    } else {
        bail!("{} invariant violations", violations.len())
    }
}

async fn set_up(cluster: &'static support::Cluster, config: &Config) -> Result<World> {
    let id = TestId::new("soak");
    let registry = TestRegistry::start(RegistryKind::Plain)?;
    let proxy = FaultProxy::start(&registry);
    let half = config.n / 2;
    let sources: Vec<(String, String, Vec<String>)> = ["a", "b"]
        .iter()
        .enumerate()
        .map(|(s, letter)| {
            let count = if s == 0 { half } else { config.n - half };
            let modules = (0..count)
                .map(|i| format!("{}-{letter}{i:03}", id.0))
                .collect();
            (
                format!("{}-{letter}", id.0),
                format!("soak-{letter}/modules"),
                modules,
            )
        })
        .collect();
    let world = World {
        cluster,
        id,
        registry: RwLock::new(registry),
        proxy,
        replicas: Mutex::new(Vec::new()),
        sources,
        contents: Mutex::default(),
        pushes: Mutex::new(0),
        push_failures: Mutex::new(0),
        interval: config.interval,
        timeline: Mutex::default(),
        started: Instant::now(),
    };
    world.note(&format!(
        "pushing {} module images and the module lists",
        config.n
    ));
    for (_, repo_path, modules) in &world.sources {
        push_many_module_names(&*world.registry.read().await, repo_path, modules).await?;
        futures::stream::iter(modules)
            .for_each_concurrent(4, |module| world.push_generation(repo_path, module, 0))
            .await;
    }
    let client = cluster.client().await;
    let api = Api::<ModulePullOverride>::all(client);
    for (source, repo_path, modules) in &world.sources {
        cluster.apply_ok(&world.source_yaml(source, repo_path));
        futures::stream::iter(modules)
            .map(|module| {
                let api = api.clone();
                let mpo = world.mpo(module, source);
                async move {
                    api.create(&PostParams::default(), &mpo)
                        .await
                        .with_context(|| format!("creating mop/{module}"))
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<_>>()
            .await?;
    }
    let mountable = can_mount();
    if !mountable {
        world.note("this machine does not allow a tmpfs: the disk-full fault is skipped");
    }
    let lease = [
        "--leader-election=true",
        "--lease-namespace=default",
        "--lease-name",
    ];
    for name in ["r1", "r2"] {
        let relay = TcpCut::start(&cluster.kubeconfig);
        let mut flags: Vec<&str> = lease.to_vec();
        flags.push(&world.id.0);
        let mut operator = Operator::start_as(relay.kubeconfig(), &world.id, &flags);
        let tmpfs = mountable.then(|| {
            operator.kill();
            let mounted = Mounted::tmpfs(operator.download_root(), "64m");
            operator.restart();
            mounted
        });
        world.replicas.lock().expect("replicas").push(Replica {
            name,
            operator,
            relay,
            tmpfs,
            peak_rss_kib: 0,
            held_down: false,
            restarts: 0,
        });
    }
    world.note("2 replicas started; waiting for a leader and the first digests");
    world
        .leader_within(Duration::from_secs(60))
        .await
        .context("no replica became the leader within 60s")?;
    let first = converge(&world, Duration::from_secs(180)).await?;
    if first.is_none() {
        bail!("the cold start did not converge within 180s");
    }
    world.note("every MPO reports its first digest");
    Ok(world)
}

/// Every 3 s a new build of a twentieth of the modules (at least one).
async fn move_tags(world: Arc<World>, seed: u64, window: Duration) {
    let mut rng = Rng(seed | 1);
    let mut generation = 0u64;
    let deadline = Instant::now() + window;
    let all: Vec<(String, String)> = world
        .sources
        .iter()
        .flat_map(|(_, repo, modules)| modules.iter().map(move |m| (repo.clone(), m.clone())))
        .collect();
    while Instant::now() < deadline {
        generation += 1;
        let picked: HashSet<usize> = (0..(all.len() / 20).max(1))
            .map(|_| rng.next(all.len()))
            .collect();
        futures::stream::iter(picked)
            .for_each_concurrent(4, |i| {
                let (repo, module) = &all[i];
                world.push_generation(repo, module, generation)
            })
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

/// As the kubelet does for a Deployment's pod (`restartPolicy: Always`): a replica that exited
/// (a lost lease ends the process) is started again a second later.
async fn supervise(world: Arc<World>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let restarted: Vec<&'static str> = {
            let mut replicas = world.replicas.lock().expect("replicas");
            let mut restarted = Vec::new();
            for replica in replicas.iter_mut() {
                if !replica.held_down && !replica.operator.is_running() {
                    replica.operator.restart();
                    replica.restarts += 1;
                    restarted.push(replica.name);
                }
            }
            restarted
        };
        for name in restarted {
            world.note(&format!(
                "{name}: exited; restarted as its container would be"
            ));
        }
    }
}

/// The replicas' logs (every start of each, appended) into `target/soak/`, for reading after.
fn keep_logs(world: &World) {
    let dir = support::cluster::repo_root().join("target/soak");
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    for replica in world.replicas.lock().expect("replicas").iter() {
        let _ = std::fs::write(
            dir.join(format!("{}.log", replica.name)),
            replica.operator.log(),
        );
    }
    println!("\nreplica logs: {}", dir.display());
}

async fn sample_rss(world: Arc<World>) {
    loop {
        {
            let mut replicas = world.replicas.lock().expect("replicas");
            for replica in replicas.iter_mut() {
                if let Some(kib) = replica.operator.pid().and_then(rss_kib) {
                    replica.peak_rss_kib = replica.peak_rss_kib.max(kib);
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the cycle's faults at their offsets (each on its own task, so that they overlap) until
/// the window ends, and waits until the last of them has ended.
async fn run_faults(world: &Arc<World>, seed: u64, window: Duration) {
    let scale = (window.as_secs_f64() / CYCLE_SECONDS as f64).min(1.0);
    let start = Instant::now();
    let mut running = Vec::new();
    let mut cycle_start = Duration::ZERO;
    'cycles: loop {
        for (offset, step) in CYCLE {
            let at = cycle_start + Duration::from_secs_f64(*offset as f64 * scale);
            if at >= window {
                break 'cycles;
            }
            tokio::time::sleep_until((start + at).into()).await;
            let world = world.clone();
            let step = *step;
            running.push(tokio::spawn(async move {
                if let Err(e) = apply_fault(&world, step, scale, seed).await {
                    world.note(&format!("fault {step:?} could not be applied: {e:#}"));
                }
            }));
        }
        cycle_start += Duration::from_secs_f64(CYCLE_SECONDS as f64 * scale);
    }
    for task in running {
        let _ = task.await;
    }
}

fn scaled(seconds: u64, scale: f64) -> Duration {
    Duration::from_secs_f64((seconds as f64 * scale).max(2.0))
}

async fn apply_fault(world: &World, step: Step, scale: f64, seed: u64) -> Result<()> {
    match step {
        Step::RegistryErrors(path, seconds) => {
            world.note(&format!(
                "registry: 503 for {path} ({}s)",
                scaled(seconds, scale).as_secs()
            ));
            world.proxy.fail(path, Fault::status(503));
            tokio::time::sleep(scaled(seconds, scale)).await;
            world.proxy.clear();
            world.note("registry: 503s over");
        }
        Step::StallLeaderConnections => {
            let leader = world
                .leader_within(Duration::from_secs(20))
                .await
                .context("no leader")?;
            let replicas = world.replicas.lock().expect("replicas");
            world.note(&format!(
                "{}: its open apiserver connections stall",
                replicas[leader].name
            ));
            replicas[leader].relay.stall();
        }
        Step::FreezeLeader(seconds) => {
            let (name, pid) = leader_pid(world).await?;
            world.note(&format!(
                "{name}: SIGSTOP ({}s)",
                scaled(seconds, scale).as_secs()
            ));
            signal("STOP", pid);
            tokio::time::sleep(scaled(seconds, scale).max(Duration::from_secs(20))).await;
            signal("CONT", pid);
            world.note(&format!("{name}: SIGCONT"));
        }
        Step::DeleteLease => {
            world.note("the Lease deleted");
            kubectl_retrying(
                world,
                &[
                    "delete",
                    "lease",
                    "-n",
                    "default",
                    &world.id.0,
                    "--ignore-not-found",
                ],
            )
            .await?;
        }
        Step::ForeignSourceStatus => {
            let (source, _, modules) = &world.sources[0];
            world.note(&format!(
                "another writer replaces ms/{source}'s module list, without flags"
            ));
            let list: Vec<serde_json::Value> = modules
                .iter()
                .map(|m| serde_json::json!({ "name": m }))
                .collect();
            let patch = serde_json::json!({ "status": { "modules": list } }).to_string();
            kubectl_retrying(
                world,
                &[
                    "patch",
                    &format!("ms/{source}"),
                    "--subresource=status",
                    "--type=merge",
                    "--field-manager=soak-foreign",
                    "-p",
                    &patch,
                ],
            )
            .await?;
        }
        Step::RecreateSource(seconds) => {
            let (source, repo_path, _) = &world.sources[1];
            world.note(&format!("ms/{source} deleted"));
            kubectl_retrying(world, &["delete", &format!("ms/{source}"), "--wait=false"]).await?;
            tokio::time::sleep(scaled(seconds, scale)).await;
            let yaml = world.source_yaml(source, repo_path);
            retry_for(Duration::from_secs(60), || {
                std::future::ready(world.cluster.apply(&yaml).status.success())
            })
            .await
            .context("re-creating the source")?;
            world.note(&format!("ms/{source} created again"));
        }
        Step::RestartRegistry(seconds) => {
            let mut registry = world.registry.write().await;
            world.note(&format!(
                "registry killed ({}s down)",
                scaled(seconds, scale).as_secs()
            ));
            registry.stop();
            tokio::time::sleep(scaled(seconds, scale)).await;
            registry.restart()?;
            world.note("registry started again");
        }
        Step::RestartApiserver => {
            world.note("kube-apiserver restarting");
            let dir = world.cluster.dir.clone();
            let status = tokio::task::spawn_blocking(move || {
                std::process::Command::new("bash")
                    .arg(support::cluster::repo_root().join("hack/control-plane.sh"))
                    .arg("restart-apiserver")
                    .arg(dir)
                    .stdout(std::process::Stdio::null())
                    .status()
            })
            .await??;
            if !status.success() {
                bail!("hack/control-plane.sh restart-apiserver failed: {status}");
            }
            world.note("kube-apiserver ready again");
        }
        Step::RecreateMpo(seconds) => {
            let (source, _, modules) = &world.sources[0];
            let module = &modules[(seed as usize) % modules.len()];
            world.note(&format!("mop/{module} deleted"));
            kubectl_retrying(world, &["delete", &format!("mop/{module}"), "--wait=false"]).await?;
            tokio::time::sleep(scaled(seconds, scale)).await;
            let api = Api::<ModulePullOverride>::all(world.cluster.client().await);
            let mpo = world.mpo(module, source);
            // It may still be finalizing: create it once the old one is gone.
            retry_for(Duration::from_secs(120), || {
                let api = api.clone();
                let mpo = mpo.clone();
                async move { api.create(&PostParams::default(), &mpo).await.is_ok() }
            })
            .await
            .context("re-creating the MPO")?;
            world.note(&format!("mop/{module} created again"));
        }
        Step::KillLeader(seconds) => {
            let leader = world
                .leader_within(Duration::from_secs(20))
                .await
                .context("no leader")?;
            let name = {
                let mut replicas = world.replicas.lock().expect("replicas");
                replicas[leader].held_down = true;
                replicas[leader].operator.kill();
                replicas[leader].name
            };
            world.note(&format!("{name}: SIGKILL"));
            tokio::time::sleep(scaled(seconds, scale)).await;
            let mut replicas = world.replicas.lock().expect("replicas");
            replicas[leader].operator.restart();
            replicas[leader].held_down = false;
            world.note(&format!("{name}: started again"));
        }
        Step::FillLeaderDisk(seconds) => {
            let leader = world
                .leader_within(Duration::from_secs(20))
                .await
                .context("no leader")?;
            let (name, root) = {
                let replicas = world.replicas.lock().expect("replicas");
                let replica = &replicas[leader];
                if replica.tmpfs.is_none() {
                    return Ok(());
                }
                (replica.name, replica.operator.download_root().to_path_buf())
            };
            let filler = root.join(".soak-filler");
            fill(&filler);
            world.note(&format!(
                "{name}: download directory full ({}s)",
                scaled(seconds, scale).as_secs()
            ));
            tokio::time::sleep(scaled(seconds, scale)).await;
            let _ = std::fs::remove_file(&filler);
            world.note(&format!("{name}: space freed"));
        }
        Step::RegistryDown(seconds) => {
            world.note(&format!(
                "registry unreachable ({}s)",
                scaled(seconds, scale).as_secs()
            ));
            world.proxy.down();
            tokio::time::sleep(scaled(seconds, scale)).await;
            world.proxy.up();
            world.note("registry reachable again");
        }
        Step::TerminateLeader => {
            // Slow blobs first, so that the SIGTERM finds downloads in flight to drain.
            world.proxy.fail("/blobs/", Fault::Slow(2_000));
            tokio::time::sleep(Duration::from_secs(4)).await;
            let (name, pid) = leader_pid(world).await?;
            world.note(&format!(
                "{name}: SIGTERM with downloads in flight (blobs at 2 kB/s)"
            ));
            hold_down(world, pid, true);
            signal("TERM", pid);
            let index = wait_exited(world, pid, Duration::from_secs(120)).await;
            world.proxy.clear();
            hold_down(world, pid, false);
            let index = index?;
            world.note(&format!("{name}: exited after SIGTERM; started again"));
            let mut replicas = world.replicas.lock().expect("replicas");
            replicas[index].operator.restart();
        }
    }
    Ok(())
}

async fn leader_pid(world: &World) -> Result<(&'static str, u32)> {
    let leader = world
        .leader_within(Duration::from_secs(20))
        .await
        .context("no leader")?;
    let replicas = world.replicas.lock().expect("replicas");
    let replica = &replicas[leader];
    Ok((
        replica.name,
        replica.operator.pid().context("leader not running")?,
    ))
}

fn hold_down(world: &World, pid: u32, held: bool) {
    let mut replicas = world.replicas.lock().expect("replicas");
    if let Some(replica) = replicas.iter_mut().find(|r| r.operator.pid() == Some(pid)) {
        replica.held_down = held;
    }
}

fn signal(name: &str, pid: u32) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Waits until the replica with `pid` has exited; returns its index.
async fn wait_exited(world: &World, pid: u32, within: Duration) -> Result<usize> {
    let deadline = Instant::now() + within;
    loop {
        {
            let mut replicas = world.replicas.lock().expect("replicas");
            if let Some(i) = replicas.iter().position(|r| r.operator.pid() == Some(pid)) {
                if !replicas[i].operator.is_running() {
                    return Ok(i);
                }
            } else {
                bail!("replica {pid} is gone");
            }
        }
        if Instant::now() >= deadline {
            bail!("replica {pid} did not exit within {within:?} of SIGTERM");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Writes zeros to `path` until the file system refuses (ENOSPC).
fn fill(path: &Path) {
    use std::io::Write as _;
    let Ok(mut file) = std::fs::File::create(path) else {
        return;
    };
    let chunk = vec![0u8; 1 << 20];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
}

/// `kubectl ARGS`, retried for a minute (the apiserver may be restarting).
async fn kubectl_retrying(world: &World, args: &[&str]) -> Result<()> {
    let mut last = String::new();
    let ok = retry_for(Duration::from_secs(60), || {
        let out = world.cluster.kubectl(args);
        if !out.status.success() {
            last = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        }
        std::future::ready(out.status.success())
    })
    .await;
    ok.with_context(|| format!("kubectl {}: {last}", args.join(" ")))
}

/// Retries `attempt` every second until it succeeds or `within` passes.
async fn retry_for<F, Fut>(within: Duration, mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if attempt().await {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("still failing after {within:?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Module → the digest its tag has in the registry now (asked directly, not through the proxy).
async fn registry_truth(world: &World) -> Result<BTreeMap<String, String>> {
    let registry = world.registry.read().await;
    let mut truth = BTreeMap::new();
    for (_, repo_path, modules) in &world.sources {
        for module in modules {
            let head = curl_head_digest(
                &registry,
                &format!("{repo_path}/{module}"),
                TAG,
                HeadAuth::Registry,
            )?;
            let digest = head.digest.with_context(|| {
                format!("HEAD {repo_path}/{module}:{TAG}: status {}", head.status)
            })?;
            truth.insert(module.clone(), digest);
        }
    }
    Ok(truth)
}

/// What an MPO's status says: (imageDigest, message).
type Seen = (Option<String>, Option<String>);

/// What each MPO's status says.
async fn statuses(world: &World) -> Result<BTreeMap<String, Seen>> {
    let api = Api::<ModulePullOverride>::all(world.cluster.client().await);
    let params = kube::api::ListParams::default().labels(&world.id.label());
    let list = api.list(&params).await?;
    Ok(list
        .items
        .into_iter()
        .map(|mpo| {
            let name = kube::ResourceExt::name_any(&mpo);
            let status = mpo.status.unwrap_or_default();
            (
                name,
                (
                    status.image_digest,
                    status.message.filter(|m| !m.is_empty()),
                ),
            )
        })
        .collect())
}

/// Waits until every MPO's status holds its tag's current digest and no message; `Some(time)`
/// when it did within `bound`.
async fn converge(world: &World, bound: Duration) -> Result<Option<Duration>> {
    let truth = registry_truth(world).await?;
    let start = Instant::now();
    loop {
        if let Ok(seen) = statuses(world).await {
            let done = truth.iter().all(|(module, digest)| {
                seen.get(module)
                    .is_some_and(|(d, message)| d.as_deref() == Some(digest) && message.is_none())
            });
            if done {
                return Ok(Some(start.elapsed()));
            }
        }
        if start.elapsed() >= bound {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

async fn check(world: &World, converged: Option<Duration>) -> Result<Vec<String>> {
    let mut violations = Vec::new();
    let truth = registry_truth(world).await?;
    let seen = statuses(world).await?;
    for (module, digest) in &truth {
        match seen.get(module) {
            None => violations.push(format!("status: mop/{module} is missing")),
            Some((d, _)) if d.as_deref() != Some(digest) => violations.push(format!(
                "status: mop/{module} has {} where its tag has {digest}",
                d.as_deref().unwrap_or("no digest")
            )),
            Some((_, Some(message))) => {
                violations.push(format!("status: mop/{module} still says {message:?}"));
            }
            Some(_) => {}
        }
    }
    if converged.is_none() {
        violations.push("convergence: not within the bound after the faults stopped".to_owned());
    }
    check_disk(world, &truth, &mut violations).await;
    check_flags(world, &mut violations).await?;
    check_audit(world, &mut violations)?;
    check_downloads(world, &mut violations);
    Ok(violations)
}

async fn check_disk(world: &World, truth: &BTreeMap<String, String>, violations: &mut Vec<String>) {
    let Some(leader) = world.leader_within(Duration::from_secs(30)).await else {
        violations.push("leader: no replica leads after the soak".to_owned());
        return;
    };
    let replicas = world.replicas.lock().expect("replicas");
    let root = replicas[leader].operator.download_root().to_path_buf();
    let contents = world.contents.lock().expect("contents");
    for (module, digest) in truth {
        let dev = root.join(module).join("dev");
        let active = std::fs::read_link(&dev)
            .ok()
            .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()));
        let hex = digest.trim_start_matches("sha256:");
        if active.as_deref() != Some(hex) {
            violations.push(format!(
                "disk: {module}/dev on {} points at {} instead of {hex}",
                replicas[leader].name,
                active.as_deref().unwrap_or("nothing")
            ));
            continue;
        }
        let expected = contents.get(digest);
        if expected.is_none_or(|files| &sorted(files_under(&dev)) != files) {
            violations.push(format!(
                "disk: {module}/dev does not hold the files of {digest}"
            ));
        }
    }
}

async fn check_flags(world: &World, violations: &mut Vec<String>) -> Result<()> {
    let api = Api::<ModuleSource>::all(world.cluster.client().await);
    let mpos: HashSet<String> = statuses(world).await?.into_keys().collect();
    for (source, _, modules) in &world.sources {
        let object = api.get(source).await?;
        let flagged: HashSet<String> = object
            .status
            .and_then(|s| s.modules)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| m.overridden == Some(true))
            .map(|m| m.name)
            .collect();
        for module in modules {
            if mpos.contains(module) && !flagged.contains(module) {
                violations.push(format!(
                    "flags: {module} on ms/{source} is not marked overridden"
                ));
            }
        }
        for module in &flagged {
            if !mpos.contains(module) || !modules.contains(module) {
                violations.push(format!(
                    "flags: {module} on ms/{source} is marked overridden without an MPO"
                ));
            }
        }
    }
    Ok(())
}

/// One write the apiserver audited.
struct Audited {
    received: chrono::DateTime<chrono::Utc>,
    identity: String,
    verb: String,
    resource: String,
    name: String,
    code: i64,
}

/// No replica writes an MPO or a source after another one wrote the Lease (took or renewed
/// it), unless it took the Lease back in between.
fn check_audit(world: &World, violations: &mut Vec<String>) -> Result<()> {
    let path = std::env::var("MPO_TEST_AUDIT_LOG").context("MPO_TEST_AUDIT_LOG")?;
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let soak_start = chrono::Utc::now()
        - chrono::Duration::from_std(world.started.elapsed()).unwrap_or_default();
    let ours = |name: &str| name.starts_with(&world.id.0);
    let mut writes: Vec<Audited> = text
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter_map(|e| {
            let received: chrono::DateTime<chrono::Utc> =
                chrono::DateTime::parse_from_rfc3339(e["requestReceivedTimestamp"].as_str()?)
                    .ok()?
                    .into();
            let agent = e["userAgent"].as_str()?;
            let identity = agent
                .strip_prefix("mpo-operator/")?
                .split_once('(')?
                .1
                .strip_suffix(')')?;
            Some(Audited {
                received,
                identity: identity.to_owned(),
                verb: e["verb"].as_str()?.to_owned(),
                resource: e["objectRef"]["resource"].as_str()?.to_owned(),
                name: e["objectRef"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                code: e["responseStatus"]["code"].as_i64().unwrap_or_default(),
            })
        })
        .filter(|w| w.received >= soak_start && ours(&w.name))
        .collect();
    writes.sort_by_key(|w| w.received);
    let mut holder: Option<String> = None;
    let mut late = 0usize;
    for write in &writes {
        if write.resource == "leases" {
            if (200..300).contains(&write.code) {
                holder = Some(write.identity.clone());
            }
            continue;
        }
        if holder.as_ref().is_some_and(|h| h != &write.identity) {
            late += 1;
            if late <= 10 {
                violations.push(format!(
                    "fence: {} wrote {} {}/{} ({}) at {} after {} had written the Lease",
                    write.identity,
                    write.verb,
                    write.resource,
                    write.name,
                    write.code,
                    write.received.to_rfc3339(),
                    holder.as_deref().unwrap_or_default()
                ));
            }
        }
    }
    if late > 10 {
        violations.push(format!("fence: {} more late writes", late - 10));
    }
    let transitions = writes
        .iter()
        .filter(|w| w.resource == "leases" && (200..300).contains(&w.code))
        .map(|w| w.identity.as_str())
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|p| p[0] != p[1])
        .count();
    world.note(&format!(
        "audit: {} operator writes, {transitions} changes of the Lease's writer",
        writes.len()
    ));
    Ok(())
}

/// No replica starts downloading a digest it has already switched in on its own disk.
fn check_downloads(world: &World, violations: &mut Vec<String>) {
    let replicas = world.replicas.lock().expect("replicas");
    let mut switches = 0usize;
    for replica in replicas.iter() {
        let mut switched_in: HashSet<String> = HashSet::new();
        for line in replica.operator.log().lines() {
            let Some(image) = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("image="))
            else {
                continue;
            };
            if line.contains("unpacked and switched in") {
                switched_in.insert(image.to_owned());
            } else if line.contains(" downloading") && switched_in.contains(image) {
                violations.push(format!(
                    "downloads: {} downloaded {image} again",
                    replica.name
                ));
            }
        }
        switches += switched_in.len();
    }
    // Without a single switch-in in the logs this check would pass on anything.
    if switches == 0 {
        violations.push("downloads: no switch-in found in the replicas' logs; cannot check".into());
    }
    world.note(&format!(
        "logs: {switches} digests switched in across the replicas"
    ));
}

fn print_report(world: &World, converged: Option<Duration>, violations: &[String]) {
    let replicas = world.replicas.lock().expect("replicas");
    println!("\nchaos soak: fault timeline");
    for line in world.timeline.lock().expect("timeline").iter() {
        println!("  {line}");
    }
    println!("\nfigures");
    println!(
        "  pushes: {} ({} refused while the registry was down)",
        world.pushes.lock().expect("pushes"),
        world.push_failures.lock().expect("failures")
    );
    match converged {
        Some(took) => println!(
            "  converged {:.1}s after the faults stopped",
            took.as_secs_f64()
        ),
        None => println!("  did not converge within the bound"),
    }
    for replica in replicas.iter() {
        println!(
            "  {}: peak RSS {} MiB, restarted {} times after exiting on its own",
            replica.name,
            replica.peak_rss_kib / 1024,
            replica.restarts
        );
    }
    println!("\ninvariants: {} violations", violations.len());
    let mut by_kind: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for v in violations {
        by_kind
            .entry(v.split(':').next().unwrap_or_default())
            .or_default()
            .push(v);
    }
    for kind in [
        "status",
        "convergence",
        "leader",
        "disk",
        "flags",
        "fence",
        "downloads",
    ] {
        let found = by_kind.get(kind).map_or(0, Vec::len);
        println!("  {kind:<12} {found}");
        for v in by_kind.get(kind).into_iter().flatten().take(5) {
            println!("    VIOLATION {v}");
        }
        if found > 5 {
            println!("    … and {} more", found - 5);
        }
    }
}
