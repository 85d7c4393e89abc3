//! SPEC §3.6: the `overridden` flags of a ModuleSource are derived state with one writer.
//!
//! Per source, the flagged set is computed from the cached MPOs — those on that source, not being
//! deleted, holding an applied image (`status.imageDigest`) and listed by the source (or the
//! source not scanned yet, as in the pass) — and applied as a whole under one field manager. A
//! module that leaves the set loses its field, and its entry with it unless the scan lists it, so
//! moving `spec.source`, deleting an MPO or an unlisted module leave nothing behind.
//!
//! Writes are debounced: MPOs mark their source dirty, and a writer task flushes dirty sources at
//! most once per [`DEBOUNCE`], comparing with what it owns first, so a cold start of a thousand
//! MPOs writes each source a handful of times and an idle cluster not at all.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::Duration,
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

use super::{schedule::api_backoff, source::check_module_listed};
use crate::crd::{ModulePullOverride, ModuleSource};

/// The one field manager of the flags.
pub const FLAGS_FIELD_MANAGER: &str = "mpo-operator-flags";
/// Field managers of earlier versions (one per MPO); their fields are given up on first contact.
const LEGACY_MANAGER_PREFIX: &str = "mpo-operator-override-";
/// Whether `manager` writes flags (this version's or an earlier one's), so owning an entry does
/// not make it listed.
pub fn is_flags_manager(manager: &str) -> bool {
    manager == FLAGS_FIELD_MANAGER || manager.starts_with(LEGACY_MANAGER_PREFIX)
}

/// How long changes are gathered before a source is written.
pub const DEBOUNCE: Duration = Duration::from_millis(500);
/// How often every source is recomputed from scratch (no write unless something differs).
const RESYNC: Duration = Duration::from_secs(300);

/// Which sources need their flags recomputed, and what was last written to each.
pub struct Flags {
    state: Mutex<State>,
    wake: Notify,
    /// The last flush round that finished without an error.
    flushed: tokio::sync::watch::Sender<u64>,
}

impl Default for Flags {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            wake: Notify::new(),
            flushed: tokio::sync::watch::Sender::new(0),
        }
    }
}

