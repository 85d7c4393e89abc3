//! Bad input and a broken registry: a clear `status.message`, Ready=False, and the previous
//! digest, time and files untouched; recovery without any user action once the cause is fixed.

mod support;

use std::time::Duration;

use support::{
    images::{ModuleImage, push_module_names},
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario, files_under},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

/// The status fields and files that must survive a failure.
struct Snapshot {
    digest: serde_json::Value,
    updated_at: serde_json::Value,
    files: Vec<(String, Vec<u8>)>,
    active: Option<String>,
}

fn snapshot(s: &Scenario, module: &str) -> Snapshot {
    let mpo = s.mpo(module);
    Snapshot {
        digest: mpo["status"]["imageDigest"].clone(),
        updated_at: mpo["status"]["updatedAt"].clone(),
        files: files_under(&s.module_dir(module).join("dev/")),
        active: s.active_hex(module),
    }
}

fn assert_untouched(s: &Scenario, module: &str, before: &Snapshot, what: &str) {
    let mpo = s.mpo(module);
    assert_eq!(
        mpo["status"]["imageDigest"], before.digest,
        "{what}: imageDigest changed"
    );
    assert_eq!(
        mpo["status"]["updatedAt"], before.updated_at,
        "{what}: updatedAt changed"
    );
    assert_eq!(s.active_hex(module), before.active, "{what}: dev moved");
    assert_eq!(
        files_under(&s.module_dir(module).join("dev/")),
        before.files,
        "{what}: files changed"
    );
    let ready = &mpo["status"]["conditions"][0];
    assert_eq!(ready["status"], "False", "{what}: Ready must be False");
}

#[tokio::test]
async fn a_missing_source_is_reported_and_its_creation_heals_the_override() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "nosource", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.source = format!("{}-late", s.id.0);
    s.apply_mpo(&module, "dev", "1h");
    let mpo = s
        .wait_for_message(
            &module,
            &format!("ModuleSource \"{}\" not found", s.source),
            WAIT,
        )
        .await;
    assert_eq!(mpo["status"]["conditions"][0]["status"], "False");
    assert_eq!(mpo["status"]["conditions"][0]["reason"], "SourceNotFound");
    // Creating the source triggers the MPO at once, although its interval is an hour.
    let docker_cfg = s.registry.docker_cfg();
    s.apply_source(&support::scenario::SourceOptions {
        docker_cfg: Some(docker_cfg),
        with_ca: false,
    });
    s.wait_for_digest(&module, &digest, WAIT).await;
    cluster.kubectl_ok(&["delete", &format!("mop/{module}"), "--timeout=30s"]);
    cluster.kubectl_ok(&["delete", &format!("ms/{}", s.source), "--timeout=30s"]);
}

#[tokio::test]
async fn a_module_missing_from_the_source_is_reported_without_asking_the_registry() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "unlisted",
        RegistryKind::Plain,
        &["other"],
        &["--source-scan-interval=2s"],
    )
    .await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    wait_for("the scan to list the source", WAIT, || async {
        (s.source_object()["status"]["modulesCount"] == 1).then_some(())
    })
    .await;
    s.apply_mpo(&module, "dev", "1h");
    s.wait_for_message(
        &module,
        &format!(
            "module \"{module}\" is not in ModuleSource \"{}\"",
            s.source
        ),
        WAIT,
    )
    .await;
    let path = format!("/v2/{REPO_PATH}/{module}/manifests/dev");
    assert_eq!(
        s.registry.count_requests("HEAD", &path),
        0,
        "the registry must not be asked"
    );
    // Publishing the module name fixes it on the next scan.
    push_module_names(&s.registry, REPO_PATH, &[&module])
        .await
        .expect("push name");
    s.wait_for_digest(&module, &digest, WAIT).await;
}

