//! Deleting an override, restarting the operator on an empty disk, and many overrides at once.

mod support;

use std::time::Duration;

use support::{
    images::{ModuleImage, large_module},
    proxy::{Fault, FaultProxy},
    registry::RegistryKind,
    scenario::{REPO_PATH, Scenario, files_under, sorted},
    wait_for,
};

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn deleting_an_override_clears_the_flag_and_keeps_the_files() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "delete", RegistryKind::Plain, &[], &[]).await;
    let (module, digest) = s.ready_module("15s").await;
    let finalizers = s.mpo(&module)["metadata"]["finalizers"].clone();
    assert_eq!(
        finalizers,
        serde_json::json!(["modules.deckhouse.io/mpo-finalizer"])
    );
    let overridden = |s: &Scenario| {
        let source = s.source_object();
        source["status"]["modules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["name"] == module.as_str() && m["overridden"] == true)
    };
    wait_for("overridden: true", WAIT, || async {
        overridden(&s).then_some(())
    })
    .await;

    cluster.kubectl_ok(&["delete", &format!("mop/{module}"), "--timeout=30s"]);
    assert!(!overridden(&s), "the flag is cleared once the MPO is gone");
    assert!(
        s.version_dir(&module, &digest)
            .join("module.yaml")
            .is_file(),
        "the module stays on disk"
    );
    assert!(s.active_hex(&module).is_some());
}

#[tokio::test]
async fn deleting_an_override_whose_source_is_gone_completes() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "orphan", RegistryKind::Plain, &[], &[]).await;
    let (module, _) = s.ready_module("15s").await;
    cluster.kubectl_ok(&["delete", &format!("ms/{}", s.source), "--timeout=30s"]);
    cluster.kubectl_ok(&["delete", &format!("mop/{module}"), "--timeout=30s"]);
}

#[tokio::test]
async fn a_restarted_operator_downloads_every_module_again_onto_an_empty_disk() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "restart", RegistryKind::Plain, &[], &[]).await;
    let mut expected = Vec::new();
    for n in 0..3 {
        let module = format!("{}-m{n}", s.id.0);
        let image = ModuleImage::module(&module, 900 + n, "1");
        let digest = s.push(&module, "dev", &image).await;
        s.apply_mpo(&module, "dev", "1h");
        s.wait_for_digest(&module, &digest, WAIT).await;
        expected.push((module, digest, image));
    }
    assert_eq!(s.operator.stop(), Some(0), "SIGTERM exits 0");
    std::fs::remove_dir_all(s.operator.download_root()).expect("wipe");
    s.operator.restart();
    for (module, digest, image) in &expected {
        // The version directory is whole before `dev` is swapped to it: wait for both (it
        // failed once in CI, looked at between the two renames).
        wait_for(
            &format!("{module} on disk again and active"),
            WAIT,
            || async {
                (files_under(&s.version_dir(module, digest)) == sorted(image.files())
                    && s.active_hex(module).as_deref()
                        == Some(digest.trim_start_matches("sha256:")))
                .then_some(())
            },
        )
        .await;
    }
}

#[tokio::test]
async fn small_modules_do_not_wait_for_a_large_one() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "concurrency",
        RegistryKind::Plain,
        &[],
        &["--concurrency=4"],
    )
    .await;
    let large = format!("{}-large", s.id.0);
    let large_digest = s
        .push(&large, "dev", &large_module(&large, 384 << 20))
        .await;
    let mut small = Vec::new();
    for n in 0..9 {
        let module = format!("{}-s{n}", s.id.0);
        small.push((
            module.clone(),
            s.push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
                .await,
        ));
    }
    s.apply_mpo(&large, "dev", "1h");
    for (module, _) in &small {
        s.apply_mpo(module, "dev", "1h");
    }
    for (module, digest) in &small {
        s.wait_for_digest(module, digest, WAIT).await;
    }
    let large_status = s.mpo(&large)["status"]["imageDigest"].clone();
    assert_ne!(
        large_status,
        large_digest.as_str(),
        "the large module was still downloading when all small ones were Ready"
    );
    s.wait_for_digest(&large, &large_digest, Duration::from_secs(180))
        .await;
}

