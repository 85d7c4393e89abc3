use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::Ordering},
};

use kube::{
    Client, Resource,
    runtime::{
        events::{Event, EventType, Recorder, Reporter},
        reflector::{ObjectRef, Store},
    },
};
use tracing::warn;

use super::{flags::Flags, schedule::LastCheck};
use crate::{
    crd::ModuleSource,
    metrics::Metrics,
    registry::{Registry, RegistryConfig, RegistryError},
    settings::Settings,
    storage::ModuleStore,
};

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub store: ModuleStore,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    /// Every ModuleSource, kept current by the one shared watch: passes never GET a source.
    pub sources: Store<ModuleSource>,
    /// The single writer of the sources' `overridden` flags.
    pub flags: Arc<Flags>,
    /// Cancelled when the lease is lost: in-flight passes stop, and nothing writes after it.
    pub fence: super::fence::Fence,
    /// Events waiting for the one task that publishes them (in order, off the passes' path).
    events: tokio::sync::mpsc::Sender<PendingEvent>,
    /// Queued and not yet published (or dropped), for the drain at shutdown.
    unpublished: Arc<std::sync::atomic::AtomicUsize>,
    registries: Mutex<HashMap<String, (String, Registry)>>,
    checks: Mutex<HashMap<String, LastCheck>>,
    api_failures: Mutex<HashMap<String, u32>>,
    /// What signature checks found, per digest and key set: no request on the idle path.
    pub(super) signatures: super::verify::Memory,
}

/// Events a cold start may queue before new ones are dropped.
const EVENT_QUEUE: usize = 4096;

struct PendingEvent {
    reference: k8s_openapi::api::core::v1::ObjectReference,
    event: Event,
}

/// Publishes queued events in order until every sender is gone or the lease is lost.
async fn publish_events(
    mut queue: tokio::sync::mpsc::Receiver<PendingEvent>,
    client: Client,
    reporter: Reporter,
    fence: super::fence::Fence,
    unpublished: Arc<std::sync::atomic::AtomicUsize>,
) {
    loop {
        let pending = tokio::select! {
            pending = queue.recv() => pending,
            () = fence.cancelled() => None,
        };
        let Some(PendingEvent { reference, event }) = pending else {
            return;
        };
        // A fresh recorder each time: a shared one folds events with the same reason into one
        // series and keeps the first note, so a second ModuleUpdated would show the old digest.
        // We publish only on changes, so there is nothing to fold.
        let recorder = Recorder::new(client.clone(), reporter.clone());
        // Raced with the fence: no event is stored after the lease is lost.
        tokio::select! {
            published = recorder.publish(&event, &reference) => {
                if let Err(e) = published {
                    warn!("cannot publish event {}: {e}", event.reason);
                }
            }
            () = fence.cancelled() => return,
        }
        unpublished.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Context {
    pub fn new(
        client: Client,
        store: ModuleStore,
        settings: Settings,
        metrics: Arc<Metrics>,
        sources: Store<ModuleSource>,
        flags: Arc<Flags>,
        fence: super::fence::Fence,
    ) -> Self {
        let reporter = Reporter {
            controller: "mpo-operator".into(),
            instance: settings.identity.clone(),
        };
        let (events, queue) = tokio::sync::mpsc::channel(EVENT_QUEUE);
        let unpublished = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(publish_events(
            queue,
            client.clone(),
            reporter,
            fence.clone(),
            unpublished.clone(),
        ));
        Self {
            events,
            unpublished,
            client,
            store,
            settings,
            metrics,
            sources,
            flags,
            fence,
            registries: Mutex::default(),
            checks: Mutex::default(),
            api_failures: Mutex::default(),
            signatures: super::verify::Memory::default(),
        }
    }

    /// A registry client per source, rebuilt when the source's access settings change, so that
    /// tokens and connections are reused across passes.
    pub fn registry(
        &self,
        source: &str,
        config: &RegistryConfig,
    ) -> Result<Registry, RegistryError> {
        let key = format!("{config:?}|{}", credentials_fingerprint(config));
        let mut cache = self
            .registries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((cached_key, registry)) = cache.get(source)
            && *cached_key == key
        {
            return Ok(registry.clone());
        }
        let registry = Registry::observed(config, self.metrics.clone())?;
        cache.insert(source.to_owned(), (key, registry.clone()));
        Ok(registry)
    }

    /// Queues a Kubernetes Event on `object` for the publisher task: a pass does not wait for
    /// the apiserver to store it (at a cold start of thousands of overrides, that wait was a
    /// fifth of every pass). Events are best-effort: a full queue drops one (logged), a failure
    /// to publish is logged, and nothing is published once the lease is lost.
    pub fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(truncate_note(note)),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        let pending = PendingEvent {
            reference: object.object_ref(&()),
            event,
        };
        self.unpublished.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.events.try_send(pending) {
            self.unpublished.fetch_sub(1, Ordering::SeqCst);
            warn!("event {reason} not published: the event queue is full or closed ({e})");
        }
    }

    /// At shutdown: waits (at most `within`) until the queued events are published.
    pub async fn drain_events(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.unpublished.load(Ordering::SeqCst) > 0 && !self.fence.is_cancelled() {
            if tokio::time::Instant::now() >= deadline {
                warn!(
                    unpublished = self.unpublished.load(Ordering::SeqCst),
                    "stopping with events not yet published"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn last_check(&self, key: &str) -> Option<LastCheck> {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    pub fn record_check(&self, key: &str, check: LastCheck) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.to_owned(), check);
    }

    /// The ModuleSource named `name`, from the shared store.
    pub fn source(&self, name: &str) -> Option<Arc<ModuleSource>> {
        self.sources.get(&ObjectRef::new(name))
    }

    /// Counts a failed API call for `key`; returns how many failed in a row before this one.
    pub fn api_failed(&self, key: &str) -> u32 {
        let mut map = self.api_failures.lock().unwrap_or_else(|p| p.into_inner());
        let count = map.entry(key.to_owned()).or_default();
        let before = *count;
        *count = count.saturating_add(1);
        before
    }

    pub fn api_succeeded(&self, key: &str) {
        self.api_failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    pub fn forget_check(&self, key: &str) {
        self.checks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

/// `Debug` of the config redacts the password, so a password change needs its own part of the key.
fn credentials_fingerprint(config: &RegistryConfig) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut hasher = DefaultHasher::new();
    match &config.credentials {
        crate::crd::RegistryCredentials::Anonymous => 0u8.hash(&mut hasher),
        crate::crd::RegistryCredentials::Basic { username, password } => {
            (username, password).hash(&mut hasher)
        }
        crate::crd::RegistryCredentials::IdentityToken { username, token } => {
            (username, token).hash(&mut hasher)
        }
        crate::crd::RegistryCredentials::Bearer(token) => token.hash(&mut hasher),
    }
    hasher.finish()
}

/// The apiserver refuses Events whose note exceeds 1 KiB; keep the start, which says what failed.
fn truncate_note(mut note: String) -> String {
    const MAX: usize = 1024;
    if note.len() > MAX {
        let mut end = MAX - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    note
}

#[cfg(test)]
mod tests {
    use super::truncate_note;

    #[test]
    fn event_notes_fit_the_apiserver_limit() {
        assert_eq!(truncate_note("short".into()), "short");
        let long = truncate_note("é".repeat(2000));
        assert!(long.len() <= 1024 && long.ends_with('…'), "{}", long.len());
    }
}
