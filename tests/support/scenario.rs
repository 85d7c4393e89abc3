//! One test's world: a registry with module names, a ModuleSource pointing at it, the operator
//! watching only this test's objects, and helpers to read what a user would see.

use std::{path::PathBuf, time::Duration};

use base64::Engine as _;
use serde_json::Value;

use super::{
    Cluster, Operator, TestId,
    images::{ModuleImage, push, push_module_names},
    registry::{RegistryKind, TestRegistry},
    wait_for,
};

pub const REPO_PATH: &str = "deckhouse/modules";

pub struct Scenario {
    pub cluster: &'static Cluster,
    pub id: TestId,
    pub registry: TestRegistry,
    pub operator: Operator,
    pub source: String,
    objects: Vec<String>,
}

pub struct SourceOptions {
    pub docker_cfg: Option<String>,
    pub with_ca: bool,
}

impl Scenario {
    /// A registry of `kind` listing `modules`, a ModuleSource for it and an operator.
    pub async fn start(
        cluster: &'static Cluster,
        test: &str,
        kind: RegistryKind,
        modules: &[&str],
        flags: &[&str],
    ) -> Self {
        Self::start_named(cluster, test, None, kind, modules, flags).await
    }

    pub async fn start_named(
        cluster: &'static Cluster,
        test: &str,
        source: Option<&str>,
        kind: RegistryKind,
        modules: &[&str],
        flags: &[&str],
    ) -> Self {
        cluster.install_crds();
        let id = TestId::new(test);
        let registry = TestRegistry::start(kind).expect("registry starts");
        push_module_names(&registry, REPO_PATH, modules)
            .await
            .expect("module names pushed");
        let source = source.map_or_else(|| id.0.clone(), str::to_owned);
        let mut scenario = Self {
            cluster,
            operator: Operator::start(cluster, &id, flags),
            id,
            registry,
            source: source.clone(),
            objects: vec![format!("ms/{source}")],
        };
        let docker_cfg = scenario.registry.docker_cfg();
        scenario.apply_source(&SourceOptions {
            docker_cfg: Some(docker_cfg),
            with_ca: true,
        });
        scenario
    }

    pub fn source_yaml(&self, options: &SourceOptions) -> String {
        self.source_yaml_at(self.registry.host(), options)
    }

    /// The source YAML with `host` (e.g. a fault proxy in front of the registry) as the registry.
    pub fn source_yaml_at(&self, host: &str, options: &SourceOptions) -> String {
        let scheme = if self.registry.kind().has_tls() {
            "HTTPS"
        } else {
            "HTTP"
        };
        let mut registry = format!("    repo: {host}/{REPO_PATH}\n    scheme: {scheme}\n");
        if let Some(cfg) = options.docker_cfg.as_ref().filter(|c| !c.is_empty()) {
            registry.push_str(&format!("    dockerCfg: {cfg}\n"));
        }
        if let (true, Some(ca)) = (options.with_ca, self.registry.ca_pem()) {
            registry.push_str("    ca: |\n");
            for line in ca.lines() {
                registry.push_str(&format!("      {line}\n"));
            }
        }
        format!(
            "apiVersion: deckhouse.io/v1alpha1\nkind: ModuleSource\nmetadata:\n  name: {}\n  labels: {{mpo-test: {}}}\nspec:\n  registry:\n{registry}",
            self.source, self.id.0
        )
    }

    pub fn apply_source(&mut self, options: &SourceOptions) {
        let yaml = self.source_yaml(options);
        self.cluster.apply_ok(&yaml);
    }

    /// Points the ModuleSource at `host` instead of the registry, e.g. a
    /// [`FaultProxy`](super::proxy::FaultProxy) in front of it. Pushes still go to the registry.
    pub fn route_source_through(&mut self, host: &str) {
        let options = SourceOptions {
            docker_cfg: Some(self.registry.docker_cfg()),
            with_ca: true,
        };
        let yaml = self.source_yaml_at(host, &options);
        self.cluster.apply_ok(&yaml);
    }

    pub fn mpo_yaml(&self, module: &str, tag: &str, interval: &str) -> String {
        format!(
            "apiVersion: deckhouse.io/v1alpha1\nkind: ModulePullOverride\nmetadata:\n  name: {module}\n  labels: {{mpo-test: {}}}\nspec:\n  imageTag: {tag}\n  scanInterval: {interval}\n  source: {}\n",
            self.id.0, self.source
        )
    }

    /// `kubectl apply -f` of the MPO, as a user does.
    pub fn apply_mpo(&mut self, module: &str, tag: &str, interval: &str) {
        let yaml = self.mpo_yaml(module, tag, interval);
        self.cluster.apply_ok(&yaml);
        let object = format!("mop/{module}");
        if !self.objects.contains(&object) {
            self.objects.insert(0, object);
        }
    }

