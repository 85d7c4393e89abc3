//! SPEC §3.6: the `overridden` flags of a ModuleSource are derived state with one writer.
//!
//! Per source, the flagged set is computed from the cached MPOs — those on that source, not being
//! deleted, holding an applied image (`status.imageDigest`) and listed by the source (or the
//! source not scanned yet, as in the pass) — and applied as a whole under one field manager. A
//! module that leaves the set loses its field, and its entry with it unless the scan lists it, so
//! moving `spec.source`, deleting an MPO or an unlisted module leave nothing behind.
//!
//! Writes are debounced and paced per source: MPOs mark their source dirty; the writer gathers
//! changes for [`DEBOUNCE`], and writes a source again only after [`PACE_FACTOR`] times as long
//! as its last write took (at most [`MAX_PACE`]). A write costs the apiserver time in proportion
//! to the source's size, so pacing by that time keeps the writer's share of the apiserver fixed:
//! a cold start of N overrides then costs O(N) in flag writes instead of O(N × duration), which
//! grew as N² (issue 22). A deletion is urgent: it is not paced, so it still waits about one
//! debounce for its flag to go. A source whose write fails backs off alone; the others go on.
//! Each write compares with what it owns first, so an idle cluster writes nothing.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::reflector::{ObjectRef, Store},
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::error::is_too_large;
pub use super::rules::listing::{FLAGS_FIELD_MANAGER, is_flags_manager};
use super::rules::{
    backoff::api_backoff,
    listing::{LEGACY_FLAGS_MANAGER_PREFIX, Listing, list_key_name},
};
use crate::crd::{ModulePullOverride, ModuleSource};

/// How long changes are gathered before a source is written.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// A source is written again no sooner than this many times its last write took.
pub const PACE_FACTOR: u32 = 4;
/// Pacing never holds a source back longer than this.
pub const MAX_PACE: Duration = Duration::from_secs(5);
/// How often every source is recomputed from scratch (no write unless something differs).
const RESYNC: Duration = Duration::from_secs(300);
/// What the source's `status.message` and the log say when its flags are refused for size.
pub const FLAGS_TOO_LARGE_MESSAGE: &str = "cannot write the overridden flags: the ModuleSource \
     would be larger than the apiserver accepts (its status holds too many modules); the module \
     names are left out of its status so that the flags fit, and every override on it goes on";

/// Which sources need their flags recomputed, and what was last written to each.
pub struct Flags {
    state: Mutex<State>,
    wake: Notify,
    /// Bumped after every flush round, so that deletions waiting for their source can look again.
    progress: tokio::sync::watch::Sender<u64>,
    /// Set when the writer has returned (stop, lost lease): nobody will flush any more, so a
    /// deletion must not wait for it.
    stopped: std::sync::atomic::AtomicBool,
    /// This operator's field manager of the flags ([`super::rules::listing::flags_manager_for`]).
    manager: String,
    /// Whether a refusal for size may leave the scan's names out to make room: only when this
    /// operator scans (otherwise the names and the message are another writer's).
    makes_room: bool,
}

impl Flags {
    /// A writer whose applies go under `manager`.
    pub fn with_manager(manager: String) -> Self {
        Self {
            manager,
            ..Self::default()
        }
    }

    /// Whether a refusal for size leaves the scan's names out ([`Flags::makes_room`]).
    pub fn making_room(self, makes_room: bool) -> Self {
        Self { makes_room, ..self }
    }
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            wake: Notify::new(),
            progress: tokio::sync::watch::Sender::new(0),
            stopped: std::sync::atomic::AtomicBool::new(false),
            manager: FLAGS_FIELD_MANAGER.to_owned(),
            makes_room: true,
        }
    }
}

/// What a deletion waits for: a write of `source` that covered the change marked as `mark`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    source: String,
    mark: u64,
}

#[derive(Default)]
struct State {
    /// Sources to write, and whether one of their changes is urgent (a deletion).
    dirty: BTreeMap<String, bool>,
    /// Per MPO: its source and whether it would be flagged, as last seen.
    seen: HashMap<String, (String, bool)>,
    /// Per source: the set this operator last applied.
    written: HashMap<String, BTreeSet<String>>,
    /// Per source: marks, pacing and failures.
    pace: HashMap<String, Pace>,
    /// Per source: the uid last seen, to tell a source deleted and re-created under its name.
    uids: HashMap<String, String>,
}

