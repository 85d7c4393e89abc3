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
use crate::crd::{ModulePullOverride, ModuleSource};

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
    ) {
        let api = Api::<ModuleSource>::all(client);
        let mut views: HashMap<String, SourceView> = HashMap::new();
        let events = watcher(api, config)
            .default_backoff()
            .reflect_shared(self.writer);
        let mut events = std::pin::pin!(events.into_stream());
        while let Some(event) = events.next().await {
            match event {
                Ok(watcher::Event::Apply(source) | watcher::Event::InitApply(source)) => {
                    let view = SourceView::of(&source);
                    let old = views.insert(source.name_any(), view.clone());
                    on_change(&source, old.as_ref(), Some(&view), &mpos, &flags, &wake);
                }
                Ok(watcher::Event::Delete(source)) => {
                    let old = views.remove(&source.name_any());
                    on_change(&source, old.as_ref(), None, &mpos, &flags, &wake);
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => {}
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

fn on_change(
    source: &ModuleSource,
    old: Option<&SourceView>,
    new: Option<&SourceView>,
    mpos: &Store<ModulePullOverride>,
    flags: &Flags,
    wake: &mpsc::UnboundedSender<ObjectRef<ModulePullOverride>>,
) {
    if old == new {
        return;
    }
    let name = source.name_any();
    flags.source_changed(&name);
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
