//! Undo (issue "undo"), end to end through the real apiserver, registry and `kubectl mpo` as a
//! kubectl plugin: kept versions, `status.history`, a digest pin (`rollback`, `unpin`), the
//! rollback on delete, and `diff --pending`.

mod support;

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value;
use support::{
    images::ModuleImage,
    registry::RegistryKind,
    scenario::{Scenario, files_under, sorted},
};

const WAIT: Duration = Duration::from_secs(60);
const TAG: &str = "main-patch-03354";

/// `kubectl mpo ARGS`, the plugin found on PATH as a user installs it.
fn kubectl_mpo(s: &Scenario, args: &[&str]) -> Output {
    let plugin_dir = Path::new(env!("CARGO_BIN_EXE_kubectl-mpo"))
        .parent()
        .expect("plugin dir")
        .to_owned();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(&s.cluster.kubectl)
        .arg("mpo")
        .args(args)
        .env("KUBECONFIG", &s.cluster.kubeconfig)
        .env("PATH", path)
        .env("DOCKER_CONFIG", "/nonexistent")
        .output()
        .expect("kubectl runs")
}

fn ok(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: exit {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Blob GETs the registry served so far (a rollback to a kept version makes none).
fn blob_gets(s: &Scenario) -> usize {
    s.registry.count_requests("GET", "/blobs/")
}

#[tokio::test]
async fn a_bad_build_is_rolled_back_in_one_command_without_a_download_and_the_pin_holds() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "undo", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let good = ModuleImage::module(&module, 900, "good");
    let good_digest = s.push(&module, TAG, &good).await;
    s.apply_mpo(&module, TAG, "1h");
    s.wait_for_digest(&module, &good_digest, WAIT).await;
    let bad = ModuleImage::module(&module, 900, "broken");
    let bad_digest = s.push(&module, TAG, &bad).await;
    ok(kubectl_mpo(&s, &["renew", &module, "--wait"]), "renew");
    s.wait_for_digest(&module, &bad_digest, WAIT).await;

    let history: Value = serde_json::from_str(&ok(
        kubectl_mpo(&s, &["history", &module, "-o", "json"]),
        "history",
    ))
    .expect("history json");
    assert_eq!(history[0]["digest"], bad_digest.as_str(), "{history}");
    assert_eq!(history[0]["active"], true);
    assert_eq!(history[1]["digest"], good_digest.as_str(), "{history}");

    let blobs = blob_gets(&s);
    let shown = ok(kubectl_mpo(&s, &["rollback", &module]), "rollback");
    assert!(
        shown.contains(&good_digest) && shown.contains("true"),
        "{shown}"
    );
    let mpo = s.mpo(&module);
    assert_eq!(mpo["status"]["imageDigest"], good_digest.as_str());
    assert_eq!(mpo["status"]["pinned"], true);
    assert_eq!(mpo["spec"]["imageDigest"], good_digest.as_str());
    assert_eq!(
        blob_gets(&s),
        blobs,
        "switched back from disk: no blob requested"
    );
    assert_eq!(
        s.active_hex(&module).as_deref(),
        Some(good_digest.trim_start_matches("sha256:"))
    );
    assert_eq!(
        sorted(files_under(&s.module_dir(&module).join("dev/"))),
        sorted(good.files()),
        "the good build's files are active again"
    );
    let table = cluster.kubectl_ok(&["get", "mop", &module]);
    assert!(
        table.contains("PINNED") && table.contains("true"),
        "{table}"
    );

    // Pinned: the tag moves, a check runs, nothing changes.
    let newer = s
        .push(&module, TAG, &ModuleImage::module(&module, 900, "newer"))
        .await;
    ok(
        kubectl_mpo(&s, &["renew", &module, "--wait"]),
        "renew while pinned",
    );
    assert_eq!(
        s.mpo(&module)["status"]["imageDigest"],
        good_digest.as_str()
    );

    // Unpinned: the tag's digest now, at once.
    let shown = ok(kubectl_mpo(&s, &["unpin", &module]), "unpin");
    assert!(shown.contains(&newer), "{shown}");
    let mpo = s.mpo(&module);
    assert_eq!(mpo["status"]["imageDigest"], newer.as_str());
    assert_eq!(mpo["status"]["pinned"], false);
    assert!(mpo["spec"]["imageDigest"].is_null(), "{mpo}");

    // Too far back, or not a digest: a one-line error and nothing written.
    let far = kubectl_mpo(&s, &["rollback", &module, "--steps", "9"]);
    assert_eq!(far.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&far.stderr).contains("nothing 9 steps back"));
    let bad_to = kubectl_mpo(&s, &["rollback", &module, "--to", "sha256:nothex"]);
    assert_eq!(bad_to.status.code(), Some(2));
    assert!(s.mpo(&module)["spec"]["imageDigest"].is_null());
    // Text logs into a file carry no terminal colours (they did; `grep key=value` missed them).
    let log = s.operator.log();
    assert!(log.contains("switched back to a kept version") && !log.contains('\x1b'));
}