#[derive(Clone, Debug, Default)]
struct Pace {
    /// Bumped on every change of the source's set; a write covers the marks taken before it.
    marked: u64,
    /// The highest mark a successful write covered.
    synced: u64,
    /// Not written again before this (pacing or backoff).
    not_before: Option<Instant>,
    /// Set by a failure: even an urgent change waits for it.
    backing_off: bool,
    failures: u32,
    /// The last failure reported, so a failure that repeats is logged once.
    reported: Option<String>,
    /// The last failure was a refusal for size, which `status.message` says.
    too_large: bool,
}

impl State {
    fn mark(&mut self, source: &str, urgent: bool) -> Ticket {
        let pace = self.pace.entry(source.to_owned()).or_default();
        pace.marked += 1;
        let mark = pace.marked;
        let entry = self.dirty.entry(source.to_owned()).or_default();
        *entry |= urgent;
        Ticket {
            source: source.to_owned(),
            mark,
        }
    }

    /// Whether `source` may be written at `now`.
    fn is_due(&self, source: &str, urgent: bool, now: Instant) -> bool {
        let Some(pace) = self.pace.get(source) else {
            return true;
        };
        match pace.not_before {
            Some(at) if at > now => urgent && !pace.backing_off,
            _ => true,
        }
    }

    /// The dirty sources that may be written now, each with the mark its write covers; the
    /// others stay dirty.
    fn take_due(&mut self, now: Instant) -> Vec<(String, u64)> {
        let due: Vec<String> = self
            .dirty
            .iter()
            .filter(|(source, urgent)| self.is_due(source, **urgent, now))
            .map(|(source, _)| source.clone())
            .collect();
        due.into_iter()
            .map(|source| {
                self.dirty.remove(&source);
                let mark = self.pace.get(&source).map_or(0, |p| p.marked);
                (source, mark)
            })
            .collect()
    }

    /// When the earliest dirty source that is held back becomes due.
    fn next_due(&self) -> Option<Instant> {
        self.dirty
            .keys()
            .filter_map(|source| self.pace.get(source)?.not_before)
            .min()
    }

    fn wrote(&mut self, source: &str, mark: u64, took: Duration, now: Instant) {
        let pace = self.pace.entry(source.to_owned()).or_default();
        pace.too_large = false;
        pace.synced = pace.synced.max(mark);
        pace.failures = 0;
        pace.backing_off = false;
        pace.reported = None;
        pace.not_before = Some(now + pace_after(took));
    }

    /// Backs the source off alone; returns how long, and whether `error` is new for it.
    fn failed(
        &mut self,
        source: &str,
        now: Instant,
        error: &str,
        too_large: bool,
    ) -> (Duration, bool) {
        let pace = self.pace.entry(source.to_owned()).or_default();
        pace.too_large = too_large;
        let wait = api_backoff(pace.failures, source);
        pace.failures = pace.failures.saturating_add(1);
        pace.backing_off = true;
        pace.not_before = Some(now + wait);
        let new = pace.reported.as_deref() != Some(error);
        pace.reported = Some(error.to_owned());
        self.dirty.entry(source.to_owned()).or_default();
        (wait, new)
    }

    fn is_synced(&self, ticket: &Ticket) -> bool {
        self.pace
            .get(&ticket.source)
            .is_some_and(|p| p.synced >= ticket.mark)
    }
}

/// How long a source waits after a write that took `took`.
pub fn pace_after(took: Duration) -> Duration {
    (took * PACE_FACTOR).min(MAX_PACE)
}

impl Flags {
    /// An MPO as a reconcile saw it: marks its source (and a source it left) dirty when its
    /// contribution may have changed.
    pub fn mpo_seen(&self, mpo: &ModulePullOverride) {
        let name = mpo.name_any();
        let view = (mpo.spec.source.clone(), holds_image(mpo));
        let mut state = self.lock();
        let previous = state.seen.insert(name, view.clone());
        if previous.as_ref() == Some(&view) {
            return;
        }
        if let Some((old_source, _)) = previous.filter(|(old, _)| *old != view.0) {
            // Leaving a source takes a flag away, as a deletion does.
            state.mark(&old_source, true);
        }
        state.mark(&view.0, false);
        drop(state);
        self.wake.notify_one();
    }