#[tokio::test]
async fn sigterm_during_a_download_finishes_it_and_exits_zero() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "sigterm",
        RegistryKind::Plain,
        &[],
        &["--scan-module-sources=false"],
    )
    .await;
    let module = format!("{}-big", s.id.0);
    let image = large_module(&module, 96 << 20);
    let digest = s.push(&module, "dev", &image).await;
    s.apply_mpo(&module, "dev", "1h");
    wait_for("the download to start", WAIT, || async {
        s.operator.log().contains("downloading").then_some(())
    })
    .await;
    assert_eq!(s.operator.stop(), Some(0), "SIGTERM exits 0");
    // The pass in flight was allowed to finish: the module is whole, or (if the signal came
    // before the pass) absent, but never half-switched; no staging directory is left behind.
    match s.active_hex(&module) {
        Some(hex) => {
            assert_eq!(hex, digest.trim_start_matches("sha256:"));
            assert_eq!(
                files_under(&s.version_dir(&module, &digest)),
                sorted(image.files())
            );
        }
        None => assert!(
            !s.version_dir(&module, &digest).exists(),
            "a version without dev"
        ),
    }
    let leftovers: Vec<_> = std::fs::read_dir(s.module_dir(&module))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(".staging-"))
                .collect()
        })
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");
    assert!(
        s.operator.log().contains("in-flight passes finished"),
        "{}",
        s.operator.log()
    );
    s.operator.restart();
    s.wait_for_digest(&module, &digest, WAIT).await;
}

/// The `ModuleUpdated` events of `mop/<module>`.
fn module_updated_events(s: &Scenario, module: &str) -> usize {
    let events = s.cluster.kubectl_ok(&[
        "get",
        "events",
        "-A",
        "--field-selector",
        &format!("involvedObject.name={module},reason=ModuleUpdated"),
        "-o",
        "json",
    ]);
    let parsed: serde_json::Value = serde_json::from_str(&events).expect("events JSON");
    parsed["items"].as_array().map_or(0, Vec::len)
}

/// SPEC §6 on a new pod: what `status.imageDigest` records is pulled by digest before the tag is
/// looked at, so a tag that is gone, or now points at an invalid image, leaves the applied module
/// on the new disk; and the same digest downloaded again is no update.
#[tokio::test]
async fn a_new_pod_restores_the_recorded_digest_when_the_tag_is_gone_or_broken() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "restore", RegistryKind::Plain, &[], &[]).await;
    let mut applied = Vec::new();
    for n in 0..3 {
        let module = format!("{}-m{n}", s.id.0);
        let image = ModuleImage::module(&module, 900, "good");
        let digest = s.push(&module, "dev", &image).await;
        s.apply_mpo(&module, "dev", "1h");
        s.wait_for_digest(&module, &digest, WAIT).await;
        let updated_at = s.mpo(&module)["status"]["updatedAt"].clone();
        applied.push((module, digest, image, updated_at));
    }
    wait_for("a ModuleUpdated event each", WAIT, || async {
        applied
            .iter()
            .all(|(m, ..)| module_updated_events(&s, m) == 1)
            .then_some(())
    })
    .await;

    assert_eq!(s.operator.stop(), Some(0), "SIGTERM exits 0");
    std::fs::remove_dir_all(s.operator.download_root()).expect("wipe");
    // m0: the tag is deleted (its manifest stays, by digest). m1: the tag now points at an
    // invalid module. m2: the tag still points at the applied digest.
    let (gone, broken) = (&applied[0].0, &applied[1].0);
    let tag_dir = s.registry.data_dir().join(format!(
        "docker/registry/v2/repositories/{REPO_PATH}/{gone}/_manifests/tags/dev"
    ));
    std::fs::remove_dir_all(&tag_dir).expect("tag removed from the registry's storage");
    let invalid = ModuleImage::new().file("module.yaml", "name: someone-else\n");
    s.push(broken, "dev", &invalid).await;
    s.operator.restart();

    for (module, digest, image, updated_at) in &applied {
        wait_for(
            &format!("{module} restored on the new disk"),
            WAIT,
            || async {
                (files_under(&s.version_dir(module, digest)) == sorted(image.files())
                    && s.active_hex(module).as_deref() == digest.strip_prefix("sha256:"))
                .then_some(())
            },
        )
        .await;
        let status = &s.mpo(module)["status"];
        assert_eq!(status["imageDigest"], digest.as_str(), "{module}");
        assert_eq!(&status["updatedAt"], updated_at, "{module}: no update");
    }
    s.wait_for_message(gone, "manifest unknown", WAIT).await;
    s.wait_for_message(broken, "invalid module", WAIT).await;
    assert_eq!(s.mpo(&applied[2].0)["status"]["message"], "");
    for (module, ..) in &applied {
        assert_eq!(
            module_updated_events(&s, module),
            1,
            "{module}: restoring the same digest is no ModuleUpdated"
        );
    }
}