#[derive(Default)]
struct State {
    dirty: BTreeSet<String>,
    /// Per MPO: its source and whether it would be flagged, as last seen.
    seen: HashMap<String, (String, bool)>,
    /// Per source: the set this operator last applied.
    written: HashMap<String, BTreeSet<String>>,
    /// Flush rounds started so far; a source marked dirty now is written by a later round.
    rounds: u64,
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
            state.dirty.insert(old_source);
        }
        state.dirty.insert(view.0);
        drop(state);
        self.wake.notify_one();
    }

    /// The MPO is being deleted (or is gone): its source loses its flag. Returns the round after
    /// which the flag is gone, for [`Flags::wait_flushed`].
    pub fn mpo_gone(&self, name: &str, source: &str) -> u64 {
        let mut state = self.lock();
        if let Some((old_source, _)) = state.seen.remove(name) {
            state.dirty.insert(old_source);
        }
        state.dirty.insert(source.to_owned());
        let round = state.rounds;
        drop(state);
        self.wake.notify_one();
        round
    }

    /// Waits (at most `within`) until a round later than `round` has been written, so that a
    /// deleted MPO's finalizer goes only once its flag is gone; a failing write does not block
    /// the deletion forever (the next resync clears the flag).
    pub async fn wait_flushed(&self, round: u64, within: Duration) -> bool {
        let mut flushed = self.flushed.subscribe();
        tokio::time::timeout(within, flushed.wait_for(|done| *done > round))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Something about the source changed that may change its set (its listing).
    pub fn source_changed(&self, source: &str) {
        self.lock().dirty.insert(source.to_owned());
        self.wake.notify_one();
    }

    /// Recompute every source, trusting managedFields rather than memory (at start and now and
    /// then, so a flag left by a crash or by an older version is corrected).
    fn resync_all(&self, sources: &Store<ModuleSource>) {
        let mut state = self.lock();
        state.written.clear();
        state
            .dirty
            .extend(sources.state().iter().map(|s| s.name_any()));
    }

    /// The sources to write in a new round, and that round's number.
    fn take_dirty(&self) -> (u64, BTreeSet<String>) {
        let mut state = self.lock();
        state.rounds += 1;
        (state.rounds, std::mem::take(&mut state.dirty))
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
    mpos.into_iter()
        .filter(|m| m.spec.source == name && holds_image(m))
        .map(ResourceExt::name_any)
        .filter(|module| check_module_listed(source, module).is_ok())
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

/// `k:{"name":"echo"}` → `echo`.
fn list_key_name(key: &str) -> Option<String> {
    let object: Value = serde_json::from_str(key.strip_prefix("k:")?).ok()?;
    object.get("name")?.as_str().map(str::to_owned)
}

/// Managers of earlier versions that still own fields in the source's status.
pub fn legacy_managers(source: &ModuleSource) -> Vec<String> {
    source
        .managed_fields()
        .iter()
        .filter_map(|e| e.manager.clone())
        .filter(|m| m.starts_with(LEGACY_MANAGER_PREFIX))
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
pub async fn run_writer(
    flags: Arc<Flags>,
    client: Client,
    mpos: Store<ModulePullOverride>,
    sources: Store<ModuleSource>,
    stop: CancellationToken,
) {
    let api = Api::<ModuleSource>::all(client);
    flags.resync_all(&sources);
    let mut resync = tokio::time::interval(RESYNC);
    resync.tick().await;
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = flags.wake.notified() => {}
            _ = resync.tick() => flags.resync_all(&sources),
            () = stop.cancelled() => return,
        }
        // Gather what else changes meanwhile (a cold start finishes many MPOs per second).
        tokio::select! {
            () = tokio::time::sleep(DEBOUNCE) => {}
            () = stop.cancelled() => return,
        }
        let mut failed = false;
        let (round, dirty) = flags.take_dirty();
        for name in dirty {
            if stop.is_cancelled() {
                return;
            }
            // Raced with `stop` (also a lost lease): no write may finish after it.
            let flushed = tokio::select! {
                flushed = flush(&flags, &api, &mpos, &sources, &name) => flushed,
                () = stop.cancelled() => return,
            };
            if let Err(e) = flushed {
                warn!(source = %name, "cannot write the overridden flags: {e}");
                flags.lock().dirty.insert(name);
                failed = true;
            }
        }
        if failed {
            // Keep the dirty sources and try again later, not in a tight loop.
            let wait = api_backoff(failures, "flags");
            failures = failures.saturating_add(1);
            flags.wake.notify_one();
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = stop.cancelled() => return,
            }
        } else {
            failures = 0;
            flags.flushed.send_replace(round);
        }
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
        .unwrap_or_else(|| owned_flags(&source, FLAGS_FIELD_MANAGER));
    let legacy = legacy_managers(&source);
    if desired == current && legacy.is_empty() {
        return Ok(());
    }
    let params = PatchParams::apply(FLAGS_FIELD_MANAGER).force();
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
    use crate::crd::{
        ModulePullOverrideSpec, ModulePullOverrideStatus, ModuleSourceStatus, SourceModule,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

    fn source(listed: Option<&[&str]>) -> ModuleSource {
        let mut s = crate::crd::test_source("src");
        s.status = listed.map(|names| ModuleSourceStatus {
            modules: Some(
                names
                    .iter()
                    .map(|n| SourceModule {
                        name: (*n).into(),
                        ..Default::default()
                    })
                    .collect(),
            ),
            modules_count: Some(names.len() as i64),
            ..Default::default()
        });
        s
    }

    fn mpo(name: &str, source: &str, digest: Option<&str>) -> ModulePullOverride {
        let mut m = ModulePullOverride::new(
            name,
            ModulePullOverrideSpec {
                image_tag: "t".into(),
                source: source.into(),
                scan_interval: Default::default(),
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
    fn an_empty_set_owns_nothing() {
        assert_eq!(flags_apply_body(&BTreeSet::new())["status"], json!({}));
        assert_eq!(
            flags_apply_body(&set(&["a"]))["status"]["modules"],
            json!([{"name": "a", "overridden": true}])
        );
    }

    #[test]
    fn moving_an_mpo_marks_both_sources() {
        let flags = Flags::default();
        flags.mpo_seen(&mpo("a", "one", Some("sha256:1")));
        assert_eq!(flags.take_dirty(), (1, set(&["one"])));
        flags.mpo_seen(&mpo("a", "one", Some("sha256:1")));
        assert!(
            flags.take_dirty().1.is_empty(),
            "an unchanged MPO marks nothing"
        );
        flags.mpo_seen(&mpo("a", "two", Some("sha256:1")));
        assert_eq!(flags.take_dirty().1, set(&["one", "two"]));
        let round = flags.mpo_gone("a", "two");
        assert_eq!(flags.take_dirty(), (round + 1, set(&["two"])));
    }
}