#[tokio::test]
async fn a_missing_tag_keeps_the_previous_module_until_the_tag_appears() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "notag", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "v1", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "v1", "2s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let before = snapshot(&s, &module);

    s.apply_mpo(&module, "v2", "2s");
    let reference = format!("{}/{REPO_PATH}/{module}:v2", s.registry.host());
    let mpo = s
        .wait_for_message(
            &module,
            &format!("cannot resolve {reference}: manifest unknown"),
            WAIT,
        )
        .await;
    assert_eq!(mpo["status"]["conditions"][0]["reason"], "ResolveFailed");
    assert_untouched(&s, &module, &before, "missing tag");

    let v2 = s
        .push(&module, "v2", &ModuleImage::module(&module, 900, "2"))
        .await;
    s.wait_for_digest(&module, &v2, WAIT).await;
}

#[tokio::test]
async fn a_registry_outage_keeps_the_module_and_recovers_by_itself() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "outage",
        RegistryKind::Plain,
        &[],
        &["--scan-module-sources=false"],
    )
    .await;
    let (module, digest) = s.ready_module("2s").await;
    let before = snapshot(&s, &module);

    s.registry.stop();
    let reference = format!("{}/{REPO_PATH}/{module}:dev", s.registry.host());
    s.wait_for_message(
        &module,
        &format!("cannot resolve {reference}: cannot connect"),
        WAIT,
    )
    .await;
    assert_untouched(&s, &module, &before, "registry down");

    s.registry.restart().expect("registry restarts");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let ready = &s.mpo(&module)["status"]["conditions"][0];
    assert_eq!(ready["status"], "True");
}

#[tokio::test]
async fn an_invalid_module_is_refused_and_the_previous_one_stays() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "invalid", RegistryKind::Plain, &[], &[]).await;
    let (module, _) = s.ready_module("2s").await;
    let before = snapshot(&s, &module);

    let bad = ModuleImage::new().file("module.yaml", "name: someone-else\n");
    let bad_digest = s.push(&module, "dev", &bad).await;
    let mpo = s
        .wait_for_message(
            &module,
            &format!("invalid module {module}@{bad_digest}"),
            WAIT,
        )
        .await;
    assert_eq!(mpo["status"]["conditions"][0]["reason"], "InvalidModule");
    assert_untouched(&s, &module, &before, "invalid module");
}

#[tokio::test]
async fn a_repo_whose_host_would_change_the_urls_is_refused_by_name_and_the_module_kept() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "badhost", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let digest = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "2s");
    s.wait_for_digest(&module, &digest, WAIT).await;
    let before = snapshot(&s, &module);

    // `?` in the host would make the rest of every URL a query string.
    let options = support::scenario::SourceOptions {
        docker_cfg: None,
        with_ca: false,
    };
    let host = format!("{}?x=1", s.registry.host());
    cluster.apply_ok(&s.source_yaml_at(&host, &options));
    let mpo = s
        .wait_for_message(&module, &format!("invalid repo \"{host}/"), WAIT)
        .await;
    let message = mpo["status"]["message"].as_str().unwrap_or_default();
    assert!(
        message.ends_with("the port must be a number from 1 to 65535"),
        "{message}"
    );
    assert_untouched(&s, &module, &before, "a host with a query");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
        .args(["modules", "--repo", &format!("{host}/{REPO_PATH}")])
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .expect("kubectl-mpo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the port must be a number"), "{stderr}");
    let spaced = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
        .args(["modules", "--repo", "r.example#x/m"])
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .expect("kubectl-mpo runs");
    let stderr = String::from_utf8_lossy(&spaced.stderr);
    assert!(stderr.contains("the host must be a DNS name"), "{stderr}");
    // A host alone has no root repository: the module list is refused, not `/v2//tags/list`.
    let bare = std::process::Command::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
        .args(["modules", "--insecure-http", "--repo", s.registry.host()])
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .expect("kubectl-mpo runs");
    let stderr = String::from_utf8_lossy(&bare.stderr);
    assert_eq!(bare.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("it names only a host"), "{stderr}");

    s.apply_source(&options);
    wait_for("the message cleared", WAIT, || async {
        (s.mpo(&module)["status"]["message"] == "").then_some(())
    })
    .await;
}