    /// The MPO is being deleted (or is gone): its source loses its flag. Returns what
    /// [`Flags::wait_flushed`] waits for.
    pub fn mpo_gone(&self, name: &str, source: &str) -> Ticket {
        let mut state = self.lock();
        if let Some((old_source, _)) = state.seen.remove(name)
            && old_source != source
        {
            state.mark(&old_source, true);
        }
        let ticket = state.mark(source, true);
        drop(state);
        self.wake.notify_one();
        ticket
    }

    /// Waits (at most `within`) until the ticket's source has been written since the ticket was
    /// taken, so that a deleted MPO's finalizer goes only once its flag is gone; a failing write
    /// does not block the deletion forever (a later write clears the flag).
    pub async fn wait_flushed(&self, ticket: Ticket, within: Duration) -> bool {
        let mut progress = self.progress.subscribe();
        let synced = async {
            loop {
                if self.lock().is_synced(&ticket) {
                    return true;
                }
                if self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
                    return false;
                }
                if progress.changed().await.is_err() {
                    return false;
                }
            }
        };
        tokio::time::timeout(within, synced).await.unwrap_or(false)
    }

    /// Every version of a source the watch delivers: the writer's memory of what it wrote is
    /// checked against what the apiserver has. A source re-created under its name (a new uid) is
    /// a new source, whatever was written to the old one; flags another writer removed or
    /// changed (a foreign status update) differ from what this writer owns. Either way the memory
    /// is dropped and the source written again from managedFields, at once rather than at the
    /// 5-minute resync.
    pub fn observed(&self, source: &ModuleSource) {
        let name = source.name_any();
        let uid = source.uid().unwrap_or_default();
        let mut state = self.lock();
        let recreated = state
            .uids
            .insert(name.clone(), uid.clone())
            .is_some_and(|old| old != uid);
        let drifted = state
            .written
            .get(&name)
            .is_some_and(|written| *written != owned_flags(source, &self.manager));
        if recreated || drifted {
            debug!(source = %name, recreated, drifted, "the source's flags differ from what was written; writing them again");
            state.written.remove(&name);
            state.mark(&name, false);
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Something about the source changed that may change its set (its listing).
    pub fn source_changed(&self, source: &str) {
        self.lock().mark(source, false);
        self.wake.notify_one();
    }

    /// Recompute every source, trusting managedFields rather than memory (at start and now and
    /// then, so a flag left by a crash or by an older version is corrected).
    fn resync_all(&self, sources: &Store<ModuleSource>) {
        let mut state = self.lock();
        state.written.clear();
        for source in sources.state() {
            state.mark(&source.name_any(), false);
        }
    }

    /// What the source's `status.message` says while its flags are refused for size: the scan
    /// then leaves the names out too, with this message, instead of bringing them back.
    pub fn size_refusal(&self, source: &str) -> Option<&'static str> {
        self.lock()
            .pace
            .get(source)
            .is_some_and(|p| p.too_large)
            .then_some(FLAGS_TOO_LARGE_MESSAGE)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// True when the MPO holds an applied image and is not going away.
fn holds_image(mpo: &ModulePullOverride) -> bool {
    mpo.metadata.deletion_timestamp.is_none()
        && mpo
            .status
            .as_ref()
            .is_some_and(|s| s.image_digest.as_deref().is_some_and(|d| !d.is_empty()))
}

/// The modules of `source` that should carry `overridden: true`.
pub fn desired_flags<'a>(
    source: &ModuleSource,
    mpos: impl IntoIterator<Item = &'a ModulePullOverride>,
) -> BTreeSet<String> {
    let name = source.name_any();
    let listing = Listing::of(source);
    mpos.into_iter()
        .filter(|m| m.spec.source == name && holds_image(m))
        .map(ResourceExt::name_any)
        .filter(|module| listing.admits(module))
        .collect()
}

/// The modules whose `overridden` field `manager` owns in the source's status.
pub fn owned_flags(source: &ModuleSource, manager: &str) -> BTreeSet<String> {
    source
        .managed_fields()
        .iter()
        .filter(|e| e.manager.as_deref() == Some(manager))
        .filter_map(|e| e.fields_v1.as_ref())
        .filter_map(|f| f.0.pointer("/f:status/f:modules")?.as_object())
        .flat_map(|modules| modules.iter())
        .filter(|(_, fields)| fields.get("f:overridden").is_some())
        .filter_map(|(key, _)| list_key_name(key))
        .collect()
}

/// Managers of earlier versions that still own fields in the source's status.
pub fn legacy_managers(source: &ModuleSource) -> Vec<String> {
    source
        .managed_fields()
        .iter()
        .filter_map(|e| e.manager.clone())
        .filter(|m| m.starts_with(LEGACY_FLAGS_MANAGER_PREFIX))
        .collect()
}

/// The apply body that owns exactly these flags (and nothing when `modules` is empty).
pub fn flags_apply_body(modules: &BTreeSet<String>) -> Value {
    let status = if modules.is_empty() {
        json!({})
    } else {
        let entries: Vec<Value> = modules
            .iter()
            .map(|m| json!({ "name": m, "overridden": true }))
            .collect();
        json!({ "modules": entries })
    };
    json!({ "apiVersion": "deckhouse.io/v1alpha1", "kind": "ModuleSource", "status": status })
}

/// Flushes dirty sources until `stop`: the only writer of `overridden` flags.
/// Marks the writer stopped however it returns, and wakes the deletions waiting for it.
struct StoppedOnReturn(Arc<Flags>);

impl Drop for StoppedOnReturn {
    fn drop(&mut self) {
        self.0
            .stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.progress.send_modify(|round| *round += 1);
    }
}

pub async fn run_writer(
    flags: Arc<Flags>,
    client: Client,
    mpos: Store<ModulePullOverride>,
    sources: Store<ModuleSource>,
    stop: CancellationToken,
    fence: super::fence::Fence,
) {
    let _stopped = StoppedOnReturn(flags.clone());
    let api = Api::<ModuleSource>::all(client);
    flags.resync_all(&sources);
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    loop {
        let held_back = flags.lock().next_due();
        tokio::select! {
            () = flags.wake.notified() => {}
            _ = resync.tick() => flags.resync_all(&sources),
            () = sleep_until(held_back) => {}
            () = stop.cancelled() => return,
        }
        // Gather what else changes meanwhile (a cold start finishes many MPOs per second).
        tokio::select! {
            () = tokio::time::sleep(DEBOUNCE) => {}
            () = stop.cancelled() => return,
        }
        let due = flags.lock().take_due(Instant::now());
        for (name, mark) in due {
            if stop.is_cancelled() || fence.is_cancelled() {
                return;
            }
            let started = Instant::now();
            // Raced with `stop` and the fence (a lost lease): no write may finish after them.
            let flushed = tokio::select! {
                flushed = flush(&flags, &api, &mpos, &sources, &name) => flushed,
                () = stop.cancelled() => return,
                () = fence.cancelled() => return,
            };
            let now = Instant::now();
            match flushed {
                Ok(()) => flags.lock().wrote(&name, mark, now - started, now),
                Err(e) => {
                    let error = failure_message(&e);
                    let too_large = is_too_large(&e);
                    let (wait, new) = flags.lock().failed(&name, now, &error, too_large);
                    if new {
                        warn!(source = %name, retry_in = ?wait, "{error}");
                    } else {
                        debug!(source = %name, retry_in = ?wait, "{error}");
                    }
                    if too_large && flags.makes_room {
                        // Make room as the scan does when its list alone does not fit: the names
                        // go (the source then admits every module), the message says why, and
                        // the retry's flags fit. At every such refusal, not the first only: a
                        // scan may have brought the names back meanwhile, or this write failed.
                        // Raced like the flush: nothing after the fence.
                        tokio::select! {
                            () = make_room(&api, &name) => {}
                            () = stop.cancelled() => return,
                            () = fence.cancelled() => return,
                        }
                    }
                }
            }
        }
        flags.progress.send_modify(|round| *round += 1);
    }
}

/// Leaves the module names out of a source whose flags do not fit, saying so in its message
/// (the scan's own answer to a list that does not fit, [`super::scan::leave_names_out`]). A
/// failure here is logged; the flags' own retry goes on.
async fn make_room(api: &Api<ModuleSource>, source: &str) {
    if let Err(e) = super::scan::leave_names_out(api, source, FLAGS_TOO_LARGE_MESSAGE).await {
        warn!(source = %source, "cannot leave the module names out of the source's status: {e}");
    }
}

fn failure_message(err: &kube::Error) -> String {
    if is_too_large(err) {
        FLAGS_TOO_LARGE_MESSAGE.to_owned()
    } else {
        format!("cannot write the overridden flags: {err}")
    }
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn flush(
    flags: &Flags,
    api: &Api<ModuleSource>,
    mpos: &Store<ModulePullOverride>,
    sources: &Store<ModuleSource>,
    name: &str,
) -> Result<(), kube::Error> {
    let Some(source) = sources.get(&ObjectRef::new(name)) else {
        flags.lock().written.remove(name);
        return Ok(());
    };
    let all = mpos.state();
    let desired = desired_flags(&source, all.iter().map(AsRef::as_ref));
    let current = flags
        .lock()
        .written
        .get(name)
        .cloned()
        .unwrap_or_else(|| owned_flags(&source, &flags.manager));
    let legacy = legacy_managers(&source);
    if desired == current && legacy.is_empty() {
        return Ok(());
    }
    let params = PatchParams::apply(&flags.manager).force();
    match api
        .patch_status(name, &params, &Patch::Apply(flags_apply_body(&desired)))
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.is_not_found() => return Ok(()),
        Err(e) => return Err(e),
    }
    info!(source = %name, overridden = desired.len(), "overridden flags written");
    flags.lock().written.insert(name.to_owned(), desired);
    release_legacy_managers(api, name, &legacy).await
}

/// Earlier versions applied each MPO's flag under a manager of its own; give those fields up
/// once, so the flags have one owner and follow the MPOs.
async fn release_legacy_managers(
    api: &Api<ModuleSource>,
    source: &str,
    managers: &[String],
) -> Result<(), kube::Error> {
    let empty = flags_apply_body(&BTreeSet::new());
    for manager in managers {
        api.patch_status(
            source,
            &PatchParams::apply(manager).force(),
            &Patch::Apply(&empty),
        )
        .await?;
        debug!(%source, %manager, "released the fields of an old per-MPO field manager");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{ModulePullOverrideSpec, ModulePullOverrideStatus};

    #[tokio::test]
    async fn a_deletion_does_not_wait_for_a_writer_that_has_stopped() {
        let flags = Arc::new(Flags::default());
        let ticket = flags.mpo_gone("echo", "test");
        let waiting = tokio::spawn({
            let flags = flags.clone();
            async move {
                let started = tokio::time::Instant::now();
                let flushed = flags.wait_flushed(ticket, Duration::from_secs(10)).await;
                (flushed, started.elapsed())
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(StoppedOnReturn(flags.clone()));
        let (flushed, waited) = waiting.await.expect("joins");
        assert!(!flushed);
        assert!(waited < Duration::from_secs(1), "waited {waited:?}");
        // And a deletion after the stop does not wait at all.
        let later = flags.mpo_gone("other", "test");
        let started = tokio::time::Instant::now();
        assert!(!flags.wait_flushed(later, Duration::from_secs(10)).await);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

    fn source(listed: Option<&[&str]>) -> ModuleSource {
        match listed {
            Some(names) => crate::crd::test_source_listing("src", Some(names.len() as i64), names),
            None => crate::crd::test_source("src"),
        }
    }

    fn mpo(name: &str, source: &str, digest: Option<&str>) -> ModulePullOverride {
        let mut m = ModulePullOverride::new(
            name,
            ModulePullOverrideSpec {
                image_tag: "t".into(),
                source: source.into(),
                scan_interval: Default::default(),
                image_digest: None,
                rollback: None,
            },
        );
        m.status = Some(ModulePullOverrideStatus {
            image_digest: digest.map(str::to_owned),
            ..Default::default()
        });
        m
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn the_set_holds_listed_modules_with_an_image_on_this_source() {
        let mut deleting = mpo("d", "src", Some("sha256:1"));
        deleting.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        let mpos = [
            mpo("a", "src", Some("sha256:1")),
            mpo("b", "src", None),
            mpo("c", "other", Some("sha256:1")),
            deleting,
            mpo("unlisted", "src", Some("sha256:1")),
        ];
        let listed = source(Some(&["a", "b", "c", "d"]));
        assert_eq!(desired_flags(&listed, &mpos), set(&["a"]));
        // Before the first scan, every MPO holding an image is flagged, as the pass allows it.
        assert_eq!(desired_flags(&source(None), &mpos), set(&["a", "unlisted"]));
    }

    #[test]
    fn ownership_is_read_from_managed_fields() {
        let mut s = source(Some(&["a", "b"]));
        let entry = |manager: &str, fields: Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            subresource: Some("status".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        s.metadata.managed_fields = Some(vec![
            entry(
                FLAGS_FIELD_MANAGER,
                json!({"f:status": {"f:modules": {
                    "k:{\"name\":\"a\"}": {".": {}, "f:name": {}, "f:overridden": {}},
                    "k:{\"name\":\"b\"}": {".": {}, "f:name": {}}
                }}}),
            ),
            entry(
                "mpo-operator-scan",
                json!({"f:status": {"f:modules": {
                    "k:{\"name\":\"b\"}": {"f:overridden": {}}
                }}}),
            ),
            entry("mpo-operator-override-old", json!({})),
        ]);
        assert_eq!(owned_flags(&s, FLAGS_FIELD_MANAGER), set(&["a"]));
        assert_eq!(legacy_managers(&s), vec!["mpo-operator-override-old"]);
    }

    #[test]
    fn a_foreign_change_or_a_recreated_source_is_written_again_at_once() {
        let flags = Flags::default();
        let owning = |uid: &str, owned: &[&str]| {
            let mut s = source(Some(&["a", "b"]));
            s.metadata.uid = Some(uid.into());
            let modules: serde_json::Map<String, Value> = owned
                .iter()
                .map(|m| {
                    (
                        format!("k:{}", json!({ "name": m })),
                        json!({".": {}, "f:name": {}, "f:overridden": {}}),
                    )
                })
                .collect();
            s.metadata.managed_fields = Some(vec![ManagedFieldsEntry {
                manager: Some(FLAGS_FIELD_MANAGER.into()),
                subresource: Some("status".into()),
                fields_v1: Some(FieldsV1(json!({"f:status": {"f:modules": modules}}))),
                ..Default::default()
            }]);
            s
        };
        let name = owning("u1", &[]).name_any();
        flags.observed(&owning("u1", &["a"]));
        flags.lock().written.insert(name.clone(), set(&["a"]));
        flags.lock().dirty.clear();
        // Our own write echoed back: nothing to do.
        flags.observed(&owning("u1", &["a"]));
        assert!(flags.lock().dirty.is_empty());
        // Another writer took our flag away.
        flags.observed(&owning("u1", &[]));
        assert!(flags.lock().dirty.contains_key(&name));
        assert!(!flags.lock().written.contains_key(&name), "memory dropped");
        // Deleted and re-created under the same name: a new source.
        flags.lock().written.insert(name.clone(), set(&["a"]));
        flags.lock().dirty.clear();
        flags.observed(&owning("u2", &["a"]));
        assert!(flags.lock().dirty.contains_key(&name));
        assert!(!flags.lock().written.contains_key(&name));
    }

    #[test]
    fn an_empty_set_owns_nothing() {
        assert_eq!(flags_apply_body(&BTreeSet::new())["status"], json!({}));
        assert_eq!(
            flags_apply_body(&set(&["a"]))["status"]["modules"],
            json!([{"name": "a", "overridden": true}])
        );
    }

    fn dirty(flags: &Flags, now: Instant) -> BTreeSet<String> {
        flags
            .lock()
            .take_due(now)
            .into_iter()
            .map(|(s, _)| s)
            .collect()
    }

    #[test]
    fn moving_an_mpo_marks_both_sources() {
        let flags = Flags::default();
        let now = Instant::now();
        flags.mpo_seen(&mpo("a", "one", Some("sha256:1")));
        assert_eq!(dirty(&flags, now), set(&["one"]));
        flags.mpo_seen(&mpo("a", "one", Some("sha256:1")));
        assert!(
            dirty(&flags, now).is_empty(),
            "an unchanged MPO marks nothing"
        );
        flags.mpo_seen(&mpo("a", "two", Some("sha256:1")));
        assert_eq!(dirty(&flags, now), set(&["one", "two"]));
        flags.mpo_gone("a", "two");
        assert_eq!(dirty(&flags, now), set(&["two"]));
    }

    #[test]
    fn a_source_is_written_again_only_after_its_pace() {
        let mut state = State::default();
        let t0 = Instant::now();
        state.mark("big", false);
        let taken = state.take_due(t0);
        assert_eq!(taken, vec![("big".to_owned(), 1)]);
        // The write took 400 ms: the next one waits 1.6 s.
        let written = t0 + Duration::from_millis(400);
        state.wrote("big", 1, Duration::from_millis(400), written);
        state.mark("big", false);
        state.mark("small", false);
        let later = written + Duration::from_millis(500);
        assert_eq!(state.take_due(later), vec![("small".to_owned(), 1)]);
        assert_eq!(
            state.next_due(),
            Some(written + Duration::from_millis(1600))
        );
        assert_eq!(
            state.take_due(written + Duration::from_millis(1600)),
            vec![("big".to_owned(), 2)]
        );
    }

    #[test]
    fn pacing_is_capped() {
        assert_eq!(
            pace_after(Duration::from_millis(100)),
            Duration::from_millis(400)
        );
        assert_eq!(pace_after(Duration::from_secs(30)), MAX_PACE);
    }

    #[test]
    fn a_deletion_is_not_paced_but_waits_for_a_backoff() {
        let mut state = State::default();
        let t0 = Instant::now();
        state.wrote("s", 0, Duration::from_secs(1), t0);
        let ticket = state.mark("s", true);
        assert_eq!(
            state.take_due(t0),
            vec![("s".to_owned(), 1)],
            "urgent skips the pace"
        );
        assert!(!state.is_synced(&ticket));
        // The write failed: the source backs off, even for an urgent change.
        let (wait, new) = state.failed("s", t0, "boom", false);
        assert!(new, "a first failure is reported");
        state.mark("s", true);
        assert!(state.take_due(t0).is_empty());
        let retry = t0 + wait;
        assert_eq!(state.take_due(retry).len(), 1, "due after the backoff");
        let (again, new) = state.failed("s", retry, "boom", false);
        assert!(!new, "the same failure again is not reported");
        assert!(again > wait, "the backoff grows");
        let (name, mark) = state.take_due(retry + again).pop().expect("due again");
        state.wrote(&name, mark, Duration::ZERO, retry + again);
        assert!(state.is_synced(&ticket));
    }

    #[test]
    fn one_failing_source_holds_back_no_other() {
        let mut state = State::default();
        let t0 = Instant::now();
        state.mark("bad", true);
        state.mark("good", true);
        assert_eq!(state.take_due(t0).len(), 2);
        state.failed("bad", t0, "refused", false);
        state.wrote("good", 1, Duration::ZERO, t0);
        let ticket = state.mark("good", true);
        assert_eq!(state.take_due(t0), vec![("good".to_owned(), 2)]);
        state.wrote("good", 2, Duration::ZERO, t0);
        assert!(state.is_synced(&ticket));
    }

    #[test]
    fn a_refusal_for_size_is_said_until_a_write_ends_it() {
        let flags = Flags::default();
        let t0 = Instant::now();
        assert_eq!(flags.size_refusal("big"), None);
        let (_, new) = flags
            .lock()
            .failed("big", t0, FLAGS_TOO_LARGE_MESSAGE, true);
        assert!(new);
        assert_eq!(flags.size_refusal("big"), Some(FLAGS_TOO_LARGE_MESSAGE));
        assert_eq!(flags.size_refusal("other"), None, "per source");
        // Another failure (the apiserver away) is no longer a refusal for size.
        flags
            .lock()
            .failed("big", t0, "cannot write: timeout", false);
        assert_eq!(flags.size_refusal("big"), None);
        flags
            .lock()
            .failed("big", t0, FLAGS_TOO_LARGE_MESSAGE, true);
        flags.lock().wrote("big", 1, Duration::ZERO, t0);
        assert_eq!(flags.size_refusal("big"), None, "a write that fits ends it");
        assert!(!FLAGS_TOO_LARGE_MESSAGE.contains('\n'));
    }

    #[tokio::test]
    async fn a_deletion_waits_for_a_write_of_its_own_source() {
        let flags = Arc::new(Flags::default());
        let ticket = flags.mpo_gone("a", "src");
        let waiter = tokio::spawn({
            let flags = flags.clone();
            async move { flags.wait_flushed(ticket, Duration::from_secs(5)).await }
        });
        // A round that wrote another source does not release it.
        flags
            .lock()
            .wrote("other", 9, Duration::ZERO, Instant::now());
        flags.progress.send_modify(|r| *r += 1);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let (name, mark) = flags.lock().take_due(Instant::now()).remove(0);
        flags
            .lock()
            .wrote(&name, mark, Duration::ZERO, Instant::now());
        flags.progress.send_modify(|r| *r += 1);
        assert!(waiter.await.expect("joined"));
    }
}