#[tokio::test]
async fn a_pin_to_a_digest_not_on_disk_is_pulled_by_digest() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "pin", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let old = ModuleImage::module(&module, 900, "old");
    let old_digest = s.push(&module, "old", &old).await;
    let current = s
        .push(&module, TAG, &ModuleImage::module(&module, 900, "current"))
        .await;
    s.apply_mpo(&module, TAG, "1h");
    s.wait_for_digest(&module, &current, WAIT).await;
    let shown = ok(
        kubectl_mpo(
            &s,
            &["rollback", &module, "--to", &old_digest, "-o", "json"],
        ),
        "rollback --to",
    );
    let mpo: Value = serde_json::from_str(&shown).expect("json");
    assert_eq!(mpo["status"]["imageDigest"], old_digest.as_str());
    assert_eq!(
        sorted(files_under(&s.module_dir(&module).join("dev/"))),
        sorted(old.files())
    );
    assert!(
        s.registry
            .count_requests("GET", &format!("manifests/{old_digest}"))
            >= 1,
        "pulled by its digest"
    );
}

/// A version another process put there (a release), laid out as the store lays out its own,
/// with the module loader's link, before the operator first sees the module.
fn seed_release(root: &Path, module: &str, image: &ModuleImage) -> String {
    let hex = format!("{:0>64}", "5eed");
    let version = root.join(module).join("versions").join(&hex);
    for (path, data) in image.files() {
        let file = version.join(path);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("dirs");
        std::fs::write(file, data).expect("file");
    }
    std::os::unix::fs::symlink(format!("versions/{hex}"), root.join(module).join("dev"))
        .expect("dev link");
    std::fs::create_dir_all(root.join("modules")).expect("modules");
    std::os::unix::fs::symlink(
        format!("../{module}/dev"),
        root.join("modules").join(format!("900-{module}")),
    )
    .expect("loader link");
    hex
}

#[tokio::test]
async fn deleting_with_rollback_switches_back_to_the_version_from_before_the_override() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "rollback", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    s.operator.kill();
    let release = ModuleImage::module(&module, 900, "release");
    let release_hex = seed_release(s.operator.download_root(), &module, &release);
    s.operator.restart();
    let digest = s
        .push(&module, TAG, &ModuleImage::module(&module, 900, "override"))
        .await;
    let yaml = s.mpo_yaml(&module, TAG, "1h") + "  rollback: true\n";
    s.cluster.apply_ok(&yaml);
    s.track(&format!("mop/{module}"));
    s.wait_for_digest(&module, &digest, WAIT).await;
    assert_eq!(
        s.active_hex(&module).as_deref(),
        Some(digest.trim_start_matches("sha256:"))
    );

    cluster.kubectl_ok(&["delete", &format!("mop/{module}"), "--timeout=60s"]);
    assert_eq!(
        s.active_hex(&module).as_deref(),
        Some(release_hex.as_str()),
        "the release is active again"
    );
    assert_eq!(
        sorted(files_under(&s.module_dir(&module).join("dev/"))),
        sorted(release.files())
    );
    cluster.wait_for_event(&module, "RolledBack", WAIT).await;

    // A second override without a release beneath it: deleting keeps its module, and says so.
    let other = format!("{}-n", s.id.0);
    let other_digest = s
        .push(&other, TAG, &ModuleImage::module(&other, 900, "only"))
        .await;
    s.cluster
        .apply_ok(&(s.mpo_yaml(&other, TAG, "1h") + "  rollback: true\n"));
    s.track(&format!("mop/{other}"));
    s.wait_for_digest(&other, &other_digest, WAIT).await;
    cluster.kubectl_ok(&["delete", &format!("mop/{other}"), "--timeout=60s"]);
    assert_eq!(
        s.active_hex(&other).as_deref(),
        Some(other_digest.trim_start_matches("sha256:")),
        "nothing to roll back to: the override's module stays"
    );
    cluster
        .wait_for_event(&other, "NothingToRollBackTo", WAIT)
        .await;
}

#[tokio::test]
async fn diff_pending_shows_what_the_next_check_would_switch_in_and_writes_nothing() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "pending", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let first = s
        .push(&module, TAG, &ModuleImage::module(&module, 900, "one"))
        .await;
    s.apply_mpo(&module, TAG, "1h");
    s.wait_for_digest(&module, &first, WAIT).await;
    let same = kubectl_mpo(&s, &["diff", "--pending", &module]);
    assert_eq!(same.status.code(), Some(0), "nothing pending");

    let next = ModuleImage::module(&module, 900, "one").file("templates/new.yaml", "kind: New\n");
    s.push(&module, TAG, &next).await;
    let before = s.mpo(&module)["metadata"]["resourceVersion"].clone();
    let out = kubectl_mpo(&s, &["diff", "--pending", &module, "-o", "json"]);
    assert_eq!(out.status.code(), Some(1), "differences: exit 1");
    let changes: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        changes
            .as_array()
            .expect("a list")
            .iter()
            .any(|c| c["path"] == "templates/new.yaml" && c["change"] == "added"),
        "{changes}"
    );
    let after = s.mpo(&module);
    assert_eq!(after["metadata"]["resourceVersion"], before, "no write");
    assert_eq!(after["status"]["imageDigest"], first.as_str());
}
