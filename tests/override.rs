//! The override loop as a user sees it: apply a ModulePullOverride, get the tag's digest in the
//! status, the module unpacked on disk, the source marked overridden; new digests on the interval
//! and on `renew`; zero writes when idle.

mod support;

use std::time::Duration;

use support::{
    images::ModuleImage,
    registry::{HeadAuth, RegistryKind, curl_head_digest},
    scenario::{REPO_PATH, Scenario, files_under, sorted},
    wait_for,
};

const READY: Duration = Duration::from_secs(60);

#[tokio::test]
async fn applying_an_override_downloads_the_tag_and_reports_its_digest() {
    let cluster = require_cluster!();
    let mut s = Scenario::start_named(
        cluster,
        "main",
        Some("test"),
        RegistryKind::Plain,
        &["echo", "hello-world"],
        &[],
    )
    .await;
    let image = ModuleImage::echo_module(910, "v1");
    let pushed = s.push("echo", "main-patch-03354", &image).await;
    s.apply_mpo("echo", "main-patch-03354", "15s");

    let mpo = s.wait_for_digest("echo", &pushed, READY).await;
    let head = curl_head_digest(
        &s.registry,
        &format!("{REPO_PATH}/echo"),
        "main-patch-03354",
        HeadAuth::Registry,
    )
    .expect("curl");
    assert_eq!(
        head.digest.as_deref(),
        Some(pushed.as_str()),
        "the registry's own answer"
    );
    let status = &mpo["status"];
    let updated = status["updatedAt"].as_str().expect("updatedAt");
    let parsed = chrono::DateTime::parse_from_rfc3339(updated).expect("RFC 3339");
    assert_eq!(parsed.offset().local_minus_utc(), 0, "UTC: {updated}");
    assert!(updated.ends_with('Z'), "{updated}");
    assert_eq!(status["weight"], 910);
    assert_eq!(status["observedGeneration"], mpo["metadata"]["generation"]);
    let ready = &status["conditions"][0];
    assert_eq!(
        (ready["type"].as_str(), ready["status"].as_str()),
        (Some("Ready"), Some("True"))
    );
    cluster.kubectl_ok(&["wait", "--for=condition=Ready", "mop/echo", "--timeout=10s"]);

    let hex = pushed.trim_start_matches("sha256:");
    let version = s.version_dir("echo", &pushed);
    assert_eq!(
        files_under(&version),
        sorted(image.files()),
        "unpacked byte for byte"
    );
    assert_eq!(
        s.active_hex("echo").as_deref(),
        Some(hex),
        "dev -> versions/<hex>"
    );
    let link = std::fs::read_link(s.operator.download_root().join("modules/910-echo"))
        .expect("modules link");
    assert_eq!(link, std::path::Path::new("../echo/dev"));
    assert!(
        s.operator
            .download_root()
            .join("modules/910-echo/module.yaml")
            .is_file()
    );

    let source = wait_for("the scan and the override flag", READY, || async {
        let source = s.source_object();
        let modules = source["status"]["modules"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let echo = modules.iter().find(|m| m["name"] == "echo")?;
        (echo["overridden"] == true && source["status"]["modulesCount"] == 2).then_some(source)
    })
    .await;
    let modules = source["status"]["modules"].as_array().expect("modules");
    let hello = modules
        .iter()
        .find(|m| m["name"] == "hello-world")
        .expect("hello-world listed");
    assert!(
        hello.get("overridden").is_none(),
        "hello-world is not overridden: {hello}"
    );
    assert_eq!(source["status"]["phase"], "Active");

    let table = cluster.kubectl_ok(&["get", "mop", "echo"]);
    assert!(
        table.contains(&pushed),
        "kubectl get mop shows the digest:\n{table}"
    );
    s.forget("ms/test");
    s.apply_mpo("echo", "main-patch-03354", "15s");
    cluster.kubectl_ok(&["delete", "mop/echo", "--timeout=30s"]);
    cluster.kubectl_ok(&["delete", "ms/test", "--timeout=30s"]);
}

#[tokio::test]
async fn a_new_digest_on_the_tag_is_picked_up_within_the_interval() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "interval", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let first = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "2s");
    let before = s.wait_for_digest(&module, &first, READY).await;
    let mut digests = vec![first.clone()];
    for marker in ["2", "3", "4"] {
        let next = s
            .push(&module, "dev", &ModuleImage::module(&module, 900, marker))
            .await;
        let after = s
            .wait_for_digest(&module, &next, Duration::from_secs(20))
            .await;
        assert_ne!(
            after["status"]["updatedAt"], before["status"]["updatedAt"],
            "updatedAt moves with the digest"
        );
        digests.push(next);
    }
    let image = ModuleImage::module(&module, 900, "4");
    assert_eq!(
        files_under(&s.version_dir(&module, &digests[3])),
        sorted(image.files())
    );
    let versions: Vec<String> = std::fs::read_dir(s.module_dir(&module).join("versions"))
        .expect("versions")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let hex = |d: &String| d.trim_start_matches("sha256:").to_owned();
    assert!(
        digests[1..].iter().all(|d| versions.contains(&hex(d))),
        "the active and the two before it kept (--keep-versions 3): {versions:?}"
    );
    assert!(
        !versions.contains(&hex(&digests[0])),
        "older ones collected: {versions:?}"
    );
}

