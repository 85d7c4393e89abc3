//! What /metrics exposes, with prometheus-client (OpenMetrics text). Names and labels are listed in
//! README.md; per-MPO series are removed when the MPO is deleted.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use crate::{install::Report, registry::RequestObserver};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabel {
    resource: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    sender: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    status: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// 5 ms … ~80 s: registry requests, idle passes and downloads alike.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 15))
}

pub struct Metrics {
    registry: Registry,
    passes: Family<ResultLabel, Counter>,
    restores: Family<ResultLabel, Counter>,
    pass_seconds: HistogramFamily<ResultLabel>,
    registry_requests: Family<RequestLabels, Counter>,
    registry_seconds: HistogramFamily<RequestLabels>,
    downloaded_bytes: Counter,
    installs: Counter,
    install_seconds: Histogram,
    renew_seconds: Histogram,
    leader: Gauge,
    standby_digests: Family<StateLabel, Gauge>,
    standby_shared: Gauge,
    webhook_requests: Family<WebhookLabels, Counter>,
    webhook_wakes: Counter,
    watch_lists: Family<ResourceLabel, Counter>,
    verifications: Family<ResultLabel, Counter>,
    last_checks: Arc<LastChecks>,
    /// MPO name → when a renew annotation was first seen on it, until a pass handled it.
    renews: Mutex<HashMap<String, Instant>>,
    ready: AtomicBool,
    heartbeat: Mutex<Option<Instant>>,
    work: Work,
}