/// A new leader restores every recorded digest before its first pass, listed or not (SPEC §3
/// "even if the tag is gone"): here the source's scan no longer lists the module, so its own
/// pass refuses to go on, yet the disk gets the module the status records. Before, the restore
/// ran inside the pass, after the listing check, and the new disk stayed empty.
#[tokio::test]
async fn a_new_leader_restores_every_recorded_digest_first_even_of_a_module_no_longer_listed() {
    let cluster = require_cluster!();
    let module = "restore-unlisted";
    let mut s = Scenario::start(
        cluster,
        "restore-first",
        RegistryKind::Plain,
        &[module],
        &["--source-scan-interval", "2s"],
    )
    .await;
    let image = ModuleImage::module(module, 900, "kept");
    let digest = s.push(module, "dev", &image).await;
    s.apply_mpo(module, "dev", "2s");
    s.wait_for_digest(module, &digest, WAIT).await;

    // The source now lists another module only, and the status says so before the restart.
    let root_tag = s.registry.data_dir().join(format!(
        "docker/registry/v2/repositories/{REPO_PATH}/_manifests/tags/{module}"
    ));
    std::fs::remove_dir_all(&root_tag).expect("root tag removed from the registry's storage");
    support::images::push_module_names(&s.registry, REPO_PATH, &["restore-other"])
        .await
        .expect("push the other module name");
    s.wait_for_message(module, "is not in ModuleSource", WAIT)
        .await;
    assert_eq!(s.operator.stop(), Some(0), "SIGTERM exits 0");
    std::fs::remove_dir_all(s.operator.download_root()).expect("wipe");
    s.operator.restart();

    wait_for("the recorded digest restored", WAIT, || async {
        (s.active_hex(module).as_deref() == digest.strip_prefix("sha256:")).then_some(())
    })
    .await;
    assert_eq!(
        files_under(&s.version_dir(module, &digest)),
        sorted(image.files())
    );
    let reason = s.mpo(module)["status"]["conditions"][0]["reason"].clone();
    assert_eq!(
        reason,
        "ModuleNotInSource",
        "its own pass refuses: {}",
        s.mpo(module)
    );
    let log = s.operator.log();
    let first = log
        .find("restoring the recorded digests onto this disk before the first passes")
        .expect("the restore is logged");
    let done = log
        .find("recorded digests restored; passes start")
        .expect("its end is logged");
    assert!(first < done);
    let metrics = s.operator.http_get("/metrics").expect("metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l == "mpo_restores_total{result=\"restored\"} 1"),
        "{metrics}"
    );
}