#[tokio::test]
async fn renew_applies_a_new_digest_at_once_and_can_be_repeated() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(cluster, "renew", RegistryKind::Plain, &[], &[]).await;
    let module = format!("{}-m", s.id.0);
    let first = s
        .push(&module, "dev", &ModuleImage::module(&module, 900, "1"))
        .await;
    s.apply_mpo(&module, "dev", "1h");
    s.wait_for_digest(&module, &first, READY).await;

    for marker in ["2", "3"] {
        let next = s
            .push(&module, "dev", &ModuleImage::module(&module, 900, marker))
            .await;
        cluster.kubectl_ok(&["annotate", &format!("mop/{module}"), "renew="]);
        s.wait_for_digest(&module, &next, Duration::from_secs(30))
            .await;
        wait_for(
            "the renew annotation to be removed",
            Duration::from_secs(10),
            || async {
                s.mpo(&module)["metadata"]["annotations"]
                    .get("renew")
                    .is_none()
                    .then_some(())
            },
        )
        .await;
    }

    // Same digest, forced: the version directory is written again.
    let dev = s.module_dir(&module).join("dev/version.json");
    let before = std::fs::metadata(&dev)
        .and_then(|m| m.modified())
        .expect("mtime");
    let inode_before = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&dev).expect("meta"));
    let manifest_gets = |s: &Scenario| {
        s.registry
            .count_requests("GET", &format!("{module}/manifests/sha256:"))
    };
    let gets_before = manifest_gets(&s);
    cluster.kubectl_ok(&[
        "annotate",
        &format!("mop/{module}"),
        "modules.deckhouse.io/renew=true",
    ]);
    wait_for(
        "a fresh unpack of the same digest",
        Duration::from_secs(30),
        || async {
            let meta = std::fs::metadata(&dev).ok()?;
            let fresh = std::os::unix::fs::MetadataExt::ino(&meta) != inode_before
                || meta.modified().ok()? > before;
            let gone = s.mpo(&module)["metadata"]["annotations"]
                .get("modules.deckhouse.io/renew")
                .is_none();
            (fresh && gone).then_some(())
        },
    )
    .await;
    // One renew, one download: the pass's own writes (which still carry the annotation until it
    // is removed) must not start a second one. Watch a short while for a late extra download.
    let observe = std::time::Instant::now();
    while observe.elapsed() < Duration::from_secs(3) {
        assert_eq!(
            manifest_gets(&s) - gets_before,
            1,
            "downloads for one forced renew"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn an_idle_override_makes_no_writes_and_one_request_per_interval() {
    let cluster = require_cluster!();
    let mut s = Scenario::start(
        cluster,
        "idle",
        RegistryKind::Plain,
        &[],
        &["--scan-module-sources=false"],
    )
    .await;
    let (module, _) = s.ready_module("2s").await;
    // Let the pass that consumed the first write settle, then observe 3+ intervals.
    let settled = wait_for("the status to settle", Duration::from_secs(20), || async {
        let a = s.mpo(&module)["metadata"]["resourceVersion"].clone();
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let b = s.mpo(&module)["metadata"]["resourceVersion"].clone();
        (a == b).then_some(b)
    })
    .await;
    let path = format!("/v2/{REPO_PATH}/{module}/manifests/dev");
    let heads_before = s.registry.count_requests("HEAD", &path);
    let window = Duration::from_secs(8);
    let started = std::time::Instant::now();
    let mut writes = 0;
    while started.elapsed() < window {
        if s.mpo(&module)["metadata"]["resourceVersion"] != settled {
            writes += 1;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let heads = s.registry.count_requests("HEAD", &path) - heads_before;
    assert_eq!(writes, 0, "the MPO changed while nothing happened");
    // 8 s at a 2 s interval (+ up to 5 % jitter): 3 to 5 checks, never a storm.
    assert!(
        (3..=5).contains(&heads),
        "{heads} HEAD requests in {window:?}"
    );
    let gets = s
        .registry
        .count_requests("GET", &format!("/v2/{REPO_PATH}/{module}/blobs/"));
    assert!(gets <= 2, "no blob downloads while idle: {gets}");
}