/// How often the controller's heartbeat ticks, and how stale it may get before `/healthz` fails.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
const HEARTBEAT_STALE: Duration = Duration::from_secs(60);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            passes: Family::default(),
            restores: Family::default(),
            pass_seconds: Family::new_with_constructor(seconds_histogram),
            registry_requests: Family::default(),
            registry_seconds: Family::new_with_constructor(seconds_histogram),
            downloaded_bytes: Counter::default(),
            installs: Counter::default(),
            install_seconds: seconds_histogram(),
            renew_seconds: seconds_histogram(),
            leader: Gauge::default(),
            standby_digests: Family::default(),
            standby_shared: Gauge::default(),
            webhook_requests: Family::default(),
            webhook_wakes: Counter::default(),
            watch_lists: Family::default(),
            verifications: Family::default(),
            last_checks: Arc::default(),
            renews: Mutex::default(),
            ready: AtomicBool::new(false),
            heartbeat: Mutex::default(),
            work: Work::new(),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&mut self) {
        let r = &mut self.registry;
        r.register(
            "mpo_restores",
            "Recorded digests pulled or switched onto this disk by a new leader before its first passes or by a warm standby, by result (restored, failed, refused by the source's signature policy)",
            self.restores.clone(),
        );
        r.register(
            "mpo_reconciles",
            "Passes over ModulePullOverrides by result (Updated, Unchanged or a failure reason)",
            self.passes.clone(),
        );
        r.register_with_unit(
            "mpo_pass_duration",
            "Duration of a pass by result",
            Unit::Seconds,
            self.pass_seconds.clone(),
        );
        r.register(
            "mpo_registry_requests",
            "Registry requests by method and HTTP status (error: no response)",
            self.registry_requests.clone(),
        );
        r.register_with_unit(
            "mpo_registry_request_duration",
            "Registry request duration until the response headers, by method and HTTP status",
            Unit::Seconds,
            self.registry_seconds.clone(),
        );
        r.register(
            "mpo_downloaded_bytes",
            "Compressed layer bytes downloaded and verified",
            self.downloaded_bytes.clone(),
        );
        r.register(
            "mpo_unpacks",
            "Module versions downloaded, unpacked and switched in",
            self.installs.clone(),
        );
        r.register_with_unit(
            "mpo_install_duration",
            "From the manifest request to the switch of a new module version",
            Unit::Seconds,
            self.install_seconds.clone(),
        );
        r.register_with_unit(
            "mpo_renew_to_applied",
            "From the first sight of a renew annotation to the end of the pass that handled it",
            Unit::Seconds,
            self.renew_seconds.clone(),
        );
        r.register(
            "mpo_leader",
            "1 while this replica holds the lease (or runs without leader election), else 0",
            self.leader.clone(),
        );
        r.register(
            "mpo_standby_digests",
            "On a standby: recorded status.imageDigests active on its own disk (held) and not (missing)",
            self.standby_digests.clone(),
        );
        r.register(
            "mpo_standby_volume_shared",
            "1 while this standby leaves its download directory alone because another replica writes it",
            self.standby_shared.clone(),
        );
        r.register(
            "mpo_webhook_requests",
            "Push notifications answered, by sender path and HTTP status",
            self.webhook_requests.clone(),
        );
        r.register(
            "mpo_webhook_wakes",
            "Overrides a push notification handed a check to",
            self.webhook_wakes.clone(),
        );
        r.register(
            "mpo_watch_lists",
            "Lists of a watched resource that completed on the leader: one at start, one more after each relist (a watch too old to resume, as after an apiserver restart)",
            self.watch_lists.clone(),
        );
        r.register(
            "mpo_verifications",
            "Signature checks of new digests under a source's policy, by result (Verified, Unsigned, NotVerified, OtherImage, OtherRepository, Malformed)",
            self.verifications.clone(),
        );
        r.register_collector(Box::new(self.last_checks.clone()));
    }

    /// One recorded digest restored (`restored`) or not (`failed`): at a new leader's start or by a
    /// warm standby.
    pub fn restore_done(&self, result: &'static str) {
        self.restores.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn reconciled(&self, result: &'static str, took: Duration) {
        let label = ResultLabel { result };
        self.passes.get_or_create(&label).inc();
        self.pass_seconds
            .get_or_create(&label)
            .observe(took.as_secs_f64());
    }

    /// A reconcile that failed talking to the apiserver: counted, not timed (no pass ran).
    pub fn api_failed(&self, reason: &'static str) {
        self.passes
            .get_or_create(&ResultLabel { result: reason })
            .inc();
    }

    pub fn installed(&self, report: &Report) {
        self.installs.inc();
        self.downloaded_bytes.inc_by(report.downloaded_bytes);
        self.install_seconds.observe(report.took.as_secs_f64());
    }

    /// A renew annotation seen on `mpo` (by the watch, before any queueing). Only the first
    /// sight counts until a pass handled it.
    pub fn renew_seen(&self, mpo: &str) {
        lock(&self.renews)
            .entry(mpo.to_owned())
            .or_insert_with(Instant::now);
    }

    /// The pass that handled the renew of `mpo` has written its result.
    pub fn renew_handled(&self, mpo: &str) {
        if let Some(seen) = lock(&self.renews).remove(mpo) {
            self.renew_seconds.observe(seen.elapsed().as_secs_f64());
        }
    }

    /// A successful registry check of an MPO, for `seconds since the last successful check`.
    pub fn resolved(&self, mpo: &str) {
        lock(&self.last_checks.0).insert(mpo.to_owned(), unix_now());
    }

    /// Drops the per-MPO series of a deleted MPO.
    pub fn forget(&self, mpo: &str) {
        lock(&self.last_checks.0).remove(mpo);
        lock(&self.renews).remove(mpo);
    }

    /// What a standby's disk holds of the recorded digests.
    pub fn set_standby_digests(&self, held: usize, missing: usize) {
        for (state, count) in [("held", held), ("missing", missing)] {
            self.standby_digests
                .get_or_create(&StateLabel { state })
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    pub fn verification(&self, result: &'static str) {
        self.verifications
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// A list of `resource` (`modulepulloverrides`, `modulesources`) completed: the store holds
    /// what the apiserver has.
    pub fn listed(&self, resource: &'static str) {
        self.watch_lists
            .get_or_create(&ResourceLabel { resource })
            .inc();
    }

    pub fn set_standby_volume_shared(&self, shared: bool) {
        self.standby_shared.set(i64::from(shared));
    }

    pub fn webhook_answered(&self, sender: &'static str, code: u16) {
        self.webhook_requests
            .get_or_create(&WebhookLabels { sender, code })
            .inc();
    }

    pub fn webhook_woke(&self, count: usize) {
        self.webhook_wakes
            .inc_by(u64::try_from(count).unwrap_or(u64::MAX));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn beat(&self) {
        *lock(&self.heartbeat) = Some(Instant::now());
    }

    /// False once the heartbeat has not ticked for a minute (never before the first beat: the
    /// process is still starting), or once passes are in flight and none has made progress (a
    /// pass started or ended, a chunk of layer data arrived) for the stall bound: a leader wedged
    /// on a call that never returns is restarted rather than holding its lease and doing nothing.
    pub fn is_alive(&self) -> bool {
        self.liveness().is_ok()
    }

    /// `/healthz`'s answer: why the process is not alive, if it is not.
    pub fn liveness(&self) -> Result<(), &'static str> {
        if lock(&self.heartbeat).is_some_and(|at| at.elapsed() >= HEARTBEAT_STALE) {
            return Err("wedged: the heartbeat stopped");
        }
        if self.work.stalled() {
            return Err("wedged: passes are in flight and none made progress");
        }
        Ok(())
    }

    /// `--liveness-stall-timeout`: how long passes in flight may go without progress.
    pub fn set_stall_bound(&self, bound: Duration) {
        self.work
            .stall_bound_ms
            .store(duration_ms(bound), Ordering::Relaxed);
    }

    /// Counts a pass as in flight until the guard is dropped; both ends count as progress.
    pub fn pass_in_flight(&self) -> PassInFlight<'_> {
        self.work.in_flight.fetch_add(1, Ordering::SeqCst);
        self.work.progressed();
        PassInFlight(&self.work)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!("cannot encode metrics: {e}");
        }
        out
    }
}

impl RequestObserver for Metrics {
    fn request(&self, method: &str, status: Option<u16>, took: Duration) {
        let labels = RequestLabels {
            method: method.to_owned(),
            status: status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
        };
        self.registry_requests.get_or_create(&labels).inc();
        self.registry_seconds
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }
}

/// MPO name → Unix time of its last successful registry check; exposed as an age at scrape time.
#[derive(Debug, Default)]
struct LastChecks(Mutex<BTreeMap<String, f64>>);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MpoLabel {
    mpo: String,
}

impl Collector for LastChecks {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = unix_now();
        let checks = lock(&self.0).clone();
        let mut family = encoder.encode_descriptor(
            "mpo_seconds_since_last_check",
            "Seconds since the tag of an MPO was last resolved",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (mpo, at) in checks {
            let age = ConstGauge::new(now - at);
            age.encode(family.encode_family(&MpoLabel { mpo })?)?;
        }
        Ok(())
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_counters_histograms_and_forgets_deleted_mpos() {
        let metrics = Metrics::new();
        metrics.reconciled("Updated", Duration::from_millis(30));
        metrics.request("HEAD", Some(200), Duration::from_millis(3));
        metrics.request("GET", None, Duration::from_millis(3));
        metrics.resolved("echo");
        metrics.renew_seen("echo");
        metrics.renew_handled("echo");
        metrics.set_leader(true);
        let text = metrics.render();
        for line in [
            r#"mpo_reconciles_total{result="Updated"} 1"#,
            r#"mpo_pass_duration_seconds_count{result="Updated"} 1"#,
            r#"mpo_registry_requests_total{method="HEAD",status="200"} 1"#,
            r#"mpo_registry_requests_total{method="GET",status="error"} 1"#,
            r#"mpo_registry_request_duration_seconds_bucket{le="0.005",method="HEAD",status="200"} 1"#,
            "mpo_renew_to_applied_seconds_count 1",
            "mpo_leader 1",
            r#"mpo_seconds_since_last_check{mpo="echo"}"#,
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        metrics.forget("echo");
        assert!(!metrics.render().contains(r#"mpo="echo""#));
    }

    #[test]
    fn a_renew_counts_from_its_first_sight_once() {
        let metrics = Metrics::new();
        metrics.renew_handled("echo");
        metrics.renew_seen("echo");
        metrics.renew_seen("echo");
        metrics.renew_handled("echo");
        metrics.renew_handled("echo");
        let text = metrics.render();
        assert!(
            text.contains("mpo_renew_to_applied_seconds_count 1\n"),
            "{text}"
        );
    }
}

/// Passes in flight and when any of them last made progress, for liveness. Atomics: layer data
/// reports progress per chunk.
struct Work {
    base: Instant,
    in_flight: std::sync::atomic::AtomicUsize,
    last_progress_ms: std::sync::atomic::AtomicU64,
    stall_bound_ms: std::sync::atomic::AtomicU64,
}

/// The default of `--liveness-stall-timeout`.
pub const DEFAULT_STALL_BOUND: Duration = Duration::from_secs(600);

impl Work {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            last_progress_ms: std::sync::atomic::AtomicU64::new(0),
            stall_bound_ms: std::sync::atomic::AtomicU64::new(duration_ms(DEFAULT_STALL_BOUND)),
        }
    }

    fn now_ms(&self) -> u64 {
        duration_ms(self.base.elapsed())
    }

    fn progressed(&self) {
        self.last_progress_ms
            .fetch_max(self.now_ms(), Ordering::Relaxed);
    }

    fn stalled(&self) -> bool {
        self.stalled_at(self.now_ms())
    }

    fn stalled_at(&self, now_ms: u64) -> bool {
        let idle = now_ms.saturating_sub(self.last_progress_ms.load(Ordering::Relaxed));
        self.in_flight.load(Ordering::SeqCst) > 0
            && idle > self.stall_bound_ms.load(Ordering::Relaxed)
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// See [`Metrics::pass_in_flight`].
pub struct PassInFlight<'a>(&'a Work);

impl Drop for PassInFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.progressed();
    }
}

/// A download that moves is a pass making progress.
impl crate::install::Progress for Metrics {
    fn started(&self, _total_bytes: u64) {
        self.work.progressed();
    }

    fn advanced(&self, _bytes: u64) {
        self.work.progressed();
    }
}

#[cfg(test)]
mod liveness_tests {
    use super::*;

    #[test]
    fn in_flight_work_without_progress_past_the_bound_is_a_stall() {
        let metrics = Metrics::new();
        metrics.set_stall_bound(Duration::from_secs(10));
        let work = &metrics.work;
        let later = |secs: u64| work.now_ms() + secs * 1000;
        assert!(
            !work.stalled_at(later(3600)),
            "idle with nothing in flight is fine"
        );
        let pass = metrics.pass_in_flight();
        assert!(!work.stalled_at(later(5)));
        assert!(
            work.stalled_at(later(11)),
            "in flight, no progress for 11 s"
        );
        // Layer data arriving is progress.
        crate::install::Progress::advanced(&metrics, 4096);
        assert!(!work.stalled_at(later(5)));
        drop(pass);
        assert!(!work.stalled_at(later(3600)), "nothing in flight any more");
        assert!(metrics.liveness().is_ok());
    }
}
