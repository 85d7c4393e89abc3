//! The one watch of ModuleSources, shared by both controllers (SPEC §3, Triggers).
//!
//! Every ModuleSource lives in one reflector store: passes read their source from it (no GET per
//! pass) and the scan controller is driven by a subscription to it. Each event is reduced to a
//! [`SourceView`] — registry settings and the listed modules — and compared with the previous one,
//! so that only MPOs whose inputs changed are woken: a write of `overridden` flags or `syncTime`
//! wakes nobody, where it used to wake every MPO of the source (work that grew as N²).

use std::{collections::HashMap, sync::Arc};

use futures::{StreamExt, TryStreamExt};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, ReflectHandle, Store},
        watcher,
    },
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::{
    flags::Flags,
    triggers::{SourceView, mpos_to_wake},
};
use crate::{
    crd::{ModulePullOverride, ModuleSource},
    metrics::Metrics,
};

/// Room for subscribers that lag behind the watch before it waits for them.
const SUBSCRIBER_BUFFER: usize = 1024;

/// The shared store and the stream that keeps it current (poll it, or nothing moves).
pub struct SourceWatch {
    pub store: Store<ModuleSource>,
    writer: reflector::store::Writer<ModuleSource>,
}

impl SourceWatch {
    pub fn new() -> Self {
        let (store, writer) = reflector::store_shared(SUBSCRIBER_BUFFER);
        Self { store, writer }
    }

    /// Source changes for another controller. Every subscriber must be polled: the watch waits
    /// for one whose buffer is full, so take one only for a controller that runs.
    pub fn subscribe(&self) -> Option<ReflectHandle<ModuleSource>> {
        self.writer.subscribe()
    }

    /// Runs the watch until the stream ends (it does not: the watcher retries with backoff),
    /// sending the MPOs a change must wake to `wake`.
    pub async fn run(
        self,
        client: Client,
        config: watcher::Config,
        mpos: Store<ModulePullOverride>,
        flags: Arc<Flags>,
        wake: mpsc::UnboundedSender<ObjectRef<ModulePullOverride>>,
        metrics: Arc<Metrics>,
    ) {
        let api = Api::<ModuleSource>::all(client);
        let mut views: HashMap<String, SourceView> = HashMap::new();
        // The views of a (re)list in progress: the store still holds the old state until
        // `InitDone`, so a pass woken before then would read the old source and then wait a
        // whole interval.
        let mut relisted: Option<HashMap<String, SourceView>> = None;
        let events = watcher(api, config)
            .default_backoff()
            .reflect_shared(self.writer);
        let mut events = std::pin::pin!(events.into_stream());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Init) => relisted = Some(HashMap::new()),
                Ok(watcher::Event::InitApply(source)) => {
                    flags.observed(&source);
                    let view = SourceView::of(&source);
                    relisted
                        .get_or_insert_with(HashMap::new)
                        .insert(source.name_any(), view);
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = relisted.take().unwrap_or_default();
                    for (name, old, new) in relist_changes(&views, &fresh) {
                        on_change(&name, old, new, &mpos, &flags, &wake);
                    }
                    views = fresh;
                    metrics.listed("modulesources");
                }
                Ok(watcher::Event::Apply(source)) => {
                    flags.observed(&source);
                    let view = SourceView::of(&source);
                    let old = views.insert(source.name_any(), view.clone());
                    on_change(
                        &source.name_any(),
                        old.as_ref(),
                        Some(&view),
                        &mpos,
                        &flags,
                        &wake,
                    );
                }
                Ok(watcher::Event::Delete(source)) => {
                    let old = views.remove(&source.name_any());
                    on_change(&source.name_any(), old.as_ref(), None, &mpos, &flags, &wake);
                }
                Err(e) => warn!("ModuleSource watch: {e}"),
            }
        }
    }
}

impl Default for SourceWatch {
    fn default() -> Self {
        Self::new()
    }
}

/// What a finished (re)list changed, source by source: every source in it against the view
/// before (new, changed or unchanged), and every source the views held that the list no longer
/// has (deleted while the watch was down: no `Delete` event ever comes for it).
fn relist_changes<'a>(
    views: &'a HashMap<String, SourceView>,
    fresh: &'a HashMap<String, SourceView>,
) -> Vec<(String, Option<&'a SourceView>, Option<&'a SourceView>)> {
    let listed = fresh
        .iter()
        .map(|(name, view)| (name.clone(), views.get(name), Some(view)));
    let gone = views
        .iter()
        .filter(|(name, _)| !fresh.contains_key(*name))
        .map(|(name, view)| (name.clone(), Some(view), None));
    listed
        .chain(gone)
        .filter(|(_, old, new)| old != new)
        .collect()
}

fn on_change(
    name: &str,
    old: Option<&SourceView>,
    new: Option<&SourceView>,
    mpos: &Store<ModulePullOverride>,
    flags: &Flags,
    wake: &mpsc::UnboundedSender<ObjectRef<ModulePullOverride>>,
) {
    if old == new {
        return;
    }
    flags.source_changed(name);
    let all = mpos.state();
    let on_source = all
        .iter()
        .filter(|m| m.spec.source == name)
        .map(|m| m.metadata.name.as_deref().unwrap_or_default());
    let woken = mpos_to_wake(old, new, on_source);
    debug!(source = %name, woken = woken.len(), "source changed");
    for mpo in woken {
        // The controller may be stopping; then nothing needs waking.
        let _ = wake.send(ObjectRef::new(mpo));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd::test_source_listing;

    fn view(modules: &[&str]) -> SourceView {
        SourceView::of(&test_source_listing(
            "s",
            Some(modules.len() as i64),
            modules,
        ))
    }

    #[test]
    fn a_relist_reports_new_changed_and_vanished_sources_and_nothing_else() {
        let views: HashMap<String, SourceView> = [
            ("same".to_owned(), view(&["a"])),
            ("changed".to_owned(), view(&["a"])),
            ("deleted-in-the-gap".to_owned(), view(&["a"])),
        ]
        .into();
        let fresh: HashMap<String, SourceView> = [
            ("same".to_owned(), view(&["a"])),
            ("changed".to_owned(), view(&["a", "b"])),
            ("created-in-the-gap".to_owned(), view(&["c"])),
        ]
        .into();
        let mut changes: Vec<(String, bool, bool)> = relist_changes(&views, &fresh)
            .into_iter()
            .map(|(name, old, new)| (name, old.is_some(), new.is_some()))
            .collect();
        changes.sort();
        assert_eq!(
            changes,
            vec![
                ("changed".to_owned(), true, true),
                ("created-in-the-gap".to_owned(), false, true),
                ("deleted-in-the-gap".to_owned(), true, false),
            ]
        );
        assert!(relist_changes(&views, &views).is_empty());
    }
}