/// SPEC §9: a status write depends on what its pass read. An object changed while the pass
/// downloads (here a label; in HA, a newer leader's result) makes the apiserver refuse the stale
/// write (409); the pass is redone on the newer object and records what is already on disk,
/// without downloading it again.
#[tokio::test]
async fn a_status_write_after_the_object_changed_mid_pass_is_refused_and_redone() {
    let cluster = require_cluster!();
    let module = "stale-write";
    let mut s = Scenario::start(cluster, "stale-write", RegistryKind::Plain, &[module], &[]).await;
    let proxy = FaultProxy::start(&s.registry);
    s.route_source_through(proxy.host());
    let pushed = s
        .push(module, "main", &large_module(module, 512 << 10))
        .await;
    // About 4 s per download, above --min-download-rate.
    proxy.fail_method("GET", "/blobs/", Fault::Slow(128 << 10));
    s.apply_mpo(module, "main", "1h");
    wait_for("the download to start", WAIT, || async {
        (proxy.count("GET", "/blobs/") >= 1).then_some(())
    })
    .await;
    cluster.kubectl_ok(&["label", &format!("mop/{module}"), "touched=yes"]);

    s.wait_for_digest(module, &pushed, WAIT).await;
    let log = s.operator.log();
    assert!(
        log.contains("status not written: the object changed since this pass read it"),
        "the stale write was refused: {log}"
    );
    assert!(
        log.contains("already on disk; recording it"),
        "the pass was redone on the newer object: {log}"
    );
    assert_eq!(
        proxy.count("GET", "/blobs/"),
        1,
        "without a second download"
    );
}

/// Faults that last: another controller stamps the MPO (a label) every 300 ms, faster than a
/// download takes, while a forced renew is pending. Every status write of a downloading pass is
/// refused (409); on c16ab6e each redo, 1 s later, downloaded again, for as long as the stamping
/// went on. Now the redo backs off and records what the first download put on disk: one
/// download per renew, and the renew completes while the stamping goes on.
#[tokio::test]
async fn a_forced_renew_on_an_object_stamped_faster_than_a_download_downloads_once() {
    let cluster = require_cluster!();
    let module = "stamped";
    let mut s = Scenario::start(cluster, "stamped", RegistryKind::Plain, &[module], &[]).await;
    let proxy = FaultProxy::start(&s.registry);
    s.route_source_through(proxy.host());
    let pushed = s
        .push(module, "main", &large_module(module, 512 << 10))
        .await;
    s.apply_mpo(module, "main", "1h");
    s.wait_for_digest(module, &pushed, WAIT).await;
    let before = proxy.count("GET", "/blobs/");

    // About 4 s per download from now on.
    proxy.fail_method("GET", "/blobs/", Fault::Slow(128 << 10));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stamper = {
        let stop = stop.clone();
        let kubectl = cluster.kubectl.clone();
        let kubeconfig = cluster.kubeconfig.clone();
        std::thread::spawn(move || {
            let mut stamps = 0u32;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                stamps += 1;
                let _ = std::process::Command::new(&kubectl)
                    .args([
                        "label",
                        "--overwrite",
                        &format!("mop/{module}"),
                        &format!("stamp=s{stamps}"),
                    ])
                    .env("KUBECONFIG", &kubeconfig)
                    .output();
                std::thread::sleep(Duration::from_millis(300));
            }
            stamps
        })
    };
    cluster.kubectl_ok(&[
        "annotate",
        &format!("mop/{module}"),
        "modules.deckhouse.io/renew=true",
    ]);
    wait_for(
        "the forced renew to complete under the stamping",
        WAIT,
        || async {
            let mpo = s.mpo(module);
            let annotations = &mpo["metadata"]["annotations"];
            annotations
                .get("modules.deckhouse.io/renew")
                .is_none()
                .then_some(())
        },
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let stamps = stamper.join().expect("stamper");
    let downloads = proxy.count("GET", "/blobs/") - before;
    let log = s.operator.log();
    assert!(
        log.contains("status not written: the object changed since this pass read it"),
        "the stamping did refuse a write: {log}"
    );
    assert_eq!(downloads, 1, "one download for one renew ({stamps} stamps)");
    assert_eq!(
        s.status_str(module, "imageDigest").as_deref(),
        Some(pushed.as_str())
    );
}