    pub async fn push(&self, module: &str, tag: &str, image: &ModuleImage) -> String {
        push(&self.registry, &format!("{REPO_PATH}/{module}"), tag, image)
            .await
            .expect("push")
    }

    /// A module `<test id>-m` pushed as tag `dev`, its MPO applied with `interval`, and Ready:
    /// the starting point of most tests. Returns the module name and its digest.
    pub async fn ready_module(&mut self, interval: &str) -> (String, String) {
        let module = format!("{}-m", self.id.0);
        let digest = self
            .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
            .await;
        self.apply_mpo(&module, "dev", interval);
        self.wait_for_digest(&module, &digest, Duration::from_secs(60))
            .await;
        (module, digest)
    }

    /// The MPO as `kubectl get -o json` shows it.
    pub fn mpo(&self, module: &str) -> Value {
        let out = self
            .cluster
            .kubectl(&["get", &format!("mop/{module}"), "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn source_object(&self) -> Value {
        let out = self
            .cluster
            .kubectl(&["get", &format!("ms/{}", self.source), "-o", "json"]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn status_str(&self, module: &str, field: &str) -> Option<String> {
        self.mpo(module)["status"][field]
            .as_str()
            .map(str::to_owned)
    }

    /// Waits until the MPO reports `digest` with an empty message.
    pub async fn wait_for_digest(&self, module: &str, digest: &str, within: Duration) -> Value {
        wait_for(
            &format!("mop/{module} to report {digest}"),
            within,
            || async {
                let mpo = self.mpo(module);
                let status = &mpo["status"];
                (status["imageDigest"] == digest && status["message"] == "").then_some(mpo)
            },
        )
        .await
    }

    /// Waits until the MPO's message contains `text`.
    pub async fn wait_for_message(&self, module: &str, text: &str, within: Duration) -> Value {
        wait_for(
            &format!("mop/{module} message to contain {text:?}"),
            within,
            || async {
                let mpo = self.mpo(module);
                mpo["status"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
                    .then_some(mpo)
            },
        )
        .await
    }

    pub fn module_dir(&self, module: &str) -> PathBuf {
        self.operator.module_dir(module)
    }

    pub fn version_dir(&self, module: &str, digest: &str) -> PathBuf {
        self.module_dir(module)
            .join("versions")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// The digest hex `dev` points at.
    pub fn active_hex(&self, module: &str) -> Option<String> {
        let target = std::fs::read_link(self.module_dir(module).join("dev")).ok()?;
        target.file_name().map(|n| n.to_string_lossy().into_owned())
    }

    pub fn docker_cfg_for(&self, user: &str, password: &str) -> String {
        let json = format!(
            r#"{{"auths":{{"{}":{{"username":"{user}","password":"{password}"}}}}}}"#,
            self.registry.host()
        );
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    /// Deletes `object` (e.g. `ms/other`) when the scenario ends, before the source.
    pub fn track(&mut self, object: &str) {
        if !self.objects.iter().any(|o| o == object) {
            self.objects.insert(0, object.to_owned());
        }
    }

    /// A second ModuleSource `name` for the same registry, applied and tracked.
    pub fn apply_other_source(&mut self, name: &str) {
        let options = SourceOptions {
            docker_cfg: Some(self.registry.docker_cfg()),
            with_ca: true,
        };
        let yaml = self.source_yaml(&options).replace(
            &format!("name: {}\n", self.source),
            &format!("name: {name}\n"),
        );
        self.cluster.apply_ok(&yaml);
        let object = format!("ms/{name}");
        self.objects.push(object);
    }

    /// `kubectl get ms/<name> -o json`.
    pub fn source_named(&self, name: &str) -> Value {
        let out = self.cluster.kubectl(&[
            "get",
            &format!("ms/{name}"),
            "-o",
            "json",
            "--show-managed-fields",
        ]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    pub fn forget(&mut self, object: &str) {
        self.objects.retain(|o| o != object);
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        // MPOs first, while the operator still runs to release their finalizers.
        for object in &self.objects {
            let _ =
                self.cluster
                    .kubectl(&["delete", object, "--ignore-not-found", "--timeout=20s"]);
        }
    }
}

/// Every regular file under `dir`, relative, with its bytes.
pub fn files_under(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<(String, Vec<u8>)>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                walk(root, &path, out);
            } else if meta.is_file() {
                let rel = path
                    .strip_prefix(root)
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                out.push((rel, std::fs::read(&path).unwrap_or_default()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub fn sorted(mut files: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    files.sort();
    files
}

pub fn kind_name(kind: RegistryKind) -> &'static str {
    match kind {
        RegistryKind::Plain => "plain",
        RegistryKind::Htpasswd => "htpasswd",
        RegistryKind::Tls => "tls",
        RegistryKind::TlsHtpasswd => "tls-htpasswd",
        RegistryKind::Token => "token",
    }
}
