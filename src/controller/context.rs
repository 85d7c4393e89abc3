use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
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
    pub fence: tokio_util::sync::CancellationToken,
    reporter: Reporter,
    registries: Mutex<HashMap<String, (String, Registry)>>,
    checks: Mutex<HashMap<String, LastCheck>>,
    api_failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        store: ModuleStore,
        settings: Settings,
        metrics: Arc<Metrics>,
        sources: Store<ModuleSource>,
        flags: Arc<Flags>,
        fence: tokio_util::sync::CancellationToken,
    ) -> Self {
        let reporter = Reporter {
            controller: "mpo-operator".into(),
            instance: settings.identity.clone(),
        };
        Self {
            reporter,
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

    /// Publishes a Kubernetes Event on `object`; a failure to publish is logged, not fatal.
    pub async fn event<K: Resource<DynamicType = ()>>(
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
        // A fresh recorder each time: a shared one folds events with the same reason into one
        // series and keeps the first note, so a second ModuleUpdated would show the old digest.
        // We publish only on changes, so there is nothing to fold.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        if let Err(e) = recorder.publish(&event, &object.object_ref(&())).await {
            warn!("cannot publish event {reason}: {e}");
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
